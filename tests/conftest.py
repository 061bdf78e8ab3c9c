"""Shared fixtures.

* ``device``: the torch device model tests run on; ``SSL_BENCH_TEST_DEVICE=cuda`` reruns them on
  a GPU (scripts/gpu_check.sh).
* Installed third-party plugins are not loaded during tests (``SSL_BENCH_LOAD_PLUGINS`` is set
  to the empty string): tests see the built-ins and what they register themselves.
* ``one_torch_thread``: a module opts in (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)
  to run its tiny models on one thread.
* Datasets (the generated synthetic task) and the CLI's plugin index go to a per-session
  temporary directory; caches of features and pretrained encoders live under each test's own
  results root (no ``SSL_BENCH_CACHE``), so tests never see each other's checkpoints.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("SSL_BENCH_LOAD_PLUGINS", "")
os.environ.pop("SSL_BENCH_PLUGINS_DIR", None)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssl-bench-home")
    old = {k: os.environ.get(k) for k in ("SSL_BENCH_DATA", "SSL_BENCH_CACHE", "SSL_BENCH_PLUGIN_INDEX")}
    os.environ["SSL_BENCH_DATA"] = str(root / "data")
    os.environ["SSL_BENCH_PLUGIN_INDEX"] = str(root / "plugin-index.json")
    os.environ.pop("SSL_BENCH_CACHE", None)
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and OpenMP does not spin on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def device() -> torch.device:
    dev = torch.device(os.environ.get("SSL_BENCH_TEST_DEVICE", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("SSL_BENCH_TEST_DEVICE=cuda but no CUDA device is available")
    return dev

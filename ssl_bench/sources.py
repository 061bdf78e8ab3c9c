"""Where a model's weights come from: every ``--checkpoint`` argument resolves here to local files.

A checkpoint argument is one of

* a **file** (an ssl-bench checkpoint, an official release, a state dict);
* a **directory** (a Hugging Face model directory: ``config.json`` and its weights);
* ``torchaudio:BUNDLE`` (``torchaudio:WAV2VEC2_BASE``, ``torchaudio:HUBERT_BASE``...): the weight
  file of that ``torchaudio.pipelines`` bundle in the torch hub cache
  (``$TORCH_HOME/hub/checkpoints/``), downloaded there first when it is missing and the
  network allows; offline (or with ``SSL_BENCH_OFFLINE=1``) a missing file is one line naming
  the file, its URL and where to put it;
* the **id** of an encoder ``ssl-bench pretrain`` made (a prefix of its weights' SHA-256 or of
  its pretraining hash).

Each resolves to a local path; :func:`ssl_bench.provenance.encoder_identity` then names it by
content (``init_id``: the SHA-256 prefix of the bytes), which is what result rows record.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import ConfigError

TORCHAUDIO_PREFIX = "torchaudio:"
#: Where torchaudio's bundles are published (``torchaudio.pipelines`` prefixes relative names with it).
TORCHAUDIO_URL = "https://download.pytorch.org/torchaudio/models/"


def default_cache_dir() -> Path:
    """The cache root when no results directory is given: ``$SSL_BENCH_CACHE`` or ``results/.cache``."""
    env = os.environ.get("SSL_BENCH_CACHE")
    return Path(env) if env else Path(os.environ.get("SSL_BENCH_RESULTS", "results")) / ".cache"


def torchaudio_bundle_file(name: str) -> tuple[Path, str]:
    """``(local path in the torch hub cache, URL)`` of a ``torchaudio.pipelines`` bundle's weights."""
    import torch
    import torchaudio.pipelines as pipelines

    bundle = getattr(pipelines, name, None)
    rel = getattr(bundle, "_path", None)
    if not name.isupper() or not isinstance(rel, str):
        known = sorted(n for n in dir(pipelines) if n.isupper() and isinstance(getattr(getattr(pipelines, n), "_path", None), str))
        raise ConfigError(f"--checkpoint torchaudio:{name}: no such bundle in torchaudio.pipelines; known: {', '.join(known)}")
    url = rel if rel.startswith("https") else TORCHAUDIO_URL + rel
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(rel), url


def fetch_torchaudio(name: str) -> Path:
    """The local weight file of bundle ``name``: from the torch hub cache, else downloaded into it."""
    path, url = torchaudio_bundle_file(name)
    if path.is_file():
        return path
    where = (f"download {url} and put it at {path} (the torch hub cache; $TORCH_HOME moves it), or pass the "
             "file itself as --checkpoint")
    if os.environ.get("SSL_BENCH_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ConfigError(f"--checkpoint torchaudio:{name} needs {path.name}, which is not in the torch hub cache "
                          f"and SSL_BENCH_OFFLINE is set: {where}")
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # writes to a temporary file and renames it: no half file is left behind
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as exc:  # noqa: BLE001 - offline, proxy, HTTP errors: all the user's to fix
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--checkpoint torchaudio:{name} needs {path.name}, which is not in the torch hub cache "
                          f"and could not be downloaded ({reason}): {where}") from None
    return path


def resolve_checkpoint(ref: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The local file or directory a checkpoint argument names (see the module docstring).
    ``cache_dir``: the cache root holding ``pretrain/`` (encoder ids)."""
    from .provenance import find_checkpoint

    text = str(ref).strip()
    if text.startswith(TORCHAUDIO_PREFIX):
        return fetch_torchaudio(text[len(TORCHAUDIO_PREFIX):].strip())
    return find_checkpoint(text, cache_dir if cache_dir is not None else default_cache_dir())


def source_name(path: str | Path) -> str | None:
    """``torchaudio:BUNDLE`` when ``path`` is that bundle's file in the torch hub cache, else ``None``:
    the readable ``init`` of rows evaluated from it."""
    import torch
    import torchaudio.pipelines as pipelines

    path = Path(path).expanduser()
    if path.parent.resolve() != (Path(torch.hub.get_dir()) / "checkpoints").resolve():
        return None
    for name in dir(pipelines):
        rel = getattr(getattr(pipelines, name), "_path", None)
        if name.isupper() and isinstance(rel, str) and os.path.basename(rel) == path.name:
            return TORCHAUDIO_PREFIX + name
    return None

"""ssl-bench: a plugin-based benchmark harness for self-supervised audio representations.

Public API (kept stable)::

    import ssl_bench
    model = ssl_bench.create_model("audiomae", preset="tiny", **{"encoder.depth": 2})
    task = ssl_bench.get_task("esc50", data_dir="data/ESC-50-master")
    ssl_bench.list_plugins()
    df = ssl_bench.results.load("results")

Plugins import the hook marker as ``from ssl_bench import hookimpl``.
"""

from __future__ import annotations

from .hookspecs import hookimpl
from .version import __version__

__all__ = ["hookimpl", "create_model", "get_task", "list_plugins", "results", "__version__"]


def create_model(name, preset=None, checkpoint=None, **overrides):
    """Build a registered model; see :func:`ssl_bench.model.create_model`."""
    from .model import create_model as _create

    return _create(name, preset=preset, checkpoint=checkpoint, **overrides)


def get_task(name, data_dir=None):
    """Instantiate a registered task (``data_dir``: where its data lives or goes)."""
    from .registry import get_registry

    return get_registry().get("task", name).factory(data_dir=data_dir)


def list_plugins():
    """Every plugin: name, origin, what it registered, and its error if any."""
    from .registry import get_registry

    return get_registry().describe()


def __getattr__(name):
    if name == "results":  # imported lazily: pandas is slow to import
        import importlib

        return importlib.import_module(".results", __name__)
    raise AttributeError(name)

"""Imported once by the local pool's forkserver: torch, the runner and every built-in plugin, so
each job forked from it starts warm instead of importing them again (seconds each on a busy
machine).  Nothing here runs torch code: a forked child must not inherit a started thread pool.

Also what a unit would otherwise import on first use, each time in a fresh job: ``torch._dynamo``
(which torch's optimisers import at their first step, about a second) and scikit-learn's probes
(about a second); importing them starts no thread."""

from __future__ import annotations

import torch  # noqa: F401
import torch._dynamo  # noqa: F401

from .. import runner  # noqa: F401
from ..registry import Registry

try:  # the linear probe's default solver (scikit-learn is a dependency; a trimmed install still runs)
    import scipy.optimize  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.preprocessing  # noqa: F401
except ImportError:  # pragma: no cover
    pass

Registry()  # imports the built-in plugins (each job builds its own registry from them)

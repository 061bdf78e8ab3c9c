"""Imported once by the local pool's forkserver: torch, the runner and every built-in plugin, so
each job forked from it starts warm instead of importing them again (seconds each on a busy
machine).  Nothing here runs torch code: a forked child must not inherit a started thread pool."""

from __future__ import annotations

import torch  # noqa: F401

from .. import runner  # noqa: F401
from ..registry import Registry

Registry()  # imports the built-in plugins (each job builds its own registry from them)

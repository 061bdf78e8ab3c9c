"""The built-in launchers, registered through the same hook as a plugin's (``register_launchers``)."""

from __future__ import annotations

from ..hookspecs import hookimpl
from .local import LocalLauncher
from .slurm import SubmititLauncher, SubmititLocalLauncher


@hookimpl
def register_launchers(register):
    register("local", LocalLauncher)
    register("slurm", SubmititLauncher)
    register("submitit-local", SubmititLocalLauncher)

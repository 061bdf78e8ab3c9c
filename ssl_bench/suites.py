"""Suites: named, versioned lists of (task, protocols, settings) that make a benchmark.

A plugin registers a :class:`Suite` with ``register_suites``::

    from ssl_bench import hookimpl
    from ssl_bench.suites import Suite, SuiteTask

    @hookimpl
    def register_suites(register):
        register("my-bench", Suite(version="2", description="...", tasks=(
            SuiteTask("esc50", ("linear", "mlp")),
            SuiteTask("speechcommands", ("mlp",), settings={"mlp.max_epochs": 100}),
        )))

``ssl-bench run --suite my-bench -m MODEL`` runs every entry (one run per task and sweep
value); a suite's settings sit under the user's ``--set``, but a ``--set`` of a key the suite
pins is refused (the result would not be the suite's).  Every row records ``suite`` and
``suite_version``, which are part of the run's identity, and ``ssl-bench results --board
--suite NAME`` ranks encoders by their mean over the suite's tasks.  Change a suite's tasks or
settings and you change its version: rows of two versions never pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError


@dataclass(frozen=True)
class SuiteTask:
    """One entry of a suite: a task, the protocols run on it, the settings it pins (dotted
    keys, as ``--set``) and, optionally, the splits it uses (default: all of the task's)."""

    task: str
    protocols: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    splits: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Suite:
    """A named benchmark (registered under its name): ``version`` (a string, part of every
    row it makes), ``tasks`` and a one-line ``description``."""

    version: str
    tasks: tuple[SuiteTask, ...]
    description: str = ""

    def columns(self, name: str) -> dict[str, str]:
        """What every row of the suite carries."""
        return {"suite": name, "suite_version": str(self.version)}


def get_suite(spec: str, registry: Any) -> tuple[str, Suite]:
    """``(name, suite)`` for ``NAME`` or ``NAME@VERSION`` (the version must be the registered one)."""
    name, _, version = spec.partition("@")
    suite = registry.get("suite", name.strip()).factory
    if not isinstance(suite, Suite):
        raise ConfigError(f"suite {name!r} is registered as {type(suite).__name__}, not a Suite")
    if version and version.strip() != str(suite.version):
        raise ConfigError(f"--suite {spec}: suite {name!r} is at version {suite.version}; run it as "
                          f"{name}@{suite.version} (rows record the version, so older results stay apart)")
    return name.strip(), suite


def pinned_conflicts(suite: Suite, overrides: list[dict[str, Any]]) -> list[str]:
    """The keys a user's sweep sets that some entry of ``suite`` pins."""
    pinned = {k for entry in suite.tasks for k in entry.settings}
    return sorted({k for sweep in overrides for k in sweep if k in pinned})

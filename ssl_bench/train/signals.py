"""SIGTERM/SIGINT during training: finish the step, checkpoint, stop with the signal's exit code."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by SIGTERM/SIGINT; ``checkpoint`` is where it can resume from (or None).

    A ``KeyboardInterrupt`` so that generic ``except Exception`` handlers do not swallow it.
    """

    def __init__(self, signum: int, checkpoint: Path | None = None):
        self.signum = signum
        self.checkpoint = checkpoint
        where = f"; checkpoint saved to {checkpoint}" if checkpoint else ""
        super().__init__(f"stopped by {signal.Signals(signum).name}{where}")

    @property
    def exit_code(self) -> int:
        """The shell convention for death by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(self.signum)


class GracefulStop:
    """SIGTERM/SIGINT handling: inside a training loop, finish the step, checkpoint and stop.

    While ``deferring`` (set by :func:`fit` around its steps) a signal only sets
    :attr:`signum`; the loop checks it at the next step boundary.  Outside, the signal raises
    :class:`TrainingInterrupted` at once (a results directory in progress is then removed by
    its writer).  A second SIGINT always raises immediately.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferring = False
        self._old: dict[int, Any] = {}
        self._depth = 0

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise TrainingInterrupted(signum)
        self.signum = signum
        if not self.deferring:
            raise TrainingInterrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[GracefulStop]:
        """Install the handlers (main thread only; elsewhere this is a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        if self._depth == 0:
            self.signum = None
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handler)
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                for sig, old in self._old.items():
                    signal.signal(sig, old)
                self._old.clear()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        old, self.deferring = self.deferring, True
        try:
            yield
        finally:
            self.deferring = old


#: The process-wide stop handler (the runner installs it around a whole run).
STOP = GracefulStop()


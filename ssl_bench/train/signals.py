"""SIGTERM/SIGINT during training: say so at once, finish the step, checkpoint, stop with the
signal's exit code; a second Ctrl-C stops at once, promising only the resume a checkpoint gives."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by SIGTERM/SIGINT.

    ``checkpoint``: the checkpoint written at this stop (a step boundary), or None;
    ``resume_from``: what running the same command again continues the interrupted training
    from (this checkpoint or an earlier one), or None when it has none; ``training``: which
    training was under way (None outside one); ``kept``: a sentence on what else a rerun
    reuses (the runner adds it).  The message says all of it, and promises no resume it
    cannot give.

    A ``KeyboardInterrupt`` so that generic ``except Exception`` handlers do not swallow it.
    """

    def __init__(self, signum: int, checkpoint: Path | None = None, resume_from: str | Path | None = None,
                 training: str | None = None):
        self.signum = signum
        self.checkpoint = checkpoint
        self.resume_from = str(resume_from) if resume_from is not None else (
            str(checkpoint) if checkpoint is not None else None)
        self.training = training
        self.kept: str | None = None
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    def __str__(self) -> str:
        parts = [f"stopped by {signal.Signals(self.signum).name}"]
        if self.checkpoint is not None:
            parts.append(f"checkpoint saved to {self.checkpoint}")
        if self.resume_from is not None:
            what = f" {self.training}" if self.training else ""
            parts.append(f"run the same command again to resume{what} from {self.resume_from}")
        elif self.training:
            parts.append(f"{self.training} had no checkpoint yet, so running the same command again starts it over")
        if self.kept:
            parts.append(self.kept)
        return "; ".join(parts)

    @property
    def exit_code(self) -> int:
        """The shell convention for death by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(self.signum)


def _say_now(message: str) -> None:
    """Write a line to stderr from a signal handler (unbuffered: the handler may run while the
    main code is inside a buffered write)."""
    try:
        os.write(2, ("\n" + message + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


class GracefulStop:
    """SIGTERM/SIGINT handling: inside a training loop, finish the step, checkpoint and stop.

    While ``deferring`` (set by :func:`fit` around its steps) a signal only sets
    :attr:`signum` and says at once what happens next (the training's :meth:`training`
    description: which step it finishes, about how long that takes, and what a second Ctrl-C
    would leave); the loop checks it at the next step boundary.  Outside, the signal raises
    :class:`TrainingInterrupted` at once (a results directory in progress is then removed by
    its writer).  A second SIGINT always raises immediately, saying what a rerun can resume
    from (the training's latest checkpoint, :attr:`resume_from`), if anything.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferring = False
        self._old: dict[int, Any] = {}
        self._depth = 0
        self.name: str | None = None  # the training under way (``pretrain``, ``finetune fold2``)
        self.progress: Callable[[], str] | None = None  # what it is doing now, in words
        self.resume_from: str | None = None  # its latest checkpoint (a rerun continues from it)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise TrainingInterrupted(signum, resume_from=self.resume_from, training=self.name)
        self.signum = signum
        if not self.deferring:
            raise TrainingInterrupted(signum)
        if self.progress is not None:
            now = self.progress()
            second = ("; Ctrl-C again to stop at once without saving"
                      + (f" (a rerun resumes from {self.resume_from})" if self.resume_from
                         else f" (nothing saved yet: a rerun would start {self.name or 'this training'} over)"))
            _say_now(f"ssl-bench: {signal.Signals(signum).name} received: {now}, then saving a checkpoint and "
                     f"stopping{second if signum == signal.SIGINT else ''}")

    @contextlib.contextmanager
    def training(self, name: str, progress: Callable[[], str]) -> Iterator[GracefulStop]:
        """Mark a training under way: ``name`` and ``progress()`` (what it is doing now) are
        what the first signal says; :attr:`resume_from` starts empty (set it when a checkpoint
        is written or resumed)."""
        old = (self.name, self.progress, self.resume_from)
        self.name, self.progress, self.resume_from = name, progress, None
        try:
            yield self
        finally:
            self.name, self.progress, self.resume_from = old

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


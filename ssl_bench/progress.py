"""Progress that suits where the output goes.

On a terminal, a tqdm bar that redraws itself.  Anywhere else (a log file, a pipe, a batch
job), carriage-return redraws would write every update as its own line (hundreds of KB of
bars for a quick start), so :func:`bar` gives a :class:`PlainProgress` instead: one plain line
when it starts, one every :data:`PLAIN_EVERY_S` seconds, and one when it ends.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator

#: Seconds between the plain lines of a progress meter that is not on a terminal.
PLAIN_EVERY_S = float(os.environ.get("SSL_BENCH_PROGRESS_EVERY", "30"))
#: When the last plain line was written, by any meter: a training makes a meter per epoch, and
#: epochs shorter than the interval must not make a long training silent.
_LAST_LINE = [time.monotonic()]


def on_terminal(stream: Any = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 12 s``, ``2 h 05 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class PlainProgress:
    """The part of tqdm's interface the loops use, written as periodic plain lines (one every
    ``every`` seconds across all meters)."""

    def __init__(self, total: int | None = None, initial: int = 0, desc: str = "", unit: str = "it",
                 disable: bool = False, stream: Any = None, every: float | None = None, **_: Any):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.disable = disable
        self.stream = stream if stream is not None else sys.stderr
        self.every = PLAIN_EVERY_S if every is None else every
        self.postfix = ""
        self._t0 = time.monotonic()
        self._start = initial
        self._closed = False
        self._said = None  # the count of the last line written

    def _line(self, final: bool = False) -> None:
        if self.disable:
            return
        elapsed = time.monotonic() - self._t0
        done = self.n - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        total = f"/{self.total}" if self.total else ""
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        left = ""
        if self.total and rate > 0 and not final and self.n < self.total:
            left = f", about {duration((self.total - self.n) / rate)} left"
        post = f", {self.postfix}" if self.postfix else ""
        self._said = self.n
        print(f"{self.desc}: {self.n}{total} {self.unit}{pct}, {duration(elapsed)}{left}{post}",
              file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - _LAST_LINE[0] >= self.every:
            _LAST_LINE[0] = now
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        if (not self._closed and self.n > self._start and self.n != self._said
                and time.monotonic() - self._t0 >= self.every):
            self._line(final=True)  # a meter that ran long says that it finished; quick ones say nothing
        self._closed = True

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def bar(total: int | None = None, desc: str = "", enabled: bool = True, initial: int = 0, unit: str = "it",
        **kwargs: Any) -> Any:
    """A progress meter for ``total`` steps: tqdm on a terminal, :class:`PlainProgress` elsewhere."""
    if on_terminal():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, disable=not enabled,
                    dynamic_ncols=True, **kwargs)
    return PlainProgress(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled)


def iterate(items: Iterable[Any], desc: str = "", enabled: bool = True, total: int | None = None) -> Iterator[Any]:
    """``items`` with a progress meter (:func:`bar`) advanced per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    meter = bar(total, desc, enabled)
    try:
        for item in items:
            yield item
            meter.update(1)
    finally:
        meter.close()


class RunClock:
    """The run-level progress line of a split loop: which split of how many, which protocol,
    time spent and, once a split has finished, the time the rest should take.

    Each protocol is counted at the pace of its latest run (a pretraining the later splits
    reuse takes its full time once, then none), plus the last split's time outside the
    protocols.  In the second split, before its pretraining has run, there is no estimate:
    whether it reuses the first split's encoder (a corpus shared by every split) or trains its
    own is not known yet.  ``is_pretraining(name)`` and ``is_frozen(name)`` describe a protocol."""

    def __init__(self, n_splits: int, log: Any, is_pretraining: Any, is_frozen: Any):
        self.n_splits, self.log = n_splits, log
        self.is_pretraining, self.is_frozen = is_pretraining, is_frozen
        self.t_splits = time.time()
        self.split_index = 0
        self.split_seconds: list[float] = []
        self.outside_seconds = 0.0
        # each protocol's seconds in the latest split that ran it, and in this split
        self.protocol_seconds: dict[tuple[str, str], float] = {}
        self.ran_here: dict[tuple[str, str], float] = {}
        self._t_split = self.t_splits

    def start_split(self, index: int) -> None:
        self.split_index, self._t_split, self.ran_here = index, time.time(), {}

    def end_split(self) -> float:
        """Close the split; returns its seconds."""
        seconds = time.time() - self._t_split
        self.split_seconds.append(seconds)
        self.outside_seconds = max(seconds - sum(self.ran_here.values()), 0.0)
        return seconds

    def ran(self, protocol: str, init: str, seconds: float) -> None:
        self.protocol_seconds[(protocol, init)] = self.ran_here[(protocol, init)] = seconds

    def announce(self, split: str, protocol: str, init: str) -> None:
        n, done, now = self.n_splits, self.split_index, time.time()
        left = ""
        unknown = done == 1 and any(self.is_pretraining(name) and (name, encoder) not in self.ran_here
                                    for name, encoder in self.protocol_seconds)
        if done and not unknown:
            latest = self.protocol_seconds
            this_split = sum(s for key, s in latest.items() if key not in self.ran_here)
            seconds = this_split + (n - done - 1) * (sum(latest.values()) + self.outside_seconds)
            left = f", about {duration(seconds)} left"
        what = f"{protocol} ({init} encoder)" if init == "random" and self.is_frozen(protocol) else protocol
        self.log(f"[{split} {done + 1}/{n}] {what}: {duration(now - self.t_splits)} elapsed{left}")

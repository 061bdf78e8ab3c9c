"""What the built-in tasks share: a base class, metadata readers with line-numbered errors,
fold splitting, class-balanced weights and atomic dataset directories.

This is a helper module of the ``ssl_bench.tasks`` package, not a plugin: it registers
nothing.  Task plugins import it; they never import each other's registration code.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Hashable, Iterable, Iterator, Sequence

from ssl_bench.components import Clip, Split
from ssl_bench.errors import UserError
from ssl_bench.files import follow_umask, name_bytes

#: The ``stats_key`` of the 128-bin Kaldi fbank frontend of AudioMAE and AST (16 kHz, 25/10 ms):
#: the features every published statistic below was measured on.
KALDI_FBANK_128 = "kaldi-fbank:sample_rate=16000,num_bins=128,frame_length_ms=25.0,frame_shift_ms=10.0"


class MetadataError(UserError, ValueError):
    """Bad dataset metadata; the message names the file (and line) and what is wrong."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset that is not where the task looked; the message says what to get and where."""


class MissingClipsWarning(UserWarning):
    """Clips listed in a dataset's metadata whose audio files are not present."""


def data_home() -> Path:
    """Where datasets are looked for and downloaded to: ``$SSL_BENCH_DATA`` or
    ``~/.cache/ssl-bench/data``."""
    base = os.environ.get("SSL_BENCH_DATA")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "ssl-bench" / "data"


# --------------------------------------------------------------------------- task base class
class loaded_attribute:
    """A task attribute that is known only once the data have been read (the clip length of
    a user's folder, whether a HEAR task is multi-label): reading it prepares the task."""

    def __init__(self, default=None):
        self.default = default

    def __set_name__(self, owner, name):
        self.private = "_attr_" + name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        if not obj.__dict__.get("_preparing"):
            obj.prepare()
        return obj.__dict__.get(self.private, self.default)

    def __set__(self, obj, value):
        obj.__dict__[self.private] = value


class DatasetTask:
    """Base class of the built-in tasks (implements :class:`ssl_bench.components.Task`).

    Subclasses set the class attributes and implement :meth:`_load` (read metadata from the
    located data, set ``self._classes``) and :meth:`_splits`.  ``classes`` and ``splits()``
    call :meth:`prepare` on first use, so a task object is cheap to create and only touches
    the disk when asked for data.
    """

    name: str = ""
    multilabel: bool = False
    sample_rate: int = 16000
    clip_seconds: float = 10.0
    metrics: list[str] = ["accuracy"]
    split_protocol: str = ""
    #: Published feature statistics, keyed by the frontend's ``stats_key``: ``{key: (mean, std)}``.
    norm_stats: dict[str, tuple[float, float]] = {}

    def __init__(self, data_dir: str | Path | None = None):
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self._preparing = False
        self.root: Path | None = None
        self._classes: list[str] | None = None
        self._split_list: list[Split] | None = None
        #: clips named in the metadata whose audio is absent, per split (reported, not dropped)
        self.missing: dict[str, list[str]] = {}

    # -- Task protocol
    @property
    def classes(self) -> list[str]:
        self.prepare()
        return list(self._classes or [])

    def prepare(self) -> None:
        """Find (or build, or download) the data and read its metadata; idempotent."""
        if self._classes is not None:
            return
        self._preparing = True
        try:
            self.root = self._locate()
            self._load(self.root)
        finally:
            self._preparing = False

    def splits(self) -> list[Split]:
        """The task's train/test partitions (folds or the official split)."""
        self.prepare()
        if self._split_list is None:
            self._split_list = self._splits()
        return self._split_list

    def describe(self) -> dict:
        """The protocol facts recorded with every result."""
        return {
            "task": self.name,
            "classes": len(self.classes),
            "multilabel": self.multilabel,
            "sample_rate": self.sample_rate,
            "clip_seconds": self.clip_seconds,
            "metrics": list(self.metrics),
            "split_protocol": self.split_protocol,
            "root": str(self.root),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, data_dir={str(self.data_dir) if self.data_dir else None!r})"

    # -- for subclasses
    def _locate(self) -> Path:
        if self.data_dir is None:
            raise DataNotFoundError(f"task {self.name!r} needs --data-dir pointing at its data")
        if not self.data_dir.is_dir():
            raise DataNotFoundError(f"task {self.name!r}: data directory {self.data_dir} does not exist")
        return self.data_dir

    def _load(self, root: Path) -> None:
        raise NotImplementedError

    def _splits(self) -> list[Split]:
        raise NotImplementedError


# --------------------------------------------------------------------------- metadata helpers
def read_class_list(root: Path) -> list[str] | None:
    """The class names of ``root/classes.txt`` in its order (one a line), or None without one;
    a name listed twice is a :class:`MetadataError` naming the file."""
    path = root / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise MetadataError(f"{path}: a class is listed twice")
    return names


def generated_current(marker: Path, version: int, seed: int) -> bool:
    """Whether an embedded task's generated data (its ``marker`` JSON) is of this ``version``
    and ``seed``; an unreadable or missing marker is not."""
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("version") == version and info.get("seed") == seed


def read_csv(path: Path, required: Sequence[str], *, optional: Sequence[str] = ()) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)`` of a headed CSV, checking the header first.

    A missing required column raises :class:`MetadataError` naming the file, the missing
    columns and the ones present; a row with the wrong number of fields names its line.
    """
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{path}: metadata file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise MetadataError(f"{path}: file is empty (expected a header with {', '.join(required)})") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise MetadataError(
                f"{path}:1: missing column(s) {', '.join(missing)}; found {', '.join(header) or 'none'}"
                f" (expected {', '.join(list(required) + list(optional))})"
            )
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise MetadataError(f"{path}:{line}: expected {len(header)} fields ({', '.join(header)}), got {len(row)}")
            yield line, {h: cell.strip() for h, cell in zip(header, row)}


def parse_int(value: str, path: Path, line: int, column: str, minimum: int | None = None) -> int:
    """``int(value)`` or a :class:`MetadataError` naming file, line and column."""
    try:
        out = int(value)
    except ValueError:
        raise MetadataError(f"{path}:{line}: column {column!r} must be an integer, got {value!r}") from None
    if minimum is not None and out < minimum:
        raise MetadataError(f"{path}:{line}: column {column!r} must be >= {minimum}, got {out}")
    return out


def resolve_inside(root: Path, relative: str, path: Path, line: int | None) -> Path:
    """``root / relative``, refusing absolute paths and ``..`` escapes from ``root``."""
    where = f"{path}:{line}" if line is not None else str(path)
    if not relative:
        raise MetadataError(f"{where}: empty file path")
    candidate = Path(relative)
    full = candidate if candidate.is_absolute() else root / candidate
    try:
        full.resolve().relative_to(root.resolve())
    except ValueError:
        raise MetadataError(f"{where}: path {relative!r} is outside the data root {root}") from None
    return full


def clip_key(root: Path, path: Path) -> str:
    """The clip's path relative to the data root, with forward slashes."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# --------------------------------------------------------------------------- splits
def fold_splits(clip_folds: Iterable[tuple[Clip, int | str]], prefix: str = "fold") -> list[Split]:
    """Leave-one-fold-out: one :class:`Split` per fold, tested on it and trained on the rest.

    ``valid`` is left ``None`` so the harness carves it from the training folds.
    """
    by_fold: dict = {}
    for clip, fold in clip_folds:
        by_fold.setdefault(fold, []).append(clip)
    folds = sorted(by_fold)
    if len(folds) < 2:
        raise MetadataError(f"cross-validation needs at least 2 folds, found {len(folds)}: {folds}")
    return [
        Split(
            name=f"{prefix}{f}",
            train=[c for g in folds if g != f for c in by_fold[g]],
            test=list(by_fold[f]),
        )
        for f in folds
    ]


def _hash_order(key: str) -> str:
    # a file name need not be valid UTF-8 (its undecodable bytes arrive as surrogate escapes)
    return hashlib.sha1(name_bytes(key)).hexdigest()


def stratified_folds(clips: Sequence[Clip], folds: int = 5,
                     stratum: Callable[[Clip], Hashable] = lambda c: c.labels[:1]) -> list[tuple[Clip, int]]:
    """Assign each clip a fold 1..``folds``, round-robin within each stratum (default: its
    first label) in the order of a hash of its key, so a fold keeps its clips when files are
    added."""
    by_stratum: dict = defaultdict(list)
    for clip in clips:
        by_stratum[stratum(clip)].append(clip)
    out = []
    offset = 0
    for key in sorted(by_stratum):
        members = sorted(by_stratum[key], key=lambda c: _hash_order(c.key))
        for i, clip in enumerate(members):
            out.append((clip, (i + offset) % folds + 1))
        offset += len(members)  # spread the strata's remainders over different folds
    return out


def class_balanced_weights(clips: Sequence[Clip], num_classes: int) -> list[float]:
    """Per-clip sampling weight: the sum over its labels of ``1000 / (count + 0.01)``.

    ``count`` is the number of clips in ``clips`` carrying the label (AudioMAE's recipe for
    the unbalanced AudioSet-2M set, so that rare classes are seen as often as common ones).
    """
    counts = Counter(c for clip in clips for c in clip.labels)
    table = [1000.0 / (counts.get(k, 0) + 0.01) for k in range(num_classes)]
    return [float(sum(table[c] for c in clip.labels)) for clip in clips]


def report_missing(task: str, missing: dict[str, list[str]], totals: dict[str, int], hint: str = "") -> None:
    """One warning summarising missing clips per split (they stay in the clip lists and are
    counted as skipped when features are extracted)."""
    parts = [f"{split}: {len(keys)} of {totals.get(split, len(keys))}" for split, keys in missing.items() if keys]
    if not parts:
        return
    examples = ", ".join(k for keys in missing.values() for k in keys[:3])
    warnings.warn(
        f"task {task}: audio missing for {'; '.join(parts)} clips listed in the metadata "
        f"(e.g. {examples}); they are counted as skipped in the results{hint}",
        MissingClipsWarning,
        stacklevel=3,
    )


def check_present(task: "DatasetTask", parts: dict[str, list[Clip]], hint: str = "") -> None:
    """Record in ``task.missing`` the clips of each part whose audio file does not exist, and
    report them in one warning.  The clips stay listed (feature extraction counts them)."""
    task.missing = {name: [c.key for c in clips if not Path(c.path).exists()] for name, clips in parts.items()}
    report_missing(task.name, task.missing, {k: len(v) for k, v in parts.items()}, hint)


# --------------------------------------------------------------------------- atomic directories
@contextmanager
def atomic_directory(final: Path) -> Iterator[Path | None]:
    """Build a directory in a temporary sibling and rename it to ``final`` on success.

    Yields the temporary path, or ``None`` when ``final`` already exists (nothing to do).
    On error the temporary directory is removed; when another process finished first, its
    copy is kept and ours discarded.
    """
    final = Path(final)
    if final.exists() and any(final.iterdir()):
        yield None
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{uuid.uuid4().hex[:6]}-", dir=final.parent))
    follow_umask(tmp, directory=True)  # mkdtemp makes it owner-only; data are shared like any folder
    try:
        yield tmp
        try:
            os.rename(tmp, final)  # also replaces an empty directory
        except OSError:
            if not (final.exists() and any(final.iterdir())):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

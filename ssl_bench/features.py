"""Frontend feature cache: decode and transform each clip once, read it back memory-mapped.

:func:`extract` turns a list of clips into a :class:`FeatureSet` of raw (un-normalised,
un-padded) log-mel spectrograms.  With a ``cache_dir`` the result is stored under
``cache_dir/<hash>/``::

    features.bin    float32, all clips' frames concatenated: [sum(T_i), F]
    index.npy       int64 [n_kept, 3]: (position in the clip list, frame offset, frames)
    manifest.json   format version, frontend config, clip keys, skipped clips, shapes, and the
                    size and BLAKE2b checksum of features.bin and index.npy
    verified.json   each data file's stamp (size, mtime, inode, ctime) when its checksum last
                    matched: a file with the same stamp since is not read again to be checked

Every read checks the entry (:func:`check_entry`): sizes, the index against the features and,
for a file whose stamp changed since its last check (or every file under ``--verify``), its
checksum.  Writing a file in place changes its ctime whatever its size and modification time
say, so damage is found.  A damaged entry (truncated, overwritten, unreadable) is rebuilt with
one :class:`~ssl_bench.files.CacheWarning` naming it.

The hash covers the clip list (each clip's path and the SHA-256 of its bytes, from the digest
cache of :func:`ssl_bench.provenance.file_digests`, which hashes a file again whenever its stamp
changed), the clip length and the frontend's class and config except the settings that act
after the cache (normalisation statistics and the number of frames the model takes).  So
changing any audio file (even keeping its size and restoring its modification time, as ``cp
-p`` and ``rsync -a`` do) or any spectrogram setting gives a new entry, while re-running, a
second epoch, ``touch``, or a different ``num_frames`` reads the existing one.  Entries are written to a temporary directory and
renamed into place, so a crash leaves nothing half-written and concurrent writers are safe
(the first rename wins, the others discard their copy); a writer holds the entry's lock
(:func:`~ssl_bench.files.file_lock`), so a second process waits and reads what the first wrote
instead of computing it again.  The manifest records what the extraction cost (``compute``).

Unreadable, empty or NaN clips are skipped with a warning naming the file and counted in
:attr:`FeatureSet.skipped` (or raise :class:`~ssl_bench.audio.AudioError` with ``strict``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .audio import AudioError, read_audio, resample_batch
from .components import Clip
from .files import (CacheWarning, check_file, clean_stale_temps, file_lock, file_record, file_stamp, follow_umask,
                    name_bytes, shown, temp_prefix, verify_all)

#: Bumped whenever the on-disk layout or the way features are computed changes.
CACHE_VERSION = 2  # 2: keyed by content digests; verified.json holds full stamps

#: Frontend config fields that act after the cache and so do not change what is stored.
POST_CACHE_FIELDS = frozenset({"mean", "std", "num_frames"})


class SkippedClipWarning(UserWarning):
    """A clip that could not be used (unreadable, empty, NaN) and was left out."""


def default_cache_dir() -> Path:
    """``$SSL_BENCH_CACHE/features`` or ``~/.cache/ssl-bench/features``."""
    base = os.environ.get("SSL_BENCH_CACHE")
    return Path(base) / "features" if base else Path.home() / ".cache" / "ssl-bench" / "features"


# --------------------------------------------------------------------------- the feature set
class FeatureSet:
    """Raw log-mel features of the clips that could be read, in clip-list order.

    ``fs[i]`` is a ``[T_i, F]`` float32 tensor for ``fs.clips[i]``; ``fs.skipped`` lists
    ``(key, reason)`` of the clips left out; ``fs.path`` is the cache entry (None when held in
    memory) and ``fs.from_cache`` says whether it was read rather than computed.
    """

    def __init__(
        self,
        data: np.ndarray,
        index: np.ndarray,
        clips: list[Clip],
        skipped: list[tuple[str, str]],
        path: Path | None = None,
        from_cache: bool = False,
    ):
        self.data = data  # [sum T_i, F] (np.memmap when cached)
        self.index = index  # [n, 3] int64: (source position, offset, frames)
        self.clips = clips
        self.skipped = skipped
        self.path = path
        self.from_cache = from_cache

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(f"feature index {i} out of range for {len(self)} clips")
        _, offset, frames = self.index[i]
        # np.array copies out of the (read-only) memmap so the tensor owns writable memory.
        return torch.from_numpy(np.array(self.data[offset : offset + frames], dtype=np.float32))

    @property
    def lengths(self) -> np.ndarray:
        """Frames of each kept clip, ``[n]``."""
        return self.index[:, 2].copy()

    @property
    def num_bins(self) -> int:
        return int(self.data.shape[1])

    def __repr__(self) -> str:
        where = f"cache {self.path}" if self.path else "memory"
        return f"FeatureSet({len(self)} clips, {len(self.skipped)} skipped, {self.data.shape[1]} bins, {where})"


# --------------------------------------------------------------------------- hashing
def _config_dict(frontend: Any) -> dict[str, Any]:
    cfg = getattr(frontend, "cfg", None)
    if cfg is None:
        raise TypeError(f"frontend {type(frontend).__name__} has no .cfg; cannot key the feature cache")
    if dataclasses.is_dataclass(cfg):
        values = dataclasses.asdict(cfg)
    elif isinstance(cfg, dict):
        values = dict(cfg)
    else:
        values = {k: v for k, v in vars(cfg).items() if not k.startswith("_")}
    return {k: values[k] for k in sorted(values) if k not in POST_CACHE_FIELDS}


def cache_key(clips: Sequence[Clip], frontend: Any, clip_seconds: float | None,
              digests_dir: str | Path | None = None) -> str:
    """Content hash of (clip list with each file's SHA-256, clip length, frontend config).

    The file digests come from :func:`ssl_bench.provenance.file_digests` (cached in
    ``digests_dir``, in memory when None): a file is read again only when its stamp changed."""
    from .provenance import file_digests

    h = hashlib.sha256()
    head = {
        "version": CACHE_VERSION,
        "frontend": f"{type(frontend).__module__}.{type(frontend).__qualname__}",
        "config": _config_dict(frontend),
        "clip_seconds": clip_seconds,
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    resolved = [Path(clip.path).expanduser().resolve() for clip in clips]
    digests = file_digests(resolved, digests_dir)
    for path in resolved:
        content = digests.get(str(path), "missing")  # still hashed: the entry records it as skipped
        h.update(b"\n" + name_bytes(path) + f"\t{content}".encode())
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------- computing
#: Skipped clips named one warning each; beyond that one summary warning (AudioSet copies
#: can miss thousands of clips, and a wall of warnings hides everything else).
MAX_SKIP_WARNINGS = 10
#: Clips of one rate are resampled together unless the longest would be padded past this
#: factor of the shortest (zero-padding wastes work, it does not change the numbers).
RESAMPLE_PAD_FACTOR = 1.25

_WORKER = threading.local()


#: glibc ``mallopt`` parameters: blocks below 64 MiB come from (and return to) the heap, and up
#: to 256 MiB of free heap is kept rather than given back to the kernel.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_TUNED: list[bool] = []


def keep_freed_memory() -> bool:
    """Once per process on glibc: keep freed blocks under 64 MiB for reuse (``mallopt``).

    Extraction allocates and frees megabytes per clip (decoded samples, resampling windows,
    FFT output, features).  By default glibc unmaps such blocks when they are freed, and the
    next allocation faults every page back in: on the 2-core development VM, 100-400 page
    faults per clip and about a third of the wall time of files-to-features.  The cost is that
    the process keeps up to 256 MiB of freed memory per malloc arena instead of returning it.
    Returns whether the setting is in effect.
    """
    if not _MALLOC_TUNED:
        ok = False
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
                ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20))
                ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)) and ok
            except (OSError, AttributeError):
                ok = False
        _MALLOC_TUNED.append(ok)
    return _MALLOC_TUNED[0]


def extraction_threads() -> int:
    """Worker threads of :func:`extract`: torch's intra-op thread count (``torch.set_num_threads``)."""
    return max(1, torch.get_num_threads())


def _skip(clip: Clip, reason: str, strict: bool, skipped: list[tuple[str, str]]) -> None:
    if strict:
        raise AudioError(reason if str(clip.path) in reason else f"{clip.path}: {reason}")
    if len(skipped) < MAX_SKIP_WARNINGS:
        warnings.warn(f"skipping clip {clip.key}: {reason}", SkippedClipWarning, stacklevel=3)
    skipped.append((clip.key, reason))


def _warn_rest(skipped: list[tuple[str, str]], total: int, suffix: str = "") -> None:
    if len(skipped) > MAX_SKIP_WARNINGS:
        warnings.warn(
            f"skipped {len(skipped)} of {total} clips in all{suffix} "
            f"({len(skipped) - MAX_SKIP_WARNINGS} more than named above; the list is in FeatureSet.skipped)",
            SkippedClipWarning, stacklevel=3)


def _run_frontend(frontend: Any, waves: list[torch.Tensor], device) -> np.ndarray:
    batch = torch.stack(waves).to(device)
    if isinstance(frontend, torch.nn.Module):
        frontend.to(device)  # its filterbank buffers must sit where the batch is (no-op when already there)
    with torch.no_grad():
        return frontend.compute(batch).float().cpu().numpy()


def _fit_length(wave: torch.Tensor, num_samples: int | None) -> torch.Tensor:
    """:func:`ssl_bench.audio.fit_length` (zero-pad at the end or crop the start) on a tensor."""
    if num_samples is None or wave.shape[-1] == num_samples:
        return wave
    if wave.shape[-1] > num_samples:
        return wave[:num_samples]
    return torch.nn.functional.pad(wave, (0, num_samples - wave.shape[-1]))


#: One clip's outcome: ``(position, features [T, F], None)`` or ``(position, None, reason)``.
Outcome = tuple[int, "np.ndarray | None", "str | None"]


def _decode(clips: Sequence[Clip], job: range, sample_rate: int,
            num_samples: int | None) -> tuple[list[Outcome], list[tuple[int, torch.Tensor]]]:
    """Read the clips of ``job`` and resample them: (failures, ``(position, samples)``).

    Clips of one rate and similar length are resampled as one batch (the kernel of each pair
    of rates is built once per process), then padded or cropped to ``num_samples``.
    """
    failed: list[Outcome] = []
    by_rate: dict[int, list[tuple[int, np.ndarray]]] = {}
    for pos in job:
        try:
            wave, sr = read_audio(clips[pos].path)
        except AudioError as exc:
            failed.append((pos, None, str(exc)))
            continue
        by_rate.setdefault(sr, []).append((pos, wave))
    waves: list[tuple[int, torch.Tensor]] = []
    for sr, group in by_rate.items():
        group.sort(key=lambda item: item[1].shape[0])
        start = 0
        while start < len(group):
            stop, limit = start + 1, group[start][1].shape[0] * RESAMPLE_PAD_FACTOR
            while stop < len(group) and group[stop][1].shape[0] <= limit:
                stop += 1
            chunk = group[start:stop]
            done = resample_batch([w for _, w in chunk], sr, sample_rate)
            waves.extend((pos, _fit_length(w, num_samples)) for (pos, _), w in zip(chunk, done))
            start = stop
    waves.sort(key=lambda item: item[0])
    return failed, waves


def _transform(frontend: Any, waves: list[tuple[int, torch.Tensor]], device, clips: Sequence[Clip]) -> list[Outcome]:
    """The frontend over ``waves`` in groups of equal length (a failing group clip by clip)."""
    groups: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for item in waves:
        groups.setdefault(item[1].shape[0], []).append(item)
    out: list[Outcome] = []
    for items in groups.values():
        try:
            feats = list(_run_frontend(frontend, [w for _, w in items], device))
        except Exception as exc:  # noqa: BLE001 - find the clip(s) the frontend refuses
            if len(items) == 1:
                out.append((items[0][0], None, f"{clips[items[0][0]].path}: frontend failed ({exc})"))
                continue
            feats = []
            for pos, w in items:
                try:
                    feats.append(_run_frontend(frontend, [w], device)[0])
                except Exception as one:  # noqa: BLE001
                    out.append((pos, None, f"{clips[pos].path}: frontend failed ({one})"))
                    feats.append(None)
        for (pos, _), f in zip(items, feats):
            if f is None:
                continue
            if f.shape[0] == 0:
                out.append((pos, None, f"{clips[pos].path}: too short for one frame"))
            elif not np.isfinite(f).all():
                out.append((pos, None, f"{clips[pos].path}: features contain NaN or infinite values"))
            else:
                out.append((pos, f, None))
    return out


def _compute(
    clips: Sequence[Clip],
    frontend: Any,
    clip_seconds: float | None,
    device: str | torch.device,
    batch_size: int,
    strict: bool,
    progress: bool,
    sink,
) -> list[tuple[str, str]]:
    """Decode, resample and transform ``clips``; ``sink(position, features[T, F])`` per clip, in order.

    Batches of ``batch_size`` clips go to :func:`extraction_threads` worker threads, each
    running torch on one thread: a worker reads its files (soundfile releases the GIL),
    resamples them per rate and, on the CPU, runs the frontend.  Parallel over batches rather
    than inside each op, a small machine spends nothing on OpenMP synchronisation (which costs
    more than it gains on a busy two-core machine).  For another device the frontend runs on
    it in this thread, batch after batch, while the workers decode the next ones.
    """
    sample_rate = int(frontend.cfg.sample_rate)
    num_samples = None if clip_seconds is None else int(round(clip_seconds * sample_rate))
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    skipped: list[tuple[str, str]] = []
    bar = None
    if progress:
        from .progress import bar as meter

        bar = meter(len(clips), "features", unit="clip")

    def work(job: range) -> tuple[list[Outcome], list[tuple[int, torch.Tensor]]]:
        if not getattr(_WORKER, "pinned", False):
            torch.set_num_threads(1)  # this thread's intra-op width
            _WORKER.pinned = True
        failed, waves = _decode(clips, job, sample_rate, num_samples)
        if on_cpu:
            return failed + _transform(frontend, waves, device, clips), []
        return failed, waves

    def finish(outcomes: list[Outcome], waves: list[tuple[int, torch.Tensor]], count: int) -> None:
        if waves:
            outcomes = outcomes + _transform(frontend, waves, device, clips)
        for pos, f, reason in sorted(outcomes, key=lambda item: item[0]):
            if reason is not None:
                _skip(clips[pos], reason, strict, skipped)
            else:
                sink(pos, f)
        if bar is not None:
            bar.update(count)

    threads = torch.get_num_threads()
    workers = extraction_threads()
    size = max(1, min(batch_size, math.ceil(len(clips) / workers)))  # a batch for every worker
    jobs = [range(i, min(i + size, len(clips))) for i in range(0, len(clips), size)]
    try:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:  # this thread, at its own torch width
                failed, waves = _decode(clips, job, sample_rate, num_samples)
                finish(failed, waves, len(job))
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="features") as pool:
                queue: list[tuple[Future, int]] = []
                try:
                    for job in jobs:
                        queue.append((pool.submit(work, job), len(job)))
                        if len(queue) > workers:  # a bounded number of batches in memory
                            future, count = queue.pop(0)
                            finish(*future.result(), count)
                    while queue:
                        future, count = queue.pop(0)
                        finish(*future.result(), count)
                finally:  # a strict error: drop the batches not started
                    for future, _ in queue:
                        future.cancel()
    finally:
        # A worker pinning itself also moved the default that threads started later inherit.
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()
    _warn_rest(skipped, len(clips))
    return skipped


def _in_memory(clips, frontend, clip_seconds, device, batch_size, strict, progress) -> FeatureSet:
    parts: dict[int, np.ndarray] = {}
    skipped = _compute(clips, frontend, clip_seconds, device, batch_size, strict, progress,
                       lambda pos, f: parts.__setitem__(pos, f))
    order = sorted(parts)
    index = np.zeros((len(order), 3), dtype=np.int64)
    offset = 0
    for row, pos in enumerate(order):
        index[row] = (pos, offset, parts[pos].shape[0])
        offset += parts[pos].shape[0]
    num_bins = parts[order[0]].shape[1] if order else int(getattr(frontend.cfg, "num_bins", 0))
    data = np.concatenate([parts[p] for p in order]) if order else np.zeros((0, num_bins), np.float32)
    return FeatureSet(data.astype(np.float32, copy=False), index, [clips[p] for p in order], skipped)


def _write_entry(tmp: Path, clips, frontend, clip_seconds, device, batch_size, strict, progress) -> None:
    from .compute import cpu_seconds

    t0, cpu0 = time.time(), cpu_seconds()
    rows: list[tuple[int, int, int]] = []
    offset = 0
    num_bins = [None]
    # Kept clips are finished in increasing position order within each batch, but batches
    # group by length; rows are sorted afterwards so the index follows the clip list.
    with open(tmp / "features.bin", "wb") as out:

        def sink(pos: int, f: np.ndarray) -> None:
            nonlocal offset
            f = np.ascontiguousarray(f, dtype=np.float32)
            if num_bins[0] is None:
                num_bins[0] = f.shape[1]
            out.write(f.tobytes())
            rows.append((pos, offset, f.shape[0]))
            offset += f.shape[0]

        skipped = _compute(clips, frontend, clip_seconds, device, batch_size, strict, progress, sink)
        out.flush()
        os.fsync(out.fileno())
    rows.sort()
    index = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    np.save(tmp / "index.npy", index)
    files = {name: file_record(tmp / name) for name in ENTRY_FILES}
    manifest = {
        "version": CACHE_VERSION,
        "frontend": f"{type(frontend).__module__}.{type(frontend).__qualname__}",
        "config": _config_dict(frontend),
        "clip_seconds": clip_seconds,
        "num_clips": len(clips),
        "num_kept": len(rows),
        "total_frames": offset,
        "num_bins": num_bins[0] if num_bins[0] is not None else int(getattr(frontend.cfg, "num_bins", 0)),
        "keys": [c.key for c in clips],
        "skipped": skipped,
        "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        # what the extraction cost (the compute ledger, `ssl-bench results --compute`)
        "compute": {"wall_s": round(time.time() - t0, 3), "cpu_hours": round((cpu_seconds() - cpu0) / 3600.0, 6),
                    "device": str(device)},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    _write_stamp(tmp)  # the checksums were just taken: a first read need not take them again


#: The data files of an entry, each with its size and checksum in the manifest's ``files``.
ENTRY_FILES = ("features.bin", "index.npy")
#: The stamp (:func:`~ssl_bench.files.file_stamp`) of each data file when its checksum last
#: matched: an unchanged file is not read again to be checked; one written in any way is.
STAMP_NAME = "verified.json"


def _stat(path: Path) -> list[int] | None:
    try:
        return list(file_stamp(path.stat()))
    except OSError:
        return None


def _write_stamp(entry: Path) -> None:
    from .files import atomic_write_text

    try:
        atomic_write_text(entry / STAMP_NAME, json.dumps({n: _stat(entry / n) for n in ENTRY_FILES}))
    except OSError:
        pass  # a read-only cache: the checksums are taken again next time


def check_entry(entry: Path) -> tuple[str | None, dict | None, np.ndarray | None]:
    """``(problem, manifest, index)`` of a cache entry; ``problem`` is None when it is sound.

    Checked: the manifest, the size and checksum of ``features.bin`` and ``index.npy`` against
    the manifest (checksums only when a file changed since it last matched), and that the index
    fits the features (its shape, and every clip's frames inside the file)."""
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        total, bins = int(manifest["total_frames"]), int(manifest["num_bins"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"manifest.json is missing or unreadable ({type(exc).__name__})", None, None
    if manifest.get("version") != CACHE_VERSION:
        return f"format version {manifest.get('version')}, expected {CACHE_VERSION}", None, None
    records = manifest.get("files") or {}
    try:
        stamp = json.loads((entry / STAMP_NAME).read_text())
    except (OSError, ValueError):
        stamp = {}
    checked = False
    for name in ENTRY_FILES:
        path, record = entry / name, records.get(name)
        if record is not None and not verify_all() and stamp.get(name) is not None and stamp.get(name) == _stat(path):
            record = {"size": record["size"]}  # unchanged since its checksum matched
        elif record is not None:
            checked = True
        problem = check_file(path, record, label=name)
        if problem:
            return problem, None, None
    size = (entry / "features.bin").stat().st_size
    if size != total * bins * 4:
        return (f"features.bin holds {size} bytes, the manifest promises {total} frames x {bins} bins "
                "(truncated)"), None, None
    try:
        index = np.load(entry / "index.npy")
    except (OSError, ValueError, EOFError) as exc:
        return f"index.npy is unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})", \
            None, None
    kept = int(manifest.get("num_kept", len(index)))
    if index.ndim != 2 or index.shape != (kept, 3) or index.dtype != np.int64:
        return f"index.npy has shape {index.shape} {index.dtype}, expected ({kept}, 3) int64", None, None
    if kept and (index[:, 1].min() < 0 or index[:, 2].min() < 1 or int((index[:, 1] + index[:, 2]).max()) > total
                 or index[:, 0].min() < 0 or int(index[:, 0].max()) >= int(manifest.get("num_clips", kept))):
        return "index.npy points outside features.bin or the clip list", None, None
    if checked:
        _write_stamp(entry)
    return None, manifest, index


def _entry_ok(entry: Path) -> bool:
    """Whether ``entry`` is a complete, intact cache entry of the current format."""
    return check_entry(entry)[0] is None


def _read_entry(entry: Path, clips: Sequence[Clip], strict: bool, warn: bool = True) -> FeatureSet | None:
    """The cached FeatureSet, or None when the entry is unusable (then it is rebuilt)."""
    problem, manifest, index = check_entry(entry)
    if problem is not None:
        warnings.warn(f"feature cache entry {shown(entry)} is damaged and is rebuilt: {problem}", CacheWarning,
                      stacklevel=3)
        return None
    if manifest.get("keys") != [c.key for c in clips]:
        return None
    total, bins = int(manifest["total_frames"]), int(manifest["num_bins"])
    data_path = entry / "features.bin"
    skipped = [tuple(s) for s in manifest.get("skipped", [])]
    if strict and skipped:
        key, reason = skipped[0]
        raise AudioError(reason if key in reason else f"{key}: {reason}")
    if warn:
        for key, reason in skipped[:MAX_SKIP_WARNINGS]:
            warnings.warn(f"skipping clip {key}: {reason} (cached)", SkippedClipWarning, stacklevel=3)
        _warn_rest(skipped, len(clips), " (cached)")
    data = (np.memmap(data_path, dtype=np.float32, mode="r", shape=(total, bins))
            if total else np.zeros((0, bins), np.float32))
    kept = [clips[int(p)] for p in index[:, 0]]
    return FeatureSet(data, index, kept, skipped, path=entry, from_cache=True)


def extract(
    clips: Sequence[Clip],
    frontend: Any,
    *,
    clip_seconds: float | None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    strict: bool = False,
    progress: bool = True,
    digests_dir: str | Path | None = None,
) -> FeatureSet:
    """Raw log-mel features of ``clips``, computed once and cached.

    Each clip is decoded (mono; :func:`ssl_bench.audio.read_audio`), resampled to ``frontend.cfg.sample_rate`` (:func:`ssl_bench.audio.resample_batch`, the
    numbers of ``torchaudio.functional.resample``), zero-padded or cropped to
    ``clip_seconds`` (``None`` keeps every clip's own length), and transformed with
    ``frontend.compute(waveform[B, N]) -> [B, T, F]`` on ``device`` in batches of
    ``batch_size``, batches in parallel on :func:`extraction_threads` threads.  With ``cache_dir`` the features are stored there (see the module
    docstring) and a later call with the same clips and frontend settings reads them back
    memory-mapped; with ``cache_dir=None`` they are kept in memory only.  ``digests_dir``: where
    the file digests that key the entry are cached (default ``cache_dir``).

    Clips that cannot be used are skipped with a :class:`SkippedClipWarning` and listed in
    ``.skipped``; with ``strict=True`` the first one raises :class:`AudioError` instead.
    """
    clips = list(clips)
    keep_freed_memory()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if cache_dir is None:
        return _in_memory(clips, frontend, clip_seconds, device, batch_size, strict, progress)

    cache_dir = Path(cache_dir)
    entry = cache_dir / cache_key(clips, frontend, clip_seconds, cache_dir if digests_dir is None else digests_dir)
    clean_stale_temps(cache_dir)  # what killed writers left behind, hit or miss
    if entry.is_dir():
        fs = _read_entry(entry, clips, strict)
        if fs is not None:
            return fs
    cache_dir.mkdir(parents=True, exist_ok=True)
    # one writer per entry: a second process (a parallel job of a sweep) waits, then reads it
    with file_lock(cache_dir / ".locks" / entry.name,
                   waiting=lambda: print(f"features: waiting for another process to write {entry}", flush=True)):
        if entry.is_dir():
            fs = _read_entry(entry, clips, strict, warn=False)
            if fs is not None:
                return fs
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(entry.name), dir=cache_dir))
        follow_umask(tmp, directory=True)
        try:
            _write_entry(tmp, clips, frontend, clip_seconds, device, batch_size, strict, progress)
            _install(tmp, entry)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    fs = _read_entry(entry, clips, strict=False, warn=False)  # _compute already warned
    if fs is None:  # pragma: no cover - only if the entry vanished between rename and read
        raise RuntimeError(f"feature cache entry {entry} could not be read back")
    fs.from_cache = False
    return fs


def _install(tmp: Path, entry: Path) -> None:
    """Rename ``tmp`` to ``entry``; if another writer got there first, keep theirs."""
    try:
        os.rename(tmp, entry)
        return
    except OSError:
        if not entry.exists():
            raise
    # An entry exists: valid (a concurrent writer won) or stale/corrupt (replace it).
    if _entry_ok(entry):
        return
    stale = entry.with_name(f".stale-{entry.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(entry, stale)
    except OSError:
        return  # someone else is replacing it right now; theirs will do
    shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, entry)
    except OSError:
        if not entry.exists():
            raise


def norm_stats(features: FeatureSet, max_frames: int | None = 2_000_000,
               indices: Sequence[int] | None = None) -> tuple[float, float]:
    """``(mean, std)`` over every frame and bin of the raw log-mel features.

    ``indices`` restricts the statistics to those clips (a split's training clips).  With
    more than ``max_frames`` frames in total, an evenly spaced subset of clips is used (the
    statistics of a large corpus settle long before every clip is read).
    """
    order = np.arange(len(features)) if indices is None else np.asarray(list(indices), dtype=np.int64)
    if len(order) == 0:
        raise ValueError("cannot compute normalisation statistics of an empty feature set")
    lengths = features.index[order, 2]
    if max_frames is not None and lengths.sum() > max_frames:
        step = int(np.ceil(lengths.sum() / max_frames))
        order = order[::step]
    total, s, ss = 0, 0.0, 0.0
    for i in order:
        _, offset, frames = features.index[i]
        x = np.asarray(features.data[offset : offset + frames], dtype=np.float64)
        total += x.size
        s += x.sum()
        ss += np.square(x).sum()
    mean = s / total
    var = max(ss / total - mean * mean, 0.0)
    return float(mean), float(np.sqrt(var))

"""What produced a number: content digests of audio and weights, and a run's provenance record.

* :func:`file_sha256` hashes a file's bytes, cached per path with the file's stamp (size,
  modification time, inode and status-change time: :func:`~ssl_bench.files.file_stamp`) in a
  small SQLite table under the cache root, so a rerun over the same files reads none of them
  again, while a file written in any way since (replaced, or rewritten in place with its old
  size and modification time restored, as ``cp -p`` and ``rsync -a`` do) is hashed anew.
  ``--verify`` (:func:`~ssl_bench.files.verifying`) hashes every file again.  A damaged
  database is rebuilt with one warning.
* :func:`audio_digest` is the digest of the *content* of the audio a pretraining reads (the
  sorted file digests: the same sounds under other paths give the same digest, other sounds
  under the same paths do not); :func:`dataset_digest` also covers the clip keys (labels hang
  on them) and is what a run records of its task's data.
* :func:`encoder_identity` names an encoder by content: ``init_id`` is the SHA-256 prefix of a
  checkpoint's weights (of a Hugging Face directory: its weights and JSON configs), with a
  readable ``init`` name, and the ssl-bench config saved in it, when there is one.
* :func:`run_record` is the provenance block of ``result.json``: ssl-bench version, git commit
  (and whether the checkout was dirty), Python/torch/torchaudio/CUDA versions, device, host,
  command line, and every plugin loaded (name, origin, version or a file plugin's SHA-256:
  :meth:`ssl_bench.registry.Registry.provenance`).
  It also records the job that ran it (:func:`job_record`: launcher, SLURM job id and array
  index, node, threads).
* :func:`run_key` is a run's identity by content: its settings, protocols, splits, the task's
  data as listed (:meth:`ssl_bench.splitdata.TaskData.fingerprint`) and a checkpoint's
  weights.  A finished run with the same key is the same computation: launchers skip it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shlex
import socket
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

#: Length of the hex prefixes used as ids in tables (48 bits: collisions are not a concern).
ID_LENGTH = 12
#: File names too generic to tell checkpoints apart: their folder's name is put in front.
GENERIC_NAMES = {"pretrained", "checkpoint", "model", "pytorch_model", "best", "last", "final", "weights",
                 "encoder"}
CHUNK = 1 << 20

_lock = threading.Lock()


# --------------------------------------------------------------------------- file digests
class DigestCache:
    """``path -> (size, mtime_ns, inode, ctime_ns, sha256)`` in ``<dir>/digests.sqlite`` (in memory
    when ``dir`` is None).  Several processes may share the file: SQLite serialises the writes.
    A file that is not a readable database of this layout is replaced, with one warning; one that
    is locked too long or read-only is left alone, and this process keeps its digests in memory
    (one warning)."""

    COLUMNS = ("path", "size", "mtime_ns", "ino", "ctime_ns", "sha256")
    #: Seconds to wait for another process's lock on the database.
    TIMEOUT = 60.0

    def __init__(self, directory: str | Path | None):
        self.path = Path(directory) / "digests.sqlite" if directory is not None else None
        self.memory: dict[str, tuple[int, int, int, int, str]] = {}

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=self.TIMEOUT)
        try:
            columns = tuple(r[1] for r in con.execute("PRAGMA table_info(files)"))
            if columns and columns != self.COLUMNS:  # a layout of an older ssl-bench: stamps it cannot trust
                with con:
                    con.execute("DROP TABLE files")
            con.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                        "ino INTEGER, ctime_ns INTEGER, sha256 TEXT)")
        except BaseException:
            con.close()
            raise
        return con

    def _use(self, work: Any) -> Any:
        """``work(connection)`` in one transaction, or None without a usable database (see the
        class docstring)."""
        for attempt in (0, 1):
            if self.path is None:
                return None
            try:
                con = self._open()
                try:
                    with con:
                        return work(con)
                finally:
                    con.close()
            except sqlite3.OperationalError as exc:  # locked, read-only, unreachable: not damaged
                self._without(exc)
            except sqlite3.DatabaseError as exc:  # not a database, or a malformed one
                if attempt:
                    self._without(exc)
                else:
                    self._heal(exc)
        return None

    def _warn(self, text: str) -> None:
        import warnings

        from .files import CacheWarning

        warnings.warn(text, CacheWarning, stacklevel=5)

    def _heal(self, exc: Exception) -> None:
        """Replace a damaged database (its digests are taken again from the files), warning once."""
        from .files import shown

        self._warn(f"digest cache {shown(self.path)} is damaged ({exc}); it is rebuilt, so the files it "
                   "described are hashed again")
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                Path(str(self.path) + suffix).unlink()
            except FileNotFoundError:
                pass

    def _without(self, exc: Exception) -> None:
        """Keep digests in memory from now on (one warning per database and process)."""
        from .files import shown

        if str(self.path) not in _UNUSABLE:
            _UNUSABLE.add(str(self.path))
            self._warn(f"digest cache {shown(self.path)} cannot be used ({exc}); this run keeps file digests in "
                       "memory, so the next run hashes the files again")
        self.path = None

    @staticmethod
    def _key(path: str) -> str:
        """The database key of ``path``: itself, or ``bytes:<hex>`` for a name that is not valid
        UTF-8 (SQLite takes only encodable text)."""
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            return "bytes:" + os.fsencode(path).hex()
        return path

    def lookup(self, paths: Sequence[str]) -> dict[str, tuple[int, int, int, int, str]]:
        found = {p: self.memory[p] for p in paths if p in self.memory}
        keys = {self._key(p): p for p in paths if p not in found}
        if not keys:
            return found

        def select(con: sqlite3.Connection) -> dict[str, tuple[int, int, int, int, str]]:
            out, wanted = {}, list(keys)
            for i in range(0, len(wanted), 500):
                part = wanted[i:i + 500]
                rows = con.execute(f"SELECT {', '.join(self.COLUMNS)} FROM files WHERE path IN "
                                   f"({','.join('?' * len(part))})", part).fetchall()
                out.update({keys[r[0]]: tuple(r[1:]) for r in rows})
            return out

        found.update(self._use(select) or {})
        return found

    def store(self, entries: dict[str, tuple[int, int, int, int, str]]) -> None:
        self.memory.update(entries)
        if entries:
            self._use(lambda con: con.executemany(
                f"INSERT OR REPLACE INTO files VALUES ({', '.join('?' * len(self.COLUMNS))})",
                [(self._key(p), *v) for p, v in entries.items()]))


#: Digest databases found locked or read-only in this process (warned about once).
_UNUSABLE: set[str] = set()


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(paths: Iterable[str | Path], cache_dir: str | Path | None = None,
                 threads: int | None = None) -> dict[str, str]:
    """``{absolute path: sha256 hex}`` of the existing files among ``paths`` (missing ones are
    left out), hashing only those whose stamp (:func:`~ssl_bench.files.file_stamp`: size,
    mtime, inode, ctime) changed since they were last hashed; every one under ``--verify``."""
    from .files import file_stamp, verify_all

    stats: dict[str, tuple[int, int, int, int]] = {}
    for p in paths:
        key = str(Path(p).expanduser().resolve())
        try:
            st = os.stat(key)
        except OSError:
            continue
        stats[key] = file_stamp(st)
    cache = DigestCache(cache_dir)
    with _lock:
        known = {} if verify_all() else cache.lookup(list(stats))
    out, todo = {}, []
    for key, stamp in stats.items():
        hit = known.get(key)
        if hit is not None and tuple(hit[:4]) == stamp:
            out[key] = hit[4]
        else:
            todo.append(key)
    if todo:
        workers = threads or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:  # hashlib releases the GIL on large blocks
            digests = list(pool.map(_hash_file, todo))
        fresh = {key: (*stats[key], d) for key, d in zip(todo, digests)}  # the stamp taken before the read
        with _lock:
            cache.store(fresh)
        out.update({key: d for key, d in zip(todo, digests)})
    return out


def file_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """SHA-256 of one file's bytes (cached as :func:`file_digests`)."""
    found = file_digests([path], cache_dir)
    if not found:
        raise FileNotFoundError(f"{path}: no such file")
    return next(iter(found.values()))


def audio_digest(clips: Sequence[Any], cache_dir: str | Path | None = None) -> str:
    """Digest of the audio content of ``clips`` (objects with ``.path``): the sorted SHA-256 of
    each readable file, so it follows the sounds, not where they are stored."""
    digests = file_digests([c.path for c in clips], cache_dir)
    missing = len({str(Path(c.path).expanduser().resolve()) for c in clips}) - len(digests)
    text = "\n".join(sorted(digests.values())) + f"\nmissing {missing}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def dataset_digest(clips: Sequence[Any], cache_dir: str | Path | None = None) -> dict[str, Any]:
    """What a run records of the data it read: ``{"sha256", "files", "bytes", "missing"}``; the
    digest covers each clip's key (its labels hang on it), its content and, for a clip with
    events, the events themselves (an annotation file can change under the same audio)."""
    digests = file_digests([c.path for c in clips], cache_dir)
    lines, total, missing = [], 0, 0
    for c in clips:
        key = str(Path(c.path).expanduser().resolve())
        d = digests.get(key)
        if d is None:
            missing += 1
            continue
        total += os.stat(key).st_size
        events = getattr(c, "events", ())
        lines.append(f"{c.key}\t{d}" + ("\t" + ";".join(f"{e.label},{e.onset!r},{e.offset!r}" for e in events)
                                         if events else ""))
    text = "\n".join(sorted(lines))
    return {"sha256": hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest(), "files": len(lines), "bytes": total,
            "missing": missing}


# --------------------------------------------------------------------------- encoders
def _weights_files(path: Path) -> list[Path]:
    """The files whose bytes make up a checkpoint: the file, or a directory's weights and JSON
    configuration files (a Hugging Face model directory)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in sorted(path.iterdir()) if p.is_file()
                 and (p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt") or p.suffix == ".json")]
        if files:
            return files
    raise FileNotFoundError(f"{path}: no such checkpoint file or directory")


def weights_digest(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """SHA-256 of a checkpoint's content (a directory's files, by name and content)."""
    path = Path(path).expanduser()
    files = _weights_files(path)
    if len(files) == 1 and files[0] == path:
        return file_sha256(path, cache_dir)
    digests = file_digests(files, cache_dir)
    text = "\n".join(f"{p.name}\t{digests[str(p.resolve())]}" for p in files)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def readable_name(path: str | Path) -> str:
    """A short name for a checkpoint: its stem, behind its folder's name when the stem says
    nothing (``run-a/pretrained``), a directory's own name."""
    path = Path(path).expanduser()
    stem = path.name if path.is_dir() else path.stem
    parent = path.parent.name
    if stem.lower() in GENERIC_NAMES and parent:
        if len(parent) >= 12 and all(c in "0123456789abcdef" for c in parent.lower()):
            return f"{stem}-{parent[:6]}"  # an encoder in the pretraining cache: <hash>/pretrained.pt
        return f"{parent}/{stem}"
    return stem


@lru_cache(maxsize=64)
def _ssl_bench_payload(path: str, stamp: tuple[int, int, int, int]) -> dict[str, Any] | None:
    """The non-tensor part of an ssl-bench checkpoint (config, name, pretraining hash), read
    with ``mmap`` so that the weights themselves are not read."""
    if path.endswith(".safetensors"):
        return None
    import torch

    from .checkpoint import SAFE_GLOBALS, is_ssl_bench

    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - foreign or legacy formats: the importer reports them
        return None
    if not is_ssl_bench(obj):
        return None
    return {k: v for k, v in obj.items() if k != "model"}


def checkpoint_payload(path: str | Path) -> dict[str, Any] | None:
    """``{"config": ..., "name": ..., "pretrain_hash": ...}`` of an ssl-bench checkpoint file
    (``None`` for official, Hugging Face and other files, and for directories)."""
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    from .files import file_stamp

    payload = _ssl_bench_payload(str(path.resolve()), file_stamp(path.stat()))
    return copy.deepcopy(payload) if payload is not None else None


def encoder_identity(path: str | Path, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """``{"init", "init_id", "sha256", "config"}`` of a checkpoint: a readable name (the name
    saved in an ssl-bench checkpoint, else :func:`readable_name`), the content id, the full
    digest, and the ssl-bench config saved with it (``None`` when it carries none)."""
    digest = weights_digest(path, cache_dir)
    payload = checkpoint_payload(path) or {}
    name = _stored_name(Path(path).expanduser(), digest) or payload.get("name") or readable_name(path)
    return {"init": str(name), "init_id": digest[:ID_LENGTH], "sha256": digest, "config": payload.get("config")}


def find_checkpoint(ref: str | Path, cache_dir: str | Path) -> Path:
    """The checkpoint ``ref`` names: an existing file or directory, else the id of an encoder
    in ``<cache_dir>/pretrain/`` (a prefix of its weights' SHA-256, its ``init_id``, or of its
    pretraining hash), as ``ssl-bench pretrain`` prints it."""
    from .config import ConfigError

    path = Path(ref).expanduser()
    if path.exists():
        return path
    text = str(ref).strip().lower()
    store = Path(cache_dir) / "pretrain"
    known: list[tuple[str, str, Path]] = []
    for meta_path in sorted(store.glob("*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        weights = meta_path.parent / "pretrained.pt"
        if weights.is_file():
            known.append((str(meta.get("weights_sha256", "")), meta_path.parent.name, weights))
    if len(text) >= 6 and all(c in "0123456789abcdef" for c in text):
        hits = {w for sha, h, w in known if sha.startswith(text) or h.startswith(text)}
        if len(hits) == 1:
            return hits.pop()
        if len(hits) > 1:
            raise ConfigError(f"--checkpoint {ref}: {len(hits)} encoders under {store} start with this id; "
                              "give more of it")
    ids = ", ".join(sha[:ID_LENGTH] for sha, _, _ in known if sha) or "none"
    raise ConfigError(f"--checkpoint {ref}: no such file or directory, and no encoder with that id under {store} "
                      f"(encoder ids there: {ids})")


def _stored_name(path: Path, digest: str) -> str | None:
    """The name ``ssl-bench pretrain --name`` gave an encoder (its ``meta.json``), if the file
    is that encoder's weights."""
    meta_path = path.parent / "meta.json"
    if not path.is_file() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    return meta.get("name") if meta.get("weights_sha256") == digest else None


# --------------------------------------------------------------------------- the run
@lru_cache(maxsize=1)
def git_state() -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout ssl-bench runs from, or ``None`` when it is an
    installed copy (or git is not there)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=20, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def versions() -> dict[str, Any]:
    """ssl-bench, Python, torch, torchaudio, CUDA and cuDNN versions."""
    import torch

    from .version import __version__

    try:
        import torchaudio

        ta = torchaudio.__version__
    except Exception:  # noqa: BLE001 - recorded as absent
        ta = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"ssl_bench": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchaudio": ta, "cuda": torch.version.cuda, "cudnn": cudnn}


def code_version() -> str:
    """``0.1.0+g<commit12>[.dirty]`` from a checkout, else the package version: one column that
    says which code produced a row."""
    from .version import __version__

    git = git_state()
    if git is None:
        return __version__
    return f"{__version__}+g{git['commit'][:ID_LENGTH]}{'.dirty' if git['dirty'] else ''}"


#: The command line of this process's ssl-bench command (set by the CLI, which may be called
#: in-process with its own argv); ``sys.argv`` when unset.
_COMMAND: list[str] | None = None


def set_command(argv: Sequence[str] | None) -> None:
    """Record ``ssl-bench <argv>`` as the command line runs report (``None``: ``sys.argv``)."""
    global _COMMAND
    _COMMAND = ["ssl-bench", *argv] if argv is not None else None


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command line of this process's ssl-bench command, as runs record it."""
    argv = list(argv if argv is not None else _COMMAND or sys.argv)
    return shlex.join([Path(argv[0]).name if argv else "python", *argv[1:]])


def run_record(device: Any = None, argv: Sequence[str] | None = None, registry: Any = None) -> dict[str, Any]:
    """The provenance block of a run record (see the module docstring); ``registry``: where the
    plugins were loaded (default the process-wide one)."""
    import torch

    from .registry import get_registry

    dev = torch.device(device) if device is not None else None
    name = torch.cuda.get_device_name(dev) if dev is not None and dev.type == "cuda" else (
        platform.processor() or platform.machine())
    return {
        "versions": versions(),
        "git": git_state(),
        "code_version": code_version(),
        "device": {"type": dev.type if dev is not None else None, "name": name},
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "command": command_line(argv),
        "plugins": (registry if registry is not None else get_registry()).provenance(),
        "job": job_record(),
    }


#: Environment variables through which a launcher tells a unit's process what it is
#: (:func:`job_record`); SLURM and submitit set their own.
LAUNCHER_ENV, JOB_ENV, JOBS_ENV = "SSL_BENCH_LAUNCHER", "SSL_BENCH_JOB_ID", "SSL_BENCH_JOBS"


def job_record() -> dict[str, Any]:
    """The job this process runs in: ``launcher`` (``local`` unless a launcher said otherwise),
    ``job_id`` (SLURM's, ``<array job>_<index>`` for an array task; submitit's local job id; a
    pool worker's id; else this process's id), ``array_index``, ``node``, ``threads`` (torch's
    intra-op threads) and ``jobs`` (how many jobs the launcher runs at once; None where a
    scheduler decides, or no launcher ran it)."""
    import torch

    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    else:
        job_id = env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID") or env.get(JOB_ENV) or f"pid{os.getpid()}"
    jobs = env.get(JOBS_ENV)
    return {"launcher": env.get(LAUNCHER_ENV, "local"), "job_id": job_id,
            "array_index": int(env["SLURM_ARRAY_TASK_ID"]) if env.get("SLURM_ARRAY_TASK_ID", "").isdigit() else None,
            "node": env.get("SLURMD_NODENAME") or socket.gethostname(), "threads": int(torch.get_num_threads()),
            "jobs": int(jobs) if jobs and jobs.isdigit() else None}


def run_key(config: dict[str, Any], protocols: Sequence[str], splits: Sequence[str], data: str,
            checkpoint_sha256: str | None = None, columns: dict[str, Any] | None = None) -> str:
    """A run's identity by content (see the module docstring): the resolved ``config`` as given
    (minus what changes no number: checkpoint cadence, loader workers, the checkpoint's path,
    which ``checkpoint_sha256`` replaces), ``protocols``, ``splits`` (names, in order), ``data``
    (the task's fingerprint) and extra row ``columns`` (a suite's name and version).  Not the
    code, as no cache here is keyed by it: a run keeps the ``code_version`` that computed it in
    every row, and a launcher says when a finished run it reuses came from other code."""
    from .config import BOOKKEEPING_FIELDS, config_hash

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in BOOKKEEPING_FIELDS}
        return node

    settings = strip({k: v for k, v in config.items() if k != "checkpoint"})
    if isinstance(settings.get("data"), dict):
        settings["data"] = {k: v for k, v in settings["data"].items() if k != "num_workers"}
    return config_hash({"config": settings, "protocols": list(protocols), "splits": list(splits), "data": data,
                        "checkpoint": checkpoint_sha256, "columns": dict(columns or {})})


def jsonable(obj: Any) -> Any:
    """A JSON round trip of ``obj`` (tuples become lists), for comparing records."""
    return json.loads(json.dumps(obj, default=str))

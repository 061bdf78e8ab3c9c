"""Small file helpers shared by the caches, the results writer and the tasks.

* :func:`name_bytes`: the bytes of a file name or key that may not be valid UTF-8 (POSIX file
  names are bytes; Python carries the undecodable ones as surrogate escapes), for hashing;
* :func:`shown`: a name for messages that is always printable (``repr`` when not valid UTF-8);
* :func:`follow_umask`: ``mkdtemp``/``mkstemp`` make owner-only (0700/0600) entries; results
  and caches are meant to be shared, so they get the permissions of an ordinary ``mkdir``/``open``;
* :func:`temp_prefix` / :func:`clean_stale_temps`: temporary directories named after the
  writer (host, process id, process start), so a later writer on the same host can tell a
  dead writer's leftovers from a live one's and remove them;
* :func:`blake2_file`: a fast content checksum of a file (BLAKE2b, 128 bits);
* :func:`file_stamp`: what says a file may have changed since it was last read: size,
  modification time, inode and *status-change* time (ctime).  ``touch -d``, ``cp -p``,
  ``rsync -a`` and archive extraction set the modification time back; nothing a user can call
  sets the ctime back, so a file written in place always gets a new stamp;
* :func:`verifying` / :func:`verify_all`: ``--verify``: trust no stamp, read and check every
  file again (digests, cache entries, weights);
* :func:`disk_full_message`: one line saying that the disk is full, naming the file;
* :func:`check_writable`: before any work, one line when a folder cannot be written.
* :func:`file_lock`: one writer at a time for a cache entry, across processes and hosts that
  share the filesystem (``flock``, which Linux NFS clients carry over as POSIX locks);
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import DiskFullError, UserError


def cache_root(results_root: str | os.PathLike) -> Path:
    """Where features, pretrained encoders and embeddings are cached: ``$SSL_BENCH_CACHE`` or
    ``<results_root>/.cache``."""
    env = os.environ.get("SSL_BENCH_CACHE")
    return Path(env) if env else Path(results_root) / ".cache"


def json_default(obj: Any) -> Any:
    """``json.dumps``'s fallback for what a record may hold: a numpy or torch scalar as its
    number, anything else as its text."""
    return obj.item() if hasattr(obj, "item") else str(obj)


def name_bytes(name: str | os.PathLike) -> bytes:
    """The bytes of a file name or clip key, surrogate-escaped characters included."""
    return os.fsencode(os.fspath(name))


def shown(name: str | os.PathLike) -> str:
    """``name`` as text for a message: itself when it is valid UTF-8, else its ``repr``."""
    text = os.fspath(name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return repr(text)
    return text


def file_stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """``(size, mtime_ns, inode, ctime_ns)`` of a ``stat`` result: a file whose stamp is unchanged
    has not been written since (see the module docstring); one whose stamp changed may have
    been, and is read again."""
    return (int(st.st_size), int(st.st_mtime_ns), int(st.st_ino), int(st.st_ctime_ns))


_VERIFY: list[bool] = [False]


def verify_all() -> bool:
    """Whether every file is to be read and checked again, whatever its stamp says (``--verify``)."""
    return _VERIFY[0]


@contextlib.contextmanager
def verifying(on: bool = True) -> Iterator[None]:
    """Within the block, no stamp is trusted: digests are taken again from the bytes, cache
    entries are checksummed in full, weights rehashed (``ssl-bench run --verify``)."""
    old, _VERIFY[0] = _VERIFY[0], bool(on)
    try:
        yield
    finally:
        _VERIFY[0] = old


def umask() -> int:
    """The process umask: from ``/proc/self/status`` on Linux (no change to it, so safe beside
    other threads), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike, directory: bool | None = None) -> None:
    """Give ``path`` the mode an ordinary ``mkdir`` (0777) or ``open`` (0666) would, under the umask."""
    path = Path(path)
    if directory is None:
        directory = path.is_dir()
    try:
        os.chmod(path, (0o777 if directory else 0o666) & ~umask())
    except OSError:
        pass  # not ours to change (a shared directory owned by someone else): leave it


def _process_start() -> str:
    """This process's start time (clock ticks since boot on Linux; else the import time)."""
    try:
        with open(f"/proc/{os.getpid()}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return str(int(_IMPORTED))


_IMPORTED = time.time()


def _host() -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:32] or "host"


def temp_prefix(name: str) -> str:
    """``.tmp-<name>-<host>-<pid>-<start>-`` for a temporary directory of this process."""
    return f".tmp-{name}-{_writer()}-"


def _writer() -> str:
    """``<host>-<pid>-<start>``: who writes a temporary file or directory, so that a later writer
    can tell a dead one's leftovers from a live one's."""
    return f"{_host()}-{os.getpid()}-{_process_start()}"


def _left_by_the_dead(tail: str, host: str) -> bool:
    """Whether ``<pid>-<start>-...`` (what follows ``<host>-`` in a temporary name) names a
    process of this host that is no longer running."""
    parts = tail.split("-")
    if len(parts) < 2 or not parts[0].isdigit():
        return False
    return not _alive(int(parts[0]), parts[1])


def _alive(pid: int, start: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode() == start
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True  # cannot tell: keep it


def process_tag() -> dict[str, Any]:
    """This process as another one can check on it: host, pid and start time."""
    return {"host": _host(), "pid": os.getpid(), "start": _process_start()}


def process_alive(tag: dict[str, Any]) -> bool | None:
    """Whether the process of a :func:`process_tag` is still running; ``None`` for a process of
    another host (it cannot be checked from here)."""
    if tag.get("host") != _host() or not str(tag.get("pid", "")).isdigit():
        return None
    return _alive(int(tag["pid"]), str(tag.get("start")))


def clean_stale_temps(root: str | os.PathLike, min_age_s: float = 60.0) -> list[Path]:
    """Remove ``.tmp-*`` directories under ``root`` left by dead writers on this host.

    A directory is removed when its name carries this host, a process id and that process's
    start time (:func:`temp_prefix`), and no process with that id and start time is running,
    and it is older than ``min_age_s``.  Directories of other hosts or of the older naming are
    left alone (their writer may be alive elsewhere).  Returns what was removed.
    """
    root = Path(root)
    host = _host()
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    stale = [e for e in entries if e.name.startswith(".tmp-") and f"-{host}-" in e.name
             and _left_by_the_dead(e.name.rsplit(f"-{host}-", 1)[1], host)]
    return _remove_old(stale, min_age_s)


def clean_stale_temp_files(path: str | os.PathLike, min_age_s: float = 60.0) -> list[Path]:
    """Remove the temporary files that writers of ``path`` (:func:`atomic_write`) killed on this
    host left beside it: ``.<name>.<host>-<pid>-<start>-*.tmp`` of processes no longer running,
    older than ``min_age_s``.  A checkpoint writer killed by SIGKILL leaves one the size of the
    checkpoint.  Returns what was removed."""
    path = Path(path)
    head = f".{path.name}.{_host()}-"
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(head) and n.endswith(".tmp")]
    except OSError:
        return []
    stale = [path.parent / n for n in names if _left_by_the_dead(n[len(head):], _host())]
    return _remove_old(stale, min_age_s)


def _remove_old(paths: list[Path], min_age_s: float) -> list[Path]:
    now, removed = time.time(), []
    for entry in paths:
        try:
            if now - entry.lstat().st_mtime < min_age_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def blake2_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """BLAKE2b (128-bit) hex digest of a file's content."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or exceeded quota.

    ``torch.save`` reports a failed write as ``RuntimeError: ... unexpected pos``; that is
    counted as a full disk only when the filesystem indeed has no room left (checked by the
    caller with :func:`free_bytes`)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def write_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that failed for lack of space: ``ENOSPC``/``EDQUOT``, or
    ``torch.save``'s ``unexpected pos`` / ``failed writing`` (its way of saying the same)."""
    if is_disk_full(exc):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("unexpected pos" in text or "failed writing" in text)


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free to this user on the filesystem of ``path`` (None when unknown)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_full_message(path: str | os.PathLike) -> str:
    """One line: writing ``path`` failed for lack of disk space, and what to do."""
    free = free_bytes(path)
    left = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
    return (f"{shown(path)}: no space left on the device{left}; free some space (or point "
            "--results / SSL_BENCH_CACHE elsewhere) and run the same command again to resume")


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Raise a one-line :class:`UserError` when files cannot be created in folder ``path`` (or, if
    it does not exist yet, in the nearest folder above it, where it would be made): a read-only
    results folder is found before any data work, not by the first write hours later.  It is
    tried, not inferred from modes (root ignores them; read-only mounts and immutable folders
    do not).  ``what``: how the message names the folder (``--results``)."""
    path = Path(path)
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise UserError(f"{what} {shown(path)}: {shown(where)} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ssl-bench-probe-", dir=where)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(disk_full_message(path)) from None
        raise UserError(f"{what} {shown(path)}: not writable ({exc.strerror or exc}); choose another folder") from None
    os.close(fd)
    os.unlink(probe)


# --------------------------------------------------------------------------- checksums
class CacheWarning(UserWarning):
    """A cache entry that failed its check (truncated, overwritten, unreadable) and is rebuilt."""


def sum_path(path: str | os.PathLike) -> Path:
    """The checksum file kept beside ``path``: ``<path>.sum``."""
    path = Path(path)
    return path.with_name(path.name + ".sum")


def file_record(path: str | os.PathLike) -> dict:
    """``{"size", "blake2b"}`` of a file, what :func:`check_file` compares against."""
    return {"size": os.path.getsize(path), "blake2b": blake2_file(path)}


def write_sum(path: str | os.PathLike) -> None:
    """Record ``path``'s size and checksum in ``<path>.sum`` (written atomically)."""
    import json

    atomic_write_text(sum_path(path), json.dumps(file_record(path)))


def check_file(path: str | os.PathLike, record: dict | None, label: str | None = None) -> str | None:
    """What is wrong with ``path`` against ``record`` (``{"size", "blake2b"}``), or None.

    The size is compared first (a truncated file costs no read), then the checksum.  ``label``:
    how the message names the file (default its path)."""
    path = Path(path)
    label = label or shown(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"{label} cannot be read ({exc.strerror or exc})"
    if record is None:
        return None
    if size != int(record.get("size", -1)):
        return f"{label} holds {size} bytes, {record.get('size')} were written (truncated or replaced)"
    if record.get("blake2b") and blake2_file(path) != record["blake2b"]:
        return f"{label} does not match the checksum written with it (overwritten or damaged)"
    return None


def check_sum(path: str | os.PathLike) -> str | None:
    """What is wrong with ``path`` against its ``.sum`` file, or None.  A file without its
    ``.sum`` cannot be checked, and is reported as such (nothing unchecked is served)."""
    import json

    sp = sum_path(path)
    if not sp.is_file():
        return check_file(path, None) or f"{shown(sp)} is missing: nothing to check {shown(Path(path).name)} against"
    try:
        record = json.loads(sp.read_text())
    except (OSError, ValueError):
        return f"{shown(sp)} is unreadable"
    return check_file(path, record)


def discard(*paths: str | os.PathLike) -> None:
    """Remove cache files (and their ``.sum``) that failed a check; missing ones are fine."""
    for p in paths:
        for q in (Path(p), sum_path(p)):
            try:
                q.unlink()
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                shutil.rmtree(q, ignore_errors=True)


def atomic_write(path: str | Path, mode: str, write: Any) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync, then rename over ``path``.

    The temporary file is named after its writer (``.<name>.<host>-<pid>-<start>-*.tmp``): one
    left by a killed writer is removed by the next write of ``path`` on that host."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp_files(path)  # what a killed writer of this file left (a whole checkpoint's size)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_writer()}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        follow_umask(tmp, directory=False)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if write_failed(exc):
            raise DiskFullError(disk_full_message(path)) from exc
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    return atomic_write(path, "w", lambda fh: fh.write(text))


# --------------------------------------------------------------------------- locks
@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, waiting: Callable[[], None] | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created, with its folder, if missing) for the block.

    Every writer of one cache entry takes the entry's lock, so two processes never write it at
    once: the second waits, then finds the entry the first made.  The lock goes with the
    process (a killed writer leaves no stale lock).  ``waiting`` is called once when the lock
    is held by someone else, before blocking (to say so in a log).
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # releases the lock

"""Dataset downloads: resumable, verified, unpacked atomically, with a clear offline message.

::

    archive = download(url, dest_dir / "archive.zip", sha256=PINNED_SHA256)
    unpack(archive, dest_dir / "esc50")

Tasks pin what they download: a fixed release URL and its published SHA-256.  A download
whose digest differs is deleted and refused before anything is unpacked.  Where no digest is
known, the one measured is recorded (``DOWNLOAD_RECORD`` in the dataset folder, and in each
run's provenance), so two copies can still be told apart.

A partial download is kept as ``<name>.part`` and resumed with an HTTP ``Range`` request.
An archive is unpacked into a temporary sibling directory and renamed into place, so an
interrupted unpack never leaves a half-filled dataset behind.  When the network is
unreachable (or ``SSL_BENCH_OFFLINE=1``), :class:`DownloadError` says which URL to fetch
and where to put it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError
from .files import follow_umask

CHUNK = 1 << 20
#: File in a downloaded dataset folder naming the archive it was unpacked from.
DOWNLOAD_RECORD = ".ssl-bench-download.json"


class DownloadError(UserError, RuntimeError):
    """A download that failed or could not be verified; says what to do by hand."""


class DataNotHere(UserError, FileNotFoundError):
    """A task's data is not here, and it may not be downloaded or built now (a run's plan, a
    dry run): it would be when the run starts."""


_FETCHING = [True]


@contextlib.contextmanager
def no_fetching() -> Iterator[None]:
    """Inside, a task that would download or build its data raises :class:`DataNotHere`
    instead (what a run's plan reads must cost nothing)."""
    old, _FETCHING[0] = _FETCHING[0], False
    try:
        yield
    finally:
        _FETCHING[0] = old


def fetching_allowed() -> bool:
    """False inside :func:`no_fetching`: a task's ``prepare()`` must not download or build then."""
    return _FETCHING[0]


def offline() -> bool:
    """True when ``SSL_BENCH_OFFLINE`` is set to a true value: never touch the network."""
    return os.environ.get("SSL_BENCH_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def manual_instructions(url: str, destination: Path, expect: str | None = None) -> str:
    """The sentence every failed download ends with."""
    tail = f" so that {expect} exists" if expect else ""
    return f"download {url} yourself and unpack it into {destination}{tail}, or pass --data-dir pointing at an existing copy"


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file (``sha256``, ``md5``, ...)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, sha256: str | None = None, md5: str | None = None, source: str | None = None) -> None:
    """Raise :class:`DownloadError` if ``path`` does not have the given checksum(s)."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            actual = file_digest(path, algorithm)
            if actual.lower() != expected.lower():
                origin = f" (from {source})" if source else ""
                raise DownloadError(f"{path}{origin}: {algorithm} is {actual}, expected {expected} (pinned); "
                                    "the file is corrupt or not the pinned release, so nothing was unpacked")


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    manual_hint: str | None = None,
) -> Path:
    """Fetch ``url`` to ``dest`` (resuming a previous ``dest.part``), verify it, return ``dest``.

    An existing ``dest`` that passes verification is returned as is.  A checksum mismatch
    deletes the bad file and raises.  Network failures raise :class:`DownloadError` that
    names the URL and where the file should go (``manual_hint`` replaces that advice).
    """
    dest = Path(dest)
    hint = manual_hint or f"download {url} yourself and save it as {dest}"
    if dest.exists():
        try:
            verify(dest, sha256, md5, source=url)
        except DownloadError:
            dest.unlink(missing_ok=True)  # the next attempt downloads afresh
            raise
        return dest
    if offline():
        raise DownloadError(f"offline (SSL_BENCH_OFFLINE is set): {hint}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "ssl-bench"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already complete
            response = None
        else:
            raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; {hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot download {url}: {reason}; {hint}") from None

    if response is not None:
        with response:
            resumed = have and response.status == 206
            mode = "ab" if resumed else "wb"
            if not resumed:
                have = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            bar = None
            if progress:
                from .progress import bar as meter

                bar = meter(total, dest.name, initial=have, unit="B", unit_scale=True)
            try:
                with open(part, mode) as out:
                    while True:
                        try:
                            block = response.read(CHUNK)
                        except OSError as exc:
                            raise DownloadError(
                                f"download of {url} interrupted after {out.tell()} bytes ({exc}); "
                                f"run again to resume, or {hint}"
                            ) from None
                        if not block:
                            break
                        out.write(block)
                        if bar is not None:
                            bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
            if total is not None and part.stat().st_size < total:
                raise DownloadError(
                    f"download of {url} stopped at {part.stat().st_size} of {total} bytes; run again to resume, or {hint}"
                )
    try:
        verify(part, sha256, md5, source=url)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def _safe_members_tar(tar: tarfile.TarFile, target: Path, destination: Path) -> list[tarfile.TarInfo]:
    """The members of ``tar`` to unpack into ``target`` (the temporary folder that becomes
    ``destination``, which messages name)."""
    root = target.resolve()
    members = []
    for m in tar.getmembers():
        if m.issym() or m.islnk() or m.isdev():
            continue  # datasets need none; links could point outside the target
        path = (target / m.name).resolve()
        if path != root and root not in path.parents:
            raise DownloadError(f"archive member {m.name!r} would be written outside {destination}")
        members.append(m)
    return members


def unpack(archive: str | Path, destination: str | Path) -> Path:
    """Unpack a .zip / .tar(.gz|.bz2|.xz) archive into ``destination``, atomically.

    The archive is extracted into a temporary sibling directory that is renamed to
    ``destination`` when complete; an existing non-empty ``destination`` is left alone.
    Members that would land outside the destination are refused.
    """
    archive, destination = Path(archive), Path(destination)
    if destination.exists() and any(destination.iterdir()):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.unpack-", dir=destination.parent))
    follow_umask(tmp, directory=True)  # mkdtemp makes it owner-only
    try:
        name = archive.name.lower()
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                root = tmp.resolve()
                for info in z.infolist():
                    path = (tmp / info.filename).resolve()
                    if path != root and root not in path.parents:
                        raise DownloadError(f"archive member {info.filename!r} would be written outside {destination}")
                z.extractall(tmp)
        elif any(name.endswith(ext) for ext in (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
            with tarfile.open(archive) as tar:
                members = _safe_members_tar(tar, tmp, destination)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: also strip odd modes
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - older Pythons
                    tar.extractall(tmp, members=members)
        else:
            raise DownloadError(f"{archive}: unknown archive type (expected .zip or .tar.*)")
        try:
            os.rename(tmp, destination)
        except OSError:
            if not (destination.exists() and any(destination.iterdir())):
                raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DownloadError(f"{archive}: cannot unpack ({exc}); delete it and download again") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return destination


def fetch_dataset(
    url: str,
    destination: str | Path,
    *,
    archive_name: str,
    expect: str,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    keep_archive: bool = False,
) -> Path:
    """Download ``url`` and unpack it into ``destination`` unless ``destination/expect`` exists.

    ``expect`` may be a glob pattern (``ESC-50*/meta/esc50.csv``).  The archive is stored next
    to ``destination`` (``<destination>.<archive_name>``) while downloading, so an interrupted
    download resumes; it is verified against ``sha256``/``md5`` before anything is unpacked
    (a mismatch deletes it and raises), and deleted after a successful unpack unless
    ``keep_archive``.  ``destination/DOWNLOAD_RECORD`` records the URL, the archive's SHA-256
    and whether it matched a pinned digest.
    """
    destination = Path(destination)
    if _found(destination, expect):
        return destination
    if not fetching_allowed():
        raise DataNotHere(f"{destination}: {expect} is not there yet; it is downloaded from {url} when the run starts")
    hint = manual_instructions(url, destination, str(destination / expect))
    archive = destination.parent / f"{destination.name}.{archive_name}"
    download(url, archive, sha256=sha256, md5=md5, progress=progress, manual_hint=hint)
    digest = sha256.lower() if sha256 else file_digest(archive, "sha256")
    unpack(archive, destination)
    if not _found(destination, expect):
        raise DownloadError(f"{url} unpacked into {destination} but {expect} is not there; {hint}")
    record = {"url": url, "sha256": digest, "verified": bool(sha256 or md5)}
    (destination / DOWNLOAD_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return destination


def _found(destination: Path, expect: str) -> bool:
    return any(destination.glob(expect)) if any(c in expect for c in "*?[") else (destination / expect).exists()


def download_record(directory: str | Path) -> dict | None:
    """What :func:`fetch_dataset` recorded about the archive a dataset folder came from
    (``directory`` or one of its parents), or ``None`` for a copy made by hand."""
    directory = Path(directory)
    for d in (directory, *directory.parents[:2]):
        path = d / DOWNLOAD_RECORD
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                return None
    return None

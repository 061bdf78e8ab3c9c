"""Pinned dataset downloads: a tagged release URL and its SHA-256 per task; a mismatch is one
clear error and nothing is unpacked (archives served from file:// fixtures, no network)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
import taskfixtures as fx

from ssl_bench.download import DOWNLOAD_RECORD, DownloadError, download_record


def _esc50_zip(tmp: Path) -> bytes:
    src = fx.make_esc50(tmp / "src-esc", num_classes=2, per_fold=1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.writestr(f"ESC-50-master/{p.relative_to(src).as_posix()}", p.read_bytes())
    return buf.getvalue()


def _speechcommands_tgz(tmp: Path) -> bytes:
    src = fx.make_speechcommands(tmp / "src-sc", words=("yes", "no"), speakers=4)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(src.rglob("*")):
            tar.add(p, arcname=p.relative_to(src).as_posix(), recursive=False)
    return buf.getvalue()


def test_the_real_pins():
    from ssl_bench.tasks.esc50 import ESC50Task
    from ssl_bench.tasks.speechcommands import SpeechCommandsTask

    assert "/releases/download/v2.0.0/" in ESC50Task.download_url  # a tagged release, not a branch
    # ESC-50 publishes no digest and none was measurable offline: unpinned, recorded at download
    assert ESC50Task.download_sha256 is None
    assert SpeechCommandsTask.download_url.endswith("speech_commands_v0.02.tar.gz")
    assert SpeechCommandsTask.download_sha256 == "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"


@pytest.mark.parametrize("task_name, build, archive", [
    ("esc50", _esc50_zip, "ESC-50.zip"),
    ("speechcommands", _speechcommands_tgz, "speech_commands_v0.02.tar.gz"),
])
def test_a_digest_mismatch_is_one_error_and_nothing_is_unpacked(tmp_path, monkeypatch, task_name, build, archive):
    from ssl_bench.registry import get_registry

    monkeypatch.delenv("SSL_BENCH_OFFLINE", raising=False)
    payload = build(tmp_path)
    served = tmp_path / "served" / archive
    served.parent.mkdir()
    served.write_bytes(payload)
    cls = get_registry().get("task", task_name).factory
    task = cls(tmp_path / "data")
    task.download_url = served.as_uri()
    task.download_sha256 = "0" * 64  # a pin the archive does not match
    with pytest.raises(DownloadError, match=r"sha256 is [0-9a-f]{64}, expected 0{64} \(pinned\).*nothing was unpacked"):
        task.prepare()
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())  # nothing unpacked
    assert not list(tmp_path.glob("data.*"))  # the bad archive is deleted, no .part left
    # the right pin: verified, unpacked, recorded
    task = cls(tmp_path / "data")
    task.download_url = served.as_uri()
    task.download_sha256 = hashlib.sha256(payload).hexdigest()
    assert len(task.classes) == 2
    record = json.loads((tmp_path / "data" / DOWNLOAD_RECORD).read_text())
    assert record == {"url": served.as_uri(), "sha256": task.download_sha256, "verified": True}
    assert download_record(task.root) == record


def test_an_unpinned_download_records_the_digest_it_measured(tmp_path, monkeypatch):
    from ssl_bench.tasks.esc50 import ESC50Task

    monkeypatch.delenv("SSL_BENCH_OFFLINE", raising=False)
    payload = _esc50_zip(tmp_path)
    served = tmp_path / "ESC-50.zip"
    served.write_bytes(payload)
    task = ESC50Task(tmp_path / "esc")
    task.download_url = served.as_uri()
    assert task.download_sha256 is None
    assert task.classes == ["dog", "rooster"]
    assert task.root == tmp_path / "esc" / "ESC-50-master"
    record = download_record(task.root)
    assert record == {"url": served.as_uri(), "sha256": hashlib.sha256(payload).hexdigest(), "verified": False}

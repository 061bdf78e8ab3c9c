"""Tasks: each real on-disk layout (generated fixtures), its folds/splits/labels/metrics,
clear metadata errors, downloads (local HTTP server), and end-to-end runs."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import io
import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import taskfixtures as fx
from ssl_bench.components import Task
from ssl_bench.tasks import synthetic
from ssl_bench.metrics import metric_names


def get_task(name, data_dir=None):
    from ssl_bench.registry import Registry

    return Registry().get("task", name).factory(data_dir=data_dir)


def check_protocol(task):
    """What every task must declare."""
    assert isinstance(task, Task)
    assert task.classes and all(isinstance(c, str) for c in task.classes)
    assert task.sample_rate == 16000 and task.clip_seconds > 0
    assert task.metrics and all(m in metric_names() for m in task.metrics)
    assert task.split_protocol
    for split in task.splits():
        keys_train = {c.key for c in split.train}
        assert keys_train.isdisjoint(c.key for c in split.test), split.name
        if split.valid is not None:
            assert keys_train.isdisjoint(c.key for c in split.valid)
            assert {c.key for c in split.valid}.isdisjoint(c.key for c in split.test)
        for clip in split.train + split.test + (split.valid or []):
            assert all(0 <= c < len(task.classes) for c in clip.labels)
            assert task.multilabel or len(clip.labels) == 1


# --------------------------------------------------------------------------- synthetic
def test_synthetic_builds_once_deterministically_in_esc50_layout(tmp_path):
    task = get_task("synthetic", tmp_path / "syn")
    check_protocol(task)
    assert len(task.classes) >= 8 and task.clip_seconds == 2.0 and not task.multilabel
    splits = task.splits()
    assert [s.name for s in splits] == [f"fold{i}" for i in range(1, 6)]
    per_fold = synthetic.CLIPS_PER_CLASS // 5
    for s in splits:
        assert len(s.test) == len(task.classes) * per_fold and len(s.train) == len(task.classes) * per_fold * 4
    # The separate unlabeled corpus: disjoint from every fold, unlabeled, and the source of the
    # normalisation stats (never the test clips).
    corpus = task.unlabeled()
    assert len(corpus) == synthetic.UNLABELED_CLIPS and all(c.labels == () for c in corpus)
    fold_audio = {sf.read(c.path)[0].tobytes() for s in splits for c in s.test}
    assert not fold_audio & {sf.read(c.path)[0].tobytes() for c in corpus[:50]}
    from ssl_bench.tasks.common import KALDI_FBANK_128

    (key, (mean, std)), = task.norm_stats.items()  # keyed by the features they were measured on
    assert key == KALDI_FBANK_128 and -20 < mean < 5 and 0.5 < std < 10
    header = (tmp_path / "syn" / "meta" / "esc50.csv").read_text().splitlines()[0]
    assert header == "filename,fold,target,category,esc10,src_file,take"
    wave, sr = sf.read(splits[0].test[0].path)
    assert sr == 16000 and wave.shape == (32000,) and 0 < np.abs(wave).max() <= 0.91
    # Rebuilding elsewhere gives identical audio; a second task object reuses the copy.
    other = get_task("synthetic", tmp_path / "again")
    a, b = splits[2].test[3], other.splits()[2].test[3]
    assert a.key == b.key and np.array_equal(sf.read(a.path)[0], sf.read(b.path)[0])
    mtime = a.path.stat().st_mtime_ns
    assert get_task("synthetic", tmp_path / "syn").splits()[2].test[3].path.stat().st_mtime_ns == mtime


def test_synthetic_default_location_and_refuses_foreign_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_DATA", str(tmp_path / "home"))
    task = get_task("synthetic")
    task.prepare()
    assert task.root == tmp_path / "home" / "synthetic"
    assert not [p for p in (tmp_path / "home").iterdir() if p.name.startswith(".")]  # no temp leftovers
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError, match="holds no synthetic dataset"):
        get_task("synthetic", tmp_path / "foreign").prepare()


def test_synthetic_classes_differ_in_content():
    from ssl_bench.tasks import synthetic as syn

    clips = [syn.synth_clip(t, 0) for t in range(len(syn.CLASSES))]
    assert all(c.dtype == np.float32 and c.shape == (32000,) for c in clips)
    assert np.array_equal(syn.synth_clip(3, 1), syn.synth_clip(3, 1))
    assert not np.array_equal(syn.synth_clip(3, 1), syn.synth_clip(3, 2))


# --------------------------------------------------------------------------- ESC-50
def test_esc50_reads_the_public_layout(tmp_path):
    base = fx.make_esc50(tmp_path, num_classes=3, per_fold=1)
    for data_dir in (base, tmp_path):  # the ESC-50-master folder or its parent
        task = get_task("esc50", data_dir)
        check_protocol(task)
        assert task.classes == ["dog", "rooster", "pig"] and task.clip_seconds == 5.0
        assert task.metrics[0] == "accuracy"
        splits = task.splits()
        assert [s.name for s in splits] == ["fold1", "fold2", "fold3", "fold4", "fold5"]
        for i, s in enumerate(splits, start=1):
            assert {c.key.split("/")[1].split("-")[0] for c in s.test} == {str(i)}
            assert len(s.train) == 12 and len(s.test) == 3 and s.valid is None
    clip = splits[0].test[0]
    assert clip.key.startswith("audio/1-") and clip.labels == (int(clip.key[-5]),)
    esc10 = get_task("esc10", base)
    assert esc10.classes == ["dog", "rooster"]
    assert all(len(s.test) == 2 for s in esc10.splits())


def _rewrite_csv(path: Path, edit):
    rows = list(csv.reader(open(path)))
    edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda r: [row.pop(3) for row in r], r"esc50.csv:1: missing column\(s\) category"),
        (lambda r: r[2].__setitem__(1, "x"), r"esc50.csv:3: column 'fold' must be an integer, got 'x'"),
        (lambda r: r[4].__setitem__(3, "cat"), r"esc50.csv:5: target \d is 'cat' here but"),
        (lambda r: r[2].__setitem__(0, "../../etc/passwd"), r"esc50.csv:3: path 'audio/../../etc/passwd' is outside"),
        (lambda r: r[3].__setitem__(4, "maybe"), r"esc50.csv:4: column 'esc10' must be True or False"),
        (lambda r: r[3].append("extra"), r"esc50.csv:4: expected 7 fields"),
        (lambda r: r.__setitem__(3, list(r[2])), r"esc50.csv:4: .* is listed twice \(first on line 3\)"),
    ],
)
def test_esc50_bad_metadata_names_file_and_line(tmp_path, edit, match):
    base = fx.make_esc50(tmp_path, num_classes=2, per_fold=1)
    _rewrite_csv(base / "meta" / "esc50.csv", edit)
    with pytest.raises(ValueError, match=match):
        get_task("esc50", base).splits()


def test_esc50_missing_audio_is_reported_and_kept(tmp_path):
    from ssl_bench.tasks.common import MissingClipsWarning

    base = fx.make_esc50(tmp_path, num_classes=2, per_fold=1)
    (base / "audio" / "3-101062-A-1.wav").unlink()
    task = get_task("esc50", base)
    with pytest.warns(MissingClipsWarning, match=r"fold3: 1 of 2 .*audio/3-101062-A-1.wav"):
        task.prepare()
    assert task.missing["fold3"] == ["audio/3-101062-A-1.wav"]
    assert "audio/3-101062-A-1.wav" in [c.key for c in task.splits()[2].test]


def test_esc50_offline_says_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_OFFLINE", "1")
    with pytest.raises(RuntimeError) as info:
        get_task("esc50", tmp_path / "esc").prepare()
    msg = str(info.value)
    assert "https://github.com/karolpiczak/ESC-50/releases/download/v2.0.0/ESC-50-master.zip" in msg
    assert str(tmp_path / "esc") in msg and "ESC-50*/meta/esc50.csv" in msg
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="does not look like ESC-50"):
        get_task("esc50", tmp_path / "other").prepare()


# --------------------------------------------------------------------------- downloads
class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support; can cut a response short once."""

    cut_after: int | None = None
    requests: list = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = type(self).cut_after
        if cut is not None:
            type(self).cut_after = None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # drop the connection mid-body
            return
        self.wfile.write(body)


@pytest.fixture
def http_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = type("Handler", (_RangeHandler,), {"requests": [], "cut_after": None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_download_resumes_with_range_and_verifies(tmp_path, http_server, monkeypatch):
    from ssl_bench.download import DownloadError, download

    monkeypatch.delenv("SSL_BENCH_OFFLINE", raising=False)
    served, url, handler = http_server
    payload = np.random.default_rng(0).bytes(300_000)
    (served / "big.bin").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "dl" / "big.bin"
    handler.cut_after = 100_000
    with pytest.raises(DownloadError, match="run again to resume"):
        download(f"{url}/big.bin", dest, sha256=sha, progress=False)
    part = dest.with_name("big.bin.part")
    assert part.exists() and 0 < part.stat().st_size < len(payload) and not dest.exists()
    have = part.stat().st_size
    download(f"{url}/big.bin", dest, sha256=sha, progress=False)
    assert dest.read_bytes() == payload and not part.exists()
    assert handler.requests[-1] == f"bytes={have}-"
    # A wrong checksum deletes the file and says so; md5 works too.
    with pytest.raises(DownloadError, match="sha256 is .* expected 00"):
        download(f"{url}/big.bin", tmp_path / "dl" / "bad.bin", sha256="00" * 32, progress=False)
    assert not (tmp_path / "dl" / "bad.bin").exists() and not (tmp_path / "dl" / "bad.bin.part").exists()
    download(f"{url}/big.bin", tmp_path / "dl" / "m.bin", md5=hashlib.md5(payload).hexdigest(), progress=False)
    with pytest.raises(DownloadError, match=r"HTTP 404.*save it as"):
        download(f"{url}/nope.zip", tmp_path / "dl" / "nope.zip", progress=False)


def test_download_unreachable_and_offline_name_url_and_destination(tmp_path, monkeypatch):
    from ssl_bench.download import DownloadError, download

    monkeypatch.delenv("SSL_BENCH_OFFLINE", raising=False)
    with pytest.raises(DownloadError, match=r"cannot download http://127.0.0.1:9/x.zip: .*save it as .*x.zip"):
        download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", progress=False, timeout=5)
    monkeypatch.setenv("SSL_BENCH_OFFLINE", "1")
    with pytest.raises(DownloadError, match="offline"):
        download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", progress=False)


def test_unpack_is_atomic_and_refuses_escaping_members(tmp_path):
    from ssl_bench.download import DownloadError, unpack

    good = tmp_path / "good.zip"
    good.write_bytes(_zip_bytes({"top/a.txt": b"a", "top/sub/b.txt": b"b"}))
    out = unpack(good, tmp_path / "out")
    assert (out / "top" / "sub" / "b.txt").read_bytes() == b"b"
    evil = tmp_path / "evil.zip"
    evil.write_bytes(_zip_bytes({"../escape.txt": b"x"}))
    with pytest.raises(DownloadError, match="outside"):
        unpack(evil, tmp_path / "evil_out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "evil_out").exists()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(_zip_bytes({"a": b"a"})[:20])
    with pytest.raises(DownloadError, match="cannot unpack"):
        unpack(broken, tmp_path / "broken_out")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_esc50_downloads_the_archive_when_missing(tmp_path, http_server, monkeypatch):
    monkeypatch.delenv("SSL_BENCH_OFFLINE", raising=False)
    served, url, _ = http_server
    src = fx.make_esc50(tmp_path / "src", num_classes=2, per_fold=1)
    files = {f"ESC-50-master/{p.relative_to(src).as_posix()}": p.read_bytes() for p in src.rglob("*") if p.is_file()}
    (served / "master.zip").write_bytes(_zip_bytes(files))
    from ssl_bench.tasks.esc50 import ESC50Task

    task = ESC50Task(tmp_path / "esc")
    task.download_url = f"{url}/master.zip"
    task.download_sha256 = hashlib.sha256((served / "master.zip").read_bytes()).hexdigest()
    assert task.classes == ["dog", "rooster"]
    assert task.root == tmp_path / "esc" / "ESC-50-master"
    assert not list((tmp_path).glob("esc.*"))  # the archive is removed after unpacking
    assert len(task.splits()) == 5


# --------------------------------------------------------------------------- Speech Commands
def test_speechcommands_official_split(tmp_path):
    root = fx.make_speechcommands(tmp_path / "sc", words=("yes", "no", "up"), speakers=5)
    task = get_task("speechcommands", root)
    check_protocol(task)
    assert task.classes == ["no", "up", "yes"]  # _background_noise_ is not a class
    assert task.clip_seconds == 1.0 and task.metrics == ["accuracy"]
    (split,) = task.splits()
    assert split.name == "official"
    assert len(split.train) == 9 and len(split.valid) == 3 and len(split.test) == 3
    test_list = (root / "testing_list.txt").read_text().split()
    assert sorted(c.key for c in split.test) == sorted(test_list)
    assert all(c.key.split("/")[0] == task.classes[c.labels[0]] for c in split.train)
    assert not any("_background_noise_" in c.key for c in split.train + split.test + split.valid)
    # The parent folder of speech_commands_v0.02 works too.
    nested = fx.make_speechcommands(tmp_path / "p" / "speech_commands_v0.02", words=("go", "on"), speakers=4)
    assert get_task("speechcommands", nested.parent).classes == ["go", "on"]


def test_speechcommands_missing_listed_clip_is_reported_and_kept(tmp_path):
    from ssl_bench.tasks.common import MissingClipsWarning

    root = fx.make_speechcommands(tmp_path / "sc", speakers=4)
    gone = (root / "testing_list.txt").read_text().split()[0]
    (root / gone).unlink()
    task = get_task("speechcommands", root)
    with pytest.warns(MissingClipsWarning, match=r"test: 1 of 3"):
        split = task.splits()[0]
    assert task.missing["test"] == [gone] and gone in [c.key for c in split.test]


@pytest.mark.parametrize(
    "line, match",
    [("cat/abc_nohash_0.wav", r"testing_list.txt:2: 'cat/abc_nohash_0.wav' is not <word>/<file> with a known word"),
     ("../outside.wav", r"testing_list.txt:2: path '../outside.wav' is outside the data root")],
)
def test_speechcommands_bad_list_lines(tmp_path, line, match):
    root = fx.make_speechcommands(tmp_path / "sc", speakers=4)
    lines = (root / "testing_list.txt").read_text().split()
    (root / "testing_list.txt").write_text("\n".join([lines[0], line] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match=match):
        get_task("speechcommands", root).prepare()


def test_speechcommands_offline_names_the_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"speech_commands_v0.02.tar.gz.*into .*sc.*validation_list.txt"):
        get_task("speechcommands", tmp_path / "sc").prepare()


# --------------------------------------------------------------------------- AudioSet
def test_audioset_official_csvs_multilabel_and_missing_clips(tmp_path):
    from ssl_bench.tasks.common import MissingClipsWarning

    root = fx.make_audioset(tmp_path / "as", per_split=6, missing=1)
    task = get_task("audioset", root)
    with pytest.warns(MissingClipsWarning, match=r"train: 1 of 6; test: 1 of 6"):
        check_protocol(task)
    assert task.multilabel and task.classes == ["Speech", "Music", "Animal", "Vehicle"]
    assert task.metrics == ["mAP", "AUC", "d_prime_mean_auc"] and task.clip_seconds == 10.0
    (split,) = task.splits()
    assert split.name == "eval" and len(split.train) == 6 and len(split.test) == 6
    assert split.train[1].labels == (1, 2) and split.train[0].labels == (0,)
    assert len(task.missing["train"]) == 1 and task.missing["train"][0] in [c.key for c in split.train]
    assert not hasattr(task, "train_weights")  # AS-20K is sampled uniformly
    # Missing clips are counted as skipped when features are extracted.
    from ssl_bench.features import SkippedClipWarning, extract
    from test_features import StandInFbank

    with pytest.warns(SkippedClipWarning, match=task.missing["test"][0]):
        fs = extract(split.test, StandInFbank(), clip_seconds=1.0, progress=False)
    assert len(fs) == 5 and [k for k, _ in fs.skipped] == task.missing["test"]


def test_audioset_2m_uses_both_training_sets_and_balanced_weights(tmp_path):
    root = fx.make_audioset(tmp_path / "as", per_split=6, missing=0)
    task = get_task("audioset-2m", root)
    (split,) = task.splits()
    assert len(split.train) == 12
    weights = task.train_weights(split.train)
    counts = np.zeros(4)
    for c in split.train:
        counts[list(c.labels)] += 1
    expect = [sum(1000 / (counts[k] + 0.01) for k in c.labels) for c in split.train]
    assert weights == pytest.approx(expect)
    rare = min(range(4), key=lambda k: counts[k])
    assert max(w for w, c in zip(weights, split.train) if rare in c.labels) >= min(weights)


def test_audioset_json_lists_resolve_relative_absolute_and_foreign_paths(tmp_path):
    root = fx.make_audioset_json(tmp_path / "asj", per_split=4)
    data = json.loads((root / "eval.json").read_text())
    data["data"][0]["wav"] = "/checkpoint/someone/audioset/eval0.wav"  # written on another machine
    (root / "eval.json").write_text(json.dumps(data))
    task = get_task("audioset", root)
    (split,) = task.splits()
    assert len(split.train) == 4 and all(c.path.exists() for c in split.train + split.test)
    assert task.missing == {"train": [], "test": []}
    assert task.describe()["source"] == "JSON lists train.json, eval.json"


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda r: r.write_text(r.read_text().replace("/m/04rlf", "/m/nope", 1)),
         r"balanced_train_segments.csv:\d+: unknown label '/m/nope'"),
        (lambda r: r.write_text(r.read_text() + "abc, 1.0\n"), r"balanced_train_segments.csv:\d+: expected 4 fields"),
    ],
)
def test_audioset_bad_segments(tmp_path, edit, match):
    root = fx.make_audioset(tmp_path / "as", per_split=4, missing=0)
    edit(root / "balanced_train_segments.csv")
    with pytest.raises(ValueError, match=match):
        get_task("audioset", root).prepare()


def test_audioset_needs_metadata(tmp_path):
    (tmp_path / "as").mkdir()
    with pytest.raises(FileNotFoundError, match="class_labels_indices.csv"):
        get_task("audioset", tmp_path / "as").prepare()
    (tmp_path / "as" / "class_labels_indices.csv").write_text("index,mid\n0,/m/x\n")
    with pytest.raises(ValueError, match=r"class_labels_indices.csv:1: missing column\(s\) display_name"):
        get_task("audioset", tmp_path / "as").prepare()


# --------------------------------------------------------------------------- folder
def test_folder_class_folders_any_rate_and_channels(tmp_path):
    root = fx.make_folder(tmp_path / "f", per_class=6)
    task = get_task("folder", root)
    check_protocol(task)
    assert task.classes == ["alpha", "beta", "gamma"] and not task.multilabel
    assert task.clip_seconds == 1.0 and task.metrics[0] == "accuracy"
    splits = task.splits()
    assert len(splits) == 5 and "stratified folds" in task.split_protocol
    tested = [c.key for s in splits for c in s.test]
    assert sorted(tested) == sorted({c.key for s in splits for c in s.train + s.test})  # each clip tested once
    assert all({c.labels[0] for c in s.test} for s in splits)
    assert [c.key for c in splits[0].test] == [c.key for c in get_task("folder", root).splits()[0].test]


def test_folder_csv_folds_split_and_multilabel(tmp_path):
    root = fx.make_folder_csv(tmp_path / "folds", column="fold")
    task = get_task("folder", root / "labels.csv")  # the CSV file itself works too
    assert [s.name for s in task.splits()] == ["fold1", "fold2"] and "fold column" in task.split_protocol
    root = fx.make_folder_csv(tmp_path / "split", column="split")
    (split,) = get_task("folder", root).splits()
    assert (len(split.train), len(split.valid), len(split.test)) == (6, 3, 3)
    root = fx.make_folder_csv(tmp_path / "ml", multilabel=True, column=None)
    task = get_task("folder", root)
    check_protocol(task)
    assert task.multilabel and task.metrics == ["mAP", "AUC", "d_prime"]
    assert any(len(c.labels) == 2 for s in task.splits() for c in s.test)


def test_folder_task_yaml_and_constructor_set_clip_length(tmp_path):
    root = fx.make_folder(tmp_path / "f", per_class=2)
    (root / "task.yaml").write_text("clip_seconds: 0.5\nmetrics: [accuracy]\n")
    task = get_task("folder", root)
    assert task.clip_seconds == 0.5 and task.metrics == ["accuracy"]
    from ssl_bench.tasks.folder import FolderTask

    assert FolderTask(root, clip_seconds=2.0).clip_seconds == 2.0
    (root / "task.yaml").write_text("clip_sec: 1\n")
    with pytest.raises(ValueError, match="task.yaml: unknown key"):
        get_task("folder", root).prepare()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda root: (root / "classes.txt").write_text("alpha\nbeta\n"), r"labels.csv:\d+: unknown label 'gamma'"),
        (lambda root: _rewrite_csv(root / "labels.csv", lambda r: r[1].__setitem__(0, "../../x.wav")),
         r"labels.csv:2: path '../../x.wav' is outside the data root"),
        (lambda root: _rewrite_csv(root / "labels.csv", lambda r: r[0].__setitem__(1, "class")),
         r"labels.csv:1: missing column\(s\) label"),
        (lambda root: _rewrite_csv(root / "labels.csv", lambda r: r[3].__setitem__(2, "holdout")),
         r"labels.csv:4: split must be train, valid or test"),
    ],
)
def test_folder_bad_csv(tmp_path, edit, match):
    root = fx.make_folder_csv(tmp_path / "f", column="split")
    edit(root)
    with pytest.raises(ValueError, match=match):
        get_task("folder", root).prepare()


# --------------------------------------------------------------------------- HEAR
def _fold(clip):
    return clip.path.parent.name  # {rate}/{split}/{file}


@pytest.mark.parametrize("mode", ["presplit_kfold", "new_split_kfold", "new_split_stratified_kfold"])
def test_hear_kfold_follows_hear_eval_kit(tmp_path, mode):
    root = fx.make_hear(tmp_path / "h", split_mode=mode)
    task = get_task("hear", root)
    check_protocol(task)
    assert task.classes == ["bark", "meow", "moo"] and task.metrics == ["accuracy", "mAP"]
    assert task.label_shape == "multiclass" and mode in task.split_protocol
    splits = task.splits()
    assert [(s.name, {_fold(c) for c in s.valid}, {_fold(c) for c in s.train}) for s in splits] == [
        ("fold00", {"fold01"}, {"fold02"}), ("fold01", {"fold02"}, {"fold00"}), ("fold02", {"fold00"}, {"fold01"})]
    assert all(c.path.parent.parent.name == "16000" for c in splits[0].test)
    # clips are keyed by HEAR's file names, as its JSON files and prediction files key them
    assert [c.key for c in splits[0].test] == [f"fold00_{i}.wav" for i in range(6)]


def test_hear_trainvaltest_multilabel(tmp_path):
    root = fx.make_hear(tmp_path / "h", multilabel=True, kfold=False)
    task = get_task("hear", root)
    check_protocol(task)
    assert task.multilabel and task.label_shape == "multilabel" and task.metrics == ["mAP", "d_prime", "AUC"]
    (split,) = task.splits()
    assert (len(split.train), len(split.valid), len(split.test)) == (6, 6, 6)
    assert task.describe()["hear_task"] == "fixture_scene"


@pytest.mark.parametrize("mode", ["trainvaltest", "new_split_kfold"])
def test_hear_event_task_carries_events_in_seconds(tmp_path, mode):
    root = fx.make_hear(tmp_path / "h", embedding="event", split_mode=mode, seconds=1.5)
    task = get_task("hear", root)
    check_protocol(task)
    assert task.label_shape == "events" and task.multilabel
    assert task.classes == fx.HEAR_EVENT_VOCAB and task.clip_seconds == 1.5
    assert task.metrics == ["event_onset_200ms_fms", "segment_1s_er"]
    assert task.evaluation_params["event_postprocessing_grid"]["min_duration"] == [125, 250]
    first = root / ("train.json" if mode == "trainvaltest" else "fold00.json")
    written = json.loads(first.read_text())
    clips = {c.key: c for s in task.splits() for part in (s.train, s.valid, s.test) for c in part}
    for name, events in written.items():
        clip = clips[name]
        assert [(e.label, e.onset * 1000, e.offset * 1000) for e in clip.events] == [
            (fx.HEAR_EVENT_VOCAB.index(e["label"]), e["start"], e["end"]) for e in events]
        assert clip.labels == tuple(sorted({e.label for e in clip.events}))
    assert any(not c.events and not c.labels for c in clips.values())  # a clip without events is kept
    assert len(task.splits()) == (1 if mode == "trainvaltest" else 3)


def test_hear_pitch_task_and_another_rate_folder(tmp_path):
    root = fx.make_hear(tmp_path / "h", pitch=True, kfold=False, rate=22050)
    task = get_task("hear", root)
    check_protocol(task)
    assert task.label_shape == "multiclass" and task.metrics == ["pitch_acc", "chroma_acc"]
    (split,) = task.splits()
    assert split.test[0].path.parent.parent.name == "22050"
    assert [task.classes[c.labels[0]] for c in split.test[:3]] == ["57", "62", "67"]  # integer labels in the JSON


def test_hear_prefers_16k_then_the_nearest_rate_above(tmp_path):
    from ssl_bench.tasks.hear import audio_folder

    for rates, want in [((16000, 48000), "16000"), ((8000, 22050, 48000), "22050"), ((8000, 11025), "11025")]:
        root = tmp_path / "-".join(map(str, rates))
        for r in rates:
            (root / str(r)).mkdir(parents=True)
        assert audio_folder(root).name == want


def test_hear_bad_metadata(tmp_path):
    root = fx.make_hear(tmp_path / "h", kfold=False)
    data = json.loads((root / "test.json").read_text())
    data["test_0.wav"] = ["woof"]
    (root / "test.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"test.json: entry 'test_0.wav': unknown label 'woof'"):
        get_task("hear", root).prepare()
    data["test_0.wav"] = ["bark"]
    data["train_1.wav"] = ["bark"]
    (root / "test.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"test.json: entry 'train_1.wav' is also in train.json"):
        get_task("hear", root).prepare()
    meta = json.loads((root / "task_metadata.json").read_text())
    meta["embedding_type"] = "frame"
    (root / "task_metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="embedding_type must be scene or event, got 'frame'"):
        get_task("hear", root).prepare()
    meta["embedding_type"], meta["evaluation"] = "scene", ["onset_fms"]
    (root / "task_metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"none of the evaluation metrics \['onset_fms'\] is supported"):
        get_task("hear", root).prepare()


@pytest.mark.parametrize("entry, match", [
    ({"label": "Meow", "start": 0, "end": 10}, r"entry 'train_0.wav', event 0: unknown label 'Meow'"),
    ({"label": "Bark", "start": 500, "end": 100}, r"event 0: needs 0 <= start <= end \(ms\), got start 500.0"),
    ({"label": "Bark", "start": "soon", "end": 100}, r"event 0: start and end must be numbers of milliseconds"),
    ({"label": "Bark", "onset": 0.1, "offset": 0.2}, r"event 0: expected an object with label, start and end"),
])
def test_hear_bad_event_entries_name_file_entry_and_event(tmp_path, entry, match):
    root = fx.make_hear(tmp_path / "h", embedding="event", kfold=False)
    data = json.loads((root / "train.json").read_text())
    data["train_0.wav"] = [entry]
    (root / "train.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        get_task("hear", root).prepare()


# --------------------------------------------------------------------------- end to end
#: One finetune epoch (one lr: no validation grid) and a one-C linear probe on a 1-block
#: encoder, cropped to 128 frames: enough to push every task through the real runner and CLI
#: in a few seconds each.
E2E = ["--model", "audiomae", "--preset", "tiny", "--protocols", "finetune,linear",
       "--set", "finetune.epochs=1", "--set", "finetune.batch_size=4", "--set", "encoder.depth=1",
       "--set", "finetune.lr_factors=null",
       "--set", "linear.C=[1.0]", "--set", "frontend.num_frames=128", "--quiet"]


def _fixture_esc50(root):
    return fx.make_esc50(root, num_classes=2, per_fold=2)


def _fixture_audioset(root):
    return fx.make_audioset(root, per_split=8, missing=1)


def _fixture_folder_multilabel(root):
    return fx.make_folder_csv(root, multilabel=True, column="split", per_class=4)


E2E_CASES = [
    # task, fixture, --splits (None: all), expected split names, expected metrics, skipped per split
    ("esc50", _fixture_esc50, "fold1,fold3", ["fold1", "fold3"], ["accuracy"], 0),
    ("speechcommands", lambda r: fx.make_speechcommands(r, speakers=6), None, ["official"], ["accuracy"], 0),
    ("audioset", _fixture_audioset, None, ["eval"], ["mAP", "AUC", "d_prime_mean_auc"], 2),
    ("folder", _fixture_folder_multilabel, None, ["split"], ["mAP", "AUC", "d_prime"], 0),
    ("folder", lambda r: fx.make_folder(r, per_class=5), "fold2", ["fold2"], ["accuracy", "mAP"], 0),
    ("hear", lambda r: fx.make_hear(r, kfold=True, per_split=6), "fold01", ["fold01"], ["accuracy", "mAP"], 0),
]


@pytest.mark.filterwarnings("ignore::ssl_bench.tasks.common.MissingClipsWarning")  # asserted via n_skipped
@pytest.mark.filterwarnings("ignore::ssl_bench.features.SkippedClipWarning")
@pytest.mark.parametrize("task, build, splits, split_names, metrics, skipped", E2E_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(E2E_CASES)])
def test_ssl_bench_run_finetune_and_linear_on_each_layout(tmp_path, capsys, task, build, splits, split_names,
                                                          metrics, skipped):
    from ssl_bench import results
    from ssl_bench.cli import main

    data = build(tmp_path / "data")
    argv = ["run", "--task", task, "--data-dir", str(data), "--results", str(tmp_path / "res"), *E2E]
    if splits:
        argv += ["--splits", splits]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 0, err
    df = results.load(tmp_path / "res")
    assert set(df["task"]) == {task} and set(df["protocol"]) == {"finetune", "linear"}
    assert sorted(set(df["split"])) == split_names
    assert set(df["init"]) == {"random"}
    expected = get_task(task, data)
    for (protocol, split), rows in df.groupby(["protocol", "split"]):
        assert list(rows["metric"]) == metrics, (protocol, split)
        assert rows["value"].between(0, 1).all() or any(m.startswith("d_prime") for m in metrics)
        assert set(rows["n_skipped"]) == {skipped}
        assert set(rows["split_protocol"]) == {expected.split_protocol}

"""A compact adversarial pass: bad file names, damaged caches and records, kills, full disks,
hostile plugins and checkpoints.  One test (or more) per defect of issue 14, each making its own
bad files; the whole module runs in well under a minute on a small CPU.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_bench import results
from ssl_bench.audio import AudioError, read_audio
from ssl_bench.components import Clip
from ssl_bench.errors import DiskFullError, DivergedError, UserError
from ssl_bench.files import CacheWarning, clean_stale_temps, temp_prefix
from taskfixtures import Frames, tone, write_wav

BAD_NAME = os.fsdecode(b"caf\xe9-\xff.wav")  # Latin-1 bytes: not valid UTF-8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _wav(path: Path, label: int = 0, seconds: float = 0.25, sr: int = 8000, seed: int = 0) -> Path:
    """A tone WAV at ``path`` (written under a plain name, then renamed: any name works)."""
    plain = write_wav(path.with_name(".writing.wav"), tone(label, seconds, sr, seed=seed), sr)
    os.rename(plain, path)
    return path


# --------------------------------------------------------------------------- 1: non-UTF-8 names
def test_a_file_name_that_is_not_utf8_is_hashed_read_and_named(tmp_path):
    from ssl_bench.features import cache_key, extract
    from ssl_bench.splits import carve_validation
    from tasks.folder import FolderTask, stratified_folds

    for c in ("a", "b"):
        for i in range(3):
            _wav(tmp_path / "data" / c / f"{i}.wav", label=ord(c) % 3, seed=i)
    bad = tmp_path / "data" / "a" / BAD_NAME
    _wav(bad, seed=9)
    task = FolderTask(tmp_path / "data")
    clips = [c for s in task.splits()[:1] for c in s.train + s.test]
    assert any(c.key == f"a/{BAD_NAME}" for c in clips)  # listed, not an abort
    assert len(stratified_folds(clips, 2)) == len(clips)
    carve_validation(clips, 0.3, 0)
    assert len(cache_key(clips, Frames(), 0.25)) == 32
    wave, sr = read_audio(bad)
    assert sr == 8000 and wave.shape == (2000,)
    fs = extract(clips, Frames(), clip_seconds=0.25, cache_dir=tmp_path / "cache", progress=False)
    assert len(fs) == len(clips) and not fs.skipped
    with pytest.raises(AudioError) as info:  # a message names it printably
        read_audio(bad.with_name(os.fsdecode(b"gone-\xff.wav")))
    assert "\\udcff" in str(info.value) or "\\xff" in str(info.value)


# --------------------------------------------------------------------------- 2: damaged caches
@pytest.fixture
def tones(tmp_path):
    return [Clip(_wav(tmp_path / f"{i}.wav", label=i % 3, seed=i), (i % 3,), f"{i}.wav") for i in range(6)]


def _extract(clips, cache):
    from ssl_bench.features import extract

    return extract(clips, Frames(), clip_seconds=0.25, cache_dir=cache, progress=False)


@pytest.mark.parametrize("damage", ["truncate index", "truncate features", "same-size other floats"])
def test_a_damaged_feature_entry_is_rebuilt_with_one_warning(tones, tmp_path, damage):
    cache = tmp_path / "cache"
    first = _extract(tones, cache)
    reference = np.array(first.data).copy()
    entry = first.path
    del first
    if damage == "truncate index":
        (entry / "index.npy").write_bytes((entry / "index.npy").read_bytes()[:60])
    elif damage == "truncate features":
        with open(entry / "features.bin", "r+b") as fh:
            fh.truncate(100)
    else:  # overwritten with other numbers of the same size: only the checksum tells
        data = np.fromfile(entry / "features.bin", dtype=np.float32)
        (np.random.default_rng(0).standard_normal(data.size).astype(np.float32)).tofile(entry / "features.bin")
    with pytest.warns(CacheWarning, match=f"feature cache entry {entry}.*rebuilt"):
        again = _extract(tones, cache)
    assert not again.from_cache and again.path == entry
    np.testing.assert_array_equal(np.array(again.data), reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert _extract(tones, cache).from_cache  # healed: read without a warning


def test_a_damaged_embedding_file_is_computed_again(tmp_path):
    from ssl_bench.protocols.embeddings import _load_npy, _save_npy

    path = tmp_path / "emb" / "k.npy"
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    _save_npy(emb, path)
    np.testing.assert_array_equal(_load_npy(path, 4), emb)
    path.write_bytes(path.read_bytes()[:-8])  # truncated
    with pytest.warns(CacheWarning, match=f"{path}.*computed again"):
        assert _load_npy(path, 4) is None
    assert not path.exists()
    _save_npy(emb, path)
    raw = bytearray(path.read_bytes())
    raw[-4:] = np.float32(7.5).tobytes()  # same size, other value
    path.write_bytes(bytes(raw))
    with pytest.warns(CacheWarning, match="checksum"):
        assert _load_npy(path, 4) is None


def test_damaged_pretrained_weights_are_made_again(tmp_path):
    from ssl_bench.encoders import _verified_meta
    from ssl_bench.provenance import file_sha256

    final, meta = tmp_path / "pretrained.pt", tmp_path / "meta.json"
    torch.save({"w": torch.arange(1000.0)}, final)
    meta.write_text(json.dumps({"loss": 0.5, "weights_sha256": file_sha256(final)}))
    assert _verified_meta(final, meta, tmp_path)["loss"] == 0.5
    final.write_bytes(final.read_bytes()[:500])
    with pytest.warns(CacheWarning, match="pretrained.pt.*SHA-256"):
        assert _verified_meta(final, meta, tmp_path) is None
    assert not final.exists() and not meta.exists()  # the next call pretrains (or saves last.pt's weights)


# --------------------------------------------------------------------------- 3: results
def _run(root: Path, seed: int) -> Path:
    with results.RunWriter(root, f"run-{seed}", {"model": "m", "task": "t", "seed": seed}) as w:
        w.add_row(task="t", protocol="linear", split="fold1", seed=seed, init="random", init_id="random",
                  metric="accuracy", value=0.5 + seed / 10)
    return w.final_dir


def test_an_unreadable_result_is_skipped_with_a_warning_naming_it(tmp_path, capsys):
    from ssl_bench.cli import _print_runs

    good, bad = _run(tmp_path, 1), _run(tmp_path, 2)
    (bad / "result.json").write_text('{"rows": [')
    with pytest.warns(results.ResultsWarning, match=f"{bad / 'result.json'}.*1 run\\(s\\) loaded"):
        df = results.load(tmp_path)
    assert df["run_id"].tolist() == [good.name]
    fresh = _run(tmp_path, 3)
    with pytest.warns(results.ResultsWarning):
        _print_runs(str(tmp_path), [fresh.name])  # a later run still prints its table
    assert fresh.name in capsys.readouterr().out


def test_a_dead_writers_temp_dir_is_removed_and_a_live_ones_kept(tmp_path):
    host = socket.gethostname()
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in host)[:32]
    dead = tmp_path / f".tmp-run-{host}-999999999-12345-abc"  # no such process
    live = Path(str(tmp_path / temp_prefix("run")) + "xyz")  # this process
    other = tmp_path / ".tmp-run-otherhost-1-1-abc"
    for d in (dead, live, other):
        d.mkdir()
        (d / "log.txt").write_text("x")
        os.utime(d, (time.time() - 3600, time.time() - 3600))
    _run(tmp_path, 1)  # a writer cleans as it starts
    assert not dead.exists() and live.exists() and other.exists()
    assert clean_stale_temps(tmp_path) == []


# --------------------------------------------------------------------------- 4: config values
@pytest.mark.parametrize("key,value,words", [
    ("encoder.depth", -2, "encoder.depth"), ("encoder.depth", 0, "encoder.depth"),
    ("encoder.depth", "abc", "encoder.depth"), ("encoder.heads", 0, "heads"), ("encoder.dim", -64, "dim"),
    ("masker.ratio", 0.0, "hides no token"), ("encoder.dim", 100000, "GiB"),
])
def test_bad_settings_are_refused_before_any_data_work(key, value, words):
    from ssl_bench.config import ConfigError, resolve
    from ssl_bench.model import check_config

    with pytest.raises(ConfigError, match=words):
        check_config(resolve("audiomae", preset="tiny", overrides={key: value}), memory_bytes=64 * 2**30)


def test_model_and_preset_cannot_be_set(tmp_path, capsys):
    from ssl_bench.cli import main

    for key in ("model=ast", "preset=base", "model=x/y"):
        assert main(["run", "-m", "audiomae", "-p", "tiny", "-t", "folder", "--data-dir", str(tmp_path),
                     "--results", str(tmp_path / "r"), "--set", key]) == 2
        assert "not --set" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- 5: plugins
def _plugin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "quits.py").write_text("import sys\nsys.exit(3)\n")
    (d / "clash.py").write_text(
        "from ssl_bench import hookimpl\nfrom plugins.audio.maskers import RandomMasker\n"
        "@hookimpl\ndef register_maskers(register):\n    register('random', RandomMasker)\n")
    return d


def test_hostile_plugins_are_contained_and_named(tmp_path, capsys):
    from ssl_bench.cli import main

    assert main(["--plugins-dir", str(_plugin_dir(tmp_path)), "plugins", "--json"]) == 0
    out = capsys.readouterr()
    listed = {p["name"]: p for p in json.loads(out.out)}
    assert "SystemExit" in listed["quits"]["error"]
    assert "already registered" in listed["clash"]["error"] and "random" in listed["clash"]["error"]
    assert "audio" in listed and listed["audio"]["error"] is None  # the built-in keeps its name


class _Masker(torch.nn.Module):
    def forward(self, *args):
        raise RuntimeError("kaboom")


def test_a_component_failing_at_call_time_names_its_plugin():
    from ssl_bench.model import blame

    class Model:
        origins = {"masker": "masker 'boom' (plugin 'hostile')"}

        class build:
            parts = {"masker": _Masker()}

    try:
        Model.build.parts["masker"]()
    except RuntimeError as exc:
        assert blame(Model(), exc) == "raised in masker 'boom' (plugin 'hostile')"


def test_a_masker_hiding_every_token_or_the_wrong_shape_is_refused_with_its_plugin():
    from ssl_bench.config import ConfigError, resolve
    from ssl_bench.model import build_model

    class HideAll(torch.nn.Module):
        def forward(self, b, grid, layout, device, generator):
            return torch.ones(b, grid[0] * grid[1], dtype=torch.bool)

    class WrongShape(torch.nn.Module):
        def forward(self, b, grid, layout, device, generator):
            return torch.zeros(b, 3, dtype=torch.bool)

    model = build_model(resolve("audiomae", preset="tiny"), dry_run=True)
    model.masker = HideAll()
    with pytest.raises(ConfigError, match="plugin 'audio'.*hides every one"):
        model.draw_mask("masker", 2, (4, 8))
    model.masker = WrongShape()
    with pytest.raises(ConfigError, match="plugin 'audio'.*shape"):
        model.draw_mask("masker", 2, (4, 8))


# --------------------------------------------------------------------------- 6: resume
def _fit(ckpt_dir, log=None, loss_fn=None, epochs=3):
    from ssl_bench.encoders import pretrain
    import ssl_bench.encoders as pre
    from trainfixtures import toy_config, toy_model, toy_split

    cfg = toy_config(pretrain={"epochs": epochs, "batch_size": 8, "warmup_epochs": 1})
    cfg["deterministic"] = True
    original = pre.pretrain_loss
    if loss_fn is not None:
        pre.pretrain_loss = lambda m, b, c: loss_fn(original, m, b, c)
    try:
        return pretrain(toy_model(), toy_split(n=64).dataset("train", with_targets=False), cfg, device="cpu",
                        checkpoint_dir=ckpt_dir, progress=False, log_metrics=log)
    finally:
        pre.pretrain_loss = original


def test_resume_keeps_the_whole_metrics_history_and_cumulative_compute(tmp_path):
    from ssl_bench.train import STOP, TrainingInterrupted

    def stop_in_epoch_2(original, model, batch, step):
        if step.global_step == 6:  # 4 steps per epoch
            STOP.signum = signal.SIGTERM
        return original(model, batch, step)

    first: list[dict] = []
    with pytest.raises(TrainingInterrupted):
        _fit(tmp_path, first.append, stop_in_epoch_2)
    saved = torch.load(tmp_path / "last.pt", weights_only=False)
    before = saved["compute"]
    assert [r["epoch"] for r in first] == [1] and before["samples"] == 32 and before["wall_s"] > 0
    records: list[dict] = []
    res = _fit(tmp_path, records.append)
    assert [r["epoch"] for r in records] == [1, 2, 3]  # epoch 1 replayed: metrics.jsonl is whole
    assert res.resumed_from == (1, 3) and res.wall_s > before["wall_s"] and res.samples_per_s > 0
    # killed between last.pt (finished) and pretrained.pt: nothing to train, the record is whole
    again: list[dict] = []
    done = _fit(tmp_path, again.append)
    assert done.resumed_from == (3, 0) and [r["epoch"] for r in again] == [1, 2, 3]
    assert done.samples_per_s == pytest.approx(res.samples_per_s) and done.wall_s >= before["wall_s"]


def test_a_damaged_training_checkpoint_restarts_training(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(CacheWarning, match="last.pt.*from the beginning"):
        res = _fit(tmp_path, epochs=1)
    assert res.resumed_from is None and (tmp_path / "last.pt.damaged").exists()


# --------------------------------------------------------------------------- 7, 8, 10: a whole run
class HostileTones:
    """Three tone classes in two folds, plus in fold 1's training part: clips that cannot be
    read (garbage, a truncated WAV, a dangling link) and a good clip whose name is not UTF-8."""

    name = "hostiletones"
    multilabel = False
    sample_rate = 8000
    clip_seconds = 0.25
    metrics = ["accuracy"]
    split_protocol = "2 folds"
    norm_stats = None

    def __init__(self, data_dir=None):
        self.root = Path(data_dir)
        self.classes = ["low", "mid", "high"]

    def prepare(self) -> None:
        pass  # the test writes the data

    def splits(self):
        good = [Clip(self.root / f"{c}-{k}.wav", (c,), f"{c}-{k}.wav") for c in range(3) for k in range(8)]
        bad = [Clip(self.root / n, (i % 3,), n) for i, n in enumerate(
            ["junk-0.wav", "junk-1.wav", "junk-2.wav", "junk-3.wav", "truncated.wav", "dangling.wav"])]
        odd = Clip(self.root / BAD_NAME, (0,), BAD_NAME)
        test1 = [c for i, c in enumerate(good) if i % 2 == 0]
        train1 = [c for i, c in enumerate(good) if i % 2 == 1] + bad + [odd]
        return [self._split("fold1", train1, test1)]

    @staticmethod
    def _split(name, train, test):
        from ssl_bench.components import Split

        return Split(name, train, test)


def _hostile_data(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for c in range(3):
        for k in range(8):
            _wav(root / f"{c}-{k}.wav", label=c, seed=k)
    _wav(root / BAD_NAME, label=0, seed=99)
    for i in range(4):
        (root / f"junk-{i}.wav").write_bytes(os.urandom(300))
    full = _wav(root / "full.wav", seconds=0.5).read_bytes()
    (root / "truncated.wav").write_bytes(full[: len(full) // 2])
    os.symlink(root / "missing.wav", root / "dangling.wav")


def test_a_hostile_folder_runs_and_counts_what_it_skipped(tmp_path, monkeypatch):
    from ssl_bench import hookimpl
    from ssl_bench.registry import Registry, set_registry
    from ssl_bench.runner import run_experiment
    from ssl_bench.config import resolve
    from trainfixtures import SMALL

    class Plugin:
        @staticmethod
        @hookimpl
        def register_tasks(register):
            register("hostiletones", HostileTones)

    reg = Registry()
    reg.add_plugin(Plugin, name="hostiletones")
    old = set_registry(reg)
    old_mask = os.umask(0o022)
    try:
        data = tmp_path / "data"
        _hostile_data(data)
        monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))
        cfg = resolve("audiomae", preset="tiny", task="hostiletones", registry=reg,
                      overrides={**SMALL, "data.valid_fraction": 0.25, "linear.C": [0.1, 10.0]})
        with pytest.warns(UserWarning) as caught:
            run = run_experiment(cfg, data_dir=data, results_root=tmp_path / "results", protocols=("linear",),
                                 progress=False)
    finally:
        os.umask(old_mask)
        set_registry(old)
    messages = "\n".join(str(w.message) for w in caught)
    assert re.search(r"truncated\.wav: truncated WAV: the header promises 4000 frames, the file holds 19\d\d", messages)
    assert "dangling symbolic link" in messages
    rows = json.loads((run / "result.json").read_text())["rows"]
    row = rows[0]
    usable = 12 + 1  # fold 1's readable training clips, the non-UTF-8 one among them
    assert row["n_skipped"] == 6  # every bad clip counted, the dangling link included
    assert row["n_valid"] == round(0.25 * usable) and row["n_train"] + row["n_valid"] == usable  # 7
    assert (run.stat().st_mode & 0o777) == 0o755 and ((run / "result.json").stat().st_mode & 0o777) == 0o644  # 10


# --------------------------------------------------------------------------- 9: disk full, divergence
def test_a_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    from ssl_bench import checkpoint

    def full(obj, fh):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 2048")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(DiskFullError, match=r"last\.pt: no space left on the device \(.* MiB free\)") as info:
        checkpoint.atomic_save({"w": 1}, tmp_path / "last.pt")
    assert isinstance(info.value, UserError) and not list(tmp_path.iterdir())


def test_a_full_disk_elsewhere_is_one_line_from_the_cli(tmp_path, monkeypatch, capsys):
    from ssl_bench import cli

    def full(root):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(results, "load", full)
    assert cli.main(["results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device" in err


def test_divergence_is_a_user_error():
    def nan(original, model, batch, step):
        return original(model, batch, step) * float("nan")

    with pytest.raises(DivergedError, match="loss became nan by epoch 1") as info:
        _fit(None, loss_fn=nan, epochs=1)
    assert isinstance(info.value, UserError)


# --------------------------------------------------------------------------- 11: messages
def test_messages_name_the_file_and_what_is_wrong(tmp_path):
    from ssl_bench.checkpoint import CheckpointError, safe_load
    from ssl_bench.config import ConfigError, resolve

    section = tmp_path / "section.yaml"
    section.write_text("pretrain: 5\n")
    with pytest.raises(ConfigError, match="'pretrain' is a section of settings, not a value"):
        resolve("audiomae", preset="tiny", files=[section])
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x87\x00\xff\xfe" * 20)
    with pytest.raises(ConfigError, match=f"config file {binary} is not text"):
        resolve("audiomae", preset="tiny", files=[binary])
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
        safe_load(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"w": _Masker}, evil)
    with pytest.raises(CheckpointError, match=f"refused: its pickle names the global {__name__}._Masker"):
        safe_load(evil)

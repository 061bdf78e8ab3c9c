"""Issue 26, as a hostile user tried it: stale files that keep their size and date, damage inside
caches, bad settings found before any data work, faults (read-only and full disks, kills), hostile
plugins, HEAR modules both ways and hostile strings in exported tables.  One test (or more) per
defect; every test makes its own files and runs in seconds.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from taskfixtures import Frames, make_folder, tone, write_wav

from ssl_bench import results
from ssl_bench.components import Clip
from ssl_bench.config import ConfigError
from ssl_bench.files import CacheWarning

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _restore_times(path: Path, st: os.stat_result) -> None:
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # what rsync -a, cp -p and tar x do


def _swap_in_place(a: Path, b: Path) -> None:
    """Swap the bytes of two same-size files in place, then give both their old times back:
    size, modification time and inode all stay what they were."""
    sa, sb = a.stat(), b.stat()
    da, db = a.read_bytes(), b.read_bytes()
    assert len(da) == len(db) and da != db
    for path, data in ((a, db), (b, da)):
        with open(path, "r+b") as fh:
            fh.write(data)
    _restore_times(a, sa)
    _restore_times(b, sb)
    assert (a.stat().st_size, a.stat().st_mtime_ns, a.stat().st_ino) == (sa.st_size, sa.st_mtime_ns, sa.st_ino)


@pytest.fixture
def two_tones(tmp_path):
    """Two WAVs of one size and different sounds, as ESC-50's clips are."""
    paths = [write_wav(tmp_path / f"{i}.wav", tone(i, 0.25, 8000, seed=i), 8000) for i in range(2)]
    return [Clip(p, (i,), p.name) for i, p in enumerate(paths)]


# --------------------------------------------------------------------------- 1: stale files
def test_swapped_files_with_restored_times_are_not_served_from_the_caches(two_tones, tmp_path):
    from ssl_bench.features import extract
    from ssl_bench.provenance import audio_digest, dataset_digest, file_digests

    cache = tmp_path / "cache"
    first = extract(two_tones, Frames(), clip_seconds=0.25, cache_dir=cache / "features", progress=False)
    before = first[0].numpy()
    digest_before = dataset_digest(two_tones, cache)["sha256"]
    audio_before = audio_digest(two_tones, cache)
    _swap_in_place(two_tones[0].path, two_tones[1].path)

    again = extract(two_tones, Frames(), clip_seconds=0.25, cache_dir=cache / "features", progress=False)
    assert not again.from_cache  # the old entry is not this audio's
    np.testing.assert_array_equal(again[1].numpy(), before)  # clip 1 now holds clip 0's sound
    digests = file_digests([c.path for c in two_tones], cache)
    for clip in two_tones:
        assert digests[str(clip.path.resolve())] == hashlib.sha256(clip.path.read_bytes()).hexdigest()
    assert dataset_digest(two_tones, cache)["sha256"] != digest_before  # the labels moved with the files
    assert audio_digest(two_tones, cache) == audio_before  # the same two sounds, other places
    # unchanged files are answered from the digest cache, not read again
    assert extract(two_tones, Frames(), clip_seconds=0.25, cache_dir=cache / "features", progress=False).from_cache


def test_verify_rehashes_every_file_whatever_the_digest_cache_says(two_tones, tmp_path):
    from ssl_bench.files import verifying
    from ssl_bench.provenance import file_digests

    path = str(two_tones[0].path.resolve())
    true = hashlib.sha256(two_tones[0].path.read_bytes()).hexdigest()
    assert file_digests([path], tmp_path)[path] == true
    with sqlite3.connect(tmp_path / "digests.sqlite") as con:  # a cache that lies, its stamps intact
        con.execute("UPDATE files SET sha256 = ?", ("0" * 64,))
    con.close()
    assert file_digests([path], tmp_path)[path] == "0" * 64  # trusted: its stamp matches
    with verifying():
        assert file_digests([path], tmp_path)[path] == true
    assert file_digests([path], tmp_path)[path] == true  # and the cache is corrected


def test_the_verify_flag_turns_verifying_on_for_the_command(monkeypatch):
    from ssl_bench import cli
    from ssl_bench.files import verify_all

    seen = []
    for command in ("run", "pretrain"):
        monkeypatch.setitem(cli.COMMANDS, command, lambda args: seen.append(verify_all()) or 0)
    for argv in (["run", "-t", "x"], ["linear", "-t", "x"], ["pretrain", "--corpus", "x"]):
        assert cli.main([argv[0], "-m", "audiomae", *argv[1:], "--verify"]) == 0
        assert cli.main([argv[0], "-m", "audiomae", *argv[1:]]) == 0
    assert seen == [True, False] * 3 and not verify_all()


# --------------------------------------------------------------------------- 2: damage inside caches
def test_damage_to_features_with_size_time_and_inode_kept_is_found(two_tones, tmp_path):
    from ssl_bench.features import extract

    first = extract(two_tones, Frames(), clip_seconds=0.25, cache_dir=tmp_path, progress=False)
    reference, entry = np.array(first.data).copy(), first.path
    del first
    data = entry / "features.bin"
    st = data.stat()
    with open(data, "r+b") as fh:  # other numbers in place
        fh.seek(16)
        fh.write(np.full(8, 7.5, np.float32).tobytes())
    _restore_times(data, st)
    with pytest.warns(CacheWarning, match="features.bin does not match the checksum"):
        again = extract(two_tones, Frames(), clip_seconds=0.25, cache_dir=tmp_path, progress=False)
    assert not again.from_cache
    np.testing.assert_array_equal(np.array(again.data), reference)


def test_an_embedding_file_without_its_checksum_is_computed_again(tmp_path):
    from ssl_bench.protocols.embeddings import _load_npy, _save_npy

    path = tmp_path / "k.npy"
    _save_npy(np.ones((4, 3), np.float32), path)
    (tmp_path / "k.npy.sum").unlink()
    with pytest.warns(CacheWarning, match="k.npy.sum.*computed again"):
        assert _load_npy(path, 4) is None
    assert not path.exists()


# --------------------------------------------------------------------------- 3: corrupt state
def test_a_corrupt_digest_database_heals_with_one_warning(two_tones, tmp_path):
    from ssl_bench.provenance import file_digests

    (tmp_path / "digests.sqlite").write_bytes(b"this is not a database" * 100)
    paths = [str(c.path.resolve()) for c in two_tones]
    with pytest.warns(CacheWarning, match=f"{tmp_path / 'digests.sqlite'}.*rebuilt") as caught:
        found = file_digests(paths, tmp_path)
    assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1
    assert found == {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert file_digests(paths, tmp_path) == found  # healed


def test_a_locked_digest_database_is_left_alone(two_tones, tmp_path, monkeypatch):
    from ssl_bench.provenance import DigestCache, file_digests

    paths = [str(c.path.resolve()) for c in two_tones]
    first = file_digests(paths[:1], tmp_path)
    monkeypatch.setattr(DigestCache, "TIMEOUT", 0.1)
    holder = sqlite3.connect(tmp_path / "digests.sqlite")
    holder.execute("BEGIN EXCLUSIVE")  # another process writing, for longer than we wait
    try:
        with pytest.warns(CacheWarning, match="cannot be used.*locked"):
            found = file_digests(paths, tmp_path)
    finally:
        holder.rollback()
        holder.close()
    assert found == {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}
    with sqlite3.connect(tmp_path / "digests.sqlite") as con:  # not taken for damage: its rows are kept
        assert con.execute("SELECT sha256 FROM files WHERE path = ?", (paths[0],)).fetchone()[0] == first[paths[0]]
    con.close()


def _run(root: Path, name: str, value) -> Path:
    with results.RunWriter(root, name, {"model": "m", "task": "t", "seed": 0}) as w:
        w.add_row(task="t", protocol="linear", split="fold1", seed=0, init="random", init_id="random",
                  metric="accuracy", value=0.5)
    record = json.loads((w.final_dir / "result.json").read_text())
    record["rows"][0]["value"] = value
    (w.final_dir / "result.json").write_text(json.dumps(record))
    return w.final_dir


def test_a_row_whose_value_is_not_a_number_hides_no_other_run(tmp_path, capsys):
    from ssl_bench.cli import main

    good, bad = _run(tmp_path, "run-a", 0.75), _run(tmp_path, "run-b", "notanumber")
    with pytest.warns(results.ResultsWarning) as caught:
        assert main(["results", str(tmp_path)]) == 0
    assert "0.7500" in capsys.readouterr().out
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and str(bad / "result.json") in messages[0] and "'notanumber'" in messages[0]
    assert good.name not in messages[0]


# --------------------------------------------------------------------------- 4: settings, before data work
@pytest.fixture
def no_data_work(tmp_path, monkeypatch):
    """A folder task whose preparation fails the test: settings must be refused before it."""
    from ssl_bench.registry import get_registry

    factory = get_registry().get("task", "folder").factory

    def prepare(self):
        raise AssertionError("data work began before the settings were checked")

    monkeypatch.setattr(factory, "prepare", prepare)
    return tmp_path


@pytest.mark.parametrize("setting, words", [
    ("pretrain.epochs=0", "pretrain.epochs must be >= 1, got 0"),
    ("pretrain.epochs=1.5", "pretrain.epochs: expected a whole number, got 1.5"),
    ("pretrain.epochs=nan", "pretrain.epochs: expected a finite number, got nan"),
    ("pretrain.batch_size=nan", "pretrain.batch_size: expected a finite number, got nan"),
    ("pretrain.lr=nan", "pretrain.lr: expected a finite number, got nan"),
    ("pretrain.weight_decay=nan", "pretrain.weight_decay: expected a finite number, got nan"),
    ("seed=abc", "seed: expected a whole number, got 'abc'"),
    ("seed=-1", "seed must be >= 0, got -1"),
    ("data.valid_fraction=1.5", "data.valid_fraction must be in [0, 1), got 1.5"),
    ("linear.C=-1", "linear.C: every value must be > 0, got [-1.0]"),
    ("linear.C=[]", "linear.C: give at least one value"),
    ("knn.k=0", "knn.k: every value must be >= 1, got [0]"),
    ("amp=maybe", "amp: expected true or false, got 'maybe'"),
])
def test_bad_settings_are_one_line_before_any_data_work(no_data_work, capsys, setting, words):
    from ssl_bench.cli import main

    rc = main(["run", "-m", "audiomae", "-p", "tiny", "-t", "folder", "--data-dir", str(no_data_work),
               "--protocols", "pretrain,linear,knn", "--results", str(no_data_work / "r"), "--set", setting])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0], err
    assert not (no_data_work / "r").exists()


def test_numbers_written_naturally_are_taken_and_keyed_alike():
    from ssl_bench.config import config_hash, parse_overrides, resolve, validate

    ten = validate(resolve("audiomae", preset="tiny", overrides=parse_overrides(["pretrain.epochs=1e1"])[0]))
    plain = validate(resolve("audiomae", preset="tiny", overrides={"pretrain.epochs": 10}))
    assert ten["pretrain"]["epochs"] == 10 and isinstance(ten["pretrain"]["epochs"], int)
    assert config_hash(ten) == config_hash(plain)
    assert validate(resolve("audiomae", preset="tiny", overrides={"linear.C": 1}))["linear"]["C"] == [1.0]


def _without_plan(err: str) -> list[str]:
    """The lines of ``err`` after the run's plan (its first line ``plan: ...``, then indented ones)."""
    lines = err.strip().splitlines()
    return [line for line in lines if not (line.startswith("plan: ") or line.startswith("  "))]


def test_no_validation_data_for_a_grid_is_refused_before_features(tmp_path, capsys):
    from ssl_bench.cli import main

    data = make_folder(tmp_path / "data", per_class=4, seconds=0.25)
    rc = main(["run", "-m", "audiomae", "-p", "tiny", "-t", "folder", "--data-dir", str(data), "--splits", "fold1",
               "--protocols", "linear", "--results", str(tmp_path / "r"), "--set", "data.valid_fraction=0"])
    err = _without_plan(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1 and "linear.C" in err[0] and "data.valid_fraction" in err[0], err
    assert not (tmp_path / "r" / ".cache" / "features").exists()  # before any feature was extracted


@pytest.mark.parametrize("solver", ["sklearn", "torch"])
def test_a_single_C_without_validation_data_fits(solver):
    from trainfixtures import toy_split

    from ssl_bench.protocols.linear import LinearConfig, probe_embeddings

    data = toy_split(n=32, num_classes=2, n_valid=0)
    rng = np.random.default_rng(0)
    y = {p: data.part_targets(p) for p in ("train", "valid", "test")}
    X = {p: (rng.standard_normal((len(t), 5)) + t[:, None]).astype(np.float32) for p, t in y.items()}
    result, used = probe_embeddings(X, y, data, LinearConfig(C=[1.0], solver=solver), seed=0)
    assert used == solver and result.C == 1.0 and result.selection == "single C" and 0 <= result.test["accuracy"] <= 1


@pytest.mark.parametrize("protocol, key", [("linear", "linear.C"), ("layers", "layers.C"), ("knn", "knn.k")])
def test_no_validation_data_to_choose_on_is_a_config_error_naming_the_key(protocol, key):
    from trainfixtures import toy_split

    from ssl_bench.protocols.knn import fit_knn
    from ssl_bench.protocols.layers import LayersConfig
    from ssl_bench.protocols.linear import LinearConfig, probe_embeddings

    data = toy_split(n=32, num_classes=2, n_valid=0)
    y = {p: data.part_targets(p) for p in ("train", "valid", "test")}
    X = {p: np.random.default_rng(0).standard_normal((len(t), 5)).astype(np.float32) for p, t in y.items()}
    with pytest.raises(ConfigError, match=f"{key}: no validation data"):
        if protocol == "knn":
            fit_knn(X, y, num_classes=2, metrics=["accuracy"], ks=[1, 3])
        else:
            section = (LayersConfig if protocol == "layers" else LinearConfig)(C=[0.1, 1.0])
            probe_embeddings(X, y, data, section, seed=0, key=key)


def test_an_empty_task_list_is_an_error(tmp_path, capsys):
    from ssl_bench.cli import main

    assert main(["run", "-m", "audiomae", "-t", ",", "--results", str(tmp_path / "r")]) == 2
    assert "--task" in capsys.readouterr().err


# --------------------------------------------------------------------------- 5: a checkpoint's own settings
def test_pretraining_settings_given_with_a_checkpoint_are_refused(tmp_path, capsys):
    import ssl_bench
    from ssl_bench.checkpoint import save_model
    from ssl_bench.cli import main

    torch.manual_seed(0)
    save_model(ssl_bench.create_model("audiomae", preset="tiny"), tmp_path / "enc.pt")
    base = ["run", "-t", "folder", "--data-dir", str(tmp_path), "--checkpoint", str(tmp_path / "enc.pt"),
            "--protocols", "linear", "--results", str(tmp_path / "r")]
    for setting in ("masker.ratio=0.5", "masker.ratio=0.5,0.8", "pretrain.epochs=3"):
        assert main([*base, "--set", setting]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        key = setting.split("=")[0]
        assert len(err) == 1 and key in err[0] and "--checkpoint" in err[0], err
    assert main([*base, "--set", "masker.ratio=0.5"]) == 2
    assert "masker.ratio=0.8" in capsys.readouterr().err  # what the checkpoint was pretrained with
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_that_records_no_pretraining_takes_a_component_choice_only(tmp_path):
    from ssl_bench.config import resolve
    from ssl_bench.encoders import refuse_pretraining_settings

    official = tmp_path / "official.pt"
    torch.save({"blocks.0.weight": torch.zeros(2)}, official)  # weights, no ssl-bench config
    refuse_pretraining_settings({"decoder": None}, resolve("audiomae", preset="tiny", overrides={"decoder": None}),
                                official)  # load only the encoder: allowed
    with pytest.raises(ConfigError, match="masker.ratio=0.5: .* records no pretraining settings"):
        refuse_pretraining_settings({"masker.ratio": 0.5},
                                    resolve("audiomae", preset="tiny", overrides={"masker.ratio": 0.5}), official)


# --------------------------------------------------------------------------- 6: faults
def _unwritable(path: Path) -> str:
    """Make ``path`` a folder nobody may write into: mode 0555, and for root, who ignores modes,
    the immutable flag.  Returns how (the caller undoes it)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o555)
    probe = path / ".probe"  # root ignores modes: try a write
    try:
        probe.write_text("x")
    except OSError:
        return "mode"
    probe.unlink()
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode == 0:
        try:
            probe.write_text("x")
        except OSError:
            return "immutable"
        probe.unlink()
    return ""


def _writable_again(path: Path, how: str) -> None:
    if how == "immutable":
        subprocess.run(["chattr", "-i", str(path)], check=True)
    os.chmod(path, 0o755)


def test_a_read_only_results_folder_is_one_line(tmp_path, capsys, monkeypatch):
    from ssl_bench.cli import main

    data = make_folder(tmp_path / "data", per_class=2, seconds=0.25)
    root = tmp_path / "ro"
    _run(root, "run-a", 0.5)  # a finished run to plot
    how = _unwritable(root)
    if not how:  # neither works here (a filesystem without the flag): make writes fail as in such a folder
        real = os.open

        def refuse(path, *args, **kwargs):
            if str(path).startswith(str(root)) and args and args[0] & os.O_CREAT:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse)
    try:
        rc = main(["run", "-m", "audiomae", "-p", "tiny", "-t", "folder", "--data-dir", str(data),
                   "--protocols", "linear", "--results", str(root)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and str(root) in err[0] and "not writable" in err[0], err
        rc = main(["plot", str(root)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and str(root / "plots") in err[0] and "not writable" in err[0], err
    finally:
        if how:
            _writable_again(root, how)
    assert not (root / ".cache").exists()  # refused before any data work


def test_a_full_disk_names_the_results_path(tmp_path, monkeypatch, capsys):
    from ssl_bench import cli

    def full(root):
        raise OSError(errno.ENOSPC, "No space left on device")  # no file name in the error

    monkeypatch.setattr(results, "load", full)
    assert cli.main(["results", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "mine") in err[0] and "no space left" in err[0]


def _killed_while_writing(target: Path) -> None:
    """A child process that starts ``atomic_save(..., target)`` and is SIGKILLed mid-write."""
    from ssl_bench import checkpoint

    pid = os.fork()
    if pid == 0:  # the child: write a little, then die as SIGKILL kills
        def save(obj, fh):
            fh.write(b"x" * 4096)
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint.torch.save = save
        checkpoint.atomic_save({"w": 1}, target)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_a_killed_checkpoint_writer_leaves_nothing_behind_for_long(tmp_path):
    from ssl_bench.checkpoint import atomic_save

    target = tmp_path / "last.pt"
    _killed_while_writing(target)
    left = [p for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(left) == 1 and left[0].stat().st_size == 4096  # what SIGKILL left
    old = time.time() - 3600
    os.utime(left[0], (old, old))
    atomic_save({"w": 2}, target)  # the next writer of that file removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_killed_extraction_is_cleaned_by_the_next_cache_hit(two_tones, tmp_path):
    from ssl_bench.features import extract
    from ssl_bench.files import temp_prefix

    extract(two_tones, Frames(), clip_seconds=0.25, cache_dir=tmp_path, progress=False)
    dead = tmp_path / temp_prefix("x").replace(f"-{os.getpid()}-", "-999999999-")
    dead.mkdir()
    (dead / "features.bin").write_bytes(b"0" * 100)
    os.utime(dead, (time.time() - 3600, time.time() - 3600))
    assert extract(two_tones, Frames(), clip_seconds=0.25, cache_dir=tmp_path, progress=False).from_cache
    assert not dead.exists()


# --------------------------------------------------------------------------- 7: plugins
def test_a_plugin_file_named_like_a_built_in_is_named_and_hides_nothing(tmp_path, capsys):
    from ssl_bench.cli import main

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "audio.py").write_text("x = 1\n")
    assert main(["--plugins-dir", str(plugins), "plugins", "--json"]) == 0
    out, err = capsys.readouterr()
    listed = {p["name"]: p for p in json.loads(out)}
    assert listed["audio"]["origin"] == "built-in" and listed["audio"]["error"] is None
    assert "random" in listed["audio"]["registered"]["masker"]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(plugins / "audio.py") in lines[0] and "built-in plugin 'audio'" in lines[0]
    assert "Plugin name already registered" not in lines[0]  # pluggy's own words


def test_a_plugin_exiting_during_a_run_fails_the_run(tmp_path, capsys):
    from ssl_bench.cli import main

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "quitter.py").write_text(
        "import sys\nfrom ssl_bench import hookimpl\n\n"
        "class Quits:\n    name = 'quits'\n    sample_rate = 16000\n    clip_seconds = 1.0\n\n    def __init__(self, data_dir=None):\n        pass\n\n"
        "    def prepare(self):\n        sys.exit(0)\n\n"
        "@hookimpl\ndef register_tasks(register):\n    register('quits', Quits)\n")
    rc = main(["--plugins-dir", str(plugins), "run", "-m", "audiomae", "-p", "tiny", "-t", "quits",
               "--protocols", "linear", "--results", str(tmp_path / "r")])
    err = _without_plan(capsys.readouterr().err)
    assert rc != 0
    assert len(err) == 1 and "sys.exit(0)" in err[0] and str(plugins / "quitter.py") in err[0], err


# --------------------------------------------------------------------------- 8: the exported HEAR module
@pytest.fixture(scope="module")
def hear_model():
    from ssl_bench.plugins.hear import HearModel

    import ssl_bench

    torch.manual_seed(0)
    model = ssl_bench.create_model("audiomae", preset="tiny", **{"frontend.num_frames": 128, "frontend.mean": -6.0,
                                                                 "frontend.std": 4.0, "encoder.depth": 1})
    return HearModel(model.eval())


def test_hear_int16_audio_is_scaled_like_soundfile(hear_model):
    wave = 0.3 * torch.sin(torch.arange(16000) / 16000 * 2 * math.pi * 440.0)[None]
    pcm = (wave * 32767).round().to(torch.int16)
    floats = hear_model.scene_embeddings(pcm.float() / 32768)
    assert torch.allclose(hear_model.scene_embeddings(pcm), floats, atol=1e-5)
    emb, _ = hear_model.timestamp_embeddings(pcm)
    assert torch.allclose(emb, hear_model.timestamp_embeddings(pcm.float() / 32768)[0], atol=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_hear_refuses_non_finite_audio(hear_model, bad):
    audio = torch.zeros(2, 4000)
    audio[1, 7] = bad
    for fn in (hear_model.scene_embeddings, hear_model.timestamp_embeddings, hear_model.layer_embeddings):
        with pytest.raises(ValueError, match="sound 1.*NaN or infinite"):
            fn(audio)


def test_hear_takes_an_empty_batch(hear_model):
    audio = torch.zeros(0, 16000)
    assert hear_model.scene_embeddings(audio).shape == (0, 64)
    emb, ts = hear_model.timestamp_embeddings(audio)
    one, one_ts = hear_model.timestamp_embeddings(torch.zeros(1, 16000))
    assert emb.shape == (0, one.shape[1], 64) and ts.shape == (0, one_ts.shape[1])
    assert hear_model.layer_embeddings(audio).shape[0] == 0


@pytest.mark.parametrize("shape", [(16000,), (1, 1, 16000)])
def test_hear_names_the_shape_it_wants(hear_model, shape):
    for fn in (hear_model.scene_embeddings, hear_model.timestamp_embeddings, hear_model.layer_embeddings):
        with pytest.raises(ValueError, match=r"\[n_sounds, n_samples\].*" + str(len(shape)) + "-D"):
            fn(torch.zeros(shape))


# --------------------------------------------------------------------------- 9: a third-party HEAR module
THIRD_PARTY = '''"""A HEAR 2021 module as third parties write them: its own rate, default weights in code."""
import torch

RATE = 22050


class Model(torch.nn.Module):
    sample_rate = RATE
    scene_embedding_size = 8
    timestamp_embedding_size = 8

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(1234)
        self.proj = torch.nn.Parameter(torch.randn(257, 8, generator=gen) / 16)


def load_model(model_file_path: str = "") -> Model:
    model = Model()
    if model_file_path:
        model.load_state_dict(torch.load(model_file_path, weights_only=True))
    return model


def _frames(audio, model):
    spec = torch.stft(audio, 512, 256, window=torch.hann_window(512), return_complex=True).abs()
    return torch.log1p(spec).transpose(1, 2) @ model.proj  # [n, frames, 8]


def get_timestamp_embeddings(audio, model):
    emb = _frames(audio, model)
    ts = (torch.arange(emb.shape[1]) * 256 / RATE * 1000.0).expand(audio.shape[0], -1)
    return emb, ts


def get_scene_embeddings(audio, model):
    return _frames(audio, model).mean(dim=1)
'''


def test_a_hear_module_with_default_weights_runs_with_no_other_flag(tmp_path, monkeypatch, capsys):
    from ssl_bench.cli import main

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "thirdparty_hear.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    data = make_folder(tmp_path / "data", per_class=6, seconds=0.5)
    rc = main(["run", "-m", "hear", "--set", "encoder.module=thirdparty_hear", "-t", "folder",
               "--data-dir", str(data), "--splits", "fold1", "--protocols", "linear",
               "--results", str(tmp_path / "r"), "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    df = results.load(tmp_path / "r")
    assert set(df["protocol"]) == {"linear"} and df["metric"].is_unique  # no init=random baseline row
    assert set(df["init"]) == {"thirdparty_hear"} and df["init_id"].nunique() == 1
    init_id = df["init_id"].iloc[0]
    assert init_id != "random" and len(init_id) == 12  # the default weights, named by content
    assert set(df["frontend.sample_rate"]) == {22050}  # the module's own rate, adopted
    sys.modules.pop("thirdparty_hear", None)


def test_a_rate_the_user_gives_still_wins_and_must_match(tmp_path, monkeypatch):
    import ssl_bench

    (tmp_path / "thirdparty_hear2.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="frontend.sample_rate=22050"):
        ssl_bench.create_model("hear", **{"encoder.module": "thirdparty_hear2", "frontend.sample_rate": 16000})
    sys.modules.pop("thirdparty_hear2", None)


# --------------------------------------------------------------------------- 10: precision is identity
def test_precision_keys_the_pretraining_the_encoder_id_and_the_embeddings(monkeypatch):
    from trainfixtures import toy_model, toy_split

    from ssl_bench.config import resolve
    from ssl_bench.encoders import pretrain_hash, recipe_id
    from ssl_bench.protocols.embeddings import embedding_key
    from ssl_bench.train import loop, precision

    monkeypatch.setattr(loop, "cpu_bf16_supported", lambda: True)
    assert precision("cpu", True) == "bf16" and precision("cpu", False) == "float32"
    bf16, fp32 = (resolve("audiomae", preset="tiny", overrides={"amp": a}) for a in (True, False))
    clips = []
    assert pretrain_hash(bf16, clips, device="cpu") != pretrain_hash(fp32, clips, device="cpu")
    assert recipe_id(bf16, "d" * 64, device="cpu") != recipe_id(fp32, "d" * 64, device="cpu")
    model, data = toy_model(), toy_split()
    assert embedding_key(model, data, [0, 1], precision="bf16") != embedding_key(model, data, [0, 1],
                                                                                  precision="float32")
    monkeypatch.setattr(loop, "cpu_bf16_supported", lambda: False)  # amp on a CPU without bf16: float32
    assert pretrain_hash(bf16, clips, device="cpu") == pretrain_hash(fp32, clips, device="cpu")


def test_every_setting_keys_the_pretraining_or_is_listed_as_unable_to_change_weights():
    import dataclasses

    from ssl_bench.config import BOOKKEEPING_FIELDS, EXECUTION_FIELDS, DataConfig, RunSettings, resolve
    from ssl_bench.encoders import pretrain_hash

    def keyed(key, value) -> bool:
        base, other = (resolve("audiomae", preset="tiny", overrides=o) for o in ({}, {key: value}))
        return pretrain_hash(other, [], device="cuda") != pretrain_hash(base, [], device="cuda")

    flipped = {"seed": 3, "amp": False, "compile": True, "deterministic": True, "memory_gb": 2.0, "device": "cuda:1"}
    for f in dataclasses.fields(RunSettings):  # every run setting: keyed, or listed as unable to change weights
        assert keyed(f.name, flipped[f.name]) != (f.name in BOOKKEEPING_FIELDS + EXECUTION_FIELDS), f.name
    for key, value in {"pretrain.epochs": 7, "pretrain.blr": 1e-3, "masker.ratio": 0.5, "frontend.num_bins": 64,
                       "objective.norm_pix": False}.items():
        assert keyed(key, value), key
    for key, value in {"pretrain.checkpoint_every": 9, "pretrain.checkpoint_min_s": 1.0}.items():
        assert key.split(".")[1] in BOOKKEEPING_FIELDS and not keyed(key, value), key
    # the data section: what loads the audio changes nothing; which clips validate, and which labelled
    # clips a probe trains on (label efficiency: shots, fraction, their draw), change no pretraining, which
    # reads every training clip's audio
    assert {f"data.{f.name}" for f in dataclasses.fields(DataConfig)} - set(BOOKKEEPING_FIELDS) == {
        "data.valid_fraction", "data.shots", "data.fraction", "data.draw"}


# --------------------------------------------------------------------------- 11: hostile strings in tables
HOSTILE = pd.DataFrame({"model": ["\\input{/etc/passwd}", "=HYPERLINK(\"http://x\",\"y\")"],
                        "task": ["a & b_c 100%", "two\nlines | pipe"], "mean": [0.5, 0.25]})


def test_latex_export_escapes_what_latex_would_run():
    text = results.format_table(HOSTILE, "latex")
    assert "\\input{" not in text and "\\textbackslash{}input\\{/etc/passwd\\}" in text
    assert "a \\& b\\_c 100\\%" in text
    assert "\\begin{tabular}" in text  # the table's own commands stay


def test_csv_export_does_not_start_a_cell_with_a_formula():
    import csv
    import io

    rows = list(csv.reader(io.StringIO(results.format_table(HOSTILE.set_index("model"), "csv"))))
    cells = [c for row in rows for c in row]
    assert not any(c.startswith(("=", "+", "-", "@")) and not _is_number(c) for c in cells)
    assert "'=HYPERLINK(\"http://x\",\"y\")" in cells


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_markdown_export_keeps_one_line_per_row():
    text = results.format_table(HOSTILE, "md")
    lines = text.splitlines()
    assert len(lines) == 4 and all(line.startswith("|") and line.endswith("|") for line in lines)
    assert "two<br>lines \\| pipe" in text


# --------------------------------------------------------------------------- 12: small things
def test_results_warnings_are_one_line_each(tmp_path, capsys):
    from ssl_bench.cli import main

    _run(tmp_path, "run-a", 0.5)
    for name in ("run-b", "run-c"):
        d = _run(tmp_path, name, 0.5)
        (d / "result.json").write_text("{")

    def shown_as_python_does(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():  # printed as outside pytest, which records warnings instead
        warnings.simplefilter("always")
        warnings.showwarning = shown_as_python_does
        assert main(["results", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert "0.5000" in out
    assert len(lines) == 2 and all(line.startswith("ssl-bench: warning: ") and "result.json" in line
                                   for line in lines), lines


def test_a_bad_config_yaml_is_named_as_such(tmp_path):
    d = _run(tmp_path, "run-a", 0.5)
    (d / "config.yaml").write_text("model: [unclosed\n")
    with pytest.warns(results.ResultsWarning, match=f"{d / 'config.yaml'}: unreadable"):
        results.load(tmp_path)


def test_a_traversing_tar_names_the_destination(tmp_path):
    import io
    import tarfile

    from ssl_bench.download import DownloadError, unpack

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    dest = tmp_path / "data" / "ESC-50-master"
    with pytest.raises(DownloadError) as caught:
        unpack(archive, dest)
    assert f"outside {dest}" in str(caught.value) and ".unpack-" not in str(caught.value)
    assert not dest.exists() and list((tmp_path / "data").iterdir()) == []

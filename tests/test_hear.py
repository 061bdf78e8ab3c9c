"""The HEAR 2021 API both ways: our conformance test of an exported tiny AudioMAE, the round trip
export -> pip install (offline, into a temporary target) -> import as ``-m hear``, and the CLI.

``hearvalidator`` (the HEAR kit's own check) is not a test dependency: it pulls TensorFlow.  It
passes an export made with ``--hop-ms 40`` when run by hand (README, "HEAR modules, both ways");
the contract it checks (names, attributes, shapes, dtypes, timestamps) is what the conformance
test below checks.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ssl_bench
from ssl_bench.checkpoint import save_model
from ssl_bench.config import ConfigError

SR = 16000
NUM_FRAMES = 128  # 1 s clips of the kaldi frontend: 98 frames, padded to 128


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny AudioMAE, its ssl-bench checkpoint, the exported package, installed and imported."""
    root = tmp_path_factory.mktemp("hear")
    torch.manual_seed(0)
    model = ssl_bench.create_model("audiomae", preset="tiny", **{"frontend.num_frames": NUM_FRAMES,
                                                                 "frontend.mean": -6.0, "frontend.std": 4.0})
    save_model(model, root / "tiny.pt")
    from ssl_bench.cli import main

    assert main(["export-hear", "--checkpoint", str(root / "tiny.pt"), "-o", str(root / "pkg"),
                 "--name", "ssl_bench_test_hear_tiny"]) == 0
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                          "--target", str(root / "site"), str(root / "pkg")], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    sys.path.insert(0, str(root / "site"))
    try:
        module = importlib.import_module("ssl_bench_test_hear_tiny")
        yield {"root": root, "module": module, "hear": module.load_model(), "model": model.eval()}
    finally:
        sys.path.remove(str(root / "site"))
        sys.modules.pop("ssl_bench_test_hear_tiny", None)


def native_embedding(model, audio: torch.Tensor) -> torch.Tensor:
    """What ssl-bench's probes embed: raw features zero-padded to the model's length, normalised."""
    feats = model.frontend.compute(audio)
    feats = torch.nn.functional.pad(feats, (0, 0, 0, NUM_FRAMES - feats.shape[1]))
    with torch.no_grad():
        return model.embed(model.frontend.normalize(feats))


# --------------------------------------------------------------------------- conformance
def test_installed_module_has_the_api(exported):
    module, hear = exported["module"], exported["hear"]
    for name in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings"):
        assert callable(getattr(module, name))
    assert isinstance(hear, torch.nn.Module)
    assert isinstance(hear.sample_rate, int) and hear.sample_rate == SR
    assert isinstance(hear.scene_embedding_size, int) and hear.scene_embedding_size == 64
    assert isinstance(hear.timestamp_embedding_size, int) and hear.timestamp_embedding_size == 64
    assert Path(module.__file__).parent.parent == exported["root"] / "site"  # the installed copy, not the source
    # load_model(path) takes an exported checkpoint too
    again = module.load_model(str(exported["root"] / "pkg" / "ssl_bench_test_hear_tiny" / "model.pt"))
    audio = 0.1 * torch.randn(2, SR)
    assert torch.equal(module.get_scene_embeddings(audio, again), module.get_scene_embeddings(audio, hear))


def test_scene_and_timestamp_shapes_dtypes_and_timestamps(exported):
    module, hear = exported["module"], exported["hear"]
    audio = 0.1 * torch.randn(3, int(2.5 * SR))
    scene = module.get_scene_embeddings(audio, hear)
    assert scene.shape == (3, 64) and scene.dtype == torch.float32
    emb, ts = module.get_timestamp_embeddings(audio, hear)
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert emb.shape[:2] == ts.shape and emb.shape[0] == 3 and emb.shape[2] == hear.timestamp_embedding_size
    hop = hear.hop_ms  # 16-frame patch columns of 10 ms frames
    assert hop == pytest.approx(160.0)
    # centred timestamps in ms, the same for every sound: column t spans Kaldi frames 16 t .. 16 t + 15,
    # samples 2560 t .. 2560 t + 2799, centred on sample 2560 t + 1399.5 (87.47 ms, then every 160 ms)
    expected = (torch.arange(ts.shape[1], dtype=torch.float64) * 2560 + 1399.5) / 16
    assert torch.allclose(ts[0], expected.float()) and torch.equal(ts[0], ts[2])
    assert ts[0, -1] < 2500 and ts[0, -1] + hop >= 2500 - hop
    assert ts.shape[1] == 16  # columns centred inside 2.5 s: 87.5, 247.5, ..., 2487.5 ms
    assert torch.isfinite(emb).all() and torch.isfinite(scene).all()


def test_batching_does_not_change_embeddings(exported):
    module, hear = exported["module"], exported["hear"]
    audio = 0.1 * torch.randn(4, SR + 3000)
    scene = module.get_scene_embeddings(audio, hear)
    emb, _ = module.get_timestamp_embeddings(audio, hear)
    for i in range(4):
        one_scene = module.get_scene_embeddings(audio[i:i + 1], hear)
        one_emb, _ = module.get_timestamp_embeddings(audio[i:i + 1], hear)
        assert torch.allclose(one_scene[0], scene[i], atol=1e-5)
        assert torch.allclose(one_emb[0], emb[i], atol=1e-5)


@pytest.mark.parametrize("samples", [0, 1, 100, 399, 400, 1000])
def test_silence_and_very_short_clips(exported, samples):
    module, hear = exported["module"], exported["hear"]
    audio = torch.zeros(2, samples)
    scene = module.get_scene_embeddings(audio, hear)
    emb, ts = module.get_timestamp_embeddings(audio, hear)
    assert scene.shape == (2, 64) and torch.isfinite(scene).all()
    assert emb.shape == (2, 1, 64) and ts.shape == (2, 1) and torch.isfinite(emb).all()


def test_long_clips_are_windowed(exported):
    module, hear = exported["module"], exported["hear"]
    audio = 0.1 * torch.randn(1, 4 * SR)  # four 1.28 s windows (the last one padded)
    emb, ts = module.get_timestamp_embeddings(audio, hear)
    assert ts.shape[1] == 25 and torch.allclose(ts[0, 1:] - ts[0, :-1], torch.tensor(hear.hop_ms))
    scene = module.get_scene_embeddings(audio, hear)
    windows, count = hear._windows(audio)
    assert count == 4 and windows.shape == (4, NUM_FRAMES, 128)
    assert torch.allclose(scene[0], hear.model.embed(windows).mean(0), atol=1e-5)


# --------------------------------------------------------------------------- round trip
def test_round_trip_export_install_import(exported):
    """Native ssl-bench embedding == the exported module's == the module imported as ``-m hear``."""
    module, hear, model, root = exported["module"], exported["hear"], exported["model"], exported["root"]
    audio = 0.1 * torch.randn(3, SR)
    native = native_embedding(model, audio)
    assert torch.allclose(module.get_scene_embeddings(audio, hear), native, atol=1e-5)
    imported = ssl_bench.create_model("hear", checkpoint=root / "site" / "ssl_bench_test_hear_tiny" / "model.pt",
                                      **{"encoder.module": "ssl_bench_test_hear_tiny",
                                         "frontend.num_frames": SR}).eval()
    assert imported.encoder.dim == 64 and imported.encoder.cfg.weights_id
    spec = imported.frontend.normalize(imported.frontend.compute(audio))  # [3, N, 1] waveforms
    assert torch.allclose(imported.embed(spec), native, atol=1e-5)
    # per-layer embeddings (the ssl-bench extension) round-trip too
    with torch.no_grad():
        feats = torch.nn.functional.pad(model.frontend.compute(audio), (0, 0, 0, NUM_FRAMES - 98))
        layers = model.embed(model.frontend.normalize(feats), layers=True)
    assert torch.allclose(imported.embed(spec, layers=True), layers, atol=1e-5)
    assert not any(p.requires_grad for p in imported.encoder.parameters())  # a frozen import


def test_run_hear_end_to_end(exported, tmp_path):
    """``ssl-bench run -m hear`` with linear and layers: no pretraining, no random baseline row,
    rows named by the checkpoint's content."""
    from taskfixtures import make_esc50

    from ssl_bench import results
    from ssl_bench.cli import main
    from ssl_bench.provenance import file_sha256

    data = make_esc50(tmp_path / "data", num_classes=2, per_fold=2, seconds=1.0, sr=SR)
    ckpt = exported["root"] / "site" / "ssl_bench_test_hear_tiny" / "model.pt"
    code = main(["run", "-m", "hear", "-t", "esc50", "--data-dir", str(data), "--splits", "fold1",
                 "--set", "encoder.module=ssl_bench_test_hear_tiny", "--checkpoint", str(ckpt),
                 "--protocols", "pretrain,linear,layers", "--results", str(tmp_path / "res"), "-q"])
    assert code == 0
    df = results.load(tmp_path / "res")
    assert set(df["protocol"]) == {"linear", "layers"}
    assert set(df["init_id"]) == {file_sha256(ckpt)[:12]} and "random" not in set(df["init"])
    log = next((tmp_path / "res").glob("*/log.txt")).read_text()
    assert "pretrain: skipped, model 'hear' has no pretraining method" in log
    assert "no init=random baseline" in log


# --------------------------------------------------------------------------- errors
def test_hear_import_errors(exported):
    ckpt = exported["root"] / "tiny.pt"
    with pytest.raises(ConfigError, match="encoder.module=NAME"):
        ssl_bench.create_model("hear", checkpoint=ckpt)
    with pytest.raises(ConfigError, match="cannot import"):
        ssl_bench.create_model("hear", checkpoint=ckpt, **{"encoder.module": "no_such_hear_module_xyz"})
    with pytest.raises(ConfigError, match="not a HEAR 2021 module"):
        ssl_bench.create_model("hear", checkpoint=ckpt, **{"encoder.module": "json"})
    # without --checkpoint, the module's default weights (its packaged model.pt), named by content
    default = ssl_bench.create_model("hear", **{"encoder.module": "ssl_bench_test_hear_tiny"})
    assert default.encoder.weights_identity[0] == "ssl_bench_test_hear_tiny"
    assert default.config["encoder"]["weights_id"] == default.encoder.weights_identity[1]
    with pytest.raises(ConfigError, match="frontend.sample_rate=16000"):
        ssl_bench.create_model("hear", checkpoint=ckpt, **{"encoder.module": "ssl_bench_test_hear_tiny",
                                                          "frontend.sample_rate": 22050})


def test_export_refuses_missing_statistics_and_a_used_directory(tmp_path):
    from ssl_bench.plugins.hear import export_hear

    torch.manual_seed(0)
    model = ssl_bench.create_model("audiomae", preset="tiny", **{"frontend.num_frames": NUM_FRAMES})
    save_model(model, tmp_path / "nostats.pt")
    with pytest.raises(ConfigError, match="frontend.mean=M"):
        export_hear(str(tmp_path / "nostats.pt"), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        export_hear(str(tmp_path / "nostats.pt"), tmp_path / "used")
    # the statistics given on the command line make it exportable
    pkg = export_hear(str(tmp_path / "nostats.pt"), tmp_path / "out",
                      overrides={"frontend.mean": -6.0, "frontend.std": 4.0})
    assert (pkg / "model.pt").is_file() and (pkg.parent / "pyproject.toml").is_file()


def test_export_a_torchaudio_hubert(tmp_path):
    """A model of any input length (HuBERT on waveforms) exports with windows of --window-seconds;
    its timestamps follow the conv stack's frames (40 samples = 2.5 ms for the tiny stack)."""
    import torchaudio

    from ssl_bench.plugins.hear import export_hear, load_exported

    torch.manual_seed(0)
    source = ssl_bench.create_model("hubert", preset="tiny", **{"frontend.num_frames": SR}).eval()
    ref = torchaudio.models.wav2vec2_model(**source.encoder.builder_arguments())
    ref.load_state_dict(source.encoder.state_dict())
    torch.save(ref.state_dict(), tmp_path / "hubert_tiny.pth")
    pkg = export_hear(str(tmp_path / "hubert_tiny.pth"), tmp_path / "out", model_name="hubert", preset="tiny",
                      overrides={"encoder.heads": 4}, window_seconds=0.5)
    hear = load_exported(pkg / "model.pt")
    assert hear.window == SR // 2 and hear.hop_ms == pytest.approx(2.5)
    audio = 0.1 * torch.randn(2, SR // 2)
    emb, ts = hear.timestamp_embeddings(audio)
    assert emb.shape[1] == ts.shape[1] == source.encoder.grid_for(SR // 2, 1)[0]
    # frame j's receptive field: samples 40 j .. 40 j + 59 (kernels 10, 3, 3, 2; strides 5, 2, 2, 2)
    assert source.encoder.min_samples() == 60
    assert torch.allclose(ts[0, :3], torch.tensor([29.5, 69.5, 109.5]) / 16)
    with torch.no_grad():
        assert torch.allclose(hear.scene_embeddings(audio), source.embed(audio[..., None]), atol=1e-5)
    with pytest.raises(ConfigError, match="--window-seconds"):
        export_hear(str(tmp_path / "hubert_tiny.pth"), tmp_path / "out2", model_name="hubert", preset="tiny",
                    overrides={"encoder.heads": 4, "frontend.num_frames": SR}, window_seconds=0.5)


def test_a_checkpoint_of_another_model_sets_no_slots():
    from ssl_bench.encoders import apply_pretraining_record

    saved = {"model": "audiomae", "decoder": {"name": "shifted-window"}, "method": {"name": "mae"},
             "pretrain": {"epochs": 3}}
    config = {"model": "hear", "decoder": None, "method": None, "pretrain": {"epochs": 1}}
    assert apply_pretraining_record(config, saved) == "checkpoint config"
    assert config["decoder"] is None and config["method"] is None and config["pretrain"]["epochs"] == 3
    same = {"model": "audiomae", "decoder": {"name": "global"}, "method": {"name": "mae"}}
    apply_pretraining_record(same, saved)
    assert same["decoder"] == {"name": "shifted-window"}


TOY_MODULE = '''
"""A HEAR 2021 module written by hand (not by ssl-bench): RMS and zero-crossing features."""
import torch


class Toy(torch.nn.Module):
    sample_rate = 16000
    scene_embedding_size = 4
    timestamp_embedding_size = 4

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(2, 4)


def load_model(model_file_path=""):
    model = Toy()
    model.load_state_dict(torch.load(model_file_path, weights_only=True))
    return model


def _frames(audio):
    frames = torch.nn.functional.pad(audio, (0, 400)).unfold(1, 400, 160)
    rms = frames.square().mean(-1).sqrt()
    zcr = (frames[..., 1:] * frames[..., :-1] < 0).float().mean(-1)
    return torch.stack([rms, zcr], -1)


def get_timestamp_embeddings(audio, model):
    emb = model.proj(_frames(audio))
    ts = (torch.arange(emb.shape[1]) * 10.0 + 12.5).expand(audio.shape[0], -1)
    return emb, ts


def get_scene_embeddings(audio, model):
    return get_timestamp_embeddings(audio, model)[0].mean(1)
'''


def test_a_third_party_hear_module(tmp_path, monkeypatch):
    """Any module with the API works as ``-m hear``; one without per-layer embeddings says so for
    ``layers``; its weights are frozen."""
    (tmp_path / "toy_hear_module_for_tests.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    toy = importlib.import_module("toy_hear_module_for_tests")
    weights = toy.Toy().state_dict()
    torch.save(weights, tmp_path / "toy.pt")
    model = ssl_bench.create_model("hear", checkpoint=tmp_path / "toy.pt",
                                   **{"encoder.module": "toy_hear_module_for_tests", "frontend.num_frames": SR})
    audio = 0.1 * torch.randn(2, SR)
    spec = model.frontend.normalize(model.frontend.compute(audio))
    reference = toy.get_scene_embeddings(audio, toy.load_model(str(tmp_path / "toy.pt")))
    assert torch.allclose(model.embed(spec), reference)
    assert model.encoder.dim == 4 and not any(p.requires_grad for p in model.encoder.parameters())
    with pytest.raises(ConfigError, match="no per-layer embeddings"):
        model.embed(spec, layers=True)
    sys.modules.pop("toy_hear_module_for_tests", None)


BROKEN_MODULE = '''
"""A HEAR 2021 module whose load_model fails in its own code, as hearbaseline 2021.1.1's does with
librosa 0.10 and later (librosa.filters.mel called with a positional sample rate)."""


def _mel(*, sr, n_fft):
    return [sr, n_fft]


def load_model(model_file_path=""):
    return _mel(44100, n_fft=4096)


def get_scene_embeddings(audio, model):
    raise AssertionError("never reached")


get_timestamp_embeddings = get_scene_embeddings
'''


def test_a_module_failing_in_its_own_code_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    from ssl_bench.cli import main

    (tmp_path / "broken_hear_load.py").write_text(BROKEN_MODULE)
    (tmp_path / "broken_hear_import.py").write_text("import math\nmath.no_such_function()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^broken_hear_load\.load_model\(\) failed inside the module: TypeError: "
                                          r"_mel\(\) takes 0 positional arguments.* \(at .*broken_hear_load\.py:11\)"):
        ssl_bench.create_model("hear", **{"encoder.module": "broken_hear_load"})
    with pytest.raises(ConfigError, match=r"^broken_hear_load\.load_model\('x\.pt'\) failed inside the module"):
        ssl_bench.create_model("hear", **{"encoder.module": "broken_hear_load", "encoder.model_file": "x.pt"})
    with pytest.raises(ConfigError, match=r"^encoder.module=broken_hear_import: importing it failed inside the "
                                          r"module: AttributeError: .*no_such_function.*broken_hear_import\.py:2\)"):
        ssl_bench.create_model("hear", **{"encoder.module": "broken_hear_import"})
    rc = main(["run", "-m", "hear", "--set", "encoder.module=broken_hear_load", "-t", "synthetic",
               "--splits", "fold1", "--protocols", "linear", "--results", str(tmp_path / "r"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("ssl-bench: error: broken_hear_load.load_model() failed") and err.count("\n") == 1
    for name in ("broken_hear_load", "broken_hear_import"):
        sys.modules.pop(name, None)

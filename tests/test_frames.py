"""Frame-level embeddings (``SSLModel.frames``, ``ssl_bench.frames.clip_frames``) for every model
family: shapes, timestamps worked out from each family's geometry, per-layer output, the hop
option (interpolate, overlap) and the HEAR export, which must give the model API's frames."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

import ssl_bench
from ssl_bench.components import FREQ_MAJOR, FrameTiming
from ssl_bench.config import ConfigError
from ssl_bench.frames import NATIVE, clip_frames, frame_timing

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000
STATS = {"frontend.mean": -6.0, "frontend.std": 4.0}
#: model -> (settings of a 1 s window, time columns of it, samples between columns, centre sample of column 0)
FAMILIES = {
    # 16-frame patches of 10 ms Kaldi frames (25 ms long): column t is samples 2560 t .. 2560 t + 2799
    "audiomae": ({"frontend.num_frames": 128, **STATS}, 8, 2560, 1399.5),
    "eat": ({"frontend.num_frames": 128, **STATS}, 8, 2560, 1399.5),
    # 16-frame patches every 10 frames: samples 1600 t .. 1600 t + 2799
    "ast": ({"frontend.num_frames": 128, **STATS}, 12, 1600, 1399.5),
    "beats": ({"frontend.num_frames": 98}, 6, 2560, 1399.5),
    # the tiny conv stack (kernels 10, 3, 3, 2; strides 5, 2, 2, 2): frame j is samples 40 j .. 40 j + 59
    "hubert": ({"frontend.num_frames": SR}, 399, 40, 29.5),
    "wav2vec2": ({"frontend.num_frames": SR}, 399, 40, 29.5),
    "wavlm": ({"frontend.num_frames": SR}, 399, 40, 29.5),
}


def build(name: str, **extra):
    torch.manual_seed(0)
    settings, *_ = FAMILIES[name]
    return ssl_bench.create_model(name, preset="tiny", **{**settings, **extra}).eval()


def window(model, audio: torch.Tensor, length: int) -> torch.Tensor:
    """Normalised model input: raw features zero-padded (or cut) to ``length`` frames."""
    feats = model.frontend.compute(audio)
    feats = torch.nn.functional.pad(feats, (0, 0, 0, max(0, length - feats.shape[1])))[:, :length]
    return model.frontend.normalize(feats)


def reference_columns(model, spec: torch.Tensor) -> torch.Tensor:
    """Time columns written out by hand: patch tokens without the prefix, averaged over frequency."""
    enc = model.encoder
    out = enc(spec)
    n_t, n_f = enc.grid_for(spec.shape[1], spec.shape[2])
    tokens = out.tokens[:, out.num_prefix_tokens:]
    cells = [[tokens[:, (f * n_t + t) if enc.layout == FREQ_MAJOR else (t * n_f + f)] for f in range(n_f)]
             for t in range(n_t)]
    return torch.stack([torch.stack(row).mean(0) for row in cells], dim=1)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_frames_shapes_timestamps_and_layers_per_family(name):
    settings, n_time, step, first = FAMILIES[name]
    model = build(name)
    audio = 0.1 * torch.randn(2, SR)
    spec = window(model, audio, settings["frontend.num_frames"])
    with torch.no_grad():
        frames = model.frames(spec)
        layers = model.frames(spec, layers=True)
        columns = reference_columns(model, spec)
    dim = model.encoder.dim
    assert frames.embeddings.shape == (2, n_time, dim) and frames.method == NATIVE
    expected = (torch.arange(n_time, dtype=torch.float64) * step + first) / SR  # centre of each column's samples
    assert frames.timestamps.dtype == torch.float64 and torch.allclose(frames.timestamps, expected, atol=1e-9)
    assert frames.hop_s == pytest.approx(step / SR)
    assert torch.allclose(frames.embeddings, columns, atol=1e-6)
    assert layers.embeddings.shape == (2, model.encoder.depth + 2, n_time, dim)
    assert torch.allclose(layers.embeddings[:, -1], frames.embeddings, atol=1e-6)  # the last layer is the output
    if name in ("audiomae", "beats", "hubert"):  # mean pooling of every patch: the mean of the columns
        with torch.no_grad():
            assert torch.allclose(frames.embeddings.mean(1), model.embed(spec), atol=1e-5)


def test_the_frontends_declare_the_timing_they_would_measure():
    """Each frontend's ``frame_timing()`` equals what :func:`frame_timing` measures of its frames."""
    for name in ("audiomae", "beats", "hubert"):
        frontend = build(name).frontend

        class Measured:  # the same frames without the declaration
            sample_rate = frontend.sample_rate
            compute = staticmethod(frontend.compute)

        declared, measured = frame_timing(frontend), frame_timing(Measured())
        assert measured.hop_s == pytest.approx(declared.hop_s) and measured.first_s == pytest.approx(declared.first_s)
    assert frame_timing(build("audiomae").frontend) == FrameTiming(hop_s=0.01, first_s=199.5 / SR)


def test_long_clips_are_windowed_and_late_frames_dropped():
    model = build("audiomae")
    audio = 0.1 * torch.randn(2, int(2.5 * SR))  # 248 frames: two 128-frame windows, the second padded
    feats = model.frontend.compute(audio)
    with torch.no_grad():
        frames = clip_frames(model, feats, window=128, duration_s=2.5)
        first = model.frames(model.frontend.normalize(feats[:, :128]))
        second = model.frames(window(model, audio[:, 128 * 160:], 128))
    assert frames.embeddings.shape == (2, 16, 64)  # 16 columns centred inside 2.5 s (87.5 ... 2487.5 ms)
    assert torch.allclose(frames.timestamps[:8], first.timestamps)
    assert torch.allclose(frames.timestamps[8:], first.timestamps + 1.28)
    assert torch.allclose(frames.embeddings[:, :8], first.embeddings, atol=1e-6)
    assert torch.allclose(frames.embeddings[:, 8:], second.embeddings[:, :8], atol=1e-5)
    with torch.no_grad():
        layers = clip_frames(model, feats, window=128, duration_s=2.5, layers=True)
    assert layers.embeddings.shape == (2, 4, 16, 64)
    assert torch.allclose(layers.embeddings[:, -1], frames.embeddings, atol=1e-6)
    with torch.no_grad():  # clips shorter than a column still get one frame
        short = clip_frames(model, model.frontend.compute(torch.zeros(1, 400)), window=128, duration_s=400 / SR)
    assert short.embeddings.shape == (1, 1, 64)


def test_hop_interpolate_and_overlap():
    model = build("audiomae")
    audio = 0.1 * torch.randn(1, 2 * SR)
    feats = model.frontend.compute(audio)
    with torch.no_grad():
        native = clip_frames(model, feats, window=128, duration_s=2.0)
        fine = clip_frames(model, feats, window=128, duration_s=2.0, hop_s=0.04)
        overlap = clip_frames(model, feats, window=128, duration_s=2.0, hop_s=0.04, method="overlap")
    # interpolate: frames centred at 20, 60, ..., 1980 ms, linear between the column centres
    assert fine.method == "interpolate" and fine.hop_s == 0.04
    assert torch.allclose(fine.timestamps, (torch.arange(50, dtype=torch.float64) + 0.5) * 0.04)
    t, c, e = fine.timestamps, native.timestamps, native.embeddings
    k = int(torch.searchsorted(c, t[10]))  # 420 ms lies between columns k - 1 and k
    w = float((t[10] - c[k - 1]) / (c[k] - c[k - 1]))
    assert torch.allclose(fine.embeddings[0, 10], (1 - w) * e[0, k - 1] + w * e[0, k], atol=1e-6)
    assert torch.allclose(fine.embeddings[0, 0], e[0, 0])  # before the first centre: held
    # overlap: every 4-frame shift of the input gives real columns, 40 ms apart
    assert overlap.method == "overlap"
    assert torch.allclose(overlap.timestamps.diff(), torch.full((overlap.timestamps.shape[0] - 1,), 0.04,
                                                                dtype=torch.float64))
    assert torch.allclose(overlap.timestamps[0], native.timestamps[0])
    assert torch.allclose(overlap.embeddings[:, ::4][:, :e.shape[1]], e, atol=1e-6)  # shift 0: the columns
    with torch.no_grad():  # shift 8 frames: the columns of the input 80 ms later
        shifted = model.frames(model.frontend.normalize(feats[:, 8:8 + 128]))
    assert torch.allclose(overlap.embeddings[:, 2:32:4], shifted.embeddings, atol=1e-5)
    assert torch.allclose(overlap.timestamps[2:32:4], shifted.timestamps + 0.08)
    with pytest.raises(ConfigError, match="divide the encoder's column stride of 160 ms; choose one of 10, 20, 40"):
        clip_frames(model, feats, window=128, hop_s=0.03, method="overlap")
    with pytest.raises(ConfigError, match="not a whole number of the frontend's 10 ms frames"):
        clip_frames(model, feats, window=128, hop_s=0.045, method="overlap")
    with pytest.raises(ConfigError, match="choose one of interpolate, overlap"):
        clip_frames(model, feats, window=128, hop_s=0.04, method="nearest")


TOY_HEAR = '''
import torch


class Toy(torch.nn.Module):
    sample_rate = 16000
    scene_embedding_size = 3
    timestamp_embedding_size = 3

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(1, 3)


def load_model(model_file_path=""):
    model = Toy()
    model.load_state_dict(torch.load(model_file_path, weights_only=True))
    return model


def get_timestamp_embeddings(audio, model):
    frames = torch.nn.functional.pad(audio, (0, 400)).unfold(1, 400, 160)  # 25 ms every 10 ms
    emb = model.proj(frames.square().mean(-1, keepdim=True))
    return emb, (torch.arange(emb.shape[1]) * 10.0 + 12.5).expand(audio.shape[0], -1)


def get_scene_embeddings(audio, model):
    return get_timestamp_embeddings(audio, model)[0].mean(1)
'''


def test_a_hear_module_gives_its_timestamp_embeddings(tmp_path, monkeypatch):
    (tmp_path / "toy_frames_hear_module.py").write_text(TOY_HEAR)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        toy = importlib.import_module("toy_frames_hear_module")
        torch.save(toy.Toy().state_dict(), tmp_path / "toy.pt")
        model = ssl_bench.create_model("hear", checkpoint=tmp_path / "toy.pt",
                                       **{"encoder.module": "toy_frames_hear_module", "frontend.num_frames": SR})
        audio = 0.1 * torch.randn(2, SR)
        with torch.no_grad():
            frames = clip_frames(model, model.frontend.compute(audio), window=SR, duration_s=1.0)
            emb, ts = toy.get_timestamp_embeddings(audio, model.encoder.model)
        keep = frames.timestamps.shape[0]
        assert torch.allclose(frames.embeddings, emb[:, :keep]) and keep == int((ts[0] < 1000).sum())
        assert torch.allclose(frames.timestamps * 1000, ts[0, :keep].double())
        assert frames.hop_s == pytest.approx(0.01)  # the module's 10 ms, not the one token a clip of its scene API
        with pytest.raises(ConfigError, match="makes its own frames"):
            clip_frames(model, model.frontend.compute(audio), window=SR, hop_s=0.005, method="overlap")
        with pytest.raises(ConfigError, match="no per-layer timestamp embeddings"):
            model.frames(model.frontend.normalize(model.frontend.compute(audio)), layers=True)
    finally:
        sys.modules.pop("toy_frames_hear_module", None)


def test_export_hear_timestamps_are_the_model_apis(tmp_path):
    """``get_timestamp_embeddings`` of an exported module is ``clip_frames`` of the model, with and
    without a finer hop."""
    from ssl_bench.plugins.hear import export_hear, load_exported

    from ssl_bench.checkpoint import save_model

    model = build("audiomae")
    save_model(model, tmp_path / "tiny.pt")
    audio = 0.1 * torch.randn(2, int(1.7 * SR))
    feats = model.frontend.compute(audio)
    for hop_ms, method in ((None, "interpolate"), (40.0, "interpolate"), (40.0, "overlap")):
        out = tmp_path / f"pkg-{hop_ms}-{method}"
        pkg = export_hear(str(tmp_path / "tiny.pt"), out, name="frames_export_check", hop_ms=hop_ms, hop_method=method)
        assert f"HOP_METHOD = {method!r}" in (pkg / "__init__.py").read_text()
        hear = load_exported(pkg / "model.pt", hop_s=None if hop_ms is None else hop_ms / 1000, hop_method=method)
        emb, ts = hear.timestamp_embeddings(audio)
        with torch.no_grad():
            api = clip_frames(model, feats, window=128, duration_s=1.7,
                              hop_s=None if hop_ms is None else hop_ms / 1000, method=method)
        assert torch.allclose(emb, api.embeddings, atol=1e-5)
        assert torch.allclose(ts[0].double(), api.timestamps * 1000, atol=1e-3)
        assert hear.hop_ms == pytest.approx(160.0 if hop_ms is None else hop_ms)
    with pytest.raises(ConfigError, match="divide the encoder's column stride"):
        export_hear(str(tmp_path / "tiny.pt"), tmp_path / "bad", hop_ms=30.0, hop_method="overlap")
    assert not (tmp_path / "bad").exists()

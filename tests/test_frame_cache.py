"""The frame embedding cache: frame-level embeddings of a split's clips extracted once, keyed by
everything that changes them (weights, hop, method, layers, storage type), checked when read."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import ssl_bench
from ssl_bench.components import Clip
from ssl_bench.features import extract
from ssl_bench.files import CacheWarning
from ssl_bench.frames import clip_frames
from ssl_bench.protocols.data import SplitData
from ssl_bench.protocols.embeddings import extract_frame_embeddings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("frame-cache")
    rng = np.random.default_rng(0)
    clips = []
    for i in range(6):
        path = root / f"clip{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(SR)).astype(np.float32), SR)
        clips.append(Clip(path=path, labels=(), key=path.name))
    torch.manual_seed(0)
    model = ssl_bench.create_model("audiomae", preset="tiny", **{"frontend.num_frames": 128, "frontend.mean": -6.0,
                                                                 "frontend.std": 4.0}).eval()
    feats = extract(clips, model.frontend, clip_seconds=1.0, cache_dir=None)
    data = SplitData(feats, np.arange(3), np.array([3]), np.array([4, 5]), np.zeros(6), 1, True, [], 128,
                     name="fold1", clip_seconds=1.0)
    return model, data


def test_frames_are_extracted_once_and_served_from_the_cache(split, tmp_path):
    model, data = split
    idx = np.arange(6)
    first = extract_frame_embeddings(model, data, idx, batch_size=4, device="cpu", cache_dir=tmp_path, amp=False)
    again = extract_frame_embeddings(model, data, idx, batch_size=4, device="cpu", cache_dir=tmp_path, amp=False)
    assert not first.from_cache and again.from_cache and len(again) == 6
    assert first.values.dtype == np.float16 and first.method == "columns" and first.hop_s == pytest.approx(0.16)
    assert np.array_equal(np.asarray(again.values), first.values) and np.array_equal(again.offsets, first.offsets)
    with torch.no_grad():
        ref = clip_frames(model, torch.stack([data.features[i] for i in idx]), window=128, duration_s=1.0)
    for i in range(6):
        values, stamps = again.clip(i)
        assert values.shape == (6, 64) and np.allclose(stamps, ref.timestamps.numpy())
        assert np.allclose(values.astype(np.float32), ref.embeddings[i].numpy(), atol=2e-3)  # float16 storage
    part = again.select([4, 1])
    assert len(part) == 2 and np.array_equal(part.clip(0)[0], again.clip(4)[0])


def test_every_setting_keys_the_cache(split, tmp_path):
    model, data = split
    idx = np.arange(6)
    kw = {"batch_size": 8, "device": "cpu", "cache_dir": tmp_path}
    extract_frame_embeddings(model, data, idx, **kw)
    for other in ({"dtype": "float32"}, {"hop_s": 0.04}, {"hop_s": 0.04, "method": "overlap"}):
        got = extract_frame_embeddings(model, data, idx, **kw, **other)
        assert not got.from_cache, other
    fine = extract_frame_embeddings(model, data, idx, **kw, hop_s=0.04, method="overlap")
    assert fine.from_cache and fine.method == "overlap" and fine.clip(0)[0].shape == (23, 64)  # 87.5, 127.5, ..., 967.5 ms
    assert extract_frame_embeddings(model, data, idx, **kw, dtype="float32").values.dtype == np.float32
    changed = ssl_bench.create_model("audiomae", preset="tiny", **{"frontend.num_frames": 128, "frontend.mean": -6.0,
                                                                   "frontend.std": 4.0}).eval()
    with torch.no_grad():
        changed.encoder.blocks[0].mlp.fc1.bias.add_(0.1)  # other weights: another entry
    assert not extract_frame_embeddings(changed, data, idx, **kw).from_cache


def test_a_per_layer_entry_serves_the_last_layer(split, tmp_path):
    model, data = split
    idx = np.arange(6)
    layers = extract_frame_embeddings(model, data, idx, batch_size=8, device="cpu", cache_dir=tmp_path, layers=True)
    assert layers.values.shape == (36, 4, 64)
    last = extract_frame_embeddings(model, data, idx, batch_size=8, device="cpu", cache_dir=tmp_path)
    assert last.from_cache and np.array_equal(last.values, np.asarray(layers.values[:, -1]))


def test_a_damaged_entry_is_computed_again(split, tmp_path):
    model, data = split
    idx = np.arange(6)
    first = extract_frame_embeddings(model, data, idx, batch_size=8, device="cpu", cache_dir=tmp_path)
    values = next(Path(tmp_path).glob("*.values.npy"))
    values.write_bytes(values.read_bytes()[:-64])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = extract_frame_embeddings(model, data, idx, batch_size=8, device="cpu", cache_dir=tmp_path)
    assert not again.from_cache and np.array_equal(again.values, first.values)
    assert any(issubclass(w.category, CacheWarning) and "frame embedding cache" in str(w.message) for w in caught)
    assert extract_frame_embeddings(model, data, idx, batch_size=8, device="cpu", cache_dir=tmp_path).from_cache


def test_protocol_context_serves_the_parts(split, tmp_path):
    from ssl_bench.protocols.base import ProtocolContext

    model, data = split
    ctx = ProtocolContext(name="events", model=model, init="random", data=data, config={"amp": False}, section=None,
                          device=torch.device("cpu"), cache_dir=tmp_path, state_dir=tmp_path / "state")
    parts = ctx.frame_embeddings(hop_s=0.04)
    assert [len(parts[p]) for p in ("train", "valid", "test")] == [3, 1, 2]
    assert parts["test"].clip(1)[0].shape == (25, 64) and parts["test"].method == "interpolate"
    assert ctx.frame_embeddings(hop_s=0.04)["train"].values.shape == parts["train"].values.shape
    assert len(list((tmp_path / "frames").glob("*.json"))) == 1  # one extraction for both calls

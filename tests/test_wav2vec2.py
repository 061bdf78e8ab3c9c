"""wav2vec2 / HuBERT / WavLM on torchaudio.models, tiny configurations: torchaudio's key names and
outputs, every layer, padding masks, weights from torchaudio files and Hugging Face directories,
``torchaudio:BUNDLE`` offline, and rows that name the weights by content."""

from __future__ import annotations

import json

import pytest
import torch
import torchaudio

import ssl_bench
from ssl_bench.config import ConfigError

SAMPLES = 8000  # 0.5 s at 16 kHz
TINY = {"frontend.num_frames": SAMPLES}


def tiny(name: str, **extra):
    torch.manual_seed(0)
    return ssl_bench.create_model(name, preset="tiny", **{**TINY, **extra}).eval()


def reference(model) -> torch.nn.Module:
    """torchaudio's own model with the same architecture and weights."""
    build = getattr(torchaudio.models, model.encoder.builder)
    ref = build(**model.encoder.builder_arguments()).eval()
    ref.load_state_dict(model.encoder.state_dict(), strict=True)
    return ref


@pytest.mark.parametrize("name", ["wav2vec2", "hubert", "wavlm"])
def test_same_keys_and_outputs_as_torchaudio(name):
    model = tiny(name)
    ref = reference(model)
    assert list(model.encoder.state_dict()) == list(ref.state_dict())  # torchaudio's names, one to one
    wave = 0.1 * torch.randn(2, SAMPLES)
    spec = model.frontend.normalize(model.frontend.compute(wave))
    assert spec.shape == (2, SAMPLES, 1)
    with torch.no_grad():
        out = model.encoder(spec, hidden_states=True)
        expected, _ = ref(wave)
        layers, _ = ref.extract_features(wave)
    assert torch.equal(out.tokens, expected)
    assert len(out.hidden_states) == model.encoder.depth + 1
    for ours, theirs in zip(out.hidden_states[1:], layers):
        assert torch.equal(ours, theirs)
    assert out.tokens.shape[1] == model.encoder.grid_for(SAMPLES, 1)[0]
    emb = model.embed(spec, layers=True)
    assert emb.shape == (2, model.encoder.depth + 2, 64)
    assert torch.allclose(emb[:, -1], out.tokens.mean(1), atol=1e-6)


@pytest.mark.parametrize("name", ["wav2vec2", "wavlm"])
def test_padding_mask_keeps_padding_out(name):
    # layer-norm feature extractor (the large models'): a padded clip embeds as the clip alone.
    # (The base models' group norm over time sees the padding, in torchaudio as in fairseq.)
    model = tiny(name, **{"encoder.extractor_mode": "layer_norm"})
    wave = 0.1 * torch.randn(2, SAMPLES)
    wave[1, 5000:] = 0
    with torch.no_grad():
        out = model.encoder(wave[..., None], lengths=torch.tensor([SAMPLES, 5000]))
        padded = model.embed(wave[..., None], lengths=torch.tensor([SAMPLES, 5000]))
        alone = model.embed(wave[1:, :5000, None])
    assert out.padding_mask.shape == out.tokens.shape[:2]
    assert not out.padding_mask[0].any() and out.padding_mask[1].any()
    assert int((~out.padding_mask[1]).sum()) == model.encoder.grid_for(5000, 1)[0]
    assert torch.allclose(padded[1], alone[0], atol=1e-5)


def test_finetuning_step_and_layer_ids():
    from ssl_bench.train.optim import layer_decay_fn

    model = tiny("hubert").train()
    model.set_head(3)
    wave = 0.1 * torch.randn(2, SAMPLES, 1)
    loss = torch.nn.functional.cross_entropy(model.classify(wave), torch.tensor([0, 2]))
    loss.backward()
    assert model.encoder.encoder.transformer.layers[1].feed_forward.output_dense.weight.grad is not None
    enc = model.encoder
    assert enc.layer_id("feature_extractor.conv_layers.0.conv.weight") == 0
    assert enc.layer_id("encoder.transformer.layers.1.attention.k_proj.weight") == 2
    assert enc.layer_id("encoder.transformer.layer_norm.weight") == enc.depth + 1
    layer_of, top = layer_decay_fn(model)
    assert top == enc.depth + 1
    assert {layer_of(n) for n, _ in model.named_parameters()} == set(range(enc.depth + 2))


def test_random_init_is_random_and_dry_run_builds():
    a, b = tiny("hubert"), ssl_bench.create_model("hubert", preset="tiny", **TINY)
    torch.manual_seed(1)
    c = ssl_bench.create_model("hubert", preset="tiny", **TINY)
    key = "encoder.encoder.transformer.layers.0.attention.k_proj.weight"
    assert torch.equal(a.state_dict()[key], tiny("hubert").state_dict()[key])  # seeded
    assert not torch.equal(b.state_dict()[key], c.state_dict()[key])
    from ssl_bench.config import resolve
    from ssl_bench.model import check_config

    assert check_config(resolve("wavlm", preset="tiny", task=None, overrides=TINY)) > 10_000
    assert check_config(resolve("wav2vec2", preset="base", task=None, overrides=TINY)) > 90_000_000


def test_torchaudio_state_dict_loads_and_rows_name_it(tmp_path):
    source = tiny("hubert")
    ref = reference(source)
    torch.save(ref.state_dict(), tmp_path / "my_hubert.pth")  # saved by torchaudio, our code not involved
    loaded = ssl_bench.create_model("hubert", checkpoint=tmp_path / "my_hubert.pth",
                                    **{**TINY, "encoder.heads": 4}).eval()  # heads are not in the shapes
    for k, v in ref.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[k], v), k
    assert loaded.encoder.conv_layers == source.encoder.conv_layers and loaded.encoder.depth == 2
    # the run records the file by content, never as random
    from ssl_bench.config import resolve
    from ssl_bench.provenance import file_sha256
    from ssl_bench.encoders import EncoderSource
    from ssl_bench.registry import get_registry

    config = resolve("hubert", preset="tiny", task="synthetic", overrides=TINY)
    source = EncoderSource(config, get_registry(), tmp_path / "my_hubert.pth", tmp_path / "res" / ".cache")
    assert source.loaded.init == "my_hubert"
    assert source.loaded.init_id == file_sha256(tmp_path / "my_hubert.pth")[:12]


FAIRSEQ_NAMES = [  # torchaudio name -> fairseq name (the inverse of torchaudio's importer)
    (r"^feature_extractor\.conv_layers\.0\.layer_norm\.", "feature_extractor.conv_layers.0.2."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"^encoder\.feature_projection\.projection\.", "post_extract_proj."),
    (r"^encoder\.feature_projection\.layer_norm\.", "layer_norm."),
    (r"^encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
    (r"^encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
    (r"^encoder\.transformer\.pos_conv_embed\.conv\.bias", "encoder.pos_conv.0.bias"),
    (r"^encoder\.transformer\.layer_norm\.", "encoder.layer_norm."),
    (r"^encoder\.transformer\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"^encoder\.transformer\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"^encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"^encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"^encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
]


def test_fairseq_checkpoint(tmp_path):
    """A checkpoint in fairseq's layout (args + model, quantizer and mask embedding included) loads
    through torchaudio's fairseq key mapping."""
    import argparse
    import re

    source = tiny("hubert")
    fairseq = {}
    for k, v in reference(source).state_dict().items():
        for pattern, repl in FAIRSEQ_NAMES:
            if re.match(pattern, k):
                fairseq[re.sub(pattern, repl, k)] = v
                break
        else:
            raise AssertionError(f"no fairseq name for {k}")
    fairseq["mask_emb"] = torch.zeros(64)
    fairseq["final_proj.weight"] = torch.zeros(8, 64)
    torch.save({"args": argparse.Namespace(arch="hubert"), "model": fairseq}, tmp_path / "hubert_tiny_fairseq.pt")
    loaded = ssl_bench.create_model("hubert", checkpoint=tmp_path / "hubert_tiny_fairseq.pt",
                                    **{**TINY, "encoder.heads": 4}).eval()
    wave = 0.1 * torch.randn(1, SAMPLES, 1)
    assert torch.equal(loaded.embed(wave), source.embed(wave))


def test_huggingface_directory(tmp_path):
    source = tiny("wav2vec2")
    state = reference(source).state_dict()
    hf = {}
    for k, v in state.items():  # torchaudio names -> transformers' Wav2Vec2Model names
        if k.startswith("encoder.feature_projection."):
            hf["wav2vec2." + k[len("encoder."):]] = v
        elif k.startswith("encoder.transformer."):
            hf["wav2vec2.encoder." + k[len("encoder.transformer."):]] = v
        else:
            hf["wav2vec2." + k] = v
    conv = source.encoder.conv_layers
    c = source.encoder.cfg
    config = {"model_type": "wav2vec2", "architectures": ["Wav2Vec2Model"], "feat_extract_norm": "group",
              "conv_dim": [x[0] for x in conv], "conv_kernel": [x[1] for x in conv], "conv_stride": [x[2] for x in conv],
              "conv_bias": False, "hidden_size": 64, "feat_proj_dropout": 0.1, "num_conv_pos_embeddings": c.pos_conv_kernel,
              "num_conv_pos_embedding_groups": c.pos_conv_groups, "num_hidden_layers": 2, "num_attention_heads": 4,
              "attention_dropout": 0.1, "intermediate_size": 128, "activation_dropout": 0.0, "hidden_dropout": 0.1,
              "do_stable_layer_norm": False, "layerdrop": 0.05}
    d = tmp_path / "wav2vec2-tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    torch.save(hf, d / "pytorch_model.bin")
    loaded = ssl_bench.create_model("wav2vec2", checkpoint=d, **TINY).eval()
    wave = 0.1 * torch.randn(1, SAMPLES, 1)
    assert torch.equal(loaded.embed(wave), source.embed(wave))


def test_torchaudio_bundle_offline(tmp_path, monkeypatch):
    from ssl_bench.sources import resolve_checkpoint, source_name

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SSL_BENCH_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        resolve_checkpoint("torchaudio:HUBERT_BASE")
    msg = str(err.value)
    assert "\n" not in msg and "hubert_fairseq_base_ls960.pth" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "hubert_fairseq_base_ls960.pth") in msg
    assert "https://download.pytorch.org/torchaudio/models/hubert_fairseq_base_ls960.pth" in msg
    with pytest.raises(ConfigError, match="no such bundle"):
        resolve_checkpoint("torchaudio:NOT_A_BUNDLE")
    # a file in the hub cache resolves, is named by its bundle, and dictates the bundle's architecture
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "hubert_fairseq_base_ls960.pth"
    cached.parent.mkdir(parents=True)
    torch.save({}, cached)
    assert resolve_checkpoint("torchaudio:HUBERT_BASE") == cached
    assert source_name(cached) == "torchaudio:HUBERT_BASE"
    from ssl_bench.model import checkpoint_settings

    settings = checkpoint_settings("hubert", cached)
    assert settings["encoder.dim"] == 768 and settings["encoder.depth"] == 12 and settings["encoder.heads"] == 12
    assert settings["encoder.layer_drop"] == 0.05 and settings["frontend.normalize"] is False
    wavlm = cached.parent / "wavlm_base.pth"  # WavLM weights bring WavLM's encoder, whatever the model
    torch.save({}, wavlm)
    settings = checkpoint_settings("hubert", wavlm)
    assert settings["encoder"] == "wavlm" and settings["encoder.num_buckets"] == 320


def test_errors_name_the_file(tmp_path):
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pt")
    from ssl_bench.errors import UserError

    with pytest.raises(UserError, match="other.pt: not a torchaudio wav2vec2"):
        ssl_bench.create_model("wav2vec2", checkpoint=tmp_path / "other.pt", **TINY)
    with pytest.raises(ConfigError, match="reads a waveform"):
        ssl_bench.create_model("wav2vec2", preset="tiny", **{"frontend": "kaldi-fbank", "frontend.num_frames": 128})


def test_run_from_a_torchaudio_file_has_its_rows_and_a_random_baseline(tmp_path):
    """``ssl-bench run -m hubert --checkpoint FILE``: rows named by the file's content, plus the
    init=random baseline of the same architecture (its weights are not the file's)."""
    from taskfixtures import make_esc50

    from ssl_bench import results
    from ssl_bench.cli import main
    from ssl_bench.provenance import file_sha256

    torch.manual_seed(5)  # not the run's seed: the file's weights are not the run's random init
    ref = reference(ssl_bench.create_model("hubert", preset="tiny", **TINY))
    torch.save(ref.state_dict(), tmp_path / "hubert_tiny.pth")
    data = make_esc50(tmp_path / "data", num_classes=2, per_fold=2, seconds=0.5, sr=16000)
    code = main(["run", "-m", "hubert", "-p", "tiny", "-t", "esc50", "--data-dir", str(data), "--splits", "fold1",
                 "--checkpoint", str(tmp_path / "hubert_tiny.pth"), "--set", "encoder.heads=4",
                 "--protocols", "linear", "--results", str(tmp_path / "res"), "-q"])
    assert code == 0
    df = results.load(tmp_path / "res")
    assert set(df["init"]) == {"hubert_tiny", "random"}
    assert set(df["init_id"]) == {file_sha256(tmp_path / "hubert_tiny.pth")[:12], "random"}
    log = next((tmp_path / "res").glob("*/log.txt")).read_text()
    assert "torchaudio checkpoint" in log and "missing" not in log

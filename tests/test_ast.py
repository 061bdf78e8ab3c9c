"""AST plugin: structure, token order, position tables, checkpoint import, HF equivalence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ssl_bench
from ssl_bench.checkpoint import CheckpointError, atomic_save, save_model
from ssl_bench.components import FREQ_MAJOR, BuildContext
from ssl_bench.config import resolve
from ssl_bench.model import load_checkpoint
from ssl_bench.plugins.ast.checkpoints import ours_to_official
from ssl_bench.plugins.ast.encoder import ASTEncoder, adapt_pos_embed
from ssl_bench.registry import get_registry

TINY = dict(dim=32, depth=2, heads=4)


def make_encoder(frames=64, bins=48, **kw) -> ASTEncoder:
    cfg = ASTEncoder.Config(**{**TINY, **kw})
    return ASTEncoder(cfg, BuildContext(num_frames=frames, num_bins=bins))


def tiny_model(frames=64, bins=48, **overrides):
    """The registered ``ast`` model at tiny sizes (frontend sized by ``frames``/``bins``)."""
    return ssl_bench.create_model("ast", preset="tiny", **{
        "encoder.dim": 32, "encoder.heads": 4, "frontend.num_frames": frames, "frontend.num_bins": bins,
        **overrides,
    })


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Non-trivial weights everywhere (LayerNorms included), so a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_norm_scale = p.ndim == 1 and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if is_norm_scale else 0.0))


# --------------------------------------------------------------------------- a reference forward
def reference_pooled(sd: dict[str, torch.Tensor], spec: torch.Tensor, heads: int, fstride: int, tstride: int,
                     eps: float) -> torch.Tensor:
    """The published AST forward, written out from its structure in official key layout
    (``v.*`` without ``module.``): conv over (B, 1, F, T), cls + dist, + pos, pre-norm blocks
    with explicit softmax attention and exact GELU, final norm, mean of the two tokens."""
    x = spec.transpose(1, 2).unsqueeze(1)
    x = F.conv2d(x, sd["v.patch_embed.proj.weight"], sd["v.patch_embed.proj.bias"], stride=(fstride, tstride))
    x = x.flatten(2).transpose(1, 2)
    B, _, D = x.shape
    x = torch.cat([sd["v.cls_token"].expand(B, -1, -1), sd["v.dist_token"].expand(B, -1, -1), x], 1)
    x = x + sd["v.pos_embed"]
    depth = len({k.split(".")[2] for k in sd if k.startswith("v.blocks.")})
    for i in range(depth):
        p = f"v.blocks.{i}."
        h = F.layer_norm(x, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        qkv = h @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
        q, k, v = qkv.reshape(B, -1, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // heads), dim=-1)
        h = (att @ v).transpose(1, 2).reshape(B, -1, D)
        x = x + h @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = F.layer_norm(x, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        h = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    x = F.layer_norm(x, (D,), sd["v.norm.weight"], sd["v.norm.bias"], eps)
    return (x[:, 0] + x[:, 1]) / 2


def official_state(dim=32, depth=2, frames=64, bins=48, fstride=10, tstride=10, classes=5, seed=0):
    """A hand-built official AST state dict (DataParallel keys, ImageNet heads included)."""
    g = torch.Generator().manual_seed(seed)
    nf, nt = (bins - 16) // fstride + 1, (frames - 16) // tstride + 1

    def r(*shape, scale=0.2, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    sd = {
        "module.v.cls_token": r(1, 1, dim), "module.v.dist_token": r(1, 1, dim),
        "module.v.pos_embed": r(1, 2 + nf * nt, dim),
        "module.v.patch_embed.proj.weight": r(dim, 1, 16, 16, scale=0.05), "module.v.patch_embed.proj.bias": r(dim),
        "module.v.norm.weight": r(dim, offset=1.0), "module.v.norm.bias": r(dim),
        "module.v.head.weight": r(1000, dim), "module.v.head.bias": r(1000),
        "module.v.head_dist.weight": r(1000, dim), "module.v.head_dist.bias": r(1000),
        "module.mlp_head.0.weight": r(dim, offset=1.0), "module.mlp_head.0.bias": r(dim),
        "module.mlp_head.1.weight": r(classes, dim), "module.mlp_head.1.bias": r(classes),
    }
    for i in range(depth):
        p = f"module.v.blocks.{i}."
        sd.update({
            p + "norm1.weight": r(dim, offset=1.0), p + "norm1.bias": r(dim),
            p + "attn.qkv.weight": r(3 * dim, dim), p + "attn.qkv.bias": r(3 * dim),
            p + "attn.proj.weight": r(dim, dim), p + "attn.proj.bias": r(dim),
            p + "norm2.weight": r(dim, offset=1.0), p + "norm2.bias": r(dim),
            p + "mlp.fc1.weight": r(4 * dim, dim), p + "mlp.fc1.bias": r(4 * dim),
            p + "mlp.fc2.weight": r(dim, 4 * dim), p + "mlp.fc2.bias": r(dim),
        })
    return sd


def official_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors in Hugging Face's saved layout (separate q/k/v), written independently
    of the importer so the two layouts check each other."""
    P = "audio_spectrogram_transformer."
    out = {
        P + "embeddings.cls_token": sd["module.v.cls_token"],
        P + "embeddings.distillation_token": sd["module.v.dist_token"],
        P + "embeddings.position_embeddings": sd["module.v.pos_embed"],
        P + "embeddings.patch_embeddings.projection.weight": sd["module.v.patch_embed.proj.weight"],
        P + "embeddings.patch_embeddings.projection.bias": sd["module.v.patch_embed.proj.bias"],
        P + "layernorm.weight": sd["module.v.norm.weight"], P + "layernorm.bias": sd["module.v.norm.bias"],
        "classifier.layernorm.weight": sd["module.mlp_head.0.weight"],
        "classifier.layernorm.bias": sd["module.mlp_head.0.bias"],
        "classifier.dense.weight": sd["module.mlp_head.1.weight"],
        "classifier.dense.bias": sd["module.mlp_head.1.bias"],
    }
    depth = len({k.split(".")[3] for k in sd if k.startswith("module.v.blocks.")})
    for i in range(depth):
        s, h = f"module.v.blocks.{i}.", f"{P}encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[s + f"attn.qkv.{kind}"].chunk(3, dim=0)
            out[h + f"attention.attention.query.{kind}"] = q.clone()
            out[h + f"attention.attention.key.{kind}"] = k.clone()
            out[h + f"attention.attention.value.{kind}"] = v.clone()
            out[h + f"attention.output.dense.{kind}"] = sd[s + f"attn.proj.{kind}"]
            out[h + f"intermediate.dense.{kind}"] = sd[s + f"mlp.fc1.{kind}"]
            out[h + f"output.dense.{kind}"] = sd[s + f"mlp.fc2.{kind}"]
            out[h + f"layernorm_before.{kind}"] = sd[s + f"norm1.{kind}"]
            out[h + f"layernorm_after.{kind}"] = sd[s + f"norm2.{kind}"]
    return out


# --------------------------------------------------------------------------- registration, config
def test_registered_with_presets_and_recipes():
    reg = get_registry()
    assert reg.get("encoder", "ast").factory is ASTEncoder
    spec = reg.get("model", "ast").factory
    assert spec.components["frontend"] == "kaldi-fbank" and spec.components["encoder"] == "ast"
    assert spec.components.get("decoder") is None
    base = resolve("ast", preset="base")
    assert (base["encoder"]["dim"], base["encoder"]["depth"], base["encoder"]["heads"]) == (768, 12, 12)
    assert base["encoder"]["eps"] == 1e-6 and base["encoder"]["freq_stride"] == base["encoder"]["time_stride"] == 10
    assert base["pretrain"]["enabled"] is False and base["masker"] is None
    assert base["frontend"]["num_frames"] is None  # follows the task's clip length
    small = resolve("ast", preset="small")
    assert (small["encoder"]["dim"], small["encoder"]["heads"]) == (384, 6)
    esc = resolve("ast", task="esc50")
    assert esc["finetune"]["lr"] == 1e-5 and esc["finetune"]["epochs"] == 25 and esc["finetune"]["batch_size"] == 48
    assert (esc["finetune"]["specaug_freq"], esc["finetune"]["specaug_time"]) == (24, 96)
    assert esc["frontend"]["num_frames"] == 512 and esc["frontend"]["mean"] == pytest.approx(-6.6268077)
    spc = resolve("ast", task="speechcommands")
    assert spc["frontend"]["num_frames"] == 128 and spc["finetune"]["lr"] == 2.5e-4 and spc["finetune"]["mixup"] == 0.6
    assert "audioset" in spec.recipes
    assert "original" in spec.notes["provenance"] and "Adam" in spec.notes["deviations"]
    assert "decoder=global" in spec.notes["pretraining"]


def test_builds_and_fills_context():
    build = BuildContext(num_frames=1024, num_bins=128)
    enc = ASTEncoder(ASTEncoder.Config(**TINY), build)
    assert enc.grid == (101, 12) and enc.pos_embed.shape == (1, 2 + 1212, 32)
    assert (build.encoder_dim, build.grid, build.layout, build.patch_dim,
            build.num_prefix_tokens) == (32, (101, 12), FREQ_MAJOR, 256, 2)
    assert enc.grid_for(512, 128) == (50, 12) and enc.grid_for(128, 128) == (12, 12)
    assert [enc.layer_id(n) for n in ("cls_token", "encoder.pos_embed", "patch_embed.proj.weight",
                                      "blocks.0.attn.qkv.weight", "encoder.blocks.1.norm1.bias", "norm.weight")] \
        == [0, 0, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="at least 16 frames"):
        enc.grid_for(10, 128)


def test_token_order_is_frequency_major_and_patchify_matches_the_conv():
    enc = make_encoder(frames=64, bins=48, freq_stride=10, time_stride=12)
    n_time, n_freq = enc.grid
    assert (n_time, n_freq) == ((64 - 16) // 12 + 1, (48 - 16) // 10 + 1)
    spec = torch.randn(2, 64, 48)
    patches = enc.patchify(spec)
    assert patches.shape == (2, n_time * n_freq, 256)
    for f, t in [(0, 0), (1, 0), (0, 1), (n_freq - 1, n_time - 1), (2, 3)]:
        idx = f * n_time + t
        region = spec[:, t * 12:t * 12 + 16, f * 10:f * 10 + 16]  # [B, time, freq]
        torch.testing.assert_close(patches[:, idx], region.transpose(1, 2).reshape(2, -1))
    # the patch embedding is the conv kernel applied to exactly those values, in that order
    w = enc.patch_embed.proj.weight.reshape(enc.dim, -1)
    torch.testing.assert_close(enc.patch_embed(spec), patches @ w.T + enc.patch_embed.proj.bias, atol=1e-5, rtol=1e-5)
    # unpatchify inverts patchify where patches cover the input
    back = enc.unpatchify(patches, 64, 48)
    covered_t, covered_f = (n_time - 1) * 12 + 16, (n_freq - 1) * 10 + 16
    torch.testing.assert_close(back[:, :covered_t, :covered_f], spec[:, :covered_t, :covered_f])


# --------------------------------------------------------------------------- position tables
def _table(n_time: int, n_freq: int, dim: int = 3) -> torch.Tensor:
    """Patch rows encode (f, t) so crops can be read back; two prefix rows of -1 / -2."""
    f, t = torch.meshgrid(torch.arange(n_freq), torch.arange(n_time), indexing="ij")
    rows = torch.stack([f.flatten().float(), t.flatten().float(), torch.randn(n_freq * n_time)], dim=1)[:, :dim]
    prefix = torch.stack([torch.full((dim,), -1.0), torch.full((dim,), -2.0)])
    return torch.cat([prefix, rows]).unsqueeze(0)


def test_pos_embed_time_crop_is_centred_as_the_original():
    table = _table(101, 12)
    out = adapt_pos_embed(table, (101, 12), (50, 12))
    assert out.shape == (1, 2 + 600, 3)
    torch.testing.assert_close(out[:, :2], table[:, :2])
    grid = out[0, 2:].reshape(12, 50, 3)
    assert grid[:, :, 1].unique().tolist() == list(range(25, 75))  # columns 50 - 25 .. 50 + 25
    assert grid[:, 0, 0].tolist() == list(range(12))
    torch.testing.assert_close(grid, table[0, 2:].reshape(12, 101, 3)[:, 25:75])
    spc = adapt_pos_embed(table, (101, 12), (12, 12))[0, 2:].reshape(12, 12, 3)
    assert spc[0, :, 1].tolist() == list(range(44, 56))


def test_pos_embed_interpolates_longer_time_and_crops_frequency():
    table = _table(12, 24)
    out = adapt_pos_embed(table, (12, 24), (30, 12))
    assert out.shape == (1, 2 + 360, 3)
    grid = out[0, 2:].reshape(12, 30, 3)
    # frequency: rows 6..17 of 24 (centre crop 12 - 6)
    assert grid[:, 0, 0].tolist() == list(range(6, 18))
    src = table[0, 2:].reshape(24, 12, 3).permute(2, 0, 1).unsqueeze(0)
    expect = F.interpolate(src, size=(24, 30), mode="bilinear", align_corners=False)[:, :, 6:18]
    torch.testing.assert_close(grid, expect[0].permute(1, 2, 0))
    # bilinear along time keeps a linear ramp linear inside the table
    ramp = grid[0, :, 1]
    assert ramp[0] == 0 and ramp[-1] == 11 and bool((ramp[1:] >= ramp[:-1]).all())
    torch.testing.assert_close(out[:, :2], table[:, :2])
    # identity on the same grid; wrong sizes are errors
    assert adapt_pos_embed(table, (12, 24), (12, 24)) is table
    with pytest.raises(ValueError, match="patch rows"):
        adapt_pos_embed(table, (10, 24), (12, 12))


def test_forward_on_another_length_uses_the_adapted_table():
    enc = make_encoder(frames=1024, bins=128).eval()
    spec = torch.randn(1, 512, 128)
    pos = adapt_pos_embed(enc.pos_embed, (101, 12), (50, 12))
    with torch.no_grad():
        out = enc(spec)
        enc2 = make_encoder(frames=512, bins=128).eval()
        enc2.load_state_dict({**enc.state_dict(), "pos_embed": pos})
        torch.testing.assert_close(out.tokens, enc2(spec).tokens)
    assert out.tokens.shape == (1, 2 + 600, 32)


# --------------------------------------------------------------------------- equivalence
def test_official_and_hf_layouts_match_the_reference_forward(tmp_path, device):
    """Always runs: hand-built official keys vs the same tensors in HF layout vs the reference."""
    sd = official_state(frames=64, bins=48, fstride=10, tstride=10, classes=5)
    atomic_save(sd, tmp_path / "audioset_like.pth")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in official_to_hf(sd).items()}, str(tmp_path / "hf.safetensors"))

    spec = torch.randn(3, 64, 48)
    ref = reference_pooled({k[len("module."):]: v for k, v in sd.items()}, spec, heads=4, fstride=10,
                           tstride=10, eps=1e-6)
    outs = []
    for name, fmt in (("audioset_like.pth", "official AST"), ("hf.safetensors", "Hugging Face AST")):
        model = tiny_model(frames=64, bins=48, **{"encoder.eps": 1e-6})
        report = load_checkpoint(model, tmp_path / name)
        assert report.format == fmt and report.missing == [], str(report)
        if fmt == "official AST":
            assert sorted(report.unexpected) == sorted(
                ["v.head.weight", "v.head.bias", "v.head_dist.weight", "v.head_dist.bias"])
        else:
            assert report.unexpected == []
        model = model.to(device).eval()
        with torch.no_grad():
            pooled = model.embed(spec.to(device)).cpu()
            logits = model.head(pooled.to(device)).cpu()
        assert (pooled - ref).abs().max().item() < 1e-5
        ref_logits = F.layer_norm(ref, (32,), sd["module.mlp_head.0.weight"], sd["module.mlp_head.0.bias"],
                                  1e-5 if fmt == "official AST" else 1e-6)
        ref_logits = ref_logits @ sd["module.mlp_head.1.weight"].T + sd["module.mlp_head.1.bias"]
        assert (logits - ref_logits).abs().max().item() < 1e-4
        outs.append(pooled)
    assert (outs[0] - outs[1]).abs().max().item() < 1e-6


def test_hf_model_directory_equals_transformers_pooler_output(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ASTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_length=100, num_mel_bins=48, frequency_stride=10, time_stride=12, num_labels=7,
    )
    torch.manual_seed(0)
    hf = transformers.ASTForAudioClassification(cfg).eval()
    with torch.no_grad():  # HF zero-initialises tokens and positions: make every tensor count
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    hf.save_pretrained(tmp_path / "hf-ast")
    spec = torch.randn(2, 100, 48)
    with torch.no_grad():
        ref = hf.audio_spectrogram_transformer(spec).pooler_output
        ref_logits = hf(spec).logits

    # sizes, strides, length, bins and eps come from config.json, whatever the preset says
    model = ssl_bench.create_model("ast", preset="tiny", checkpoint=tmp_path / "hf-ast").eval()
    enc = model.encoder.cfg
    assert (enc.dim, enc.depth, enc.heads, enc.freq_stride, enc.time_stride, enc.eps) == (64, 2, 4, 10, 12, 1e-12)
    assert (model.frontend.cfg.num_frames, model.frontend.cfg.num_bins) == (100, 48)
    with torch.no_grad():
        pooled = model.embed(spec)
        logits = model.head(pooled)
    diff = (pooled - ref).abs().max().item()
    print(f"max |ours - HF pooler_output| = {diff:.3g}")
    assert diff < 1e-4
    assert (logits - ref_logits).abs().max().item() < 1e-4

    # transformers-5 in-memory names (q_proj/k_proj/v_proj, layers.N) in a bare .bin, and a
    # bare ASTModel (no prefix, no classifier) give the same encoder
    torch.save(hf.state_dict(), tmp_path / "v5_names.bin")
    torch.save(hf.audio_spectrogram_transformer.state_dict(), tmp_path / "astmodel.pth")
    for name in ("v5_names.bin", "astmodel.pth"):
        other = tiny_model(frames=100, bins=48, **{"encoder.dim": 64, "encoder.mlp_ratio": 2.0,
                                                         "encoder.time_stride": 12, "encoder.eps": 1e-12})
        report = load_checkpoint(other, tmp_path / name)
        assert not [k for k in report.missing if k.startswith("encoder.")], str(report)
        with torch.no_grad():
            assert (other.eval().embed(spec) - ref).abs().max().item() < 1e-4


# --------------------------------------------------------------------------- import details
def test_official_checkpoint_into_a_shorter_model_crops_positions(tmp_path):
    sd = official_state(dim=32, frames=1024, bins=128, classes=3)
    path = tmp_path / "audioset_10_10.pth"
    atomic_save(sd, path)
    model = tiny_model(frames=512, bins=128)
    load_checkpoint(model, path)
    table = sd["module.v.pos_embed"]
    expect = table[0, 2:].reshape(12, 101, 32)[:, 25:75].reshape(600, 32)
    torch.testing.assert_close(model.encoder.pos_embed[0, 2:], expect)
    torch.testing.assert_close(model.encoder.pos_embed[0, :2], table[0, :2])
    assert model.head is not None and model.head[1].out_features == 3 and model.head[0].eps == 1e-5
    # a model that already has a head for another task keeps it and reports the checkpoint's
    model = tiny_model(frames=512, bins=128)
    model.set_head(50)
    report = load_checkpoint(model, path)
    assert model.head[1].out_features == 50 and "head.1.weight" in report.unexpected


def test_sizes_are_read_from_official_weights(tmp_path):
    sd = official_state(dim=64, depth=3, frames=1024, bins=128)
    atomic_save({"model": sd}, tmp_path / "wrapped.pth")  # a {"model": ...} training checkpoint
    model = ssl_bench.create_model("ast", preset="tiny", checkpoint=tmp_path / "wrapped.pth",
                                   **{"frontend.num_frames": 128})
    assert (model.encoder.dim, model.encoder.depth, model.encoder.cfg.heads) == (64, 3, 1)
    assert model.encoder.grid == (12, 12)


def test_foreign_or_misshaped_checkpoints_fail_in_one_line(tmp_path):
    # an AudioMAE-style encoder (no v. prefix, time-major 16x16 non-overlapping)
    mae = {"cls_token": torch.zeros(1, 1, 32), "pos_embed": torch.zeros(1, 513, 32),
           "patch_embed.proj.weight": torch.zeros(32, 1, 16, 16), "decoder_embed.weight": torch.zeros(16, 32)}
    atomic_save({"model": mae}, tmp_path / "audiomae.pth")
    model = tiny_model()
    with pytest.raises(CheckpointError, match=r"audiomae\.pth: not an AST checkpoint.*cls_token"):
        load_checkpoint(model, tmp_path / "audiomae.pth")
    # right layout, wrong width: names the file and the key
    atomic_save(official_state(dim=64), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"wide\.pth: .*(pos_embed|patch_embed)"):
        load_checkpoint(tiny_model(), tmp_path / "wide.pth")
    # a position table that fits no grid of this model
    bad = official_state(dim=32)
    bad["module.v.pos_embed"] = torch.zeros(1, 2 + 7, 32)
    atomic_save(bad, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd\.pth: pos_embed has 7 patch rows"):
        load_checkpoint(tiny_model(), tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tiny_model(), tmp_path / "missing.pth")


def test_ssl_bench_checkpoint_round_trip_at_another_length(tmp_path):
    model = tiny_model(frames=128, bins=48)
    model.set_head(4)
    randomize(model.encoder)
    path = save_model(model, tmp_path / "ours.pt")
    spec = torch.randn(2, 128, 48)
    # the encoder settings come from the saved config even with another preset
    again = ssl_bench.create_model("ast", preset="base", checkpoint=path, **{"frontend.num_frames": 128})
    assert again.encoder.dim == 32 and again.head[1].out_features == 4
    with torch.no_grad():
        torch.testing.assert_close(again.eval().classify(spec), model.eval().classify(spec))
    # into a longer model: the table is interpolated along time, as the original does
    longer = tiny_model(frames=256, bins=48)
    load_checkpoint(longer, path)
    expect = adapt_pos_embed(model.encoder.pos_embed, model.encoder.grid, longer.encoder.grid)
    torch.testing.assert_close(longer.encoder.pos_embed, expect)
    # another model's ssl-bench checkpoint is refused
    other = dict(torch.load(path, weights_only=True))
    other["config"] = {**other["config"], "model": "audiomae", "encoder": {"name": "vit"}}
    atomic_save(other, tmp_path / "mae.pt")
    with pytest.raises(CheckpointError, match=r"mae\.pt: an ssl-bench checkpoint of model 'audiomae'"):
        load_checkpoint(tiny_model(frames=128, bins=48), tmp_path / "mae.pt")


def test_official_export_round_trip(tmp_path):
    model = tiny_model()
    model.set_head(2)
    randomize(model)
    atomic_save(ours_to_official(model.state_dict()), tmp_path / "exported.pth")
    again = tiny_model()
    report = load_checkpoint(again, tmp_path / "exported.pth")
    assert report.missing == [] and report.unexpected == []
    spec = torch.randn(1, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(again.eval().embed(spec), model.eval().embed(spec))


# --------------------------------------------------------------------------- masked encoding
def test_masked_forward_encodes_visible_tokens_only(device):
    enc = make_encoder(frames=64, bins=48).to(device).eval()
    B, L = 3, enc.grid[0] * enc.grid[1]
    spec = torch.randn(B, 64, 48, device=device)
    g = torch.Generator().manual_seed(0)
    keep = 7
    mask = torch.ones(B, L, dtype=torch.bool)
    for b in range(B):
        mask[b, torch.randperm(L, generator=g)[:keep]] = False
    mask = mask.to(device)
    with torch.no_grad():
        out = enc(spec, mask)
        assert out.tokens.shape == (B, 2 + keep, 32) and out.num_prefix_tokens == 2
        for b in range(B):
            assert out.ids_keep[b].tolist() == torch.nonzero(~mask[b]).flatten().tolist()
        # reference: embed all, pick the visible tokens by hand, run the same blocks
        x = enc.patch_embed(spec) + enc.pos_embed[:, 2:]
        x = torch.stack([x[b][~mask[b]] for b in range(B)])
        prefix = torch.cat([enc.cls_token, enc.dist_token], 1) + enc.pos_embed[:, :2]
        x = torch.cat([prefix.expand(B, -1, -1), x], 1)
        for blk in enc.blocks:
            x = blk(x)
        torch.testing.assert_close(out.tokens, enc.norm(x), atol=1e-5, rtol=1e-5)
        full = enc(spec)
        assert full.ids_keep is None and full.tokens.shape == (B, 2 + L, 32)
        torch.testing.assert_close(enc(spec, torch.zeros(B, L, dtype=torch.bool, device=device)).tokens, full.tokens)
        torch.testing.assert_close(enc.pool(full), (full.tokens[:, 0] + full.tokens[:, 1]) / 2)
    uneven = torch.zeros(B, L, dtype=torch.bool, device=device)
    uneven[0, 0] = True
    with pytest.raises(ValueError, match="same number"):
        enc(spec, uneven)
    with pytest.raises(ValueError, match="mask has shape"):
        enc(spec, torch.zeros(B, L + 1, dtype=torch.bool, device=device))


def test_masked_pretraining_with_registered_components(device):
    """An SSAST-like variant from registry names only: random masker, global decoder, masked MSE."""
    model = ssl_bench.create_model("ast", preset="tiny", masker="random", decoder="global", objective="masked-mse",
                                   **{"pretrain.enabled": True, "frontend.num_frames": 128, "masker.ratio": 0.75})
    assert model.config["pretrain"]["enabled"] is True
    model = model.to(device).train()
    spec = torch.randn(2, 128, 128, device=device)
    out = model.forward_pretrain(spec)
    L = 12 * 12
    assert out.pred.shape == (2, L, 256) and out.mask.shape == (2, L)
    assert int(out.mask.sum(1)[0]) == 108 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad is not None
    assert model.encoder.pos_embed.grad is not None


def test_waveform_to_logits_end_to_end(device):
    model = tiny_model(frames=128, bins=128, **{"frontend.mean": -6.8, "frontend.std": 5.6}).to(device)
    model.set_head(10)
    model.to(device)
    wave = torch.randn(2, 16000, device=device) * 0.1
    spec = model.frontend(wave, 16000)
    assert spec.shape == (2, 128, 128)
    logits = model.classify(spec)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None


def test_official_512_frame_checkpoint_keeps_its_grid_without_a_frame_count(tmp_path):
    """An official-layout AST fine-tuned at 512 frames (12 x 50 patches), loaded with no frame
    count: the model adopts the checkpoint's length and equals the reference forward on it
    (no stretch to 1024 frames at load and crop back at run time)."""
    from ssl_bench.model import checkpoint_settings
    from ssl_bench.plugins.ast.checkpoints import checkpoint_overrides, frames_for_time_patches

    assert [frames_for_time_patches(t, 16, 10) for t in (101, 50, 12)] == [1024, 512, 128]
    sd = official_state(dim=32, depth=2, frames=512, bins=128, classes=3, seed=3)
    path = tmp_path / "esc50_512.pth"
    atomic_save(sd, path)
    assert checkpoint_overrides(path)["frontend.num_frames"] == 512
    # a run on a task sizes the input from the task; the importer then adapts the table once
    assert "frontend.num_frames" not in checkpoint_settings("ast", path, "synthetic")
    model = ssl_bench.create_model("ast", preset="tiny", checkpoint=path).eval()
    assert model.encoder.num_frames == 512 and model.encoder.grid == (50, 12)
    torch.testing.assert_close(model.encoder.pos_embed, sd["module.v.pos_embed"])  # used as stored
    spec = torch.randn(2, 512, 128, generator=torch.Generator().manual_seed(1))
    ref = reference_pooled({k[len("module."):]: v for k, v in sd.items()}, spec, heads=model.encoder.cfg.heads,
                           fstride=10, tstride=10, eps=1e-6)
    with torch.no_grad():
        ours = model.encoder.pool(model.encoder(spec))
    assert (ours - ref).abs().max().item() <= 1e-4
    # an ssl-bench AST checkpoint also brings its own length
    saved = save_model(model, tmp_path / "ours.pt")
    assert checkpoint_overrides(saved)["frontend.num_frames"] == 512

"""AudioMAE plugin: encoder, decoders, official checkpoint import, recipes, reconstruction.

The official-format state dicts are built here from the key names and shapes listed in
/work/shared/reference/audiomae-ast-facts.md (sections 1.3, 1.4 and 1.7); no released file is
needed.  Reference computations (position-table formula, SwinV2-CR window block) are written
independently of the plugin from the same facts.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from ssl_bench.plugins.audiomae.decoders import (
    GlobalDecoder,
    HybridDecoder,
    ShiftedWindowDecoder,
    WindowBlock,
)
from ssl_bench.plugins.audiomae.encoder import ViTEncoder, keep_indices
from ssl_bench.plugins.audiomae.positions import crop_table, position_table

from ssl_bench import create_model
from ssl_bench.checkpoint import CheckpointError, save_model
from ssl_bench.components import FREQ_MAJOR, TIME_MAJOR, BuildContext, EncoderOutput
from ssl_bench.config import resolve

TINY = {"frontend.num_frames": 64, "frontend.mean": -6.0, "frontend.std": 4.0}


# --------------------------------------------------------------------------- facts-based references
def facts_sincos_1d(d: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.outer(pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def facts_official_table(dim: int, n_time: int, n_freq: int) -> np.ndarray:
    """``get_2d_sincos_pos_embed_flexible(dim, grid_size=(n_freq, n_time), cls_token=True)`` (facts 1.3)."""
    gw, gh = np.meshgrid(np.arange(n_time), np.arange(n_freq))  # "w goes first"; each (n_freq, n_time)
    table = np.concatenate([facts_sincos_1d(dim // 2, gw), facts_sincos_1d(dim // 2, gh)], axis=1)
    return np.concatenate([np.zeros((1, dim)), table], axis=0)


def official_pretrained_state(dim=768, depth=12, dec_dim=512, dec_depth=16, dec_heads=16, n_time=64, n_freq=8,
                              mlp=4, window_decoder=True, meta_hidden=384, seed=0) -> dict[str, torch.Tensor]:
    """A state dict with the release's key names and shapes (facts 1.7), random weights."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    def ln(prefix, d, sd):
        sd[f"{prefix}.weight"] = 1.0 + r(d)
        sd[f"{prefix}.bias"] = r(d)

    def lin(prefix, o, i, sd):
        sd[f"{prefix}.weight"] = r(o, i, std=1.0 / math.sqrt(i))
        sd[f"{prefix}.bias"] = r(o)

    sd: dict[str, torch.Tensor] = {
        "cls_token": r(1, 1, dim),
        "pos_embed": torch.from_numpy(facts_official_table(dim, n_time, n_freq)).float()[None],
        "mask_token": r(1, 1, dec_dim),
        "decoder_pos_embed": torch.from_numpy(facts_official_table(dec_dim, n_time, n_freq)).float()[None],
        "patch_embed.proj.weight": r(dim, 1, 16, 16, std=1.0 / 16),
        "patch_embed.proj.bias": r(dim),
    }
    for i in range(depth):
        p = f"blocks.{i}"
        ln(f"{p}.norm1", dim, sd)
        lin(f"{p}.attn.qkv", 3 * dim, dim, sd)
        lin(f"{p}.attn.proj", dim, dim, sd)
        ln(f"{p}.norm2", dim, sd)
        lin(f"{p}.mlp.fc1", mlp * dim, dim, sd)
        lin(f"{p}.mlp.fc2", dim, mlp * dim, sd)
    ln("norm", dim, sd)
    lin("decoder_embed", dec_dim, dim, sd)
    for i in range(dec_depth):
        p = f"decoder_blocks.{i}"
        if window_decoder:
            sd[f"{p}.attn.tau"] = 1.0 + r(dec_heads).abs()
            lin(f"{p}.attn.meta_mlp.fc1", meta_hidden, 2, sd)
            lin(f"{p}.attn.meta_mlp.fc2", dec_heads, meta_hidden, sd)
        ln(f"{p}.norm1", dec_dim, sd)
        lin(f"{p}.attn.qkv", 3 * dec_dim, dec_dim, sd)
        lin(f"{p}.attn.proj", dec_dim, dec_dim, sd)
        ln(f"{p}.norm2", dec_dim, sd)
        lin(f"{p}.mlp.fc1", mlp * dec_dim, dec_dim, sd)
        lin(f"{p}.mlp.fc2", dec_dim, mlp * dec_dim, sd)
    ln("decoder_norm", dec_dim, sd)
    lin("decoder_pred", 256, dec_dim, sd)
    return sd


def official_finetuned_state(pretrained: dict[str, torch.Tensor], classes: int = 527) -> dict[str, torch.Tensor]:
    """Encoder keys without ``norm``, plus ``fc_norm`` and ``head`` (facts 1.7)."""
    sd = {k: v for k, v in pretrained.items()
          if not (k.startswith(("decoder", "norm.")) or k == "mask_token")}
    dim = sd["cls_token"].shape[-1]
    sd["fc_norm.weight"] = torch.ones(dim) + 0.01 * torch.randn(dim)
    sd["fc_norm.bias"] = 0.01 * torch.randn(dim)
    sd["head.weight"] = 0.02 * torch.randn(classes, dim)
    sd["head.bias"] = torch.zeros(classes)
    return sd


def save_official(sd: dict[str, torch.Tensor], path) -> None:
    """As the release saves them: ``{'model': sd, 'args': Namespace, 'epoch': ...}``."""
    args = argparse.Namespace(model="mae_vit_base_patch16", decoder_mode=1, mask_ratio=0.8, norm_pix_loss=True)
    torch.save({"model": sd, "args": args, "epoch": 32}, path)


def reference_window_block(blk: WindowBlock, x: torch.Tensor, H: int, W: int, window=(4, 4), shift=(0, 0)):
    """The release's SwinV2-CR block, window by window with explicit attention (facts 1.4)."""
    B, L, C = x.shape
    heads = blk.attn.heads
    wh, ww = window
    N = wh * ww
    xs = x.view(B, H, W, C)
    if any(shift):
        xs = torch.roll(xs, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        img = torch.zeros(H, W)
        cnt = 0
        for hs in (slice(0, -wh), slice(-wh, -shift[0]), slice(-shift[0], None)):
            for ws in (slice(0, -ww), slice(-ww, -shift[1]), slice(-shift[1], None)):
                img[hs, ws] = cnt
                cnt += 1
    cells = [(a, b) for a in range(wh) for b in range(ww)]
    rel = torch.tensor([[[ca[0] - cb[0], ca[1] - cb[1]] for cb in cells] for ca in cells], dtype=torch.float32)
    rel = rel.reshape(-1, 2)
    rel = torch.sign(rel) * torch.log(1.0 + rel.abs())
    bias = blk.attn.meta_mlp(rel).transpose(0, 1).reshape(heads, N, N)
    out = torch.zeros_like(xs)
    for b in range(B):
        for h0 in range(0, H, wh):
            for w0 in range(0, W, ww):
                win = xs[b, h0:h0 + wh, w0:w0 + ww].reshape(N, C)
                q, k, v = blk.attn.qkv(win).reshape(N, 3, heads, C // heads).permute(1, 2, 0, 3)
                denom = q.norm(dim=-1, keepdim=True) @ k.norm(dim=-1, keepdim=True).transpose(-2, -1)
                attn = (q @ k.transpose(-2, -1)) / denom.clamp(min=1e-6)
                attn = attn / blk.attn.tau.clamp(min=0.01).reshape(heads, 1, 1) + bias
                if any(shift):
                    lab = img[h0:h0 + wh, w0:w0 + ww].reshape(N)
                    attn = attn + (lab[:, None] != lab[None, :]).float() * -100.0
                o = (attn.softmax(-1) @ v).transpose(0, 1).reshape(N, C)
                out[b, h0:h0 + wh, w0:w0 + ww] = blk.attn.proj(o).reshape(wh, ww, C)
    if any(shift):
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    y = out.reshape(B, L, C)
    x = x + blk.norm1(y)
    return x + blk.norm2(blk.mlp(x))


def fixed_mask(batch: int, length: int, keep: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.rand(batch, length, generator=g).argsort(dim=1)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask.scatter_(1, ids[:, :keep], False)
    return mask


def nparams(module, trainable=False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


# --------------------------------------------------------------------------- the released ViT-B
@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Official-format ``pretrained.pth`` and ``finetuned.pth`` (ViT-B shapes) on disk."""
    root = tmp_path_factory.mktemp("official")
    sd = official_pretrained_state()
    pre, fine = root / "pretrained.pth", root / "finetuned.pth"
    fine_sd = official_finetuned_state(sd)
    save_official(sd, pre)
    save_official(fine_sd, fine)
    return {"pretrained": pre, "finetuned": fine, "state": sd, "finetuned_state": fine_sd}


def test_official_state_has_release_tensor_counts(official):
    assert len(official["state"]) == 430  # facts 1.7
    assert len(official_finetuned_state(official["state"])) == 152


def assert_loaded_strictly(model, official_sd):
    """Every official tensor landed on its ssl-bench key and every learned model key was covered."""
    from ssl_bench.plugins.audiomae.checkpoints import official_key

    mapped = {official_key(k): v for k, v in official_sd.items()}
    assert None not in mapped
    own = model.state_dict()
    learned = {k for k in own if k.startswith(("encoder.", "decoder.", "head."))}
    assert set(mapped) == learned
    for k, v in mapped.items():
        assert torch.equal(own[k], v), k


def test_base_loads_official_pretrained_strictly(official, device):
    model = create_model("audiomae", preset="base", checkpoint=official["pretrained"])
    # Paper-size counts (facts 1.2): encoder 85.65 M, whole model 136.99 M, 136.34 M trainable.
    assert round(nparams(model.encoder) / 1e6, 1) == 85.6
    assert round(nparams(model) / 1e6, 1) == 137.0
    assert round(nparams(model, trainable=True) / 1e6, 1) == 136.3
    assert model.encoder.grid == (64, 8) and model.encoder.grid[0] * model.encoder.grid[1] == 512
    mask = model.masker(1, (64, 8), model.encoder.layout)
    assert int((~mask).sum()) == 102  # 20% of 512 kept
    assert_loaded_strictly(model, official["state"])

    model = model.to(device).eval()
    torch.manual_seed(0)
    spec = torch.randn(1, 1024, 128, device=device)
    mask = fixed_mask(1, 512, 102).to(device)
    with torch.no_grad():
        enc_a, enc_b = model.encoder(spec, mask), model.encoder(spec, mask)
        a = model.forward_pretrain(spec, mask=mask)
        b = model.forward_pretrain(spec, mask=mask)
    assert enc_a.tokens.shape == (1, 1 + 102, 768)
    assert torch.isfinite(enc_a.tokens).all() and torch.equal(enc_a.tokens, enc_b.tokens)
    assert torch.isfinite(a.loss) and torch.equal(a.loss, b.loss) and torch.equal(a.pred, b.pred)
    assert a.pred.shape == (1, 512, 256)


def test_global_decoder_size_matches_release():
    # decoder_mode=0: 8 pre-norm global blocks, 111.66 M parameters with ViT-B (facts 1.2);
    # counted on the meta device (nothing allocated).
    assert resolve("audiomae", overrides={"decoder": "global"})["decoder"]["depth"] == 8
    with torch.device("meta"):
        build = BuildContext(num_frames=1024, num_bins=128)
        enc = ViTEncoder(ViTEncoder.Config(), build)
        dec = GlobalDecoder(GlobalDecoder.Config(), build)
    assert round((nparams(enc) + nparams(dec)) / 1e6, 2) == 111.66


def test_official_finetuned_maps_onto_head(official, device):
    model = create_model("audiomae", preset="base", checkpoint=official["finetuned"], decoder=None)
    assert model.head is not None and model.head[1].out_features == 527
    assert isinstance(model.encoder.norm, torch.nn.Identity)  # the fine-tuned release has no final norm
    assert model.config["encoder"]["final_norm"] is False
    assert_loaded_strictly(model, official["finetuned_state"])
    model = model.to(device).eval()
    with torch.no_grad():
        logits = model.classify(torch.randn(1, 1024, 128, device=device))
    assert logits.shape == (1, 527) and torch.isfinite(logits).all()


def test_shorter_inputs_use_the_10s_weights(official, device):
    from ssl_bench.plugins.audiomae.checkpoints import load_checkpoint

    for frames, task, batch in ((512, "esc50", 1), (128, "speechcommands", 2)):
        model = create_model("audiomae", preset="base", task=task, checkpoint=official["pretrained"], decoder=None)
        assert model.frontend.num_frames == frames and model.encoder.grid == (frames // 16, 8)
        # The cropped table follows the quirk: equal to the release's formula for grid (8, T/16).
        expected = torch.from_numpy(facts_official_table(768, frames // 16, 8)).float()
        assert torch.allclose(model.encoder.pos_embed[0], expected, atol=1e-6)
        assert torch.equal(model.encoder.pos_embed[0, 1:9], official["state"]["pos_embed"][0, 1:9])
        model = model.to(device).eval()
        model.set_head(10)
        model.head.to(device)
        spec = torch.randn(batch, frames, 128, device=device)
        with torch.no_grad():
            emb = model.embed(spec)
            logits = model.head(emb) if frames > 128 else model.classify(spec)
        assert emb.shape == (batch, 768) and torch.isfinite(emb).all()
        assert logits.shape == (batch, 10) and torch.isfinite(logits).all()

    # The importer's report on the last (128-frame, decoder-less) model, in the file's key names.
    model.head = None
    report = load_checkpoint(model, official["pretrained"])
    assert report.format == "audiomae-pretrained" and not report.missing
    assert "decoder_embed.weight" in report.unexpected and "mask_token" in report.unexpected
    assert "audiomae-pretrained checkpoint, 150 tensors loaded" in str(report)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(model, official["pretrained"], strict=True)
    report = load_checkpoint(model, official["finetuned"], strict=True)  # adds the 527-class head
    assert report.format == "audiomae-finetuned" and len(report.loaded) == 152
    assert isinstance(model.encoder.norm, torch.nn.Identity)
    with torch.no_grad():
        assert torch.isfinite(model.classify(torch.randn(1, 128, 128, device=device))).all()


# --------------------------------------------------------------------------- position tables
def test_quirk_table_matches_release_formula():
    enc = ViTEncoder(ViTEncoder.Config(dim=64, depth=1, heads=4), BuildContext(num_frames=1024, num_bins=128))
    table = enc.pos_embed[0].numpy()
    assert np.allclose(table, facts_official_table(64, 64, 8), atol=1e-6)
    assert not enc.pos_embed.requires_grad and "pos_embed" in enc.state_dict()
    d = 32  # half of dim 64: first half encodes the "w" coordinate, second half the "h" one
    token8 = np.concatenate([facts_sincos_1d(d, np.array([8])), facts_sincos_1d(d, np.array([0]))], 1)[0]
    token64 = np.concatenate([facts_sincos_1d(d, np.array([0])), facts_sincos_1d(d, np.array([1]))], 1)[0]
    assert np.allclose(table[1 + 8], token8, atol=1e-6)  # token 8 = (t=1, f=0) is encoded as (8, 0)
    assert np.allclose(table[1 + 64], token64, atol=1e-6)  # token 64 = (t=8, f=0) as (0, 1)
    assert np.allclose(table[0], 0.0)
    true = ViTEncoder(ViTEncoder.Config(dim=64, depth=1, heads=4, pos_embed="true"),
                      BuildContext(num_frames=1024, num_bins=128)).pos_embed[0].numpy()
    assert np.allclose(true[1 + 8], np.concatenate([facts_sincos_1d(d, np.array([0])),
                                                    facts_sincos_1d(d, np.array([1]))], 1)[0], atol=1e-6)


@pytest.mark.parametrize("mode,layout", [("official", TIME_MAJOR), ("true", TIME_MAJOR), ("true", FREQ_MAJOR),
                                         ("official", FREQ_MAJOR)])
def test_cropped_table_equals_table_for_shorter_grid(mode, layout):
    long = position_table(32, (64, 8), layout, mode, num_prefix=2)
    for n_time in (32, 8, 5):
        cropped = crop_table(long, (n_time, 8), layout, mode, num_prefix=2)
        assert torch.allclose(cropped, position_table(32, (n_time, 8), layout, mode, num_prefix=2), atol=1e-6)
    assert crop_table(position_table(32, (8, 8), layout, mode), (16, 8), layout, mode, 0) is None


# --------------------------------------------------------------------------- encoder
def test_patchify_order_and_unpatchify_roundtrip():
    enc = ViTEncoder(ViTEncoder.Config(dim=32, depth=1, heads=2), BuildContext(num_frames=64, num_bins=48))
    spec = torch.randn(2, 64, 48)
    patches = enc.patchify(spec)
    assert patches.shape == (2, 4 * 3, 256)
    t, f = 2, 1  # time-major token index t * n_freq + f, values row-major (time, freq) in the patch
    assert torch.equal(patches[1, t * 3 + f], spec[1, 32:48, 16:32].reshape(-1))
    assert torch.equal(enc.unpatchify(patches, 64, 48), spec)
    # Frames beyond the last whole patch are dropped, as by the strided convolution.
    assert enc.patchify(torch.randn(1, 70, 48)).shape == (1, 12, 256)


def test_encoder_runs_visible_tokens_and_fills_context(device):
    build = BuildContext(num_frames=128, num_bins=128)
    enc = ViTEncoder(ViTEncoder.Config(dim=32, depth=2, heads=4), build).to(device)
    assert (build.encoder_dim, build.grid, build.layout, build.patch_dim,
            build.num_prefix_tokens) == (32, (8, 8), TIME_MAJOR, 256, 1)
    spec = torch.randn(3, 128, 128, device=device)
    mask = fixed_mask(3, 64, 13).to(device)
    out = enc(spec, mask)
    assert out.tokens.shape == (3, 14, 32) and out.num_prefix_tokens == 1
    assert torch.equal(out.ids_keep, keep_indices(mask))
    assert (~mask).gather(1, out.ids_keep).all()
    # Encoding only the visible tokens = running the blocks on those tokens alone.
    with torch.no_grad():
        x = enc.patch_embed(spec) + enc.pos_embed[:, 1:]
        x = torch.gather(x, 1, out.ids_keep[..., None].expand(-1, -1, 32))
        x = torch.cat([(enc.cls_token + enc.pos_embed[:, :1]).expand(3, -1, -1), x], 1)
        for blk in enc.blocks:
            x = blk(x)
        assert torch.allclose(enc.norm(x), out.tokens, atol=1e-5)
    assert enc.pool(out).shape == (3, 32)
    full = enc(spec)
    assert full.tokens.shape == (3, 65, 32) and full.ids_keep is None
    with pytest.raises(ValueError, match="same number"):
        enc(spec, torch.tensor([[True] * 10 + [False] * 54, [True] * 11 + [False] * 53, [False] * 64], device=device))


def test_layer_ids_follow_release_lr_decay():
    enc = ViTEncoder(ViTEncoder.Config(dim=32, depth=3, heads=2), BuildContext(num_frames=32, num_bins=32))
    ids = {n: enc.layer_id(n) for n, _ in enc.named_parameters()}
    assert ids["cls_token"] == ids["pos_embed"] == ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.2.mlp.fc2.bias"] == 3
    assert ids["norm.weight"] == 4 and enc.layer_id("encoder.blocks.1.norm1.weight") == 2


def test_clip_shorter_than_one_patch_is_a_clear_error():
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        ViTEncoder(ViTEncoder.Config(dim=32, depth=1, heads=2), BuildContext(num_frames=10, num_bins=128))
    enc = ViTEncoder(ViTEncoder.Config(dim=32, depth=1, heads=2), BuildContext(num_frames=64, num_bins=128))
    with pytest.raises(ValueError, match="12-frame x 128-bin"):
        enc(torch.randn(1, 12, 128))


# --------------------------------------------------------------------------- decoders
def test_window_block_matches_release_computation():
    torch.manual_seed(0)
    for grid, shift in (((16, 8), (0, 0)), ((64, 8), (2, 0)), ((8, 8), (2, 0))):
        blk = WindowBlock(32, 4, (4, 4), shift).eval()
        with torch.no_grad():
            blk.attn.tau.copy_(torch.rand(4) + 0.005)  # includes values under the 0.01 clamp
            x = torch.randn(1, grid[0] * grid[1], 32)
            ours = blk(x.view(1, grid[0], grid[1], 32), grid).reshape(1, -1, 32)
            ref = reference_window_block(blk, x, grid[0], grid[1], (4, 4), shift)
        assert torch.allclose(ours, ref, atol=1e-5), (grid, shift, (ours - ref).abs().max())


def test_padding_never_reaches_real_tokens():
    torch.manual_seed(0)
    blk = WindowBlock(16, 2, (4, 4), (2, 0)).eval()
    grid, padded = (7, 5), (8, 8)
    x = torch.randn(1, *padded, 16)
    junk = x.clone()
    junk[:, 7:] = 1e3 * torch.randn_like(junk[:, 7:])
    junk[:, :, 5:] = -1e3
    with torch.no_grad():
        a, b = blk(x, grid), blk(junk, grid)
    assert torch.allclose(a[:, :7, :5], b[:, :7, :5], atol=1e-5)


@pytest.mark.parametrize("cls", [GlobalDecoder, ShiftedWindowDecoder, HybridDecoder])
@pytest.mark.parametrize("layout,prefix,grid", [(TIME_MAJOR, 1, (7, 5)), (FREQ_MAJOR, 2, (9, 6)),
                                                (TIME_MAJOR, 1, (3, 2))])
def test_decoders_work_for_any_encoder_and_grid(cls, layout, prefix, grid, device):
    build = BuildContext(encoder_dim=24, grid=grid, layout=layout, patch_dim=256, num_prefix_tokens=prefix)
    dec = cls(cls.Config(dim=32, depth=3, heads=4, global_depth=1) if cls is HybridDecoder
              else cls.Config(dim=32, depth=3, heads=4), build).to(device)
    L = grid[0] * grid[1]
    mask = fixed_mask(2, L, max(1, L // 4)).to(device)
    tokens = torch.randn(2, prefix + max(1, L // 4), 24, device=device, requires_grad=True)
    pred = dec(EncoderOutput(tokens, keep_indices(mask), prefix), mask, grid)
    assert pred.shape == (2, L, 256) and torch.isfinite(pred).all()
    pred.square().mean().backward()
    assert torch.isfinite(tokens.grad).all() and dec.mask_token.grad is not None


def test_decoder_puts_tokens_back_in_original_order():
    grid = (4, 3)
    build = BuildContext(encoder_dim=8, grid=grid, layout=TIME_MAJOR, patch_dim=16, num_prefix_tokens=1)
    dec = GlobalDecoder(GlobalDecoder.Config(dim=8, depth=0, heads=2), build).eval()
    mask = fixed_mask(2, 12, 5)
    ids = keep_indices(mask)
    tokens = torch.randn(2, 1 + 5, 8)
    with torch.no_grad():
        pred = dec(EncoderOutput(tokens, ids, 1), mask, grid)
        for b in range(2):
            for j in range(12):
                if mask[b, j]:
                    x = dec.mask_token[0, 0]
                else:
                    x = dec.embed(tokens[b, 1 + (ids[b] == j).nonzero().item()])
                expect = dec.pred(dec.norm(x + dec.pos_embed[0, 1 + j]))
                assert torch.allclose(pred[b, j], expect, atol=1e-5)


def test_decoder_pos_table_follows_encoder_mode():
    build = BuildContext(num_frames=256, num_bins=128)
    ViTEncoder(ViTEncoder.Config(dim=32, depth=1, heads=2), build)
    dec = ShiftedWindowDecoder(ShiftedWindowDecoder.Config(dim=16, depth=1, heads=2), build)
    assert torch.allclose(dec.pos_embed[0], torch.from_numpy(facts_official_table(16, 16, 8)).float(), atol=1e-6)


# --------------------------------------------------------------------------- model, loss, recipes
def test_loss_depends_only_on_masked_patches(device):
    model = create_model("audiomae", preset="tiny", **TINY).to(device)
    spec = torch.randn(2, 64, 128, device=device)
    mask = fixed_mask(2, 32, 6).to(device)
    out = model.forward_pretrain(spec, mask=mask)
    target = model.encoder.patchify(spec)
    visible = ~mask
    perturbed = target.clone()
    perturbed[visible] += 10 * torch.randn_like(perturbed[visible])
    with torch.no_grad():
        base = model.objective(out.pred, target, mask)
        assert torch.allclose(base, out.loss)
        assert torch.allclose(model.objective(out.pred, perturbed, mask), base)
        hidden = target.clone()
        hidden[mask] += 10 * torch.randn_like(hidden[mask])
        assert not torch.allclose(model.objective(out.pred, hidden, mask), base)
    out.loss.backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None


def test_finetune_structured_dropping_with_vit(device):
    model = create_model("audiomae", preset="tiny", **TINY).to(device)
    assert type(model.finetune_masker).__name__ == "TimeFrequencyMasker"
    model.set_head(5)
    model.head.to(device)
    model.train()
    spec = torch.randn(3, 64, 128, device=device)
    mask = model.finetune_masker(3, model.grid(spec), model.encoder.layout, device)
    out = model.encoder(spec, mask)
    assert out.tokens.shape[1] == 1 + int(4 * 0.8) * int(8 * 0.8)  # 3 time rows x 6 freq columns kept
    logits = model.classify(spec, drop_tokens=True)
    assert logits.shape == (3, 5)
    logits.sum().backward()
    seed = resolve("audiomae", preset="base-mask0.3")["finetune"]["masker"]
    assert seed == {"name": "time-frequency", "time_ratio": 0.3, "freq_ratio": 0.3}


def test_paper_recipes_resolve():
    cfg = resolve("audiomae")
    assert cfg["preset"] == "base" and cfg["decoder"]["name"] == "shifted-window"
    assert (cfg["decoder"]["dim"], cfg["decoder"]["depth"], cfg["decoder"]["heads"]) == (512, 16, 16)
    assert cfg["masker"] == {"name": "random", "ratio": 0.8} and cfg["objective"]["norm_pix"] is True
    p = cfg["pretrain"]
    assert (p["blr"], p["batch_size"], p["weight_decay"], p["betas"], p["warmup_epochs"], p["epochs"]) == \
        (2e-4, 512, 1e-4, [0.9, 0.95], 3, 32)
    f = cfg["finetune"]
    assert (f["layer_decay"], f["drop_path"], f["masker"]["time_ratio"], f["masker"]["freq_ratio"]) == (0.75, 0.1, 0.2, 0.2)
    esc = resolve("audiomae", task="esc50")["frontend"]
    assert (esc["num_frames"], esc["mean"], esc["std"]) == (512, -6.6268077, 5.358466)
    spc = resolve("audiomae", task="speechcommands")["frontend"]
    assert (spc["num_frames"], spc["mean"], spc["std"]) == (128, -6.845978, 5.5654526)
    aus = resolve("audiomae", task="audioset")
    assert (aus["frontend"]["num_frames"], aus["frontend"]["mean"], aus["frontend"]["std"]) == (1024, -4.2677393, 4.5689974)
    assert (aus["finetune"]["mixup"], aus["finetune"]["specaug_freq"], aus["finetune"]["specaug_time"]) == (0.5, 48, 192)
    sizes = {name: resolve("audiomae", preset=name)["encoder"] for name in ("small", "base", "large")}
    assert [(s["dim"], s["depth"], s["heads"]) for s in sizes.values()] == [(384, 12, 6), (768, 12, 12), (1024, 24, 16)]


# --------------------------------------------------------------------------- checkpoint import errors
@pytest.fixture
def tiny_official(tmp_path):
    """A small official-format file (the release's key names, tiny widths)."""
    sd = official_pretrained_state(dim=64, depth=2, dec_dim=64, dec_depth=2, dec_heads=4, n_time=4, n_freq=8,
                                   meta_hidden=64, seed=1)
    path = tmp_path / "pretrained.pth"
    save_official(sd, path)
    return path, sd


def tiny_overrides(**extra):
    return {**TINY, "decoder.dim": 64, "decoder.depth": 2, "decoder.heads": 4, **extra}


def test_tiny_official_roundtrip_and_our_checkpoint(tiny_official, tmp_path, device):
    path, sd = tiny_official
    model = create_model("audiomae", preset="tiny", checkpoint=path, **tiny_overrides())
    assert torch.equal(model.state_dict()["decoder.pos_embed"], sd["decoder_pos_embed"])
    ours = save_model(model, tmp_path / "ours.pt")
    again = create_model("audiomae", preset="tiny", checkpoint=ours, **tiny_overrides())
    spec = torch.randn(2, 64, 128)
    mask = fixed_mask(2, 32, 6)
    model, again = model.to(device).eval(), again.to(device).eval()
    with torch.no_grad():
        a = model.forward_pretrain(spec.to(device), mask=mask.to(device))
        b = again.forward_pretrain(spec.to(device), mask=mask.to(device))
    assert torch.allclose(a.pred, b.pred) and torch.isfinite(a.loss)


def test_wrong_decoder_kind_is_refused(tiny_official, tmp_path):
    path, _ = tiny_official
    with pytest.raises(CheckpointError, match=r"shifted-window.*attn\.tau.*decoder='global'|shifted-window.*'global'"):
        create_model("audiomae", preset="tiny", checkpoint=path, decoder="global", **tiny_overrides())
    glob = official_pretrained_state(dim=64, depth=2, dec_dim=64, dec_depth=2, n_time=4, window_decoder=False)
    gpath = tmp_path / "global.pth"
    save_official(glob, gpath)
    with pytest.raises(CheckpointError, match=str(gpath.name) + r".*'global' decoder"):
        create_model("audiomae", preset="tiny", checkpoint=gpath, **tiny_overrides())
    ok = create_model("audiomae", preset="tiny", checkpoint=gpath, decoder="global", **tiny_overrides())
    assert ok.decoder is not None


def test_bad_checkpoints_give_one_line_naming_the_file(tiny_official, tmp_path):
    path, sd = tiny_official
    data = path.read_bytes()
    cut = tmp_path / "truncated.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pth") as exc:
        create_model("audiomae", preset="tiny", checkpoint=cut, **tiny_overrides())
    assert "\n" not in str(exc.value)
    ast = tmp_path / "ast.pth"
    torch.save({"module.v.cls_token": torch.zeros(1, 1, 8), "module.v.pos_embed": torch.zeros(1, 3, 8)}, ast)
    with pytest.raises(CheckpointError, match=r"ast.pth: not an AudioMAE checkpoint.*AST.*module\.v\.cls_token"):
        create_model("audiomae", preset="tiny", checkpoint=ast, **tiny_overrides())
    other = tmp_path / "ast-run.pt"
    torch.save({"format": "ssl-bench", "version": 1, "config": {"model": "ast", "encoder": {"name": "ast"}},
                "model": {"encoder.dist_token": torch.zeros(1, 1, 8)}}, other)
    with pytest.raises(CheckpointError, match=r"ast-run.pt: an ssl-bench checkpoint of model 'ast'.*'vit'"):
        create_model("audiomae", preset="tiny", checkpoint=other, **tiny_overrides())
    # A checkpoint that fits except for one shape: names the key, both shapes.
    bad = dict(sd)
    bad["decoder_pred.weight"] = torch.zeros(128, 64)
    wrong = tmp_path / "wrong.pth"
    save_official(bad, wrong)
    with pytest.raises(CheckpointError, match=r"wrong.pth.*decoder\.pred\.weight \(128, 64\) \(model expects \(256, 64\)\)"):
        create_model("audiomae", preset="tiny", checkpoint=wrong, **tiny_overrides())


def test_checkpoint_sets_encoder_size(tiny_official):
    path, _ = tiny_official
    # No size preset given: the checkpoint's width and depth win over the default (ViT-B).
    model = create_model("audiomae", checkpoint=path, decoder=None, **TINY)
    assert (model.encoder.dim, model.encoder.depth) == (64, 2)


# --------------------------------------------------------------------------- reconstruction figure
def test_reconstruct_writes_png(tmp_path):
    from ssl_bench.plugins.audiomae.reconstruct import reconstruct

    sr = 16000
    t = np.arange(int(0.7 * sr)) / sr
    wav = tmp_path / "tone.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t * (1 + t))).astype(np.float32), sr)
    model = create_model("audiomae", preset="tiny", **TINY)
    out = reconstruct(model, wav, tmp_path / "fig" / "recon.png", seed=1)
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out2 = reconstruct(model, wav, tmp_path / "recon2.png", seed=1, mask_ratio=0.5)
    assert out2.stat().st_size > 1000
    no_decoder = create_model("audiomae", preset="tiny", decoder=None, **TINY)
    with pytest.raises(ValueError, match="decoder"):
        reconstruct(no_decoder, wav, tmp_path / "x.png")

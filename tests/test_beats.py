"""BEATs plugin: a release-layout file loads strictly and the forward equals a reference
written out from the release's facts (fbank, time-major patches, post-LN deep norm, gated
shared relative bias, padding rule, classifier), to 1e-4 in float32."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torchaudio.compliance import kaldi

import ssl_bench
from ssl_bench.checkpoint import CheckpointError, atomic_save, save_model
from ssl_bench.config import resolve
from ssl_bench.plugins.beats import downsample_padding_mask, extract_features, relative_buckets
from ssl_bench.runner import run_experiment

#: A small configuration in the release's cfg vocabulary, with every released mechanism on.
SMALL_CFG = {
    "input_patch_size": 16, "embed_dim": 32, "conv_bias": False, "encoder_layers": 2, "encoder_embed_dim": 64,
    "encoder_ffn_embed_dim": 128, "encoder_attention_heads": 4, "activation_fn": "gelu", "layer_norm_first": False,
    "deep_norm": True, "relative_position_embedding": True, "gru_rel_pos": True, "num_buckets": 32,
    "max_distance": 64, "conv_pos": 16, "conv_pos_groups": 4, "layer_wise_gradient_decay_ratio": 0.6,
    "finetuned_model": True, "predictor_class": 5, "dropout": 0.0,
}


def release_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the release's key names and shapes (facts sheet), for ``cfg``."""
    g = torch.Generator().manual_seed(seed)
    D, E, Fd, H, L = (cfg["encoder_embed_dim"], cfg["embed_dim"], cfg["encoder_ffn_embed_dim"],
                      cfg["encoder_attention_heads"], cfg["encoder_layers"])
    p, K, G = cfg["input_patch_size"], cfg["conv_pos"], cfg["conv_pos_groups"]

    def r(*shape, scale=0.2, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    sd = {
        "patch_embedding.weight": r(E, 1, p, p, scale=0.05), "layer_norm.weight": r(E, offset=1.0),
        "layer_norm.bias": r(E), "post_extract_proj.weight": r(D, E), "post_extract_proj.bias": r(D),
        "encoder.pos_conv.0.weight_g": r(1, 1, K, scale=0.5, offset=1.0),
        "encoder.pos_conv.0.weight_v": r(D, D // G, K),
        "encoder.pos_conv.0.bias": r(D), "encoder.layer_norm.weight": r(D, offset=1.0), "encoder.layer_norm.bias": r(D),
    }
    table = r(cfg["num_buckets"], H, scale=1.0)
    for i in range(L):
        q = f"encoder.layers.{i}."
        for name in ("q", "k", "v", "out"):
            sd[q + f"self_attn.{name}_proj.weight"] = r(D, D)
            sd[q + f"self_attn.{name}_proj.bias"] = r(D)
        sd.update({
            q + "self_attn.grep_linear.weight": r(8, D // H, scale=0.5), q + "self_attn.grep_linear.bias": r(8),
            q + "self_attn.grep_a": r(1, H, 1, 1, offset=1.0), q + "self_attn.relative_attention_bias.weight": table,
            q + "self_attn_layer_norm.weight": r(D, offset=1.0), q + "self_attn_layer_norm.bias": r(D),
            q + "fc1.weight": r(Fd, D), q + "fc1.bias": r(Fd), q + "fc2.weight": r(D, Fd, scale=0.1),
            q + "fc2.bias": r(D), q + "final_layer_norm.weight": r(D, offset=1.0), q + "final_layer_norm.bias": r(D),
        })
    if cfg.get("finetuned_model"):
        sd["predictor.weight"] = r(cfg["predictor_class"], D)
        sd["predictor.bias"] = r(cfg["predictor_class"])
    return sd


# --------------------------------------------------------------------------- the reference
def ref_bucket(rel: int, num_buckets: int, max_distance: int) -> int:
    half = num_buckets // 2
    exact = half // 2
    out = half if rel > 0 else 0
    n = abs(rel)
    if n < exact:
        return out + n
    large = exact + int(torch.log(torch.tensor(n / exact, dtype=torch.float32)).item()
                        / math.log(max_distance / exact) * (half - exact))
    return out + min(large, half - 1)


def reference(sd, cfg, wave, pad=None):
    """The release's forward as the facts sheet describes it, step by step: ``(features, token
    padding, probabilities)``."""
    D, H, L = cfg["encoder_embed_dim"], cfg["encoder_attention_heads"], cfg["encoder_layers"]
    p, dh = cfg["input_patch_size"], D // cfg["encoder_attention_heads"]
    fb = torch.stack([kaldi.fbank(w[None] * 2 ** 15, num_mel_bins=128, sample_frequency=16000, frame_length=25,
                                  frame_shift=10) for w in wave])
    fb = (fb - 15.41663) / (2 * 6.55582)
    B, T, _ = fb.shape

    def down(mask, n):
        extra = mask.shape[1] % n
        mask = mask[:, :mask.shape[1] - extra]
        return mask.view(B, n, -1).all(-1)

    x = F.conv2d(fb.unsqueeze(1), sd["patch_embedding.weight"], stride=p)  # [B, E, T/16, 8]
    x = x.reshape(B, x.shape[1], -1).transpose(1, 2)  # time-major
    x = F.layer_norm(x, x.shape[-1:], sd["layer_norm.weight"], sd["layer_norm.bias"], 1e-5)
    x = x @ sd["post_extract_proj.weight"].T + sd["post_extract_proj.bias"]
    N = x.shape[1]
    tok_pad = down(down(pad, T), N) if pad is not None else torch.zeros(B, N, dtype=torch.bool)
    x = x.clone()
    x[tok_pad] = 0
    v, g = sd["encoder.pos_conv.0.weight_v"], sd["encoder.pos_conv.0.weight_g"]
    w = g * v / torch.sqrt((v ** 2).sum(dim=(0, 1), keepdim=True))
    c = F.conv1d(x.transpose(1, 2), w, sd["encoder.pos_conv.0.bias"], padding=cfg["conv_pos"] // 2,
                 groups=cfg["conv_pos_groups"])[:, :, :-1]
    x = x + F.gelu(c).transpose(1, 2)
    x = F.layer_norm(x, (D,), sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"], 1e-5)
    alpha = (2 * L) ** 0.25
    buckets = torch.tensor([[ref_bucket(j - i, cfg["num_buckets"], cfg["max_distance"]) for j in range(N)]
                            for i in range(N)])
    bias = sd["encoder.layers.0.self_attn.relative_attention_bias.weight"][buckets].permute(2, 0, 1)  # [H, N, N]
    for i in range(L):
        s = f"encoder.layers.{i}."
        res = x
        q = x @ sd[s + "self_attn.q_proj.weight"].T + sd[s + "self_attn.q_proj.bias"]
        k = x @ sd[s + "self_attn.k_proj.weight"].T + sd[s + "self_attn.k_proj.bias"]
        vv = x @ sd[s + "self_attn.v_proj.weight"].T + sd[s + "self_attn.v_proj.bias"]
        q, k, vv = (t.view(B, N, H, dh).transpose(1, 2) for t in (q, k, vv))
        gates = q @ sd[s + "self_attn.grep_linear.weight"].T + sd[s + "self_attn.grep_linear.bias"]  # [B, H, N, 8]
        a = torch.sigmoid(gates[..., 0:4].sum(-1, keepdim=True))
        b = torch.sigmoid(gates[..., 4:8].sum(-1, keepdim=True))
        gate = a * (b * sd[s + "self_attn.grep_a"] - 1.0) + 2.0
        qs = q * dh ** -0.5 / 32
        logits = qs @ k.transpose(-1, -2)
        logits = (logits - logits.max(dim=-1, keepdim=True).values) * 32
        logits = logits.masked_fill(tok_pad[:, None, None, :], float("-inf"))
        logits = logits + gate * bias
        att = torch.softmax(logits, dim=-1)
        h = (att @ vv).transpose(1, 2).reshape(B, N, D)
        h = h @ sd[s + "self_attn.out_proj.weight"].T + sd[s + "self_attn.out_proj.bias"]
        x = F.layer_norm(res * alpha + h, (D,), sd[s + "self_attn_layer_norm.weight"],
                         sd[s + "self_attn_layer_norm.bias"], 1e-5)
        h = F.gelu(x @ sd[s + "fc1.weight"].T + sd[s + "fc1.bias"])
        h = h @ sd[s + "fc2.weight"].T + sd[s + "fc2.bias"]
        x = F.layer_norm(x * alpha + h, (D,), sd[s + "final_layer_norm.weight"], sd[s + "final_layer_norm.bias"], 1e-5)
    logits = x @ sd["predictor.weight"].T + sd["predictor.bias"]
    if tok_pad.any():
        logits = logits.masked_fill(tok_pad[..., None], 0.0)
        logits = logits.sum(1) / (~tok_pad).sum(-1, keepdim=True)
    else:
        logits = logits.mean(1)
    return x, tok_pad, torch.sigmoid(logits)


@pytest.fixture
def release_file(tmp_path):
    sd = release_state(SMALL_CFG)
    path = tmp_path / "BEATs_small.pt"
    atomic_save({"cfg": dict(SMALL_CFG), "model": sd, "label_dict": {i: f"class{i}" for i in range(5)}}, path)
    return path, sd


def waves(seconds=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    w = torch.stack([0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(n, generator=g),
                     0.2 * torch.randn(n, generator=g)])
    pad = torch.zeros(2, n, dtype=torch.bool)
    pad[1, n // 2:] = True
    w[1, n // 2:] = 0.0
    return w, pad


# --------------------------------------------------------------------------- tests
def test_release_file_loads_strictly_and_matches_the_reference(release_file):
    path, sd = release_file
    model = ssl_bench.create_model("beats", checkpoint=path).eval()
    assert model.encoder.cfg.max_distance == 64 and model.encoder.cfg.embed_dim == 32
    assert model.head.labels[3] == "class3"
    w, pad = waves()
    with torch.no_grad():
        ref_x, ref_pad, ref_probs = reference(sd, SMALL_CFG, w, pad)
        x, tok_pad = extract_features(model, w, pad)
        probs = torch.sigmoid(model.head(model.encoder.pool(model.encoder(
            model.frontend.normalize(model.frontend.compute(w)), padding_mask=downsample_padding_mask(pad, 148)),
            tok_pad)))
        unpadded, _ = extract_features(model, w)
        ref_unpadded, _, ref_probs_unpadded = reference(sd, SMALL_CFG, w)
    assert tok_pad.sum(1).tolist() == ref_pad.sum(1).tolist() and tok_pad[1].any() and not tok_pad[0].any()
    assert torch.equal(tok_pad, ref_pad)
    assert (x - ref_x).abs().max() < 1e-4
    assert (probs - ref_probs).abs().max() < 1e-4
    assert (unpadded - ref_unpadded).abs().max() < 1e-4
    # the runner's path: no padding mask, logits of the mean-pooled tokens
    with torch.no_grad():
        logits = model.classify(model.frontend(w, 16000))
    assert (torch.sigmoid(logits) - ref_probs_unpadded).abs().max() < 1e-4
    # padding one clip leaves the other as it was (the mask only touches its own row)
    assert (x[0] - unpadded[0]).abs().max() < 1e-5


def test_frontend_is_the_release_fbank_with_fixed_constants():
    fe = ssl_bench.create_model("beats", preset="tiny").frontend
    assert fe.stats_key is None and fe.num_frames_for(5.0) == 498
    w = torch.zeros(1, 16000)
    spec = fe.compute(w)
    assert spec.shape == (1, 98, 128)
    assert torch.allclose(spec, torch.full_like(spec, math.log(torch.finfo(torch.float32).eps)))  # -15.9424
    assert abs(float(fe.normalize(torch.tensor(15.41663)))) < 1e-6


def test_padding_rule_reference_case():
    """Facts sheet: a 5 s clip with its last 2 s padded masks tokens 150..247 (98); in time row
    18 (tokens 144..151) only 150 and 151."""
    pad = torch.zeros(1, 80000, dtype=torch.bool)
    pad[0, 48000:] = True
    tokens = downsample_padding_mask(downsample_padding_mask(pad, 498), 248)[0]
    assert tokens.nonzero().flatten().tolist() == list(range(150, 248))


def test_relative_buckets_follow_the_t5_rule():
    got = relative_buckets(300, 300, 320, 800)
    for q, k in [(0, 0), (0, 5), (5, 0), (0, 79), (0, 80), (0, 81), (200, 0), (0, 299), (10, 250)]:
        assert int(got[q, k]) == ref_bucket(k - q, 320, 800), (q, k)
    assert int(got[0, 299]) >= 160 > int(got[299, 0])  # keys after the query use the upper half
    assert int(got.max()) == 319 or int(got[0, 299]) < 319


def test_base_has_the_released_parameter_count_and_keys():
    model = ssl_bench.create_model("beats", preset="base")
    assert sum(p.numel() for p in model.encoder.parameters()) == 90_311_792
    sd = model.encoder.state_dict()
    assert len(sd) == 250
    assert sd["encoder.pos_conv.0.weight_v"].shape == (768, 48, 128)
    assert sd["encoder.layers.11.self_attn.relative_attention_bias.weight"].shape == (320, 12)
    assert sd["encoder.layers.3.self_attn.grep_a"].shape == (1, 12, 1, 1)


def test_strict_loading_names_missing_unexpected_and_differing_keys(tmp_path, release_file):
    path, sd = release_file
    model = ssl_bench.create_model("beats", checkpoint=path)
    bad = dict(sd)
    del bad["encoder.layers.1.fc2.bias"]
    bad["encoder.layers.1.extra.weight"] = torch.zeros(1)
    atomic_save({"cfg": dict(SMALL_CFG), "model": bad}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"missing 1: encoder\.layers\.1\.fc2\.bias.*unexpected 1: "
                                              r"encoder\.layers\.1\.extra\.weight"):
        ssl_bench.model.load_checkpoint(model, tmp_path / "bad.pt")
    other = dict(sd)
    other["encoder.layers.1.self_attn.relative_attention_bias.weight"] = sd[
        "encoder.layers.1.self_attn.relative_attention_bias.weight"] + 1
    atomic_save({"cfg": dict(SMALL_CFG), "model": other}, tmp_path / "table.pt")
    with pytest.raises(CheckpointError, match="shares one relative position table"):
        ssl_bench.model.load_checkpoint(model, tmp_path / "table.pt")
    # a cfg that leaves max_distance out means the class default 1280, not the model's 64
    cfg = {k: v for k, v in SMALL_CFG.items() if k != "max_distance"}
    atomic_save({"cfg": cfg, "model": sd}, tmp_path / "default.pt")
    with pytest.raises(CheckpointError, match="max_distance 1280"):
        ssl_bench.model.load_checkpoint(model, tmp_path / "default.pt")
    assert ssl_bench.create_model("beats", checkpoint=tmp_path / "default.pt").encoder.cfg.max_distance == 1280
    # an ssl-bench checkpoint of the loaded model round-trips, predictor head included
    save_model(model, tmp_path / "ours.pt")
    again = ssl_bench.create_model("beats", checkpoint=tmp_path / "ours.pt")
    assert set(again.state_dict()) == set(model.state_dict())
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    atomic_save({"model": sd}, tmp_path / "nocfg.pt")
    with pytest.raises(CheckpointError, match="'cfg'"):
        ssl_bench.model.load_checkpoint(model, tmp_path / "nocfg.pt")


def test_pretraining_is_off_and_token_masks_are_refused():
    cfg = resolve("beats", preset="tiny")
    assert cfg["pretrain"]["enabled"] is False and cfg["method"] is None
    model = ssl_bench.create_model("beats", preset="tiny")
    spec = torch.zeros(1, 64, 128)
    with pytest.raises(ValueError, match="encodes every token"):
        model.encoder(spec, torch.zeros(1, 32, dtype=torch.bool))
    out = model.encoder(spec, hidden_states=True)
    assert out.tokens.shape == (1, 32, 64) and len(out.hidden_states) == 3
    assert torch.equal(out.hidden_states[-1], out.tokens)  # post-LN: no final norm


def test_linear_probe_on_synthetic_end_to_end(tmp_path):
    cfg = resolve("beats", preset="tiny", task="synthetic", overrides={"linear.C": [1.0]})
    run = run_experiment(cfg, data_dir=tmp_path / "data", results_root=tmp_path / "res", protocols=("linear",),
                         splits=["fold1"], progress=False)
    rows = json.loads((run / "result.json").read_text())["rows"]
    assert {r["protocol"] for r in rows} == {"linear"} and all(r["init"] == "random" for r in rows)
    assert all(0.0 <= r["value"] <= 1.0 for r in rows if r["metric"] == "accuracy")

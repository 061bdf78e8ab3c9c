"""AST initialised from ImageNet: a DeiT state dict in timm's layout (a tiny one, random weights,
built by timm itself) initialises AST as the release's ASTModel does, through the runner too."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import ssl_bench
from ssl_bench.checkpoint import CheckpointError, atomic_save
from ssl_bench.config import ConfigError, resolve
from ssl_bench.download import DownloadError
from ssl_bench.model import load_checkpoint
from ssl_bench.plugins.ast import imagenet
from ssl_bench.runner import run_experiment

timm = pytest.importorskip("timm")  # the test extra; it writes the layout the DeiT releases use

HW = 6  # a 96 x 96 image: 6 x 6 patches
TINY = {"encoder.dim": 32, "encoder.depth": 2, "encoder.heads": 4}


def deit_file(tmp_path, distilled=True, dim=32, wrap=True):
    torch.manual_seed(0)
    cls = timm.models.deit.VisionTransformerDistilled if distilled else timm.models.vision_transformer.VisionTransformer
    net = cls(img_size=96, patch_size=16, embed_dim=dim, depth=2, num_heads=4, num_classes=10)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-trivial tokens, positions and norms
    path = tmp_path / ("deit.pth" if distilled else "vit.pth")
    atomic_save({"model": net.state_dict()} if wrap else net.state_dict(), path)
    return path, net


def ast_rule(table, f_dim, t_dim, prefix=2):
    """The release's ASTModel position adaptation, as the facts sheet gives it: image grid
    (rows = frequency, columns = time); centre-crop columns [hw/2 - t/2, ...) or interpolate to
    (hw, t); then rows the same way; prefix rows kept."""
    D = table.shape[-1]
    grid = table[:, prefix:].reshape(1, HW * HW, D).transpose(1, 2).reshape(1, D, HW, HW)
    if t_dim <= HW:
        grid = grid[:, :, :, int(HW / 2) - int(t_dim / 2): int(HW / 2) - int(t_dim / 2) + t_dim]
    else:
        grid = F.interpolate(grid, size=(HW, t_dim), mode="bilinear")
    if f_dim <= HW:
        grid = grid[:, :, int(HW / 2) - int(f_dim / 2): int(HW / 2) - int(f_dim / 2) + f_dim, :]
    else:
        grid = F.interpolate(grid, size=(f_dim, t_dim), mode="bilinear")
    return torch.cat([table[:, :prefix], grid.reshape(1, D, f_dim * t_dim).transpose(1, 2)], dim=1)


def imagenet_model(path, frames=128, bins=48, **kw):
    return ssl_bench.create_model("ast", preset="tiny", **{
        **TINY, "frontend.num_frames": frames, "frontend.num_bins": bins, "encoder.init": "imagenet",
        "encoder.init_file": str(path), **kw})


def test_deit_initialises_ast_as_the_release_does(tmp_path):
    path, net = deit_file(tmp_path)
    sd = net.state_dict()
    model = imagenet_model(path)  # 128 frames x 48 bins: a 12 x 4 grid (time longer, frequency shorter)
    enc = model.encoder
    assert enc.grid == (12, 4)
    assert torch.allclose(enc.patch_embed.proj.weight, sd["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert torch.equal(enc.patch_embed.proj.bias, sd["patch_embed.proj.bias"])
    assert torch.equal(enc.cls_token, sd["cls_token"]) and torch.equal(enc.dist_token, sd["dist_token"])
    assert torch.allclose(enc.pos_embed, ast_rule(sd["pos_embed"], f_dim=4, t_dim=12), atol=1e-6)
    assert torch.equal(enc.norm.weight, sd["norm.weight"])
    # the blocks compute what timm's DeiT blocks compute
    x = torch.randn(2, 50, 32)
    with torch.no_grad():
        assert (enc.blocks[1](enc.blocks[0](x)) - net.blocks(x)).abs().max() < 1e-5
    # the paper's "average" instead of the release's sum
    mean = imagenet_model(path, **{"encoder.init_channels": "mean"}).encoder
    assert torch.allclose(mean.patch_embed.proj.weight, sd["patch_embed.proj.weight"].mean(1, keepdim=True))
    # a shorter input crops the table in both axes
    short = imagenet_model(path, frames=48).encoder
    assert short.grid == (4, 4)
    assert torch.allclose(short.pos_embed, ast_rule(sd["pos_embed"], f_dim=4, t_dim=4))


def test_load_report_and_a_vit_without_distillation_token(tmp_path):
    path, _ = deit_file(tmp_path, wrap=False)
    model = imagenet_model(path)
    report = load_checkpoint(model, path)
    assert report.format.startswith("ImageNet") and not report.missing
    assert sorted(report.unexpected) == ["head.bias", "head.weight", "head_dist.bias", "head_dist.weight"]
    vit_path, vit = deit_file(tmp_path, distilled=False)
    enc = imagenet_model(vit_path).encoder
    sd = vit.state_dict()
    assert torch.equal(enc.dist_token, sd["cls_token"])  # the second token starts as cls
    rows = torch.cat([sd["pos_embed"][:, :1], sd["pos_embed"]], dim=1)
    assert torch.allclose(enc.pos_embed, ast_rule(rows, f_dim=4, t_dim=12), atol=1e-6)
    # passed as --checkpoint, the sizes come from the file
    assert ssl_bench.model.checkpoint_settings("ast", path)["encoder.dim"] == 32


def test_wrong_width_and_missing_file_are_one_line_errors(tmp_path, monkeypatch):
    path, _ = deit_file(tmp_path, dim=64)
    with pytest.raises(CheckpointError, match=r"deit\.pth: ImageNet patch embedding .*\(64 wide.*base-imagenet"):
        imagenet_model(path)
    with pytest.raises(ConfigError, match=r"encoder\.init_file .*nothing\.pth: no such file"):
        imagenet_model(tmp_path / "nothing.pth")
    # the paper's DeiT-B/384 offline: names the URL and where to put the file
    monkeypatch.setenv("SSL_BENCH_OFFLINE", "1")
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DownloadError) as err:
        ssl_bench.create_model("ast", preset="base-imagenet")
    msg = str(err.value)
    assert "\n" not in msg and imagenet.DEIT_RELEASES[768][1] in msg
    assert str(tmp_path / "cache" / "weights" / "deit_base_distilled_patch16_384-d0272ac0.pth") in msg


def test_download_is_checked_against_the_published_prefix(tmp_path, monkeypatch):
    def fake_download(url, dest, **kw):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"not the release")
        return dest

    monkeypatch.setattr(imagenet, "download", fake_download)
    with pytest.raises(DownloadError, match="does not start with the published d0272ac0"):
        imagenet.fetch_deit(768, folder=tmp_path)
    assert not list(tmp_path.iterdir())  # the bad file is gone
    with pytest.raises(ConfigError, match="no DeiT release is 100 wide"):
        imagenet.fetch_deit(100, folder=tmp_path)


def test_runner_records_the_imagenet_file_as_the_init(tmp_path):
    path, _ = deit_file(tmp_path)
    cfg = resolve("ast", preset="tiny", task="synthetic", overrides={
        **TINY, "encoder.init": "imagenet", "encoder.init_file": str(path), "linear.C": [1.0]})
    run = run_experiment(cfg, data_dir=tmp_path / "data", results_root=tmp_path / "res", protocols=("linear",),
                         splits=["fold1"], progress=False)
    rows = json.loads((run / "result.json").read_text())["rows"]
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    inits = {(r["init"], r["init_id"]) for r in rows}
    assert ("random", "random") in inits  # the frozen-probe baseline
    assert any(init_id == digest[:len(init_id)] and init != "random" for init, init_id in inits)


def test_pretraining_refuses_a_model_that_starts_from_imagenet(tmp_path):
    from ssl_bench.encoders import pretrain_on_corpus

    path, _ = deit_file(tmp_path)
    cfg = resolve("ast", preset="tiny", overrides={**TINY, "encoder.init": "imagenet", "encoder.init_file": str(path)})
    with pytest.raises(ConfigError, match=r"starts from .*deit\.pth.*replaces pretraining"):
        pretrain_on_corpus(cfg, str(tmp_path / "corpus"), results_root=tmp_path / "res")

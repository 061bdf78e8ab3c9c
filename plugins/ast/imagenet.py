"""AST initialised from ImageNet, as the AST paper does (``imagenet_pretrain=True``).

``encoder.init=imagenet`` (preset ``base-imagenet``) starts AST from the DeiT release of the
encoder's width (768: ``deit_base_distilled_patch16_384``, the paper's; 384 and 192: the
small and tiny distilled 224 models), or from the file ``encoder.init_file`` names: any
ViT/DeiT state dict in timm's key layout (``cls_token``, ``dist_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N.*``, ``norm``; heads ignored), bare or under ``"model"``
(the DeiT release files).  The model spec's ``initial_checkpoint`` hook returns that file, so
the runner loads it like a ``--checkpoint`` and every row records its SHA-256.

Adaptation, once, at load (:func:`timm_to_ours`), as the release's ``ASTModel`` does:

* patch embedding: the RGB kernel ``[D, 3, 16, 16]`` becomes one channel by **summing** the
  three (the release: ``torch.sum(w, dim=1)``; the paper's text says "average", which is
  ``encoder.init_channels=mean``: the kernel divided by 3); the bias is kept;
* position table: the 24 x 24 (or 14 x 14) image grid is centre-cropped, or bilinearly
  interpolated where the audio grid is longer, to the audio patch grid, time axis first
  (:func:`.encoder.adapt_pos_embed`); the cls and distillation rows are kept;
* a ViT without a distillation token: AST's second token starts as a copy of the cls token
  (and its position row as the cls row), so the pooled ``(tok0 + tok1) / 2`` starts as cls.

The DeiT files are downloaded (resumed, checked against the SHA-256 prefix in their names, as
``torch.hub`` does) to ``$SSL_BENCH_CACHE/weights`` (``~/.cache/ssl-bench/weights``); offline,
or when the download fails, one line says which URL to fetch and where to put it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from ssl_bench.checkpoint import CheckpointError
from ssl_bench.config import ConfigError
from ssl_bench.download import DownloadError, download, file_digest

from .encoder import adapt_pos_embed

#: encoder width -> (release name, URL, published SHA-256 prefix: the suffix of the file name).
DEIT_RELEASES: dict[int, tuple[str, str, str]] = {
    768: ("deit_base_distilled_patch16_384",
          "https://dl.fbaipublicfiles.com/deit/deit_base_distilled_patch16_384-d0272ac0.pth", "d0272ac0"),
    384: ("deit_small_distilled_patch16_224",
          "https://dl.fbaipublicfiles.com/deit/deit_small_distilled_patch16_224-649709d9.pth", "649709d9"),
    192: ("deit_tiny_distilled_patch16_224",
          "https://dl.fbaipublicfiles.com/deit/deit_tiny_distilled_patch16_224-b40b3cf7.pth", "b40b3cf7"),
}
INITS = ("random", "imagenet")
CHANNEL_RULES = ("sum", "mean")


def weights_home() -> Path:
    """``$SSL_BENCH_CACHE/weights`` or ``~/.cache/ssl-bench/weights``."""
    base = os.environ.get("SSL_BENCH_CACHE")
    return Path(base).expanduser() / "weights" if base else Path.home() / ".cache" / "ssl-bench" / "weights"


def fetch_deit(dim: int, folder: Path | None = None, progress: bool = True) -> Path:
    """The DeiT release for an encoder ``dim`` wide, downloaded (resumably) if not there yet."""
    if dim not in DEIT_RELEASES:
        widths = ", ".join(str(d) for d in DEIT_RELEASES)
        raise ConfigError(f"encoder.init=imagenet: no DeiT release is {dim} wide (released widths: {widths}); "
                          "set encoder.dim to one of them or give encoder.init_file=PATH")
    name, url, prefix = DEIT_RELEASES[dim]
    dest = (folder or weights_home()) / Path(url).name
    hint = f"download {url} yourself and save it as {dest} (or pass encoder.init_file=PATH)"
    if not dest.exists():
        download(url, dest, progress=progress, manual_hint=hint)
        digest = file_digest(dest, "sha256")
        if not digest.startswith(prefix):
            dest.unlink(missing_ok=True)
            raise DownloadError(f"{url}: SHA-256 {digest[:12]}... does not start with the published {prefix}; "
                                f"the file was deleted; {hint}")
    return dest


def initial_checkpoint(config: dict[str, Any]) -> Path | None:
    """The AST model spec's hook: the ImageNet file ``encoder.init=imagenet`` starts from."""
    enc = config.get("encoder") or {}
    init = enc.get("init", "random")
    if init not in INITS:
        raise ConfigError(f"encoder.init must be one of {', '.join(INITS)}, got {init!r}")
    if init == "random":
        return None
    if enc.get("init_file"):
        path = Path(str(enc["init_file"])).expanduser()
        if not path.is_file():
            raise ConfigError(f"encoder.init_file {path}: no such file (a ViT/DeiT state dict in timm's layout)")
        return path
    return fetch_deit(int(enc.get("dim", 768)))


# --------------------------------------------------------------------------- key mapping
def is_timm_layout(state: dict[str, torch.Tensor]) -> bool:
    """A ViT/DeiT image model's state dict in timm's names: an RGB (3-channel) patch embedding
    (an audio model with these names, such as AudioMAE's, has one channel)."""
    w = state.get("patch_embed.proj.weight")
    return w is not None and w.ndim == 4 and w.shape[1] == 3 and "pos_embed" in state and "cls_token" in state


def timm_to_ours(state: dict[str, torch.Tensor], encoder: Any, path: Path,
                 channels: str = "sum") -> tuple[dict[str, torch.Tensor], list[str]]:
    """timm ViT/DeiT keys -> our AST encoder's, adapted to its audio grid (see the module
    docstring); also the keys left unused (the ImageNet heads)."""
    if channels not in CHANNEL_RULES:
        raise ConfigError(f"encoder.init_channels must be one of {', '.join(CHANNEL_RULES)}, got {channels!r}")
    dim = encoder.dim
    conv = state["patch_embed.proj.weight"]
    if conv.shape[0] != dim or conv.shape[-1] != encoder.patch_size or conv.shape[-2] != encoder.patch_size:
        raise CheckpointError(
            f"{path}: ImageNet patch embedding is {tuple(conv.shape)} ({conv.shape[0]} wide, {conv.shape[-1]}x"
            f"{conv.shape[-2]} patches); the AST encoder is {dim} wide with {encoder.patch_size}x{encoder.patch_size} "
            "patches: use preset base-imagenet, or set encoder.dim/depth/heads to the checkpoint's")
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    prefix = 2 if "dist_token" in state else 1
    table = state["pos_embed"]
    n_patch = table.shape[1] - prefix
    side = math.isqrt(n_patch)
    if table.ndim != 3 or side * side != n_patch:
        raise CheckpointError(f"{path}: pos_embed {tuple(table.shape)} is not {prefix} token rows and a square "
                              "grid of patch rows (a ViT/DeiT image model's)")
    kernel = conv.float().sum(dim=1, keepdim=True)
    out["encoder.patch_embed.proj.weight"] = (kernel / conv.shape[1] if channels == "mean" else kernel).to(conv.dtype)
    cls = state["cls_token"]
    dist = state["dist_token"] if prefix == 2 else cls.clone()  # a ViT: the second token starts as cls
    rows = table if prefix == 2 else torch.cat([table[:, :1], table[:, :1], table[:, 1:]], dim=1)
    out["encoder.cls_token"], out["encoder.dist_token"] = cls, dist
    out["encoder.pos_embed"] = adapt_pos_embed(rows.float(), (side, side), encoder.grid).to(table.dtype)
    for key, value in state.items():
        if key in ("patch_embed.proj.weight", "pos_embed", "cls_token", "dist_token"):
            continue
        if key == "patch_embed.proj.bias" or key.startswith(("blocks.", "norm.")):
            out["encoder." + key] = value
        else:
            unused.append(key)  # head, head_dist (ImageNet classifiers), anything else
    return out, unused

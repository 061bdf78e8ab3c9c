"""Import AST weights: the official release, Hugging Face, SSAST and ssl-bench checkpoints.

``load_checkpoint(model, path)`` (the AST ``ModelSpec.load_checkpoint``) accepts

* official AST files (``audioset_10_10_0.4593.pth``, ``speechcommands_10_10_0.9812.pth``):
  ``module.v.*`` encoder keys and ``module.mlp_head.{0,1}.*`` (LayerNorm, Linear), saved from
  ``nn.DataParallel``; the unused ImageNet heads ``v.head``/``v.head_dist`` are ignored and
  reported; SSAST files (the same ``v.*`` layout plus pretext heads) load the same way;
* Hugging Face ``ASTModel`` / ``ASTForAudioClassification`` weights from ``.bin``,
  ``.safetensors`` or ``.pth``, with the keys ``save_pretrained`` writes
  (``audio_spectrogram_transformer.encoder.layer.N.attention.attention.query``...) or the
  in-memory names of transformers 5 (``layers.N.attention.q_proj``...); the separate q/k/v
  projections are fused into our ``attn.qkv`` (rows q, k, v), ``classifier.{layernorm,dense}``
  becomes the head;
* a Hugging Face model directory (``config.json`` + weights);
* ssl-bench checkpoints (``ssl_bench.checkpoint.save_model``) of an AST model.

The position table is adapted (:func:`.encoder.adapt_pos_embed`) when the checkpoint's patch
grid differs from the model's: the AudioSet 12 x 101 table fits a 512-frame ESC-50 model by
the original's centre crop.  :func:`checkpoint_overrides` reads the architecture a checkpoint
needs (sizes, strides, input length, LayerNorm epsilon) so that ``create_model("ast",
checkpoint=...)`` builds a matching encoder before loading.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ssl_bench.checkpoint import CheckpointError, CheckpointReport, is_ssl_bench, load_state, safe_load

from .encoder import NUM_PREFIX_TOKENS, adapt_pos_embed, patch_grid
from .imagenet import is_timm_layout, timm_to_ours

#: The input the official AudioSet checkpoints were trained on (frames, mel bins).
OFFICIAL_INPUT = (1024, 128)
#: Patch stride (both axes) of every released AST checkpoint.
OFFICIAL_STRIDE = 10
#: LayerNorm epsilon of the official ``mlp_head`` (``nn.LayerNorm`` default).
OFFICIAL_HEAD_EPS = 1e-5
HF_MODEL_TYPE = "audio-spectrogram-transformer"
HF_PREFIX = "audio_spectrogram_transformer."
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.bin", "model.pth", "model.pt")

# Hugging Face -> ours, for one transformer layer (both the saved v4 names and the v5 names).
_HF_LAYER = [
    (re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.(weight|bias)$"), "norm1"),
    (re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.(weight|bias)$"), "norm2"),
    (re.compile(r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)$"), "attn.proj"),
    (re.compile(r"^layers\.(\d+)\.attention\.o_proj\.(weight|bias)$"), "attn.proj"),
    (re.compile(r"^encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)$"), "mlp.fc1"),
    (re.compile(r"^layers\.(\d+)\.mlp\.fc1\.(weight|bias)$"), "mlp.fc1"),
    (re.compile(r"^encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)$"), "mlp.fc2"),
    (re.compile(r"^layers\.(\d+)\.mlp\.fc2\.(weight|bias)$"), "mlp.fc2"),
]
_HF_QKV = [
    re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$"),
    re.compile(r"^layers\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)$"),
]
_QKV_INDEX = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}
_HF_SINGLE = {
    "embeddings.cls_token": "encoder.cls_token",
    "embeddings.distillation_token": "encoder.dist_token",
    "embeddings.position_embeddings": "encoder.pos_embed",
    "embeddings.patch_embeddings.projection.weight": "encoder.patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "encoder.patch_embed.proj.bias",
    "layernorm.weight": "encoder.norm.weight",
    "layernorm.bias": "encoder.norm.bias",
    "classifier.layernorm.weight": "head.0.weight",
    "classifier.layernorm.bias": "head.0.bias",
    "classifier.dense.weight": "head.1.weight",
    "classifier.dense.bias": "head.1.bias",
}


# --------------------------------------------------------------------------- locating files
def _hf_config_near(path: Path) -> dict[str, Any] | None:
    """The Hugging Face AST ``config.json`` of a model directory (or of the file's directory)."""
    folder = path if path.is_dir() else path.parent
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        if path.is_dir():
            raise CheckpointError(f"{cfg_path}: not readable JSON ({exc})") from None
        return None
    if not isinstance(cfg, dict) or cfg.get("model_type") != HF_MODEL_TYPE:
        if path.is_dir():
            raise CheckpointError(
                f"{cfg_path}: model_type is {cfg.get('model_type') if isinstance(cfg, dict) else cfg!r}, "
                f"not {HF_MODEL_TYPE!r} (a Hugging Face AST directory)"
            )
        return None
    return cfg


def weights_file(path: str | Path) -> Path:
    """The weights of ``path``: the file itself, or the weights file of a model directory."""
    path = Path(path)
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        if list(path.glob("*.safetensors.index.json")) or list(path.glob("*.bin.index.json")):
            raise CheckpointError(f"{path}: sharded Hugging Face weights are not supported; save with one file")
        raise CheckpointError(f"{path}: no weights file in the directory (looked for {', '.join(WEIGHT_FILES)})")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    return path


# --------------------------------------------------------------------------- key layouts
def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint, without the DataParallel prefix."""
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds no state dict (found {type(obj).__name__})")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: holds no tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """``"official"`` (AST/SSAST ``v.*``), ``"huggingface"``, ``"ssl-bench"``, ``"imagenet"``
    (a timm ViT/DeiT image model) or ``"unknown"``."""
    keys = set(state)
    if is_timm_layout(state):
        return "imagenet"
    if "v.patch_embed.proj.weight" in keys or any(k.startswith("mlp_head.") for k in keys):
        return "official"
    if any(k.removeprefix(HF_PREFIX) == "embeddings.patch_embeddings.projection.weight" for k in keys):
        return "huggingface"
    if "encoder.patch_embed.proj.weight" in keys and "encoder.dist_token" in keys:
        return "ssl-bench"
    return "unknown"


def official_to_ours(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official AST / SSAST keys (without ``module.``) -> ours; also the keys left unused."""
    out, unused = {}, []
    for key, value in state.items():
        if key.startswith("v.head.") or key.startswith("v.head_dist."):
            unused.append(key)  # the ImageNet heads DeiT carries; AST never uses them
        elif key.startswith("v."):
            out["encoder." + key[2:]] = value
        elif key.startswith("mlp_head."):
            out["head." + key[len("mlp_head."):]] = value
        else:
            unused.append(key)  # SSAST's p_input_*dim, mask_embed, cpredlayer, gpredlayer
    return out, unused


def hf_to_ours(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Hugging Face AST keys -> ours, fusing q/k/v into ``attn.qkv``; also the keys left unused."""
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    qkv: dict[tuple[int, str], dict[int, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        name = key.removeprefix(HF_PREFIX)
        if name in _HF_SINGLE:
            out[_HF_SINGLE[name]] = value
            continue
        for pattern in _HF_QKV:
            m = pattern.match(name)
            if m:
                qkv.setdefault((int(m.group(1)), m.group(3)), {})[_QKV_INDEX[m.group(2)]] = (key, value)
                break
        else:
            for pattern, ours in _HF_LAYER:
                m = pattern.match(name)
                if m:
                    out[f"encoder.blocks.{m.group(1)}.{ours}.{m.group(2)}"] = value
                    break
            else:
                unused.append(key)
    for (layer, kind), parts in sorted(qkv.items()):
        if len(parts) == 3:
            out[f"encoder.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[i][1] for i in range(3)], dim=0)
        else:  # an incomplete triple cannot be fused: report it rather than guess
            unused.extend(k for k, _ in parts.values())
    return out, unused


def ours_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our encoder/head keys -> the official DataParallel layout (for exporting and tests)."""
    out = {}
    for key, value in state.items():
        if key.startswith("encoder."):
            out["module.v." + key[len("encoder."):]] = value
        elif key.startswith("head."):
            out["module.mlp_head." + key[len("head."):]] = value
    return out


# --------------------------------------------------------------------------- grids
def _grid_from_hf_config(cfg: dict[str, Any]) -> tuple[int, int]:
    return patch_grid(
        int(cfg.get("max_length", 1024)), int(cfg.get("num_mel_bins", 128)), int(cfg.get("patch_size", 16)),
        int(cfg.get("time_stride", 10)), int(cfg.get("frequency_stride", 10)),
    )


def _source_grid(n_patch: int, encoder: Any, path: Path, state: dict[str, torch.Tensor],
                 hint: tuple[int, int] | None) -> tuple[int, int]:
    """The ``(n_time, n_freq)`` grid a checkpoint's position table was stored for."""
    candidates = []
    if hint is not None:
        candidates.append(hint)
    if "p_input_tdim" in state and "p_input_fdim" in state:
        # SSAST records its pretraining input; its patches did not overlap (stride = patch)
        p = encoder.patch_size
        candidates.append((int(state["p_input_tdim"]) // p, int(state["p_input_fdim"]) // p))
    candidates.append(encoder.grid)
    candidates.append(encoder.grid_for(*OFFICIAL_INPUT))
    for grid in candidates:
        if grid[0] * grid[1] == n_patch:
            return grid
    n_freq = encoder.grid[1]
    if n_patch % n_freq == 0:  # same frequency geometry, another length
        return n_patch // n_freq, n_freq
    raise CheckpointError(
        f"{path}: pos_embed has {n_patch} patch rows, which fits no grid of this model "
        f"(frequency patches {n_freq}, model grid {encoder.grid[1]} x {encoder.grid[0]}); "
        f"set encoder.patch_size / freq_stride / time_stride and frontend.num_bins to the checkpoint's"
    )


def _fit_pos_embed(state: dict[str, torch.Tensor], model: Any, path: Path, raw: dict[str, torch.Tensor],
                   hint: tuple[int, int] | None) -> None:
    key = "encoder.pos_embed"
    if key not in state:
        return
    table = state[key]
    own = model.encoder.pos_embed
    if table.ndim != 3 or table.shape[0] != 1 or table.shape[2] != own.shape[2]:
        raise CheckpointError(
            f"{path}: {key} has shape {tuple(table.shape)}; the model expects [1, N, {own.shape[2]}] "
            f"(encoder.dim {own.shape[2]})"
        )
    if table.shape == own.shape and hint is None:
        return
    src = _source_grid(table.shape[1] - NUM_PREFIX_TOKENS, model.encoder, path, raw, hint)
    state[key] = adapt_pos_embed(table.float(), src, model.encoder.grid).to(table.dtype)


def _prepare_head(model: Any, state: dict[str, torch.Tensor], unused: list[str], eps: float | None) -> None:
    """Give the model a head sized for the checkpoint's, or set the checkpoint's head aside."""
    if "head.1.weight" not in state:
        return
    n = state["head.1.weight"].shape[0]
    if model.head is None:
        model.set_head(n)
    elif model.head[1].out_features != n:
        # the model already has a head for another task: keep it, report the checkpoint's
        for k in [k for k in state if k.startswith("head.")]:
            unused.append(k)
            del state[k]
        return
    if eps is not None:
        model.head[0].eps = eps


# --------------------------------------------------------------------------- entry points
def load_checkpoint(model: Any, path: str | Path) -> CheckpointReport:
    """Load an official, Hugging Face, SSAST or ssl-bench AST checkpoint into ``model``.

    Returns a :class:`~ssl_bench.checkpoint.CheckpointReport` (loaded, missing, unexpected
    keys; unused keys of the source, such as the ImageNet heads, are listed as unexpected).
    Raises :class:`~ssl_bench.checkpoint.CheckpointError` naming the file and the keys for a
    checkpoint of another model or with shapes this model cannot take.
    """
    path = Path(path)
    file = weights_file(path)
    hf_config = _hf_config_near(path)
    obj = safe_load(file)
    hint: tuple[int, int] | None = None
    head_eps: float | None = None
    if is_ssl_bench(obj):
        config = obj.get("config") or {}
        encoder_cfg = config.get("encoder") or {}
        if encoder_cfg.get("name") != "ast":
            raise CheckpointError(
                f"{file}: an ssl-bench checkpoint of model {config.get('model')!r} with encoder "
                f"{encoder_cfg.get('name')!r}, not of an AST encoder"
            )
        state = dict(obj["model"])
        unused: list[str] = []
        fmt = "ssl-bench"
        hint = _ssl_bench_grid(config)
    else:
        raw = _unwrap(obj, file)
        layout = detect_layout(raw)
        if layout == "official":
            state, unused = official_to_ours(raw)
            fmt, head_eps = "official AST", OFFICIAL_HEAD_EPS
        elif layout == "huggingface":
            state, unused = hf_to_ours(raw)
            fmt = "Hugging Face AST"
            if hf_config is not None:
                hint = _grid_from_hf_config(hf_config)
                head_eps = float(hf_config.get("layer_norm_eps", 1e-12))
            else:
                head_eps = model.encoder.cfg.eps
        elif layout == "ssl-bench":
            state, unused, fmt = dict(raw), [], "state-dict"
        elif layout == "imagenet":  # the AST paper's init: adapted to this model's audio grid here, once
            state, unused = timm_to_ours(raw, model.encoder, file, model.encoder.cfg.init_channels)
            fmt = "ImageNet ViT/DeiT (timm layout)"
        else:
            sample = ", ".join(sorted(raw)[:6])
            raise CheckpointError(
                f"{file}: not an AST checkpoint: expected official keys (module.v.patch_embed...), "
                f"Hugging Face keys (audio_spectrogram_transformer.embeddings...), an ssl-bench AST "
                f"checkpoint or a timm ViT/DeiT (cls_token, pos_embed, patch_embed.proj...); "
                f"found {sample}{' ...' if len(raw) > 6 else ''}"
            )
    raw_for_grid = state if fmt == "ssl-bench" else raw
    _fit_pos_embed(state, model, file, raw_for_grid, hint)
    _prepare_head(model, state, unused, head_eps)
    report = load_state(model, state, file, fmt)
    report.unexpected = list(report.unexpected) + unused
    return report


def _ssl_bench_grid(config: dict[str, Any]) -> tuple[int, int] | None:
    """The encoder grid an ssl-bench AST checkpoint was trained with, from its saved config."""
    enc, front = config.get("encoder") or {}, config.get("frontend") or {}
    frames, bins = front.get("num_frames"), front.get("num_bins")
    if frames is None or bins is None:
        return None
    return patch_grid(int(frames), int(bins), int(enc.get("patch_size", 16)),
                      int(enc.get("time_stride", 10)), int(enc.get("freq_stride", 10)))


def checkpoint_overrides(path: str | Path) -> dict[str, Any]:
    """Dotted settings the checkpoint at ``path`` dictates, for building a matching model.

    * Hugging Face directory (or a weights file next to an AST ``config.json``): sizes,
      ``patch_size``, strides, ``layer_norm_eps``, ``max_length`` -> ``frontend.num_frames``,
      ``num_mel_bins`` -> ``frontend.num_bins``; with a ``preprocessor_config.json`` also its
      ``mean``/``std``/``sampling_rate``.
    * official / SSAST / bare Hugging Face files: ``dim``, ``depth``, ``mlp_ratio`` and
      ``patch_size`` from the tensor shapes, ``heads = dim // 64`` (every released AST and
      DeiT uses 64-dim heads), and ``frontend.num_frames`` from the position table's rows with
      the released geometry (128 bins, stride 10): a file fine-tuned at 512 frames builds a
      512-frame model, so its table is used as stored instead of being stretched to another
      length at load and cropped back at run time.  Strides cannot be read from the weights.
    * ssl-bench AST checkpoints: the saved encoder settings, ``frontend.num_bins`` and
      ``frontend.num_frames``.

    A run on a task sizes the input from the task instead (its recipe or its clip length:
    :func:`ssl_bench.model.checkpoint_settings`); the table is then adapted once, at load,
    from the checkpoint's own grid.

    Anything else gives ``{}`` (``load_checkpoint`` then says what is wrong with it).
    """
    path = Path(path)
    cfg = _hf_config_near(path)
    if cfg is not None:
        return _overrides_from_hf_config(cfg, path if path.is_dir() else path.parent)
    obj = safe_load(weights_file(path))
    if is_ssl_bench(obj):
        config = obj.get("config") or {}
        enc = dict(config.get("encoder") or {})
        if enc.pop("name", None) != "ast":
            return {}
        enc.pop("drop_path", None)  # a training setting, not architecture
        out = {f"encoder.{k}": v for k, v in enc.items()}
        front = config.get("frontend") or {}
        for key in ("num_bins", "num_frames"):  # the input the saved position table was made for
            if front.get(key) is not None:
                out[f"frontend.{key}"] = front[key]
        return out
    try:
        raw = _unwrap(obj, path)
    except CheckpointError:
        return {}
    layout = detect_layout(raw)
    if layout == "official":
        state, _ = official_to_ours(raw)
    elif layout == "huggingface":
        state, _ = hf_to_ours(raw)
    elif layout == "imagenet":  # sizes only: an image's position grid says nothing of the audio length
        state = {"encoder." + k: v for k, v in raw.items() if k.startswith(("patch_embed.", "blocks."))}
        return {k: v for k, v in _overrides_from_shapes(state).items() if not k.startswith("frontend.")}
    else:
        return {}
    return _overrides_from_shapes(state)


def frames_for_time_patches(n_time: int, patch_size: int, stride: int) -> int:
    """An input length (frames) whose patch grid has ``n_time`` time columns.

    ``stride`` consecutive lengths share a grid (the conv never sees the frames past the last
    patch); the one with the most factors of two is taken, so the released grids give the
    lengths they were trained on (101 -> 1024, 50 -> 512, 12 -> 128)."""
    low = (n_time - 1) * stride + patch_size
    return max(range(low, low + stride), key=lambda n: ((n & -n), -n))


def _official_frames(state: dict[str, torch.Tensor], patch_size: int) -> int | None:
    """The input length an official (or bare Hugging Face) position table was stored for,
    with the released geometry: 128 mel bins, stride 10 in both axes."""
    table = state.get("encoder.pos_embed")
    if table is None or table.ndim != 3:
        return None
    n_patch = table.shape[1] - NUM_PREFIX_TOKENS
    n_freq = (OFFICIAL_INPUT[1] - patch_size) // OFFICIAL_STRIDE + 1
    if n_patch <= 0 or n_patch % n_freq:
        return None
    return frames_for_time_patches(n_patch // n_freq, patch_size, OFFICIAL_STRIDE)


def _overrides_from_shapes(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    conv = state.get("encoder.patch_embed.proj.weight")
    if conv is None or conv.ndim != 4:
        return out
    dim = conv.shape[0]
    out["encoder.dim"] = dim
    out["encoder.patch_size"] = conv.shape[-1]
    frames = _official_frames(state, int(conv.shape[-1]))
    if frames is not None:  # the model adopts the checkpoint's input length unless told otherwise
        out["frontend.num_frames"] = frames
    depth = len({k.split(".")[2] for k in state if k.startswith("encoder.blocks.")})
    if depth:
        out["encoder.depth"] = depth
    fc1 = state.get("encoder.blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        out["encoder.mlp_ratio"] = fc1.shape[0] / dim
    out["encoder.qkv_bias"] = "encoder.blocks.0.attn.qkv.bias" in state if depth else True
    if dim % 64 == 0:
        out["encoder.heads"] = dim // 64
    return out


def _overrides_from_hf_config(cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{folder / 'config.json'}: hidden_act {act!r} is not supported (AST uses 'gelu')")
    hidden = int(cfg.get("hidden_size", 768))
    out: dict[str, Any] = {
        "encoder.dim": hidden,
        "encoder.depth": int(cfg.get("num_hidden_layers", 12)),
        "encoder.heads": int(cfg.get("num_attention_heads", 12)),
        "encoder.mlp_ratio": int(cfg.get("intermediate_size", 4 * hidden)) / hidden,
        "encoder.qkv_bias": bool(cfg.get("qkv_bias", True)),
        "encoder.patch_size": int(cfg.get("patch_size", 16)),
        "encoder.freq_stride": int(cfg.get("frequency_stride", 10)),
        "encoder.time_stride": int(cfg.get("time_stride", 10)),
        "encoder.eps": float(cfg.get("layer_norm_eps", 1e-12)),
        "frontend.num_frames": int(cfg.get("max_length", 1024)),
        "frontend.num_bins": int(cfg.get("num_mel_bins", 128)),
    }
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            p = json.loads(pre.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{pre}: not readable JSON ({exc})") from None
        if p.get("do_normalize", True) and p.get("mean") is not None and p.get("std") is not None:
            out["frontend.mean"] = float(p["mean"])
            out["frontend.std"] = float(p["std"])
        if p.get("sampling_rate") is not None:
            out["frontend.sample_rate"] = int(p["sampling_rate"])
    return out

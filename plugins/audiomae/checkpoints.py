"""Import AudioMAE checkpoints: the official releases and ssl-bench's own files.

Formats, detected from the keys (never from the file name):

* official ``pretrained.pth``: ``{'model': sd, 'args': argparse.Namespace, ...}`` with encoder
  keys (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``) and
  decoder keys (``mask_token``, ``decoder_embed.*``, ``decoder_pos_embed``,
  ``decoder_blocks.N.*``, ``decoder_norm.*``, ``decoder_pred.*``);
* official ``finetuned.pth``: the encoder keys without ``norm`` plus ``fc_norm.*`` and
  ``head.*`` (527 AudioSet classes), mapped onto ``model.head`` (``head.0`` = ``fc_norm``,
  ``head.1`` = ``head``); the encoder's final norm is removed as in the release;
* ssl-bench checkpoints (:func:`ssl_bench.checkpoint.save_model`) and bare state dicts with
  our key names.

Files are read with :func:`ssl_bench.checkpoint.safe_load` (``weights_only`` plus an
allow-list holding ``argparse.Namespace``).  Fixed position tables of a longer checkpoint are
cropped to the model's grid following the release's layout (:func:`.positions.crop_table`), so
the 10 s (1024-frame) weights serve 5 s and 1 s models.  A decoder of the wrong kind is
refused rather than silently filled (the official demo's trap: shifted-window weights share
``norm1``/``attn.qkv``/``mlp`` names with global blocks but mean something else).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ssl_bench.checkpoint import CheckpointError, CheckpointReport, is_ssl_bench, load_state, safe_load
from ssl_bench.files import file_stamp

from .decoders import WINDOW_DECODERS, WindowDecoder
from .positions import crop_table

ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
DECODER_MAP = {
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.pos_embed",
    "decoder_embed.": "decoder.embed.",
    "decoder_blocks.": "decoder.blocks.",
    "decoder_norm.": "decoder.norm.",
    "decoder_pred.": "decoder.pred.",
}
HEAD_MAP = {"fc_norm.": "head.0.", "head.": "head.1."}
#: Parts of an SSLModel that hold no learned weights; never reported as missing.
UNLEARNED = ("frontend.", "masker.", "objective.", "finetune_masker.")


def official_key(key: str) -> str | None:
    """Official AudioMAE key -> ssl-bench key (``None`` when it has no counterpart)."""
    if key in ("cls_token", "pos_embed") or key.startswith(ENCODER_PREFIXES[2:]):
        return "encoder." + key
    for src, dst in {**DECODER_MAP, **HEAD_MAP}.items():
        if key == src or (src.endswith(".") and key.startswith(src)):
            return dst + key[len(src):]
    return None


def _short(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def detect(obj: Any, path: Path) -> tuple[str, dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(format, state dict, ssl-bench config or None)`` of a loaded checkpoint object."""
    if is_ssl_bench(obj):
        return "ssl-bench", obj["model"], obj.get("config")
    state = obj.get("model") if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: not a checkpoint with a state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    keys = list(tensors)
    if any(k.startswith("encoder.") for k in keys):
        return "state-dict", tensors, None
    if "patch_embed.proj.weight" in tensors and any(k.startswith("blocks.") for k in keys):
        if any(k == "mask_token" or k.startswith("decoder_") for k in keys):
            return "audiomae-pretrained", tensors, None
        if "head.weight" in tensors or "fc_norm.weight" in tensors:
            return "audiomae-finetuned", tensors, None
        return "audiomae-encoder", tensors, None
    hint = ""
    if any(k.startswith(("module.v.", "v.", "audio_spectrogram_transformer.")) for k in keys):
        hint = " (it looks like an AST checkpoint: use --model ast)"
    raise CheckpointError(
        f"{path}: not an AudioMAE checkpoint{hint}: found keys {_short(sorted(keys))}; expected the "
        "official names (cls_token, pos_embed, patch_embed.proj.weight, blocks.N.*) or ssl-bench's (encoder.*)"
    )


def _decoder_kind(state: dict[str, torch.Tensor], config: dict[str, Any] | None) -> str | None:
    dec = [k for k in state if k.startswith("decoder.blocks.")]
    if not dec:
        return None
    if config and isinstance(config.get("decoder"), dict):
        return config["decoder"].get("name")
    windowed = any(".attn.tau" in k or ".attn.meta_mlp." in k for k in dec)
    return "shifted-window" if windowed else "global"


def _check_same_encoder(model: Any, config: dict[str, Any] | None, path: Path) -> None:
    """An ssl-bench checkpoint of another encoder (e.g. AST's) is refused by name, not by shapes."""
    if not isinstance(config, dict) or not isinstance(config.get("encoder"), dict):
        return
    theirs = config["encoder"].get("name")
    ours = (model.config.get("encoder") or {}).get("name") if isinstance(model.config, dict) else None
    if theirs and ours and theirs != ours:
        raise CheckpointError(
            f"{path}: an ssl-bench checkpoint of model {config.get('model')!r} with encoder {theirs!r}, "
            f"but this model's encoder is {ours!r}; use --model {config.get('model')}"
        )


def _check_decoder(model: Any, state: dict[str, torch.Tensor], config: dict[str, Any] | None, path: Path) -> None:
    """Refuse decoder weights of another kind than the model's decoder."""
    if getattr(model, "decoder", None) is None:
        return
    ckpt_kind = _decoder_kind(state, config)
    if ckpt_kind is None:
        return
    model_kind = (model.config.get("decoder") or {}).get("name") if isinstance(model.config, dict) else None
    model_windowed = isinstance(model.decoder, WindowDecoder)
    ckpt_windowed = ckpt_kind in WINDOW_DECODERS or any(".attn.tau" in k for k in state)
    if ckpt_windowed != model_windowed or (model_kind and ckpt_kind != model_kind):
        evidence = [k for k in state if ".attn.tau" in k or ".attn.meta_mlp." in k][:2] or \
            [k for k in state if k.startswith("decoder.blocks.")][:2]
        raise CheckpointError(
            f"{path}: holds a {ckpt_kind!r} decoder ({', '.join(evidence)}) but the model's decoder is "
            f"{model_kind or type(model.decoder).__name__!r}; build the model with decoder={ckpt_kind} "
            "(or decoder=none to load only the encoder)"
        )


def _fit_position_tables(model: Any, state: dict[str, torch.Tensor], path: Path) -> list[str]:
    """Crop longer fixed position tables to the model's grid (in place).

    Returns the keys for which the model keeps its own table (the checkpoint's is shorter).
    """
    own = model.state_dict()
    kept: list[str] = []
    for key, part in (("encoder.pos_embed", model.encoder), ("decoder.pos_embed", getattr(model, "decoder", None))):
        if key not in state or key not in own or part is None or state[key].shape == own[key].shape:
            continue
        table = state[key]
        if table.ndim != 3 or table.shape[-1] != own[key].shape[-1]:
            continue  # load_state reports the mismatch with both shapes
        mode = getattr(part, "pos_mode", None) or part.cfg.pos_embed
        try:
            cropped = crop_table(table, part.grid, part.layout, mode, int(own[key].shape[1] - part.grid[0] * part.grid[1]))
        except ValueError as exc:
            raise CheckpointError(
                f"{path}: {key} {tuple(table.shape)} cannot serve the model's grid {part.grid} "
                f"(model expects {tuple(own[key].shape)}): {exc}"
            ) from None
        if cropped is None:
            # The checkpoint is shorter than the model; the fixed table is the same formula, so
            # the model keeps its own (longer) one.
            del state[key]
            kept.append(key)
        else:
            state[key] = cropped
    return kept


#: The release's head counts per width (not recoverable from shapes): ViT-S/B/L/H.
RELEASE_HEADS = {384: 6, 768: 12, 1024: 16, 1280: 16}

# One-slot cache so that create_model's checkpoint_overrides() and load_checkpoint() read a
# (possibly 1 GB) file once.
_LAST: dict[str, Any] = {}


def _read(path: Path) -> Any:
    key = (str(path.resolve()), file_stamp(path.stat())) if path.is_file() else None
    if key is not None and _LAST.get("key") == key:
        obj = _LAST.pop("obj")
        _LAST.clear()
        return obj
    return safe_load(path)


def checkpoint_overrides(path: str | Path) -> dict[str, Any]:
    """Encoder settings a checkpoint dictates (``ModelSpec.checkpoint_overrides``).

    From the official files: width, depth, heads (the release's per width), patch size, MLP
    ratio and whether the final norm exists (the fine-tuned release has none).  From ssl-bench
    checkpoints: the saved encoder settings.  Only encoder keys are given: the decoder may be
    switched off or replaced by the user, and a mismatching decoder is reported by the importer.
    """
    path = Path(path)
    obj = safe_load(path)
    _LAST.clear()
    _LAST.update(key=(str(path.resolve()), file_stamp(path.stat())), obj=obj)  # rewritten in place: read again
    fmt, state, config = detect(obj, path)
    if fmt == "ssl-bench" and isinstance(config, dict) and isinstance(config.get("encoder"), dict):
        enc = config["encoder"]
        if enc.get("name") != "vit":
            return {}
        return {f"encoder.{k}": v for k, v in enc.items() if k not in ("name", "drop_path")}
    if not fmt.startswith("audiomae-"):
        return {}
    weight = state["patch_embed.proj.weight"]
    dim = int(weight.shape[0])
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    out: dict[str, Any] = {
        "encoder.dim": dim,
        "encoder.depth": depth,
        "encoder.heads": RELEASE_HEADS.get(dim, max(1, dim // 64)),
        "encoder.patch_size": int(weight.shape[-1]),
        "encoder.final_norm": "norm.weight" in state,
    }
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        out["encoder.mlp_ratio"] = fc1.shape[0] / dim
    return out


def load_checkpoint(model: Any, path: str | Path, strict: bool = False) -> CheckpointReport:
    """Load an official or ssl-bench AudioMAE checkpoint into ``model`` (an ``SSLModel``).

    Returns a :class:`CheckpointReport` (loaded, missing, unexpected keys).  Raises
    :class:`CheckpointError` with one line naming the file for an unreadable or truncated file,
    a checkpoint of another model, a decoder of the wrong kind, or shapes that do not fit.
    ``strict``: also raise when keys are missing or unexpected.
    """
    path = Path(path)
    obj = _read(path)
    fmt, raw, config = detect(obj, path)
    _check_same_encoder(model, config, path)
    unexpected: list[str] = []
    source: dict[str, str] = {}  # our key -> the checkpoint's, so reports use the file's names
    if fmt.startswith("audiomae-"):
        state = {}
        for k, v in raw.items():
            new = official_key(k)
            if new is None:
                unexpected.append(k)
            else:
                state[new] = v
                source[new] = k
    else:
        state = dict(raw)

    has_head = "head.1.weight" in state
    if has_head:
        n_classes = int(state["head.1.weight"].shape[0])
        if model.head is None:
            model.set_head(n_classes).to(model.encoder.cls_token.device)
        elif model.head[1].out_features != n_classes:
            # A head for other classes: keep the model's, report the checkpoint's as unused.
            unexpected += [k for k in state if k.startswith("head.")]
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        if "encoder.norm.weight" not in state and isinstance(model.encoder.norm, torch.nn.LayerNorm):
            # Fine-tuned weights were trained without the final norm (release: global_pool deletes it).
            model.encoder.remove_final_norm()
            if isinstance(model.config.get("encoder"), dict):
                model.config["encoder"]["final_norm"] = False

    if getattr(model, "decoder", None) is None:
        unexpected += [k for k in state if k.startswith("decoder.")]
        state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    _check_decoder(model, state, config, path)
    own_tables = _fit_position_tables(model, state, path)
    report = load_state(model, state, path, fmt)
    report.missing = [k for k in report.missing if not k.startswith(UNLEARNED) and k not in own_tables]
    report.unexpected = sorted({source.get(k, k) for k in report.unexpected + unexpected})
    if not report.loaded:
        raise CheckpointError(f"{path}: no tensor of the checkpoint fits the model (keys {_short(sorted(raw))})")
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(str(report))
    return report

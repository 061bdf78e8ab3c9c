"""Load the released BEATs checkpoints: ``{"cfg": dict, "model": state dict}`` files.

* ``cfg`` is the plain dict the release builds its ``BEATsConfig`` from.  Keys it does not set
  take that class's defaults (:data:`CLASS_DEFAULTS`, which are *not* the released model's: a
  cfg without ``max_distance`` means 1280, not 800), so :func:`checkpoint_overrides` fills them
  in before mapping the architecture onto ``encoder.*`` settings.
* ``model`` keys are the encoder's own names (``patch_embedding.weight``,
  ``encoder.layers.N.self_attn.q_proj.weight`` ...) and load under ``encoder.``; a fine-tuned
  file (``finetuned_model``) adds ``predictor.{weight,bias}``, loaded as the model's head
  (:class:`PredictorHead`: the release applies the Linear to every token and averages, which
  equals the Linear of the mean-pooled tokens); its ``label_dict`` is kept on the head.
* Loading is strict: a missing or unexpected key, or a shape that does not fit, is an error
  naming the file and the keys.  The relative position table is one module shared by every
  layer; the file lists it per layer, and copies that differ are refused.

ssl-bench checkpoints of a ``beats`` model load as usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_bench.checkpoint import CheckpointError, CheckpointReport, is_ssl_bench, load_into, load_state, safe_load

#: ``BEATsConfig``'s class defaults (the release's BEATs.py), used for keys a cfg leaves out.
CLASS_DEFAULTS: dict[str, Any] = {
    "input_patch_size": -1, "embed_dim": 512, "conv_bias": False,
    "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
    "activation_fn": "gelu", "layer_wise_gradient_decay_ratio": 1.0, "layer_norm_first": False, "deep_norm": False,
    "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.0,
    "dropout_input": 0.0, "conv_pos": 128, "conv_pos_groups": 16, "relative_position_embedding": False,
    "num_buckets": 320, "max_distance": 1280, "gru_rel_pos": False, "finetuned_model": False,
    "predictor_dropout": 0.1, "predictor_class": 527,
}

#: cfg key -> our ``encoder.*`` setting.
CFG_TO_SETTING = {
    "encoder_embed_dim": "dim", "encoder_layers": "depth", "encoder_attention_heads": "heads",
    "encoder_ffn_embed_dim": "ffn_dim", "embed_dim": "embed_dim", "input_patch_size": "patch_size",
    "conv_bias": "conv_bias", "conv_pos": "conv_pos", "conv_pos_groups": "conv_pos_groups",
    "deep_norm": "deep_norm", "relative_position_embedding": "relative_position_embedding",
    "gru_rel_pos": "gru_rel_pos", "num_buckets": "num_buckets", "max_distance": "max_distance",
}

PREFIX = "encoder."
TABLE = "self_attn.relative_attention_bias.weight"


class PredictorHead(nn.Sequential):
    """The release's fine-tuned classifier as an ssl-bench head: no norm, one Linear
    (``head.1`` = the release's ``predictor``); the model's logits are its output, the
    release's probabilities their sigmoid.  ``labels``: the file's ``label_dict``, if any."""

    def __init__(self, dim: int, num_classes: int, labels: dict[int, str] | None = None):
        super().__init__(nn.Identity(), nn.Linear(dim, num_classes))
        self.labels = dict(labels or {})


def read_release(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any]:
    """``(cfg with class defaults filled in, model state dict, label_dict)`` of a release file."""
    obj = safe_load(path)
    if not (isinstance(obj, dict) and isinstance(obj.get("cfg"), dict) and isinstance(obj.get("model"), dict)):
        found = ", ".join(sorted(map(str, obj))[:6]) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a BEATs release file: expected a dict with 'cfg' (a dict) and 'model' "
                              f"(a state dict); found {found}")
    return {**CLASS_DEFAULTS, **obj["cfg"]}, dict(obj["model"]), obj.get("label_dict")


def settings_from_cfg(cfg: dict[str, Any], path: Path | str = "checkpoint") -> dict[str, Any]:
    """Dotted ``encoder.*`` settings for a release cfg (class defaults filled in); refuses a
    cfg this implementation does not compute the same way."""
    if cfg.get("layer_norm_first"):
        raise CheckpointError(f"{path}: cfg sets layer_norm_first=True (pre-LN); only the released post-LN "
                              "BEATs is implemented")
    if cfg.get("activation_fn") != "gelu":
        raise CheckpointError(f"{path}: cfg sets activation_fn={cfg.get('activation_fn')!r}; "
                              "only 'gelu' is implemented")
    if int(cfg.get("input_patch_size", -1)) <= 0:
        raise CheckpointError(f"{path}: cfg has input_patch_size={cfg.get('input_patch_size')}; "
                              "the release's class default (-1) builds no model")
    return {f"encoder.{ours}": cfg[key] for key, ours in CFG_TO_SETTING.items()}


def checkpoint_overrides(path: str | Path) -> dict[str, Any]:
    """The ``encoder.*`` settings a release file's cfg dictates (or an ssl-bench checkpoint's
    saved encoder settings); ``{}`` for anything else (``load_checkpoint`` then says why)."""
    path = Path(path)
    obj = safe_load(path)
    if is_ssl_bench(obj):
        enc = dict((obj.get("config") or {}).get("encoder") or {})
        if enc.pop("name", None) != "beats":
            return {}
        return {f"encoder.{k}": v for k, v in enc.items()}
    if not (isinstance(obj, dict) and isinstance(obj.get("cfg"), dict)):
        return {}
    return settings_from_cfg({**CLASS_DEFAULTS, **obj["cfg"]}, path)


def _shared_table(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse per-layer copies of the shared relative position table that differ."""
    copies = [(k, v) for k, v in state.items() if k.endswith(TABLE)]
    for key, value in copies[1:]:
        if value.shape != copies[0][1].shape or not torch.equal(value, copies[0][1]):
            raise CheckpointError(f"{path}: {key} differs from {copies[0][0]}; BEATs shares one relative position "
                                  "table across layers, so the copies must be equal")


def load_checkpoint(model: Any, path: str | Path) -> CheckpointReport:
    """Load a BEATs release file (strictly) or an ssl-bench ``beats`` checkpoint into ``model``."""
    path = Path(path)
    obj = safe_load(path)
    if is_ssl_bench(obj):
        name = ((obj.get("config") or {}).get("encoder") or {}).get("name")
        if name != "beats":
            raise CheckpointError(f"{path}: an ssl-bench checkpoint with encoder {name!r}, not of a BEATs encoder")
        saved = obj["model"]
        if "head.1.weight" in saved and "head.0.weight" not in saved and model.head is None:
            model.head = PredictorHead(model.encoder.dim, saved["head.1.weight"].shape[0])  # a release's predictor
        return load_into(model, path)
    cfg, weights, labels = read_release(path)
    wanted = settings_from_cfg(cfg, path)
    have = model.encoder.cfg
    differ = [f"{k} {v!r} (model {getattr(have, k.split('.', 1)[1])!r})" for k, v in wanted.items()
              if getattr(have, k.split(".", 1)[1]) != v]
    if differ:
        raise CheckpointError(f"{path}: the file's cfg needs other encoder settings: {'; '.join(differ)}; "
                              "build the model with the checkpoint (create_model('beats', checkpoint=...), "
                              "or ssl-bench run --checkpoint) so they are read from it")
    _shared_table(weights, path)
    state = {PREFIX + k: v for k, v in weights.items() if not k.startswith("predictor.")}
    if "predictor.weight" in weights:
        n = weights["predictor.weight"].shape[0]
        if model.head is None or not isinstance(model.head, PredictorHead) or model.head[1].out_features != n:
            model.head = PredictorHead(model.encoder.dim, n, labels if isinstance(labels, dict) else None)
        state.update({"head.1." + k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith("predictor.")})
    elif cfg.get("finetuned_model"):
        raise CheckpointError(f"{path}: cfg says finetuned_model=True but there is no predictor.weight")
    with_head = "head.1.weight" in state
    own = {k for k in model.state_dict() if k.startswith(PREFIX) or (with_head and k.startswith("head."))}
    missing = sorted(own - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        def strip(keys: list[str]) -> str:
            names = [k[len(PREFIX):] if k.startswith(PREFIX) else k.replace("head.1.", "predictor.") for k in keys]
            return ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "")

        parts = ([f"missing {len(missing)}: {strip(missing)}"] if missing else []) + \
            ([f"unexpected {len(unexpected)}: {strip(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{path}: does not fit the BEATs encoder its cfg describes; " + "; ".join(parts))
    # the encoder (and a predictor) were checked above; other slots, such as a task's head, keep theirs
    return load_state(model, state, path, "BEATs release")

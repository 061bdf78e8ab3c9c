"""wav2vec2 / HuBERT / WavLM weights: torchaudio files, Hugging Face directories, ssl-bench files.

* a **torchaudio** state dict (a bundle's file from the torch hub cache, e.g.
  ``wav2vec2_fairseq_base_ls960.pth``, or ``torchaudio_model.state_dict()`` saved by you): keys
  ``feature_extractor.*`` / ``encoder.*`` are our encoder's own names.  A bundle's file is
  recognised by its name and its architecture taken from the bundle; any other file's
  architecture is read from its shapes (heads: ``dim // 64`` unless ``--set encoder.heads``).
* a **Hugging Face** directory (``config.json`` + ``pytorch_model.bin`` / ``model.safetensors``
  of ``Wav2Vec2Model``, ``HubertModel``, ``WavLMModel`` or their ``...ForCTC``): the
  architecture comes from ``config.json`` through torchaudio's importer's own mapping and the
  weights are renamed as torchaudio's ``import_huggingface_model`` does, without needing
  ``transformers``.
* an **ssl-bench** checkpoint of the same model.

* a **fairseq** wav2vec2 / HuBERT checkpoint (``{"args" or "cfg", "model": state dict}``, or the
  bare state dict): keys renamed by torchaudio's fairseq importer (``_convert_state_dict``, what
  ``import_fairseq_model`` uses), the architecture read from the shapes as above.  Files whose
  ``cfg`` is an omegaconf object cannot be read without unpickling code (``weights_only``):
  convert those with ``torchaudio.models.wav2vec2.utils.import_fairseq_model`` (needs fairseq)
  and save the result's ``state_dict()``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from ssl_bench.checkpoint import CheckpointError, is_ssl_bench, load_into, load_state, safe_load

#: builder argument -> our encoder setting
BUILDER_KEYS = {
    "extractor_mode": "extractor_mode", "extractor_conv_layer_config": "conv_layers",
    "extractor_conv_bias": "conv_bias", "encoder_embed_dim": "dim", "encoder_projection_dropout": "projection_dropout",
    "encoder_pos_conv_kernel": "pos_conv_kernel", "encoder_pos_conv_groups": "pos_conv_groups",
    "encoder_num_layers": "depth", "encoder_num_heads": "heads", "encoder_attention_dropout": "attention_dropout",
    "encoder_ff_interm_features": "ff_dim", "encoder_ff_interm_dropout": "ff_dropout", "encoder_dropout": "dropout",
    "encoder_layer_norm_first": "layer_norm_first", "encoder_layer_drop": "layer_drop",
    "encoder_num_buckets": "num_buckets", "encoder_max_distance": "max_distance",
}
#: weight files of a Hugging Face model directory, in the order tried
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def bundle_names() -> list[str]:
    """Names of torchaudio's wav2vec2-family bundles (``torchaudio.pipelines``)."""
    import torchaudio.pipelines as P

    return sorted(n for n in dir(P) if n.isupper() and hasattr(getattr(P, n), "_params")
                  and getattr(getattr(P, n), "_model_type", None) in ("Wav2Vec2", "WavLM"))


def bundle(name: str) -> Any:
    import torchaudio.pipelines as P

    found = getattr(P, name, None)
    if found is None or not hasattr(found, "_params") or not hasattr(found, "_path"):
        raise CheckpointError(f"torchaudio:{name}: not a wav2vec2/HuBERT/WavLM bundle of torchaudio.pipelines; "
                              f"known: {', '.join(bundle_names())}")
    return found


def bundle_for_file(path: Path) -> Any | None:
    """The torchaudio bundle whose weight file is named like ``path``, if any."""
    import torchaudio.pipelines as P

    for name in bundle_names():
        b = getattr(P, name)
        if Path(str(b._path)).name == path.name:
            return b
    return None


def settings_from_builder(params: dict[str, Any], normalize: bool = False) -> dict[str, Any]:
    out = {f"encoder.{BUILDER_KEYS[k]}": ([list(c) for c in v] if k == "extractor_conv_layer_config" and v else v)
           for k, v in params.items() if k in BUILDER_KEYS and v is not None}
    out["frontend.normalize"] = bool(normalize)
    return _with_encoder(out)


def _with_encoder(settings: dict[str, Any]) -> dict[str, Any]:
    """WavLM weights need WavLM's encoder, whichever of these models was asked for (its
    relative position settings say which)."""
    if "encoder.num_buckets" in settings:
        return {"encoder": "wavlm", **settings}
    return settings


def _hf_files(path: Path) -> tuple[dict[str, Any], Path]:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: a Hugging Face directory needs a readable config.json ({exc})") from None
    for name in HF_WEIGHTS:
        if (path / name).is_file():
            return cfg, path / name
    raise CheckpointError(f"{path}: no {' or '.join(HF_WEIGHTS)} beside config.json")


def hf_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """Our settings from a Hugging Face ``config.json``, through torchaudio's importer's mapping."""
    from torchaudio.models.wav2vec2.utils import import_huggingface as hf

    ns = SimpleNamespace(**cfg)
    try:
        params = hf._get_config_wavlm(ns) if _is_wavlm_config(cfg) else hf._get_config(ns)
    except AttributeError as exc:
        raise CheckpointError(f"config.json lacks a wav2vec2 setting: {exc}") from None
    return settings_from_builder(params, normalize=bool(cfg.get("do_normalize", False)) and
                                 bool(cfg.get("feat_extract_norm") == "layer"))


def _is_wavlm_config(cfg: dict[str, Any]) -> bool:
    return str(cfg.get("model_type", "")).lower() == "wavlm" or any("WavLM" in a for a in cfg.get("architectures", []))


def inferred_settings(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture settings read from a torchaudio state dict's shapes."""
    conv = []
    i = 0
    while f"feature_extractor.conv_layers.{i}.conv.weight" in state:
        w = state[f"feature_extractor.conv_layers.{i}.conv.weight"]
        conv.append([int(w.shape[0]), int(w.shape[2]), None])
        i += 1
    if not conv:
        raise CheckpointError("not a torchaudio wav2vec2 state dict (no feature_extractor.conv_layers.*)")
    # strides are not in the weights: the standard stack's, which every released model uses
    standard = [5, 2, 2, 2, 2, 2, 2]
    for j, c in enumerate(conv):
        c[2] = standard[j] if j < len(standard) else 2
    layer_norm_mode = "feature_extractor.conv_layers.1.layer_norm.weight" in state
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.transformer\.layers\.(\d+)\.", k)))
    dim = int(state["encoder.feature_projection.projection.weight"].shape[0])
    ff = int(state["encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"].shape[0])
    pos = next(v for k, v in state.items() if k.startswith("encoder.transformer.pos_conv_embed.conv.")
               and k.endswith(("weight_v", "original1")))
    out = {"encoder.conv_layers": conv, "encoder.conv_bias": "feature_extractor.conv_layers.0.conv.bias" in state,
           "encoder.extractor_mode": "layer_norm" if layer_norm_mode else "group_norm",
           "encoder.layer_norm_first": layer_norm_mode, "encoder.dim": dim, "encoder.depth": depth,
           "encoder.heads": dim // 64, "encoder.ff_dim": ff, "encoder.pos_conv_kernel": int(pos.shape[2]),
           "encoder.pos_conv_groups": dim // int(pos.shape[1])}
    rel = state.get("encoder.transformer.layers.0.attention.rel_attn_embed.weight")
    if rel is not None:  # WavLM: the relative position table is [buckets, heads]
        out["encoder.num_buckets"], out["encoder.heads"] = int(rel.shape[0]), int(rel.shape[1])
    return _with_encoder(out)


def checkpoint_overrides(path: Path) -> dict[str, Any]:
    """The architecture a checkpoint dictates (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        return hf_settings(_hf_files(path)[0])
    found = bundle_for_file(path)
    if found is not None:
        return settings_from_builder(found._params, normalize=bool(found._normalize_waveform))
    obj = safe_load(path)
    if is_ssl_bench(obj):
        enc = (obj.get("config") or {}).get("encoder") or {}
        return {f"encoder.{k}": v for k, v in enc.items() if k != "name"}
    state = torchaudio_state(obj, path)
    return inferred_settings(state)


def torchaudio_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A torchaudio ``Wav2Vec2Model`` state dict from a file's content (weight-norm keys in the
    parametrised form torch uses now; an ASR head ``aux.*`` left out)."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and ("args" in obj or "cfg" in obj):
        obj = obj["model"]  # a fairseq checkpoint
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    if any(re.match(r"(w2v_model\.)?(feature_extractor\.conv_layers\.\d+\.0\.weight|post_extract_proj\.)", k)
           for k in obj):
        from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

        try:
            obj = {k: v for k, v in _convert_state_dict(obj).items() if k != "label_embs_concat"}
        except ValueError as exc:
            raise CheckpointError(f"{path}: a fairseq checkpoint torchaudio's importer cannot map ({exc})") from None
    if any(k.startswith(("wav2vec2.", "hubert.", "wavlm.", "feature_projection.")) for k in obj):
        raise CheckpointError(f"{path}: a Hugging Face state dict; pass its directory (with config.json) instead")
    if not any(k.startswith("feature_extractor.") for k in obj):
        raise CheckpointError(f"{path}: not a torchaudio wav2vec2-family state dict (no feature_extractor.* keys)")
    out = {}
    for k, v in obj.items():
        if k.startswith("aux."):
            continue
        k = k.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
        k = k.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
        out[k] = v
    return out


def hf_state(path: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face directory's weights under torchaudio's names (as ``import_huggingface_model``)."""
    from torchaudio.models.wav2vec2.utils.import_huggingface import transform_wavlm_encoder_state

    cfg, weights = _hf_files(path)
    raw = safe_load(weights)
    prefix = next((p for p in ("wav2vec2.", "hubert.", "wavlm.") if any(k.startswith(p) for k in raw)), "")
    state = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    transformer = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if _is_wavlm_config(cfg):
        transform_wavlm_encoder_state(transformer, int(cfg["num_hidden_layers"]))
    out = {k: v for k, v in state.items() if k.startswith("feature_extractor.")}
    out.update({f"encoder.{k}": v for k, v in state.items() if k.startswith("feature_projection.")})
    out.update({f"encoder.transformer.{k}": v for k, v in transformer.items()})
    return torchaudio_state(out, path)


def load_checkpoint(model: Any, path: Path) -> Any:
    """Load a torchaudio file, a Hugging Face directory or an ssl-bench checkpoint into ``model``."""
    path = Path(path)
    if path.is_dir():
        state, fmt = hf_state(path), "huggingface"
    else:
        obj = safe_load(path)
        if is_ssl_bench(obj):
            return load_into(model, path)
        state = torchaudio_state(obj, path)
        found = bundle_for_file(path)
        fmt = f"torchaudio {found._path}" if found is not None else "torchaudio"
    report = load_state(model, {f"encoder.{k}": v for k, v in state.items()}, path, fmt)
    missing = [k for k in report.missing if k.startswith("encoder.")]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} encoder weights missing: {', '.join(missing[:6])}")
    return report

"""Any installed HEAR 2021 module as a frozen ssl-bench encoder (encoder ``hear``).

``--model hear --set encoder.module=NAME [--checkpoint FILE]``: the encoder imports ``NAME``,
calls ``NAME.load_model(FILE)``, or ``NAME.load_model()`` for the module's default weights as
the HEAR API allows (``model_file_path=""``), and embeds each clip's waveform (the ``waveform``
frontend, at the module's own ``sample_rate``, which the model adopts unless
``frontend.sample_rate`` is given) with ``NAME.get_scene_embeddings``: one token per clip, the
clip embedding.  Per-layer probes (``layers``) work when the module also has
``get_layer_embeddings(audio, model) -> [n, K, D]`` (modules ssl-bench exports do).  Its
frame-level output (:mod:`ssl_bench.frames`) is ``NAME.get_timestamp_embeddings``.

Rows name the weights by content: a file's SHA-256 prefix, or for default weights
(:func:`default_weights_id`) the SHA-256 of the module's source and of the loaded model's
tensors, with the module's name as ``init``.

The HEAR model is the encoder's child (``.model``): it moves with the encoder, its weights key
the embedding cache, and it is frozen (no gradients; fine-tuning is off for this model).  It
has no pretraining method and no random initialisation of its own: the runner says so and
writes no ``init=random`` baseline row.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

from ssl_bench.components import TIME_MAJOR, BuildContext, Component, EncoderOutput
from ssl_bench.config import ConfigError

REQUIRED = ("load_model", "get_scene_embeddings", "get_timestamp_embeddings")


def import_hear_module(name: str):
    """The installed HEAR module ``name``, checked for the API's functions."""
    if not name:
        raise ConfigError("model hear needs the HEAR module to evaluate: --set encoder.module=NAME")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"encoder.module={name}: cannot import it ({exc}); install the HEAR package first") from None
    except Exception as exc:  # noqa: BLE001 - the module's own code failed while importing: say where, in one line
        raise ConfigError(f"encoder.module={name}: importing it failed inside the module: {type(exc).__name__}: "
                          f"{exc} (at {_innermost(exc)}); the HEAR package may need older versions of the "
                          "libraries it imports") from exc
    missing = [f for f in REQUIRED if not callable(getattr(module, f, None))]
    if missing:
        raise ConfigError(f"encoder.module={name}: not a HEAR 2021 module, it has no {', '.join(missing)}")
    return module


def _innermost(exc: BaseException) -> str:
    """``file:line`` where ``exc`` was raised (its traceback's innermost frame)."""
    tb, where = exc.__traceback__, "unknown code"
    while tb is not None:
        where, tb = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}", tb.tb_next
    return where


def _call_load_model(api, name: str, *args) -> torch.nn.Module:
    """``api.load_model(*args)``; an exception inside the module's own code (a HEAR 2021 package
    meeting newer libraries, e.g. hearbaseline 2021.1.1 calling ``librosa.filters.mel``
    positionally, which librosa 0.10 and later refuse) as one line that names the module, the
    error and where it was raised (``--debug`` shows the traceback)."""
    try:
        return api.load_model(*args)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the third-party module's own failure, reported as such
        call = f"{name}.load_model({', '.join(repr(a) for a in args)})"
        raise ConfigError(f"{call} failed inside the module: {type(exc).__name__}: {exc} (at {_innermost(exc)}); "
                          "the HEAR package may need older versions of the libraries it imports") from exc


def load_hear_model(api, name: str, model_file: str = "") -> torch.nn.Module:
    """``api.load_model(model_file)``, or ``api.load_model()`` (the module's default weights)
    without a file; on the CPU, also inside a dry run on the meta device."""
    with torch.device("cpu"):  # a real load even in a dry run on the meta device: its size is the model's
        if model_file:
            return _call_load_model(api, name, model_file)
        try:
            params = list(inspect.signature(api.load_model).parameters.values())
        except (TypeError, ValueError):  # a builtin or C function: just call it
            params = []
        if params and params[0].default is inspect.Parameter.empty and params[0].kind in (
                inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            raise ConfigError(f"{name}.load_model takes a file and has no default weights: give it with "
                              "--checkpoint FILE")
        return _call_load_model(api, name)


def default_weights_id(api, model: torch.nn.Module) -> str:
    """The content id of a HEAR module's default weights: the SHA-256 prefix of its source file
    and of every tensor of the model ``load_model()`` returned (names, dtypes, shapes, bytes)."""
    from ssl_bench.protocols.embeddings import weights_hash
    from ssl_bench.provenance import ID_LENGTH

    h = hashlib.sha256()
    source = getattr(api, "__file__", None)
    if source and Path(source).is_file():
        h.update(Path(source).read_bytes())
    h.update(weights_hash(model).encode())
    return h.hexdigest()[:ID_LENGTH]


def derived_settings(config: dict) -> dict:
    """``ModelSpec.derived_settings`` of the ``hear`` model: the module's own sample rate (the
    audio is resampled to it, as s3prl does for HEAR modules) and, for its default weights,
    their content id."""
    encoder, frontend = config.get("encoder") or {}, config.get("frontend") or {}
    if encoder.get("name") != "hear" or not encoder.get("module"):
        return {}
    try:
        api = import_hear_module(str(encoder["module"]))
        model = load_hear_model(api, str(encoder["module"]), str(encoder.get("model_file") or ""))
    except ConfigError:  # not installed, or no default weights: building the encoder says so, in one line
        return {}
    out = {}
    if "sample_rate" in frontend and hasattr(model, "sample_rate"):
        out["frontend.sample_rate"] = int(model.sample_rate)
    if not encoder.get("model_file"):
        out["encoder.weights_id"] = default_weights_id(api, model)
    return out


class HearEncoder(Component):
    """A HEAR module's scene embeddings as encoder tokens; see the module docstring."""

    @dataclass
    class Config:
        module: str = ""  # the installed HEAR module (Python import name)
        model_file: str = ""  # what load_model takes; --checkpoint sets it ("": the module's default weights)
        weights_id: str = ""  # content id of the weights (set with them): keys caches by content

    layout = TIME_MAJOR
    num_prefix_tokens = 0
    depth = 0

    def __init__(self, cfg=None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        cfg, build = self.cfg, self.build
        self.api = import_hear_module(cfg.module)
        model = load_hear_model(self.api, cfg.module, cfg.model_file)
        #: the weights' identity when they are the module's own (no --checkpoint): see the module docstring
        self.weights_identity = None if cfg.model_file else (cfg.module, cfg.weights_id or
                                                             default_weights_id(self.api, model))
        for attr in ("sample_rate", "scene_embedding_size"):
            if not hasattr(model, attr):
                raise ConfigError(f"{cfg.module}.load_model returned a model without {attr!r} (HEAR 2021 API)")
        frontend = build.parts.get("frontend")
        rate = int(getattr(frontend, "sample_rate", model.sample_rate))
        if rate != int(model.sample_rate):
            raise ConfigError(f"HEAR module {cfg.module} takes audio at {model.sample_rate} Hz but the frontend gives "
                              f"{rate} Hz: add --set frontend.sample_rate={model.sample_rate}")
        if build.num_bins != 1:
            raise ConfigError("encoder hear reads waveforms: use the 'waveform' frontend")
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.dim = int(model.scene_embedding_size)
        self.layers = callable(getattr(self.api, "get_layer_embeddings", None))
        build.encoder_dim = self.dim
        build.grid = (1, 1)
        build.layout = TIME_MAJOR
        build.num_prefix_tokens = 0

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # a frozen import: no dropout, whatever the protocol asks
        return self

    def grid_for(self, num_frames: int, num_bins: int) -> tuple[int, int]:
        return 1, 1

    def patchify(self, spec: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"HEAR module {self.cfg.module} is a frozen import: it has no pretraining targets")

    @torch.no_grad()
    def forward(self, spec: torch.Tensor, mask: torch.Tensor | None = None, hidden_states: bool = False) -> EncoderOutput:
        if mask is not None:
            raise ConfigError(f"HEAR module {self.cfg.module} takes no token mask: set finetune.masker=none")
        audio = (spec[..., 0] if spec.ndim == 3 else spec).float()
        states = None
        if hidden_states:
            if not self.layers:
                raise ConfigError(f"HEAR module {self.cfg.module} exposes no per-layer embeddings "
                                  "(get_layer_embeddings): use the linear, knn or mlp protocols")
            per_layer = self.api.get_layer_embeddings(audio, self.model)  # [B, K, D]; the last is the embedding
            emb = per_layer[:, -1]
            states = tuple(per_layer[:, k:k + 1].float() for k in range(per_layer.shape[1] - 1))
        else:
            emb = self.api.get_scene_embeddings(audio, self.model)
        if emb.ndim != 2 or emb.shape != (audio.shape[0], self.dim):
            raise ValueError(f"{self.cfg.module}.get_scene_embeddings returned shape {tuple(emb.shape)}, "
                             f"expected {(audio.shape[0], self.dim)}")
        return EncoderOutput(emb.float()[:, None, :], None, 0, states)

    @torch.no_grad()
    def time_columns(self, spec: torch.Tensor, layers: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame-level output (:mod:`ssl_bench.frames`): the module's ``get_timestamp_embeddings``
        of the waveforms ``spec``, ``([B, n, D], centres [n] in samples)``."""
        if layers:
            raise ConfigError(f"HEAR module {self.cfg.module} gives no per-layer timestamp embeddings")
        audio = (spec[..., 0] if spec.ndim == 3 else spec).float()
        emb, ts = self.api.get_timestamp_embeddings(audio, self.model)
        if emb.ndim != 3 or ts.ndim != 2 or emb.shape[:2] != ts.shape or emb.shape[0] != audio.shape[0]:
            raise ValueError(f"{self.cfg.module}.get_timestamp_embeddings returned embeddings {tuple(emb.shape)} and "
                             f"timestamps {tuple(ts.shape)}; expected [n_sounds, n_timestamps, D] and "
                             "[n_sounds, n_timestamps]")
        ts = ts.detach().to("cpu", torch.float64)
        if not torch.allclose(ts, ts[:1].expand_as(ts), atol=1e-3):
            raise ValueError(f"{self.cfg.module}.get_timestamp_embeddings gave clips of one length different timestamps")
        return emb.float(), ts[0] / 1000.0 * float(self.model.sample_rate)

    def pool(self, out: EncoderOutput) -> torch.Tensor:
        return out.tokens[:, 0]

    def layer_id(self, name: str) -> int:
        return 0

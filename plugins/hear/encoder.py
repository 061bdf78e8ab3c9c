"""Any installed HEAR 2021 module as a frozen ssl-bench encoder (encoder ``hear``).

``--model hear --set encoder.module=NAME --checkpoint FILE``: the encoder imports ``NAME``,
calls ``NAME.load_model(FILE)`` and embeds each clip's waveform (the ``waveform`` frontend, at
the module's ``sample_rate``) with ``NAME.get_scene_embeddings``: one token per clip, the clip
embedding.  Per-layer probes (``layers``) work when the module also has
``get_layer_embeddings(audio, model) -> [n, K, D]`` (modules ssl-bench exports do).  Its
frame-level output (:mod:`ssl_bench.frames`) is ``NAME.get_timestamp_embeddings``.

The HEAR model is the encoder's child (``.model``): it moves with the encoder, its weights key
the embedding cache, and it is frozen (no gradients; fine-tuning is off for this model).  It
has no pretraining method and no random initialisation of its own: the runner says so and
writes no ``init=random`` baseline row.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

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
    missing = [f for f in REQUIRED if not callable(getattr(module, f, None))]
    if missing:
        raise ConfigError(f"encoder.module={name}: not a HEAR 2021 module, it has no {', '.join(missing)}")
    return module


class HearEncoder(Component):
    """A HEAR module's scene embeddings as encoder tokens; see the module docstring."""

    @dataclass
    class Config:
        module: str = ""  # the installed HEAR module (Python import name)
        model_file: str = ""  # what load_model takes; --checkpoint sets it
        weights_id: str = ""  # SHA-256 prefix of model_file (set with it): keys caches by content

    layout = TIME_MAJOR
    num_prefix_tokens = 0
    depth = 0

    def __init__(self, cfg=None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        cfg, build = self.cfg, self.build
        self.api = import_hear_module(cfg.module)
        if not cfg.model_file:
            raise ConfigError(f"model hear: give the file {cfg.module}.load_model takes with --checkpoint FILE")
        with torch.device("cpu"):  # a real load even in a dry run on the meta device: its size is the model's
            model = self.api.load_model(cfg.model_file)
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

"""The HEAR 2021 API both ways.

* **Export**: the command ``ssl-bench export-hear --checkpoint CKPT -o DIR`` writes an
  installable HEAR module of any ssl-bench encoder (:mod:`.export`, :mod:`.api`).
* **Import**: the encoder and model ``hear`` evaluate any installed HEAR module as a frozen
  encoder (:mod:`.encoder`)::

      ssl-bench run -m hear --set encoder.module=NAME [--checkpoint FILE] -t esc50 --protocols linear,knn

  ``FILE`` is what ``NAME.load_model`` takes (without it, the module's default weights); the
  audio is resampled to the module's own sample rate.  Per-layer probes (``layers``) need
  ``get_layer_embeddings`` (an ssl-bench extension the exported modules have); fine-tuning is
  off (a frozen import).
"""

from __future__ import annotations

from pathlib import Path

from ssl_bench import hookimpl
from ssl_bench.checkpoint import CheckpointReport
from ssl_bench.model import ModelSpec

from .api import HearModel, load_exported
from .encoder import HearEncoder, derived_settings, import_hear_module
from .export import ExportHear, export_hear

__all__ = ["HEAR_SPEC", "HearEncoder", "HearModel", "export_hear", "import_hear_module", "load_exported"]


def checkpoint_overrides(path: Path) -> dict:
    """The file ``load_model`` takes, and its content id (caches are keyed by content)."""
    from ssl_bench.provenance import ID_LENGTH, weights_digest

    return {"encoder.model_file": str(path), "encoder.weights_id": weights_digest(path)[:ID_LENGTH]}


def load_checkpoint(model, path: Path) -> CheckpointReport:
    """Nothing left to load: the HEAR module's ``load_model`` read ``path`` when the encoder was built."""
    if str(Path(model.encoder.cfg.model_file)) != str(Path(path)):
        from ssl_bench.checkpoint import CheckpointError

        raise CheckpointError(f"{path}: the hear encoder was built from {model.encoder.cfg.model_file}; build it with "
                              "this checkpoint (create_model('hear', checkpoint=..., **{'encoder.module': NAME}))")
    return CheckpointReport(str(path), f"HEAR module {model.encoder.cfg.module} (load_model)",
                            loaded=[f"encoder.{k}" for k in model.encoder.state_dict()])


HEAR_SPEC = ModelSpec(
    components={"frontend": "waveform", "encoder": "hear", "masker": None, "decoder": None, "objective": None,
                "method": None},
    settings={"frontend.num_frames": None, "finetune.enabled": False, "finetune.masker": None},
    load_checkpoint=load_checkpoint,
    checkpoint_overrides=checkpoint_overrides,
    derived_settings=derived_settings,
    description="any installed HEAR 2021 module as a frozen encoder (--set encoder.module=NAME, "
                "--checkpoint FILE unless it loads default weights)",
    notes={"frozen": "no pretraining method, no fine-tuning, no random-init baseline: the module's weights are "
                     "evaluated as they are"},
)


@hookimpl
def register_encoders(register):
    register("hear", HearEncoder)


@hookimpl
def register_models(register):
    register("hear", HEAR_SPEC)


@hookimpl
def register_commands(register):
    register("export-hear", ExportHear())

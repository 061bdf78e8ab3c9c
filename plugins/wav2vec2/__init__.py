"""wav2vec2 2.0, HuBERT and WavLM as encoders built on ``torchaudio.models``.

Registers the encoders ``wav2vec2``, ``hubert``, ``wavlm`` (:mod:`.encoder`) and the models of
the same names: the ``waveform`` frontend, the encoder, no pretraining method (ssl-bench
evaluates these models; their pretraining is not reimplemented here) and no fine-tuning masker.

Presets: ``tiny`` (the real architecture, a small conv stack, 2 layers of width 64: CPU
seconds), ``base`` (the default: the released base models' sizes) and ``large`` (the LV-60k /
HuBERT-Large / WavLM-Large sizes, with their waveform normalisation).  Weights::

    ssl-bench run -m hubert -t synthetic -p tiny --protocols linear,layers     # random weights
    ssl-bench run -m hubert -t esc50 --checkpoint torchaudio:HUBERT_BASE       # torch hub cache
    ssl-bench run -m wav2vec2 -t esc50 --checkpoint ./wav2vec2-base/           # Hugging Face dir
    ssl-bench run -m wavlm -t esc50 --checkpoint wavlm_base.pth                # torchaudio state dict

(:mod:`.checkpoints` lists what loads; the rows' ``init_id`` is the weights' SHA-256 prefix.)
"""

from __future__ import annotations

from ssl_bench import hookimpl
from ssl_bench.model import ModelSpec

from .checkpoints import checkpoint_overrides, load_checkpoint
from .encoder import HuBERTEncoder, Wav2Vec2Encoder, WavLMEncoder, conv_frames

__all__ = ["HuBERTEncoder", "MODELS", "Wav2Vec2Encoder", "WavLMEncoder", "conv_frames"]

#: What every one of these models shares: a frozen-feature evaluation model.
SETTINGS = {
    "frontend.num_frames": None,  # the task's clip length, in samples
    "finetune.masker": None,  # no token masks: these encoders run on the whole waveform
    "finetune.layer_decay": 1.0,
}

TINY = {
    # the real architecture at toy size: 4 conv layers (20 ms frames: strides 5*2*2*2... = 40 here,
    # 2.5 ms... kept short so 2 s clips give a few hundred frames), 2 transformer layers
    "encoder.conv_layers": [[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 2, 2]],
    "encoder.dim": 64, "encoder.depth": 2, "encoder.heads": 4, "encoder.ff_dim": 128,
    "encoder.pos_conv_kernel": 16, "encoder.pos_conv_groups": 4,
    "linear.batch_size": 32, "finetune.epochs": 3, "finetune.batch_size": 16,
}

LARGE = {
    "encoder.extractor_mode": "layer_norm", "encoder.conv_bias": True, "encoder.layer_norm_first": True,
    "encoder.dim": 1024, "encoder.depth": 24, "encoder.heads": 16, "encoder.ff_dim": 4096,
    "frontend.normalize": True,
}

NOTES = {
    "architecture": "torchaudio.models.wav2vec2_model / wavlm_model (BSD-2); parameter names are torchaudio's.",
    "weights": ("torchaudio:BUNDLE (torch hub cache; e.g. WAV2VEC2_BASE, HUBERT_BASE, WAVLM_BASE_PLUS), a torchaudio "
                "state dict file, a Hugging Face directory, a fairseq wav2vec2/HuBERT file (torchaudio's key "
                "mapping), or an ssl-bench checkpoint."),
    "licences": ("released weights: wav2vec2 and HuBERT (fairseq) MIT; WavLM (microsoft/unilm) MIT — check the "
                 "model card of the file you use"),
}


def _spec(encoder: str, description: str) -> ModelSpec:
    return ModelSpec(
        components={"frontend": "waveform", "encoder": encoder, "masker": None, "decoder": None, "objective": None,
                    "method": None},
        settings=dict(SETTINGS),
        presets={"tiny": dict(TINY), "base": {}, "large": dict(LARGE)},
        default_preset="base",
        load_checkpoint=load_checkpoint,
        checkpoint_overrides=checkpoint_overrides,
        description=description,
        notes=dict(NOTES),
    )


MODELS = {
    "wav2vec2": _spec("wav2vec2", "wav2vec 2.0 (Baevski et al. 2020) on torchaudio.models: raw waveform, every layer"),
    "hubert": _spec("hubert", "HuBERT (Hsu et al. 2021) on torchaudio.models: raw waveform, every layer"),
    "wavlm": _spec("wavlm", "WavLM (Chen et al. 2022) on torchaudio.models: raw waveform, every layer"),
}


@hookimpl
def register_encoders(register):
    register("wav2vec2", Wav2Vec2Encoder)
    register("hubert", HuBERTEncoder)
    register("wavlm", WavLMEncoder)


@hookimpl
def register_models(register):
    for name, spec in MODELS.items():
        register(name, spec)

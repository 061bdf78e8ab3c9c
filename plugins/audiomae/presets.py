"""The ``audiomae`` model: components, the paper's recipes, size presets and per-task recipes.

Provenance (reference notes, sections 1.2, 1.8 and 1.10):

* Pretraining, code-verified (``submit_pretrain_audioset2M.sh``): unstructured masking 0.8,
  norm-pix loss, AdamW betas (0.9, 0.95), weight decay 1e-4, blr 2e-4 (lr = blr * 512 / 256 =
  4e-4), batch 512, 3 warm-up epochs, half-cycle cosine to 0, no gradient clipping.  The
  script runs 33 epochs; the paper and README say 32, which we use.
* Fine-tuning, code-verified for AudioSet (``ft_as.sh``, ``submit_ft_mask_bal.sh``): layer
  decay 0.75, drop path 0.1, weight decay 5e-4, min lr 1e-6, AdamW (0.9, 0.999), structured
  token dropping 0.2 time / 0.2 frequency, waveform mixup on half the clips with
  Beta(10, 10), SpecAugment 48 frequency / 192 time; AS-20K 60 epochs (4 warm-up), batch 32,
  blr 1e-3; AS-2M 100 epochs (10 warm-up), batch 256, blr 2e-4 with class-balanced sampling.
* ESC-50 and Speech Commands: **the paper's fine-tuning values are not known here** (its
  appendix table could not be checked and the release has no recipe: AudioMAE issues #8 and
  #30).  The normalisation stats and target lengths are the code's (identical to AST's); the
  remaining values are our choices, listed per key in ``NOTES`` and in the recipe comments.
"""

from __future__ import annotations

from typing import Any

from ssl_bench.protocols.finetune import scaled_recipe

#: Normalisation stats ``(mean, std)`` of the log-mel features and target lengths, per dataset
#: (``norm_stats`` / ``target_length`` in the official scripts).
AUDIOSET_STATS = (-4.2677393, 4.5689974)
ESC50_STATS = (-6.6268077, 5.358466)
SPEECHCOMMANDS_STATS = (-6.845978, 5.5654526)

COMPONENTS: dict[str, str | None] = {
    "frontend": "kaldi-fbank",
    "encoder": "vit",
    "masker": "random",
    "decoder": "shifted-window",
    "objective": "masked-mse",
    "method": "mae",
    "finetune.masker": "time-frequency",
}

#: Defaults for every task: the paper's pretraining recipe and the fine-tuning settings the
#: official AudioSet scripts share.  Task-specific values (lengths, stats, epochs, mixup,
#: SpecAugment) live in RECIPES.
SETTINGS: dict[str, Any] = {
    "frontend.num_bins": 128,
    # Length: a task's recipe sets the official target length; other tasks get their clip
    # length (rounded up to whole patches by the runner); without a task the encoder is built
    # for 1024 frames (10 s).
    "frontend.num_frames": None,
    # No statistics by default: the frontend owns its normalisation, and the runner gives it the
    # task's published statistics for these features, else those of each split's training
    # clips.  The recipes below pin the official scripts' values per dataset (AudioSet's for
    # the released weights).
    "masker.ratio": 0.8,
    "objective.norm_pix": True,
    "pretrain.epochs": 32,
    "pretrain.warmup_epochs": 3,
    "pretrain.batch_size": 512,
    "pretrain.blr": 2e-4,
    "pretrain.min_lr": 0.0,
    "pretrain.weight_decay": 1e-4,
    "pretrain.betas": (0.9, 0.95),
    "pretrain.clip_grad": None,
    "finetune.layer_decay": 0.75,
    "finetune.drop_path": 0.1,
    "finetune.weight_decay": 5e-4,
    "finetune.min_lr": 1e-6,
    "finetune.betas": (0.9, 0.999),
    "finetune.masker.time_ratio": 0.2,
    "finetune.masker.freq_ratio": 0.2,
}


def _vit(dim: int, depth: int, heads: int) -> dict[str, Any]:
    return {"encoder.dim": dim, "encoder.depth": depth, "encoder.heads": heads}


# Decoder sizes are the decoders' own defaults, the release's for every ViT size: 512 wide,
# 16 heads; 16 blocks for shifted-window (decoder_mode=1), 8 for global (decoder_mode=0).

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop CPU: a 2-block ViT and a 2-block decoder, and protocols sized for
    # the embedded synthetic task (a few dozen 2 s clips per fold).
    "tiny": {
        **_vit(64, 2, 4),
        "decoder.dim": 64, "decoder.depth": 2, "decoder.heads": 4, "decoder.meta_hidden": 64,
        # Pretraining: lr = blr * 16 / 256 = 1.5e-3 (the paper's blr would give ~1e-5 at this
        # batch size and learn nothing in a few hundred steps).
        "pretrain.epochs": 80, "pretrain.warmup_epochs": 4, "pretrain.batch_size": 16, "pretrain.blr": 0.024,
        "pretrain.weight_decay": 0.05, "pretrain.checkpoint_every": 10,
        # Fine-tuning: the rule of scaled_recipe (lr 7.5e-4 x {1, 3, 9} at batch 16, chosen on
        # validation with the augmentation strength, 0 or 1; head initialised by a linear probe).
        "finetune.epochs": 30, "finetune.warmup_epochs": 3, "finetune.batch_size": 16,
        **scaled_recipe(64),
        "finetune.drop_path": 0.0,
        "linear.batch_size": 32,
    },
    # ViT-S for tasks of a few hundred to a few thousand clips: the fine-tuning rule of
    # scaled_recipe (blr 2e-3, lr and augmentation strength chosen on validation, probe-initialised head)
    "small": {**_vit(384, 12, 6), **scaled_recipe(384)},
    "base": {**_vit(768, 12, 12)},
    "large": {**_vit(1024, 24, 16)},
    # ViT-B with the seed's stronger fine-tuning token dropping (0.3 time / 0.3 frequency).
    "base-mask0.3": {**_vit(768, 12, 12),
                     "finetune.masker.time_ratio": 0.3, "finetune.masker.freq_ratio": 0.3},
}

_AUDIOSET_FT = {
    "frontend.num_frames": 1024,
    "frontend.mean": AUDIOSET_STATS[0],
    "frontend.std": AUDIOSET_STATS[1],
    "finetune.mixup": 0.5,
    "finetune.mixup_alpha": 10.0,
    "finetune.specaug_freq": 48,
    "finetune.specaug_time": 192,
    "finetune.masker.time_ratio": 0.2,
    "finetune.masker.freq_ratio": 0.2,
}

_ESC50 = {
    "frontend.num_frames": 512,  # 5 s (code: target_length 512)
    "frontend.mean": ESC50_STATS[0],
    "frontend.std": ESC50_STATS[1],
    # Not from the paper (unknown here): the unreleased main_finetune_esc.py defaults (batch 64,
    # 50 epochs, blr 1e-3, 5 warm-up, label smoothing 0.1) with the paper-recalled weight decay
    # 1e-4 and no mixup; SpecAugment as AST's ESC-50 recipe (24 bins / 96 frames).
    "finetune.epochs": 50,
    "finetune.warmup_epochs": 5,
    "finetune.batch_size": 64,
    "finetune.blr": 1e-3,
    "finetune.weight_decay": 1e-4,
    "finetune.mixup": 0.0,
    "finetune.specaug_freq": 24,
    "finetune.specaug_time": 96,
    "finetune.label_smoothing": 0.1,
}

RECIPES: dict[str, dict[str, Any]] = {
    # AudioSet-20K (ft_as.sh): 60 epochs, 4 warm-up, batch 32, blr 1e-3 -> lr 1.25e-4.
    "audioset": {**_AUDIOSET_FT, "finetune.epochs": 60, "finetune.warmup_epochs": 4,
                 "finetune.batch_size": 32, "finetune.blr": 1e-3},
    "audioset-20k": {**_AUDIOSET_FT, "finetune.epochs": 60, "finetune.warmup_epochs": 4,
                     "finetune.batch_size": 32, "finetune.blr": 1e-3},
    # AudioSet-2M (submit_ft_mask_bal.sh): 100 epochs, 10 warm-up, batch 256, lr 2e-4,
    # class-balanced sampling of 200k clips per epoch (the task's train_weights).
    "audioset-2m": {**_AUDIOSET_FT, "finetune.epochs": 100, "finetune.warmup_epochs": 10,
                    "finetune.batch_size": 256, "finetune.blr": 2e-4},
    "esc50": dict(_ESC50),
    "esc10": dict(_ESC50),
    # The embedded task ships a separate unlabeled corpus (disjoint from every fold), the way
    # AudioSet serves ESC-50: pretrain once on it, fine-tune and probe on each fold.
    "synthetic": {"pretrain.corpus": "task"},
    "speechcommands": {
        "frontend.num_frames": 128,  # 1 s (code: target_length 128)
        "frontend.mean": SPEECHCOMMANDS_STATS[0],
        "frontend.std": SPEECHCOMMANDS_STATS[1],
        # Not from the paper (unknown here): AST's SPC-2 recipe shape (30 epochs, batch 128,
        # SpecAugment 48 / 48) with the paper-recalled mixup 0.5 and AudioMAE's blr 1e-3.
        "finetune.epochs": 30,
        "finetune.warmup_epochs": 3,
        "finetune.batch_size": 128,
        "finetune.blr": 1e-3,
        "finetune.mixup": 0.5,
        "finetune.specaug_freq": 48,
        "finetune.specaug_time": 48,
    },
}

NOTES: dict[str, str] = {
    "source": "facebookresearch/AudioMAE (commit bd60e29) re-implemented from documented facts; "
              "released weights are CC BY-NC 4.0",
    "pretrain.epochs": "32 as in the paper/README; the released script runs 33",
    "decoder": "shifted-window = the released decoder_mode=1 (16 blocks regardless of decoder_depth); "
               "global = decoder_mode=0 (8 blocks); hybrid is described in the paper but not released, "
               "its number of global layers (2 here) is our choice",
    "finetune.esc50": "paper fine-tuning values for ESC-50 unknown here (not released, AudioMAE issue #30); "
                      "recipe = unreleased script defaults + AST SpecAugment, see plugins/audiomae/presets.py",
    "finetune.speechcommands": "paper fine-tuning values for Speech Commands unknown here; recipe follows "
                               "AST's SPC-2 shape with mixup 0.5; the paper may use other norm stats "
                               "(about -6.70/5.45, unverified) than the code's -6.845978/5.5654526",
    "finetune.masker": "0.2/0.2 time/frequency token dropping (released AudioSet runs); preset base-mask0.3 "
                       "gives the seed's 0.3/0.3",
    "linear": "the release has no linear-probe recipe (AudioMAE issue #29); ssl-bench's logistic regression "
              "on mean-pooled tokens is used",
}

DESCRIPTION = ("AudioMAE (Huang et al., NeurIPS 2022): ViT-B/16 masked autoencoder on 128-bin Kaldi log-mel "
               "spectrograms, 80% unstructured masking, shifted-window decoder, norm-pix MSE")

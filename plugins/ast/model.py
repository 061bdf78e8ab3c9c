"""The ``ast`` model: sizes, protocol defaults and the original paper's recipes."""

from __future__ import annotations

from ssl_bench.model import ModelSpec
from ssl_bench.protocols.finetune import scaled_recipe

from .checkpoints import checkpoint_overrides, load_checkpoint
from .imagenet import initial_checkpoint

# Dataset statistics of the raw log-mel (the original recipes pass them per dataset).
AUDIOSET_STATS = (-4.2677393, 4.5689974)
ESC50_STATS = (-6.6268077, 5.358466)
SPEECHCOMMANDS_STATS = (-6.845978, 5.5654526)


def _stats(stats: tuple[float, float]) -> dict[str, float]:
    return {"frontend.mean": stats[0], "frontend.std": stats[1]}


#: What every AST fine-tuning run shares with the original pipeline (src/traintest.py):
#: Adam betas (0.95, 0.999), weight decay 5e-7, no layer-wise decay, no stochastic depth.
SETTINGS = {
    "frontend.num_frames": None,  # follow the task's clip length (the recipes set the original's)
    "pretrain.enabled": False,  # the supervised baseline: no self-supervised stage
    "finetune.betas": (0.95, 0.999),
    "finetune.weight_decay": 5e-7,
    "finetune.layer_decay": 1.0,
    "finetune.drop_path": 0.0,
    "finetune.warmup_epochs": 0.0,
}

PRESETS = {
    # seconds on a laptop CPU: a 2-block encoder and protocols sized for the embedded
    # synthetic task (a few dozen 2 s clips per fold)
    "tiny": {
        "encoder.dim": 64, "encoder.depth": 2, "encoder.heads": 4,
        # fine-tuning: the rule of scaled_recipe (lr 7.5e-4 x {1, 3, 9} at batch 16 chosen on
        # validation with the augmentation strength, 0 or 1; head initialised by a linear probe)
        "finetune.epochs": 15, "finetune.warmup_epochs": 1, "finetune.batch_size": 16, **scaled_recipe(64),
        "finetune.min_lr": 1e-5, "linear.batch_size": 32,
        # used only when masked pretraining is switched on (see the plugin docstring)
        "decoder.dim": 64, "decoder.depth": 2, "decoder.heads": 4,
        "pretrain.epochs": 10, "pretrain.warmup_epochs": 1, "pretrain.batch_size": 16, "pretrain.blr": 1.5e-3,
        "pretrain.checkpoint_every": 5,
    },
    # DeiT-S sizes, for tasks of a few hundred to a few thousand clips: the fine-tuning rule of
    # scaled_recipe (it replaces the recipes' absolute ViT-B learning rates)
    "small": {"encoder.dim": 384, "encoder.depth": 12, "encoder.heads": 6, **scaled_recipe(384)},
    # DeiT-B, the published AST
    "base": {"encoder.dim": 768, "encoder.depth": 12, "encoder.heads": 12},
    # the AST paper's model: DeiT-B/384 (distilled) ImageNet weights, adapted to audio at load
    "base-imagenet": {"encoder.dim": 768, "encoder.depth": 12, "encoder.heads": 12, "encoder.init": "imagenet"},
}

# The original's per-dataset recipes (YuanGongND/ast egs/*/run_*.sh).  Its schedule is a
# per-epoch step decay; our loop uses cosine, so ``min_lr`` is set to the lr the step decay
# ends at, and the warm-up (where the original had one) is converted from steps to epochs.
RECIPES = {
    # egs/esc50/run_esc.sh: lr 1e-5 (1e-4 without AudioSet pretraining), 25 epochs, batch 48,
    # freqm 24 / timem 96, no mixup, 512 frames, ESC-50 stats; x0.85 per epoch from epoch 5
    "esc50": {
        "frontend.num_frames": 512,
        **_stats(ESC50_STATS),
        "finetune.lr": 1e-5,
        "finetune.min_lr": 1e-5 * 0.85 ** 20,
        "finetune.epochs": 25,
        "finetune.batch_size": 48,
        "finetune.specaug_freq": 24,
        "finetune.specaug_time": 96,
        "finetune.mixup": 0.0,
    },
    # egs/speechcommands/run_sc.sh: 128 frames, lr 2.5e-4, 30 epochs, batch 128, freqm 48 /
    # timem 48, mixup 0.6, SPC stats; x0.85 per epoch from epoch 5
    "speechcommands": {
        "frontend.num_frames": 128,
        **_stats(SPEECHCOMMANDS_STATS),
        "finetune.lr": 2.5e-4,
        "finetune.min_lr": 2.5e-4 * 0.85 ** 25,
        "finetune.epochs": 30,
        "finetune.batch_size": 128,
        "finetune.specaug_freq": 48,
        "finetune.specaug_time": 48,
        "finetune.mixup": 0.6,
        "finetune.mixup_alpha": 10.0,
    },
    # egs/audioset/run.sh, balanced set (AS-20K): lr 5e-5, 25 epochs, batch 12, freqm 48 /
    # timem 192, mixup 0.5, 1024 frames, AudioSet stats; warm-up 1000 steps (~0.6 epoch of
    # 20k clips at batch 12); x0.5 at epochs 10, 15, 20
    "audioset": {
        "frontend.num_frames": 1024,
        **_stats(AUDIOSET_STATS),
        "finetune.lr": 5e-5,
        "finetune.min_lr": 5e-5 * 0.5 ** 3,
        "finetune.epochs": 25,
        "finetune.batch_size": 12,
        "finetune.warmup_epochs": 0.6,
        "finetune.specaug_freq": 48,
        "finetune.specaug_time": 192,
        "finetune.mixup": 0.5,
        "finetune.mixup_alpha": 10.0,
    },
}

NOTES = {
    "provenance": (
        "Architecture, position-embedding adaptation, checkpoint layout and recipes follow the "
        "original AST code (YuanGongND/ast, BSD-3; src/models/ast_models.py, egs/*/run_*.sh); "
        "recipes esc50, speechcommands and audioset are the original's."
    ),
    "deviations": (
        "Optimiser: the original uses Adam (betas 0.95/0.999, weight decay 5e-7) with a per-epoch "
        "step decay (x0.85 from epoch 5 for ESC-50 and Speech Commands; x0.5 at 10/15/20 for "
        "AudioSet balanced); our loop uses AdamW with the same betas and decay and a cosine schedule "
        "whose min_lr is the lr the step decay ends at. Speech Commands: the original also adds "
        "uniform noise and a +-10 frame roll, and trains with BCE; neither is part of our "
        "fine-tuning protocol. AudioSet: the original averages the weights of epochs 6-25 and uses "
        "the PSLA 'enhanced' balanced label set."
    ),
    "initialisation": (
        "The paper's numbers start from ImageNet DeiT weights (ESC-50: 88.7% from ImageNet only, 95.6% from "
        "ImageNet+AudioSet). Preset base-imagenet (encoder.init=imagenet) does the same: it downloads "
        "deit_base_distilled_patch16_384 (or reads encoder.init_file, timm's key layout), sums the RGB patch "
        "kernels into one channel as the release does (encoder.init_channels=mean: the paper's 'average'), and "
        "crops or interpolates the 24x24 position grid to the audio grid once, at load; rows record the file's "
        "SHA-256. Without it the encoder starts from random init (trunc-normal 0.02), a much weaker baseline."
    ),
    "checkpoints": (
        "--checkpoint takes the official .pth files, Hugging Face ASTModel / "
        "ASTForAudioClassification weights (.bin, .safetensors or a model directory) and SSAST "
        "files; the position table is centre-cropped or interpolated to the run's input length."
    ),
    "pretraining": (
        "Masked pretraining (an SSAST-like MAE variant; the encoder runs on visible patches only): "
        "--set masker=random --set decoder=global --set objective=masked-mse --set pretrain.enabled=true"
    ),
}

AST_SPEC = ModelSpec(
    components={"frontend": "kaldi-fbank", "encoder": "ast", "masker": None, "decoder": None, "objective": None,
                "method": "mae"},
    settings=SETTINGS,
    presets=PRESETS,
    default_preset="base",
    recipes=RECIPES,
    load_checkpoint=load_checkpoint,
    checkpoint_overrides=checkpoint_overrides,
    initial_checkpoint=initial_checkpoint,
    description="Audio Spectrogram Transformer (Gong et al. 2021): supervised baseline, overlapping 16x16 patches",
    notes=NOTES,
)

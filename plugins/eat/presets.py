"""The ``eat`` model: components, the paper's pretraining recipe, size presets, task recipes.

Provenance: the paper (Chen et al., arXiv 2401.03497) and the hyperparameters of the release's
``config/pretraining_AS2M.yaml`` (cwx-worst-one/EAT), read as facts, not code:

* ViT-B encoder (12 blocks, 768 wide, 12 heads) on 16 x 16 patches of 128-bin log-mel,
  1024 frames for AudioSet;
* inverse block masking, ratio 0.8, 5 x 5 blocks; 16 clones per clip;
* targets: all 12 teacher blocks averaged (instance-normalised each), layer-normalised;
* CNN decoder: 6 blocks, 768 channels, 3 x 3 kernels, 16 groups;
* EMA decay 0.9998 -> 0.99999 over the first 100k of 400k updates;
* Adam(W) betas (0.9, 0.95), weight decay 0.05, lr 5e-4 (absolute), cosine schedule with
  53,333 warm-up updates, gradient clipping at norm 4, 12 clips per GPU x 4 GPUs, 10 epochs
  of AS-2M (about 400k updates);
* fine-tuning and probing use the CLS token (``prediction_mode: CLS_TOKEN``).
"""

from __future__ import annotations

from typing import Any

COMPONENTS: dict[str, str | None] = {
    "frontend": "kaldi-fbank",
    "encoder": "vit",
    "masker": "inverse-block",
    "decoder": "eat-cnn",
    "objective": None,  # the method scores the teacher's targets itself
    "method": "eat",
    "finetune.masker": "time-frequency",
}

SETTINGS: dict[str, Any] = {
    "frontend.num_bins": 128,
    # Length: a task's clip length (rounded up to whole patches by the runner); without a task the
    # encoder is built for 1024 frames (10 s), AudioSet's length.  Normalisation statistics come
    # from the task (the frontend owns them), as for every model.
    "frontend.num_frames": None,
    "encoder.pool": "cls",  # the utterance loss trains the CLS token; EAT classifies from it
    "masker.ratio": 0.8,
    "masker.block_time": 5,
    "masker.block_freq": 5,
    "decoder.dim": 768,
    "decoder.depth": 6,
    "decoder.kernel": 3,
    "decoder.groups": 16,
    "method.clones": 16,
    "method.top_k": None,  # all blocks
    "method.utterance_weight": 1.0,
    "method.ema_decay": 0.9998,
    "method.ema_end_decay": 0.99999,
    "method.ema_anneal_steps": 100_000,
    # 10 epochs of AS-2M at 48 clips per step are the release's ~400k updates; its 53,333 warm-up
    # updates are 2/15 of them (4/3 epoch).
    "pretrain.epochs": 10,
    "pretrain.warmup_epochs": 4 / 3,
    "pretrain.batch_size": 48,
    "pretrain.lr": 5e-4,
    "pretrain.min_lr": 0.0,
    "pretrain.weight_decay": 0.05,
    "pretrain.betas": (0.9, 0.95),
    "pretrain.clip_grad": 4.0,
    # Release config/finetuning.yaml (AS-2M): Adam betas (0.9, 0.95), weight decay 0.05, cosine to 1e-6.
    "finetune.betas": (0.9, 0.95),
    "finetune.weight_decay": 0.05,
    "finetune.min_lr": 1e-6,
}


def _vit(dim: int, depth: int, heads: int) -> dict[str, Any]:
    return {"encoder.dim": dim, "encoder.depth": depth, "encoder.heads": heads}


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop CPU, sized like audiomae's tiny preset (a 2-block, 64-wide ViT) and the
    # protocols sized for the embedded synthetic task (500 unlabeled 2 s clips, a 13 x 8 grid).
    # The teacher's schedule is scaled to a run of ~1,900 steps: 0.99 -> 0.999 over the first
    # 600 (the paper's 0.9998 would barely move a teacher in so few steps); 4 clones per clip;
    # 3 x 3 blocks keep the visible 20% of a small grid in a few islands rather than one.
    # The linear probe reads the mean of the patch tokens: on this 2-block model the CLS token
    # probes worse (0.26 vs 0.325 mean accuracy over the 5 folds, same pretrained weights).
    "tiny": {
        **_vit(64, 2, 4), "encoder.pool": "mean",
        "masker.block_time": 3, "masker.block_freq": 3,
        "decoder.dim": 64, "decoder.depth": 2, "decoder.groups": 4,
        "method.clones": 4, "method.ema_decay": 0.99, "method.ema_end_decay": 0.999,
        "method.ema_anneal_steps": 600,
        "pretrain.epochs": 60, "pretrain.warmup_epochs": 4, "pretrain.batch_size": 16, "pretrain.lr": 1.5e-3,
        "pretrain.clip_grad": 4.0, "pretrain.checkpoint_every": 10,
        "finetune.epochs": 30, "finetune.warmup_epochs": 3, "finetune.batch_size": 16, "finetune.blr": 0.016,
        "finetune.drop_path": 0.0, "finetune.weight_decay": 0.05,
        "linear.batch_size": 32,
    },
    "base": {**_vit(768, 12, 12)},
}

RECIPES: dict[str, dict[str, Any]] = {
    # The embedded task ships a separate unlabeled corpus (disjoint from every fold): pretrain
    # once on it, fine-tune and probe on each fold (as AudioSet serves ESC-50).
    "synthetic": {"pretrain.corpus": "task"},
    "audioset": {"frontend.num_frames": 1024},
    "audioset-2m": {"frontend.num_frames": 1024},
    "audioset-20k": {"frontend.num_frames": 1024},
}

#: The paper's results (EAT-base, fine-tuned), for reference next to ours; not measured here.
PAPER_RESULTS: dict[str, str] = {
    "audioset-2m": "48.6 mAP",
    "audioset-20k": "40.2 mAP",
    "esc50": "95.9% accuracy",
    "speechcommands": "98.3% accuracy (SPC-2)",
}

NOTES: dict[str, str] = {
    "source": "written from the paper (arXiv 2401.03497) and the hyperparameters of the release's "
              "config/pretraining_AS2M.yaml; no code of the release is used and its checkpoints have no importer "
              "(its data2vec blocks are post-norm; the vit encoder here is pre-norm with a final LayerNorm)",
    "paper results": "EAT-base fine-tuned: AS-2M 48.6 mAP, AS-20K 40.2 mAP, ESC-50 95.9%, SPC-2 98.3% (the paper's)",
    "targets": "the average of the teacher's block outputs (end of block); the release's default "
               "end_of_block_targets=false takes each block's FFN output before the residual instead",
    "decoder": "hidden positions get a learned mask token; the release fills them with N(0, 0.01) noise",
    "utterance_weight": "lambda = 1 on the mean utterance loss as the paper writes L = L_f + lambda L_u; the "
                        "release's fairseq normalisation sums the CLS term over a GPU's clips, weighting it more",
    "finetune": "the paper's per-task fine-tuning recipes are not transcribed; the general ones of the release's "
                "finetuning.yaml (betas, weight decay, min lr) are settings; the rest are the harness defaults",
    "tiny": "EMA 0.99 -> 0.999 over 600 steps, 4 clones, 3 x 3 blocks: scaled to a CPU run of ~1,900 steps; "
            "probes pool the mean of the patch tokens (the CLS token probed worse on this 2-block model)",
}

DESCRIPTION = ("EAT (Chen et al., IJCAI 2024): ViT-B/16 student on 128-bin Kaldi log-mel, EMA teacher, 80% inverse "
               "block masking with 16 clones per clip, CNN decoder, utterance + frame regression of averaged "
               "teacher layers")

"""The ``beats`` model: components, sizes, notes and the paper's published results."""

from __future__ import annotations

from typing import Any

from ssl_bench.protocols.finetune import scaled_recipe

COMPONENTS: dict[str, str | None] = {
    "frontend": "beats-fbank",
    "encoder": "beats",
    "masker": None,
    "decoder": None,
    "objective": None,
    "method": None,  # the tokenizer/teacher iterations of the paper are not implemented
    "finetune.masker": None,
}

SETTINGS: dict[str, Any] = {
    "frontend.num_frames": None,  # every frame of the task's clips, as the release (no padding)
    "pretrain.enabled": False,  # no pretraining method: evaluate released weights (--checkpoint) or random init
    "finetune.drop_path": 0.0,  # the encoder has no stochastic depth
}


def _size(dim: int, depth: int, heads: int, ffn: int, embed: int) -> dict[str, Any]:
    return {"encoder.dim": dim, "encoder.depth": depth, "encoder.heads": heads, "encoder.ffn_dim": ffn,
            "encoder.embed_dim": embed}


PRESETS: dict[str, dict[str, Any]] = {
    # seconds on a laptop CPU: 2 layers, 64 wide, a short position conv; every released
    # mechanism (deep norm, gated relative bias, post-extract projection) is kept
    "tiny": {
        **_size(64, 2, 4, 256, 32), "encoder.conv_pos": 16, "encoder.conv_pos_groups": 4,
        "encoder.num_buckets": 32, "encoder.max_distance": 64,
        "finetune.epochs": 15, "finetune.warmup_epochs": 1, "finetune.batch_size": 16, **scaled_recipe(64),
        "finetune.min_lr": 1e-5, "linear.batch_size": 32,
    },
    # the released iter1..iter3+ architecture (90,311,792 parameters)
    "base": _size(768, 12, 12, 3072, 512),
}

DESCRIPTION = "BEATs (Chen et al. 2022): audio pre-training with acoustic tokenizers; evaluates released checkpoints"

#: The paper's Table 1/2 (single models, AudioSet-only pretraining, 90M parameters): AS-2M mAP,
#: AS-20K mAP, ESC-50 accuracy.  iter3+ (AS2M)'s ESC-50 98.1 used extra supervised data.
PAPER_RESULTS = {
    "BEATs_iter1": {"AS-2M": 47.9, "AS-20K": 36.0, "ESC-50": 94.0},
    "BEATs_iter2": {"AS-2M": 48.1, "AS-20K": 38.3, "ESC-50": 95.1},
    "BEATs_iter3": {"AS-2M": 48.0, "AS-20K": 38.3, "ESC-50": 95.6},
    "BEATs_iter3+ (AS20K)": {"AS-2M": 48.0, "AS-20K": 38.9, "ESC-50": 96.2},
    "BEATs_iter3+ (AS2M)": {"AS-2M": 48.6, "AS-20K": 41.8, "ESC-50": 97.1},
}

NOTES = {
    "provenance": (
        "Written from the paper (arXiv 2212.09058) and the released checkpoint layout ({'cfg', 'model'} files of "
        "microsoft/unilm beats/, MIT); the forward matches the release's to 1e-4 in float32 (tests/test_beats.py)."
    ),
    "checkpoints": (
        "--checkpoint BEATs_iter3.pt (or any released file): the architecture is read from its cfg (class "
        "defaults for keys it leaves out), the weights load strictly; a fine-tuned file's predictor becomes the "
        "head (logits; the release returns their sigmoid). The files are OneDrive links in the release's README: "
        "download them by hand."
    ),
    "pretraining": (
        "Not implemented: BEATs pretrains by iterating an acoustic tokenizer and a masked-token-prediction "
        "student; pretrain.enabled is false and there is no method. Fine-tuning and frozen probes work."
    ),
    "recipes": "The paper's per-task fine-tuning hyperparameters are not given here (unknown to this plugin).",
}

"""Small models and data for the training-loop tests (no plugins, no audio).

``toy_model()`` is a real :class:`~ssl_bench.model.SSLModel` assembled from tiny components
that follow the component protocols: every time frame of an ``[B, 8, 4]`` spectrogram is one
token, the encoder has two "blocks" (so layer-wise lr decay has layers to tell apart), the
decoder puts mask tokens back and predicts each frame, the objective is MSE on masked tokens.
``toy_split()`` is a :class:`~ssl_bench.protocols.data.SplitData` whose class is the frequency
bin that carries the energy: learnable in a few steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssl_bench import hookimpl
from ssl_bench.components import TIME_MAJOR, BuildContext, Clip, EncoderOutput, Split
from ssl_bench.config import resolve
from ssl_bench.model import SSLModel
from ssl_bench.protocols.data import SplitData

T, F = 8, 4


class ToyFrontend(nn.Module):
    @dataclass
    class Config:
        mean: float = 0.0
        std: float = 0.5

    def __init__(self):
        super().__init__()
        self.cfg = self.Config()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.cfg.mean) / (2 * self.cfg.std)


class ToyMasker(nn.Module):
    def __init__(self, ratio: float = 0.5):
        super().__init__()
        self.ratio = ratio

    def forward(self, batch_size, grid, layout, device="cpu", generator=None):
        n = grid[0] * grid[1]
        noise = torch.rand(batch_size, n, generator=generator, device=generator.device if generator else device)
        ids = noise.argsort(dim=1)[:, : int(n * self.ratio)]
        mask = torch.zeros(batch_size, n, dtype=torch.bool, device=ids.device)
        mask.scatter_(1, ids, True)
        return mask.to(device)


class ToyEncoder(nn.Module):
    layout = TIME_MAJOR
    num_prefix_tokens = 1

    @dataclass
    class Config:
        pool: str = "mean"  # "mean" of the frame tokens or the "cls" token

    def __init__(self, dim: int = 16, depth: int = 2):
        super().__init__()
        self.cfg = self.Config()
        self.dim, self.depth = dim, depth
        self.patch_embed = nn.Linear(F, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, T, dim) * 0.02)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def grid_for(self, num_frames, num_bins):
        return (num_frames, 1)

    def patchify(self, spec):
        return spec

    def forward(self, spec, mask=None):
        x = self.patch_embed(spec) + self.pos_embed[:, : spec.shape[1]]
        ids_keep = None
        if mask is not None:
            ids_keep = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, : int((~mask[0]).sum())]
            x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = x + blk(x)
        return EncoderOutput(self.norm(x), ids_keep, 1)

    def pool(self, out):
        return out.tokens[:, 0] if self.cfg.pool == "cls" else out.tokens[:, 1:].mean(dim=1)

    def layer_id(self, name: str) -> int:
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1


class ToyDecoder(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pred = nn.Linear(dim, F)

    def forward(self, out, mask, grid):
        B, L = mask.shape
        full = self.mask_token.expand(B, L, -1).clone()
        visible = out.tokens[:, out.num_prefix_tokens:]
        full = full.scatter(1, out.ids_keep[..., None].expand(-1, -1, visible.shape[-1]), visible)
        return self.pred(full)


class ToyObjective(nn.Module):
    def forward(self, pred, target, mask):
        per_token = (pred - target).pow(2).mean(dim=-1)
        m = mask.float()
        return (per_token * m).sum() / m.sum()


class ToyMAE(nn.Module):
    """The MAE method on the toy parts: masks of the global batch from the step's generator."""

    def forward(self, model, spec, mask):
        grid = model.encoder.grid_for(spec.shape[1], spec.shape[2])
        out = model.encoder(spec, mask)
        pred = model.decoder(out, mask.to(spec.device), grid)
        return model.objective(pred.float(), model.encoder.patchify(spec).float(), mask.to(spec.device))

    def loss(self, model, spec, step):
        grid = model.encoder.grid_for(spec.shape[1], spec.shape[2])
        full = model.masker(step.global_batch, grid, model.encoder.layout, "cpu", step.generator())
        return self(model, spec, full[step.offset:step.offset + spec.shape[0]])


def toy_model(seed: int = 0, dim: int = 16, depth: int = 2, config: dict | None = None) -> SSLModel:
    torch.manual_seed(seed)
    parts = {"frontend": ToyFrontend(), "encoder": ToyEncoder(dim, depth), "masker": ToyMasker(),
             "decoder": ToyDecoder(dim), "objective": ToyObjective(), "method": ToyMAE(), "finetune.masker": None}
    return SSLModel(config or {"model": "toy"}, parts, BuildContext(num_frames=T, num_bins=F))


class ToyFeatures:
    """A FeatureSet look-alike: ``fs[i]`` -> ``[T_i, F]``; ``.clips`` for cache keys."""

    def __init__(self, specs: list[torch.Tensor], labels: list[int], tag: str = "toy"):
        self.specs = specs
        self.clips = [Clip(path=Path(f"/{tag}/{i}.wav"), labels=(int(y),), key=f"{i}.wav")
                      for i, y in enumerate(labels)]
        self.path = None
        self.skipped: list = []

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.specs[i]


def toy_features(n: int = 64, num_classes: int = 4, seed: int = 0) -> ToyFeatures:
    """Class ``c`` puts energy into frequency bin ``c``; frames vary in length (6..8)."""
    g = torch.Generator().manual_seed(seed)
    labels = [i % num_classes for i in range(n)]
    specs = []
    for i, y in enumerate(labels):
        frames = 6 + i % 3
        x = 0.3 * torch.randn(frames, F, generator=g)
        x[:, y % F] += 1.5
        specs.append(x)
    return ToyFeatures(specs, labels)


def toy_split(n: int = 64, num_classes: int = 4, seed: int = 0, n_valid: int = 16, n_test: int = 16) -> SplitData:
    feats = toy_features(n, num_classes, seed)
    idx = np.arange(n)
    targets = np.array([c.labels[0] for c in feats.clips], dtype=np.int64)
    return SplitData(feats, idx[: n - n_valid - n_test], idx[n - n_valid - n_test: n - n_test], idx[n - n_test:],
                     targets, num_classes, False, ["accuracy"], T, name="toy")


def toy_config(**sections) -> dict:
    """A resolved-config look-alike with the protocol sections the protocols read."""
    cfg = {
        "model": "toy", "seed": 0, "amp": True, "compile": False, "deterministic": False,
        "pretrain": {"epochs": 2, "batch_size": 8, "accum_steps": 1, "blr": 1e-2, "lr": None, "min_lr": 0.0,
                     "warmup_epochs": 1, "weight_decay": 0.05, "betas": [0.9, 0.95], "clip_grad": None,
                     "checkpoint_every": 1, "checkpoint_min_s": 0},
        "finetune": {"epochs": 3, "batch_size": 8, "accum_steps": 1, "blr": 5e-2, "lr": None, "min_lr": 0.0,
                     "warmup_epochs": 1, "weight_decay": 0.0, "betas": [0.9, 0.999], "layer_decay": 0.75,
                     "drop_path": 0.0, "mixup": 0.0, "mixup_alpha": 10.0, "specaug_freq": 0, "specaug_time": 0,
                     "label_smoothing": 0.0, "clip_grad": None},
        "linear": {"C": [0.01, 1.0, 100.0], "max_iter": 500, "batch_size": 16},
        "data": {"num_workers": 0},
    }
    for name, values in sections.items():
        cfg[name].update(values)
    return cfg


# --------------------------------------------------------------------------- a tiny task
CLASSES = ["low", "mid", "high"]


class TinyTones:
    """Three tone classes, 0.5 s clips, two folds; the validation set is carved from train."""

    name = "tinytones"
    multilabel = False
    sample_rate = 16000
    clip_seconds = 0.5
    metrics = ["accuracy"]
    split_protocol = "2 folds, leave-one-fold-out"
    norm_stats = None
    PER_CLASS = 12

    def __init__(self, data_dir=None):
        self.root = Path(data_dir)
        self.classes = list(CLASSES)

    def prepare(self) -> None:
        from taskfixtures import tone, write_wav  # soundfile only when audio is written

        for c in range(len(CLASSES)):
            for k in range(self.PER_CLASS):
                path = self.root / f"{c}-{k}.wav"
                if not path.exists():
                    write_wav(path, tone(c, self.clip_seconds, self.sample_rate, seed=k), self.sample_rate)

    def splits(self) -> list[Split]:
        clips = [Clip(self.root / f"{c}-{k}.wav", (c,), f"{c}-{k}.wav")
                 for c in range(len(CLASSES)) for k in range(self.PER_CLASS)]
        return [Split(f"fold{f + 1}", [c for i, c in enumerate(clips) if i % 2 != f],
                      [c for i, c in enumerate(clips) if i % 2 == f]) for f in range(2)]


class TinyTonesPlugin:
    @staticmethod
    @hookimpl
    def register_tasks(register):
        register("tinytones", TinyTones)


#: AudioMAE at a few thousand parameters, for end-to-end runs in seconds.
SMALL = {
    "encoder.dim": 32, "encoder.depth": 1, "encoder.heads": 2,
    "decoder.dim": 32, "decoder.depth": 1, "decoder.heads": 2,
    "frontend.num_frames": None, "frontend.mean": None, "frontend.std": None,
    "pretrain.epochs": 2, "pretrain.batch_size": 8, "pretrain.warmup_epochs": 1,
    "finetune.epochs": 2, "finetune.batch_size": 8, "finetune.warmup_epochs": 1,
    "finetune.lr_factors": None,  # one fine-tuning per split (the lr grid is tested in test_finetune.py)
    "linear.C": [0.1, 10.0], "data.valid_fraction": 0.25,
}


def tiny_config(registry=None, **extra) -> dict:
    """The resolved ``audiomae`` tiny config, shrunk further, for the ``tinytones`` task."""
    return resolve("audiomae", preset="tiny", task="tinytones", overrides={**SMALL, **extra}, registry=registry)


def tiny_registry():
    """The process registry (built-in plugins) plus the ``tinytones`` task."""
    from ssl_bench.registry import Registry

    reg = Registry()
    reg.add_plugin(TinyTonesPlugin, name="tinytones")
    return reg


def mp_context():
    """``fork`` for child processes (they inherit the imports: milliseconds to start), or
    ``spawn`` once CUDA is initialised here, since a forked child cannot use CUDA
    (``SSL_BENCH_TEST_DEVICE=cuda`` runs)."""
    import multiprocessing

    import torch

    cuda_live = torch.cuda.is_available() and torch.cuda.is_initialized()
    return multiprocessing.get_context("spawn" if cuda_live else "fork")


class Regression(torch.utils.data.Dataset):
    """``n`` examples of ``y = x . (1..5) + noise`` for tests of the training loop itself."""

    def __init__(self, n: int = 32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 5, generator=g)
        self.y = self.x @ torch.arange(1.0, 6.0) + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def mse(model: nn.Module, batch: dict[str, torch.Tensor], step) -> torch.Tensor:
    """The training loop's loss function for :class:`Regression`."""
    return (model(batch["x"]).squeeze(-1) - batch["y"]).pow(2).mean()

"""The figure people expect from a masked autoencoder: original, masked input, reconstruction.

Works for any model with a masker, a decoder and an encoder that can ``patchify`` and
``unpatchify`` (``unpatchify(patches, num_frames, num_bins)``).  Predictions of a model trained
with per-patch normalised targets (``objective.norm_pix``) are brought back to spectrogram
levels with each patch's mean and standard deviation taken from the original, as the MAE
visualisation demos do: the panel then shows the structure the model predicted, at the levels
of the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_bench.audio import load_audio


def _random_mask(batch: int, length: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {ratio}")
    keep = max(1, int(length * (1.0 - ratio)))
    ids = torch.rand(batch, length, generator=generator).argsort(dim=1)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask.scatter_(1, ids[:, :keep], False)
    return mask


def _objective_norm(model: Any) -> tuple[bool, float]:
    cfg = getattr(model.objective, "cfg", None)
    node = model.config.get("objective") if isinstance(getattr(model, "config", None), dict) else None
    norm_pix = bool(getattr(cfg, "norm_pix", (node or {}).get("norm_pix", False)))
    eps = float(getattr(cfg, "eps", (node or {}).get("eps", 1e-6)))
    return norm_pix, eps


@torch.no_grad()
def reconstruct(model: Any, audio_path: str | Path, out_png: str | Path, seed: int = 0,
                mask_ratio: float | None = None) -> Path:
    """Mask ``audio_path``'s spectrogram, reconstruct it with ``model`` and save a PNG.

    ``seed`` fixes the mask; ``mask_ratio`` replaces the model's masker with unstructured
    random masking at that ratio.  Panels: original, masked input (hidden patches grey),
    reconstruction (every patch predicted), and reconstruction with the visible patches
    pasted back.  Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if getattr(model, "decoder", None) is None or getattr(model, "masker", None) is None:
        raise ValueError("reconstruct needs a model with a masker and a decoder (a pretraining model); "
                         "this one has none: choose one with decoder=NAME")
    encoder = model.encoder
    if not hasattr(encoder, "unpatchify"):
        raise ValueError(f"encoder {type(encoder).__name__} has no unpatchify(patches, num_frames, num_bins); "
                         "reconstruct cannot draw its predictions")
    out_png = Path(out_png)
    frontend = model.frontend
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        wave = load_audio(audio_path, frontend.sample_rate)
        spec = frontend(torch.from_numpy(wave)[None].to(device), frontend.sample_rate).float()
        if getattr(frontend, "num_frames", 1) is None and hasattr(frontend, "fit_frames"):
            # A frontend that keeps every frame: pad or crop to the length the model was built for.
            spec = frontend.fit_frames(spec, model.build.num_frames)
        num_frames, num_bins = spec.shape[1], spec.shape[2]
        grid = encoder.grid_for(num_frames, num_bins)
        generator = torch.Generator().manual_seed(seed)
        if mask_ratio is None:
            mask = model.masker(1, grid, encoder.layout, "cpu", generator)
        else:
            mask = _random_mask(1, grid[0] * grid[1], mask_ratio, generator)
        mask = mask.to(device)
        out = model.forward_pretrain(spec, mask=mask)
        target = encoder.patchify(spec).float()
        pred = out.pred.float()
        norm_pix, eps = _objective_norm(model)
        if norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + eps).sqrt()
            pred = pred * std + mean
        hidden = mask.bool().unsqueeze(-1)
        masked_input = target.masked_fill(hidden, float("nan"))
        pasted = torch.where(hidden, pred, target)
        panels = [
            ("original", encoder.unpatchify(target, num_frames, num_bins)),
            (f"masked input ({int(mask.sum())}/{mask.shape[1]} patches hidden)",
             encoder.unpatchify(masked_input, num_frames, num_bins)),
            (f"reconstruction (loss {float(out.loss):.3f}" + ("; patch levels from the original)" if norm_pix else ")"), encoder.unpatchify(pred, num_frames, num_bins)),
            ("reconstruction + visible patches", encoder.unpatchify(pasted, num_frames, num_bins)),
        ]
    finally:
        model.train(was_training)

    images = [img[0].cpu().numpy().T for _, img in panels]  # [freq, time], low frequencies at the bottom
    finite = np.concatenate([img[np.isfinite(img)] for img in images[:1]])
    vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (None, None)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.6")  # hidden patches in grey
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, _), img in zip(axes[:, 0], panels, images):
        ax.imshow(img, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mel bin")
    axes[-1, 0].set_xlabel("frame (10 ms)")
    fig.suptitle(f"{getattr(model, 'name', 'model')}: {Path(audio_path).name}", fontsize=10)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png

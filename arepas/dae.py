"""Denoising autoencoder baseline (method `dae`), after Kascenas, Pugeault and O'Neil,
"Denoising autoencoders for unsupervised anomaly detection in brain MRI", MIDL 2022.

A U-Net is trained on healthy slices to remove coarse noise: Gaussian noise drawn on a low
resolution grid, upsampled bilinearly to the slice and shifted by a random cyclic roll, added
inside the foreground. At test time the clean input goes in unchanged; the anomaly map is
|restoration - input| inside the ROI. Blob-sized noise makes the network repair whole regions from
their context, which transfers to blob-shaped lesions better than a bottleneck autoencoder.

The authors' settings as we read them (noise drawn at 16 x 16 for 128 x 128 slices, standard
deviation 0.2 on their intensity scale, noise on the foreground only, squared error) are
approximate here. This project's slices lie in [-1, 1], twice the range of a [0, 1] image, so the
default standard deviation is 0.4; the foreground is the ROI, the region every map is evaluated
in. The U-Net is smaller than theirs (4 levels, 128 base channels) so that it trains on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from arepas.epochs import as_slice_batch, epoch_order, fit_epochs, stack_rows
from arepas.io import save_torch
from arepas.progress import StepProgress, batches_per_epoch, capped_steps, check_max_steps
from arepas.settings import settings_from_dict
from arepas.stacks import StackArray

CHECKPOINT_NAME = "dae_last.pt"

# Validation noise comes from a seed of its own, fixed, so that every epoch's validation loss
# measures the same corrupted slices.
_VALIDATION_NOISE_SEED = 12345


@dataclass
class DaeSettings:
    """U-Net size (`base_channels` at the top, doubled per level, `depth` poolings), training
    (`lr`, `batch_size`, `epochs`; `max_steps`, None for no cap, stops training after that many
    batches, mid-epoch if need be) and the coarse noise: drawn on a `noise_resolution` square
    grid with standard deviation `noise_std` (intensities in [-1, 1])."""

    base_channels: int = 16
    depth: int = 3
    lr: float = 1e-3
    batch_size: int = 16
    epochs: int = 15
    noise_resolution: int = 16
    noise_std: float = 0.4
    max_steps: int | None = None

    def __post_init__(self) -> None:
        check_max_steps(self.max_steps)
        for name in ("base_channels", "depth", "batch_size", "noise_resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"dae {name} must be >= 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ValueError(f"dae epochs must be >= 0, got {self.epochs}")
        if self.noise_std < 0 or self.lr <= 0:
            raise ValueError(
                f"dae noise_std must be >= 0 and lr > 0, got {self.noise_std}, {self.lr}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> DaeSettings:
        """Settings from a config mapping; unknown keys are an error, missing keys keep defaults."""
        return settings_from_dict(cls, values, "dae")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(0.2),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(0.2),
    )


class UNet(nn.Module):
    """Encoder of `depth` max-pooled levels, decoder with bilinear upsampling and skip
    concatenation, a linear 1x1 output: the restoration of the slice itself."""

    def __init__(self, settings: DaeSettings) -> None:
        super().__init__()
        self.depth = settings.depth
        widths = [settings.base_channels * 2**i for i in range(settings.depth + 1)]
        self.down = nn.ModuleList()
        in_ch = 1
        for width in widths:
            self.down.append(_block(in_ch, width))
            in_ch = width
        self.up = nn.ModuleList(
            _block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(settings.depth))
        )
        self.out = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2**self.depth
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"slice size {tuple(x.shape[-2:])} is not divisible by {factor}")
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)


def steps_per_epoch(settings: DaeSettings, n_slices: int) -> int:
    """Optimiser steps of one epoch over n_slices training slices (a last batch of one slice
    is skipped: batch norm needs two)."""
    return batches_per_epoch(n_slices, settings.batch_size, smallest=2)


def planned_steps(settings: DaeSettings, n_slices: int) -> int:
    """Optimiser steps that train_dae takes on n_slices training slices (validation slices
    come separately and take none): epochs x steps_per_epoch, at most max_steps."""
    return capped_steps(settings.epochs, steps_per_epoch(settings, n_slices), settings.max_steps)


def build_dae(settings: DaeSettings) -> UNet:
    """A freshly initialised U-Net."""
    return UNet(settings)


def coarse_noise(
    shape: tuple[int, int, int],
    resolution: int,
    std: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """(n, 1, S, S) noise: N(0, std) on a resolution x resolution grid per slice, bilinearly
    upsampled to S x S and rolled by a random offset per slice, so the blobs do not sit on a fixed
    lattice. Drawn on the CPU from `generator`, the same on every device."""
    n, height, width = shape
    grid = torch.randn((n, 1, resolution, resolution), generator=generator) * std
    noise = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=True)
    shifts = torch.randint(0, max(height, width), (n, 2), generator=generator)
    return torch.stack(
        [
            torch.roll(noise[k], shifts=(int(shifts[k, 0]), int(shifts[k, 1])), dims=(-2, -1))
            for k in range(n)
        ]
    )


def _noise_generator(seed: int, epoch: int) -> torch.Generator:
    # Noise from (seed, epoch) alone, for the same reason as the shuffle.
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def _noisy(
    clean: torch.Tensor, roi: torch.Tensor, settings: DaeSettings, generator: torch.Generator
) -> torch.Tensor:
    noise = coarse_noise(
        (clean.shape[0], clean.shape[-2], clean.shape[-1]),
        settings.noise_resolution,
        settings.noise_std,
        generator,
    )
    return clean + noise * roi


def _validation_loss(
    model: UNet,
    val: torch.Tensor,
    val_roi: torch.Tensor,
    settings: DaeSettings,
    device: torch.device,
) -> float:
    model.eval()
    generator = torch.Generator().manual_seed(_VALIDATION_NOISE_SEED)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(val), settings.batch_size):
            clean = val[start : start + settings.batch_size]
            noisy = _noisy(clean, val_roi[start : start + settings.batch_size], settings, generator)
            restored = model(noisy.to(device)).cpu()
            total += float(F.mse_loss(restored, clean, reduction="sum"))
    return total / val.numel()


def train_dae(
    train_slices: np.ndarray | StackArray,
    train_roi: np.ndarray | StackArray,
    val_slices: np.ndarray | None,
    val_roi: np.ndarray | None,
    settings: DaeSettings,
    seed: int,
    checkpoint_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] = print,
) -> tuple[UNet, pd.DataFrame]:
    """Train the U-Net to restore healthy slices from coarse noise added inside their ROI, with
    squared error and Adam; returns the model of the lowest validation loss (the same noise on
    every epoch) and the per-epoch history (epoch, train_mse, val_mse; train loss without
    validation slices).

    With `checkpoint_dir`, a checkpoint is written atomically after every epoch and a run that
    finds one resumes after its last finished epoch, with identical results: weights, batch order
    and noise all follow from `seed` and the epoch. With settings.max_steps, training stops
    after that many batches (planned_steps); the last epoch may be cut short and is validated as
    any other. Progress lines with an expected end go to `progress`.
    """
    # Slices and ROIs on disk (StackArrays) are read a batch at a time.
    on_disk = isinstance(train_slices, StackArray)
    train = train_slices if on_disk else as_slice_batch(train_slices)
    train_mask = train_roi if on_disk else as_slice_batch(train_roi)
    if tuple(train_mask.shape)[-2:] != tuple(train.shape)[-2:] or len(train_mask) != len(train):
        raise ValueError(f"train ROI shape {train_mask.shape} does not match slices {train.shape}")
    has_val = val_slices is not None and len(val_slices)
    val = as_slice_batch(val_slices) if has_val else None
    val_mask = as_slice_batch(val_roi) if has_val else None
    if len(train) < 2:
        raise ValueError("need at least two training slices (batch norm)")
    torch_device = torch.device(device)

    torch.manual_seed(seed)
    model = build_dae(settings).to(torch_device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    ticker = StepProgress("dae", planned_steps(settings, len(train)), progress)

    def run_epoch(epoch: int, batches: int | None) -> float:
        order = torch.as_tensor(epoch_order(seed, epoch, len(train)))
        generator = _noise_generator(seed, epoch)
        total, seen, taken = 0.0, 0, 0
        for start in range(0, len(train), settings.batch_size):
            if taken == batches:  # the step budget (max_steps) is spent
                break
            idx = order[start : start + settings.batch_size]
            if idx.numel() < 2:  # batch norm needs two samples for batch statistics
                continue
            clean = stack_rows(train, idx)
            noisy = _noisy(clean, stack_rows(train_mask, idx), settings, generator)
            loss = F.mse_loss(model(noisy.to(torch_device)), clean.to(torch_device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * idx.numel()
            seen += idx.numel()
            taken += 1
            ticker.step()
        return total / max(seen, 1)

    def validate() -> float:
        return _validation_loss(model, val, val_mask, settings, torch_device)

    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    rows = fit_epochs(
        model,
        optimiser,
        run_epoch,
        validate if val is not None else None,
        settings.epochs,
        settings.to_dict(),
        seed,
        checkpoint,
        torch_device,
        "dae",
        "mse",
        progress,
        digits=5,
        steps_per_epoch=steps_per_epoch(settings, len(train)),
        max_steps=settings.max_steps,
        ticker=ticker,
    )
    return model.cpu(), pd.DataFrame(rows, columns=["epoch", "train_mse", "val_mse"])


def restore(
    model: UNet, slices: np.ndarray, batch_size: int = 16, device: str = "cpu"
) -> np.ndarray:
    """Restorations (n, S, S) float32 of unchanged (n, S, S) slices, eval mode; the `dae` map is
    |restoration - input| inside the ROI (arepas.maps.anomaly_maps with `extra_recons`)."""
    data = as_slice_batch(slices)
    model.eval().to(device)
    with torch.no_grad():
        out = [
            model(data[i : i + batch_size].to(device)).cpu()
            for i in range(0, len(data), batch_size)
        ]
    if not out:
        return np.zeros(np.shape(slices), dtype=np.float32)
    return torch.cat(out)[:, 0].numpy().astype(np.float32)


def save_dae(
    path: str | os.PathLike,
    model: UNet,
    settings: DaeSettings,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write weights, settings and a JSON-serialisable meta dict atomically."""
    save_torch(
        {
            "state_dict": model.state_dict(),
            "settings": settings.to_dict(),
            "meta_json": json.dumps(meta or {}),
        },
        path,
    )


def load_dae(path: str | os.PathLike) -> tuple[UNet, DaeSettings, dict[str, Any]]:
    """Read a model written by save_dae; the model is returned in eval mode on the CPU."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    settings = DaeSettings.from_dict(payload["settings"])
    model = build_dae(settings)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, settings, json.loads(payload["meta_json"])

"""Convolutional autoencoder: the classic reconstruction baseline (anomaly map = |AE(x) - x|).

Trained on healthy slices only, like the translator. Its hyper-parameters are not from the AREPAS
paper (which compares against such baselines); they are ordinary choices for a spatial-bottleneck
autoencoder (stride-2 4x4 convs with batch norm and LeakyReLU 0.2, mirrored with transposed convs).
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

CHECKPOINT_NAME = "autoencoder_last.pt"


@dataclass
class AutoencoderSettings:
    """Network size and training; `max_steps` (None: no cap) stops training after that many
    batches, mid-epoch if need be (see arepas.progress)."""

    base_channels: int = 32
    depth: int = 4
    latent_channels: int = 16
    lr: float = 1e-3
    batch_size: int = 16
    epochs: int = 30
    max_steps: int | None = None

    def __post_init__(self) -> None:
        check_max_steps(self.max_steps)
        for name in ("base_channels", "depth", "latent_channels", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> AutoencoderSettings:
        """Settings from a config mapping; unknown keys are an error, missing keys keep defaults."""
        return settings_from_dict(cls, values, "autoencoder")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConvAutoencoder(nn.Module):
    """depth x (stride-2 conv, BN, LeakyReLU) -> 1x1 bottleneck -> mirrored decoder -> tanh."""

    def __init__(self, settings: AutoencoderSettings) -> None:
        super().__init__()
        self.depth = settings.depth
        widths = [
            min(settings.base_channels * 2**i, settings.base_channels * 8)
            for i in range(settings.depth)
        ]
        encoder: list[nn.Module] = []
        in_ch = 1
        for width in widths:
            encoder += [
                nn.Conv2d(in_ch, width, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.LeakyReLU(0.2),
            ]
            in_ch = width
        # The 1x1 squeeze to few channels is the information bottleneck: it keeps the model from
        # copying lesions through to the output.
        encoder += [nn.Conv2d(in_ch, settings.latent_channels, 1)]
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [
            nn.Conv2d(settings.latent_channels, in_ch, 1, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.LeakyReLU(0.2),
        ]
        for width in reversed([settings.base_channels, *widths[:-1]]):
            decoder += [
                nn.ConvTranspose2d(in_ch, width, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.LeakyReLU(0.2),
            ]
            in_ch = width
        decoder += [nn.Conv2d(in_ch, 1, 3, padding=1), nn.Tanh()]
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2**self.depth
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"slice size {tuple(x.shape[-2:])} is not divisible by {factor}")
        return self.decoder(self.encoder(x))


def steps_per_epoch(settings: AutoencoderSettings, n_slices: int) -> int:
    """Optimiser steps of one epoch over n_slices training slices (a last batch of one slice
    is skipped: batch norm needs two)."""
    return batches_per_epoch(n_slices, settings.batch_size, smallest=2)


def planned_steps(settings: AutoencoderSettings, n_slices: int) -> int:
    """Optimiser steps that train_autoencoder takes on n_slices training slices (validation
    slices come separately and take none): epochs x steps_per_epoch, at most max_steps."""
    return capped_steps(settings.epochs, steps_per_epoch(settings, n_slices), settings.max_steps)


def build_autoencoder(settings: AutoencoderSettings) -> ConvAutoencoder:
    """A freshly initialised autoencoder."""
    return ConvAutoencoder(settings)


def _mean_l1(model: ConvAutoencoder, slices: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(slices), batch_size):
            batch = slices[start : start + batch_size]
            total += float(F.l1_loss(model(batch), batch, reduction="sum"))
    return total / slices.numel()


def train_autoencoder(
    train_slices: np.ndarray | StackArray,
    val_slices: np.ndarray | None,
    settings: AutoencoderSettings,
    seed: int,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: Callable[[str], None] = print,
    device: str = "cpu",
) -> tuple[ConvAutoencoder, pd.DataFrame]:
    """Train with L1 loss and Adam; returns the best-validation model and the per-epoch history.

    With `checkpoint_dir`, a checkpoint is written atomically after every epoch and a run that
    finds one resumes after its last finished epoch (with identical results). With
    settings.max_steps, training stops after that many batches (planned_steps); the last epoch
    may be cut short and is validated as any other. Progress lines with an expected end go to
    `progress` (arepas.progress.StepProgress).
    History columns: epoch, train_l1, val_l1 (train L1 when no validation slices are given).
    On ``device`` ("cpu", "cuda", "cuda:1"): slices and model live there, the same steps run on
    CPU and GPU, and a checkpoint from either resumes on the other. The model is returned on
    ``device``.
    """
    torch_device = torch.device(device)
    # Slices on disk (a StackArray) are read a batch at a time; an array goes to the device whole.
    train = (
        train_slices
        if isinstance(train_slices, StackArray)
        else as_slice_batch(train_slices, torch_device)
    )
    has_val = val_slices is not None and len(val_slices)
    val = as_slice_batch(val_slices, torch_device) if has_val else None
    if len(train) < 2:
        raise ValueError("need at least two training slices (batch norm)")

    torch.manual_seed(seed)
    # Built on the CPU, then moved: the initial weights do not depend on the device.
    model = build_autoencoder(settings).to(torch_device)
    # Adam with torch defaults otherwise (betas 0.9, 0.999).
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    ticker = StepProgress("autoencoder", planned_steps(settings, len(train)), progress)

    def run_epoch(epoch: int, batches: int | None) -> float:
        order = torch.as_tensor(epoch_order(seed, epoch, len(train)), device=torch_device)
        total, seen, taken = 0.0, 0, 0
        for start in range(0, len(train), settings.batch_size):
            if taken == batches:  # the step budget (max_steps) is spent
                break
            idx = order[start : start + settings.batch_size]
            if idx.numel() < 2:  # batch norm needs two samples for batch statistics
                continue
            batch = stack_rows(train, idx, torch_device)
            loss = F.l1_loss(model(batch), batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * idx.numel()
            seen += idx.numel()
            taken += 1
            ticker.step()
        return total / max(seen, 1)

    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    rows = fit_epochs(
        model,
        optimiser,
        run_epoch,
        (lambda: _mean_l1(model, val, settings.batch_size)) if val is not None else None,
        settings.epochs,
        settings.to_dict(),
        seed,
        checkpoint,
        torch_device,
        "autoencoder",
        "l1",
        progress,
        steps_per_epoch=steps_per_epoch(settings, len(train)),
        max_steps=settings.max_steps,
        ticker=ticker,
    )
    return model, pd.DataFrame(rows, columns=["epoch", "train_l1", "val_l1"])


def reconstruct_autoencoder(
    model: ConvAutoencoder, slices: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """Reconstructions (n, S, S) float32 in [-1, 1] of (n, S, S) slices, eval mode, on the
    model's device (load_autoencoder's ``device``)."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        # Batch by batch to the device: only one batch of slices occupies GPU memory.
        for first in range(0, len(slices), batch_size):
            batch = as_slice_batch(slices[first : first + batch_size], device)
            out.append(model(batch)[:, 0].cpu().numpy())
    if not out:
        as_slice_batch(slices)  # the shape check
        return np.zeros(np.shape(slices), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


def save_autoencoder(
    path: str | os.PathLike,
    model: ConvAutoencoder,
    settings: AutoencoderSettings,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write weights, settings and a JSON-serialisable meta dict atomically."""
    save_torch(
        {
            # CPU tensors: the file loads on any machine, with or without a GPU.
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "settings": settings.to_dict(),
            "meta_json": json.dumps(meta or {}),
        },
        path,
    )


def load_autoencoder(
    path: str | os.PathLike, device: str = "cpu"
) -> tuple[ConvAutoencoder, AutoencoderSettings, dict[str, Any]]:
    """Read an autoencoder written by save_autoencoder; the model is returned in eval mode on
    ``device``."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    settings = AutoencoderSettings.from_dict(payload["settings"])
    model = build_autoencoder(settings)
    model.load_state_dict(payload["state_dict"])
    model.to(device)
    model.eval()
    return model, settings, json.loads(payload["meta_json"])

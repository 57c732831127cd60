"""The epoch loop the two autoencoder baselines share: batches of slices from memory or from a
stack on disk, a shuffle that depends on (seed, epoch) only, the model of the lowest validation
loss, and a checkpoint after every epoch from which an interrupted job resumes with identical
results. What differs between the baselines (the loss, the noise) is their own `run_epoch`."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from arepas.io import load_epoch_checkpoint, save_torch
from arepas.stacks import StackArray, batch_tensor


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of n training slices in one epoch."""
    # From (seed, epoch) alone, so that a resumed run is identical to an uninterrupted one.
    return np.random.default_rng([seed, epoch]).permutation(n)


def as_slice_batch(slices: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, S, S) slices as a float32 (n, 1, S, S) tensor on `device`."""
    array = np.asarray(slices, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"slices must be (n, S, S), got {array.shape}")
    return torch.as_tensor(array, device=device).unsqueeze(1)


def stack_rows(
    stack: torch.Tensor | StackArray, idx: torch.Tensor, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Rows idx of a stack as float32 (b, 1, S, S) on `device`, read from disk for a StackArray."""
    if isinstance(stack, StackArray):
        return batch_tensor(stack, idx.cpu().numpy()).to(device)
    return stack[idx]


def fit_epochs(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    run_epoch: Callable[[int], float],
    validate: Callable[[], float] | None,
    epochs: int,
    settings: dict,
    seed: int,
    checkpoint: str | os.PathLike | None,
    device: torch.device,
    name: str,
    loss: str,
    progress: Callable[[str], None] = print,
    digits: int = 4,
) -> list[dict[str, float]]:
    """Train for `epochs` (`run_epoch(epoch)` trains one and returns its mean training loss;
    `validate()` the validation loss, or the training loss stands in), then load the weights
    of the lowest validation loss into `model` and set it to eval mode. History rows: epoch,
    train_<loss>, val_<loss>.

    With a `checkpoint` file, it is written atomically after every epoch (`settings` and `seed`
    stored with it), and a call that finds one resumes after its last finished epoch.
    """
    rows: list[dict[str, float]] = []
    best_val = float("inf")
    best_state = copy.deepcopy(model.state_dict())
    first_epoch = 1
    saved = load_epoch_checkpoint(checkpoint, settings, seed, device)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        best_state = saved["best_model"]
        best_val = float(saved["best_val"])
        rows = json.loads(saved["history_json"])
        first_epoch = int(saved["epoch"]) + 1
        progress(f"{name}: resuming after epoch {first_epoch - 1}")

    label = loss.upper()
    for epoch in range(first_epoch, epochs + 1):
        model.train()
        train_loss = run_epoch(epoch)
        val_loss = validate() if validate is not None else train_loss
        rows.append({"epoch": epoch, f"train_{loss}": train_loss, f"val_{loss}": val_loss})
        progress(
            f"{name} epoch {epoch}/{epochs}: train {label} {train_loss:.{digits}f}, "
            f"val {label} {val_loss:.{digits}f}"
        )
        if val_loss < best_val:
            best_val, best_state = val_loss, copy.deepcopy(model.state_dict())
        if checkpoint is not None:
            save_torch(
                {
                    "model": model.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "best_model": best_state,
                    "best_val": best_val,
                    "epoch": epoch,
                    "seed": seed,
                    "settings_json": json.dumps(settings),
                    "history_json": json.dumps(rows),
                },
                checkpoint,
            )

    model.load_state_dict(best_state)
    model.eval()
    return rows

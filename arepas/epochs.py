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
from arepas.progress import StepProgress, capped_steps, effective_epochs
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


# Budget settings are left out of the settings stored with a checkpoint: a resumed job may be
# given another budget, as it may be given more epochs (which check_resumable lets differ).
_BUDGET_SETTINGS = ("max_steps",)


def fit_epochs(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    run_epoch: Callable[[int, int | None], float],
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
    *,
    steps_per_epoch: int | None = None,
    max_steps: int | None = None,
    ticker: StepProgress | None = None,
) -> list[dict[str, float]]:
    """Train for `epochs` (`run_epoch(epoch, batches)` trains the first `batches` batches of one,
    all of them for None, and returns its mean training loss; `validate()` the validation loss,
    or the training loss stands in), then load the weights of the lowest validation loss into
    `model` and set it to eval mode. History rows: epoch, train_<loss>, val_<loss>.

    With `max_steps` (which needs `steps_per_epoch`, the batches run_epoch trains in a whole
    epoch), training stops after that many batches, cutting the last epoch short; that epoch is
    validated, logged and checkpointed as any other. `ticker` (if any) is told the steps done
    before this run and each epoch's end; run_epoch counts its steps on it.

    With a `checkpoint` file, it is written atomically after every epoch (`settings` and `seed`
    stored with it), and a call that finds one resumes after its last finished epoch. Only
    `epochs` and `max_steps` may differ on a resume. An epoch cut short by max_steps is stored
    with the state it started from: a later call with a larger budget trains it again from
    there, as an uninterrupted run with that budget would have trained it.
    """
    if max_steps is not None and steps_per_epoch is None:
        raise ValueError("max_steps needs steps_per_epoch")
    settings = {k: v for k, v in settings.items() if k not in _BUDGET_SETTINGS}
    total = last_epoch = None
    if steps_per_epoch is not None:
        total = capped_steps(epochs, steps_per_epoch, max_steps)
        last_epoch = effective_epochs(epochs, steps_per_epoch, max_steps)
    last_epoch = epochs if last_epoch is None else last_epoch
    rows: list[dict[str, float]] = []
    best_val = float("inf")
    best_state = copy.deepcopy(model.state_dict())
    first_epoch = 1
    saved = load_epoch_checkpoint(checkpoint, settings, seed, device)
    if saved is not None:
        done = saved.get("steps")
        before_cut = saved.get("before_cut")
        if before_cut is not None and total is not None and done < total:
            # The last epoch was cut short by a smaller budget: train it again from its start.
            saved = {**saved, **before_cut, "epoch": int(saved["epoch"]) - 1}
            progress(
                f"{name}: resuming before epoch {int(saved['epoch']) + 1}, which max_steps "
                f"cut short at step {done}"
            )
        else:
            progress(f"{name}: resuming after epoch {int(saved['epoch'])}")
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        best_state = saved["best_model"]
        best_val = float(saved["best_val"])
        rows = json.loads(saved["history_json"])
        first_epoch = int(saved["epoch"]) + 1
    # Epochs before first_epoch are whole: a cut one is either the last or trained again.
    steps = (first_epoch - 1) * steps_per_epoch if steps_per_epoch is not None else None
    if ticker is not None and steps is not None:
        ticker.done = steps

    label = loss.upper()
    for epoch in range(first_epoch, last_epoch + 1):
        batches = before_cut = None
        if total is not None and total - steps < steps_per_epoch:
            batches = total - steps
            # What a later run with a larger budget starts this epoch again from.
            before_cut = {
                "model": copy.deepcopy(model.state_dict()),
                "optimiser": copy.deepcopy(optimiser.state_dict()),
                "best_model": best_state,
                "best_val": best_val,
                "history_json": json.dumps(rows),
            }
        model.train()
        train_loss = run_epoch(epoch, batches)
        if steps is not None:
            steps += steps_per_epoch if batches is None else batches
        val_loss = validate() if validate is not None else train_loss
        rows.append({"epoch": epoch, f"train_{loss}": train_loss, f"val_{loss}": val_loss})
        cut = f" (cut short at step {steps} by max_steps)" if batches is not None else ""
        progress(
            f"{name} epoch {epoch}/{last_epoch}: train {label} {train_loss:.{digits}f}, "
            f"val {label} {val_loss:.{digits}f}{cut}"
        )
        if ticker is not None:
            ticker.epoch_end()
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
                    "steps": steps,
                    "before_cut": before_cut,
                    "seed": seed,
                    "settings_json": json.dumps(settings),
                    "history_json": json.dumps(rows),
                },
                checkpoint,
            )

    model.load_state_dict(best_state)
    model.eval()
    return rows

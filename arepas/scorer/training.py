"""Training the scorer on mined pairs: contrastive loss, the warm-up restart rule, held-out
selection, step budgets and resumable checkpoints."""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from arepas.io import load_epoch_checkpoint, save_torch
from arepas.progress import (
    StepProgress,
    batches_per_epoch,
    capped_steps,
    effective_epochs,
)
from arepas.scorer.network import SiameseScorer, build_siamese
from arepas.scorer.pairs import _as_rows
from arepas.scorer.settings import ScorerSettings
from arepas.stacks import StackArray, batch_tensor


class StalledScorerError(RuntimeError):
    """The Siamese scorer did not learn; carries the training history and the best model seen,
    for callers that choose to keep a flagged model rather than stop."""

    def __init__(
        self, message: str, history: pd.DataFrame, model: SiameseScorer | None = None
    ) -> None:
        super().__init__(message)
        self.history = history
        self.model = model


def contrastive_loss(distance: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Label 0 (similar): d^2; label 1 (dissimilar): max(0, margin - d)^2; batch mean.

    The reference applies it to the sigmoid output p (d = p); loss="detached_head" to the raw
    embedding distance."""
    return torch.mean(
        (1.0 - labels) * distance**2 + labels * torch.clamp(margin - distance, min=0.0) ** 2
    )


def _derived_seed(seed: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])


def _predict_rows(
    model: SiameseScorer, pairs: Callable[[np.ndarray], tuple], rows: np.ndarray, batch: int
) -> torch.Tensor:
    # As _predict, for pairs gathered a batch at a time.
    model.eval()
    with torch.no_grad():
        scores = []
        for first in range(0, len(rows), batch):
            a, b, _ = pairs(rows[first : first + batch])
            scores.append(model(a, b))
    return torch.cat(scores)


def _is_dissimilar(score: torch.Tensor) -> torch.Tensor:
    # The reference counts p >= 0.5 as "dissimilar".
    return (score >= 0.5).float()


@dataclass
class _EpochResult:
    loss: float
    accuracy: float  # over all pairs of the epoch
    last_batch_accuracy: float


def _batch_loss(
    model: SiameseScorer,
    a: torch.Tensor,
    b: torch.Tensor,
    y: torch.Tensor,
    settings: ScorerSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, dissimilarity score) of one batch under the settings' loss."""
    distance = model.distance(a, b)
    if settings.loss == "reference":
        # End to end: the contrastive loss acts on p = sigmoid(linear(batchnorm(distance))).
        score = torch.sigmoid(model.logit_from_distance(distance))
        return contrastive_loss(score, y, settings.margin), score
    # Ours: the embedding learns only from the contrastive loss on the distance; the head is a
    # 1-D logistic calibration of the detached distance, trained with BCE.
    logit = model.logit_from_distance(distance.detach())
    loss = contrastive_loss(distance, y, settings.margin)
    loss = loss + F.binary_cross_entropy_with_logits(logit, y)
    return loss, torch.sigmoid(logit)


def _train_epoch(
    model: SiameseScorer,
    optimiser: torch.optim.Optimizer,
    pairs: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    rows: np.ndarray,
    settings: ScorerSettings,
    generator: torch.Generator,
    max_batches: int | None = None,
    on_step: Callable[[], None] | None = None,
) -> _EpochResult:
    """One epoch over `rows` in an order drawn from `generator`; only its first max_batches
    batches when given (the order is drawn whole either way). on_step() after every step."""
    model.train()
    # The generator lives on the CPU, so the order is the same whatever the device.
    order = torch.randperm(len(rows), generator=generator).numpy()
    batches = [
        order[start : start + settings.batch_size]
        for start in range(0, len(rows), settings.batch_size)
    ]
    # Batch norm needs two samples for batch statistics.
    batches = [idx for idx in batches if idx.size >= 2][:max_batches]
    total_loss, correct, seen, last = 0.0, 0, 0, float("nan")
    for idx, (a, b, y) in zip(batches, _prefetched(pairs, [rows[i] for i in batches]), strict=True):
        loss, score = _batch_loss(model, a, b, y, settings)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        hits = int((_is_dissimilar(score.detach()) == y).sum())
        total_loss += loss.item() * idx.size
        correct += hits
        seen += idx.size
        last = hits / idx.size
        if on_step is not None:
            on_step()
    return _EpochResult(total_loss / max(seen, 1), correct / max(seen, 1), last)


def _prefetched(pairs: Callable[[np.ndarray], tuple], batches: list[np.ndarray]):
    """pairs(batch) for each batch in turn, the next one read in a background thread while the
    caller trains on the current one: reads from disk release the interpreter, so a GPU does not
    wait for them. The order and the values are those of reading one after the other."""
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(pairs, batches[0])
        for following in [*batches[1:], None]:
            ready = pending.result()
            if following is not None:
                pending = reader.submit(pairs, following)
            yield ready


def _passes_warmup(result: _EpochResult, settings: ScorerSettings) -> tuple[bool, float]:
    if settings.warmup_rule == "last_batch":
        # Reference: the accuracy of the warm-up epoch's last batch must exceed the bar.
        return result.last_batch_accuracy > settings.warmup_accuracy, result.last_batch_accuracy
    return result.accuracy >= settings.warmup_accuracy, result.accuracy


def _new_optimiser(model: SiameseScorer, settings: ScorerSettings) -> torch.optim.Optimizer:
    # torch.optim.RMSprop defaults otherwise (alpha 0.99, eps 1e-8); lr 1e-3 as published.
    return torch.optim.RMSprop(model.parameters(), lr=settings.lr)


# File name of the scorer's per-epoch checkpoint inside its checkpoint folder.
CHECKPOINT_NAME = "scorer_last.pt"


def heldout_count(settings: ScorerSettings, n_pairs: int) -> int:
    """Pairs train_scorer holds out of n_pairs, for the held-out accuracy."""
    return int(round(settings.holdout * n_pairs))


def steps_per_epoch(settings: ScorerSettings, n_pairs: int) -> int:
    """Optimiser steps of one epoch (warm-up or main) on n_pairs mined pairs: a batch of the
    pairs not held out each, a last batch of one pair skipped (batch norm needs two)."""
    n_train = n_pairs - heldout_count(settings, n_pairs)
    return batches_per_epoch(n_train, settings.batch_size, smallest=2)


def planned_steps_for_pairs(settings: ScorerSettings, n_pairs: int) -> int:
    """Optimiser steps train_scorer takes on n_pairs mined pairs when its first try passes
    the warm-up: one warm-up epoch, then epochs x steps_per_epoch, at most max_steps (which
    caps the main training only). Each failed try adds one epoch (steps_per_epoch)."""
    epoch_steps = steps_per_epoch(settings, n_pairs)
    return epoch_steps + capped_steps(settings.epochs, epoch_steps, settings.max_steps)


def expected_pair_count(
    settings: ScorerSettings, n_slices: int, pairs_per_slice: int, slice_side: int | None = None
) -> int:
    """The number of pairs mine_hard_pairs gives, as mined by the workflow from n_slices
    training slices of a translator with pairs_per_slice training pairs per slice
    (translator.pairs_per_slice; only mining_source 'augmented' reads it).

    Mining reconstructs every slice_step-th sample (mining_plan), draws patches_per_slice
    places in each (fewer where a slice of side slice_side has fewer places; side unknown:
    assumed enough), keeps those above the percentile of their errors and pairs each kept patch
    once as positive, once as negative. Exact when the errors have no ties and every sample
    offers its places; with mining_region 'roi', an ROI with fewer places than patches_per_slice
    makes it an upper bound.
    """
    samples = n_slices * pairs_per_slice if settings.mining_source == "augmented" else n_slices
    picked = -(-max(samples, 0) // settings.slice_step)
    per_sample = settings.patches_per_slice
    if slice_side is not None:
        per_sample = min(per_sample, max(slice_side - settings.patch_size + 1, 0) ** 2)
    candidates = picked * per_sample
    if candidates < 1:
        return 0
    # Kept: the errors strictly above np.percentile's linear interpolation between the sorted
    # errors at index q (N - 1) / 100 and the next.
    position = settings.percentile * (candidates - 1) / 100.0
    return 2 * (candidates - 1 - math.floor(position))


def planned_steps(
    settings: ScorerSettings, n_slices: int, pairs_per_slice: int, slice_side: int | None = None
) -> int:
    """Optimiser steps of training the scorer on the pairs mined from n_slices training
    slices (expected_pair_count, whose arguments these are), when its first try passes the
    warm-up: planned_steps_for_pairs of that count. Before mining, so an estimate in the cases
    expected_pair_count names."""
    return planned_steps_for_pairs(
        settings, expected_pair_count(settings, n_slices, pairs_per_slice, slice_side)
    )


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _main_state(
    model: SiameseScorer,
    optimiser: torch.optim.Optimizer,
    generator: torch.Generator,
    best_acc: float,
    best_state: dict | None,
    held_acc: float,
) -> dict:
    """What a resume of the main training needs besides the try and the epoch."""
    return {
        "model": _cpu_state(model),
        "optimiser": optimiser.state_dict(),
        "generator": generator.get_state(),
        "best_acc": best_acc,
        "best_state": best_state,
        "held_acc": held_acc,
    }


def train_scorer(
    patches_a: np.ndarray | StackArray,
    patches_b: np.ndarray | StackArray,
    labels: np.ndarray,
    settings: ScorerSettings,
    seed: int,
    progress: Callable[[str], None] = print,
    device: str = "cpu",
    checkpoint_dir: str | os.PathLike | None = None,
) -> tuple[SiameseScorer, pd.DataFrame]:
    """Train with the restart rule; keep the state with the best held-out accuracy.

    patches_a / patches_b are arrays or StackArrays on disk (mine_hard_pairs with a folder);
    each batch is gathered from them when it is needed. On ``device`` ("cpu", "cuda",
    "cuda:1"): each batch moves there and the model is built there, so CPU and GPU run the same
    steps; batch order and initialisation come from seeded CPU generators either way. The model
    is returned on ``device``.

    With `checkpoint_dir`, the whole training state (try, epoch, weights, optimiser, batch-order
    generator, best states, history) is written atomically after every warm-up and training
    epoch, and a run that finds it resumes after the last finished epoch with the same result
    as an uninterrupted run, given the same pairs. Only `epochs` and `max_steps` may differ on a
    resume. With max_steps (see ScorerSettings), the main training stops when that many steps
    are spent; an epoch cut short is stored with the state it started from, and a later run with
    a larger budget trains it again from there, as an uninterrupted run would have. Progress
    lines with an expected end go to `progress` (arepas.progress.StepProgress).

    History columns: try, epoch (0 = warm-up epoch), train_loss, train_acc, heldout_acc,
    warmup_acc (the accuracy the restart rule judged; warm-up rows only).
    Raises StalledScorerError if no try passes warm-up, or if `stall_accuracy` is set and the
    best held-out accuracy is at or below it.
    """
    torch_device = torch.device(device)
    a_rows, b_rows = _as_rows(patches_a), _as_rows(patches_b)
    y_all = np.asarray(labels, dtype=np.float32)
    if not (len(a_rows) == len(b_rows) == len(y_all)):
        raise ValueError(
            f"pair arrays differ in length: {len(a_rows)}, {len(b_rows)}, {len(y_all)}"
        )
    if tuple(a_rows.shape[-2:]) != (settings.patch_size,) * 2:
        raise ValueError(
            f"patches are {tuple(a_rows.shape[-2:])}, settings say {settings.patch_size}"
        )

    def pairs(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # One batch at a time from wherever the pairs are (memory or disk), so a pair set of a
        # large cohort is never whole in memory, on the host or on the device.
        a, b = batch_tensor(a_rows, rows), batch_tensor(b_rows, rows)
        y = torch.from_numpy(y_all[rows])
        return a.to(torch_device), b.to(torch_device), y.to(torch_device)

    # One split for all tries, so warm-up epochs never see the held-out pairs. (The reference
    # warms up on all pairs and splits afterwards, so its held-out accuracy is measured partly
    # on pairs the network has trained on; we keep them apart.)
    n_pairs = len(y_all)
    order = np.random.default_rng(seed).permutation(n_pairs)
    n_held = heldout_count(settings, n_pairs)
    if n_held < 1 or n_pairs - n_held < 2:
        raise ValueError(f"{n_pairs} pairs are too few for a {settings.holdout} hold-out split")
    held, train = order[:n_held], order[n_held:]
    y_held = torch.from_numpy(y_all[held]).to(torch_device)

    def heldout_accuracy(model: SiameseScorer) -> float:
        scores = _predict_rows(model, pairs, held, settings.batch_size)
        return float((_is_dissimilar(scores) == y_held).float().mean())

    rows: list[dict[str, float]] = []
    best_warmup, best_warmup_state = -1.0, None
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    # The settings a resume may not change; the pair count stands in for the pairs themselves
    # (the caller's checkpoint folder is keyed on what they were mined from). The budget may
    # change, like `epochs`; left out, it also leaves checkpoints from before it existed valid.
    fixed = {
        **{k: v for k, v in settings.to_dict().items() if k != "max_steps"},
        "n_pairs": n_pairs,
    }
    epoch_steps = steps_per_epoch(settings, n_pairs)
    main_total = capped_steps(settings.epochs, epoch_steps, settings.max_steps)
    epochs = effective_epochs(settings.epochs, epoch_steps, settings.max_steps)
    saved = load_epoch_checkpoint(checkpoint, fixed, seed, torch_device)
    first_try, resume = 0, None
    if saved is not None:
        rows = json.loads(saved["history_json"])
        best_warmup, best_warmup_state = float(saved["best_warmup"]), saved["best_warmup_model"]
        if saved["phase"] == "warmup_failed":
            first_try = int(saved["try"]) + 1
            progress(f"scorer: resuming after the failed warm-up of try {first_try}")
        elif saved.get("before_cut") is not None and saved["main_steps"] < main_total:
            # Its last epoch was cut short by a smaller budget: train it again from its start.
            first_try = int(saved["try"])
            resume = {**saved, **saved["before_cut"], "epoch": int(saved["epoch"]) - 1}
            rows = json.loads(resume["history_json"])
            progress(
                f"scorer: resuming try {first_try + 1} before epoch {int(saved['epoch'])}, "
                f"which max_steps cut short at step {saved['main_steps']}"
            )
        else:
            first_try, resume = int(saved["try"]), saved
            progress(f"scorer: resuming try {first_try + 1} after epoch {int(saved['epoch'])}")
    # Steps so far: one whole warm-up epoch per try before, this try's too when resuming its
    # main training, whose epochs before the first to train are whole.
    done = first_try * epoch_steps
    if resume is not None:
        done += epoch_steps + int(resume["epoch"]) * epoch_steps
    ticker = StepProgress("scorer", 0, progress, done=done)

    def save(phase: str, attempt: int, epoch: int, **state) -> None:
        if checkpoint is None:
            return
        save_torch(
            {
                "phase": phase,
                "try": attempt,
                "epoch": epoch,
                "seed": seed,
                "settings_json": json.dumps(fixed),
                "history_json": json.dumps(rows),
                "best_warmup": best_warmup,
                "best_warmup_model": best_warmup_state,
                **state,
            },
            checkpoint,
        )

    for attempt in range(first_try, settings.max_restarts):
        # The plan as of this try: its warm-up passes.
        ticker.total = (attempt + 1) * epoch_steps + main_total
        try_seed = _derived_seed(seed, attempt)
        torch.manual_seed(try_seed)
        # Built on the CPU, then moved: the initial weights do not depend on the device.
        model = build_siamese(settings).to(torch_device)
        generator = torch.Generator().manual_seed(try_seed)
        # A fresh optimiser for the main training, as in the reference.
        optimiser = _new_optimiser(model, settings)
        if resume is not None:
            model.load_state_dict(resume["model"])
            optimiser.load_state_dict(resume["optimiser"])
            generator.set_state(resume["generator"])
            best_acc, best_state = float(resume["best_acc"]), resume["best_state"]
            held_acc, first_epoch = float(resume["held_acc"]), int(resume["epoch"]) + 1
            resume = None
        else:
            result = _train_epoch(
                model, _new_optimiser(model, settings), pairs, train, settings, generator,
                on_step=ticker.step,
            )
            passed, judged = _passes_warmup(result, settings)
            held_acc = heldout_accuracy(model)
            rows.append(_history_row(attempt, 0, result.loss, result.accuracy, held_acc, judged))
            if judged > best_warmup:
                best_warmup, best_warmup_state = judged, _cpu_state(model)
            if not passed:
                progress(
                    f"scorer try {attempt + 1}/{settings.max_restarts}: warm-up accuracy "
                    f"{judged:.3f} ({settings.warmup_rule}) not above "
                    f"{settings.warmup_accuracy}, restarting"
                )
                ticker.epoch_end()
                save("warmup_failed", attempt, 0)
                continue
            progress(f"scorer try {attempt + 1}: warm-up accuracy {judged:.3f}, training on")
            ticker.epoch_end()
            best_acc, best_state, first_epoch = -1.0, None, 1

        # Epochs before first_epoch are whole: a cut one is the last or trained again.
        main_steps = (first_epoch - 1) * epoch_steps
        if first_epoch == 1 and checkpoint is not None:
            save("main", attempt, 0, main_steps=0, **_main_state(
                model, optimiser, generator, best_acc, best_state, held_acc))
        for epoch in range(first_epoch, epochs + 1):
            batches = before_cut = None
            if main_total - main_steps < epoch_steps:
                batches = main_total - main_steps
                # max_steps ends training within this epoch. What a later run with a larger
                # budget starts this epoch again from:
                before_cut = copy.deepcopy({
                    **_main_state(model, optimiser, generator, best_acc, best_state, held_acc),
                    "history_json": json.dumps(rows),
                })
            result = _train_epoch(
                model, optimiser, pairs, train, settings, generator, batches, ticker.step
            )
            main_steps += epoch_steps if batches is None else batches
            held_acc = heldout_accuracy(model)
            rows.append(_history_row(attempt, epoch, result.loss, result.accuracy, held_acc))
            cut = f" (cut short at step {main_steps} by max_steps)" if batches is not None else ""
            progress(
                f"scorer epoch {epoch}/{epochs}: loss {result.loss:.4f}, "
                f"train acc {result.accuracy:.3f}, held-out acc {held_acc:.3f}{cut}"
            )
            ticker.epoch_end()
            if held_acc > best_acc:
                best_acc, best_state = held_acc, _cpu_state(model)
            if checkpoint is not None:  # the state is copied only to be written
                save("main", attempt, epoch, main_steps=main_steps, before_cut=before_cut,
                     **_main_state(model, optimiser, generator, best_acc, best_state, held_acc))
        history = _history_frame(rows)
        if best_state is not None:
            model.load_state_dict(best_state)
        else:  # epochs == 0: the warm-up model is the result
            best_acc = held_acc
        model.eval()
        if settings.stall_accuracy is not None and best_acc <= settings.stall_accuracy:
            raise StalledScorerError(
                f"Siamese scorer stalled: best held-out accuracy {best_acc:.3f} <= "
                f"{settings.stall_accuracy} after warm-up; its maps would be noise",
                history,
                model,
            )
        return model, history

    history = _history_frame(rows)
    best_warmup_model = None
    if best_warmup_state is not None:
        best_warmup_model = build_siamese(settings).to(torch_device)
        best_warmup_model.load_state_dict(best_warmup_state)
        best_warmup_model.eval()
    raise StalledScorerError(
        f"Siamese scorer stalled: no try of {settings.max_restarts} reached the warm-up "
        f"accuracy {settings.warmup_accuracy} ({settings.warmup_rule}; best seen "
        f"{best_warmup:.3f})",
        history,
        best_warmup_model,
    )


HISTORY_COLUMNS = ["try", "epoch", "train_loss", "train_acc", "heldout_acc", "warmup_acc"]


def _history_row(
    attempt: int, epoch: int, loss: float, acc: float, held: float, warmup: float = float("nan")
) -> dict:
    return dict(zip(HISTORY_COLUMNS, (attempt, epoch, loss, acc, held, warmup), strict=True))


def _history_frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)

"""Siamese patch scorer: hard pair mining, network, training with stall detection, patch scoring.

Published defaults (Mitic & Langs, MLMI 2025, arXiv 2509.12905, reference implementation; see
/work/shared/method/AREPAS.md): 16x16 patches, 256 per slice from every 3rd training slice, pairs
kept above the 90th MSE percentile, contrastive loss with margin 1, RMSprop 1e-3, batch 1024,
restart until one epoch passes 70 % training accuracy (up to 100 tries), then 10 epochs with 20 %
held out, keeping the best held-out accuracy.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from arepas.io import save_torch

# A scorer whose best held-out accuracy is at or below this is indistinguishable from a coin flip
# on balanced pairs; its maps would be noise times the residual.
STALL_ACCURACY = 0.55


@dataclass
class ScorerSettings:
    patch_size: int = 16
    patches_per_slice: int = 256
    percentile: float = 90.0
    slice_step: int = 3
    embedding_dim: int = 10
    margin: float = 1.0
    lr: float = 1e-3
    batch_size: int = 1024
    epochs: int = 10
    holdout: float = 0.2
    warmup_accuracy: float = 0.7
    max_restarts: int = 100

    def __post_init__(self) -> None:
        if _feature_size(self.patch_size) < 1:
            raise ValueError(
                f"patch_size={self.patch_size} is too small for two 4x4 conv + 2x2 pool stages"
            )
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must lie in (0, 1), got {self.holdout}")
        if not 0.0 <= self.percentile < 100.0:
            raise ValueError(f"percentile must lie in [0, 100), got {self.percentile}")
        for name in ("patches_per_slice", "slice_step", "embedding_dim", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_restarts < 1:
            raise ValueError(f"max_restarts must be >= 1, got {self.max_restarts}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ScorerSettings:
        """Settings from a config mapping; unknown keys are an error, missing keys keep defaults."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown scorer setting(s) {unknown}; allowed keys are {sorted(known)}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class StalledScorerError(RuntimeError):
    """The Siamese scorer did not learn; carries the training history and the best model seen,
    for callers that choose to keep a flagged model rather than stop."""

    def __init__(
        self, message: str, history: pd.DataFrame, model: SiameseScorer | None = None
    ) -> None:
        super().__init__(message)
        self.history = history
        self.model = model


# ----------------------------------------------------------------------------------------------
# hard pair mining


def _patch_index(
    slice_idx: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    offsets = np.arange(patch_size)
    return (
        slice_idx[:, None, None],
        ys[:, None, None] + offsets[None, :, None],
        xs[:, None, None] + offsets[None, None, :],
    )


def _single_cycle_permutation(n: int, rng: np.random.Generator) -> np.ndarray:
    # A random permutation walked as one cycle has no fixed point, so every negative pairs a real
    # patch from a different place with the reconstruction.
    order = rng.permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def mine_hard_pairs(
    real: np.ndarray,
    recon: np.ndarray,
    settings: ScorerSettings,
    rng: np.random.Generator,
    roi: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Hard positive/negative patch pairs from real slices and their reconstructions.

    Returns patches_a (real), patches_b (reconstruction), labels (0 similar, 1 dissimilar),
    positions_a / positions_b as (slice, y, x) of each patch's top-left corner, the MSE of every
    mined patch (mined_mse) and the percentile threshold used.
    """
    real = np.asarray(real, dtype=np.float32)
    recon = np.asarray(recon, dtype=np.float32)
    if real.ndim != 3 or real.shape != recon.shape:
        raise ValueError(f"real and recon must both be (n, S, S); got {real.shape}, {recon.shape}")
    if roi is not None:
        roi = np.asarray(roi, dtype=bool)
        if roi.shape != real.shape:
            raise ValueError(f"roi shape {roi.shape} does not match slices {real.shape}")
    p = settings.patch_size
    n, height, width = real.shape
    if height < p or width < p:
        raise ValueError(f"slices {height}x{width} are smaller than the patch size {p}")

    corners_y, corners_x = np.meshgrid(
        np.arange(height - p + 1), np.arange(width - p + 1), indexing="ij"
    )
    corners_y, corners_x = corners_y.ravel(), corners_x.ravel()
    picked_slices, picked_y, picked_x = [], [], []
    for s in range(0, n, settings.slice_step):
        if roi is None:
            candidates = np.arange(corners_y.size)
        else:
            candidates = np.flatnonzero(roi[s, corners_y + p // 2, corners_x + p // 2])
        if candidates.size == 0:
            continue
        # Without replacement, so two mined patches of one slice never share a place.
        chosen = rng.choice(
            candidates, size=min(settings.patches_per_slice, candidates.size), replace=False
        )
        picked_slices.append(np.full(chosen.size, s, dtype=np.int64))
        picked_y.append(corners_y[chosen])
        picked_x.append(corners_x[chosen])
    if not picked_slices:
        raise ValueError("no patch position available (empty ROI on every sampled slice?)")
    slice_idx = np.concatenate(picked_slices)
    ys = np.concatenate(picked_y)
    xs = np.concatenate(picked_x)

    index = _patch_index(slice_idx, ys, xs, p)
    real_patches = real[index]
    recon_patches = recon[index]
    mse = np.mean((real_patches - recon_patches) ** 2, axis=(1, 2))
    threshold = np.percentile(mse, settings.percentile)
    keep = mse > threshold
    n_kept = int(keep.sum())
    if n_kept < 2:
        raise ValueError(
            f"only {n_kept} patch(es) above the {settings.percentile}th MSE percentile; "
            "need at least 2 to form negative pairs"
        )
    real_kept = real_patches[keep]
    recon_kept = recon_patches[keep]
    positions = np.stack([slice_idx[keep], ys[keep], xs[keep]], axis=1)
    partner = _single_cycle_permutation(n_kept, rng)

    return {
        "patches_a": np.concatenate([real_kept, real_kept[partner]]).astype(np.float32),
        "patches_b": np.concatenate([recon_kept, recon_kept]).astype(np.float32),
        "labels": np.concatenate([np.zeros(n_kept), np.ones(n_kept)]).astype(np.float32),
        "positions_a": np.concatenate([positions, positions[partner]]),
        "positions_b": np.concatenate([positions, positions]),
        "mined_mse": mse.astype(np.float32),
        "threshold": np.asarray(threshold, dtype=np.float64),
    }


# ----------------------------------------------------------------------------------------------
# network


def _feature_size(patch_size: int) -> int:
    size = patch_size
    for _ in range(2):
        size = (size - 3) // 2  # 4x4 valid conv, then 2x2 average pool (floor)
    return size


def _pair_distance(emb_a: torch.Tensor, emb_b: torch.Tensor, dim: int = 1) -> torch.Tensor:
    # The floor keeps the gradient of sqrt finite when two embeddings coincide exactly.
    return torch.sqrt(torch.clamp(((emb_a - emb_b) ** 2).sum(dim=dim), min=1e-12))


class SiameseScorer(nn.Module):
    """Shared patch embedding; dissimilarity = sigmoid(linear(batchnorm(distance)))."""

    def __init__(self, patch_size: int = 16, embedding_dim: int = 10) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.feature_size = _feature_size(patch_size)
        if self.feature_size < 1:
            raise ValueError(f"patch_size={patch_size} is too small for this network")
        self.input_norm = nn.BatchNorm2d(1, momentum=None)  # cumulative average: data are fixed
        self.convs = nn.ModuleList([nn.Conv2d(1, 32, 4), nn.Conv2d(32, 64, 4)])
        self.fc = nn.Linear(64 * self.feature_size**2, embedding_dim)
        self.head_norm = nn.BatchNorm1d(1)
        self.head_linear = nn.Linear(1, 1)
        # Start the head as an increasing map of the standardised distance: dissimilarity must grow
        # with distance, and a random negative slope would pin early accuracy below 50 % and waste
        # restarts on a head that merely points the wrong way.
        with torch.no_grad():
            self.head_linear.weight.fill_(1.0)
            self.head_linear.bias.zero_()

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        # Valid convolutions and floor pooling, as published: with 16x16 patches the embedding
        # depends on the top-left 13x13 pixels only (16 -> 13 -> 6 -> 3 -> 1).
        x = self.input_norm(patches)
        for conv in self.convs:
            x = F.avg_pool2d(torch.tanh(conv(x)), 2)
        return torch.tanh(self.fc(x.flatten(1)))

    def distance(self, patches_a: torch.Tensor, patches_b: torch.Tensor) -> torch.Tensor:
        # One batch through the shared embedding, so its input batch norm sees both sides.
        emb = self.embed(torch.cat([patches_a, patches_b]))
        return _pair_distance(*emb.split(patches_a.shape[0]))

    def logit_from_distance(self, distance: torch.Tensor) -> torch.Tensor:
        return self.head_linear(self.head_norm(distance.reshape(-1, 1))).reshape(distance.shape)

    def forward(self, patches_a: torch.Tensor, patches_b: torch.Tensor) -> torch.Tensor:
        """Dissimilarity in (0, 1) of (N, 1, p, p) patch pairs; high = dissimilar."""
        return torch.sigmoid(self.logit_from_distance(self.distance(patches_a, patches_b)))


def build_siamese(settings: ScorerSettings) -> SiameseScorer:
    """A freshly initialised scorer for the settings' patch size and embedding size."""
    return SiameseScorer(settings.patch_size, settings.embedding_dim)


# ----------------------------------------------------------------------------------------------
# training


def contrastive_loss(distance: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Label 0 (similar): d^2; label 1 (dissimilar): max(0, margin - d)^2; batch mean."""
    return torch.mean(
        (1.0 - labels) * distance**2 + labels * torch.clamp(margin - distance, min=0.0) ** 2
    )


def _derived_seed(seed: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])


def _predict(model: SiameseScorer, a: torch.Tensor, b: torch.Tensor, batch: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        scores = [model(a[i : i + batch], b[i : i + batch]) for i in range(0, len(a), batch)]
    return torch.cat(scores)


def _train_epoch(
    model: SiameseScorer,
    optimiser: torch.optim.Optimizer,
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor,
    settings: ScorerSettings,
    generator: torch.Generator,
) -> tuple[float, float]:
    model.train()
    order = torch.randperm(len(a), generator=generator)
    total_loss, correct, seen = 0.0, 0, 0
    for start in range(0, len(a), settings.batch_size):
        idx = order[start : start + settings.batch_size]
        if idx.numel() < 2:  # batch norm needs two samples for batch statistics
            continue
        distance = model.distance(a[idx], b[idx])
        # The embedding learns only from the published contrastive loss; the sigmoid head is a 1-D
        # logistic calibration of the (detached) distance, trained with BCE so that score > 0.5
        # means "dissimilar" and the restart rule's accuracy is meaningful.
        logit = model.logit_from_distance(distance.detach())
        loss = contrastive_loss(distance, labels[idx], settings.margin)
        loss = loss + F.binary_cross_entropy_with_logits(logit, labels[idx])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        total_loss += loss.item() * idx.numel()
        correct += int(((logit > 0).float() == labels[idx]).sum())
        seen += idx.numel()
    return total_loss / max(seen, 1), correct / max(seen, 1)


def train_scorer(
    patches_a: np.ndarray,
    patches_b: np.ndarray,
    labels: np.ndarray,
    settings: ScorerSettings,
    seed: int,
    progress: Callable[[str], None] = print,
) -> tuple[SiameseScorer, pd.DataFrame]:
    """Train with the published restart rule; keep the state with the best held-out accuracy.

    History columns: try, epoch (0 = warm-up epoch), train_loss, train_acc, heldout_acc.
    Raises StalledScorerError if no try passes warm-up or the best held-out accuracy is <= 0.55.
    """
    a = torch.as_tensor(np.asarray(patches_a, dtype=np.float32)).unsqueeze(1)
    b = torch.as_tensor(np.asarray(patches_b, dtype=np.float32)).unsqueeze(1)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    if not (len(a) == len(b) == len(y)):
        raise ValueError(f"pair arrays differ in length: {len(a)}, {len(b)}, {len(y)}")
    if a.shape[-1] != settings.patch_size or a.shape[-2] != settings.patch_size:
        raise ValueError(f"patches are {tuple(a.shape[-2:])}, settings say {settings.patch_size}")

    # One split for all tries, so warm-up epochs never see the held-out pairs.
    order = np.random.default_rng(seed).permutation(len(a))
    n_held = int(round(settings.holdout * len(a)))
    if n_held < 1 or len(a) - n_held < 2:
        raise ValueError(f"{len(a)} pairs are too few for a {settings.holdout} hold-out split")
    held = torch.as_tensor(order[:n_held])
    train = torch.as_tensor(order[n_held:])
    train_set = (a[train], b[train], y[train])
    a_held, b_held, y_held = a[held], b[held], y[held]

    def heldout_accuracy(model: SiameseScorer) -> float:
        scores = _predict(model, a_held, b_held, settings.batch_size)
        return float(((scores > 0.5).float() == y_held).float().mean())

    rows: list[dict[str, float]] = []
    best_warmup, best_warmup_model = -1.0, None
    for attempt in range(settings.max_restarts):
        try_seed = _derived_seed(seed, attempt)
        torch.manual_seed(try_seed)
        model = build_siamese(settings)
        # torch.optim.RMSprop defaults otherwise (alpha 0.99, eps 1e-8); lr 1e-3 as published.
        optimiser = torch.optim.RMSprop(model.parameters(), lr=settings.lr)
        generator = torch.Generator().manual_seed(try_seed)

        loss, acc = _train_epoch(model, optimiser, *train_set, settings, generator)
        held_acc = heldout_accuracy(model)
        rows.append(_history_row(attempt, 0, loss, acc, held_acc))
        if acc > best_warmup:
            best_warmup, best_warmup_model = acc, copy.deepcopy(model).eval()
        if acc < settings.warmup_accuracy:
            progress(
                f"scorer try {attempt + 1}/{settings.max_restarts}: warm-up accuracy {acc:.3f} "
                f"< {settings.warmup_accuracy}, restarting"
            )
            continue
        progress(f"scorer try {attempt + 1}: warm-up accuracy {acc:.3f}, training on")

        best_acc, best_state = held_acc, copy.deepcopy(model.state_dict())
        for epoch in range(1, settings.epochs + 1):
            loss, acc = _train_epoch(model, optimiser, *train_set, settings, generator)
            held_acc = heldout_accuracy(model)
            rows.append(_history_row(attempt, epoch, loss, acc, held_acc))
            progress(
                f"scorer epoch {epoch}/{settings.epochs}: loss {loss:.4f}, train acc {acc:.3f}, "
                f"held-out acc {held_acc:.3f}"
            )
            if held_acc > best_acc:
                best_acc, best_state = held_acc, copy.deepcopy(model.state_dict())
        history = _history_frame(rows)
        model.load_state_dict(best_state)
        model.eval()
        if best_acc <= STALL_ACCURACY:
            raise StalledScorerError(
                f"Siamese scorer stalled: best held-out accuracy {best_acc:.3f} <= "
                f"{STALL_ACCURACY} after warm-up; its maps would be noise",
                history,
                model,
            )
        return model, history

    history = _history_frame(rows)
    raise StalledScorerError(
        f"Siamese scorer stalled: no try of {settings.max_restarts} reached the warm-up training "
        f"accuracy {settings.warmup_accuracy} (best seen {best_warmup:.3f})",
        history,
        best_warmup_model,
    )


HISTORY_COLUMNS = ["try", "epoch", "train_loss", "train_acc", "heldout_acc"]


def _history_row(attempt: int, epoch: int, loss: float, acc: float, held: float) -> dict:
    return dict(zip(HISTORY_COLUMNS, (attempt, epoch, loss, acc, held), strict=True))


def _history_frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


# ----------------------------------------------------------------------------------------------
# scoring


def _pool_pairs(x: torch.Tensor, offset: int, stride: int) -> torch.Tensor:
    # 2x2 average pool whose taps lie `offset` entries apart (a dilated pool), output every
    # `stride` entries; written out because avg_pool2d has no dilation.
    height = (x.shape[-2] - offset - 1) // stride + 1
    width = (x.shape[-1] - offset - 1) // stride + 1
    total = 0
    for dy in (0, offset):
        for dx in (0, offset):
            total = (
                total
                + x[
                    ...,
                    dy : dy + (height - 1) * stride + 1 : stride,
                    dx : dx + (width - 1) * stride + 1 : stride,
                ]
            )
    return total / 4


def _dense_embedding(model: SiameseScorer, images: torch.Tensor, stride: int) -> torch.Tensor:
    """Embeddings of every patch with top-left corner on the `stride` grid, (B, E, Gy, Gx)."""
    p = model.patch_size
    x = model.input_norm(images)
    # `spacing`: image pixels between neighbouring entries of the current map; `step`: pixels
    # between the entries one patch uses at this depth. Pooling doubles `step`; the map keeps
    # only the entries some grid patch needs, so nothing is skipped and nothing wasted.
    spacing, step = 1, 1
    for conv in model.convs:
        x = torch.tanh(F.conv2d(x, conv.weight, conv.bias, dilation=step // spacing))
        new_spacing = math.gcd(stride, 2 * step)
        x = _pool_pairs(x, offset=step // spacing, stride=new_spacing // spacing)
        spacing, step = new_spacing, 2 * step
    f = model.feature_size
    weight = model.fc.weight.reshape(model.fc.out_features, -1, f, f)
    x = torch.tanh(F.conv2d(x, weight, model.fc.bias, dilation=step // spacing))
    grid_y = (images.shape[-2] - p) // stride + 1
    grid_x = (images.shape[-1] - p) // stride + 1
    sub = stride // spacing
    return x[..., : (grid_y - 1) * sub + 1 : sub, : (grid_x - 1) * sub + 1 : sub]


def dense_patch_scores_batch(
    model: SiameseScorer,
    real: np.ndarray,
    recon: np.ndarray,
    stride: int = 1,
    chunk_size: int = 4,
) -> np.ndarray:
    """Dissimilarity of every patch on the `stride` grid for (n, S, S) slices -> (n, Gy, Gx).

    Entry [k, i, j] scores the patch with top-left corner (i*stride, j*stride) and equals the
    network's output on that patch cut out (eval mode).
    """
    real = np.asarray(real, dtype=np.float32)
    recon = np.asarray(recon, dtype=np.float32)
    if real.ndim != 3 or real.shape != recon.shape:
        raise ValueError(f"real and recon must both be (n, S, S); got {real.shape}, {recon.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    p = model.patch_size
    if min(real.shape[1:]) < p:
        raise ValueError(f"slices {real.shape[1:]} are smaller than the patch size {p}")
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(real), chunk_size):
            ra = torch.as_tensor(real[start : start + chunk_size]).unsqueeze(1)
            rb = torch.as_tensor(recon[start : start + chunk_size]).unsqueeze(1)
            emb = _dense_embedding(model, torch.cat([ra, rb]), stride)
            ea, eb = emb.split(len(ra))
            distance = _pair_distance(ea, eb, dim=1)
            out.append(torch.sigmoid(model.logit_from_distance(distance)).numpy())
    if not out:
        grid = [(size - p) // stride + 1 for size in real.shape[1:]]
        return np.zeros((0, *grid), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


def dense_patch_scores(
    model: SiameseScorer, real_slice: np.ndarray, recon_slice: np.ndarray, stride: int = 1
) -> np.ndarray:
    """Dissimilarity of every patch on the `stride` grid of one (S, S) slice -> (Gy, Gx)."""
    return dense_patch_scores_batch(model, real_slice[None], recon_slice[None], stride)[0]


def sampled_patch_scores(
    model: SiameseScorer,
    real_slice: np.ndarray,
    recon_slice: np.ndarray,
    n_patches: int = 10000,
    rng: np.random.Generator | None = None,
    batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Published inference: n random patch positions -> ((n, 2) top-left y, x; (n,) scores)."""
    rng = np.random.default_rng(0) if rng is None else rng
    real_slice = np.asarray(real_slice, dtype=np.float32)
    recon_slice = np.asarray(recon_slice, dtype=np.float32)
    p = model.patch_size
    height, width = real_slice.shape
    positions = np.stack(
        [rng.integers(0, height - p + 1, n_patches), rng.integers(0, width - p + 1, n_patches)],
        axis=1,
    )
    zeros = np.zeros(n_patches, dtype=np.int64)
    index = _patch_index(zeros, positions[:, 0], positions[:, 1], p)
    a = torch.as_tensor(real_slice[None][index]).unsqueeze(1)
    b = torch.as_tensor(recon_slice[None][index]).unsqueeze(1)
    scores = _predict(model, a, b, batch_size).numpy().astype(np.float32)
    return positions, scores


# ----------------------------------------------------------------------------------------------
# persistence


def save_scorer(
    path: str | os.PathLike,
    model: SiameseScorer,
    settings: ScorerSettings,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write weights, settings and a JSON-serialisable meta dict atomically."""
    payload = {
        "state_dict": model.state_dict(),
        "settings": settings.to_dict(),
        "meta_json": json.dumps(meta or {}),
    }
    save_torch(payload, path)


def load_scorer(path: str | os.PathLike) -> tuple[SiameseScorer, ScorerSettings, dict[str, Any]]:
    """Read a scorer written by save_scorer; the model is returned in eval mode."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    settings = ScorerSettings.from_dict(payload["settings"])
    model = build_siamese(settings)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, settings, json.loads(payload["meta_json"])

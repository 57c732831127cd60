"""Scoring with a trained scorer: dense maps of every patch on a grid, the scores of given
patch positions, and the published inference on random positions."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arepas.scorer.network import _KERNEL, SiameseScorer, _pair_distance, _stage_size
from arepas.scorer.pairs import _patch_index


def _device_of(model: nn.Module) -> torch.device:
    # Scoring runs where the model's weights are (load_scorer's `device`).
    return next(model.parameters()).device


def _predict(model: SiameseScorer, a: torch.Tensor, b: torch.Tensor, batch: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        scores = [model(a[i : i + batch], b[i : i + batch]) for i in range(0, len(a), batch)]
    return torch.cat(scores)


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
    if model.padding:
        # Padded patches have no shared dense form beyond the first stage: score the grid's
        # positions exactly, slice by slice.
        grid_y = (real.shape[1] - p) // stride + 1
        grid_x = (real.shape[2] - p) // stride + 1
        ys, xs = np.meshgrid(np.arange(grid_y) * stride, np.arange(grid_x) * stride, indexing="ij")
        positions = np.stack([ys.ravel(), xs.ravel()], axis=1)
        grids = [patch_scores_at(model, r, c, positions) for r, c in zip(real, recon, strict=True)]
        if not grids:
            return np.zeros((0, grid_y, grid_x), dtype=np.float32)
        return np.stack(grids).reshape(len(real), grid_y, grid_x).astype(np.float32)
    out = []
    device = _device_of(model)
    with torch.no_grad():
        for start in range(0, len(real), chunk_size):
            ra = torch.as_tensor(real[start : start + chunk_size], device=device).unsqueeze(1)
            rb = torch.as_tensor(recon[start : start + chunk_size], device=device).unsqueeze(1)
            emb = _dense_embedding(model, torch.cat([ra, rb]), stride)
            ea, eb = emb.split(len(ra))
            distance = _pair_distance(ea, eb, dim=1)
            out.append(torch.sigmoid(model.logit_from_distance(distance)).cpu().numpy())
    if not out:
        grid = [(size - p) // stride + 1 for size in real.shape[1:]]
        return np.zeros((0, *grid), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


def dense_patch_scores(
    model: SiameseScorer, real_slice: np.ndarray, recon_slice: np.ndarray, stride: int = 1
) -> np.ndarray:
    """Dissimilarity of every patch on the `stride` grid of one (S, S) slice -> (Gy, Gx)."""
    return dense_patch_scores_batch(model, real_slice[None], recon_slice[None], stride)[0]


def _tap_range(index: int, patch_size: int, padding: int) -> tuple[int, int]:
    # Kernel rows [lo, hi) that a padded convolution's output `index` (patch coordinates) reads
    # from inside the patch; the rest read the zero padding.
    return max(0, padding - index), min(_KERNEL, patch_size + padding - index)


def _visible_mask(rows: tuple[int, int], cols: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    # On the device and in the dtype of `like` (the kernel it masks).
    mask = torch.zeros(_KERNEL, _KERNEL, dtype=like.dtype, device=like.device)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = 1.0
    return mask


def _first_stage_plan(model: SiameseScorer) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """(key of each pooled row / column position, pooled keys computed densely, pooled keys
    computed per patch). A pooled key pairs the visible kernel parts of the two convolution
    outputs a pooled entry averages. Keys that occur at one pooled row and one pooled column only
    (the patch's corners) are cheaper per patch than as maps over the whole image."""
    p, pad = model.patch_size, model.padding
    size = _stage_size(p, pad)
    keys = [(_tap_range(2 * u, p, pad), _tap_range(2 * u + 1, p, pad)) for u in range(size)]
    single = {k for k in keys if keys.count(k) == 1}
    unique = sorted(set(keys))
    pairs = [(r, c) for r in unique for c in unique]
    dense = [k for k in pairs if not (k[0] in single and k[1] in single)]
    per_patch = [k for k in pairs if k[0] in single and k[1] in single]
    return keys, dense, per_patch


def _masked_first_stage(
    model: SiameseScorer, x: torch.Tensor, dense_keys: list[tuple]
) -> torch.Tensor:
    """First stage (conv1, tanh, 2x2 pool) of every patch of the normalised, zero-padded images
    x (B, 1, H, W), for the pooled keys in `dense_keys`, shared by all patches.

    A patch's zero padding hides the image around it, so the first convolution's border outputs
    see only part of the kernel. Each visible part of the kernel (a class) that a dense key needs
    is run once over the whole image; a pooled map averages the classes its key mixes. Returns
    the pooled maps channels-last (B, K, Hm, Wm, 32), the layout the gather reads.
    """
    conv = model.convs[0]
    height, width = x.shape[-2] - _KERNEL, x.shape[-1] - _KERNEL
    if not dense_keys:
        # Small patches: every pooled entry is computed per patch; one placeholder map.
        return torch.zeros((x.shape[0], 1, height, width, conv.weight.shape[0]), device=x.device)
    classes = sorted({(r[di], c[dj]) for r, c in dense_keys for di in (0, 1) for dj in (0, 1)})
    activation: dict[tuple, torch.Tensor] = {}
    channels = conv.weight.shape[0]
    # All classes in one convolution, stacked as output channels.
    weight = torch.cat([conv.weight * _visible_mask(r, c, conv.weight) for r, c in classes])
    stacked = F.conv2d(x, weight, conv.bias.repeat(len(classes))).tanh_()
    for n, key in enumerate(classes):
        activation[key] = stacked[:, n * channels : (n + 1) * channels]
    pooled = torch.empty((x.shape[0], len(dense_keys), height, width, channels), device=x.device)
    for k, (row_key, col_key) in enumerate(dense_keys):
        if row_key[0] == row_key[1] and col_key[0] == col_key[1]:
            total = F.avg_pool2d(activation[row_key[0], col_key[0]], 2, stride=1)
        else:
            total = 0
            for di in (0, 1):
                for dj in (0, 1):
                    t = activation[row_key[di], col_key[dj]]
                    total = total + t[..., di : di + height, dj : dj + width]
            total = total * 0.25
        pooled[:, k].copy_(total.permute(0, 2, 3, 1))
    return pooled


def _pooled_entry_per_patch(
    model: SiameseScorer, x: torch.Tensor, positions: torch.Tensor, u: int, v: int, key: tuple
) -> torch.Tensor:
    """Pooled first-stage entry (u, v) of the patches at `positions` (k, 2) in the normalised,
    zero-padded images x (B, 1, H, W): (B, k, 32)."""
    conv = model.convs[0]
    row_key, col_key = key
    width = x.shape[-1]
    flat = x.reshape(x.shape[0], -1)
    kernel = torch.arange(_KERNEL, device=x.device)
    taps = (kernel[:, None] * width + kernel[None, :]).reshape(-1)
    total = 0
    for di in (0, 1):
        for dj in (0, 1):
            weight = conv.weight * _visible_mask(row_key[di], col_key[dj], conv.weight)
            top = (positions[:, 0] + 2 * u + di) * width + positions[:, 1] + 2 * v + dj
            windows = flat[:, top[:, None] + taps[None, :]]  # (B, k, 16)
            total = total + torch.tanh(windows @ weight.reshape(weight.shape[0], -1).T + conv.bias)
    return total * 0.25


def _second_stage_matrix(
    conv: nn.Conv2d, size: int, channels: int, pad: int, pad_after: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The second convolution on a zero-padded size x size pooled map as one matrix (weight
    (size² C_in, C_out K²) for channels-last rows, bias (C_out K²,)), or None where the
    convolution is cheaper. On a small map most of each 4x4 window lies in the zero padding:
    with size < 4 the matrix needs fewer multiplications, and one large matrix product runs
    faster on the CPU than many tiny convolutions."""
    if size >= _KERNEL:
        return None
    # The image of each channels-last basis vector under the (bias-free) convolution.
    basis = torch.eye(size * size * channels, device=conv.weight.device)
    basis = basis.reshape(-1, size, size, channels).permute(0, 3, 1, 2)
    columns = F.conv2d(F.pad(basis, (pad, pad_after, pad, pad_after)), conv.weight)
    outputs = columns.shape[-1] * columns.shape[-2]
    return columns.flatten(1), conv.bias.repeat_interleave(outputs)


def _padded_embeddings(
    model: SiameseScorer, images: np.ndarray, positions: np.ndarray, chunk_size: int
) -> torch.Tensor:
    """Embeddings (B, k, E) of the patches with top-left corners `positions` (k, 2) in each of
    the (B, H, W) images, equal to model.embed on the cut-out patches (eval mode)."""
    pad = model.padding
    device = _device_of(model)
    images = torch.as_tensor(images, device=device)
    x = F.pad(model.input_norm(images[:, None]), (pad, pad, pad, pad))
    keys, dense_keys, per_patch_keys = _first_stage_plan(model)
    maps = _masked_first_stage(model, x, dense_keys)
    n_images, n_maps, height, width, channels = maps.shape
    rows = maps.reshape(-1, channels)
    size = len(keys)
    offsets = 2 * torch.arange(size, device=device)
    pos = torch.as_tensor(positions, dtype=torch.int64, device=device)
    # Row of pooled entry (u, v) of a patch at (y, x) in `rows`: its key's map, pixel
    # (y + 2u, x + 2v); images follow one another. Entries computed per patch point at map 0
    # and are overwritten.
    map_of = torch.tensor(
        [[dense_keys.index((r, c)) if (r, c) in dense_keys else 0 for c in keys] for r in keys],
        device=device,
    )
    entry = map_of * (height * width) + offsets[:, None] * width + offsets[None, :]
    image_start = torch.arange(n_images, device=device) * (n_maps * height * width)
    corners = [
        (u, v, _pooled_entry_per_patch(model, x, pos, u, v, (keys[u], keys[v])))
        for u in range(size)
        for v in range(size)
        if (keys[u], keys[v]) in per_patch_keys
    ]
    second_size = _stage_size(size, pad)
    pad_after = 2 * second_size - size + _KERNEL - 1 - pad
    conv2 = model.convs[1]
    second_stage = _second_stage_matrix(conv2, size, channels, pad, pad_after)
    # The 2x2 average pool and the linear layer after it are both linear: one matrix on the
    # tanh of the second convolution's (2s x 2s) outputs.
    fc_weight = model.fc.weight.reshape(-1, conv2.out_channels, second_size, second_size)
    fc_weight = 0.25 * fc_weight.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    fc_weight = fc_weight.flatten(1).T
    out = torch.empty((n_images, len(pos), model.fc.out_features), device=device)
    for start in range(0, len(pos), chunk_size):
        chunk = pos[start : start + chunk_size]
        corner = chunk[:, 0] * width + chunk[:, 1]
        index = image_start[:, None, None, None] + corner[None, :, None, None] + entry[None, None]
        pooled = rows.index_select(0, index.reshape(-1)).reshape(n_images, -1, size, size, channels)
        for u, v, values in corners:
            pooled[:, :, u, v] = values[:, start : start + len(chunk)]
        if second_stage is not None:
            weight, bias = second_stage
            y = torch.addmm(bias, pooled.reshape(-1, size * size * channels), weight)
            y = y.reshape(-1, conv2.out_channels, 2 * second_size, 2 * second_size)
        else:
            # Channels-last view: oneDNN's fastest layout for this small convolution.
            pooled = pooled.reshape(-1, size, size, channels).permute(0, 3, 1, 2)
            # Only the second convolution's outputs that the floor pooling keeps are computed.
            padded = F.pad(pooled, (pad, pad_after, pad, pad_after))
            y = F.conv2d(padded, conv2.weight, conv2.bias)
        emb = torch.addmm(model.fc.bias, y.tanh_().flatten(1), fc_weight).tanh_()
        out[:, start : start + len(chunk)] = emb.reshape(n_images, len(chunk), -1)
    return out


def patch_scores_at(
    model: SiameseScorer,
    real_slice: np.ndarray,
    recon_slice: np.ndarray,
    positions: np.ndarray,
    chunk_size: int = 512,
) -> np.ndarray:
    """Dissimilarity (k,) of the patch pairs with top-left corners `positions` (k, 2) of one slice.

    Equals the network on the cut-out patches (eval mode). For the padded (reference) network the
    first stage is computed once per slice and shared by all patches, and each distinct position
    is scored once.
    """
    real_slice = np.asarray(real_slice, dtype=np.float32)
    recon_slice = np.asarray(recon_slice, dtype=np.float32)
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    p = model.patch_size
    height, width = real_slice.shape
    if recon_slice.shape != real_slice.shape:
        raise ValueError(f"slices differ in shape: {real_slice.shape}, {recon_slice.shape}")
    if len(positions) and (
        positions.min() < 0
        or positions[:, 0].max() > height - p
        or positions[:, 1].max() > width - p
    ):
        raise ValueError(f"a patch position lies (partly) outside the {height}x{width} slice")
    model.eval()
    unique, inverse = np.unique(positions, axis=0, return_inverse=True)
    with torch.no_grad():
        if model.padding == 0:
            zeros = np.zeros(len(unique), dtype=np.int64)
            index = _patch_index(zeros, unique[:, 0], unique[:, 1], p)
            device = _device_of(model)
            a = torch.as_tensor(real_slice[None][index], device=device).unsqueeze(1)
            b = torch.as_tensor(recon_slice[None][index], device=device).unsqueeze(1)
            scores = _predict(model, a, b, chunk_size)
        else:
            pair = np.stack([real_slice, recon_slice])
            emb_a, emb_b = _padded_embeddings(model, pair, unique, chunk_size)
            scores = torch.sigmoid(model.logit_from_distance(_pair_distance(emb_a, emb_b)))
    return scores.cpu().numpy().astype(np.float32)[inverse.reshape(-1)]


def random_positions(
    n_patches: int, shape: tuple[int, int], patch_size: int, rng: np.random.Generator
) -> np.ndarray:
    """n random top-left corners (n, 2), drawn with replacement as the reference does: all rows
    first, then all columns."""
    height, width = shape
    ys = rng.integers(0, height - patch_size + 1, n_patches)
    xs = rng.integers(0, width - patch_size + 1, n_patches)
    return np.stack([ys, xs], axis=1)


def sampled_patch_scores(
    model: SiameseScorer,
    real_slice: np.ndarray,
    recon_slice: np.ndarray,
    n_patches: int = 10000,
    rng: np.random.Generator | None = None,
    positions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Published inference: random patch positions -> ((n, 2) top-left y, x; (n,) scores).

    Positions are drawn from `rng` unless given (the reference uses one seeded draw for every
    slice)."""
    real_slice = np.asarray(real_slice, dtype=np.float32)
    if positions is None:
        rng = np.random.default_rng(0) if rng is None else rng
        positions = random_positions(n_patches, real_slice.shape, model.patch_size, rng)
    return positions, patch_scores_at(model, real_slice, recon_slice, positions)

"""Dense patch scoring against the published random sampling, on real demo slices with a trained
demo scorer: time per slice and per volume, and how closely the two maps agree."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

from bench import quality, tables

# The published inference scores 10,000 random 16x16 patch positions per slice (arXiv 2509.12905;
# github.com/cirmuw/arepas, inference.py).
PUBLISHED_PATCHES = 10_000
FULL_SIZE = 256


def timed(function, repeats: int = 1):
    """(result of the last call, median wall seconds over `repeats` calls)."""
    times = []
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return result, statistics.median(times)


def roi_correlation(a: np.ndarray, b: np.ndarray, roi: np.ndarray) -> float:
    """Pearson correlation of two maps over the ROI pixels (NaN if either is flat there)."""
    x = np.asarray(a, dtype=np.float64)[roi]
    y = np.asarray(b, dtype=np.float64)[roi]
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def upsample(real, recon, roi, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slices to size x size: bilinear for intensities, nearest for the ROI."""
    from skimage.transform import resize

    shape = (len(real), size, size)
    real_up = resize(real, shape, order=1, preserve_range=True, anti_aliasing=False)
    recon_up = resize(recon, shape, order=1, preserve_range=True, anti_aliasing=False)
    roi_up = resize(roi.astype(np.float32), shape, order=0, preserve_range=True) > 0.5
    return real_up.astype(np.float32), recon_up.astype(np.float32), roi_up


def dense_positions(size: int, patch_size: int, stride: int) -> int:
    """Patches a dense pass scores on one size x size slice."""
    return ((size - patch_size) // stride + 1) ** 2


def compare(model, real, recon, roi, strides, seed: int, repeats: int) -> list[dict]:
    """Time the sampled map and the dense map at each stride on the same slices."""
    import torch

    from arepas.maps import patch_map_dense, patch_map_sampled

    # First calls pay for allocator and kernel set-up; keep that out of both timings.
    patch_map_dense(model, real[:1], recon[:1], roi[:1], 1)
    patch_map_sampled(model, real[:1], recon[:1], roi[:1], 100, np.random.default_rng(seed))
    # The sampled map is timed once: over a volume it runs for tens of seconds, long enough to
    # average out noise; the fast dense pass takes the median of `repeats`.
    sampled, sampled_s = timed(
        lambda: patch_map_sampled(
            model, real, recon, roi, PUBLISHED_PATCHES, np.random.default_rng(seed)
        )
    )
    rows = []
    n = len(real)
    for stride in strides:
        dense, dense_s = timed(lambda s=stride: patch_map_dense(model, real, recon, roi, s),
                               repeats)
        rows.append({"stride": stride, "threads": torch.get_num_threads(),
                     "dense_positions": dense_positions(real.shape[1], model.patch_size, stride),
                     "slices_timed": n, "sampled_s_per_slice": sampled_s / n,
                     "dense_s_per_slice": dense_s / n, "speedup": sampled_s / dense_s,
                     "correlation": roi_correlation(dense, sampled, roi)})
    return rows


def measure(
    run_dir: Path, threads: int, seed: int = 0, slices_full: int = 8, repeats: int = 3,
    progress=print,
) -> dict:
    # Imported here so that rendering the report needs no torch.
    import torch

    from arepas import io, scorer

    torch.set_num_threads(threads)
    rows = []
    for dataset, subjects in quality.test_subjects(run_dir).items():
        models = run_dir / "results" / dataset / "models"
        recon_path = run_dir / "results" / dataset / "reconstruction" / f"{subjects[0]}.npz"
        if not (models / "scorer.pt").exists() or not recon_path.exists():
            progress(f"scoring: {dataset} has no scorer or reconstruction; skipped")
            continue
        model, settings, meta = scorer.load_scorer(models / "scorer.pt")
        rec = io.load_arrays(recon_path)
        real, recon, roi = rec["slices"], rec["recon"], rec["roi"].astype(bool)
        n_slices = len(real)
        common = {"dataset": dataset, "subject": subjects[0], "volume_slices": n_slices,
                  "patch_size": settings.patch_size, "stalled": bool(meta.get("stalled"))}
        progress(f"scoring: {dataset} {subjects[0]}, {n_slices} slices of {real.shape[1]}^2")
        for row in compare(model, real, recon, roi, [1], seed, repeats):
            rows.append({**common, "size": real.shape[1], "upsampled": False, **row})
        # Evenly spread slices of the same subject, upsampled: the published 256 x 256 size.
        pick = np.unique(np.linspace(0, n_slices - 1, min(slices_full, n_slices)).round()
                         ).astype(int)
        big = upsample(real[pick], recon[pick], roi[pick], FULL_SIZE)
        # The dense pass is a few large convolutions that use every core, the sampled one many
        # small batches that barely do: at full size the ratio depends on the thread count.
        for count in sorted({threads, os.cpu_count() or threads}):
            torch.set_num_threads(count)
            progress(f"scoring: {dataset}, {len(pick)} slices upsampled to {FULL_SIZE}^2, "
                     f"{count} thread(s)")
            for row in compare(model, *big, [1, 2, 4], seed, 1):
                rows.append({**common, "size": FULL_SIZE, "upsampled": True, **row})
        torch.set_num_threads(threads)
    return {"threads": threads, "repeats": repeats, "rows": rows}


def render(data: dict) -> str:
    rows = []
    for r in data["rows"]:
        per_volume = r["volume_slices"]
        positions = r.get("dense_positions", float("nan"))
        rows.append([
            r["dataset"], f"{r['size']}²" + (" (upsampled)" if r["upsampled"] else ""),
            r["stride"], r.get("threads", data["threads"]), r["slices_timed"],
            tables.number(r["sampled_s_per_slice"], "{:.3f}"),
            tables.number(r["dense_s_per_slice"], "{:.4f}"),
            tables.number(r["sampled_s_per_slice"] * per_volume, "{:.1f}"),
            tables.number(r["dense_s_per_slice"] * per_volume, "{:.2f}"),
            tables.number(r["speedup"], "{:.1f}×"), tables.number(positions, "{:,.0f}"),
            tables.number(r["speedup"] * positions / PUBLISHED_PATCHES, "{:.0f}×"),
            tables.number(r["correlation"], "{:.3f}"), "stalled" if r["stalled"] else "trained",
        ])
    text = (
        "Patch scores of a trained demo scorer on one test subject per dataset (its real "
        f"slices and translator reconstructions); torch on {data['threads']} thread(s) as in "
        "the `anomaly_maps` rule, and at 256² also on all cores. Sampled: the published "
        f"inference, {PUBLISHED_PATCHES:,} random patch positions per slice, patches cut out and "
        "scored in batches. Dense: every position on the stride grid in one convolutional "
        "pass (`arepas.maps.patch_map_dense`). Both maps are the normalised patch maps; "
        "correlation is Pearson's over the ROI pixels of all timed slices. Per volume: seconds "
        "per slice × the subject's number of slices (at 256² an extrapolation from the timed "
        "slices). Sampled maps are timed once (tens of seconds); dense maps take the median of "
        f"{data['repeats']} timings at the demo size and one at 256². Per scored patch: the "
        f"speed-up × dense positions / {PUBLISHED_PATCHES:,}; at 256² and stride 1 the dense "
        "pass scores almost six times as many patches as the sampling, which is why its "
        "speed-up per slice is small although each patch costs far less. On a shared machine "
        "the all-core rows depend on what else runs (see the load average above).\n\n"
    )
    return text + tables.markdown_table(
        ["dataset", "slice", "stride", "threads", "slices timed", "sampled s/slice",
         "dense s/slice", "sampled s/volume", "dense s/volume", "dense speed-up",
         "dense positions/slice", "speed-up per scored patch", "correlation", "scorer"],
        rows, left=2)

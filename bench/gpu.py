"""The full-size translator (the published 256 x 256, 9-block configuration) on CPU and, where
CUDA exists, on the GPU: seconds per training step and epoch, and one subject's inference."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench import quality, scoring, tables

FULL_SIZE = 256


def _demo_slices(run_dir: Path, dataset: str = "lung_ct") -> tuple[np.ndarray, int, str]:
    """A test subject's slices upsampled to 256² and the demo training set's slice count."""
    from arepas import io

    subjects = quality.test_subjects(run_dir)[dataset]
    rec = io.load_arrays(run_dir / "results" / dataset / "reconstruction" / f"{subjects[0]}.npz")
    real, _, _ = scoring.upsample(rec["slices"], rec["recon"], rec["roi"], FULL_SIZE)
    sheet = pd.read_csv(run_dir / "results" / "demo" / "subjects.tsv", sep="\t",
                        keep_default_na=False)
    train = sheet[(sheet["dataset"] == dataset) & (sheet["split"] == "train")]["subject"]
    n_train = sum(len(io.load_arrays(run_dir / "results" / dataset / "preprocessed" / subject
                                     / "slices.npz")["indices"]) for subject in train)
    return real, n_train, subjects[0]


def _train_step_seconds(slices: np.ndarray, settings, device: str) -> float:
    from arepas import translator

    with tempfile.TemporaryDirectory(prefix="arepas-gpu-bench-") as tmp:
        _, history = translator.train_translator(
            slices, np.empty((0, *slices.shape[1:]), np.float32), settings, Path(tmp),
            seed=0, device=device, progress=lambda _: None)
    steps = history["step"].diff().fillna(history["step"]).to_numpy()
    # The last epoch: on a GPU the first one also pays for kernel selection and warm-up.
    return float(history["seconds"].iloc[-1] / steps[-1])


def measure(run_dir: Path, threads: int, progress=print) -> dict:
    # Imported here so that rendering the report needs no torch.
    import torch

    from arepas import translator

    torch.set_num_threads(threads)
    real, n_train, subject = _demo_slices(run_dir)
    defaults = translator.TranslatorSettings()
    rows = []
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        on_gpu = device == "cuda"
        # A CPU step at full size takes tens of seconds: one step (3 slices x 3 augmented
        # copies, one batch of 8 and one of 1) is enough for a rate. A GPU gets several steps
        # and a second epoch.
        n_slices = 32 if on_gpu else 3
        settings = translator.TranslatorSettings(epochs=2 if on_gpu else 1)
        progress(f"gpu section: full-size translator training step on {device}")
        step_s = _train_step_seconds(real[:n_slices], settings, device)
        torch.manual_seed(0)
        generator = translator.build_generator(settings)
        timed = real if on_gpu else real[: min(8, len(real))]
        edge_maps = translator.edges_for(settings, timed)
        translator.translate(generator, edge_maps[:1], device=device)
        if on_gpu:
            torch.cuda.synchronize()
        progress(f"gpu section: full-size inference of {len(timed)} slices on {device}")
        started = time.perf_counter()
        translator.translate(generator, edge_maps, device=device)
        if on_gpu:
            torch.cuda.synchronize()
        per_slice = (time.perf_counter() - started) / len(timed)
        copies = settings.augment_copies + int(settings.augment_keep_unaugmented)
        steps_per_epoch = math.ceil(n_train * copies / settings.batch_size)
        rows.append({"device": device, "name": torch.cuda.get_device_name(0) if on_gpu else "cpu",
                     "step_s": step_s, "steps_per_epoch": steps_per_epoch,
                     "epoch_s": step_s * steps_per_epoch, "inference_slices_timed": len(timed),
                     "inference_s_per_slice": per_slice, "subject_slices": len(real),
                     "subject_s": per_slice * len(real)})
    return {"threads": threads, "subject": subject, "train_slices": n_train,
            "settings": {k: getattr(defaults, k) for k in ("base_channels", "n_blocks",
                                                           "disc_channels", "batch_size")},
            "cuda": torch.cuda.is_available(), "rows": rows}


def render(data: dict) -> str:
    s = data["settings"]
    lines = [
        f"The published translator size ({s['base_channels']} base channels, {s['n_blocks']} "
        f"residual blocks, {s['disc_channels']}-channel discriminator, batch {s['batch_size']}) "
        f"on {FULL_SIZE}² slices (a demo lung test subject's slices, upsampled). Seconds per "
        "training step from `arepas.translator.train_translator` (one step on CPU, the last "
        "of two epochs on a GPU); an epoch here is the demo lung training set at full size: "
        f"{data['train_slices']} slices × 3 augmented copies (no unaugmented copy, as in the "
        "reference). "
        f"Inference: `translate` on the subject's slices (on CPU timed on a few slices and "
        f"multiplied by the subject's {data['rows'][0]['subject_slices'] if data['rows'] else 0}"
        f"), torch on {data['threads']} CPU thread(s).\n"
    ]
    rows = [[r["device"], r["name"], tables.number(r["step_s"], "{:.2f}"), r["steps_per_epoch"],
             tables.number(r["epoch_s"] / 60, "{:.1f}"),
             tables.number(r["inference_s_per_slice"], "{:.3f}"),
             tables.number(r["subject_s"], "{:.1f}")] for r in data["rows"]]
    if not data["cuda"]:
        rows.append(["cuda", "not measured: no CUDA device on this machine", "", "", "", "", ""])
    lines.append(tables.markdown_table(
        ["device", "name", "s/step", "steps/epoch", "min/epoch", "inference s/slice",
         "s/subject"], rows, left=2))
    if not data["cuda"]:
        lines.append(
            "The GPU rows are not measured here. On a machine with CUDA, `make bench` (or "
            "`python -m bench --only gpu`) runs the same code and adds them: the translator "
            "then trains and infers with device `cuda`, as the workflow's `train_translator` "
            "and `reconstruct` rules do when a GPU is present. Section 23 runs the published "
            "configuration whole on one GPU.\n"
        )
    return "\n".join(lines)

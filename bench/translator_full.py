"""The translator at the published sizes, trained on a GPU: does it rebuild fine anatomy?

The CPU demo trains small translators on 64² slices (the report's last section: its trade-offs), and
keeps about two thirds (brain) and under half (thorax) of a healthy slice's fine detail
(section 1, "Does the translator use its edges?"). This section asks the same question of the
published configuration (config/full.yaml: 256² slices, a 64-channel generator with 9 residual
blocks, a 64-512-channel PatchGAN, Adam 2e-4, batch 8, the gradient penalty on every step,
bfloat16 autocast) on the demo cohorts preprocessed at that size.

It runs in two places. `prepare` (on any machine: about 10 minutes on 2 cores) generates the
demo cohorts and preprocesses their train and val subjects with config/full.yaml in a working
directory of its own; `pack` gathers that run's train and val stacks of both cohorts, and the
merged translator settings, into one folder small enough to travel: slices as float16 (a
relative rounding of at most 2⁻¹¹, far under the Canny thresholds' and the check's
resolution). `train` (on the GPU
machine) trains each cohort's translator from scratch with the run's seed, in stages of
doubling epochs until a time budget is spent, and after each stage runs the workflow's
edge-reliance check (arepas.diagnostics.edge_reliance) on the healthy val subjects. Each row is
written as soon as it exists, so a run stopped at its time limit keeps what it measured.

    python -m bench.translator_full prepare RUN_DIR            # seed 0; --seed N
    python -m bench.translator_full pack RUN_DIR PACK_DIR --configfile config/config.yaml \
        --configfile config/full.yaml --configfile RUN_DIR/seed.yaml
    python -m bench.translator_full train PACK_DIR OUT_DIR --budget-s 200
    python -m bench.translator_full store OUT_DIR/translator_full.json   # into bench/measurements

Measured only where a GPU is (`store` files the result as the section's measurement).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATASETS = ("brain_t1", "lung_ct")
SECTION = "translator_full"
REPO = Path(__file__).resolve().parents[1]
# The run's seed for the demo cohorts and training, beside the repository's config files.
SEED_CONFIG = "seed.yaml"
FULL_CONFIGS = ("config/config.yaml", "config/full.yaml")
PACK_INFO = "pack.json"
RESULT_NAME = "translator_full.json"
EXAMPLES_NAME = "translator_full_examples.npz"
# Native voxels larger than this many times the working grid's spacing: a coarse scan.
COARSE_FACTOR = 1.5
# Val slices kept as examples per dataset, for the figure of reconstructions.
N_EXAMPLES = 4


# ------------------------------------------------------------------------------------------
# Settings and packing (any machine)


def merged_config(configfiles: list[str | Path]) -> dict:
    """The config files merged key by key, later files winning, by Snakemake's own merge."""
    import yaml
    from snakemake.utils import update_config

    config: dict = {}
    for path in configfiles:
        update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    return config


def prepare(run_dir: Path, seed: int = 0, cores: int = 2, repo: Path = REPO) -> list[Path]:
    """Generate the demo cohorts with `seed` and preprocess their train and val subjects with
    the published configuration in run_dir (which links the repository's workflow and config);
    returns the config files to pack with. Snakemake skips whatever is already done."""
    import pandas as pd

    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config"):
        if not (run_dir / name).exists():
            (run_dir / name).symlink_to(repo / name)
    (run_dir / SEED_CONFIG).write_text(f"seed: {seed}\ndemo: {{seed: {seed}}}\n")
    configfiles = [*FULL_CONFIGS, SEED_CONFIG]
    sheet_path = run_dir / "results" / "demo" / "subjects.tsv"

    def snakemake(*targets: str) -> None:
        command = [sys.executable, "-m", "snakemake", *targets, "--cores", str(cores),
                   "--configfile", *configfiles]
        with open(run_dir / "prepare.log", "a") as log:
            subprocess.run(command, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT,
                           check=True)

    # The sheet first: it names the subjects whose stacks are asked for next.
    snakemake(str(sheet_path.relative_to(run_dir)))
    sheet = pd.read_csv(sheet_path, sep="\t", keep_default_na=False)
    wanted = sheet[sheet["dataset"].isin(DATASETS) & sheet["split"].isin(["train", "val"])]
    snakemake(*(f"results/{row.dataset}/preprocessed/{row.subject}/slices.npz"
                for row in wanted.itertuples()))
    return [run_dir / name for name in configfiles]


def native_spacings(run_dir: Path, sheet, subjects: list[str]) -> list[list[float]]:
    """Voxel sizes (mm) of the subjects' scans as given to the workflow: on a grid finer than
    these, detail is interpolation between scan voxels rather than anatomy."""
    import nibabel as nib

    rows = sheet.set_index("subject").loc[subjects, "image"]
    folder = run_dir / "results" / "demo"
    return [[round(float(z), 2) for z in nib.load(folder / image).header.get_zooms()[:3]]
            for image in rows]


def pack(run_dir: Path, pack_dir: Path, configfiles: list[str | Path]) -> dict:
    """Both cohorts' train and val stacks of a preprocessing run, and the merged translator
    settings, in pack_dir (one npz per dataset and pack.json)."""
    import pandas as pd

    from arepas import diagnostics

    config = merged_config(configfiles)
    sheet = pd.read_csv(run_dir / "results" / "demo" / "subjects.tsv", sep="\t",
                        keep_default_na=False)
    pack_dir.mkdir(parents=True, exist_ok=True)
    info: dict = {"source_run": str(run_dir), "configfiles": [str(p) for p in configfiles],
                  "seed": int(config.get("seed", 0)), "datasets": {}}
    for dataset in DATASETS:
        paths = {
            split: [
                run_dir / "results" / dataset / "preprocessed" / subject / "slices.npz"
                for subject in sorted(sheet[(sheet["dataset"] == dataset)
                                            & (sheet["split"] == split)]["subject"])
            ]
            for split in ("train", "val")
        }
        check = diagnostics.load_check_slices(paths["train"], paths["val"])
        arrays = {
            key: value.astype(np.float16) if key.endswith("_slices") else value
            for key, value in check.items()
        }
        np.savez_compressed(pack_dir / f"{dataset}.npz", **arrays)
        info["datasets"][dataset] = {
            "translator": config["datasets"][dataset]["translator"],
            "train_subjects": [p.parent.name for p in paths["train"]],
            "val_subjects": [p.parent.name for p in paths["val"]],
            "n_train_slices": int(len(check["train_slices"])),
            "n_val_slices": int(len(check["val_slices"])),
            "slice_size": int(check["train_slices"].shape[1]),
            "working_spacing_mm": config["datasets"][dataset]["spacing"],
            "native_spacing_mm": native_spacings(
                run_dir, sheet, [p.parent.name for p in paths["train"] + paths["val"]]),
        }
    (pack_dir / PACK_INFO).write_text(json.dumps(info, indent=1))
    return info


def load_pack(pack_dir: Path, dataset: str) -> dict[str, np.ndarray]:
    """One dataset's check arrays (the keyword arguments of edge_reliance), slices as float32."""
    with np.load(pack_dir / f"{dataset}.npz") as stored:
        return {
            key: stored[key].astype(np.float32) if key.endswith("_slices") else stored[key]
            for key in stored.files
        }


# ------------------------------------------------------------------------------------------
# Training in stages (the GPU machine)


def next_stage(done_epochs: int, epoch_s: float, check_s: float, remaining_s: float,
               max_epochs: int) -> int:
    """The epoch count to train to next: double the epochs done, fewer where the remaining time
    allows fewer (each stage ends with a check of check_s), never past max_epochs; done_epochs
    when no further epoch fits."""
    if epoch_s <= 0 or not math.isfinite(epoch_s):
        return done_epochs
    fits = done_epochs + int((remaining_s - check_s) // epoch_s)
    return max(done_epochs, min(2 * done_epochs, fits, max_epochs))


def example_rows(val_roi: np.ndarray, val_subject_ids: np.ndarray, n: int = N_EXAMPLES
                 ) -> np.ndarray:
    """Rows of n val slices of the first val subject, evenly spread over its slices whose ROI
    is at least half its largest: mid-organ levels, where fine anatomy shows."""
    first = np.flatnonzero(val_subject_ids == val_subject_ids.min())
    area = val_roi[first].sum(axis=(1, 2))
    wide = first[area >= 0.5 * area.max()]
    picks = np.linspace(0, len(wide) - 1, n + 2)[1:-1].round().astype(int)
    return wide[np.unique(picks)]


def train_dataset(pack_dir: Path, info: dict, dataset: str, budget_s: float, device: str,
                  write_row, progress=print) -> dict[str, np.ndarray]:
    """Train one dataset's translator in stages within budget_s; write_row(row) after each
    stage's check. Returns example slices (input, reconstructions after the first and last
    stage)."""
    import torch

    from arepas import diagnostics, translator

    entry = info["datasets"][dataset]
    check = load_pack(pack_dir, dataset)
    published = translator.TranslatorSettings.from_dict(entry["translator"])
    workers = translator.loader_workers(os.cpu_count() or 1)
    rows = example_rows(check["val_roi"], check["val_subject_ids"])
    examples = {"input": check["val_slices"][rows], "roi": check["val_roi"][rows]}
    progress(f"{dataset}: {len(check['train_slices'])} train, {len(check['val_slices'])} val "
             f"slices of {entry['slice_size']}², {workers} loader workers, on {device}")
    started = time.perf_counter()
    epochs = 1
    with tempfile.TemporaryDirectory(prefix="arepas-full-") as checkpoints:
        while True:
            settings = translator.TranslatorSettings.from_dict(
                {**published.to_dict(), "epochs": epochs})
            trained_at = time.perf_counter()
            generator, history = translator.train_translator(
                check["train_slices"], check["val_slices"], settings, Path(checkpoints),
                seed=info["seed"], device=device, progress=lambda _: None, num_workers=workers,
            )
            train_s = time.perf_counter() - trained_at
            checked_at = time.perf_counter()
            found = diagnostics.edge_reliance(generator, settings, **check, device=device)
            check_s = time.perf_counter() - checked_at
            recon = translator.translate(
                generator, translator.edges_for(settings, examples["input"]), device=device)
            examples.setdefault("recon_first", recon)
            examples["recon_last"] = recon
            # The first epoch also pays for kernel selection and the loader's start.
            steady = history["seconds"].iloc[1:] if len(history) > 1 else history["seconds"]
            epoch_s = float(steady.median())
            steps_per_epoch = int(history["step"].iloc[0])
            row = {
                "dataset": dataset, "epochs": epochs, "steps": int(history["step"].iloc[-1]),
                "epoch_s": epoch_s, "step_s": epoch_s / steps_per_epoch,
                "stage_train_s": train_s, "check_s": check_s,
                "elapsed_s": time.perf_counter() - started,
                "val_l1": float(history["val_l1"].iloc[-1]),
                "g_l1": float(history["g_l1"].iloc[-1]),
                **{key: float(value) for key, value in found.items()},
                "n_train_slices": entry["n_train_slices"], "slice_size": entry["slice_size"],
                "published_epochs": published.epochs,
                "gpu_peak_gib": (torch.cuda.max_memory_allocated() / 2**30
                                 if device.startswith("cuda") else None),
            }
            write_row(row)
            progress(f"{dataset}: epoch {epochs} ({row['steps']} steps, {epoch_s:.1f} s/epoch): "
                     f"own/other {row['own_over_other']:.3f}, own/mean "
                     f"{row['own_over_mean_image']:.3f}, detail own {row['detail_own']:.3f} "
                     f"(ceiling {row['detail_blurred_input']:.3f})")
            remaining = budget_s - (time.perf_counter() - started)
            following = next_stage(epochs, epoch_s, check_s, remaining, published.epochs)
            if following <= epochs:
                break
            epochs = following
    examples["epochs_first"] = np.array(1)
    examples["epochs_last"] = np.array(epochs)
    del generator
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return examples


def train(pack_dir: Path, out_dir: Path, budget_s: float, device: str | None = None,
          datasets: tuple[str, ...] = DATASETS, progress=print) -> dict:
    """Every dataset of the pack in turn, budget_s each; out_dir gets RESULT_NAME (rewritten
    after every stage) and EXAMPLES_NAME."""
    import torch

    from bench import machine

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out_dir.mkdir(parents=True, exist_ok=True)
    info = json.loads((pack_dir / PACK_INFO).read_text())
    data = {"rows": [], "budget_s": budget_s, "device": device, "pack": info,
            "machine": machine.describe()}

    def write_row(row: dict) -> None:
        data["rows"].append(row)
        (out_dir / RESULT_NAME).write_text(json.dumps(data, indent=1))

    examples: dict[str, np.ndarray] = {}
    for dataset in datasets:
        for key, value in train_dataset(pack_dir, info, dataset, budget_s, device, write_row,
                                        progress).items():
            examples[f"{dataset}/{key}"] = value
        np.savez_compressed(out_dir / EXAMPLES_NAME, **examples)
    return data


def measure(run_dir: Path, budget_s: float, seed: int = 0, cores: int = 2,
            progress=print) -> dict:
    """`python -m bench --only translator_full`: prepare (in run_dir), pack and train on this
    machine, which must have CUDA (at 256² with 9 blocks a CPU trains an epoch in hours)."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            "translator_full trains the published configuration and needs a CUDA GPU; on a "
            "machine without one, pack here and train where a GPU is (python -m "
            "bench.translator_full --help)"
        )
    progress(f"translator_full: preprocessing the demo cohorts at full size in {run_dir}")
    configfiles = prepare(run_dir, seed, cores)
    with tempfile.TemporaryDirectory(prefix="arepas-full-pack-") as tmp:
        pack(run_dir, Path(tmp) / "pack", configfiles)
        data = train(Path(tmp) / "pack", Path(tmp) / "out", budget_s, "cuda", progress=progress)
    return {"runs": [data]}


def store(results: list[Path], results_dir: Path) -> Path:
    """File one or more device runs' results (trainings of the same pack) as this section's
    measurement; the record's machine is the last run's."""
    from arepas.io import atomic_path

    runs = [json.loads(path.read_text()) for path in results]
    sources = {json.dumps(run["pack"], sort_keys=True) for run in runs}
    if len(sources) > 1:
        raise ValueError("the results were trained on different packs; store them apart")
    record = {"section": SECTION, "machine": runs[-1]["machine"], "data": {"runs": runs}}
    target = results_dir / f"{SECTION}.json"
    with atomic_path(target, suffix=".json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
        tmp.chmod(0o644)
    return target


# ------------------------------------------------------------------------------------------
# Report


def _cell(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _longest(runs: list[dict]) -> dict[str, list[dict]]:
    """Per dataset, the stages of the training that reached the most epochs."""
    best: dict[str, list[dict]] = {}
    for run in runs:
        for dataset in {row["dataset"] for row in run["rows"]}:
            stages = [row for row in run["rows"] if row["dataset"] == dataset]
            if dataset not in best or stages[-1]["epochs"] > best[dataset][-1]["epochs"]:
                best[dataset] = stages
    return best


def render(data: dict) -> str:
    from arepas.diagnostics import CEILING_BLUR_PX, DETAIL_BORDER_PX, DETAIL_SIGMA_PX
    from bench import tables
    from bench.quality import EDGE_RELIANCE_TARGET, meets_edge_target

    runs = [run for run in data.get("runs", []) if run["rows"]]
    if not runs:
        return "No stage finished.\n"
    pack_info = runs[0]["pack"]
    configs = " + ".join(f"`{Path(p).name}`" for p in pack_info["configfiles"])
    cohorts = "; ".join(
        f"`{dataset}` {entry['n_train_slices']} train slices of {len(entry['train_subjects'])} "
        f"subjects and {entry['n_val_slices']} val slices of {len(entry['val_subjects'])}, "
        f"{entry['slice_size']}²"
        for dataset, entry in pack_info["datasets"].items()
    )
    devices = ", ".join(sorted({f"`{run['device']}` ({run['machine']['gpu']})" for run in runs}))
    text = (
        f"The translator settings of {configs} (the published configuration) trained from "
        f"scratch with the run's seed ({pack_info['seed']}) on the demo cohorts preprocessed at "
        f"full size ({cohorts}), on {devices}, in stages of doubling epochs until a time budget "
        "per cohort was spent (`python -m bench.translator_full`); after each stage the "
        "workflow's edge-reliance check on the healthy val subjects. *detail*: correlation of "
        f"the slice's fine detail (structure narrower than a Gaussian of {DETAIL_SIGMA_PX:g} px) "
        f"with the prediction's, inside the ROI less a {DETAIL_BORDER_PX} px border; *ceiling*: "
        f"the same for the slice blurred by {CEILING_BLUR_PX:g} px, what a faithful but slightly "
        "smooth reconstruction would give. Target "
        f"as in section 1: own / other ≤ {EDGE_RELIANCE_TARGET} and, on the registered brain "
        f"cohort, own / mean image ≤ {EDGE_RELIANCE_TARGET}. The CPU demo's translators (64² "
        "slices) on the same questions: section 1.\n\n"
    )
    coarse, fine = [], []
    for dataset, entry in pack_info["datasets"].items():
        if "native_spacing_mm" not in entry:
            continue
        sizes = np.asarray(entry["native_spacing_mm"], dtype=float)
        working = np.asarray(entry["working_spacing_mm"], dtype=float)
        grid = (f"`{dataset}` scans of {sizes.min():.1f} to {sizes.max():.1f} mm voxels on a "
                + " × ".join(f"{v:g}" for v in working) + " mm working grid")
        # Voxels half as large again as the working grid's leave its finest band to
        # interpolation.
        (coarse if sizes.max() > COARSE_FACTOR * working.max() else fine).append(grid)
    if coarse:
        text += (
            "The demo scans behind these numbers are coarser than the working grid ("
            + "; ".join(coarse) + "), so part of a slice's finest detail is interpolation "
            "between scan voxels, which the ceiling keeps and no edge map carries: the ceiling is "
            "out of reach for a reason other than the translator (`demo: {scan_grid: clinical}`, "
            "set by config/full.yaml, generates the scans on clinical grids).\n\n"
        )
    if fine:
        text += ("Scans at least as fine as the working grid (" + "; ".join(fine) + "): the "
                 "fine detail is the phantoms' anatomy.\n\n")
    table = []
    for number, run in enumerate(runs, start=1):
        for row in run["rows"]:
            table.append([
                row["dataset"], f"{number} ({run['budget_s']:.0f} s)",
                f"{row['epochs']} of {row['published_epochs']}", f"{row['steps']:,}",
                _cell(row["l1_own_edges"]), _cell(row["own_over_other"]),
                _cell(row["own_over_mean_image"]), _cell(row["detail_own"]),
                _cell(row["detail_other_edges"]), _cell(row["detail_mean_image"]),
                _cell(row["detail_blurred_input"]), "yes" if meets_edge_target(row) else "no",
            ])
    table.sort(key=lambda cells: (cells[0], cells[1]))
    text += tables.markdown_table(
        ["dataset", "training (budget)", "epochs", "steps", "L1 own edges", "own / other",
         "own / mean image", "detail own edges", "detail other edges", "detail mean image",
         "detail ceiling", "target met"],
        table, left=3,
    )
    longest = _longest(runs)
    shares = ", ".join(
        f"{dataset} {stages[-1]['detail_own'] / stages[-1]['detail_blurred_input']:.0%} after "
        f"{stages[-1]['epochs']} epochs"
        for dataset, stages in sorted(longest.items())
        if math.isfinite(stages[-1]["detail_own"]) and stages[-1]["detail_blurred_input"]
    )
    text += (
        f"\nShare of the ceiling's fine detail in the own-edge reconstruction: {shares}; "
        "every training was stopped by its budget, not by the published epoch count. "
    )
    repeats = []
    for dataset in sorted(longest):
        trainings = [{row["epochs"]: row for row in run["rows"] if row["dataset"] == dataset}
                     for run in runs]
        trainings = [t for t in trainings if t]
        common = sorted(set.intersection(*(set(t) for t in trainings)))
        if len(trainings) > 1 and common:
            values = "; ".join(
                "/".join(f"{t[epoch]['detail_own']:.3f}" for t in trainings)
                + f" at epoch {epoch}"
                for epoch in common
            )
            repeats.append(f"{dataset} was trained {len(trainings)} times (detail own {values})")
    if repeats:
        text += (
            "Trained again with the same seed, " + "; ".join(repeats) + ": on CUDA the "
            "translator is reproducible only up to floating-point summation order, so this "
            "is the spread a rerun shows. "
        )
    speeds = ", ".join(
        f"{dataset} {stages[-1]['epoch_s']:.1f} s per epoch ({stages[-1]['step_s'] * 1000:.0f} "
        f"ms per step of batch 8), so {stages[-1]['published_epochs']} epochs in "
        f"{stages[-1]['epoch_s'] * stages[-1]['published_epochs'] / 60:.0f} min"
        for dataset, stages in sorted(longest.items())
    )
    peak = max((row.get("gpu_peak_gib") or 0.0) for run in runs for row in run["rows"])
    text += (
        f"Training speed: {speeds}; peak GPU memory {peak:.1f} GiB. Reconstructions of "
        "healthy val slices after the first and the last stage: "
        "[docs/img/full_size_reconstructions.png](docs/img/full_size_reconstructions.png).\n"
    )
    return text


def figure(examples_paths: list[Path], png: Path) -> None:
    """Input, first-stage and last-stage reconstructions of the example val slices, per
    dataset, with the fine detail (input minus its 1.5 px blur) of input and last stage; of
    several trainings, each dataset's longest."""
    import matplotlib
    from matplotlib.figure import Figure
    from scipy import ndimage

    from arepas.diagnostics import DETAIL_SIGMA_PX
    from arepas.figures import save_figure

    matplotlib.use("Agg")
    examples: dict[str, np.ndarray] = {}
    for path in examples_paths:
        with np.load(path) as stored:
            found = {key: stored[key] for key in stored.files}
        for dataset in DATASETS:
            key = f"{dataset}/epochs_last"
            if key in found and int(found[key]) > int(examples.get(key, 0)):
                examples.update({k: v for k, v in found.items() if k.startswith(f"{dataset}/")})
    datasets = [d for d in DATASETS if f"{d}/input" in examples]
    n = max(len(examples[f"{d}/input"]) for d in datasets)
    columns = ("input", "recon_first", "recon_last", "detail input", "detail last")
    fig = Figure(figsize=(2.0 * len(columns), 2.0 * n * len(datasets)), layout="constrained")
    axes = fig.subplots(n * len(datasets), len(columns), squeeze=False)
    for d, dataset in enumerate(datasets):
        first = int(examples[f"{dataset}/epochs_first"])
        last = int(examples[f"{dataset}/epochs_last"])
        titles = ("input (healthy val)", f"after {first} epoch{'s' * (first > 1)}",
                  f"after {last} epochs", "fine detail, input", f"fine detail, {last} epochs")
        for i in range(n):
            row = axes[d * n + i]
            for ax in row:
                ax.set_axis_off()
            if i >= len(examples[f"{dataset}/input"]):
                continue
            images = [examples[f"{dataset}/{key}"][i]
                      for key in ("input", "recon_first", "recon_last")]
            details = [image - ndimage.gaussian_filter(image, DETAIL_SIGMA_PX)
                       for image in (images[0], images[2])]
            limit = float(np.percentile(np.abs(details[0]), 99)) or 1.0
            for c, (ax, image) in enumerate(zip(row, images + details, strict=True)):
                if c < 3:
                    ax.imshow(image, cmap="gray", vmin=-1, vmax=1)
                else:
                    ax.imshow(image, cmap="gray", vmin=-limit, vmax=limit)
                if i == 0:
                    ax.set_title(f"{dataset}: {titles[c]}" if c == 0 else titles[c], fontsize=8)
    save_figure(fig, png)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.translator_full")
    commands = parser.add_subparsers(dest="command", required=True)
    preparing = commands.add_parser("prepare", help="the demo cohorts preprocessed at full size")
    preparing.add_argument("run_dir", type=Path)
    preparing.add_argument("--seed", type=int, default=0)
    preparing.add_argument("--cores", type=int, default=2)
    packing = commands.add_parser("pack", help="gather a full-size run's stacks to travel")
    packing.add_argument("run_dir", type=Path)
    packing.add_argument("pack_dir", type=Path)
    packing.add_argument("--configfile", action="append", required=True,
                         help="the run's config files, in Snakemake's order")
    training = commands.add_parser("train", help="train and check in stages (GPU machine)")
    training.add_argument("pack_dir", type=Path)
    training.add_argument("out_dir", type=Path)
    training.add_argument("--budget-s", type=float, default=200.0,
                          help="training and checking seconds per dataset")
    training.add_argument("--device", default=None)
    training.add_argument("--datasets", default=",".join(DATASETS))
    drawing = commands.add_parser("figure", help="the examples' figure")
    drawing.add_argument("png", type=Path)
    drawing.add_argument("examples", type=Path, nargs="+")
    storing = commands.add_parser("store", help="file a result in bench/measurements")
    storing.add_argument("results", type=Path, nargs="+")
    storing.add_argument("--results-dir", type=Path,
                         default=Path(__file__).resolve().parent / "measurements")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        configfiles = prepare(args.run_dir.resolve(), args.seed, args.cores)
        print("then: python -m bench.translator_full pack", args.run_dir, "PACK_DIR",
              *(f"--configfile {path}" for path in configfiles))
    elif args.command == "pack":
        info = pack(args.run_dir.resolve(), args.pack_dir, args.configfile)
        print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "translator"}
                          for k, v in info["datasets"].items()}, indent=1))
    elif args.command == "train":
        train(args.pack_dir, args.out_dir, args.budget_s, args.device,
              tuple(d for d in args.datasets.split(",") if d))
    elif args.command == "figure":
        figure(args.examples, args.png)
    else:
        print(store(args.results, args.results_dir))


if __name__ == "__main__":
    main()

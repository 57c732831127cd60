"""The published configuration end to end on one GPU, in one prepared command.

    .venv/bin/python -m bench --only gpu_workflow --runs-dir /tmp/gpu

runs, in RUNS_DIR/gpu_workflow (a working directory of links to the repository's Snakefile,
workflow and config), `snakemake --configfile config/gpu_workflow.yaml`: the demo cohorts on
clinical scan grids with 4 train, 2 val and 10 test subjects per cohort, every network at its
published size, the translator cut to 1,000 steps per dataset (the config file says why;
`--gpu-workflow-steps N` sets another budget). Beside the workflow it generates and
preprocesses one 512 x 512 x 256 chest CT subject, and after it times that subject's
reconstruction and maps with the trained lung models (bench/scaling.py's stages, which call the
library functions the rules' scripts call, on the GPU where the rules use it). It stores the
device, every rule's time and peak RSS, the GPU memory and utilisation seen while the workflow
ran, the summary and relative-change tables (the evaluate rule's bootstrap intervals), the
translators' edge reliance and the large subject's timing, and renders them as the section
"Published sizes on a GPU". Budget: the command is sized for one 10-minute call on one H100
with 16 CPU cores; the translators' share is `estimate_minutes`.

Without CUDA it refuses to run, unless `--gpu-workflow-cpu-smoke` asks for its shrunken form:
one subject per split (two val subjects, which arepas_calibrated needs), thick working slices,
one training step per network and a 128 x 128 x 64 subject for the inference timing. That proves
the plumbing on a CPU in minutes (tests/test_gpu_workflow.py, with AREPAS_GPU_WORKFLOW_SMOKE=1);
its numbers are not results: it refuses the repository's bench/measurements, so give it
`--results-dir` and `--output` elsewhere, and its working directory is gpu_workflow_cpu_smoke.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench import quality, tables

CONFIG = "config/gpu_workflow.yaml"
SECTION = "gpu_workflow"
RECORD = quality.WALL_RECORD
SMOKE_CONFIG = "bench_cpu_smoke.yaml"
DATASETS = ("lung_ct", "brain_t1")
# The limit on the large subject's inference: profiled where it takes over 5 s.
INFERENCE_TARGET_S = 5.0
# Training jobs on the one GPU at a time: all of them (2 translators, 2 scorers, 2 autoencoders,
# 2 DAEs) may share it; the default profile would run them one after the other.
GPU_SLOTS = 8
# The shrunken form for a CPU: the published networks, as config/published_smoke.yaml has them.
SMOKE_OVERRIDES = {
    "demo": {"counts": {d: {"train": 1, "val": 2, "test": 1} for d in DATASETS}},
    "scorer_stall": "flag",
    "datasets": {dataset: {"spacing": [1.0, 1.0, thick], "translator": {"max_steps": 1},
                           "scorer": {"max_steps": 1, "max_restarts": 1},
                           "autoencoder": {"max_steps": 1}, "dae": {"max_steps": 1}}
                 for dataset, thick in (("lung_ct", 30.0), ("brain_t1", 20.0))},
}
INFERENCE_SHAPE = (512, 512, 256)
SMOKE_INFERENCE_SHAPE = (128, 128, 64)
INFERENCE_DATASET = "lung_ct"
INFERENCE_STAGES = ("reconstruct", "maps")
REPO = Path(__file__).resolve().parents[1]


class NoCudaError(RuntimeError):
    """The section needs a GPU and torch sees none."""


STEPS_CONFIG = "bench_steps.yaml"


def configfiles(smoke: bool, steps: int | None = None) -> list[str]:
    """The config files given to the run (over the Snakefile's config/config.yaml), in order,
    relative to its working directory."""
    return ([CONFIG] + ([SMOKE_CONFIG] if smoke else [])
            + ([STEPS_CONFIG] if steps is not None else []))


def steps_overrides(steps: int) -> dict:
    """The translators' step budget set on the command line (--gpu-workflow-steps)."""
    return {"datasets": {d: {"translator": {"max_steps": int(steps)}} for d in DATASETS}}


def merged_config(repo: Path = REPO, smoke: bool = False, steps: int | None = None) -> dict:
    """config.yaml, the overlay and (smoke) the shrinking, merged key by key as Snakemake merges
    config files."""
    from snakemake.utils import update_config

    config: dict = {}
    for name in ("config/config.yaml", CONFIG):
        update_config(config, yaml.safe_load((repo / name).read_text()) or {})
    if smoke:
        update_config(config, copy.deepcopy(SMOKE_OVERRIDES))
    if steps is not None:
        update_config(config, steps_overrides(steps))
    return config


def workflow_config(repo: Path = REPO, smoke: bool = False, steps: int | None = None) -> dict:
    """The config as the workflow's jobs see it: presets applied, then the schema's defaults
    filled in (workflow/rules/common.smk)."""
    from snakemake.utils import validate

    from arepas.presets import resolve_presets

    config = resolve_presets(merged_config(repo, smoke, steps))
    validate(config, str(repo / "workflow" / "schemas" / "config.schema.yaml"))
    return config


def thread_plan(cores: int) -> dict[str, int]:
    """Threads per rule for a run on `cores` CPUs: the demo generation on all of them (one
    worker per subject), each training job a share that feeds its GPU work (a translator's
    threads beyond the first are data-loader workers)."""
    share = max(1, cores // 4)
    return {"make_demo": cores, "train_translator": share, "train_scorer": share,
            "train_autoencoder": max(1, share // 2), "train_dae": max(1, share // 2)}


def snakemake_command(cores: int, smoke: bool, steps: int | None = None) -> list[str]:
    """The arguments of `snakemake` for the run."""
    command = ["--cores", str(cores), "--configfile", *configfiles(smoke, steps)]
    if not smoke:
        command += ["--resources", f"gpu={GPU_SLOTS}", "--set-threads",
                    *(f"{rule}={n}" for rule, n in thread_plan(cores).items())]
    return command


def make_workdir(repo: Path, runs_dir: Path, smoke: bool, steps: int | None = None) -> Path:
    workdir = quality.linked_workdir(repo, runs_dir / (f"{SECTION}_cpu_smoke" if smoke
                                                       else SECTION))
    if smoke:
        (workdir / SMOKE_CONFIG).write_text(yaml.safe_dump(SMOKE_OVERRIDES))
    if steps is not None:
        (workdir / STEPS_CONFIG).write_text(yaml.safe_dump(steps_overrides(steps)))
    return workdir


def h100_step_s(dataset: str) -> float:
    """Translator seconds per step of batch 8 at the published size on one H100 (bfloat16):
    the median of the dataset's stages in bench/measurements/translator_step.json."""
    from bench import training_time

    stages = json.loads(training_time.RECORD.read_text())["stages"]
    return statistics.median(s["step_s"] for s in stages if s["dataset"] == dataset)


def estimate_minutes(config: dict) -> dict:
    """The translator's share of the GPU budget: both datasets' step budgets at the H100 step
    time, as if run one after the other (side by side they share the one GPU)."""
    from arepas import translator

    out = {}
    for dataset in DATASETS:
        settings = translator.TranslatorSettings.from_dict(config["datasets"][dataset]
                                                           ["translator"])
        out[dataset] = {"steps": settings.max_steps, "amp": settings.amp,
                        "minutes": settings.max_steps * h100_step_s(dataset) / 60}
    out["total_minutes"] = sum(v["minutes"] for v in out.values())
    return out


def cuda_device() -> dict:
    import torch

    info = {"cuda": bool(torch.cuda.is_available()), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda}
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info |= {"name": props.name, "memory_gib": props.total_memory / 2**30,
                 "count": torch.cuda.device_count()}
    return info


def require_cuda(device: dict, smoke: bool) -> None:
    if device["cuda"] or smoke:
        return
    raise NoCudaError(
        f"section {SECTION} runs the published configuration on a GPU, and torch "
        f"{device['torch']} sees no CUDA device here (CUDA build: {device['torch_cuda']}). Run "
        "it on a machine with one (`python -m bench --only gpu_workflow --runs-dir /tmp/gpu`), "
        "or add --gpu-workflow-cpu-smoke for the shrunken form that tests the plumbing on a CPU."
    )


def script_devices(repo: Path = REPO) -> list[dict]:
    """Which rule scripts can use a GPU, read from the scripts themselves: a training script
    picks its device with arepas.devices (the rule asks for `gpu=1`); an inference script
    takes CUDA wherever torch sees it, without asking for a GPU; the rest never touch torch's
    devices."""
    rows = []
    for path in sorted((repo / "workflow" / "scripts").glob("*.py")):
        text = path.read_text()
        if "job_training_device" in text:
            device, how = "GPU", "training rule: resources gpu=1, arepas.devices picks CUDA"
        elif "torch.cuda.is_available()" in text:
            device, how = "GPU where visible", "takes CUDA whenever torch sees it, asks no GPU"
        # A model loaded for its metadata alone (`load_scorer(path)[2]`) runs nothing.
        elif re.search(r"load_(translator|scorer|autoencoder|dae)\([^()]*\)(?!\[2\])", text):
            device, how = "CPU", "runs a network on the CPU: its model loaded without a device"
        else:
            device, how = "CPU", "no torch device"
        rows.append({"script": path.stem, "device": device, "how": how})
    return rows


def training_devices(workdir: Path) -> dict[str, str]:
    """The device each training job reported in its log ('... on cuda')."""
    found = {f"{log.stem}/{log.parent.name}": re.search(r" on (cuda\S*|cpu)\b", log.read_text())
             for log in sorted(workdir.glob("logs/*/train_*.log"))}
    return {job: match.group(1).rstrip(",") for job, match in found.items() if match}


class GpuSampler:
    """Device-wide GPU memory in use and utilisation, from nvidia-smi every `every_s` seconds
    while a run lasts (the rules record no GPU memory of their own)."""

    QUERY = ["nvidia-smi", "--query-gpu=memory.used,utilization.gpu",
             "--format=csv,noheader,nounits", "--id=0"]

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _loop(self) -> None:
        started = time.time()
        while not self._stop.is_set():
            try:
                out = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=10)
                used, util = (float(v) for v in out.stdout.strip().split(",")[:2])
                self.samples.append((time.time() - started, used, util))
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.every_s)

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=15)

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        t, used, util = (np.array(v) for v in zip(*self.samples, strict=True))
        return {"samples": len(t), "every_s": self.every_s, "peak_used_mib": float(used.max()),
                "mean_utilisation": float(util.mean()),
                "busy_fraction": float((util > 0).mean()),
                "timeline": [[round(a, 1), b, c] for a, b, c in self.samples]}


def inference_run_dir(workdir: Path, config: dict) -> Path:
    """A folder that bench/scaling.py reads as a run: its config/config.yaml is this run's
    config as the jobs see it, its lung models are this run's."""
    run_dir = workdir / "inference_run"
    (run_dir / "config").mkdir(parents=True, exist_ok=True)
    (run_dir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    models = run_dir / "results" / INFERENCE_DATASET / "models"
    models.parent.mkdir(parents=True, exist_ok=True)
    if not models.exists():
        models.symlink_to(workdir / "results" / INFERENCE_DATASET / "models")
    return run_dir


def _large_subject_stages(workdir: Path, entry: dict, stages, progress, **options) -> dict:
    """bench/scaling.py's stages on the large subject, each in a fresh process as a job."""
    from bench import scaling

    for stage in stages:
        progress(f"{SECTION}: {'x'.join(map(str, entry['shape']))} subject, {stage}")
        entry[stage] = scaling._spawn(stage, workdir / "inference_subject",
                                      workdir / "inference_run", entry["shape"], 7, 1, **options)
    return entry


def prepare_large_subject(workdir: Path, config: dict, shape, progress=print) -> dict:
    """Generate and preprocess one CT subject (CPU only): they need no trained model, so they
    run beside the workflow."""
    inference_run_dir(workdir, config)
    folder = workdir / "inference_subject"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    return _large_subject_stages(workdir, {"shape": list(shape), "threads": 1},
                                 ("generate", "preprocess"), progress)


def time_large_subject(workdir: Path, entry: dict, progress=print) -> dict:
    """Reconstruct and map the prepared subject with this run's lung models, on the GPU where
    the rules use it."""
    _large_subject_stages(workdir, entry, INFERENCE_STAGES, progress, gpu=True, calibrated=True)
    entry["inference_s"] = sum(entry[s]["seconds"] for s in INFERENCE_STAGES)
    entry["inference_process_s"] = sum(entry[s]["process_s"] for s in INFERENCE_STAGES)
    shutil.rmtree(workdir / "inference_subject")
    return entry


def measure(repo: Path, runs_dir: Path, cores: int | None = None, smoke: bool = False,
            steps: int | None = None, progress=print) -> dict:
    device = cuda_device()
    require_cuda(device, smoke)
    cores = cores or os.cpu_count() or 1
    workdir = make_workdir(repo, runs_dir, smoke, steps)
    config = workflow_config(repo, smoke, steps)
    command = snakemake_command(cores, smoke, steps)
    shape = SMOKE_INFERENCE_SHAPE if smoke else INFERENCE_SHAPE
    # The large subject's generation and preprocessing (CPU, no model) run beside the workflow.
    background = ThreadPoolExecutor(1)
    prepared = background.submit(prepare_large_subject, workdir, config, shape, progress)
    background.shutdown(wait=False)
    if quality.finished(workdir) and (workdir / RECORD).exists():
        progress(f"{SECTION}: the run in {workdir} is finished; using it")
    else:
        progress(f"{SECTION}: running snakemake {' '.join(command)} in {workdir}")
        record = quality.run_workflow(workdir, command, GpuSampler() if device["cuda"] else None)
        if record["returncode"] != 0:
            prepared.result()
            raise RuntimeError(f"the run in {workdir} failed: see bench_snakemake.log there")
        progress(f"{SECTION}: the workflow took {record['wall_s']:.0f} s")
    record = json.loads((workdir / RECORD).read_text())
    records = tables.read_job_records(workdir)
    large = time_large_subject(workdir, prepared.result(), progress)
    results = workdir / "results"
    return {
        "smoke": smoke, "run_dir": str(workdir), "command": record["command"],
        "wall_s": record["wall_s"], "cores": cores,
        "threads": thread_plan(cores) if not smoke else {},
        "gpu_slots": None if smoke else GPU_SLOTS, "device": device,
        "gpu_samples": record.get("gpu_samples"), "counts": config["demo"]["counts"],
        "methods": config["methods"],
        "translator": {d: config["datasets"][d]["translator"] for d in DATASETS},
        "estimate": estimate_minutes(config),
        "records": records.drop(columns=["source"]).to_dict("records"),
        "training": tables.training_histories(workdir),
        "training_devices": training_devices(workdir), "script_devices": script_devices(repo),
        "summary": pd.read_csv(results / "summary.tsv", sep="\t", keep_default_na=False,
                               na_values=[""]).to_dict("records"),
        "relative_change": pd.read_csv(results / "relative_change.tsv", sep="\t")
        .to_dict("records"),
        "edge_reliance": quality.edge_reliance_rows(workdir), "large_subject": large,
    }


def _rule_rows(records: pd.DataFrame) -> list[list[str]]:
    return [[rule, dataset or "—", str(len(group)), f"{group['s'].sum():.1f}",
             f"{group['s'].mean():.1f}", f"{group['s'].max():.1f}",
             f"{group['max_rss'].max():.0f}"]
            for rule, dataset, group in tables.rule_dataset_groups(records)]


# Rules whose script has another name than the rule.
RULE_SCRIPTS = {"translator_figure": "training_figure", "scorer_figure": "training_figure"}


def _device_of(rule: str, scripts: dict[str, dict]) -> str:
    entry = scripts.get(RULE_SCRIPTS.get(rule, rule))
    return "CPU (no script)" if entry is None else entry["device"]


def render_quality(data: dict) -> str:
    summary = pd.DataFrame(data["summary"]).sort_values(["dataset", "method"])
    rows = [[row.dataset, row.method,
             *(tables.number(v, "{:.3f}") for v in (row.best_dice, row.dice_val_thr, row.auprc,
                                                     row.auroc)),
             str(row.flag) if isinstance(row.flag, str) and row.flag else ""]
            for row in summary.itertuples()]
    tests = sorted({c.get("test") for c in data["counts"].values()})
    text = (
        f"Quality on the {'/'.join(map(str, tests))} test subjects per cohort "
        "(`results/summary.tsv`): pooled Dice at the best threshold and at the label-free val "
        "threshold, AUPRC and AUROC.\n\n"
        + tables.markdown_table(["dataset", "method", "best Dice", "Dice at val threshold",
                                 "AUPRC", "AUROC", "flag"], rows, left=2)
    )
    return text + "\n" + quality.render_intervals(
        {"runs": [{"label": "GPU run", "relative_change": data["relative_change"]}]})


def render_large_subject(data: dict) -> str:
    large = data["large_subject"]
    shape = "×".join(map(str, large["shape"]))
    rows = [[stage, r.get("device", "cpu"), tables.number(r["seconds"]),
             tables.number(r["process_s"]), tables.number(r["peak_rss_mb"], "{:.0f}"),
             "—" if r.get("gpu_peak_allocated_mib") is None
             else f"{r['gpu_peak_allocated_mib']:.0f}",
             ", ".join(f"{k} {v:.1f}" for k, v in r["parts"].items())]
            for stage in ("preprocess", *INFERENCE_STAGES) for r in [large[stage]]]
    text = (
        f"\nOne {shape} chest CT subject with lesions (bench/scaling.py's phantom on its "
        f"{' × '.join(f'{v:g}' for v in (358.4, 358.4, 320.0))} mm field of view) through "
        "preprocessing (bench/scaling.py's stage, CPU, run beside the workflow: its time "
        "shares the CPUs with the workflow's jobs), reconstruction and maps (its stages too: "
        "what the reconstruct and anomaly_maps scripts do, with this run's lung "
        "models, every method raw and post-processed, on the working and the native grid), "
        "each in a fresh process as a job, torch on 1 CPU thread as the rules. Seconds inside "
        "the process (GPU work finished at each part's end); *with start-up* adds the "
        "interpreter, imports and CUDA context.\n\n"
        + tables.markdown_table(["stage", "device", "s", "s with start-up", "peak RSS MB",
                                 "peak GPU MiB allocated", "parts (s)"], rows,
                                align="llrrrrl")
    )
    total = large["inference_s"]
    parts = {f"{stage}: {k}": v for stage in INFERENCE_STAGES
             for k, v in large[stage]["parts"].items()}
    text += (f"\nInference (reconstruct + maps): {total:.1f} s in the stages, "
             f"{large['inference_process_s']:.1f} s with start-up: "
             f"{'within' if total <= INFERENCE_TARGET_S else 'over'} the "
             f"{INFERENCE_TARGET_S:g} s target.")
    if total > INFERENCE_TARGET_S:
        top = sorted(parts.items(), key=lambda kv: -kv[1])[:5]
        text += " Where the time goes (the largest parts): " + ", ".join(
            f"{name} {seconds:.1f} s ({seconds / total:.0%})" for name, seconds in top) + "."
    return text + "\n"


def render(data: dict) -> str:
    device = data["device"]
    name = device.get("name", "no GPU (CPU smoke)")
    cohort = "; ".join(f"{d} {', '.join(f'{v} {k}' for k, v in c.items())}"
                       for d, c in data["counts"].items())
    steps = ", ".join(f"{d} {t.get('max_steps')}" for d, t in data["translator"].items())
    est = data["estimate"]
    step_ms = "-".join(sorted({f"{h100_step_s(d) * 1000:.0f}" for d in DATASETS}))
    lines = []
    if data["smoke"]:
        lines.append(
            "**CPU smoke of the section's plumbing, not a measurement:** one training step per "
            "network, thick slices, a small subject. `python -m bench --only gpu_workflow` on "
            "a GPU machine replaces it.\n")
    lines.append(
        f"`{CONFIG}` over `config/config.yaml`, run whole by `python -m bench --only "
        f"gpu_workflow` on {name}"
        + (f" ({device['memory_gib']:.0f} GiB)" if "memory_gib" in device else "")
        + f", torch {device['torch']}, `--cores {data['cores']}`: "
        f"{data['wall_s'] / 60:.1f} min wall for the workflow. The published networks at "
        "256² on the demo cohorts' clinical scan grids, float32, with every method "
        f"({', '.join(data['methods'])}), cohorts {cohort}. The translators are cut to "
        f"`max_steps` ({steps} steps); at {step_ms} ms per step (H100, bfloat16, "
        "`bench/measurements/translator_step.json`) that "
        f"is {est['total_minutes']:.1f} min of GPU time for both one after the other. "
        + (f"All training jobs may share the GPU (`--resources gpu={data['gpu_slots']}`; the "
           "default profile would run them one at a time), so both translators train side by "
           "side, beside the autoencoders; threads per rule "
           + ", ".join(f"{k} {v}" for k, v in data["threads"].items()) + "."
           if data["gpu_slots"] else "")
        + "\n"
    )
    # Which rules use the GPU.
    scripts = {row["script"]: row for row in data["script_devices"]}
    seen = data.get("training_devices") or {}
    rows = [[row["script"], row["device"], row["how"]]
            for row in data["script_devices"] if row["how"] != "no torch device"]
    lines.append(
        "Where each rule runs: the training rules ask for a GPU and train on it (their logs "
        "say `"
        + (", ".join(sorted(set(seen.values()))) or "—")
        + "`); reconstruct, patch_calibration and anomaly_maps ask for none but take CUDA "
        "wherever torch sees it; the scripts below that say CPU run a network there; every "
        "other rule (demo generation, preprocessing and registration, evaluation, figures, "
        "masks) is CPU code without a network. The workflow is unchanged for this run.\n\n"
        + tables.markdown_table(["script", "device", "how"], rows, left=3)
    )
    # Per-rule times.
    records = pd.DataFrame(data["records"])
    training = {(r["dataset"], r["network"]): r for r in data["training"]}
    lines.append(
        "\nPer rule (Snakemake's benchmark files; the training rules' own usage records): "
        "summed, mean and longest seconds per job, the largest job's peak RSS and the device "
        "the rule's script uses.\n\n"
        + tables.markdown_table(
            ["rule", "dataset", "jobs", "summed s", "mean s/job", "longest job s",
             "peak RSS MB", "device"],
            [row + [_device_of(row[0].removesuffix("_v0"), scripts)]
             for row in _rule_rows(records)], align="ll" + "r" * 5 + "l")
    )
    rows = [[dataset, network, str(r["steps"]), str(r["epochs"]),
             tables.number(r.get("train_s", float("nan"))),
             tables.number(r.get("s_per_step", float("nan")) * 1000, "{:.0f}")]
            for (dataset, network), r in sorted(training.items())]
    lines.append(
        "\nTraining steps taken (each network's history), and its training seconds per step "
        "with the jobs that shared the GPU beside it.\n\n"
        + tables.markdown_table(["dataset", "network", "steps", "epochs", "training s",
                                 "ms per step"], rows, left=2)
    )
    samples = data.get("gpu_samples")
    memory = (f"Peak GPU memory in use on the device while the workflow ran: "
              f"{samples['peak_used_mib'] / 1024:.1f} GiB (nvidia-smi every "
              f"{samples['every_s']:g} s, all jobs together); mean utilisation "
              f"{samples['mean_utilisation']:.0f} %, the GPU busy in "
              f"{samples['busy_fraction']:.0%} of the samples. "
              if samples else "GPU memory was not sampled (no nvidia-smi, or no GPU). ")
    lines.append(
        "\n" + memory + "The rules record no GPU memory of their own (their usage and benchmark "
        "files hold time, CPU time and RSS): the peak allocated by torch is measured in the "
        "large subject's stages below.\n"
    )
    lines.append("### Quality\n\n" + render_quality(data))
    lines.append("### Edge reliance\n\n" + quality.render_edge_reliance(
        {"runs": [{"label": "GPU run", "edge_reliance": data["edge_reliance"]}]}))
    shape = " × ".join(map(str, data["large_subject"]["shape"]))
    lines.append(f"### A {shape} CT subject\n" + render_large_subject(data))
    return "\n".join(lines)


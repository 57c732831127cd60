"""bench/gpu_workflow.py: the published configuration end to end on one GPU, prepared on the CPU.

The unit tests read the config overlay, the command and the rendering; the CPU smoke of the
whole section (minutes on two cores) runs only with AREPAS_GPU_WORKFLOW_SMOKE=1."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# `bench/` sits at the repository root, outside the installed package.
sys.path.insert(0, str(REPO))

from arepas import autoencoder, dae, scorer, translator  # noqa: E402
from bench import gpu_workflow, run  # noqa: E402


def test_the_overlay_gives_the_published_networks_with_the_translator_budget():
    config = gpu_workflow.workflow_config(REPO)
    assert config["demo"]["scan_grid"] == "clinical"
    for dataset in gpu_workflow.DATASETS:
        counts = config["demo"]["counts"][dataset]
        assert (counts["train"], counts["val"], counts["test"]) == (4, 2, 10)
        block = config["datasets"][dataset]
        assert block["preset"] == "published" and block["slice_size"] == 256
        t = translator.TranslatorSettings.from_dict(block["translator"])
        assert (t.base_channels, t.n_blocks, t.disc_channels, t.batch_size) == (64, 9, 64, 8)
        # The published float32, cut to the step budget; the other networks at their lengths.
        assert (t.amp, t.max_steps) == (False, 1000)
        s = scorer.ScorerSettings.from_dict(block["scorer"])
        assert (s.patch_size, s.epochs, s.max_steps) == (16, 10, None)
        assert autoencoder.AutoencoderSettings.from_dict(block["autoencoder"]).max_steps is None
        assert dae.DaeSettings.from_dict(block["dae"]).max_steps is None
    assert config["datasets"]["lung_ct"]["spacing"] == [1.0, 1.0, 2.5]
    assert config["datasets"]["brain_t1"]["spacing"] == [1.0, 1.0, 1.0]
    assert {"arepas", "residual", "patch", "ae", "dae", "arepas_calibrated"} <= set(
        config["methods"])
    assert config["maps"]["n_patches"] == 10000
    # Both translators at the H100 step time of translator_step.json: about 3 minutes of GPU time.
    estimate = gpu_workflow.estimate_minutes(config)
    assert 2.5 < estimate["total_minutes"] < 3.0


def test_a_step_budget_from_the_command_line_overrides_the_overlay(tmp_path):
    config = gpu_workflow.workflow_config(REPO, steps=2000)
    assert all(config["datasets"][d]["translator"]["max_steps"] == 2000
               for d in gpu_workflow.DATASETS)
    assert 5.5 < gpu_workflow.estimate_minutes(config)["total_minutes"] < 6.0
    workdir = gpu_workflow.make_workdir(REPO, tmp_path, smoke=False, steps=2000)
    command = gpu_workflow.snakemake_command(16, smoke=False, steps=2000)
    assert gpu_workflow.STEPS_CONFIG in command and (workdir / gpu_workflow.STEPS_CONFIG).exists()


def test_the_cpu_smoke_shrinks_the_budget_not_the_networks():
    config = gpu_workflow.workflow_config(REPO, smoke=True)
    for dataset in gpu_workflow.DATASETS:
        counts = config["demo"]["counts"][dataset]
        assert (counts["train"], counts["val"], counts["test"]) == (1, 2, 1)
        block = config["datasets"][dataset]
        assert block["slice_size"] == 256 and block["spacing"][2] >= 20
        for network in ("translator", "scorer", "autoencoder", "dae"):
            assert block[network]["max_steps"] == 1
        assert translator.TranslatorSettings.from_dict(block["translator"]).base_channels == 64


def test_the_command_lets_every_training_job_share_the_gpu():
    command = gpu_workflow.snakemake_command(16, smoke=False)
    assert command[command.index("--configfile") + 1] == gpu_workflow.CONFIG
    assert f"gpu={gpu_workflow.GPU_SLOTS}" in command
    assert "train_translator=4" in command and "make_demo=16" in command
    smoke = gpu_workflow.snakemake_command(2, smoke=True)
    assert "--resources" not in smoke and gpu_workflow.SMOKE_CONFIG in smoke


def test_measure_refuses_without_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_workflow, "cuda_device",
                        lambda: {"cuda": False, "torch": "2.x", "torch_cuda": None})
    with pytest.raises(gpu_workflow.NoCudaError, match="--gpu-workflow-cpu-smoke"):
        gpu_workflow.measure(REPO, tmp_path, cores=2)
    assert list(tmp_path.iterdir()) == []


def test_the_section_is_registered_on_request():
    assert "gpu_workflow" in run.SECTIONS and "gpu_workflow" in run.ON_REQUEST
    assert run.TITLES["gpu_workflow"].endswith("Published sizes on a GPU")
    args = run.parse_args(["--only", "gpu_workflow", "--gpu-workflow-cpu-smoke",
                           "--gpu-workflow-cores", "3", "--gpu-workflow-steps", "5"])
    assert args.gpu_workflow_cpu_smoke and (args.gpu_workflow_cores,
                                            args.gpu_workflow_steps) == (3, 5)
    # The smoke is no measurement: it may not land in the repository's measurements.
    with pytest.raises(SystemExit, match="no measurement"):
        run.measure_section("gpu_workflow", args)


def test_script_devices_read_from_the_scripts():
    devices = {row["script"]: row for row in gpu_workflow.script_devices(REPO)}
    for name in ("train_translator", "train_scorer", "train_autoencoder", "train_dae"):
        assert devices[name]["device"] == "GPU"
    for name in ("reconstruct", "patch_calibration", "anomaly_maps"):
        assert devices[name]["device"] == "GPU where visible"
    assert devices["preprocess"]["device"] == devices["evaluate"]["device"] == "CPU"
    assert devices["evaluate"]["how"] == "no torch device"


def _synthetic_data() -> dict:
    stage = {"seconds": 9.0, "process_s": 14.0, "peak_rss_mb": 3000.0, "device": "cuda",
             "gpu_peak_allocated_mib": 900.0}
    return {
        "smoke": False, "run_dir": "/tmp/gpu/gpu_workflow", "command": "snakemake ...",
        "wall_s": 540.0, "cores": 16, "threads": gpu_workflow.thread_plan(16),
        "gpu_slots": 8,
        "device": {"cuda": True, "torch": "2.5", "torch_cuda": "12.4",
                   "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.2, "count": 1},
        "gpu_samples": {"samples": 3, "every_s": 2.0, "peak_used_mib": 6144.0,
                        "mean_utilisation": 71.0, "busy_fraction": 0.9, "timeline": []},
        "counts": {d: {"train": 4, "val": 2, "test": 10} for d in gpu_workflow.DATASETS},
        "methods": ["arepas", "residual"],
        "translator": {d: {"epochs": 100, "max_steps": 2000} for d in gpu_workflow.DATASETS},
        "estimate": {"total_minutes": 5.8},
        "records": [
            {"rule": "train_translator", "dataset": "lung_ct", "job": "", "s": 300.0,
             "cpu_time": 310.0, "max_rss": 2100.0, "start": 0.0, "end": 300.0},
            {"rule": "reconstruct", "dataset": "lung_ct", "job": "lung001", "s": 6.0,
             "cpu_time": 5.0, "max_rss": 1500.0, "start": 300.0, "end": 306.0},
        ],
        "training": [{"dataset": "lung_ct", "network": "translator", "steps": 2000,
                      "epochs": 10, "train_s": 290.0, "s_per_step": 0.145}],
        "training_devices": {"train_translator/lung_ct": "cuda"},
        "script_devices": gpu_workflow.script_devices(REPO),
        "rule_gpu_memory_recorded": False,
        "summary": [
            {"dataset": "lung_ct", "method": "arepas", "best_dice": 0.61, "dice_val_thr": 0.52,
             "auprc": 0.6, "auroc": 0.95, "flag": ""},
            {"dataset": "lung_ct", "method": "residual", "best_dice": 0.58, "dice_val_thr": 0.5,
             "auprc": 0.55, "auroc": 0.94, "flag": ""},
        ],
        "relative_change": [
            {"dataset": "lung_ct", "method": "arepas", "threshold_kind": "best",
             "best_other": "residual", "own_dice": 0.61, "other_dice": 0.58,
             "relative_change": 0.0517, "ci_low": 0.01, "ci_high": 0.09, "n_subjects": 10,
             "n_resamples": 2000},
        ],
        "edge_reliance": [
            {"dataset": "lung_ct", "l1_own_edges": 0.1, "l1_other_edges": 0.25,
             "l1_mean_image": 0.2, "l1_roi_mean": 0.3, "own_over_other": 0.4,
             "own_over_mean_image": 0.5, "pearson_own": 0.9, "registered": False},
        ],
        "large_subject": {
            "shape": [512, 512, 256], "threads": 1,
            "preprocess": {**stage, "device": "cpu", "gpu_peak_allocated_mib": None,
                           "parts": {"preprocess_subject": 20.0}},
            "reconstruct": {**stage, "seconds": 2.0, "parts": {"load": 0.5, "translate": 1.5}},
            "maps": {**stage, "parts": {"patch scores": 1.0, "save native": 8.0}},
            "inference_s": 11.0, "inference_process_s": 28.0,
        },
    }


def test_render_writes_the_quality_edge_and_rule_tables():
    text = gpu_workflow.render(_synthetic_data())
    assert "NVIDIA H100 80GB HBM3" in text and "`max_steps` (lung_ct 2000, brain_t1 2000" in text
    assert "| lung_ct | arepas | 0.610 | 0.520 |" in text
    assert "| lung_ct | arepas | val threshold |" not in text
    assert "| lung_ct | arepas | best | GPU run | 0.610 vs 0.580 (residual) | +5.2% |" in text
    assert "| lung_ct | 1 | 0.100 |" in text  # edge reliance
    assert "| train_translator | lung_ct | 1 | 300.0 |" in text
    assert "| reconstruct | lung_ct | 1 | 6.0 |" in text and "GPU where visible" in text
    assert "| lung_ct | translator | 2000 | 10 | 290.0 | 145 |" in text
    assert "6.0 GiB" in text and "record no GPU memory of their own" in text
    # Over the 5 s target: where the time goes, largest part first.
    assert "over the 5 s target" in text
    assert "Where the time goes (the largest parts): maps: save native 8.0 s" in text
    assert "CPU smoke" not in text


def test_render_marks_a_cpu_smoke():
    data = _synthetic_data() | {"smoke": True, "gpu_slots": None, "gpu_samples": None,
                                "device": {"cuda": False, "torch": "2.5", "torch_cuda": None}}
    text = gpu_workflow.render(data)
    assert text.startswith("**CPU smoke") and "GPU memory was not sampled" in text


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("AREPAS_GPU_WORKFLOW_SMOKE") != "1",
                    reason="minutes on two cores: set AREPAS_GPU_WORKFLOW_SMOKE=1 to run the "
                    "section's CPU smoke")
def test_the_cpu_smoke_runs_the_whole_section(tmp_path):
    data = gpu_workflow.measure(REPO, tmp_path, cores=2, smoke=True)
    assert data["smoke"] and {r["dataset"] for r in data["summary"]} == set(
        gpu_workflow.DATASETS)
    assert {r["rule"] for r in data["records"]} >= {"train_translator", "reconstruct",
                                                     "anomaly_maps", "patch_calibration"}
    assert all(r["steps"] == 1 for r in data["training"] if r["network"] == "translator")
    assert data["relative_change"] and data["edge_reliance"]
    large = data["large_subject"]
    assert large["shape"] == list(gpu_workflow.SMOKE_INFERENCE_SHAPE)
    assert large["reconstruct"]["slices"] > 0 and large["inference_s"] > 0
    text = gpu_workflow.render(data)
    assert text.startswith("**CPU smoke") and "### A 128 × 128 × 64 CT subject" in text

"""Training jobs use the GPU they asked for, or stop saying why; the networks run the same code on
CPU and GPU. The GPU tests run only where torch sees a GPU."""

import platform
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from arepas.autoencoder import (
    AutoencoderSettings,
    load_autoencoder,
    reconstruct_autoencoder,
    save_autoencoder,
    train_autoencoder,
)
from arepas.devices import NoGPUError, job_training_device, training_device
from arepas.scorer import (
    ScorerSettings,
    dense_patch_scores_batch,
    load_scorer,
    mine_hard_pairs,
    patch_scores_at,
    save_scorer,
    train_scorer,
)

REPO = Path(__file__).resolve().parents[1]
JOB = "dataset lung_ct, log logs/lung_ct/train_scorer.log"


def device(gpus=1, allow=False, cuda=False, environ=None, nvidia=()):
    return training_device(
        "train_scorer", JOB, gpus, allow, cuda, dict(environ or {}), list(nvidia)
    )


def test_a_visible_gpu_is_used():
    assert device(cuda=True) == "cuda"
    assert device(cuda=True, environ={"SLURM_JOB_ID": "7"}, allow=True) == "cuda"


def test_a_machine_without_gpus_trains_on_the_cpu():
    # The local demo and CI: the rules ask for gpu=1, only to serialise GPU jobs on a GPU machine.
    assert device() == "cpu"
    assert device(environ={"CUDA_VISIBLE_DEVICES": ""}) == "cpu"
    assert device(environ={"CUDA_VISIBLE_DEVICES": "-1"}, nvidia=["/dev/nvidia0"]) == "cpu"


def test_a_slurm_job_that_asked_for_a_gpu_and_sees_none_stops(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(NoGPUError) as error:
        device(environ={"SLURM_JOB_ID": "4711"})
    message = str(error.value)
    # The job, where it runs, what is wrong, and each way out.
    for part in (
        "job train_scorer (dataset lung_ct, log logs/lung_ct/train_scorer.log)",
        "resources gpu=1",
        "SLURM job 4711",
        "has no CUDA support",
        "allow_cpu_training: true",
        "--set-resources train_scorer:gpu=0",
    ):
        assert part in message


def test_the_message_tells_a_cuda_build_from_a_cpu_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(NoGPUError, match=r"\(CUDA 12.4\) finds no usable device.*sbatch --gpus"):
        device(environ={"SLURM_JOB_ID": "1"})


@pytest.mark.parametrize(
    "environ, nvidia, where",
    [
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, [], "CUDA_VISIBLE_DEVICES=0,1 lists GPUs"),
        ({}, ["/dev/nvidia0"], r"this machine has NVIDIA GPUs \(/dev/nvidia0\)"),
    ],
)
def test_gpus_on_the_machine_that_torch_cannot_use_stop_a_local_job(environ, nvidia, where):
    with pytest.raises(NoGPUError, match=where):
        device(environ=environ, nvidia=nvidia)


def test_cpu_training_on_purpose():
    slurm = {"SLURM_JOB_ID": "4711", "CUDA_VISIBLE_DEVICES": "0"}
    assert device(environ=slurm, allow=True) == "cpu"
    # A rule given gpu=0 (--set-resources, as on the CI's GPU-less SLURM node) asked for none.
    assert device(environ=slurm, gpus=0) == "cpu"


def fake_job(config, gpu=1):
    """The parts of a Snakemake script's `snakemake` object that the check reads."""
    return SimpleNamespace(
        rule="train_autoencoder",
        wildcards={"dataset": "brain_t1"},
        log=["logs/brain_t1/train_autoencoder.log"],
        resources=SimpleNamespace(gpu=gpu, _cores=1),
        config=config,
    )


def test_a_training_script_job_reads_its_gpu_resource_and_the_config(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    with pytest.raises(NoGPUError, match=r"job train_autoencoder \(dataset brain_t1, log logs/"):
        job_training_device(fake_job({}))
    assert job_training_device(fake_job({"allow_cpu_training": True})) == "cpu"
    assert job_training_device(fake_job({}, gpu=0)) == "cpu"
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert job_training_device(fake_job({})) == "cpu"


def test_the_config_schema_documents_the_switch():
    from snakemake.utils import validate

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    entry = schema["properties"]["allow_cpu_training"]
    assert entry["type"] == "boolean" and entry["default"] is False
    assert "SLURM_JOB_ID" in entry["description"]
    dataset = {"modality": "ct", "spacing": [1, 1, 1], "slice_size": 64, "intensity": {}}
    config = {"subjects": "s.tsv", "datasets": {"x": dataset}}
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    assert config["allow_cpu_training"] is False


# ------------------------------------------------------------------------------------------------
# the networks on a GPU

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")


def _slices(seed, n, size=32):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2, 2))
    return (0.8 * field / np.abs(field).max(axis=(1, 2), keepdims=True)).astype(np.float32)


@needs_gpu
def test_autoencoder_trains_and_reconstructs_on_the_gpu(tmp_path):
    train, val = _slices(0, 32), _slices(1, 8)
    settings = AutoencoderSettings(base_channels=8, depth=3, latent_channels=4, epochs=4)
    model, history = train_autoencoder(
        train, val, settings, seed=0, progress=lambda _: None, device="cuda"
    )
    assert next(model.parameters()).is_cuda
    assert history["train_l1"].iloc[-1] < history["train_l1"].iloc[0]
    on_gpu = reconstruct_autoencoder(model, val)
    save_autoencoder(tmp_path / "ae.pt", model, settings)
    # The file loads on a machine without a GPU and gives the same reconstructions.
    on_cpu = reconstruct_autoencoder(load_autoencoder(tmp_path / "ae.pt")[0], val)
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)
    cpu_model, cpu_history = train_autoencoder(
        train, val, settings, seed=0, progress=lambda _: None, device="cpu"
    )
    # Same code path, same seed: the curves agree up to floating-point summation order.
    np.testing.assert_allclose(history["train_l1"], cpu_history["train_l1"], rtol=0.05)


@needs_gpu
@pytest.mark.parametrize("architecture", ["reference", "unpadded"])
def test_scorer_trains_and_scores_on_the_gpu(tmp_path, architecture):
    rng = np.random.default_rng(0)
    real = _slices(2, 20, 48)
    recon = np.clip(real + rng.normal(0, 0.1, real.shape), -1, 1).astype(np.float32)
    settings = ScorerSettings(
        slice_step=1, epochs=2, batch_size=128, architecture=architecture, patch_size=16
    )
    pairs = mine_hard_pairs(real, recon, settings, rng)
    model, history = train_scorer(
        pairs["patches_a"],
        pairs["patches_b"],
        pairs["labels"],
        settings,
        seed=0,
        progress=lambda _: None,
        device="cuda",
    )
    assert next(model.parameters()).is_cuda and len(history)
    save_scorer(tmp_path / "scorer.pt", model, settings)
    on_gpu, _, _ = load_scorer(tmp_path / "scorer.pt", device="cuda")
    on_cpu, _, _ = load_scorer(tmp_path / "scorer.pt")
    assert next(on_gpu.parameters()).is_cuda and not next(on_cpu.parameters()).is_cuda
    positions = np.array([[0, 0], [5, 7], [32, 32], [10, 30]])
    np.testing.assert_allclose(
        patch_scores_at(on_gpu, real[0], recon[0], positions),
        patch_scores_at(on_cpu, real[0], recon[0], positions),
        atol=1e-4,
    )
    np.testing.assert_allclose(
        dense_patch_scores_batch(on_gpu, real[:2], recon[:2], stride=4),
        dense_patch_scores_batch(on_cpu, real[:2], recon[:2], stride=4),
        atol=1e-4,
    )


@needs_gpu
def test_denoising_autoencoder_trains_and_restores_on_the_gpu(tmp_path):
    from arepas.dae import DaeSettings, load_dae, restore, save_dae, train_dae

    train, val = _slices(3, 32), _slices(4, 8)
    roi = np.ones(train.shape, bool)
    settings = DaeSettings(base_channels=8, depth=2, batch_size=8, noise_resolution=8, epochs=3)
    runs = {
        device: train_dae(train, roi, val, roi[:8], settings, seed=0, progress=lambda _: None,
                          device=device)
        for device in ("cuda", "cpu")
    }
    model, history = runs["cuda"]
    assert history["train_mse"].iloc[-1] < history["train_mse"].iloc[0]
    # Same code path, same seed and noise: the curves agree up to summation order.
    np.testing.assert_allclose(history["train_mse"], runs["cpu"][1]["train_mse"], rtol=0.05)
    on_gpu = restore(model, val, device="cuda")
    save_dae(tmp_path / "dae.pt", model, settings)
    on_cpu = restore(load_dae(tmp_path / "dae.pt")[0], val)
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)


_FAULTS_PER_REUSE = """
import resource, sys
import numpy as np
from arepas import devices
if sys.argv[1] == "keep":
    assert devices.keep_freed_memory_for_reuse()
np.ones(1 << 18).sum()  # 2 MB, allocated and freed once before counting
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    np.ones(1 << 18).sum()  # the same 2 MB buffer, as a training step's activations
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_buffers_are_reused_without_faulting_their_pages_in_again():
    import subprocess
    import sys

    def faults(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _FAULTS_PER_REUSE, mode],
            capture_output=True, text=True, check=True, cwd=REPO,
        )
        return int(done.stdout.strip().splitlines()[-1])

    default, kept = faults("default"), faults("keep")
    # With glibc's defaults the freed buffer goes back to the kernel (a mapping of its own, or
    # a trimmed heap top) and its pages fault in again at each reuse (about 500 faults here).
    assert kept < 20 <= default, (default, kept)

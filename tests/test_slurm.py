"""The workflow on a real one-node SLURM cluster: `snakemake --profile slurm` submits every job
with sbatch, and the results equal those of a local run.

The cluster is Debian's slurm-wlm with accounting (slurmdbd on MariaDB), started by
.ci/slurm/start.sh and stopped again afterwards. It needs root and apt; elsewhere the test is
skipped, except in CI (CI=true), where it must run."""

import copy
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
import yte
from test_incremental import (
    REPO,
    SNAKEMAKE,
    TINY,
    checkpoint_epoch,
    lung_sheet,
    make_workdir,
    planned_jobs,
    shared_tiny_run,
    snakemake_env,
    write_override,
)

pytestmark = pytest.mark.slow

# The methods of the SLURM run: the reference method and the plain residual.
METHODS = ("arepas", "residual")

TRAINING_RULES = (
    "train_translator",
    "train_scorer",
    "train_autoencoder",
    "train_dae",
    "train_translator_v0",
    "train_scorer_v0",
)


def test_profile_slurm_is_found_from_the_repository_root_and_keeps_gpu_jobs_parallel(monkeypatch):
    from snakemake.cli import parse_args

    # Snakemake resolves `--profile slurm` against the current folder and always adds the
    # workflow profile profiles/default, whose keys win: it may set nothing but the GPU cap.
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    _, args = parse_args(["--profile", "slurm", "-n"])
    assert args.executor == "slurm" and args.jobs >= 1 and args.retries >= 1
    assert args.rerun_incomplete and args.latency_wait >= 5
    assert {"runtime", "mem_mb", "cpus_per_task"} <= set(args.default_resources)
    for rule in TRAINING_RULES:
        # Memory and time come from the rules; gpu=1 too.
        assert set(args.set_resources[rule]) == {"tasks_per_gpu"}
    # GPU training jobs get CPUs to feed the GPU; everything else keeps the rules' threads.
    assert {rule: t.value for rule, t in args.set_threads.items()} == dict.fromkeys(
        TRAINING_RULES, 8
    )
    assert {name: r.value for name, r in args.resources.items()} == {"gpu": 1}
    with open(REPO / "profiles/default/config.yaml") as stream:
        assert set(yte.process_yaml(stream, require_use_yte=True)) == {"resources"}
    # No GPU: training jobs run on the CPUs, not one at a time, with the rules' one thread.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    _, args = parse_args(["-n"])
    assert args.resources["gpu"].value > 2
    assert not args.set_threads
    # The cap counts per machine: under SLURM, Snakemake does not serialise GPU jobs.
    common = (REPO / "workflow/rules/common.smk").read_text()
    assert re.search(r'resource_scopes:\s*gpu="local"', common)


def reason_to_skip() -> str | None:
    if os.geteuid() != 0:
        return "starting SLURM daemons needs root"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it"
    return None


def stop(process: subprocess.Popen) -> None:
    """End a `snakemake` process that is still running: politely, then by force."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    reason = reason_to_skip()
    if reason and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the SLURM test must run in CI, but {reason}")
    if reason:
        pytest.skip(reason)
    # This session's record of the daemons it started: stop.sh ends those and no others.
    env = {**os.environ, "AREPAS_SLURM_STATE": str(tmp_path_factory.mktemp("slurm_state"))}
    start = subprocess.run(
        ["bash", str(REPO / ".ci/slurm/start.sh")], env=env, capture_output=True, text=True
    )
    try:
        assert start.returncode == 0, f"SLURM did not start:\n{start.stdout}\n{start.stderr}"
        yield
    finally:
        subprocess.run(["bash", str(REPO / ".ci/slurm/stop.sh")], env=env, check=False)


def write_test_profile(workdir: Path) -> None:
    """The shipped profile, with what this one CPU node needs: no GPUs, little memory."""
    profile = yaml.safe_load((REPO / "slurm/config.yaml").read_text())
    profile = copy.deepcopy(profile)  # the training rules share one mapping through an anchor
    for rule in TRAINING_RULES:
        profile["set-resources"][rule] = {**profile["set-resources"][rule], "gpu": 0}
        profile["set-resources"][rule]["mem_mb"] = 1500
        profile["set-threads"][rule] = 1
    profile["default-resources"]["mem_mb"] = 1000
    # Status checks start sooner, and sacct's view of each job stays available in its log.
    profile["slurm-init-seconds-before-status-checks"] = 2
    profile["slurm-keep-successful-logs"] = True
    profile["latency-wait"] = 5
    (workdir / "slurm").mkdir()
    (workdir / "slurm/config.yaml").write_text(yaml.safe_dump(profile))


# Seconds the SLURM run may take. It runs in the background while the rest of the suite runs,
# so it shares the machine's cores with the other tests.
SLURM_RUN_LIMIT_S = 1800


@pytest.fixture(scope="session")
def slurm_started(slurm_cluster, tmp_path_factory):
    """The SLURM run, started as soon as the local tiny run it is compared with has finished:
    it spends most of its minutes waiting for sbatch and status checks, so the rest of the suite
    runs meanwhile (tests/conftest.py orders the tests that start and read it)."""
    tiny_run = shared_tiny_run(tmp_path_factory)
    workdir = make_workdir(tmp_path_factory.mktemp("slurm_run"))
    write_test_profile(workdir)
    # Lung train, val and test scans and two methods: every kind of job (preprocessing, training,
    # maps, evaluation, figures) in few jobs, since each one pays for sbatch and status checks.
    config = lung_sheet(tiny_run, workdir, splits=("train", "val", "test"))
    methods = write_override(workdir / "methods.yaml", f"methods: {list(METHODS)}\n")
    started = datetime.now() - timedelta(minutes=1)
    log_path = workdir / "snakemake.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*SNAKEMAKE, "--profile", "slurm", "--configfile", TINY, str(config), str(methods)],
            cwd=workdir, env=snakemake_env(), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        yield tiny_run, workdir, process, started, time.monotonic(), log_path
    finally:
        stop(process)  # if the session ended early: no job may outlive it


@pytest.fixture(scope="session")
def slurm_run(slurm_started):
    tiny_run, workdir, process, started, clock, log_path = slurm_started
    try:
        process.wait(timeout=max(1.0, SLURM_RUN_LIMIT_S - (time.monotonic() - clock)))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the SLURM run took more than {SLURM_RUN_LIMIT_S} s; log: {log_path}")
    log = log_path.read_text()
    assert process.returncode == 0, f"SLURM run failed:\n{log[-6000:]}"
    print(f"tiny lung workflow through SLURM: {(time.monotonic() - clock) / 60:.1f} min")
    return tiny_run, workdir, log, started


def test_slurm_run_starts(slurm_started):
    # Started first and left running; the tests of its results come last.
    process = slurm_started[2]
    assert process.poll() in (None, 0), slurm_started[-1].read_text()[-6000:]


def sacct_jobs(run_id: str, since: datetime) -> pd.DataFrame:
    listing = subprocess.run(
        ["sacct", "-n", "-X", "-P", "--name", run_id, "-S", since.strftime("%Y-%m-%dT%H:%M:%S"),
         "-o", "JobID,State,Comment"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = [line.split("|", 2) for line in listing.splitlines() if line]
    return pd.DataFrame(rows, columns=["job_id", "state", "comment"])


def test_every_job_went_through_sbatch(slurm_run):
    _, workdir, log, started = slurm_run
    assert "Using profiles slurm and workflow specific profile profiles/default" in log
    run_id = next(line.split(":", 1)[1].strip() for line in log.splitlines()
                  if line.startswith("SLURM run ID:"))
    jobs = sacct_jobs(run_id, started)
    assert (jobs["state"] == "COMPLETED").all(), jobs
    # The executor names each job's rule in its comment: rule_<name>[_wildcards_<values>].
    rules = jobs["comment"].str.extract(r"^rule_(.+?)(?:_wildcards_.*)?$")[0]
    planned = planned_jobs(log)
    # Jobs of seconds on small tables run in the main process (localrules), not through sbatch.
    local = {"all", "summary_table", "dataset_figures", "scorer_figure"}
    submitted = {name: count for name, count in planned.items() if name not in local}
    assert rules.value_counts().to_dict() == submitted
    assert {"train_translator", "train_scorer", "anomaly_maps", "evaluate"} <= set(submitted)
    # sbatch wrote one log per job, named by its SLURM job id.
    logs = {p.stem for p in (workdir / ".snakemake/slurm_logs").rglob("*.log")}
    assert set(jobs["job_id"]) <= logs


def test_results_equal_a_local_runs(slurm_run):
    tiny_run, workdir, _, _ = slurm_run
    rel = "results/lung_ct/metrics/per_subject.tsv"
    # As text: the rows must be written identically, not only parse to equal numbers.
    local = pd.read_csv(tiny_run / rel, sep="\t", dtype=str, keep_default_na=False)
    local = local[local["method"].str.split("+").str[0].isin(METHODS)].reset_index(drop=True)
    remote = pd.read_csv(workdir / rel, sep="\t", dtype=str, keep_default_na=False)
    assert len(remote) > 0
    pd.testing.assert_frame_equal(remote, local, check_exact=True)
    maps = [
        path
        for method in METHODS
        for path in sorted((workdir / f"results/lung_ct/maps/{method}").glob("*_native.nii.gz"))
    ]
    assert len(maps) == 2 * len(METHODS)  # the val and the test scan
    for path in maps:
        rel = path.relative_to(workdir)
        remote = np.asarray(nib.load(path).dataobj)
        local = np.asarray(nib.load(tiny_run / rel).dataobj)
        assert np.array_equal(local, remote), f"{rel} differs between SLURM and local runs"


# Translator epochs for the cancelled job: long enough (about a minute) to be cancelled mid-way.
SCANCEL_EPOCHS = 40
# Seconds from `scancel` to the end of the run: status checks, resubmission, the rest of training.
SCANCEL_LIMIT_S = 300


def run_id_of(log_path: Path) -> str | None:
    found = re.search(r"^SLURM run ID: (\S+)", log_path.read_text(), re.MULTILINE)
    return found.group(1) if found else None


def running_job(run_id: str, rule: str) -> str | None:
    """The SLURM id of a running job of `rule` in the run `run_id`, if there is one."""
    listing = subprocess.run(
        ["squeue", "-h", "--name", run_id, "-t", "RUNNING", "-o", "%i|%k"],
        capture_output=True, text=True, check=True,
    ).stdout
    jobs = [line.split("|", 1) for line in listing.splitlines() if "|" in line]
    return next((job for job, comment in jobs if comment.startswith(f"rule_{rule}")), None)


def test_a_training_job_cancelled_with_scancel_is_retried_and_resumes(
    slurm_cluster, tmp_path_factory
):
    """sacct calls a job ended by `scancel` `CANCELLED by <uid>`, which the plugin (2.6.1 to 2.8.0)
    compares with `CANCELLED` exactly and so takes for a running job: with its default status
    command the run waits forever. The profile's `slurm-status-command: squeue` sees `CANCELLED`:
    the job fails with a message naming it, is submitted again and resumes from its checkpoint."""
    tiny_run = shared_tiny_run(tmp_path_factory)
    workdir = make_workdir(tmp_path_factory.mktemp("slurm_scancel"))
    write_test_profile(workdir)
    longer = write_override(
        workdir / "longer.yaml",
        f"datasets: {{lung_ct: {{translator: {{epochs: {SCANCEL_EPOCHS}}}}}}}\n",
    )
    configs = [TINY, str(lung_sheet(tiny_run, workdir)), str(longer)]
    # Only the translator and what it needs.
    target = "results/lung_ct/models/translator.pt"
    started = datetime.now() - timedelta(minutes=1)
    log_path = workdir / "snakemake.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*SNAKEMAKE, target, "--profile", "slurm", "--configfile", *configs],
            cwd=workdir, env=snakemake_env(), stdout=log, stderr=subprocess.STDOUT,
        )
    run_id = None
    try:
        deadline = time.monotonic() + 600
        job = None
        # Cancel the training job once it is RUNNING and has checkpointed two epochs.
        while job is None or checkpoint_epoch(workdir, "lung_ct")[1] < 2:
            assert process.poll() is None, (
                f"the run ended before the job could be cancelled:\n{log_path.read_text()[-4000:]}"
            )
            assert time.monotonic() < deadline, "no translator checkpoint within 600 s"
            run_id = run_id or run_id_of(log_path)
            job = job or (run_id and running_job(run_id, "train_translator"))
            time.sleep(0.5)
        subprocess.run(["scancel", job], check=True)
        cancelled = time.monotonic()
        try:
            process.wait(timeout=SCANCEL_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the run did not end within {SCANCEL_LIMIT_S} s of `scancel {job}`:\n"
                f"{log_path.read_text()[-4000:]}"
            )
        ended_after = time.monotonic() - cancelled
    finally:
        stop(process)
        if run_id:  # no job of this run may outlive the test
            subprocess.run(["scancel", "--name", run_id], check=False)
    log = log_path.read_text()
    assert process.returncode == 0, log[-4000:]
    assert f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in log
    jobs = sacct_jobs(run_id, started)
    training = jobs[jobs["comment"].str.startswith("rule_train_translator")]
    states = dict(zip(training["job_id"], training["state"], strict=True))
    print(f"scancel {job}: run ended {ended_after:.0f} s later; sacct: {states}")
    # The cancelled job, then its retry.
    assert re.fullmatch(r"CANCELLED( by \d+)?", states.pop(job)), jobs
    assert list(states.values()) == ["COMPLETED"], jobs
    trained_log = (workdir / "logs/lung_ct/train_translator.log").read_text()
    resumed = re.search(r"translator: resuming from \S+ after epoch (\d+)", trained_log)
    assert resumed, trained_log[-2000:]
    killed_at = int(resumed.group(1))
    assert 2 <= killed_at < SCANCEL_EPOCHS, "the job was not cancelled mid-training"
    epochs = re.findall(rf"translator: epoch (\d+)/{SCANCEL_EPOCHS} ", trained_log)
    trained = [int(n) for n in epochs]
    assert trained == list(range(killed_at + 1, SCANCEL_EPOCHS + 1))
    history = pd.read_csv(workdir / "results/lung_ct/models/translator_history.tsv", sep="\t")
    assert history["epoch"].tolist() == list(range(1, SCANCEL_EPOCHS + 1))


def test_a_gpu_training_job_gets_an_sbatch_line_that_fits_a_gpu_partition():
    """The SLURM plugin's own command builder, given a training job's resources as the workflow
    plans them under the shipped profile (a dry run) and the profile's threads: one GPU, the
    rule's memory and time, CPUs to feed the GPU, and no --ntasks-per-gpu."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--nolock", "--profile", "slurm",
         "--configfile", "config/published_smoke.yaml"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    block = output.split("rule train_translator:", 1)[1].split("\n\n", 1)[0]
    listed = re.search(r"resources: (.*)", block).group(1)
    values = {}
    for item in listed.split(", "):
        key, _, value = item.partition("=")
        if value.isdigit():
            values[key] = int(value)
        elif value and "<" not in value:
            values[key] = value

    class Resources(dict):
        __getattr__ = dict.__getitem__

    profile = yaml.safe_load((REPO / "slurm/config.yaml").read_text())
    threads = profile["set-threads"]["train_translator"]
    # The profile's default `cpus_per_task: threads`, with the profile's threads.
    values["cpus_per_task"] = threads
    job = SimpleNamespace(resources=Resources(values), threads=threads)
    params = {"run_uuid": "run", "slurm_logfile": "job.log", "comment_str": "rule_train_translator",
              "account": "", "partition": "", "workdir": str(REPO)}
    call = get_submit_command(job, params) + set_gres_string(job)
    assert "--gpus=1" in call
    assert f"--mem {values['mem_mb']}" in call and values["mem_mb"] >= 1000
    assert f"-t {values['runtime']}" in call and 10 <= values["runtime"] <= 1440
    assert f"--cpus-per-task={threads}" in call
    assert "--ntasks-per-gpu" not in call

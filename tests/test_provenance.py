"""Code-aware reruns: a rule's parameters carry a digest of the library code its script runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_incremental import TINY, planned_jobs, run_snakemake, shared_tiny_run

from arepas import provenance

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"


def test_each_script_reaches_the_modules_it_runs_and_no_others():
    figure = provenance.modules_reached(SCRIPTS / "subject_figure.py", REPO)
    assert "arepas.figures" in figure and "arepas.translator" not in figure
    training = provenance.modules_reached(SCRIPTS / "train_translator.py", REPO)
    assert "arepas.translator" in training and "arepas.figures" not in training
    # Preprocessing comes before training: translator code does not reach it.
    preprocess = provenance.modules_reached(SCRIPTS / "preprocess.py", REPO)
    assert "arepas.preprocessing" in preprocess and "arepas.translator" not in preprocess


def copy_package(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "arepas", root / "arepas", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(SCRIPTS, root / "workflow" / "scripts")
    return root


def digest(root: Path, script: str) -> str:
    provenance.code_digest.cache_clear()
    return provenance.code_digest(root / "workflow" / "scripts" / script, root)


def test_comments_and_docstrings_change_nothing_code_does(tmp_path):
    root = copy_package(tmp_path)
    before = digest(root, "train_translator.py")
    module = root / "arepas" / "translator" / "settings.py"
    source = module.read_text()
    module.write_text('"""Another docstring."""\n# a comment\n' + source.split('"""', 2)[2])
    assert digest(root, "train_translator.py") == before
    module.write_text(source.replace("real_label: float = 0.9", "real_label: float = 0.8"))
    assert digest(root, "train_translator.py") != before
    # A module the script does not reach changes nothing.
    module.write_text(source)
    figures = root / "arepas" / "figures.py"
    figures.write_text(figures.read_text() + "\nEXTRA = 1\n")
    assert digest(root, "train_translator.py") == before
    assert digest(root, "subject_figure.py") != digest(copy_package(tmp_path / "b"),
                                                       "subject_figure.py")


def test_a_rule_reaches_the_modules_of_the_split_model_packages(tmp_path):
    """The scorer and the translator are packages: a script that imports the package reaches
    every module in it, and a change in one of them reruns the rules that run it, no other."""
    training = provenance.modules_reached(SCRIPTS / "train_translator.py", REPO)
    for job in ("settings", "network", "pairs", "training", "inference", "files"):
        assert f"arepas.translator.{job}" in training
    maps = provenance.modules_reached(SCRIPTS / "anomaly_maps.py", REPO)
    assert "arepas.scorer.inference" in maps
    root = copy_package(tmp_path)
    scripts = ("train_translator.py", "anomaly_maps.py", "subject_figure.py",
               "dataset_figures.py")
    before = {script: digest(root, script) for script in scripts}
    module = root / "arepas" / "translator" / "training.py"
    module.write_text(module.read_text() + "\nEXTRA = 1\n")
    assert digest(root, "train_translator.py") != before["train_translator.py"]
    for script in ("subject_figure.py", "dataset_figures.py"):
        assert digest(root, script) == before[script]
    module = root / "arepas" / "scorer" / "inference.py"
    module.write_text(module.read_text() + "\nEXTRA = 1\n")
    assert digest(root, "anomaly_maps.py") != before["anomaly_maps.py"]
    for script in ("subject_figure.py", "dataset_figures.py"):
        assert digest(root, script) == before[script]


def test_every_script_digest_is_the_same_in_every_process():
    """Set literals compile to frozensets whose order follows the per-process string hash; a
    digest that followed it would rerun rules on every invocation."""
    program = (
        "import sys; from pathlib import Path; from arepas import provenance; "
        "root = Path(sys.argv[1]); "
        "print(*(provenance.code_digest(p, root) for p in "
        "sorted((root / 'workflow' / 'scripts').glob('*.py'))))"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", program, str(REPO)],
            capture_output=True, text=True, check=True, cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(digests) == 1


@pytest.mark.slow
def test_a_library_change_reruns_the_rules_that_run_it_and_what_follows(tmp_path_factory):
    """In a copy of a finished run with its own copy of the workflow and package: a changed line
    in the translator module plans training and everything after it, a changed figure module
    only the figure rules."""
    finished = shared_tiny_run(tmp_path_factory)
    copy = tmp_path_factory.mktemp("provenance") / "run"
    copy.mkdir()
    for name in ("arepas", "workflow", "config"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "Snakefile", copy / "Snakefile")
    for name in ("results", ".snakemake", "logs", "benchmarks"):
        if (finished / name).exists():
            shutil.copytree(finished / name, copy / name, symlinks=True)

    def planned() -> dict[str, int]:
        result = run_snakemake(copy, "-n", configs=(TINY,))
        return planned_jobs(result.stdout + result.stderr)

    assert planned() == {}
    translator = copy / "arepas" / "translator" / "settings.py"
    source = translator.read_text()
    translator.write_text(source.replace("real_label: float = 0.9", "real_label: float = 0.85"))
    jobs = planned()
    for rule in ("train_translator", "reconstruct", "train_scorer", "anomaly_maps", "evaluate"):
        assert rule in jobs, (rule, jobs)
    for rule in ("preprocess", "make_demo", "train_autoencoder", "train_dae"):
        assert rule not in jobs, (rule, jobs)
    translator.write_text(source)
    assert planned() == {}
    figures = copy / "arepas" / "figures.py"
    figures.write_text(figures.read_text().replace("dpi=", "dpi=1 + ", 1))
    jobs = set(planned()) - {"all"}
    assert jobs and jobs <= {"subject_figure", "dataset_figures", "translator_figure",
                             "scorer_figure", "lesion_masks"}, jobs

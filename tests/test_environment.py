"""The conda environment (envs/arepas.yaml) stays in step with pyproject.toml, and installs the
project in a way that survives Snakemake's copy of the file (`--sdm conda`).

No conda channel is reachable from the test machines, so the environment is never solved here:
these tests check what can be checked without a solver.
"""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
ENV_FILE = REPO / "envs" / "arepas.yaml"

# PyPI names whose conda-forge package is named otherwise.
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
# What the environment adds for itself, beyond the project's dependencies.
ENV_ONLY = {"python", "pip"}


def pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    return {r.name.lower(): r for r in requirements}


def conda_spec(text: str) -> tuple[str, SpecifierSet]:
    """A conda-forge match spec of the simple kinds used here ("name", "name=1.2",
    "name>=1,<2", "name==1.2") as a PyPI-style specifier set; conda's "=1.2" means 1.2.*."""
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", text.strip())
    assert match, f"cannot read conda spec {text!r}"
    name, version = match.groups()
    parts = []
    for part in filter(None, (p.strip() for p in version.split(","))):
        if re.fullmatch(r"=[^=].*", part):
            part = f"=={part[1:].removesuffix('*').removesuffix('.')}.*"
        parts.append(part)
    return name.lower(), SpecifierSet(",".join(parts))


def environment() -> dict:
    return yaml.safe_load(ENV_FILE.read_text())


def environment_packages() -> tuple[dict[str, SpecifierSet], dict[str, Requirement]]:
    """(conda packages, pip requirements) of envs/arepas.yaml."""
    conda, pip = {}, {}
    for entry in environment()["dependencies"]:
        if isinstance(entry, dict):
            assert set(entry) == {"pip"}, f"unexpected section {sorted(entry)}"
            for line in entry["pip"]:
                requirement = Requirement(line)
                pip[requirement.name.lower()] = requirement
        else:
            name, spec = conda_spec(entry)
            conda[name] = spec
    return conda, pip


def test_channels_are_conda_forge_only():
    assert environment()["channels"] == ["conda-forge", "nodefaults"]


def test_every_dependency_has_the_same_bounds_in_both_files():
    conda, pip = environment_packages()
    project = pyproject_requirements()
    for name, requirement in project.items():
        conda_name = CONDA_NAMES.get(name, name)
        if conda_name in conda:
            assert name not in pip, f"{name} is both a conda and a pip package in {ENV_FILE.name}"
            assert conda[conda_name] == requirement.specifier, (
                f"{name}: pyproject.toml {requirement.specifier}, "
                f"{ENV_FILE.name} {conda_name}{conda[conda_name]}"
            )
        else:
            assert name in pip, f"{name} (pyproject.toml) is missing from {ENV_FILE.name}"
            assert pip[name].specifier == requirement.specifier, (
                f"{name}: pyproject.toml {requirement.specifier}, pip {pip[name].specifier}"
            )
    # Nothing in the environment that the project does not ask for.
    expected = {CONDA_NAMES.get(n, n) for n in project}
    extra = (set(conda) - ENV_ONLY - expected) | (set(pip) - set(project))
    assert not extra, f"{ENV_FILE.name} installs {sorted(extra)}, which pyproject.toml lacks"


def test_python_pin_lies_inside_requires_python():
    conda, _ = environment_packages()
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    allowed = SpecifierSet(requires)
    pinned = conda["python"]
    # Every patch release the pin admits (3.11.0 to 3.11.99) satisfies requires-python.
    candidates = [Version(f"3.{minor}.{patch}") for minor in range(8, 16) for patch in (0, 9, 99)]
    admitted = [v for v in candidates if v in pinned]
    assert admitted, f"python pin {pinned} admits no version"
    assert all(v in allowed for v in admitted), f"python {pinned} outside {requires}"


def test_conda_spec_reading():
    assert conda_spec("python=3.11") == ("python", SpecifierSet("==3.11.*"))
    assert conda_spec("numpy>=1.26,<2.4") == ("numpy", SpecifierSet(">=1.26,<2.4"))
    assert conda_spec("pip") == ("pip", SpecifierSet())
    assert conda_spec("python=3.11.*") == ("python", SpecifierSet("==3.11.*"))
    assert Version("3.11.7") in conda_spec("python=3.11")[1]
    assert Version("3.12.0") not in conda_spec("python=3.11")[1]


def test_the_environment_installs_nothing_from_a_path():
    # Snakemake builds `--sdm conda` environments from a copy of this file, elsewhere: a relative
    # path (`-e ..`, `.`) would resolve next to the copy. The project is imported from the
    # workflow's folder instead (next test).
    _, pip = environment_packages()
    raw = environment()["dependencies"][-1]["pip"]
    for line in raw:
        assert not re.match(r"(-e|--editable|\.|/|~|file:)", line.strip()), line
    assert "arepas" not in pip


def test_rule_scripts_import_packages_from_the_workflow_folder(tmp_path):
    # What envs/arepas.yaml relies on: a rule script finds a package that sits beside the
    # Snakefile and is installed nowhere, whatever the working folder. Here the package's name is
    # made up, so no installed copy can answer instead.
    workflow = tmp_path / "checkout"
    (workflow / "scripts").mkdir(parents=True)
    (workflow / "probe_pkg").mkdir()
    (workflow / "probe_pkg" / "__init__.py").write_text("WHERE = __file__\n")
    (workflow / "scripts" / "where.py").write_text(
        "import probe_pkg\nopen(snakemake.output[0], 'w').write(probe_pkg.WHERE)\n"
    )
    (workflow / "Snakefile").write_text(
        'rule where:\n    output: "where.txt"\n    script: "scripts/where.py"\n'
    )
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(workflow / "Snakefile"),
            "--directory",
            str(elsewhere),
            "--cores",
            "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    where = Path((elsewhere / "where.txt").read_text())
    assert where.parent.parent == workflow


def test_rules_name_the_environment_file():
    # Every rule that runs a script names the one environment, by a path from its rule file.
    for rules in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = rules.read_text()
        scripts = len(re.findall(r"^\s+script:", text, flags=re.M))
        conda = re.findall(r'^\s+conda:\s*\n\s+"([^"]+)"', text, flags=re.M)
        assert len(conda) >= scripts, f"{rules.name}: a rule with a script has no conda: env"
        for path in conda:
            assert (rules.parent / path).resolve() == ENV_FILE, f"{rules.name}: {path}"


def test_readme_explains_the_cluster_install():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Installing on a cluster", 1)[1].split("\n## ", 1)[0]
    for needed in ("envs/arepas.yaml", "CONDA_OVERRIDE_CUDA", "--sdm conda", "module load"):
        assert needed in section, needed

"""The locks (requirements/cpu.lock, requirements/cuda.lock) stay in step with pyproject.toml, and
the environment the tests run in holds what its lock pins.

Offline and fast: the locks are read as text, the installed packages through importlib.metadata.
requirements/compile.sh regenerates the locks (README, "Installing on a cluster").
"""

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCKS = {"cpu": REPO / "requirements" / "cpu.lock", "cuda": REPO / "requirements" / "cuda.lock"}
EXTRAS = ("dev",)  # the extras that the locks and `make install` include
# The machine the locks are made for (requirements/compile.sh): CPython 3.11 on Linux x86_64.
TARGET = default_environment() | {
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
}
CUDA_ONLY = re.compile(r"nvidia-.*|triton|cuda-.*")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def project_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies, those of the extras the locks include, and [build-system]'s
    requires (the Makefile builds the project with the locked setuptools)."""
    data = pyproject()
    lines = list(data["project"]["dependencies"])
    for extra in EXTRAS:
        lines += data["project"]["optional-dependencies"][extra]
    lines += data["build-system"]["requires"]
    return [Requirement(line) for line in lines]


def input_requirements(variant: str) -> list[Requirement]:
    """What requirements/<variant>.in adds (torch's build, pip, setuptools)."""
    text = (REPO / "requirements" / f"{variant}.in").read_text()
    return [Requirement(line) for line in _lines(text)]


def _lines(text: str) -> list[str]:
    return [s for s in (line.split("#", 1)[0].strip() for line in text.splitlines()) if s]


def read_lock(path: Path) -> dict[str, dict]:
    """{name: {"version", "hashes", "via"}} of a lock written by `uv pip compile`
    (pip-tools writes the same format)."""
    entries: dict[str, dict] = {}
    current = None
    in_via = False
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        if not line[0].isspace() and not line.startswith("#"):
            text = line.removesuffix("\\").strip()
            assert not text.startswith("-"), f"{path.name}: option line {text!r} in the lock"
            requirement = Requirement(text)
            pins = [s for s in requirement.specifier if s.operator == "=="]
            assert len(pins) == 1 and len(requirement.specifier) == 1, (
                f"{path.name}: {requirement.name} is not pinned to one version: {text!r}"
            )
            name = canonicalize_name(requirement.name)
            assert name not in entries, f"{path.name}: {requirement.name} is pinned twice"
            current = entries[name] = {"version": pins[0].version, "hashes": [], "via": []}
            in_via = False
            continue
        assert current is not None or line.startswith("#"), f"{path.name}: {line!r}"
        stripped = line.strip()
        if stripped.startswith("--hash="):
            current["hashes"].append(stripped.removeprefix("--hash=").removesuffix("\\").strip())
        elif stripped.startswith("# via") and current is not None:
            rest = stripped.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current["via"].append(rest)
        elif stripped.startswith("#   ") and in_via and current is not None:
            current["via"].append(stripped.removeprefix("#").strip())
    return entries


@pytest.fixture(scope="module", params=sorted(LOCKS))
def lock(request) -> tuple[str, dict[str, dict]]:
    return request.param, read_lock(LOCKS[request.param])


def test_every_package_is_pinned_with_sha256_hashes(lock):
    variant, entries = lock
    assert len(entries) > 50, f"{variant}.lock holds only {len(entries)} packages"
    for name, entry in entries.items():
        assert entry["hashes"], f"{variant}.lock: {name} has no --hash"
        for digest in entry["hashes"]:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{variant}.lock: {name} {digest}"


def _unsatisfied(variant: str, entries: dict, requirements: list[Requirement], source: str):
    """One line for each requirement that the lock does not satisfy, naming the package."""
    problems = []
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
            continue
        name = canonicalize_name(requirement.name)
        if name not in entries:
            problems.append(f"{requirement.name} ({source}) is missing from the lock")
            continue
        pinned = Version(entries[name]["version"])
        if not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(
                f"{requirement.name}: {source} asks for {requirement.specifier}, the lock pins "
                f"{pinned}"
            )
    assert not problems, (
        f"requirements/{variant}.lock is out of date (run requirements/compile.sh): "
        + "; ".join(problems)
    )


def test_lock_satisfies_pyproject(lock):
    variant, entries = lock
    _unsatisfied(variant, entries, project_requirements(), "pyproject.toml")


def test_lock_satisfies_its_input_file(lock):
    variant, entries = lock
    _unsatisfied(variant, entries, input_requirements(variant), f"requirements/{variant}.in")


def test_lock_holds_nothing_that_pyproject_no_longer_asks_for(lock):
    # The lock names why each package is there; a package there for pyproject.toml or the .in
    # file that neither asks for any more was dropped from them after the lock was made.
    variant, entries = lock
    direct = {canonicalize_name(r.name) for r in project_requirements()}
    inputs = {canonicalize_name(r.name) for r in input_requirements(variant)}
    for name, entry in entries.items():
        assert entry["via"], f"{variant}.lock: {name} says not why it is there"
        if "arepas (pyproject.toml)" in entry["via"]:
            assert name in direct, (
                f"{name} is in requirements/{variant}.lock for pyproject.toml, which no longer "
                "asks for it: run requirements/compile.sh"
            )
        if f"-r requirements/{variant}.in" in entry["via"]:
            assert name in inputs, f"{name}: no longer in requirements/{variant}.in"
        parents = [v for v in entry["via"] if not v.startswith(("-r ", "arepas "))]
        for parent in parents:
            assert canonicalize_name(parent) in entries, (
                f"{variant}.lock: {name} is there for {parent}, which the lock lacks"
            )


def test_the_two_locks_differ_only_in_torch_and_its_cuda_libraries():
    # CI tests the CPU lock; the cluster and the container run the CUDA one: every other package
    # must be the same version in both.
    cpu, cuda = read_lock(LOCKS["cpu"]), read_lock(LOCKS["cuda"])
    assert Version(cpu["torch"]["version"]).local == "cpu", cpu["torch"]["version"]
    assert Version(cuda["torch"]["version"]).local is None, cuda["torch"]["version"]
    assert Version(cpu["torch"]["version"]).public == Version(cuda["torch"]["version"]).public
    assert not [n for n in cpu if CUDA_ONLY.fullmatch(n)], "the CPU lock holds CUDA packages"
    assert any(n.startswith("nvidia-") for n in cuda), "the CUDA lock holds no nvidia-* wheel"
    for name in sorted(set(cpu) | set(cuda)):
        if name == "torch" or CUDA_ONLY.fullmatch(name):
            continue
        assert name in cpu and name in cuda, f"{name} is in one lock only"
        assert cpu[name]["version"] == cuda[name]["version"], (
            f"{name}: cpu.lock {cpu[name]['version']}, cuda.lock {cuda[name]['version']}"
        )


def installed_lock() -> str | None:
    """The lock the running environment was installed from: the one whose torch is installed;
    in the Makefile's venv, the CPU lock if neither's is (`make install` installs $(LOCK), the CPU
    lock unless told otherwise); None for an environment made otherwise (conda)."""
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = None
    for variant, path in LOCKS.items():
        if read_lock(path)["torch"]["version"] == torch:
            return variant
    if Path(sys.prefix).resolve() == (REPO / ".venv").resolve():
        return "cpu"
    return None


def test_the_environment_holds_what_its_lock_pins():
    variant = installed_lock()
    if variant is None:
        pytest.skip("this environment was not installed from a lock (conda, or another torch)")
    wrong = []
    for name, entry in read_lock(LOCKS[variant]).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if installed == "not installed" or Version(installed) != Version(entry["version"]):
            wrong.append(f"{name} {installed} (lock: {entry['version']})")
    assert not wrong, (
        f"the environment differs from requirements/{variant}.lock: {', '.join(wrong)}; "
        "run `make install` (or install the lock again)"
    )


def test_the_installed_packages_need_nothing_outside_the_lock():
    # The locks are installed with --no-deps: every dependency of every installed locked package
    # must itself be in the lock, at a version it accepts (what pip's resolver would have checked).
    variant = installed_lock()
    if variant is None:
        pytest.skip("this environment was not installed from a lock (conda, or another torch)")
    entries = read_lock(LOCKS[variant])
    environment = default_environment() | {"extra": ""}
    for name in entries:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # reported by the test above
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            dependency = canonicalize_name(requirement.name)
            assert dependency in entries, (
                f"{name} needs {requirement}, which requirements/{variant}.lock lacks: "
                "run requirements/compile.sh"
            )
            pinned = Version(entries[dependency]["version"])
            assert requirement.specifier.contains(pinned, prereleases=True), (
                f"{name} needs {requirement}, requirements/{variant}.lock pins {pinned}"
            )


def test_lock_reading():
    entries = read_lock(LOCKS["cpu"])
    assert entries["torch"]["version"].startswith("2.13.0")
    assert "arepas (pyproject.toml)" in entries["snakemake"]["via"]
    assert all(len(e["hashes"]) >= 1 for e in entries.values())


def test_make_install_and_the_container_install_a_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "LOCK ?= requirements/cpu.lock" in makefile
    assert "requirements/install.sh $(VENV) $(LOCK)" in makefile
    script = (REPO / "requirements" / "install.sh").read_text()
    assert '--require-hashes --no-deps "${index[@]}" -r "$lock"' in script
    containerfile = (REPO / "containers" / "Containerfile").read_text()
    assert "ARG LOCK=requirements/cuda.lock" in containerfile
    assert 'requirements/install.sh /opt/venv "$LOCK" --no-project' in containerfile

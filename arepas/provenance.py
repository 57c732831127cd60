"""Which library code a workflow rule runs, as one digest: given to the rule as a parameter, so that
a change to that code reruns the rule (and what depends on it) and changes its cache key, while a
change elsewhere in the package reruns nothing.

The digest covers the rule's script and every `arepas` module it imports, directly or through
other `arepas` modules (imports inside functions included, so it errs towards rerunning). Each
file enters as its compiled code without line numbers, docstrings and asserts: comments,
formatting and documentation do not change what a rule computes, so they do not rerun it."""

from __future__ import annotations

import hashlib
import re
from functools import cache
from pathlib import Path
from types import CodeType

PACKAGE = "arepas"


def _module_path(root: Path, module: str) -> Path | None:
    parts = module.split(".")
    for candidate in (
        root.joinpath(*parts).with_suffix(".py"),
        root.joinpath(*parts, "__init__.py"),
    ):
        if candidate.is_file():
            return candidate
    return None


_FROM_IMPORT = re.compile(
    rf"^[ \t]*from[ \t]+({PACKAGE}(?:\.\w+)*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]+)", re.M
)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([^\n#]+)", re.M)


def imported_modules(source: str) -> set[str]:
    """Names of the package's modules a file imports (`import arepas.x`, `from arepas import
    x`, `from arepas.x import y`), wherever in the file, functions included."""
    found: set[str] = set()
    for module, names in _FROM_IMPORT.findall(source):
        found.add(module)
        # `from arepas import translator` names a module; `from arepas.io import x` does not,
        # and a name that is no module is dropped when no file is found for it.
        for name in names.strip("()").replace("\n", " ").split(","):
            name = name.split(" as ")[0].strip()
            if name:
                found.add(f"{module}.{name}")
    for names in _IMPORT.findall(source):
        for name in names.split(","):
            name = name.split(" as ")[0].strip()
            if name.split(".")[0] == PACKAGE:
                found.add(name)
    return found


def _code_fingerprint(code: CodeType, digest) -> None:
    """What a code object computes, without its line numbers: bytecode, names and constants,
    nested functions and classes included."""
    digest.update(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        if isinstance(const, CodeType):
            _code_fingerprint(const, digest)
        elif isinstance(const, frozenset):
            # `x in {"a", "b"}` compiles to a frozenset, whose order follows the per-process
            # string hash: sorted, the digest is the same in every process.
            digest.update(repr(sorted(map(repr, const))).encode())
        else:
            digest.update(repr(const).encode())


def _reached(script: Path, root: Path) -> dict[str, str]:
    """{label: canonical source} of the script and every package module it reaches; labels are
    paths relative to `root` (the script's own: its file name), so that the digest does not
    depend on where the checkout lies."""
    root = root.resolve()
    pending, seen = [script.resolve()], {}
    while pending:
        path = pending.pop()
        label = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        if label in seen:
            continue
        modules, seen[label] = _parsed(str(path), path.stat().st_mtime_ns)
        for module in modules:
            found = _module_path(root, module)
            if found is not None:
                pending.append(found.resolve())
    return seen


@cache
def _parsed(path: str, mtime_ns: int) -> tuple[list[str], str]:
    """(package modules imported, fingerprint of the compiled code) of one file; each rule's
    digest shares it. Compiled with docstrings and asserts left out (optimize=2): neither
    changes what a rule computes."""
    source = Path(path).read_text()
    digest = hashlib.sha256()
    _code_fingerprint(compile(source, path, "exec", optimize=2), digest)
    return sorted(imported_modules(source)), digest.hexdigest()


@cache
def code_digest(script: str | Path, root: str | Path) -> str:
    """A short digest of `script` and the package modules it reaches; `root` is the folder
    that holds the `arepas` package (the checkout the jobs import it from)."""
    digest = hashlib.sha256()
    for label, source in sorted(_reached(Path(script), Path(root)).items()):
        digest.update(label.encode() + b"\0" + source.encode() + b"\0")
    return digest.hexdigest()[:16]


def modules_reached(script: str | Path, root: str | Path) -> list[str]:
    """The package modules a script reaches, as dotted names (for the docs and the tests)."""
    names = []
    for label in _reached(Path(script), Path(root)):
        if label.endswith(".py") and "/" in label:
            parts = label.removesuffix(".py").split("/")
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)

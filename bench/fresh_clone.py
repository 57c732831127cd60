"""Time `make demo` as a new user runs it: a fresh clone of the repository's HEAD, its virtual
environment set up from nothing, the workflow on the bundled demo cohorts, the report.

    python -m bench.fresh_clone DEST      # then: python -m bench --only speed --demo-run DEST

`make install` runs first and `make demo` after it (which then finds the environment made and
runs the workflow and the report only), so the set-up is timed apart from the rest; the two
together are what `make demo` does on a fresh clone. The times are written to
DEST/make_demo_wall.json, which the speed section and the budget table read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECORD = "make_demo_wall.json"


def timed(command: list[str], cwd: Path, log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        shown = " ".join(command)
        raise RuntimeError(f"{shown} failed in {cwd} (exit {done.returncode}); see {log}")
    return time.perf_counter() - started


def measure(dest: Path, repo: Path = REPO) -> dict:
    if dest.exists():
        raise FileExistsError(f"{dest} exists: the clone must be fresh")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", str(repo), str(dest)], check=True)
    install_s = timed(["make", "install"], dest, dest / "make_install.log")
    demo_s = timed(["make", "demo"], dest, dest / "make_demo.log")
    record = {"commit": commit, "install_s": install_s, "demo_s": demo_s,
              "total_s": install_s + demo_s,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (dest / RECORD).write_text(json.dumps(record, indent=1))
    return record


def read(run_dir: Path) -> dict | None:
    """The fresh-clone times of a run made by this module, or None."""
    path = run_dir / RECORD
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="where the fresh clone goes (must not exist)")
    args = parser.parse_args(argv)
    record = measure(args.dest.resolve())
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

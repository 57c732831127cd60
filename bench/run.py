"""`python -m bench`: measure, keep each section's raw numbers in
bench/measurements/<section>.json, and write BENCHMARKS.md from all of them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from arepas.io import atomic_path
from bench import machine, quality, tables
from bench.quality import TIMED_WHOLE

REPO = Path(__file__).resolve().parents[1]
SECTIONS = (
    "quality",
    "speed",
    "scoring",
    "scaling",
    "gpu",
    "training_memory",
    "heldout",
    "published_sizes",
    "gpu_workflow",
    "parse",
)
# Hours of training: measured only when named in --only.
ON_REQUEST = ("heldout", "gpu_workflow")
# Section numbers do not change when sections leave: README, config and bench text cite them
# ("section 14"). The missing numbers are studies archived in docs/studies.md.
TITLES = {
    "quality": "1. Quality over seeds",
    "speed": "2. Speed per rule and stage",
    "scoring": "3. Patch scoring: dense against the published sampling",
    "scaling": "4. Scaling with the native volume",
    "gpu": "5. GPU",
    "training_memory": "9. Training memory against the number of training subjects",
    "heldout": "14. Held-out confirmation on demo seeds never used in development",
    "published_sizes": "22. Every rule at the published sizes, on the CPU",
    "gpu_workflow": "23. Published sizes on a GPU",
    "parse": "24. Planning a run and parsing a job, against the cohort size",
}
# The code each section measures, as git pathspecs: a section measured before the last change to
# them is shown as stale (tests/test_bench.py checks they cover what its module reaches). Not
# arepas/resources.py: it sets what jobs ask SLURM for (from these sections), not their work.
NOT_MEASURED = ":(exclude)"
WORKFLOW_CODE = ("arepas/", "workflow/", "config/", f"{NOT_MEASURED}arepas/resources.py")
_SCORING_CODE = ("arepas/__init__.py", "arepas/scorer/", "arepas/maps.py",
                 "arepas/methods.py", "arepas/io.py", "arepas/settings.py", "arepas/stacks.py",
                 "arepas/progress.py", "arepas/v0_method.py")
_TRANSLATOR_CODE = ("arepas/__init__.py", "arepas/translator/", "arepas/edges.py",
                    "arepas/io.py", "arepas/settings.py", "arepas/stacks.py",
                    "arepas/progress.py", "arepas/v0_method.py")
MEASURES = {
    "quality": WORKFLOW_CODE,
    "speed": (*WORKFLOW_CODE, "Makefile", "pyproject.toml"),
    "scoring": _SCORING_CODE,
    "scaling": ("arepas/", f"{NOT_MEASURED}arepas/resources.py"),
    "gpu": tuple(dict.fromkeys(_TRANSLATOR_CODE + _SCORING_CODE)),
    "training_memory": tuple(dict.fromkeys(
        _TRANSLATOR_CODE + _SCORING_CODE
        + ("arepas/autoencoder.py", "arepas/dae.py", "arepas/devices.py", "arepas/epochs.py",
           "arepas/mining.py")
    )),
    "heldout": WORKFLOW_CODE,
    "published_sizes": WORKFLOW_CODE,
    "gpu_workflow": WORKFLOW_CODE,
    "parse": WORKFLOW_CODE,
}
# The published slice size, 256 x 256 (Mitic & Langs, arXiv 2509.12905).
PUBLISHED_SLICE = 256
# Translator settings the trade-off paragraph names as sizes; any other key is a training choice.
SIZES = ("base_channels", "n_blocks", "disc_channels", "lr", "epochs")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Measure the "
                                     "workflow on this machine and write BENCHMARKS.md.")
    parser.add_argument("--only", default=",".join(s for s in SECTIONS if s not in ON_REQUEST),
                        help=f"comma-separated sections to measure now, of {', '.join(SECTIONS)};"
                        " the others keep their last stored numbers ('none' only rewrites the "
                        "report)")
    parser.add_argument("--seeds", type=int, default=3, help="quality: number of seeds (runs)")
    parser.add_argument("--reuse", type=Path, action="append", default=[],
                        help="quality: a finished run's directory whose results/summary.tsv "
                        "counts as its seed's run (repeatable)")
    parser.add_argument("--run", type=Path, default=None,
                        help="finished run whose records and models the other sections use "
                        "(default: the first --reuse, else the repository root if it holds a "
                        "finished run, else the seed 0 run of the quality section)")
    parser.add_argument("--demo-run", type=Path, default=None,
                        help="speed: a finished, timed run of the shipped demo configuration "
                        "(default: run it in RUNS_DIR/demo, alone on the machine)")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "results" / "bench",
                        help="quality: where new seed runs get their working directories")
    parser.add_argument("--configfile", action="append", default=[],
                        help="quality: extra Snakemake config file for the seed runs")
    parser.add_argument("--cores", type=int, default=2, help="quality: snakemake --cores")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for scoring, scaling and the CPU rows of gpu")
    parser.add_argument("--sizes", default="128x128x64,256x256x128,512x512x256",
                        help="scaling: native grids, comma-separated")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="scaling: folder for temporary volumes (default: system temp)")
    parser.add_argument("--gpu-workflow-cores", type=int, default=None,
                        help="gpu_workflow: snakemake --cores (default: every CPU here)")
    parser.add_argument("--gpu-workflow-cpu-smoke", action="store_true",
                        help="gpu_workflow: the shrunken form (1 training step per network, "
                        "thick slices) that runs without CUDA, to test the plumbing")
    parser.add_argument("--gpu-workflow-steps", type=int, default=None,
                        help="gpu_workflow: translator max_steps per dataset instead of "
                        "config/gpu_workflow.yaml's")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    # Not bench/results: `results/` is ignored by git anywhere in the tree.
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "measurements")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip() and s.strip() != "none"]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    args.only = only
    args.reuse = [p.resolve() for p in args.reuse]
    if args.run is None:
        if args.reuse:
            args.run = args.reuse[0]
        elif quality.finished(REPO):
            args.run = REPO
        else:
            args.run = args.runs_dir / "seed0"
    args.run = args.run.resolve()
    if args.demo_run is not None:
        args.demo_run = args.demo_run.resolve()
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    return args


def parse_size(text: str) -> tuple[int, int, int]:
    """'512x512x256' -> (512, 512, 256)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"size must look like 512x512x256, got {text!r}")
    return tuple(int(p) for p in parts)


def measure_section(name: str, args: argparse.Namespace) -> dict:
    import importlib

    module = importlib.import_module(f"bench.{name}")
    runs = args.runs_dir.resolve()
    if name == "gpu_workflow" and args.gpu_workflow_cpu_smoke \
            and args.results_dir.resolve() == (REPO / "bench" / "measurements").resolve():
        raise SystemExit("gpu_workflow: the CPU smoke is no measurement; give it "
                         "--results-dir and --output outside the repository's")
    calls = {
        "quality": lambda: module.measure(REPO, args.reuse, range(args.seeds), runs, args.cores,
                                          args.configfile),
        "speed": lambda: module.measure(
            args.demo_run or quality.demo_run(REPO, runs, args.cores, args.configfile)),
        "scoring": lambda: module.measure(args.run, args.threads),
        "scaling": lambda: module.measure(args.run, args.sizes, args.threads,
                                          scratch=args.scratch),
        "gpu": lambda: module.measure(args.run, args.threads),
        "heldout": lambda: module.measure(REPO, args.reuse, runs, args.cores, args.configfile),
        "parse": lambda: module.measure(REPO, runs / "parse"),
        "published_sizes": lambda: module.measure(REPO, runs, args.cores),
        "gpu_workflow": lambda: module.measure(REPO, runs, args.gpu_workflow_cores,
                                               smoke=args.gpu_workflow_cpu_smoke,
                                               steps=args.gpu_workflow_steps),
        "training_memory": lambda: module.measure(scratch=args.scratch),
    }
    return calls[name]()


def save_section(results_dir: Path, name: str, data: dict) -> None:
    """The section's numbers with the machine and the commit they were measured on
    (machine.describe, which records the commit and the files that differed from it)."""
    record = {"section": name, "machine": machine.describe(), "data": data}
    with atomic_path(results_dir / f"{name}.json", suffix=".json") as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=_json_default))
        tmp.chmod(0o644)  # the temporary file is private; the result is not


def load_sections(results_dir: Path) -> dict[str, dict]:
    paths = {name: results_dir / f"{name}.json" for name in SECTIONS}
    return {name: json.loads(path.read_text()) for name, path in paths.items() if path.exists()}


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def quality_test_subjects(quality: dict) -> str:
    """'10 test subjects per cohort' from the subjects of the quality runs' bootstrap intervals."""
    counts = {int(row["n_subjects"]) for run in quality["runs"]
              for row in run.get("relative_change", [])}
    if len(counts) == 1:
        return f"{counts.pop()} test subjects per cohort"
    return "other cohort sizes"


def budget_rows(sections: dict[str, dict]) -> list[list[str]]:
    """[budget, source, measured, verdict] for every budget the issues set."""
    rows = []
    speed = sections.get("speed", {}).get("data")
    if speed:
        records = pd.DataFrame(speed["records"])
        stage = tables.stage_summary(records).set_index("stage")
        if "demo + preprocessing" in stage.index:
            busy = float(stage.loc["demo + preprocessing", "busy_s"])
            summed = float(stage.loc["demo + preprocessing", "wall_s"])
        else:
            busy = summed = float("nan")
        rows.append([
            "demo generation + preprocessing ≤ 3 min wall", "issue 2",
            f"{busy / 60:.1f} min busy wall ({summed / 60:.1f} min summed over jobs)",
            tables.verdict(busy, 180),
        ])
        translator = records[records["rule"] == "train_translator"]
        total = float(translator["s"].sum()) if len(translator) else float("nan")
        quality = sections.get("quality", {}).get("data")
        finished = [r for r in quality["runs"] if r["status"] == "finished"] if quality else []
        text = f"{total / 60:.1f} min ({len(translator)} jobs)"
        seeds = [r["translator_s"] / 60 for r in finished if "translator_s" in r]
        if len(seeds) > 1:
            text += ("; quality runs (same training) "
                     f"{tables.mean_sd(*tables.mean_and_sd(seeds), digits=1)} min")
        rows.append(["translator training, both datasets ≤ 8 min", "issue 3", text,
                     tables.verdict(total, 480)])
        wall = speed["wall_s"]
        text = f"{wall / 60:.1f} min ({speed['wall_source']})"
        # Only runs timed whole: a run updated in several invocations has no single wall time.
        walls = [r["wall_s"] / 60 for r in finished if r.get("wall_source") == TIMED_WHOLE]
        if len(walls) > 1:
            # The quality runs map more test subjects and may share the machine: not the demo.
            text += (f"; quality runs ({quality_test_subjects(quality)}, not timed alone) "
                     f"{tables.mean_sd(*tables.mean_and_sd(walls), digits=1)} min, "
                     f"longest {max(walls):.1f}")
        clone = speed.get("fresh_clone")
        if clone:
            # The budget is `make demo` on a fresh clone, its set-up included.
            from bench.speed import fresh_clone_text

            span = tables.run_span_seconds(pd.DataFrame(speed["records"]))
            text = fresh_clone_text(clone, span) + "; " + text
            wall = clone["total_s"]
        rows.append(["full default run (`make demo`) ≤ 15 min wall", "issues 2, 7, 12", text,
                     tables.verdict(wall, 900)])
    scoring = sections.get("scoring", {}).get("data")
    if scoring:
        groups: dict[tuple, list[dict]] = {}
        for r in scoring["rows"]:
            groups.setdefault((r["size"], r["stride"], r.get("threads")), []).append(r)
        for (size, stride, threads), group in groups.items():
            label = f"{size}², stride {stride}"
            if threads is not None:
                label += f", {threads} thread{'s' if threads > 1 else ''}"
            verdicts = [tables.verdict(r["speedup"], 20, at_most=False)
                        == tables.verdict(r["correlation"], 0.9, at_most=False) == "pass"
                        for r in group]
            measured = "; ".join(f"{r['dataset']} {r['speedup']:.1f}×, r = "
                                 f"{tables.number(r['correlation'], '{:.3f}')}" for r in group)
            rows.append([
                f"dense scoring ≥ 20× sampled per slice, correlation > 0.9 ({label})",
                "issues 4, 7", measured, "pass" if all(verdicts) else "FAIL",
            ])
    if speed:
        records = pd.DataFrame(speed["records"])
        test = {s for subjects in speed.get("test_subjects", {}).values() for s in subjects}
        maps = records[(records["rule"] == "anomaly_maps") & records["job"].isin(test)]
        longest = float(maps["s"].max()) if len(maps) else float("nan")
        rows.append([
            "a test subject's whole map (all methods) ≤ 20 s", "issue 4",
            f"longest of {len(maps)} test subjects {longest:.1f} s", tables.verdict(longest, 20),
        ])
    scaling_data = sections.get("scaling", {}).get("data")
    if scaling_data:
        from bench import scaling

        summary = scaling.summarise(scaling_data)
        largest = max(summary["per_size"], key=lambda p: p["voxels"])
        shape = "×".join(map(str, largest["shape"]))
        ok_time = tables.verdict(largest["process_s"], scaling.TARGET_SECONDS)
        ok_memory = tables.verdict(largest["peak_mb"] / 1024, scaling.TARGET_GIB)
        rows.append([
            f"{shape} CT subject < 3 min and < 4 GiB", "issue 7",
            f"{largest['process_s']:.0f} s with process start-up ({largest['seconds']:.0f} s in "
            f"the stages), peak {largest['peak_mb'] / 1024:.2f} GiB",
            "pass" if ok_time == ok_memory == "pass" else "FAIL",
        ])
    return rows


def tradeoffs(config: dict, speed: dict | None) -> str:
    """What the CPU demo config gives up against the published setup, from the config itself."""
    from arepas.translator import TranslatorSettings

    published = TranslatorSettings()
    parts = []
    counts = config.get("demo", {}).get("counts", {})
    steps = (speed or {}).get("translator", {})
    for dataset, settings in config["datasets"].items():
        t = {**published.to_dict(), **(settings.get("translator") or {})}
        spacing = " × ".join(f"{v:g}" for v in settings["spacing"])
        n = counts.get(dataset, {})
        cohort = ", ".join(f"{n[k]} {k}" for k in ("train", "val", "test") if k in n)
        step_text = f", {steps[dataset]['steps']:,} generator steps" if dataset in steps else ""
        # Beyond the sizes above: the demo's training choices that are not the reference's.
        choices = ", ".join(f"{k} {v}" for k, v in (settings.get("translator") or {}).items()
                            if k not in SIZES)
        scorer = ", ".join(f"{k} {v}" for k, v in (settings.get("scorer") or {}).items())
        parts.append(
            f"`{dataset}`: {settings['slice_size']}² slices on a {spacing} mm working grid; "
            f"translator {t['base_channels']} base channels, {t['n_blocks']} residual blocks, "
            f"{t['disc_channels']}-channel discriminator, lr {t['lr']:g}, {t['epochs']} epochs"
            f"{step_text}" + (f", and unlike the reference {choices}" if choices else "")
            + (f"; scorer {scorer}" if scorer else "; scorer as published")
            + f"; demo cohort {cohort} subjects"
        )
    return (
        "The default config is sized for minutes on two CPU cores, not for the published "
        "accuracy. " + "; ".join(parts) + ". Published (Mitic & Langs, MLMI 2025, "
        f"arXiv 2509.12905, and its reference implementation): {PUBLISHED_SLICE}² slices, "
        f"{published.base_channels} base channels, {published.n_blocks} residual blocks, "
        f"{published.disc_channels}-channel discriminator, lr {published.lr:g} "
        f"(Adam, batch {published.batch_size}), dropout {published.dropout:g}, "
        f"{published.augment_copies} augmented copies of {published.augment_swaps} swaps and no "
        "unaugmented copy, 16 × 16 patches, and patient cohorts instead of generated phantoms. "
        "Coarser slices can hide small lesions and fine vessels (the structures patch scoring is "
        "meant to tell apart), and a smaller, briefly trained translator leaves more normal "
        "anatomy in the residual. The quality numbers above are therefore a check that the "
        "method works "
        "end to end and a comparison of the methods under equal conditions, not a reproduction "
        "of the paper's Dice."
    )


def _measured_by(paths: tuple[str, ...], path: str) -> bool:
    under = [p for p in paths if path == p or (p.endswith("/") and path.startswith(p))]
    return bool(under) and f"{NOT_MEASURED}{path}" not in paths


def code_status(name: str, measured: dict, repo: Path = REPO) -> tuple[str, str]:
    """(what the section's "Measured" line says of its code, a stale notice or '').

    Stale: the last commit that changed the section's MEASURES paths is not the measured
    commit or one of its ancestors, or those paths have uncommitted changes now (so that a
    report written before a commit still holds after it). Not known to be current: no commit
    recorded, a commit this repository does not hold, or uncommitted changes to those paths
    when it was measured."""
    def git(*args: str):
        return machine.git(*args, repo=repo)

    paths = MEASURES[name]
    commit = measured.get("commit")
    if not commit:
        return "commit not recorded, so not known to be current", ""
    short = commit[:12]
    dirty = [p for p in measured.get("dirty_paths") or [] if _measured_by(paths, p)]
    if dirty:
        shown = ", ".join(dirty[:3]) + (", …" if len(dirty) > 3 else "")
        return (f"at commit {short} with uncommitted changes to the code it measures ({shown}), "
                "so not known to be current"), ""
    if git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return (f"at commit {short}, which this repository does not hold (a shallow clone?), "
                "so not known to be current"), ""
    last = git("log", "-1", "--format=%H", "--", *paths).stdout.strip()
    changed = []
    if last and git("merge-base", "--is-ancestor", last, commit).returncode != 0:
        changed.append(f"in commit {last[:12]}")
    if git("status", "--porcelain", "--untracked-files=all", "--", *paths).stdout.strip():
        changed.append("in uncommitted changes")
    measured_code = ", ".join(f"`{p}`" for p in paths if not p.startswith(NOT_MEASURED))
    if not changed:
        return f"at commit {short}; {measured_code} unchanged since", ""
    return f"at commit {short}", (
        f"**Stale:** the code this section measures ({measured_code}) changed "
        f"{' and '.join(changed)} after it was measured; `python -m bench --only {name}` "
        "measures it again.\n"
    )


def render(sections: dict[str, dict], run_dir: Path) -> str:
    latest = max(sections.values(), key=lambda s: s["machine"]["date"])["machine"] \
        if sections else machine.describe()
    lines = [
        "# Benchmarks",
        "",
        "Regenerate with `make bench` (runs `.venv/bin/python -m bench`; `make bench "
        "BENCH_ARGS='--only scoring,scaling'` measures only some sections, "
        "`--reuse DIR` takes finished workflow runs as quality seeds, `--help` lists the rest). "
        "Each section's raw numbers are kept in `bench/measurements/<section>.json`; this file is "
        "written from them. Timings come from a shared machine, so compare ratios measured in "
        "the same section rather than absolute seconds across sections. Each section names the "
        "commit it was measured at and is marked stale when the code it measures (`MEASURES` in "
        "`bench/run.py`) changed after that commit. Studies that informed a decision and are no "
        "longer measured (the missing section numbers) are in `docs/studies.md`.",
        "",
        f"Machine: {latest['cpu']}, {latest['cores']} cores, {latest['memory_gib']:g} GiB RAM, "
        f"GPU: {latest['gpu']}; Python {latest['python']}, torch {latest['torch']}, "
        f"numpy {latest['numpy']}. Last measured {latest['date']}.",
        "",
        "## Budgets",
        "",
    ]
    rows = budget_rows(sections)
    if rows:
        lines.append(tables.markdown_table(["budget", "from", "measured", "verdict"], rows, left=3))
    else:
        lines.append("No section measured yet.\n")
    for name in SECTIONS:
        lines += [f"## {TITLES[name]}", ""]
        if name not in sections:
            lines.append(f"Not measured yet: `python -m bench --only {name}`.\n")
            continue
        record = sections[name]
        m = record["machine"]
        said, stale = code_status(name, m)
        lines.append(f"*Measured {m['date']} ({m['cpu']}, {m['cores']} cores, load average at "
                     f"the end {', '.join(str(v) for v in m['load_average'])}), {said}.*\n"
                     + stale)
        module = __import__(f"bench.{name}", fromlist=["render"])
        lines.append(module.render(record["data"]))
        if name == "quality":
            lines += ["### Relative change with bootstrap intervals, per run", ""]
            lines.append(quality.render_intervals(record["data"]))
            lines += ["### Does the translator use its edges?", ""]
            lines.append(quality.render_edge_reliance(record["data"]))
    # Numbered after the measured sections, however many there are.
    last = max(int(title.split(".", 1)[0]) for title in TITLES.values())
    lines += [f"## {last + 1}. What the CPU demo trades away", ""]
    from bench import speed as speed_section

    timed = sections.get("speed", {}).get("data")
    config = speed_section.run_config(timed or {"run_dir": str(run_dir)})
    if config is not None:
        lines.append(tradeoffs(config, timed) + "\n")
    return "\n".join(lines)


def write_report(path: Path, text: str) -> None:
    with atomic_path(path, suffix=".md") as tmp:
        tmp.write_text(text)
        tmp.chmod(0o644)  # the temporary file is private; the report is not


def report(results_dir: Path, run: Path) -> str:
    """BENCHMARKS.md from the stored sections, as `python -m bench` writes it."""
    sections = load_sections(results_dir)
    run_dir = Path(sections["speed"]["data"]["run_dir"]) if "speed" in sections else run
    return render(sections, run_dir)


def main(argv=None) -> int:
    args = parse_args(argv)
    for name in args.only:
        uncommitted = [p for p in machine.code_state()["dirty_paths"]
                       if _measured_by(MEASURES[name], p)]
        if uncommitted:
            print(f"bench: warning: {name} measures code with uncommitted changes "
                  f"({', '.join(uncommitted[:3])}); the report cannot call it current. "
                  "Commit first to measure a commit.", flush=True)
        print(f"bench: measuring {name}", flush=True)
        data = measure_section(name, args)
        save_section(args.results_dir, name, data)
    write_report(args.output, report(args.results_dir, args.run))
    print(f"bench: wrote {args.output}")
    from bench import training_time

    readme = REPO / "README.md"
    block = training_time.render(json.loads(training_time.RECORD.read_text()))
    if training_time.update_readme(readme, block):
        print(f"bench: updated the training times in {readme}")
    return 0

"""Seconds per translator training step at the CPU demo's network size, for the ways one might
make it cheaper: more torch threads per job, channels_last memory layout, torch.compile,
training on crops of larger slices, and a cheaper GAN step (pix2pix order, a lazy gradient
penalty), which trains other networks and is judged by the edge reliance it reaches. Every
variant runs the real `arepas.translator._train_step` on the same synthetic batch; the variants
take turns step by step, so load from other programs on the shared machine falls on all of them
alike. Each variant is run twice from the same seed to check that it gives bit-identical
weights, as CPU training must."""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import numpy as np

from bench import tables

# The demo config's translator (config/config.yaml) as it was when section 7 was measured (its
# discriminator has had 16 channels since section 19; the last 64² variant times that step), and
# the reference batch.
DEMO_SETTINGS = {"base_channels": 16, "n_blocks": 4, "disc_channels": 32, "lr": 0.001}
BATCH = 8
# A change becomes the default only if it is at least this much faster in the same run.
CLEAR_WIN = 0.10
# One generator pass per step, the discriminator updated first (arepas.translator, gan_step).
PIX2PIX_ORDER = (("gan_step", "discriminator_first"),)


@dataclass(frozen=True)
class Variant:
    name: str
    size: int
    threads: int
    crop: int | None = None
    channels_last: bool = False
    # "" eager, "both" generator and discriminator compiled, "generator" the generator only.
    compiled: str = ""
    # The variant whose time and weights this one is compared with (None: it is a baseline).
    against: str | None = None
    # False where the row shows what a larger slice costs rather than an option one could take.
    option: bool = True
    # Translator settings that change the training itself (not only how it is computed).
    training: tuple[tuple[str, object], ...] = ()
    # Deterministic mode's NaN fill of every new tensor (torch's default with deterministic
    # algorithms; train_translator turns it off).
    nan_fill: bool = False


def variants(threads: int) -> list[Variant]:
    """What is compared: each row differs from its `against` row in one respect only."""
    more = 2 * threads
    counted = f"{threads} thread{'s' if threads > 1 else ''}"
    base, large = f"64², {counted}", f"128², {counted}"
    return [
        Variant(base, 64, threads),
        Variant(f"64², {more} threads", 64, more, against=base),
        Variant("64², channels_last", 64, threads, channels_last=True, against=base),
        Variant("64², new tensors filled with NaN", 64, threads, nan_fill=True, against=base),
        Variant("64², torch.compile G and D", 64, threads, compiled="both", against=base),
        Variant("64², torch.compile G only", 64, threads, compiled="generator", against=base),
        Variant(
            "64², pix2pix order", 64, threads, training=PIX2PIX_ORDER, against=base
        ),
        Variant(
            "64², pix2pix order, penalty every 16th step",
            64,
            threads,
            training=PIX2PIX_ORDER + (("gp_every", 16),),
            against=base,
        ),
        # The demo's step with a discriminator of half the channels: the discriminator's
        # passes are about half of a step, and a convolution's cost grows with channels².
        Variant(
            "64², pix2pix order, penalty every 16th step, 16-channel discriminator",
            64,
            threads,
            training=PIX2PIX_ORDER + (("gp_every", 16), ("disc_channels", 16)),
            against="64², pix2pix order, penalty every 16th step",
        ),
        Variant(large, 128, threads, against=base, option=False),
        Variant(f"128², {more} threads", 128, more, against=large),
        Variant("128², channels_last", 128, threads, channels_last=True, against=large),
        Variant("128², crop_size 64", 128, threads, crop=64, against=large),
    ]


def _synthetic_slices(size: int, seed: int) -> np.ndarray:
    """Smooth random slices in [-1, 1]; the cost of a step does not depend on their content."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(BATCH, size, size))
    smooth = np.stack([ndimage.gaussian_filter(n, size / 16) for n in noise])
    return (0.9 * smooth / np.abs(smooth).max()).astype(np.float32)


def _compile_discriminator(discriminator):
    import torch

    # _train_step calls forward_features directly, and forward goes through it: compiling the
    # method covers every discriminator pass, which compiling the module's __call__ would not.
    discriminator.forward_features = torch.compile(discriminator.forward_features)
    return discriminator


def _replica(variant: Variant, settings, batch: tuple, seed: int) -> dict:
    """Networks, optimisers and inputs of one run of a variant, initialised from the seed."""
    import torch

    from arepas import translator

    # Settings that change the networks themselves (disc_channels) build them so.
    settings = dataclasses.replace(settings, **dict(variant.training))
    torch.manual_seed(seed)
    generator = translator.build_generator(settings).train()
    discriminator = translator.build_discriminator(settings).train()
    edges, real = batch
    if variant.channels_last:
        generator = generator.to(memory_format=torch.channels_last)
        discriminator = discriminator.to(memory_format=torch.channels_last)
    # The optimisers hold the parameters as they are after any layout change.
    opt_g = torch.optim.Adam(generator.parameters(), lr=settings.lr, betas=settings.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=settings.lr, betas=settings.betas)
    weights = (generator, discriminator)
    if variant.compiled:
        generator = torch.compile(generator)
    if variant.compiled == "both":
        discriminator = _compile_discriminator(discriminator)
    return {
        "settings": settings,
        "generator": generator,
        "discriminator": discriminator,
        "weights": weights,
        "opt_g": opt_g,
        "opt_d": opt_d,
        "edges": edges,
        "real": real,
        "times": [],
        "error": None,
    }


def _step(run: dict, variant: Variant, step: int, seed: int) -> None:
    """One timed training step; the crop, when there is one, is part of the time."""
    import torch

    from arepas import translator

    torch.set_num_threads(variant.threads)
    torch.utils.deterministic.fill_uninitialized_memory = variant.nan_fill
    settings = run["settings"]
    # Both runs of a variant draw the same dropout masks and penalty interpolates at each step.
    torch.manual_seed(seed + step)
    started = time.perf_counter()
    edges, real = run["edges"], run["real"]
    if variant.crop is not None:
        corners = translator.crop_corners(seed, step, len(edges), variant.size, variant.crop)
        edges, real = translator.crop_pairs(edges, real, corners, variant.crop)
    if variant.channels_last:
        edges = edges.contiguous(memory_format=torch.channels_last)
        real = real.contiguous(memory_format=torch.channels_last)
    translator._train_step(
        run["generator"],
        run["discriminator"],
        None,
        run["opt_g"],
        run["opt_d"],
        edges,
        real,
        settings,
        False,
        step % settings.gp_every == 0,
    )
    run["times"].append(time.perf_counter() - started)


def _guarded_step(run: dict, variant: Variant, step: int, seed: int, progress) -> None:
    """_step, recording instead of raising an error (a compile that fails is a result)."""
    if run["error"] is not None:
        return
    try:
        _step(run, variant, step, seed)
    except Exception as error:
        run["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        progress(f"translator_speed: {variant.name} failed: {run['error']}")


def _state(run: dict) -> list:
    return [
        tensor.detach().clone()
        for network in run["weights"]
        for tensor in network.state_dict().values()
    ]


def _max_difference(a: list, b: list) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))


def measure(
    threads: int = 1, repeats: int = 16, warmup: int = 2, seed: int = 0, progress=print
) -> dict:
    import torch

    from arepas import translator

    settings = dataclasses.replace(
        translator.TranslatorSettings.from_dict(DEMO_SETTINGS), batch_size=BATCH
    )
    batches = {}
    for size in (64, 128):
        slices = _synthetic_slices(size, seed)
        edges = translator.edges_for(settings, slices)
        batches[size] = (
            torch.from_numpy(edges).unsqueeze(1),
            torch.from_numpy(slices).unsqueeze(1),
        )
    chosen = variants(threads)
    progress(
        f"translator_speed: {len(chosen)} variants x 2 runs, {warmup} warm-up + {repeats} "
        f"timed steps each, batch {BATCH}"
    )
    from torch._inductor import config as inductor_config

    # Deterministic kernels, as train_translator uses on CPU; threads are set per step. Without
    # the on-disk compile caches a compiled variant's first run compiles from scratch, as a
    # training job on a fresh machine would.
    with (
        translator._torch_runtime(settings, torch.device("cpu")),
        inductor_config.patch(force_disable_caches=True),
    ):
        runs = {
            v.name: [_replica(v, settings, batches[v.size], seed) for _ in range(2)] for v in chosen
        }
        # Warm-up first, variant by variant: a compiled variant's first run then pays for its
        # own compilation (the cache is emptied before it) and its second run reuses the graphs.
        for variant in chosen:
            for index, run in enumerate(runs[variant.name]):
                if variant.compiled and index == 0:
                    torch._dynamo.reset()
                for step in range(warmup):
                    _guarded_step(run, variant, step, seed, progress)
            progress(f"translator_speed: {variant.name} warmed up")
        for step in range(warmup, warmup + repeats):
            for variant in chosen:
                for run in runs[variant.name]:
                    _guarded_step(run, variant, step, seed, progress)
            progress(f"translator_speed: timed step {step - warmup + 1}/{repeats} done")
    states = {
        name: [_state(run) for run in pair]
        for name, pair in runs.items()
        if all(run["error"] is None for run in pair)
    }
    rows = []
    for variant in chosen:
        pair = runs[variant.name]
        row = {
            "name": variant.name,
            "size": variant.size,
            "threads": variant.threads,
            "crop": variant.crop,
            "channels_last": variant.channels_last,
            "compiled": variant.compiled,
            "against": variant.against,
            "option": variant.option,
            "training": dict(variant.training),
            "error": next((run["error"] for run in pair if run["error"]), None),
        }
        if row["error"] is None:
            timed = [t for run in pair for t in run["times"][warmup:]]
            # A lazy penalty makes one step in gp_every dearer: its cost is the mean over the
            # timed steps (a whole number of cycles), not the median of cheap steps.
            lazy = dict(variant.training).get("gp_every", 1) > 1
            step_s = statistics.mean(timed) if lazy else statistics.median(timed)
            a, b = states[variant.name]
            row.update(
                step_s=step_s,
                step_times=[run["times"] for run in pair],
                identical_twice=_max_difference(a, b) == 0.0,
            )
            if variant.compiled:
                # The first run's warm-up compiles; the second's finds the graphs compiled.
                first, second = (sum(run["times"][:warmup]) for run in pair)
                row["compile_s"] = first - second
            against = next((v for v in chosen if v.name == variant.against), None)
            # Weights can be compared only where both variants trained the same networks on
            # the same inputs.
            if (
                against
                and against.name in states
                and (against.size, None) == (variant.size, variant.crop)
                and [t.shape for t in a] == [t.shape for t in states[against.name][0]]
            ):
                row["max_weight_change"] = _max_difference(a, states[variant.against][0])
        rows.append(row)
    by_name = {row["name"]: row for row in rows}
    for row in rows:
        other = by_name.get(row["against"])
        if row.get("step_s") and other and other.get("step_s"):
            row["speedup"] = other["step_s"] / row["step_s"]
    return {
        "settings": DEMO_SETTINGS,
        "batch": BATCH,
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "torch": torch.__version__,
        "rows": rows,
    }


def decision(row: dict) -> str:
    """Whether a variant's change is a clear win: clearly faster and bit-identical twice."""
    if row.get("error"):
        return "fails"
    if row["against"] is None or not row.get("option", True):
        return ""
    if not row["identical_twice"]:
        return "not reproducible"
    if row["speedup"] < 1.0 + CLEAR_WIN:
        return "no clear win"
    if row.get("training"):
        return "faster; trains other networks"
    if row.get("compile_s") is not None:
        return f"clear win after {break_even_steps(row):,.0f} steps"
    return "clear win"


def break_even_steps(row: dict) -> float:
    """Steps after which a compiled variant's faster steps have paid for its compilation."""
    saved = row["step_s"] * (row["speedup"] - 1.0)
    return row["compile_s"] / saved if saved > 0 else float("inf")


def render(data: dict) -> str:
    fill = ""
    if any(row.get("name", "").endswith("filled with NaN") for row in data["rows"]):
        fill = (" (without deterministic mode's NaN fill of every new tensor, as in training; "
                "the row \"new tensors filled with NaN\" puts it back)")
    text = (
        f"Seconds per translator training step (`arepas.translator._train_step`: generator and "
        f"discriminator update with the gradient penalty) at the CPU demo's earlier size "
        f"({', '.join(f'{k} {v:g}' for k, v in data['settings'].items())}), batch "
        f"{data['batch']} of synthetic slices, deterministic kernels as in training{fill}, "
        f"torch {data['torch']}. Each variant is run "
        f"twice from one seed: {data['warmup']} warm-up "
        f"steps per run, variant by variant, then {data['repeats']} timed steps per run, the "
        "variants taking turns step by step; the time is the median of the timed steps of both "
        "runs. *Speed-up* is against the row named in *against*; *identical* says "
        "whether the two runs gave bit-identical weights; *weights vs against* is the largest "
        "weight difference to the compared row after the same steps (0: same results). "
        "*Compile s*: the first run's warm-up less the second run's, which finds the graphs "
        "compiled. "
        f"A change of how a step is computed would become the default only if at least "
        f"{CLEAR_WIN:.0%} faster and bit-identical; a change of the step itself (pix2pix order, "
        "lazy penalty) trains other networks, so it must also keep the translators following "
        "their edges (section 1, \"Does the translator use its edges?\"). Two one-thread jobs "
        "side by side are not timed: on a machine shared with other programs their "
        "throughput would measure the neighbours.\n\n"
    )
    rows, failures = [], []
    for row in data["rows"]:
        if row.get("error"):
            failures.append(f"- {row['name']}: {row['error']}")
        rows.append(
            [
                row["name"],
                row["against"] or "",
                tables.number(row.get("step_s"), "{:.3f}"),
                tables.number(row.get("speedup"), "{:.2f}×"),
                {True: "yes", False: "no", None: "n/a"}[row.get("identical_twice")],
                tables.number(row.get("max_weight_change"), "{:.1e}"),
                tables.number(row.get("compile_s"), "{:.0f}"),
                decision(row),
            ]
        )
    header = [
        "variant",
        "against",
        "s per step",
        "speed-up",
        "identical",
        "weights vs against",
        "compile s",
        "verdict",
    ]
    text += tables.markdown_table(header, rows, left=2)
    if failures:
        text += "\nFailed variants:\n\n" + "\n".join(failures) + "\n"
    return text + "\n" + summary(data) + "\n"


def summary(data: dict) -> str:
    """What the run says about the defaults, from its numbers."""
    options = [row for row in data["rows"] if row["against"] and row.get("option", True)]
    wins = [row["name"] for row in options if decision(row).startswith("clear win")]
    text = f"Clear wins in this run: {'; '.join(wins) if wins else 'none'}. "
    changed = [
        row["name"]
        for row in options
        if row.get("identical_twice")
        and (row.get("max_weight_change") or 0.0) > 0.0
        and not row.get("training")
    ]
    if changed:
        text += (
            f"Reproducible but with other weights than the compared row (other summation order "
            f"or, compiled, other dropout draws), so not interchangeable with it for a resumed "
            f"run: {'; '.join(changed)}. "
        )
    for row in options:
        if row.get("compile_s") is not None and row.get("speedup"):
            text += (
                f"{row['name']} pays for its {row['compile_s']:.0f} s compilation after "
                f"{break_even_steps(row):,.0f} steps (the demo's steps per dataset are in "
                "section 2), in every training job. "
            )
    trained = [row["name"] for row in options if row.get("training")]
    if trained:
        text += (
            f"Other training, not a faster way to compute the same one: {'; '.join(trained)}. "
            "The CPU demo trains in pix2pix order with the penalty on every 16th step and, since "
            "section 19 found the same edge reliance with it, a 16-channel discriminator "
            "(config/config.yaml); `config/full.yaml` keeps the reference's step and sizes. "
        )
    return text + (
        "`train_translator` trains eagerly on contiguous tensors and whole slices; `crop_size` "
        "is an option, off by default because the reference trains on whole slices; the torch "
        "thread count per job is the workflow's (one per job, two datasets side by side)."
    )

"""Training the translator: losses, the generator and discriminator steps, the epoch loop with
its step budget and learning-rate decay, and checkpoints a killed job resumes from."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from arepas.io import check_resumable, save_torch
from arepas.progress import (
    StepProgress,
    batches_per_epoch,
    capped_steps,
    effective_epochs,
)
from arepas.stacks import StackReadError, array_chunks
from arepas.translator.inference import translate
from arepas.translator.network import (
    build_discriminator,
    build_generator,
    build_vgg19_features,
)
from arepas.translator.pairs import (
    _as_slices,
    _pair_loader,
    crop_corners,
    crop_pairs,
    edges_for,
    pairs_per_slice,
)
from arepas.translator.settings import TranslatorSettings, _saved_settings

# d_loss is the discriminator's BCE part as optimised (summed for "reference", halved for
# "discriminator_first"); the gradient penalty is logged unweighted in gp.
HISTORY_COLUMNS = ["epoch", "step", "g_adv", "g_l1", "g_perc", "d_loss", "gp", "val_l1", "seconds"]
CHECKPOINT_NAME = "last.pt"
_CHECKPOINT_FORMAT = "arepas-translator-checkpoint-2"
# Format 1 checkpoints predate the newer settings (settings.V0_SETTINGS).
_LEGACY_CHECKPOINT_FORMAT = "arepas-translator-checkpoint-1"
# Settings that may change between an interrupted run and its resumption without changing results.
_RESUME_FREE_SETTINGS = ("epochs", "num_threads", "max_steps")
_STEP_LOG_EVERY = 50


def gradient_penalty(
    discriminator: nn.Module, edges: torch.Tensor, real: torch.Tensor, fake: torch.Tensor
) -> torch.Tensor:
    """Mean (||grad_x D(edges, x)|| - 1)^2 at random interpolates x between real and fake images."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1.0 - alpha) * fake).detach().requires_grad_(True)
    logits = discriminator(torch.cat([edges, mixed], dim=1))
    (grad,) = torch.autograd.grad(logits.sum(), mixed, create_graph=True)
    # The small constant keeps the norm differentiable where the gradient vanishes.
    norm = torch.sqrt(grad.float().pow(2).flatten(1).sum(dim=1) + 1e-12)
    return ((norm - 1.0) ** 2).mean()


def feature_matching_loss(
    fake_features: list[torch.Tensor], real_features: list[torch.Tensor]
) -> torch.Tensor:
    """pix2pixHD feature matching: L1 between discriminator activations, averaged over layers."""
    losses = [
        F.l1_loss(fake, real.detach())
        for fake, real in zip(fake_features, real_features, strict=True)
    ]
    return torch.stack(losses).mean()


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        # Block by block: the same digest as the whole array's bytes, without holding them.
        for block in array_chunks(array):
            digest.update(np.ascontiguousarray(block, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


@contextmanager
def _torch_runtime(settings: TranslatorSettings, device: torch.device) -> Iterator[None]:
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
        # Deterministic mode also fills every new tensor with NaN (to expose reads of memory
        # never written): about a tenth of a CPU step at the demo's size in alternating
        # timings, and the weights are the same bit for bit without it. The archived study
        # "Translator training step" (docs/studies.md) has a row that puts the fill back.
        torch.utils.deterministic.fill_uninitialized_memory = False
    # On CUDA the reflection-pad backward has no deterministic kernel, so GPU runs are
    # reproducible only up to floating-point summation order.
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def _check_resumable(
    state: dict[str, Any],
    settings: TranslatorSettings,
    seed: int,
    fingerprint: str,
    path: Path,
    epoch_steps: int | None = None,
) -> None:
    """Refuse a checkpoint another run may not continue. epoch_steps (steps_per_epoch of the
    training set) turns max_steps into epochs for the learning-rate decay's check; None compares
    the epoch counts alone."""
    if state.get("format") not in (_CHECKPOINT_FORMAT, _LEGACY_CHECKPOINT_FORMAT):
        raise ValueError(f"{path} is not a translator checkpoint")
    legacy = state["format"] == _LEGACY_CHECKPOINT_FORMAT
    # The pair count, hence epoch_steps, is the checkpoint's too when its settings and data
    # match, which the checks below require.
    epoch_steps = 0 if epoch_steps is None else epoch_steps
    saved_last = effective_epochs(
        state["settings"].get("epochs"), epoch_steps, state["settings"].get("max_steps")
    )
    last = effective_epochs(settings.epochs, epoch_steps, settings.max_steps)
    if settings.lr_decay_epochs and saved_last != last:
        # The decay ends at the last epoch: a run asked for more epochs decays elsewhere.
        raise ValueError(
            f"cannot resume from {path}: it decays its learning rate towards epoch "
            f"{saved_last}, not {last} (lr_decay_epochs {settings.lr_decay_epochs}; the last "
            f"epoch is the one epochs and max_steps reach); delete it (or its folder) to start "
            f"afresh"
        )
    saved = {k: v for k, v in state["settings"].items() if k not in _RESUME_FREE_SETTINGS}
    saved = _saved_settings({**saved, "epochs": settings.epochs}, legacy).to_dict()
    check_resumable(path, saved, settings.to_dict(), state.get("seed"), seed,
                    free=_RESUME_FREE_SETTINGS)
    if state["data"] != fingerprint:
        raise ValueError(f"cannot resume from {path}: it was trained on different slices")


def steps_per_epoch(settings: TranslatorSettings, n_slices: int) -> int:
    """Generator steps of one epoch over n_slices training slices: one per batch of training
    pairs (pairs_per_slice per slice), the last batch kept however small."""
    return batches_per_epoch(n_slices * pairs_per_slice(settings), settings.batch_size)


def planned_steps(settings: TranslatorSettings, n_slices: int) -> int:
    """Generator steps (each with one discriminator step) that train_translator takes on
    n_slices training slices: epochs x steps_per_epoch, at most max_steps."""
    return capped_steps(settings.epochs, steps_per_epoch(settings, n_slices), settings.max_steps)


def last_epoch(settings: TranslatorSettings, n_slices: int) -> int:
    """The last epoch train_translator starts on n_slices training slices: settings.epochs,
    or fewer under max_steps (the last one then maybe cut short)."""
    return effective_epochs(
        settings.epochs, steps_per_epoch(settings, n_slices), settings.max_steps
    )


def epoch_learning_rate(
    settings: TranslatorSettings, epoch: int, epochs: int | None = None
) -> float:
    """Learning rate of epoch `epoch` (1-based) of `epochs` (settings.epochs when None; under
    max_steps, the epochs the budget starts, last_epoch): constant, then falling linearly over
    the last lr_decay_epochs epochs (never to zero: the last is lr / (k + 1))."""
    epochs = settings.epochs if epochs is None else epochs
    remaining = epochs - epoch + 1
    return settings.lr * min(1.0, remaining / (settings.lr_decay_epochs + 1))


def train_translator(
    train_slices: np.ndarray,
    val_slices: np.ndarray,
    settings: TranslatorSettings,
    checkpoint_dir: Path,
    seed: int,
    device: str = "cpu",
    progress: Callable[[str], None] = print,
    num_workers: int = 0,
) -> tuple[nn.Module, pd.DataFrame]:
    """Train the edge-to-image translator on healthy slices; resumes from checkpoint_dir/last.pt.

    train_slices may be an array or a StackArray (slices on disk, arepas.stacks): training pairs
    are made a batch at a time (training_pair_batch), in num_workers data-loader processes when
    that is above 0, so memory does not grow with the training set. Returns the generator (eval
    mode) and one history row per epoch (HISTORY_COLUMNS). The result for a seed does not depend
    on whether or where training was interrupted, nor on num_workers. A training slice that
    cannot be read is a StackReadError naming the subject and file; the last finished epoch's
    checkpoint stays for a resume.

    With settings.max_steps, training stops after that many generator steps (planned_steps),
    cutting the last epoch short; that epoch gets its history row, validation and checkpoint as
    any other. Such a checkpoint also holds the state its last epoch started from, so a later
    run with a larger budget trains that epoch again from its start, as an uninterrupted run
    with that budget would have. Progress lines with an expected end go to `progress` at most
    once a minute and after every epoch (arepas.progress.StepProgress).
    """
    train = _as_slices(train_slices, settings, "train_slices")
    val = _as_slices(val_slices, settings, "val_slices") if len(val_slices) else None
    if len(train) == 0:
        raise ValueError("train_slices is empty")
    side = train.shape[1]
    if settings.crop_size is not None and settings.crop_size > side:
        raise ValueError(
            f"crop_size {settings.crop_size} is larger than the {side} x {side} training slices"
        )
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
    torch_device = torch.device(device)
    use_amp = settings.amp and torch_device.type == "cuda"
    if settings.amp and not use_amp:
        progress("translator: amp requested but only used on CUDA; training in float32")
    fingerprint = _fingerprint(train, val if val is not None else np.empty((0, 0, 0)))

    with _torch_runtime(settings, torch_device), ExitStack() as stack:
        torch.manual_seed(seed)
        generator = build_generator(settings).to(torch_device)
        discriminator = build_discriminator(settings).to(torch_device)
        vgg = None
        if settings.perceptual == "vgg19":
            vgg = build_vgg19_features(settings.vgg19_weights).to(torch_device)
        opt_g = torch.optim.Adam(generator.parameters(), lr=settings.lr, betas=settings.betas)
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=settings.lr, betas=settings.betas)

        # Each pair depends only on its slice, the settings and the seed, so a resumed run
        # trains on the same ones.
        n_pairs = len(train) * pairs_per_slice(settings)
        epoch_steps = steps_per_epoch(settings, len(train))
        total_steps = planned_steps(settings, len(train))
        epochs = last_epoch(settings, len(train))

        history: list[dict[str, float]] = []
        done_epochs = 0
        if checkpoint_path.exists():
            state = torch.load(checkpoint_path, map_location=torch_device, weights_only=True)
            _check_resumable(state, settings, seed, fingerprint, checkpoint_path, epoch_steps)
            done_steps = int(state["epoch"]) * epoch_steps
            if state["history"]:
                done_steps = int(state["history"][-1].get("step", done_steps))
            before_cut = state.get("before_cut")
            if before_cut is not None and done_steps < total_steps:
                # Its last epoch was cut short by a smaller budget: train it again from its start.
                state = {**state, **before_cut, "epoch": int(state["epoch"]) - 1}
                progress(
                    f"translator: resuming from {checkpoint_path} before epoch "
                    f"{int(state['epoch']) + 1}, which max_steps cut short at step {done_steps}"
                )
            else:
                progress(
                    f"translator: resuming from {checkpoint_path} after epoch {state['epoch']}"
                )
            generator.load_state_dict(state["generator"])
            discriminator.load_state_dict(state["discriminator"])
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            history = list(state["history"])
            done_epochs = int(state["epoch"])
            if done_epochs > settings.epochs:
                progress(
                    f"translator: checkpoint already has {done_epochs} epochs "
                    f"(> {settings.epochs} requested); returning it as is"
                )
            elif done_steps > total_steps:
                progress(
                    f"translator: checkpoint already has {done_steps} steps "
                    f"(> max_steps {settings.max_steps}); returning it as is"
                )

        val_edges = edges_for(settings, val) if val is not None else None
        # Epochs before the first one to train are whole: a cut one is the last or trained again.
        step = done_epochs * epoch_steps
        ticker = StepProgress("translator", total_steps, progress, done=step)

        pair_loader = _pair_loader(train, settings, seed, num_workers)
        loader, epoch_batches = stack.enter_context(pair_loader)
        for epoch in range(done_epochs + 1, epochs + 1):
            started = time.perf_counter()
            # Per-epoch reseeding makes dropout, interpolation weights and batch order a function
            # of (seed, epoch) alone, so resuming reproduces an uninterrupted run.
            torch.manual_seed(_epoch_seed(seed, epoch))
            order = np.random.default_rng([seed, epoch]).permutation(n_pairs)
            corners = None
            if settings.crop_size is not None:
                corners = crop_corners(seed, epoch, n_pairs, side, settings.crop_size)
            # A function of the epoch alone, so a resumed run decays as an uninterrupted one.
            for optimizer in (opt_g, opt_d):
                for group in optimizer.param_groups:
                    group["lr"] = epoch_learning_rate(settings, epoch, epochs)
            generator.train()
            discriminator.train()
            sums = dict.fromkeys(("g_adv", "g_l1", "g_perc", "d_loss", "gp"), 0.0)
            counts = dict.fromkeys(sums, 0)
            batches = [
                order[first : first + settings.batch_size]
                for first in range(0, n_pairs, settings.batch_size)
            ]
            before_cut = None
            if total_steps - step < len(batches):
                # max_steps ends training within this epoch. What a later run with a larger
                # budget starts this epoch again from:
                batches = batches[: total_steps - step]
                before_cut = deepcopy({
                    "generator": generator.state_dict(),
                    "discriminator": discriminator.state_dict(),
                    "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "history": history,
                })
            epoch_batches.batches = batches
            for batch, loaded in zip(epoch_batches.batches, loader, strict=True):
                if isinstance(loaded, StackReadError):
                    kept = f"{checkpoint_path} holds epoch {epoch - 1}" if epoch > 1 else "none"
                    raise StackReadError(
                        loaded.subject,
                        loaded.path,
                        f"{loaded.problem} (in translator epoch {epoch}; checkpoint: {kept})",
                    ) from None
                edges, real = loaded
                if corners is not None:
                    edges, real = crop_pairs(edges, real, corners[batch], settings.crop_size)
                edges, real = edges.to(torch_device), real.to(torch_device)
                # Counted over the whole run, so a resumed run penalises on the same steps.
                with_gp = step % settings.gp_every == 0
                losses = _train_step(
                    generator, discriminator, vgg, opt_g, opt_d, edges, real, settings, use_amp,
                    with_gp,
                )
                for key, value in losses.items():
                    sums[key] += value
                    counts[key] += 1
                step += 1
                if step % _STEP_LOG_EVERY == 0:
                    progress(
                        f"translator: epoch {epoch} step {step} g_l1 {losses['g_l1']:.4f} "
                        f"d_loss {losses['d_loss']:.4f}"
                    )
                ticker.step()
            val_l1 = float("nan")
            if val_edges is not None:
                recon = translate(generator, val_edges, device=device)
                val_l1 = float(np.mean(np.abs(recon - val)))
            row = {"epoch": epoch, "step": step}
            # The penalty's mean is over the steps that computed it (all of them for gp_every 1).
            row.update({key: sums[key] / max(counts[key], 1) for key in sums})
            row.update({"val_l1": val_l1, "seconds": time.perf_counter() - started})
            history.append(row)
            save_torch(
                {
                    "format": _CHECKPOINT_FORMAT,
                    "generator": generator.state_dict(),
                    "discriminator": discriminator.state_dict(),
                    "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "before_cut": before_cut,
                    "settings": settings.to_dict(),
                    "seed": seed,
                    "data": fingerprint,
                },
                checkpoint_path,
            )
            cut = ", cut short by max_steps" if before_cut is not None else ""
            progress(
                f"translator: epoch {epoch}/{epochs} g_l1 {row['g_l1']:.4f} "
                f"g_adv {row['g_adv']:.3f} d_loss {row['d_loss']:.3f} gp {row['gp']:.3f} "
                f"val_l1 {val_l1:.4f} ({row['seconds']:.1f} s{cut})"
            )
            ticker.epoch_end()

    generator.eval()
    return generator, pd.DataFrame(history, columns=HISTORY_COLUMNS)


def _train_step(
    generator: nn.Module,
    discriminator: nn.Module,
    vgg: nn.Module | None,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    edges: torch.Tensor,
    real: torch.Tensor,
    settings: TranslatorSettings,
    use_amp: bool,
    with_gp: bool = True,
) -> dict[str, float]:
    """One update of both networks, in the order settings.gan_step names; returns the losses
    (without "gp" on a step that skips the penalty, see gp_every)."""
    autocast = torch.autocast(device_type=edges.device.type, dtype=torch.bfloat16, enabled=use_amp)
    with autocast:
        fake = generator(edges)
    if settings.gan_step == "reference":
        # The generator plays the discriminator as it was before this step ...
        g_losses = _generator_update(
            discriminator, vgg, opt_g, edges, real, fake, settings, autocast
        )
        # ... then the discriminator sees a new fake from the updated generator, which is still in
        # train mode, so the fake also has a new dropout mask.
        with torch.no_grad(), autocast:
            fresh = generator(edges)
        d_losses = _discriminator_update(
            discriminator, opt_d, edges, real, fresh, settings, autocast, 1.0, with_gp
        )
    else:
        # pix2pix order: halving the two BCE terms halves the discriminator's BCE gradient.
        d_losses = _discriminator_update(
            discriminator, opt_d, edges, real, fake.detach(), settings, autocast, 0.5, with_gp
        )
        g_losses = _generator_update(
            discriminator, vgg, opt_g, edges, real, fake, settings, autocast
        )
    return {**g_losses, **d_losses}


def _discriminator_update(
    discriminator: nn.Module,
    opt_d: torch.optim.Optimizer,
    edges: torch.Tensor,
    real: torch.Tensor,
    fake: torch.Tensor,
    settings: TranslatorSettings,
    autocast: torch.autocast,
    bce_scale: float,
    with_gp: bool = True,
) -> dict[str, float]:
    """One discriminator step on label-smoothed BCE (real 0.9, fake 0) + the gradient penalty,
    the latter weighted gp_every x lambda_gp on the steps that compute it."""
    with autocast:
        real_logits = discriminator(torch.cat([edges, real], dim=1)).float()
        fake_logits = discriminator(torch.cat([edges, fake], dim=1)).float()
        d_bce = bce_scale * (
            F.binary_cross_entropy_with_logits(
                real_logits, torch.full_like(real_logits, settings.real_label)
            )
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        )
        penalise = with_gp and settings.lambda_gp > 0
        gp = gradient_penalty(discriminator, edges, real, fake) if penalise else None
    d_total = d_bce if gp is None else d_bce + settings.gp_every * settings.lambda_gp * gp
    opt_d.zero_grad(set_to_none=True)
    d_total.backward()
    opt_d.step()
    losses = {"d_loss": float(d_bce.detach())}
    if with_gp:
        losses["gp"] = float(gp.detach()) if gp is not None else 0.0
    return losses


def _generator_update(
    discriminator: nn.Module,
    vgg: nn.Module | None,
    opt_g: torch.optim.Optimizer,
    edges: torch.Tensor,
    real: torch.Tensor,
    fake: torch.Tensor,
    settings: TranslatorSettings,
    autocast: torch.autocast,
) -> dict[str, float]:
    """One generator step on BCE adversarial (fake labelled real) + L1 + the perceptual term."""
    # Frozen, the discriminator's parameters collect no gradient they would not use.
    for parameter in discriminator.parameters():
        parameter.requires_grad_(False)
    try:
        with autocast:
            fake_features, fake_logits = discriminator.forward_features(
                torch.cat([edges, fake], dim=1)
            )
            g_adv = F.binary_cross_entropy_with_logits(
                fake_logits.float(), torch.ones_like(fake_logits.float())
            )
            g_l1 = F.l1_loss(fake.float(), real)
            if settings.perceptual == "feature_matching":
                with torch.no_grad():
                    real_features, _ = discriminator.forward_features(
                        torch.cat([edges, real], dim=1)
                    )
                g_perc = feature_matching_loss(fake_features, real_features)
            elif settings.perceptual == "vgg19":
                # Only the target's features are constant: the term's gradient reaches the fake.
                with torch.no_grad():
                    real_vgg = vgg(real)
                g_perc = F.mse_loss(vgg(fake).float(), real_vgg.float())
            else:
                g_perc = torch.zeros((), device=edges.device)
        g_total = g_adv + settings.lambda_l1 * g_l1 + settings.lambda_perceptual * g_perc
        opt_g.zero_grad(set_to_none=True)
        g_total.backward()
        opt_g.step()
    finally:
        for parameter in discriminator.parameters():
            parameter.requires_grad_(True)
    return {
        "g_adv": float(g_adv.detach()),
        "g_l1": float(g_l1.detach()),
        "g_perc": float(g_perc.detach()),
    }

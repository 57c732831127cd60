"""Edge-to-image translator: pix2pixHD-style generator, conditional PatchGAN, training, inference.

The defaults reproduce the AREPAS reference implementation (Mitic & Langs, MLMI 2025,
arXiv 2509.12905; github.com/cirmuw/arepas; summarised in shared/method/AREPAS.md): a global
generator with 64 base channels, 2 downsamplings, 9 residual blocks with dropout 0.5 and affine
instance norms; a spectral-norm PatchGAN 64-128-256-512-1 on (edges, image); PyTorch's default
weight initialisation; Adam 2e-4, betas (0.5, 0.999), batch 8. Each step updates the generator
first (G loss = BCE adversarial + 100 x L1), then the discriminator on a fresh fake generated
without gradients (D loss = BCE with real label 0.9 + BCE with fake label 0, summed, + 1 x gradient
penalty on real/fake interpolates). Training pairs are 3 blob-swap augmented OpenCV Canny edge maps
per slice, no clean copy. The reference also computes a VGG19 relu3_3 L2 term, but entirely
without gradients, so it does not change the generator's update; "none" reproduces that.

Options that are ours, not the reference's (each a TranslatorSettings field):
- gan_step="discriminator_first": discriminator step first (BCE terms halved), then the generator
  against the updated discriminator on the same fake, as in pix2pix / pix2pixHD.
- init="normal_0.02": pix2pix's N(0, 0.02) conv weights with zero bias.
- affine_norm=False: instance norms without learnable scale and shift.
- perceptual="vgg19" (a VGG19 relu3_3 L2 term that does give a gradient; weights from a local
  file, nothing is downloaded) or "feature_matching" (pix2pixHD's discriminator feature L1).
- edge_detector="skimage", augment_clean=True, swap_style="clean_source": the edge maps and
  augmentation this project used before matching the reference (see arepas.edges).
- gp_every=k > 1: the gradient penalty on every k-th step only, weighted k x lambda_gp, so its
  average pull stays the same ("lazy regularisation", Karras et al., CVPR 2020, StyleGAN2, who
  apply their R1 penalty every 16 minibatches). The penalty's double backward is about 40 % of
  a CPU demo step.
- lr_decay_epochs=k: the learning rate of both networks falls linearly over the last k epochs,
  as pix2pixHD trains (Wang et al., CVPR 2018: constant, then linear decay to zero); epoch e of
  E uses lr x min(1, (E - e + 1) / (k + 1)).
- augment_mirror=True: each augmented copy (never the clean edge map) is mirrored across the
  slice's first axis with probability 1/2, edges and target alike; in the workflow's axial and
  coronal slices (RAS order) that axis is left-right, so on scans registered to a template a
  mirrored healthy slice is still a plausible healthy slice (the workflow refuses it for
  sagittal slices). Mirroring is a standard augmentation of brain MRI networks (e.g. nnU-Net,
  Isensee et al., Nature Methods 2021); the reference mirrors nothing.
- crop_size: train on a random crop_size x crop_size window of each pair (a new position every
  epoch) instead of the whole slice, for speed on large slices; inference uses whole slices.
- max_steps: a budget of generator steps (planned_steps), so that one setting suits cohorts of
  any size; training stops when it is spent, mid-epoch if need be.
Model files written before these options existed load with the values they were trained with.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from arepas.edges import EDGE_DETECTORS, SWAP_STYLES, canny_edges, edge_maps, swap_augment
from arepas.io import check_resumable, save_torch
from arepas.progress import (
    StepProgress,
    batches_per_epoch,
    capped_steps,
    check_max_steps,
    effective_epochs,
)
from arepas.settings import settings_from_dict
from arepas.stacks import StackArray, StackReadError, array_chunks

PERCEPTUAL_CHOICES = ("none", "vgg19", "feature_matching")
GAN_STEP_CHOICES = ("reference", "discriminator_first")
INIT_CHOICES = ("default", "normal_0.02")
# d_loss is the discriminator's BCE part as optimised (summed for "reference", halved for
# "discriminator_first"); the gradient penalty is logged unweighted in gp.
HISTORY_COLUMNS = ["epoch", "step", "g_adv", "g_l1", "g_perc", "d_loss", "gp", "val_l1", "seconds"]
CHECKPOINT_NAME = "last.pt"
_CHECKPOINT_FORMAT = "arepas-translator-checkpoint-2"
_MODEL_FORMAT = "arepas-translator-2"
# Format 1 files predate the settings below; they were trained with these values.
_LEGACY_CHECKPOINT_FORMAT = "arepas-translator-checkpoint-1"
_LEGACY_MODEL_FORMAT = "arepas-translator-1"
LEGACY_SETTINGS = {
    "edge_detector": "skimage",
    "augment_clean": True,
    "swap_style": "clean_source",
    "gan_step": "discriminator_first",
    "init": "normal_0.02",
    "affine_norm": False,
    # Always saved by format 1; the fallback is that format's default.
    "perceptual": "feature_matching",
}
# Settings that may change between an interrupted run and its resumption without changing results.
_RESUME_FREE_SETTINGS = ("epochs", "num_threads", "max_steps")
_STEP_LOG_EVERY = 50


@dataclass(frozen=True)
class TranslatorSettings:
    """Translator architecture and training settings; defaults are the reference implementation's.

    The module docstring lists the options that depart from the reference.
    """

    base_channels: int = 64
    n_downsampling: int = 2
    n_blocks: int = 9
    dropout: float = 0.5
    disc_channels: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 8
    # The reference's `EPOCHS_GEN = 1` (config.py): one pass over the augmented training set,
    # however large the cohort; the readable part of the paper gives no length. `max_steps`
    # caps it (README, "How long training takes").
    epochs: int = 1
    lambda_l1: float = 100.0
    # The reference's VGG19 term carries no gradient, so its effective loss has none ("none").
    # "vgg19" needs ImageNet weights on disk (vgg19_weights): nothing is fetched at run time.
    perceptual: str = "none"
    lambda_perceptual: float = 1.0
    vgg19_weights: str | None = None
    lambda_gp: float = 1.0
    # 1 (reference): the gradient penalty on every step; k: on every k-th, weighted k x lambda_gp.
    gp_every: int = 1
    # 0 (reference): constant learning rate; k: linear decay over the last k epochs (pix2pixHD).
    lr_decay_epochs: int = 0
    real_label: float = 0.9
    gan_step: str = "reference"
    init: str = "default"
    affine_norm: bool = True
    edge_detector: str = "opencv"
    # The reference trains on the augmented copies only; True adds each slice's clean edge map.
    augment_clean: bool = False
    swap_style: str = "reference"
    augment_copies: int = 3
    augment_swaps: int = 20
    augment_mirror: bool = False
    # bfloat16 autocast on CUDA only; ignored on CPU.
    amp: bool = False
    # None leaves torch's thread count alone.
    num_threads: int | None = None
    # Ours, not the reference's: train on random crop_size x crop_size crops of each pair (one
    # position per pair and epoch) instead of whole slices; inference stays on whole slices.
    crop_size: int | None = None
    # Ours: None trains `epochs` epochs; a number stops after that many generator steps (one per
    # batch), mid-epoch if need be. A learning-rate decay then ends at the last epoch started.
    max_steps: int | None = None

    def __post_init__(self) -> None:
        check_max_steps(self.max_steps)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if len(self.betas) != 2:
            raise ValueError(f"betas must have two values, got {self.betas}")
        for name, choices in (
            ("perceptual", PERCEPTUAL_CHOICES),
            ("gan_step", GAN_STEP_CHOICES),
            ("init", INIT_CHOICES),
            ("edge_detector", EDGE_DETECTORS),
            ("swap_style", SWAP_STYLES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("affine_norm", "augment_clean", "augment_mirror"):
            # A quoted "false" in a config would otherwise count as true.
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("base_channels", "disc_channels", "batch_size", "gp_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("n_downsampling", "n_blocks", "epochs", "augment_copies", "augment_swaps",
                     "lr_decay_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not self.augment_clean and self.augment_copies == 0:
            raise ValueError(
                "augment_copies is 0 and augment_clean is false: there would be no training pairs"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.crop_size is not None:
            self._check_crop_size()

    def _check_crop_size(self) -> None:
        crop = self.crop_size
        # bool is an int subclass: a `crop_size: true` in a config must not mean 1.
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 1:
            raise ValueError(f"crop_size must be a positive integer or null, got {crop!r}")
        if crop % self.size_multiple:
            raise ValueError(
                f"crop_size must be a multiple of {self.size_multiple} (2 ** n_downsampling) "
                f"for the generator to return the crop's size, got {crop}"
            )
        if discriminator_grid(crop) < 1:
            raise ValueError(
                f"crop_size {crop} is too small: the discriminator gives no patch logit below "
                f"{_SMALLEST_DISCRIMINATOR_INPUT} pixels a side"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> TranslatorSettings:
        """Settings from a config mapping; unknown keys are an error, missing keys keep defaults."""
        return settings_from_dict(cls, values, "translator")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def size_multiple(self) -> int:
        """Slice sides must be a multiple of this for the generator to return the same size."""
        return 2**self.n_downsampling


# (kernel, stride, padding) of the PatchGAN's convolutions, head included; see PatchDiscriminator.
_DISCRIMINATOR_CONVS = ((4, 2, 1), (4, 2, 1), (4, 2, 1), (4, 1, 1), (4, 1, 1))


def discriminator_grid(side: int) -> int:
    """Side of the PatchGAN's logit grid for side x side inputs (< 1: the input is too small)."""
    for kernel, stride, padding in _DISCRIMINATOR_CONVS:
        if side + 2 * padding < kernel:
            return 0
        side = (side + 2 * padding - kernel) // stride + 1
    return side


_SMALLEST_DISCRIMINATOR_INPUT = next(s for s in range(1, 1024) if discriminator_grid(s) >= 1)


def _saved_settings(values: dict[str, Any], legacy: bool) -> TranslatorSettings:
    # Format 1 files have no entry for the newer settings and were trained with their old values.
    if legacy:
        values = {**LEGACY_SETTINGS, **values}
    return TranslatorSettings.from_dict(values)


# --------------------------------------------------------------------------------------------
# Networks


def _init_weights(module: nn.Module, init: str) -> None:
    # "default" keeps what PyTorch's layer constructors drew (the reference does no more);
    # "normal_0.02" is pix2pix / pix2pixHD's N(0, 0.02) conv weights with zero bias.
    if init == "normal_0.02" and isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _norm(channels: int, affine: bool) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=affine)


class ResidualBlock(nn.Module):
    """pix2pixHD residual block: (pad, conv3, IN, ReLU, dropout, pad, conv3, IN) + identity."""

    def __init__(self, channels: int, dropout: float, affine_norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            _norm(channels, affine_norm),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            _norm(channels, affine_norm),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EdgeToImageGenerator(nn.Module):
    """pix2pixHD global generator mapping a 1-channel edge map to a 1-channel image in [-1, 1]."""

    def __init__(self, settings: TranslatorSettings) -> None:
        super().__init__()
        self.size_multiple = settings.size_multiple
        base = settings.base_channels
        affine = settings.affine_norm
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(1, base, kernel_size=7),
            _norm(base, affine),
            nn.ReLU(inplace=True),
        ]
        channels = base
        for _ in range(settings.n_downsampling):
            layers += [
                nn.Conv2d(channels, 2 * channels, kernel_size=3, stride=2, padding=1),
                _norm(2 * channels, affine),
                nn.ReLU(inplace=True),
            ]
            channels *= 2
        layers += [
            ResidualBlock(channels, settings.dropout, affine) for _ in range(settings.n_blocks)
        ]
        for _ in range(settings.n_downsampling):
            layers += [
                nn.ConvTranspose2d(
                    channels, channels // 2, kernel_size=3, stride=2, padding=1, output_padding=1
                ),
                _norm(channels // 2, affine),
                nn.ReLU(inplace=True),
            ]
            channels //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(channels, 1, kernel_size=7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, edges: torch.Tensor) -> torch.Tensor:
        return self.net(edges)


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN on concat(edges, image): one real/fake logit per receptive-field patch.

    4x4 convolutions with widths base-2base-4base-8base-1 and strides 2,2,2,1,1, spectral norm on
    every convolution and LeakyReLU 0.2 (reference defaults); padding 1 as in pix2pix.
    """

    def __init__(self, settings: TranslatorSettings, in_channels: int = 2) -> None:
        super().__init__()
        base = settings.disc_channels
        widths = [base, 2 * base, 4 * base, 8 * base]
        strides = [2, 2, 2, 1]
        blocks = []
        channels = in_channels
        for width, stride in zip(widths, strides, strict=True):
            conv = nn.Conv2d(channels, width, kernel_size=4, stride=stride, padding=1)
            # Before spectral_norm, which then starts its power iteration from these weights.
            _init_weights(conv, settings.init)
            blocks.append(nn.Sequential(spectral_norm(conv), nn.LeakyReLU(0.2, inplace=True)))
            channels = width
        self.blocks = nn.ModuleList(blocks)
        head = nn.Conv2d(channels, 1, kernel_size=4, stride=1, padding=1)
        _init_weights(head, settings.init)
        self.head = spectral_norm(head)

    def forward_features(self, pair: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Intermediate activations (for feature matching) and the patch logits."""
        features = []
        x = pair
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features, self.head(x)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        return self.forward_features(pair)[1]


def build_generator(settings: TranslatorSettings) -> nn.Module:
    """pix2pixHD global generator (edges, 1 channel -> image, 1 channel, tanh)."""
    generator = EdgeToImageGenerator(settings)
    generator.apply(lambda module: _init_weights(module, settings.init))
    return generator


def build_discriminator(settings: TranslatorSettings) -> nn.Module:
    """Spectral-norm conditional PatchGAN on concat(edges, image) (2 channels)."""
    return PatchDiscriminator(settings)


# Indices of torchvision's vgg19().features up to relu3_3; None marks a ReLU or max-pool.
_VGG19_CONVS_TO_RELU3_3 = {
    0: (3, 64),
    2: (64, 64),
    5: (64, 128),
    7: (128, 128),
    10: (128, 256),
    12: (256, 256),
    14: (256, 256),
}
_VGG19_POOLS = (4, 9)
_VGG19_LAST_INDEX = 15  # relu3_3
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Relu33(nn.Module):
    """VGG19 layers up to relu3_3, laid out like torchvision's so its state dict loads directly."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(_VGG19_LAST_INDEX + 1):
            if index in _VGG19_CONVS_TO_RELU3_3:
                c_in, c_out = _VGG19_CONVS_TO_RELU3_3[index]
                layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
            elif index in _VGG19_POOLS:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Slices are grey in [-1, 1]; ImageNet weights expect RGB in [0, 1], standardised.
        rgb = ((image + 1.0) / 2.0).expand(-1, 3, -1, -1)
        return self.features((rgb - self.mean) / self.std)


def build_vgg19_features(weights_path: str | os.PathLike | None) -> nn.Module:
    """Frozen VGG19 up to relu3_3 from a local torchvision vgg19 ImageNet state dict (.pth)."""
    if weights_path is None or not Path(weights_path).is_file():
        raise ValueError(
            "perceptual='vgg19' needs vgg19_weights: a local .pth file holding torchvision's "
            f"vgg19 ImageNet state dict (nothing is downloaded); got {weights_path!r}"
        )
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    wanted = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features" and int(parts[1]) <= _VGG19_LAST_INDEX:
            wanted[key] = value
    network = VGG19Relu33()
    expected = {k for k in network.state_dict() if k.startswith("features.")}
    missing = sorted(expected - set(wanted))
    if missing:
        raise ValueError(
            f"{weights_path} is not a torchvision vgg19 state dict (missing {missing})"
        )
    network.load_state_dict(wanted, strict=False)
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


# --------------------------------------------------------------------------------------------
# Losses


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


# --------------------------------------------------------------------------------------------
# Training


def _as_slices(array: np.ndarray, settings: TranslatorSettings, name: str) -> np.ndarray:
    # Slices on disk stay there; they are read a batch at a time.
    slices = array if isinstance(array, StackArray) else np.asarray(array, dtype=np.float32)
    if slices.ndim != 3 or slices.shape[1] != slices.shape[2]:
        raise ValueError(f"{name} must have shape (n, S, S), got {slices.shape}")
    if slices.shape[1] % settings.size_multiple:
        raise ValueError(
            f"{name}: slice size {slices.shape[1]} is not a multiple of {settings.size_multiple}"
        )
    return slices


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


def edges_for(settings: TranslatorSettings, slices: np.ndarray) -> np.ndarray:
    """Edge maps of slices (n, S, S) with the detector a translator with these settings expects."""
    return edge_maps(slices, detector=settings.edge_detector)


# Second entry of each training pair's augmentation seed, apart from the batch order's and the
# crops' streams.
_AUGMENT_STREAM = 2
# Apart from the swaps' stream, so mirroring leaves every copy's swaps as they were.
_MIRROR_STREAM = 4


def pairs_per_slice(settings: TranslatorSettings) -> int:
    """Training pairs made from each slice: its clean edge map if augment_clean, then the
    augmented copies."""
    return int(settings.augment_clean) + settings.augment_copies


def training_pair_batch(
    train_slices: np.ndarray, pairs: np.ndarray, settings: TranslatorSettings, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The training pairs numbered `pairs` (edge inputs, target slices), each (len(pairs), S, S)
    float32, computed from the slices they come from alone.

    Pair p is made from slice p // pairs_per_slice: number 0 is its clean edge map when
    augment_clean, the others blob-swap augmented copies of it, each drawn from its own
    generator seeded with (seed, slice, copy). A pair is thus the same in every epoch, in a
    resumed run, in a data-loader worker and in the patch scorer's mining, and only the slices
    of one batch need to be in memory. train_slices may be an array or a StackArray on disk.
    """
    per_slice = pairs_per_slice(settings)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1)
    slice_rows, copies = np.divmod(pairs, per_slice)
    # Each slice once, however many of its copies the batch holds.
    distinct, position = np.unique(slice_rows, return_inverse=True)
    slices = np.asarray(train_slices[distinct], dtype=np.float32)
    clean = [canny_edges(slice_, detector=settings.edge_detector) for slice_ in slices]
    inputs = np.empty((len(pairs), *slices.shape[1:]), dtype=np.float32)
    for k, (row, copy, at) in enumerate(zip(slice_rows, copies, position, strict=True)):
        if settings.augment_clean and copy == 0:
            inputs[k] = clean[at]
            continue
        rng = np.random.default_rng([seed, _AUGMENT_STREAM, int(row), int(copy)])
        inputs[k] = swap_augment(
            clean[at], rng, n_swaps=settings.augment_swaps, style=settings.swap_style
        )
    targets = slices[position]
    for k in np.flatnonzero(mirrored_pairs(settings, pairs, seed)):
        inputs[k] = inputs[k][::-1]
        targets[k] = targets[k][::-1]
    return inputs, targets


def mirrored_pairs(settings: TranslatorSettings, pairs: np.ndarray, seed: int) -> np.ndarray:
    """Which of the training pairs numbered `pairs` are mirrored across the slice's first axis
    (augment_mirror: each augmented copy with probability 1/2, never a clean edge map), so that
    anything read per slice for a pair (its ROI) can be mirrored with it."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1)
    if not settings.augment_mirror:
        return np.zeros(len(pairs), dtype=bool)
    slice_rows, copies = np.divmod(pairs, pairs_per_slice(settings))
    return np.array([
        not (settings.augment_clean and copy == 0)
        and np.random.default_rng([seed, _MIRROR_STREAM, int(row), int(copy)]).random() < 0.5
        for row, copy in zip(slice_rows, copies, strict=True)
    ], dtype=bool)


def training_pairs(
    train_slices: np.ndarray, settings: TranslatorSettings, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (edge input, target slice) pairs train_translator trains on for this seed, all of them.

    Each (m, S, S) float32, m = n x pairs_per_slice, pair p made by training_pair_batch. The set
    depends only on the slices, the settings and the seed, so a resumed run, or anything mining
    pairs from the same set (the patch scorer), gets the same one.
    """
    train = _as_slices(train_slices, settings, "train_slices")
    return training_pair_batch(
        train, np.arange(len(train) * pairs_per_slice(settings)), settings, seed
    )


class _PairSource(torch.utils.data.Dataset):
    """Training pairs made on demand, a batch at a time (in data-loader workers if any).

    A batch that cannot be read is returned as its StackReadError rather than raised: the
    loader would re-raise it in the main process as a plain RuntimeError.
    """

    def __init__(self, slices: np.ndarray, settings: TranslatorSettings, seed: int) -> None:
        self.slices, self.settings, self.seed = slices, settings, seed

    def __len__(self) -> int:
        return len(self.slices) * pairs_per_slice(self.settings)

    def __getitems__(self, pairs: list[int]):
        try:
            inputs, targets = training_pair_batch(self.slices, pairs, self.settings, self.seed)
        except StackReadError as exc:
            return exc
        return torch.from_numpy(inputs).unsqueeze(1), torch.from_numpy(targets).unsqueeze(1)

    def __getitem__(self, pair: int):
        return self.__getitems__([pair])


class _EpochBatches(torch.utils.data.Sampler):
    """The current epoch's batches of pair numbers; the training loop sets them each epoch, so
    persistent workers serve every epoch."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return (batch.tolist() for batch in self.batches)


def _as_loaded(batch):
    return batch


def _quiet_worker(_: int) -> None:
    # A worker only reads and augments; one thread each leaves the cores to the training step.
    # Nothing random is drawn from the worker's own generators (every pair has its own seed),
    # so worker seeding cannot change a batch.
    import cv2

    cv2.setNumThreads(0)


@contextmanager
def _pair_loader(
    slices: np.ndarray, settings: TranslatorSettings, seed: int, num_workers: int
) -> Iterator[tuple[torch.utils.data.DataLoader, _EpochBatches]]:
    import cv2

    batches = _EpochBatches()
    loader = torch.utils.data.DataLoader(
        _PairSource(slices, settings, seed),
        batch_sampler=batches,
        collate_fn=_as_loaded,
        num_workers=num_workers,
        worker_init_fn=_quiet_worker if num_workers else None,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers else None,
    )
    # OpenCV's thread pool, once started, deadlocks forked workers that use it.
    threads = cv2.getNumThreads()
    if num_workers:
        cv2.setNumThreads(0)
    try:
        yield loader, batches
    finally:
        cv2.setNumThreads(threads)
        # Persistent workers end with the loader's iterator.
        del loader


def loader_workers(threads: int) -> int:
    """Data-loader worker processes for a job with `threads` CPUs: none on one CPU (batches are
    then made between steps), else one per CPU beyond the first, at most 8 (a worker makes a
    batch far faster than a step trains on it)."""
    return 0 if threads <= 1 else min(threads - 1, 8)


# Third entry of the crop generator's seed, so crops draw from a stream apart from the batch order.
_CROP_STREAM = 1


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


def crop_corners(seed: int, epoch: int, n: int, side: int, size: int) -> np.ndarray:
    """Top-left (row, column) of each training pair's size x size crop in an epoch, (n, 2).

    A function of (seed, epoch) alone, like the batch order, so a resumed run crops as an
    uninterrupted one; pair i keeps its corner wherever the shuffle puts it.
    """
    rng = np.random.default_rng([seed, epoch, _CROP_STREAM])
    return rng.integers(0, side - size + 1, size=(n, 2))


def crop_pairs(
    edges: torch.Tensor, real: torch.Tensor, corners: np.ndarray, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same size x size window of each pair: (b, 1, S, S) -> (b, 1, size, size)."""
    windows = [
        (slice(None), slice(int(top), int(top) + size), slice(int(left), int(left) + size))
        for top, left in corners
    ]
    cropped_edges = torch.stack([e[w] for e, w in zip(edges, windows, strict=True)])
    cropped_real = torch.stack([r[w] for r, w in zip(real, windows, strict=True)])
    return cropped_edges, cropped_real


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


# --------------------------------------------------------------------------------------------
# Inference and persistence


def translate(
    generator: nn.Module, edges: np.ndarray, batch_size: int = 16, device: str = "cpu"
) -> np.ndarray:
    """Reconstruct slices from edge maps (n, S, S) -> (n, S, S) float32 in [-1, 1].

    Runs without gradients in eval mode (dropout off); the generator is moved to device and its
    train/eval mode is restored afterwards.
    """
    edges = np.asarray(edges, dtype=np.float32)
    if edges.ndim != 3:
        raise ValueError(f"edges must have shape (n, S, S), got {edges.shape}")
    multiple = getattr(generator, "size_multiple", 1)
    if edges.shape[1] % multiple or edges.shape[2] % multiple:
        raise ValueError(f"edge map size {edges.shape[1:]} is not a multiple of {multiple}")
    was_training = generator.training
    generator.to(device)
    generator.eval()
    out = np.empty(edges.shape, dtype=np.float32)
    try:
        with torch.no_grad():
            for first in range(0, len(edges), batch_size):
                batch = torch.from_numpy(edges[first : first + batch_size]).unsqueeze(1)
                recon = generator(batch.to(device)).float().clamp_(-1.0, 1.0)
                out[first : first + batch_size] = recon[:, 0].cpu().numpy()
    finally:
        generator.train(was_training)
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"meta value of type {type(value).__name__} is not JSON-serialisable")


def save_translator(
    path: str | os.PathLike,
    generator: nn.Module,
    settings: TranslatorSettings,
    meta: dict[str, Any],
) -> None:
    """Write generator weights, settings and meta atomically to path.

    meta is stored as JSON (numpy values become Python numbers / lists) so that loading never
    needs to unpickle arbitrary objects.
    """
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    payload = {
        "format": _MODEL_FORMAT,
        "generator": state,
        "settings": settings.to_dict(),
        "meta_json": json.dumps(meta, default=_json_default),
    }
    save_torch(payload, Path(path))


def load_translator(
    path: str | os.PathLike, device: str = "cpu"
) -> tuple[nn.Module, TranslatorSettings, dict[str, Any]]:
    """Read a translator written by save_translator: (generator in eval mode, settings, meta).

    Files from before the reference-matching options get the values they were trained with
    (LEGACY_SETTINGS), so their edges are computed and their generator built as in training.
    """
    payload = torch.load(path, map_location=device, weights_only=True)
    formats = (_MODEL_FORMAT, _LEGACY_MODEL_FORMAT)
    if not isinstance(payload, dict) or payload.get("format") not in formats:
        raise ValueError(f"{path} is not a translator file written by save_translator")
    settings = _saved_settings(payload["settings"], payload["format"] == _LEGACY_MODEL_FORMAT)
    generator = build_generator(settings)
    generator.load_state_dict(payload["generator"])
    generator.to(device)
    generator.eval()
    return generator, settings, json.loads(payload["meta_json"])

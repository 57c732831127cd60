"""The translator's settings (TranslatorSettings), checked when made, and the values that
files written before the newer settings were trained with."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from arepas.edges import EDGE_DETECTORS, SWAP_STYLES
from arepas.progress import check_max_steps
from arepas.settings import settings_from_dict
from arepas.v0_method import V0_TRANSLATOR_SETTINGS

PERCEPTUAL_CHOICES = ("none", "vgg19", "feature_matching")
GAN_STEP_CHOICES = ("reference", "discriminator_first")
INIT_CHOICES = ("default", "normal_0.02")
# The choices of method arepas_v0, the project's earlier version (arepas.v0_method, which the
# workflow's parse imports without torch); files of format 1 predate the settings below and were
# trained with these values.
V0_SETTINGS = V0_TRANSLATOR_SETTINGS


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
    # The reference trains on the augmented copies only; True adds each slice's unaugmented edge
    # map.
    augment_keep_unaugmented: bool = False
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
        for name in ("affine_norm", "augment_keep_unaugmented", "augment_mirror"):
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
        if not self.augment_keep_unaugmented and self.augment_copies == 0:
            raise ValueError(
                "augment_copies is 0 and augment_keep_unaugmented is false: there would be no "
                "training pairs"
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
        values = {**V0_SETTINGS, **values}
    return TranslatorSettings.from_dict(values)

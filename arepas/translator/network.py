"""The translator's networks: the pix2pixHD global generator, the spectral-norm conditional
PatchGAN and the frozen VGG19 features of the optional perceptual term."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from arepas.translator.settings import TranslatorSettings


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

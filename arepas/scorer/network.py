"""The Siamese network: a shared patch embedding, the distance of two embeddings and the
dissimilarity head."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from arepas.scorer.settings import ScorerSettings


ARCHITECTURES = ("reference", "unpadded")


# Zero padding of both 4x4 convolutions: the reference pads by 2 (model_siamese.py), so each
# 16x16 patch is embedded from all its pixels (16 -> 17 -> 8 -> 9 -> 4, 64 x 4 x 4 = 1,024
# features); "unpadded" (ours) uses valid convolutions (16 -> 13 -> 6 -> 3 -> 1, 64 features), so
# the embedding sees only the patch's top-left 13x13 pixels.
ARCHITECTURE_PADDING = {"reference": 2, "unpadded": 0}
_KERNEL = 4


def _stage_size(size: int, padding: int) -> int:
    # 4x4 convolution with `padding` on both sides, then 2x2 average pool (floor).
    return (size + 2 * padding - _KERNEL + 1) // 2


def _feature_size(patch_size: int, padding: int = 0) -> int:
    size = patch_size
    for _ in range(2):
        size = _stage_size(size, padding)
    return size


def smallest_patch_size(architecture: str) -> int:
    """Smallest patch side the given architecture can embed."""
    padding = ARCHITECTURE_PADDING[architecture]
    return next(p for p in range(1, 64) if _feature_size(p, padding) >= 1)


def _pair_distance(emb_a: torch.Tensor, emb_b: torch.Tensor, dim: int = 1) -> torch.Tensor:
    # The floor keeps the gradient of sqrt finite when two embeddings coincide exactly.
    return torch.sqrt(torch.clamp(((emb_a - emb_b) ** 2).sum(dim=dim), min=1e-12))


class SiameseScorer(nn.Module):
    """Shared patch embedding; dissimilarity = sigmoid(linear(batchnorm(distance)))."""

    def __init__(
        self,
        patch_size: int = 16,
        embedding_dim: int = 10,
        architecture: str = "reference",
        head_init: str = "default",
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURE_PADDING:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        self.patch_size = patch_size
        self.architecture = architecture
        self.padding = ARCHITECTURE_PADDING[architecture]
        self.feature_size = _feature_size(patch_size, self.padding)
        if self.feature_size < 1:
            raise ValueError(f"patch_size={patch_size} is too small for the {architecture} network")
        if architecture == "reference":
            # torch's default running-average momentum, as in the reference.
            self.input_norm = nn.BatchNorm2d(1)
        else:
            self.input_norm = nn.BatchNorm2d(1, momentum=None)  # cumulative average
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(1, 32, _KERNEL, padding=self.padding),
                nn.Conv2d(32, 64, _KERNEL, padding=self.padding),
            ]
        )
        self.fc = nn.Linear(64 * self.feature_size**2, embedding_dim)
        self.head_norm = nn.BatchNorm1d(1)
        self.head_linear = nn.Linear(1, 1)
        if head_init == "increasing":
            # Ours (with loss="detached_head"): start the head as an increasing map of the
            # standardised distance, so early accuracy is not pinned below 50 % by a random
            # negative slope.
            with torch.no_grad():
                self.head_linear.weight.fill_(1.0)
                self.head_linear.bias.zero_()
        elif head_init != "default":
            raise ValueError(f"head_init must be 'default' or 'increasing', got {head_init!r}")

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(patches)
        for conv in self.convs:
            x = F.avg_pool2d(torch.tanh(conv(x)), 2)
        return torch.tanh(self.fc(x.flatten(1)))

    def distance(self, patches_a: torch.Tensor, patches_b: torch.Tensor) -> torch.Tensor:
        if self.architecture == "reference":
            # Two passes, as in the reference: in training the input batch norm normalises real
            # and reconstructed patches with their own batch statistics.
            return _pair_distance(self.embed(patches_a), self.embed(patches_b))
        # Ours: one batch through the shared embedding, so its batch norm sees both sides.
        emb = self.embed(torch.cat([patches_a, patches_b]))
        return _pair_distance(*emb.split(patches_a.shape[0]))

    def logit_from_distance(self, distance: torch.Tensor) -> torch.Tensor:
        return self.head_linear(self.head_norm(distance.reshape(-1, 1))).reshape(distance.shape)

    def forward(self, patches_a: torch.Tensor, patches_b: torch.Tensor) -> torch.Tensor:
        """Dissimilarity p in (0, 1) of (N, 1, p, p) patch pairs; high = dissimilar."""
        return torch.sigmoid(self.logit_from_distance(self.distance(patches_a, patches_b)))


def build_siamese(settings: ScorerSettings) -> SiameseScorer:
    """A freshly initialised scorer for the settings' patch size and embedding size."""
    return SiameseScorer(
        settings.patch_size,
        settings.embedding_dim,
        settings.architecture,
        head_init="increasing" if settings.loss == "detached_head" else "default",
    )

"""Reconstruction: a trained generator translates edge maps back into slices."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


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

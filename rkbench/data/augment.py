"""Training augmentation on whole batches of tensors (no per-image PIL, no DataLoader workers)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding plus horizontal flip, each image its own offsets."""
    batch, channels, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    device = x.device
    dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(device)
    dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(device)
    flip = (torch.rand(batch, generator=generator) < 0.5).to(device)
    rows = torch.arange(height, device=device)[None, :] + dy[:, None]  # [B, H]
    cols = torch.arange(width, device=device)[None, :].expand(batch, width)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]  # flipping = reversed column order
    index_b = torch.arange(batch, device=device)[:, None, None, None]
    index_c = torch.arange(channels, device=device)[None, :, None, None]
    return padded[index_b, index_c, rows[:, None, :, None], cols[:, None, None, :]]


AUGMENTATIONS = {"none": lambda x, generator=None: x, "crop_flip": random_crop_flip}


def augment(x: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    return AUGMENTATIONS[kind](x, generator=generator)

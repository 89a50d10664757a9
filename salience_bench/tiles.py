"""Block (tile) sums over 2-D tensors, shared by the SMT block scorer and block masks."""

from __future__ import annotations

import torch


def block_sums(x: torch.Tensor, block: int) -> torch.Tensor:
    """Sums over non-overlapping block × block tiles of a 2-D tensor (edge tiles may be smaller)."""
    rows, cols = x.shape
    padded = torch.nn.functional.pad(x.float(), (0, -cols % block, 0, -rows % block))
    return padded.reshape(padded.shape[0] // block, block, padded.shape[1] // block, block).sum(dim=(1, 3))


def expand_tiles(tiles: torch.Tensor, block: int, shape: torch.Size) -> torch.Tensor:
    """Each tile's value repeated over its block × block entries, cropped to ``shape``."""
    full = tiles.repeat_interleave(block, dim=0).repeat_interleave(block, dim=1)
    return full[: shape[0], : shape[1]].contiguous()

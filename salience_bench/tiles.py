"""Block (tile) sums over 2-D tensors, shared by the SMT block scorer and block masks.

Where padding to whole tiles would more than double the tensor, tiles are summed by index instead,
so memory stays O(rows × cols) whatever the block size.
"""

from __future__ import annotations

import torch


def _tile_index(size: int, block: int, device: torch.device) -> torch.Tensor:
    return torch.arange(size, device=device) // block


def block_sums(x: torch.Tensor, block: int) -> torch.Tensor:
    """Sums over non-overlapping block × block tiles of a 2-D tensor (edge tiles may be smaller)."""
    rows, cols = x.shape
    x = x.float()
    tile_rows, tile_cols = -(-rows // block), -(-cols // block)
    if tile_rows * tile_cols * block * block <= 2 * rows * cols:  # little padding: one reshape
        padded = torch.nn.functional.pad(x, (0, tile_cols * block - cols, 0, tile_rows * block - rows))
        return padded.reshape(tile_rows, block, tile_cols, block).sum(dim=(1, 3))
    by_row = torch.zeros(tile_rows, cols, dtype=torch.float32, device=x.device)
    by_row.index_add_(0, _tile_index(rows, block, x.device), x)
    out = torch.zeros(tile_rows, tile_cols, dtype=torch.float32, device=x.device)
    return out.index_add_(1, _tile_index(cols, block, x.device), by_row)


def expand_tiles(tiles: torch.Tensor, block: int, shape: torch.Size) -> torch.Tensor:
    """Each tile's value repeated over its block × block entries, cropped to ``shape``."""
    rows, cols = shape[0], shape[1]
    return tiles[_tile_index(rows, block, tiles.device)][:, _tile_index(cols, block, tiles.device)].contiguous()

"""Batches of token-id rows of different lengths (one helper for extraction, datagen, the AV and steering)."""

from __future__ import annotations

import torch


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids [n, width] right-padded with `pad_id`, and the attention mask (1 on real tokens): each row's tokens keep
    their positions 0..len-1, as in an unpadded forward."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask

"""Sentence embeddings from an encoder's token embeddings, pooled as the model's
sentence-transformers configuration says (``1_Pooling/config.json``): one home for the
smoke test of a registered model and the engine that serves it, so both embed alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ptdeploy.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len", "lasttoken")
DEFAULT_POOLING: dict[str, Any] = {"mode": "cls", "normalize": False}


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: dict[str, Any]) -> torch.Tensor:
    """Sentence embeddings from token embeddings, as sentence-transformers' Pooling does."""
    import torch

    mode = pooling.get("mode", "cls")
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode in ("mean", "mean_sqrt_len"):
        summed = (hidden * m).sum(dim=1)
        lengths = m.sum(dim=1).clamp(min=1e-9)
        pooled = summed / (lengths if mode == "mean" else lengths.sqrt())
    elif mode == "max":
        pooled = hidden.masked_fill(m == 0, -1e9).max(dim=1).values
    elif mode == "lasttoken":  # right padding: the last valid position of each row
        last = mask.sum(dim=1) - 1
        pooled = hidden[torch.arange(hidden.shape[0]), last]
    else:
        raise ModelLoadError(f"pooling mode {mode!r} is not supported ({', '.join(POOLING_MODES)})")
    if pooling.get("normalize"):
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
    return pooled

"""Pooling of final hidden states into one vector per text."""

from __future__ import annotations

import torch

POOLINGS = ("mean", "last")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str = "mean") -> torch.Tensor:
    """Pool (batch, seq, dim) hidden states over the non-padding positions of ``attention_mask``.

    ``mean`` averages the real tokens; ``last`` takes the last real token (what a causal LM has seen
    the whole text at). Both ignore padding, on either side, so a text's vector does not depend on the
    batch it was padded in.
    """
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if method == "mean":
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    if method == "last":
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (attention_mask * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {method!r}; expected one of {POOLINGS}")

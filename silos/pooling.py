"""Pooling of final hidden states into one vector per text."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch takes seconds to import: a spec names a pooling without it
    import torch

# mean and last: this project's choices; cls and max: what a sentence-transformers model may state
# as its own (silos.encoder_spec).
POOLINGS = ("mean", "last", "cls", "max")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool (batch, seq, dim) hidden states over the non-padding positions of ``attention_mask``.

    ``mean`` averages the real tokens; ``last`` takes the last real token (what a causal LM has seen
    the whole text at); ``cls`` the first token; ``max`` the largest value of each dimension over
    the real tokens. All ignore padding, on either side, so a text's vector does not depend on the
    batch it was padded in (``cls`` needs the right padding the encoder uses).
    """
    import torch

    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if method == "mean":
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    if method == "last":
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (attention_mask * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if method == "cls":
        return hidden[:, 0]
    if method == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    raise ValueError(f"unknown pooling {method!r}; expected one of {POOLINGS}")

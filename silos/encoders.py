"""Text encoders: a transformers model, its final hidden states, pooled — the silo's embedding space."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from silos.pooling import POOLINGS, pool


class Encoder:
    """Embed texts with a transformers model: final hidden state (post final norm), pooled.

    Build one from a model name or path with :meth:`from_pretrained`, or wrap an in-memory model
    (tests build tiny ones from a config). Causal LMs keep their LM head (``model``) for
    generation; embeddings come from their base model.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str = "model",
        pooling: str = "mean",
        max_length: int = 128,
        batch_size: int = 32,
        normalize: bool = False,
        show_progress: bool = True,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        if max_length < 1 or batch_size < 1:
            raise ValueError("max_length and batch_size must be positive")
        self.model = model.eval()
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.name = name
        self.pooling = pooling
        self.max_length = max_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.show_progress = show_progress

    @classmethod
    def from_pretrained(cls, path: str, *, causal: bool = False, name: str | None = None, **kwargs):
        loader = AutoModelForCausalLM if causal else AutoModel
        hf_logging.disable_progress_bar()  # a load takes a second; its bar only adds noise
        model = loader.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model, tokenizer, name=name or path, **kwargs)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def fingerprint(self) -> str:
        """What determines the embeddings besides the texts (for the embedding cache key)."""
        return f"{self.name}|{self.pooling}|{self.max_length}|norm={self.normalize}"

    def _never_empty(self, ids: torch.Tensor,
                     mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A text that tokenizes to nothing (empty, whitespace; a tokenizer that adds no special
        tokens) gets one unknown token: a model cannot run on zero positions, and one empty text
        must not fail its whole batch."""
        empty = mask.sum(dim=1) == 0
        if not bool(empty.any()):
            return ids, mask
        tok = self.tokenizer
        fallback = next((t for t in (tok.unk_token_id, tok.eos_token_id, tok.pad_token_id)
                         if t is not None), 0)
        if ids.shape[1] == 0:
            ids = torch.full((len(ids), 1), fallback, dtype=ids.dtype)
            mask = torch.zeros((len(mask), 1), dtype=mask.dtype)
        ids, mask = ids.clone(), mask.clone()
        ids[empty, 0] = fallback
        mask[empty, 0] = 1
        return ids, mask

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into a (n, dim) float32 array."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one string")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("every text must be a str")
        base = self.model.base_model if self.model is not self.model.base_model else self.model
        # Longest first: batches of similar lengths waste less padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        batches = range(0, len(order), self.batch_size)
        show = self.show_progress and len(batches) > 1
        for start in tqdm(batches, desc=f"embed {self.name}", unit="batch", disable=not show,
                           mininterval=2.0):
            index = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] or " " for i in index],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            ids, mask = self._never_empty(batch["input_ids"], batch["attention_mask"])
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = pool(hidden, mask, self.pooling)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[index] = pooled.float().numpy()
        return out

"""Experiment 4: cross-model generation — A's hidden states, mapped into B's space, decoded by B's head.

Token positions are paired across the two tokenizers by character offsets, as in the paper: each
token of A is paired with the first token of B whose end offset reaches A's. The map is a ridge
``AffineMap`` from A's final (post-norm) hidden states to B's on the paired positions of public
texts. It is scored where both models have read exactly the same characters (A's and B's token end
at the same offset): there B's LM head on the mapped state should predict what B itself predicts.
The tokenizer match rate is the share of A's tokens that B splits identically (same span).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from crypto import (
    CkksKit,
    CKKSParams,
    EncryptedLinearHead,
    SinglePlan,
    decrypt_logits,
    encrypt_queries,
)
from silos.alignment import AffineMap
from silos.encoders import DTYPES
from silos.registry import resolve_model
from simulations.evaluation.stats import cluster_mean_ci


@dataclass
class TokenStates:
    """One text through one model: final hidden states and each token's character span."""

    states: np.ndarray  # (T, d) float32, post final norm
    spans: np.ndarray  # (T, 2) start, end; special tokens have start == end


class CausalLM:
    """A packaged causal LM: final hidden states, and its LM head as a plaintext linear layer."""

    def __init__(self, name: str, cache_dir: Path, *, max_tokens: int,
                 dtype: str = "float32") -> None:
        """``dtype``: what the model computes in (bfloat16 runs a 1.5B model ~4x faster on this
        CPU, in half its memory); states and logits come back as float32 either way."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model(name, cache_dir=cache_dir).path
        self.name, self.max_tokens, self.dtype = name, max_tokens, dtype
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        head = self.model.get_output_embeddings()
        self.head_weight = head.weight.detach().float()  # (vocab, d)
        self.head_bias = None if head.bias is None else head.bias.detach().float()
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)

    @torch.inference_mode()
    def states(self, text: str) -> TokenStates:
        batch = self.tokenizer(text, return_offsets_mapping=True, truncation=True,
                               max_length=self.max_tokens, return_tensors="pt")
        hidden = self.model.base_model(input_ids=batch["input_ids"]).last_hidden_state[0]
        return TokenStates(hidden.float().numpy(), batch["offset_mapping"][0].numpy())

    @torch.inference_mode()
    def logits(self, states: np.ndarray) -> np.ndarray:
        """The LM head (with Gemma's soft-capping where configured) on hidden states."""
        out = torch.from_numpy(np.asarray(states, np.float32)) @ self.head_weight.T
        if self.head_bias is not None:
            out = out + self.head_bias
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out.numpy()

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    @torch.inference_mode()
    def perplexity(self, prompt: str, continuation: str) -> float:
        """B's perplexity of ``continuation`` after ``prompt`` (its tokens starting at or after it)."""
        batch = self.tokenizer(prompt + continuation, return_offsets_mapping=True,
                               return_tensors="pt")
        ids, spans = batch["input_ids"][0], batch["offset_mapping"][0]
        logits = self.model(input_ids=batch["input_ids"]).logits[0].float()
        nll = torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="none")
        mine = spans[1:, 0] >= len(prompt)
        return float(torch.exp(nll[mine].mean())) if mine.any() else float("nan")


def all_states(model: CausalLM, texts: dict[str, list[str]]) -> dict[str, list[TokenStates]]:
    return {part: [model.states(t) for t in tqdm(items, desc=f"states {model.name} ({part})",
                                                   mininterval=5.0)]
            for part, items in texts.items()}


def pair_positions(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each real token of A, the first B token whose end offset reaches A's end.

    Returns A indices, B indices, and whether the pair's spans are identical (same split).
    """
    real_a = np.flatnonzero(a[:, 1] > a[:, 0])
    real_b = np.flatnonzero(b[:, 1] > b[:, 0])
    if not len(real_a) or not len(real_b):
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, bool)
    where = np.searchsorted(b[real_b, 1], a[real_a, 1], side="left")
    keep = where < len(real_b)
    ia, ib = real_a[keep], real_b[where[keep]]
    same = (a[ia, 0] == b[ib, 0]) & (a[ia, 1] == b[ib, 1])
    return ia, ib, same


class TokenMap:
    """Ridge map between two models' hidden states, each scaled to unit RMS first."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def fit(self, X: np.ndarray, Y: np.ndarray) -> TokenMap:
        self.x_rms_ = float(np.sqrt(np.mean(np.square(X, dtype=np.float64))))
        self.y_rms_ = float(np.sqrt(np.mean(np.square(Y, dtype=np.float64))))
        self.map_ = AffineMap(self.alpha).fit(X / self.x_rms_, Y / self.y_rms_)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return self.map_.transform(np.asarray(X) / self.x_rms_) * self.y_rms_


def agreement(mapped_logits: np.ndarray, own_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position: does the mapped top-1 equal B's own prediction; is B's top-1 in the mapped top-5.

    Logits over a 262k vocabulary are 1 MiB per position: callers keep these booleans, not them.
    """
    own = own_logits.argmax(axis=1)
    top5 = np.argpartition(-mapped_logits, 5, axis=1)[:, :5]
    return mapped_logits.argmax(axis=1) == own, (top5 == own[:, None]).any(axis=1)


def greedy(a: CausalLM, b: CausalLM, mapping: TokenMap | None, prompt: str, n: int) -> str:
    """Greedy continuation decoded by B's head: from A's mapped state, or B's own (``mapping=None``)."""
    text = ""
    for _ in range(n):
        if mapping is None:
            state = b.states(prompt + text).states[-1:]
        else:
            state = mapping.transform(a.states(prompt + text).states[-1:])
        token = int(b.logits(state).argmax())
        if token == b.tokenizer.eos_token_id:
            break
        text += b.token_text(token)
    return text


def encrypted_head_cost(b: CausalLM, mapped: np.ndarray, slice_rows: int, preset: dict) -> dict:
    """B's LM head under CKKS on one query, for ``slice_rows`` vocabulary rows; the full vocabulary
    extrapolated linearly (the single path's cost grows with the number of output ciphertexts)."""
    params = CKKSParams.from_config(preset)
    querier = CkksKit.generate(params)
    z = mapped[:1].astype(np.float64)
    zs = float(np.abs(z).max() / (params.max_abs_input / 2))  # keep |z| within the encryptable bound
    V = b.head_weight[:slice_rows].numpy().astype(np.float64).T * zs
    head = EncryptedLinearHead(V, np.zeros(slice_rows))
    plan = SinglePlan(V.shape[0], slice_rows, querier.slots)
    provider = CkksKit.from_public(querier.public_bytes(plan.rotation_steps))
    started = time.perf_counter()
    blobs = encrypt_queries(querier, z / zs, path="single", n_classes=slice_rows)
    encrypted = time.perf_counter()
    out = head.evaluate(provider, blobs, path="single", n=1)
    evaluated = time.perf_counter()
    logits = decrypt_logits(querier, out, path="single", n=1, n_classes=slice_rows)
    done = time.perf_counter()
    expected = (z / zs) @ V
    error = float(np.abs(logits - expected).max())
    vocab = b.head_weight.shape[0]
    return {"slice_rows": slice_rows, "vocab": vocab, "slice_seconds": done - started,
            "encrypt_s": encrypted - started, "evaluate_s": evaluated - encrypted,
            "decrypt_s": done - evaluated, "slice_max_abs_error": error,
            "slice_max_relative_error": error / float(np.abs(expected).max()),
            "bytes_per_token_slice": sum(map(len, blobs)) + sum(map(len, out)),
            "estimated_seconds_per_token": (done - started) * vocab / slice_rows,
            "estimated_mib_per_token": (sum(map(len, blobs)) + sum(map(len, out)))
            * vocab / slice_rows / 2**20}


def run_direction(a: CausalLM, b: CausalLM, states: dict[str, dict[str, list[TokenStates]]],
                  prompts: list[str], *, alpha: float, new_tokens: int) -> dict:
    """Fit A → B on the fit texts' states; agreement on the test texts; greedy continuations.

    ``states[model][part]``: one model's :class:`TokenStates` of the ``fit`` and ``test`` texts
    (computed once, shared by both directions).
    """
    xs, ys = [], []
    for sa, sb in zip(states[a.name]["fit"], states[b.name]["fit"], strict=True):
        ia, ib, _ = pair_positions(sa.spans, sb.spans)
        xs.append(sa.states[ia])
        ys.append(sb.states[ib])
    mapping = TokenMap(alpha).fit(np.vstack(xs), np.vstack(ys))
    n_a = n_same = 0
    top1, top5, boundary = [], [], []
    for sa, sb in zip(states[a.name]["test"], states[b.name]["test"], strict=True):
        ia, ib, same = pair_positions(sa.spans, sb.spans)
        n_a += int(np.sum(sa.spans[:, 1] > sa.spans[:, 0]))
        n_same += int(same.sum())
        hit1, hit5 = agreement(b.logits(mapping.transform(sa.states[ia])), b.logits(sb.states[ib]))
        top1.append(hit1)
        top5.append(hit5)
        boundary.append(sa.spans[ia, 1] == sb.spans[ib, 1])  # both have read the same characters
    # Positions of one text are correlated: their intervals resample whole texts.
    top1_ci = cluster_mean_ci([t[b] for t, b in zip(top1, boundary, strict=True)])
    top5_ci = cluster_mean_ci([t[b] for t, b in zip(top5, boundary, strict=True)])
    top1, top5, boundary = (np.concatenate(v) for v in (top1, top5, boundary))
    examples = []
    for prompt in tqdm(prompts, desc=f"generate {a.name}→{b.name}", mininterval=5.0):
        cross = greedy(a, b, mapping, prompt, new_tokens)
        own = greedy(a, b, None, prompt, new_tokens)
        examples.append({"prompt": prompt, "cross": cross, "own": own,
                         "cross_perplexity": b.perplexity(prompt, cross),
                         "own_perplexity": b.perplexity(prompt, own)})
    return {
        "model_a": a.name, "model_b": b.name,
        "top1_agreement": float(top1[boundary].mean()),
        "top5_agreement": float(top5[boundary].mean()),
        "top1_agreement_ci": top1_ci, "top5_agreement_ci": top5_ci,
        "top1_agreement_all_pairs": float(top1.mean()),
        "top5_agreement_all_pairs": float(top5.mean()),
        "tokenizer_match_rate": n_same / max(n_a, 1),
        "n_fit_positions": int(sum(len(x) for x in xs)),
        "n_scored_positions": int(boundary.sum()),
        "median_cross_perplexity": float(np.median([e["cross_perplexity"] for e in examples])),
        "median_own_perplexity": float(np.median([e["own_perplexity"] for e in examples])),
        "examples": examples, "mapping": mapping,
    }

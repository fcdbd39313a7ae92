"""Text encoders: a transformers model, its final hidden states, pooled — the silo's embedding space.

Where and how the model runs is the ``encoder.*`` config: ``device`` (auto, cpu, cuda), ``dtype``
(auto, float32, bfloat16, float16), ``threads`` (torch's CPU threads while embedding) and
``quantize`` (null or int8: dynamic int8 Linear layers, CPU only). Embeddings always come back as
float32 numpy arrays, whatever the model computes in. The CUDA path follows the torch and
transformers documentation but has not been run on a GPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

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

from silos.embedding_cache import encoder_fingerprint
from silos.encoder_spec import EncoderSpec
from silos.pooling import POOLINGS, pool

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
QUANTIZATIONS = (None, "int8")


def resolve_device(device: str, *, quantize: str | None = None) -> str:
    """``encoder.device`` as it will run: ``auto`` is cuda when torch sees a CUDA device, unless a
    CPU-only quantisation was asked for; an explicit ``cuda`` without one is refused, never
    silently moved to the CPU."""
    if device not in DEVICES:
        raise ValueError(f"encoder.device must be one of {', '.join(DEVICES)}; got {device!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"encoder.quantize must be null or int8; got {quantize!r}")
    if device == "auto":
        return "cuda" if quantize is None and torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"encoder.device=cuda, but torch {torch.__version__} sees no CUDA device "
                f"(built with CUDA {torch.version.cuda}); set encoder.device=cpu or auto")
        if quantize is not None:
            raise ValueError(
                f"encoder.quantize={quantize} is CPU only (torch's dynamic quantisation has no CUDA "
                "kernels); set encoder.device=cpu, or encoder.quantize=null to run on cuda")
    return device


def resolve_dtype(dtype: str, *, device: str, quantize: str | None = None) -> str:
    """``encoder.dtype`` as it will run on the resolved ``device``: ``auto`` is bfloat16 on a GPU
    with native bfloat16 (compute capability 8+, or ROCm), float32 elsewhere (float16 overflows in
    some models' hidden states, and CPU half precision is slow without AMX)."""
    if dtype not in DTYPES:
        raise ValueError(f"encoder.dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if dtype == "auto":
        native_bf16 = device == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        dtype = "bfloat16" if native_bf16 and quantize is None else "float32"
    if quantize is not None and dtype != "float32":
        raise ValueError(f"encoder.quantize={quantize} quantises a float32 model; got "
                         f"encoder.dtype={dtype} (set it to float32 or auto)")
    return dtype


def check_threads(threads: int | None) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"encoder.threads must be null (torch's default) or a positive integer; "
                         f"got {threads!r}")
    return threads


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``threads`` for the block, and restored after it.

    ``torch.set_num_threads`` is process-wide: torch code that runs in another Python thread
    during the block sees the same count. Inter-op threads and the tokenizers' own pool are left
    alone (torch allows setting the former once per process only).
    """
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# What torch.ao's dynamic quantisation warns each time it runs: its deprecation in favour of torchao
# (not a dependency here), and the quantised-tensor constructors it calls.
_QUANT_NOISE = r"torch\.ao\.quantization is deprecated|torch\.quantize_per_tensor"


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``torch.nn.Linear`` by a dynamically quantised one, in place: int8 weights
    with one scale per output channel, activations quantised per tensor on the fly. ~4x smaller
    Linear weights; embeddings, norms and attention softmax stay float32.

    Per-channel weight scales because per-tensor ones lose most small weights next to a few large
    ones (MPNet's FFN output layers: max/mean ~200): measured on 64 BBC texts, mean cosine to
    float32 0.57 → 0.68 (MPNet), 0.945 → 0.981 (MiniLM), at the same speed. The per-tensor
    activation scale is what is left: reports/encoders measures what it costs downstream.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_QUANT_NOISE)
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8, inplace=True)


class Encoder:
    """Embed texts with a transformers model: final hidden state (post final norm), pooled.

    Build one from a model name or path with :meth:`from_pretrained`, or wrap an in-memory model
    (tests build tiny ones from a config). Causal LMs keep their LM head (``model``) for
    generation; embeddings come from their base model. The encoder owns ``model``: it is moved,
    cast and quantised in place. How it embeds is ``spec`` (:class:`EncoderSpec`, from the
    ``encoder`` config: the code has no defaults of its own); ``device`` and ``dtype`` hold what
    the model runs as, ``auto`` resolved.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 spec: EncoderSpec, *, show_progress: bool = True) -> None:
        if spec.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {spec.pooling!r}; expected one of {POOLINGS}")
        if spec.max_length < 1 or spec.batch_size < 1:
            raise ValueError("max_length and batch_size must be positive")
        self.device = resolve_device(spec.device, quantize=spec.quantize)
        self.dtype = resolve_dtype(spec.dtype, device=self.device, quantize=spec.quantize)
        self.threads = check_threads(spec.threads)
        self.quantize = spec.quantize
        model = model.eval().to(device=self.device, dtype=DTYPES[self.dtype])
        if spec.quantize == "int8":
            model = quantize_int8(model)
        self.model = model
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.name = spec.model
        self.pooling = spec.pooling
        self.max_length = spec.max_length
        self.batch_size = spec.batch_size
        self.normalize = spec.normalize
        self.show_progress = show_progress

    @classmethod
    def from_pretrained(cls, path: str, spec: EncoderSpec, *, causal: bool = False,
                        show_progress: bool = True) -> Encoder:
        """Load ``path`` straight in the dtype it will run in (a bfloat16 model never holds a
        float32 copy); the options are checked before any weight is read."""
        resolved = resolve_device(spec.device, quantize=spec.quantize)
        load_dtype = resolve_dtype(spec.dtype, device=resolved, quantize=spec.quantize)
        check_threads(spec.threads)
        loader = AutoModelForCausalLM if causal else AutoModel
        hf_logging.disable_progress_bar()  # a load takes a second; its bar only adds noise
        model = loader.from_pretrained(path, dtype=DTYPES[load_dtype])
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model, tokenizer, replace(spec, device=resolved, dtype=load_dtype),
                   show_progress=show_progress)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def fingerprint(self) -> str:
        """What determines the embeddings besides the texts (the embedding cache key): see
        :func:`silos.embedding_cache.encoder_fingerprint`."""
        return encoder_fingerprint(self.name, pooling=self.pooling, max_length=self.max_length,
                                   normalize=self.normalize, dtype=self.dtype,
                                   quantize=self.quantize)

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

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into a (n, dim) float32 array, on ``threads`` CPU threads if set."""
        with torch_threads(self.threads):
            return self._encode(texts)

    @torch.inference_mode()
    def _encode(self, texts: Sequence[str]) -> np.ndarray:
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
            ids, mask = ids.to(self.device), mask.to(self.device)
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = pool(hidden.float(), mask, self.pooling)  # sums in float32, whatever the dtype
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[index] = pooled.cpu().numpy()
        return out

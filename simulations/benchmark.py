"""The benchmark preset: one labelled corpus, split once (seeded), written as the three data roles.

The product reads three sources: the public corpus, a provider's task data, a querier's texts.
The benchmark cuts one corpus into disjoint public, private and query parts and writes each as the
file of its role (``<run.output_dir>/data/``), then names them in the config: the silos run the
same code as with any organisation's own data. The query file keeps the corpus labels (a querier
with labelled texts gets accuracies); texts of ``holdout_classes`` stay in the queries but not in
the task's data, and ``ood`` adds texts of another corpus labelled ``OOD_NAME``: both are
out-of-distribution for the provider's head.

Used where the preset applies: ``public.source`` is null (the default).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from conf import active_silos
from silos.data import TextDataset, load_corpus, restated_as_config_keys
from silos.saving import atomic_write

OOD_NAME = "<ood>"  # the label of an added out-of-distribution text (no class of any task)


@dataclass(frozen=True)
class Split:
    """Disjoint index sets into one corpus; recorded in every run so a result names its data."""

    public: np.ndarray
    private: np.ndarray
    query: np.ndarray
    seed: int

    def summary(self) -> dict:
        def digest(ix: np.ndarray) -> str:
            return hashlib.sha256(np.asarray(ix, dtype=np.int64).tobytes()).hexdigest()[:16]

        return {
            "seed": self.seed,
            **{f"n_{k}": len(getattr(self, k)) for k in ("public", "private", "query")},
            **{f"sha_{k}": digest(getattr(self, k)) for k in ("public", "private", "query")},
        }


def split_corpus(n: int, *, n_public: int, n_private: int, n_query: int, seed: int) -> Split:
    """A seeded permutation of ``range(n)`` cut into public, private and query parts (disjoint)."""
    wanted = n_public + n_private + n_query
    if min(n_public, n_private, n_query) < 1:
        raise ValueError("n_public, n_private and n_query must each be at least 1")
    if wanted > n:
        raise ValueError(f"the corpus has {n} texts; the split asks for {wanted}")
    order = np.random.default_rng(seed).permutation(n)
    return Split(
        public=np.sort(order[:n_public]),
        private=np.sort(order[n_public : n_public + n_private]),
        query=np.sort(order[n_public + n_private : wanted]),
        seed=seed,
    )


def task_name(corpus: str) -> str:
    """The preset's task: the corpus' name, or its file name without suffix for a path."""
    return Path(corpus).stem if corpus.endswith((".csv", ".jsonl", ".json")) else \
        corpus.rsplit("/", 1)[-1]


def _corpus(name: str, key: str, **columns) -> TextDataset:
    """``load_corpus``, its errors restated as the config key to change."""
    keys = {columns.get("label_column", "label"): "dataset.label_column",
            columns.get("text_column", "text"): "dataset.text_column"}
    with restated_as_config_keys(name, key, keys):
        return load_corpus(name, **columns)


def benchmark_rows(cfg: DictConfig) -> tuple[dict[str, list[dict]], Split]:
    """The rows of the preset's three roles (public, task, queries) and the split they come from."""
    d = cfg.dataset
    corpus = _corpus(str(d.name), "dataset.name", text_column=str(d.text_column),
                     label_column=str(d.label_column), hf_split=str(d.hf_split))
    sizes = {"n_public": int(d.n_public), "n_private": int(d.n_private), "n_query": int(d.n_query)}
    stated = " + ".join(f"dataset.{k}={v}" for k, v in sizes.items())
    if min(sizes.values()) < 1:
        raise ValueError(f"{stated}: each must be at least 1")
    if sum(sizes.values()) > len(corpus):
        raise ValueError(f"{stated} = {sum(sizes.values()):,} texts, but the corpus {d.name!r} "
                         f"has {len(corpus):,}; lower dataset.n_public, n_private or n_query")
    split = split_corpus(len(corpus), seed=int(cfg.run.seed), **sizes)
    held_out = [str(c) for c in d.get("holdout_classes", []) or []]
    unknown = set(held_out) - set(corpus.label_names)
    if unknown:
        raise ValueError(f"dataset.holdout_classes={held_out}: {sorted(unknown)} are not classes "
                         f"of the corpus {corpus.label_names}")
    if len(set(corpus.label_names) - set(held_out)) < 2:
        raise ValueError(f"dataset.holdout_classes={held_out} leaves fewer than two classes")
    names = corpus.label_names
    rows = {
        "public": [{"text": corpus.texts[i]} for i in split.public],
        "task": [{"text": corpus.texts[i], "label": names[corpus.labels[i]]}
                 for i in split.private if names[corpus.labels[i]] not in held_out],
        "queries": [{"id": str(i), "text": corpus.texts[i], "label": names[corpus.labels[i]]}
                    for i in split.query],
    }
    rows["queries"] += [{"id": f"ood-{i}", "text": text, "label": OOD_NAME}
                        for i, text in ood_texts(cfg)]
    return rows, split


def write_benchmark(cfg: DictConfig, folder: Path) -> dict[str, Path]:
    """Write the preset's three roles' files into ``folder`` (each only if its content changed:
    a rerun leaves them, and their digests, as they were). Returns the file of each role."""
    d = cfg.dataset
    rows, split = benchmark_rows(cfg)
    files = {"public": folder / "public.jsonl",
             "task": folder / "tasks" / f"{task_name(str(d.name))}.jsonl",
             "queries": folder / "queries.jsonl"}
    for role, path in files.items():
        text = "".join(json.dumps(row) + "\n" for row in rows[role])
        if not path.exists() or path.read_text() != text:
            atomic_write(path, lambda tmp, text=text: tmp.write_text(text))
    atomic_write(folder / "split.json", lambda tmp: tmp.write_text(json.dumps(
        {"dataset": str(d.name), **split.summary()}, indent=2)))
    return files


def ood_texts(cfg: DictConfig) -> list[tuple[int, str]]:
    """The added out-of-distribution queries: ``dataset.n_ood`` texts of ``dataset.ood``, a
    seeded sample, with their row in that corpus."""
    d = cfg.dataset
    n_ood = int(d.get("n_ood", 0) or 0)
    if not n_ood:
        return []
    if d.get("ood") is None or str(d.ood) == str(d.name):
        raise ValueError(f"dataset.n_ood={n_ood} needs dataset.ood, a corpus other than "
                         f"{str(d.name)!r}")
    corpus = _corpus(str(d.ood), "dataset.ood")
    if n_ood > len(corpus):
        raise ValueError(f"dataset.n_ood={n_ood} but {d.ood!r} has {len(corpus):,} texts; lower "
                         "dataset.n_ood")
    rows = np.sort(np.random.default_rng(int(cfg.run.seed) + 2).permutation(len(corpus))[:n_ood])
    return [(int(i), corpus.texts[i]) for i in rows]


def benchmark_overrides(cfg: DictConfig) -> list[str]:
    """With ``public.source`` null: write the preset's files under ``run.output_dir``/data and
    return the overrides that name them (every querier's queries and task, every provider's task,
    unless the config names its own). Otherwise nothing: the config names its data."""
    if cfg.public.get("source") is not None:
        return []
    folder = Path(str(cfg.run.output_dir)).expanduser().resolve() / "data"
    files = write_benchmark(cfg, folder)
    task = task_name(str(cfg.dataset.name))
    out = [f"public.source={files['public']}"]
    for name, silo in active_silos(cfg).items():
        if silo.get("role") == "querier":
            if silo.get("queries") is None:
                out.append(f"silos.{name}.queries.source={files['queries']}")
            if silo.get("task") is None:
                out.append(f"silos.{name}.task={task}")
        elif silo.get("role") == "provider" and silo.get("tasks") is None:
            out.append(f"silos.{name}.tasks.{task}.source={files['task']}")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m simulations.benchmark --out DIR [KEY=VALUE ...]``: write the preset's files."""
    import argparse
    import sys

    from conf import load_config

    parser = argparse.ArgumentParser(
        prog="python -m simulations.benchmark",
        description="Write the benchmark preset's three data roles (public.jsonl, "
                    "tasks/<task>.jsonl, queries.jsonl) from one corpus, split as the dataset.* "
                    "keys say (conf/default.yaml): e.g. to hand each deployed silo its files.")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write them to")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. dataset.n_query=100")
    args = parser.parse_args(argv)
    try:
        files = write_benchmark(load_config(args.overrides), args.out)
    except (KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    for role, path in files.items():
        print(f"{role}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

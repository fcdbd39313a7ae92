"""What the querier keeps of a serving: decrypted batches while it runs, predictions when it ends.

A serving writes each decrypted batch to its own file as it arrives (:class:`ServingParts`), so a
run killed while serving resumes from the last answered batch, with nothing lost or duplicated;
the parts are keyed by everything that decides their logits, and parts of another serving are
never mixed in. At the end they are assembled into :class:`Predictions`: a CSV and a JSONL file
(id, predicted label, class probabilities, MSP, energy, the OOD flag) and the logits themselves.
Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

from silos.ood import OOD_LABEL, ood_metrics, ood_scores
from silos.saving import atomic_save_file, atomic_write


class ServingParts:
    """The decrypted batches of one serving in ``folder``, one file per batch, under ``key``."""

    def __init__(self, folder: Path, key: dict) -> None:
        self.folder = folder
        self.key = json.dumps(key, sort_keys=True)

    @property
    def _manifest(self) -> Path:
        return self.folder / "serving.json"

    def open(self) -> dict[int, int]:
        """The batches (start → stop) already decrypted by an interrupted run of this serving;
        the parts of any other serving are removed first."""
        if self._manifest.exists() and self._manifest.read_text() == self.key:
            return dict(self._stored())
        shutil.rmtree(self.folder, ignore_errors=True)
        atomic_write(self._manifest, lambda tmp: tmp.write_text(self.key))
        return {}

    def _stored(self) -> list[tuple[int, int]]:
        spans = []
        for path in sorted(self.folder.glob("*.safetensors")):
            with safe_open(str(path), framework="numpy") as handle:
                meta = handle.metadata() or {}
            spans.append((int(meta["start"]), int(meta["stop"])))
        return spans

    def _check(self) -> None:
        if not self._manifest.exists() or self._manifest.read_text() != self.key:
            raise LookupError(f"no serving in progress in {self.folder} for this map, head and "
                              "batch size (send 'plan' first)")

    def write(self, start: int, logits: np.ndarray) -> None:
        self._check()
        stop = start + len(logits)
        atomic_save_file({"logits": logits}, self.folder / f"{start:09d}.safetensors",
                         metadata={"start": str(start), "stop": str(stop)})

    def assemble(self, n: int) -> np.ndarray:
        """The logits of all ``n`` queries, in order; refused unless every query is answered
        exactly once."""
        self._check()
        spans = self._stored()
        covered = 0
        for start, stop in spans:
            if start != covered:
                raise ValueError(f"queries [{covered}, {start}) have no decrypted logits"
                                 if start > covered else f"batch at {start} overlaps the last")
            covered = stop
        if covered != n:
            raise ValueError(f"{covered} of {n} queries have decrypted logits")
        return np.concatenate([load_file(self.folder / f"{a:09d}.safetensors")["logits"]
                               for a, _ in spans])

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - top)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Predictions:
    """Per query: its id, class probabilities, the two OOD scores and the flag.

    ``score`` (msp or energy) is the one ``threshold`` flags: a query scoring below it is OOD.
    ``logits`` is None for an ensemble (only its probabilities are defined).
    """

    ids: list[str]
    classes: list[str]
    probabilities: np.ndarray
    energy: np.ndarray
    score: str
    threshold: float
    logits: np.ndarray | None = None

    @classmethod
    def from_logits(cls, ids: list[str], classes: list[str], logits: np.ndarray, *, score: str,
                    threshold: float) -> Predictions:
        if logits.shape != (len(ids), len(classes)):
            raise ValueError(f"{logits.shape} logits for {len(ids)} queries, "
                             f"{len(classes)} classes")
        return cls(ids, classes, _softmax(logits), ood_scores(logits)["energy"], score,
                   threshold, logits)

    @property
    def labels(self) -> list[str]:
        return [self.classes[k] for k in self.probabilities.argmax(axis=1)]

    @property
    def msp(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    @property
    def ood(self) -> np.ndarray:
        return (self.msp if self.score == "msp" else self.energy) < self.threshold

    def rows(self) -> list[dict]:
        labels, msp, ood = self.labels, self.msp, self.ood
        return [{"id": self.ids[i], "label": labels[i],
                 "probabilities": dict(zip(self.classes, map(float, self.probabilities[i]),
                                           strict=True)),
                 "msp": float(msp[i]), "energy": float(self.energy[i]), "ood": bool(ood[i])}
                for i in range(len(self.ids))]

    def write(self, stem: Path) -> Predictions:
        """``stem``.csv, .jsonl and .safetensors (what :meth:`load` reads), each atomically."""
        rows = self.rows()
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["id", "label", *[f"p_{c}" for c in self.classes], "msp", "energy", "ood"])
        for row in rows:
            writer.writerow([row["id"], row["label"], *row["probabilities"].values(),
                             row["msp"], row["energy"], row["ood"]])
        atomic_write(stem.with_suffix(".csv"), lambda tmp: tmp.write_text(text.getvalue()))
        atomic_write(stem.with_suffix(".jsonl"), lambda tmp: tmp.write_text(
            "".join(json.dumps(row) + "\n" for row in rows)))
        arrays = {"probabilities": self.probabilities, "energy": self.energy}
        if self.logits is not None:
            arrays["logits"] = self.logits
        atomic_save_file(arrays, stem.with_suffix(".safetensors"), metadata={"config": json.dumps(
            {"ids": self.ids, "classes": self.classes, "score": self.score,
             "threshold": self.threshold})})
        return self

    @classmethod
    def load(cls, stem: Path) -> Predictions:
        path = stem.with_suffix(".safetensors")
        if not path.exists():
            raise FileNotFoundError(f"no predictions at {path}")
        with safe_open(str(path), framework="numpy") as handle:
            config = json.loads((handle.metadata() or {})["config"])
        arrays = load_file(path)
        return cls(config["ids"], config["classes"], arrays["probabilities"], arrays["energy"],
                   config["score"], config["threshold"], arrays.get("logits"))

    def scores(self, labels: list[str] | None) -> dict:
        """Accuracy over the queries whose label is one of the classes, and OOD AUROC / FPR95
        with the others as OOD; nothing where the querier's texts have no labels."""
        out = {"n": len(self.ids), "n_flagged_ood": int(self.ood.sum())}
        if labels is None:
            return out
        index = {c: k for k, c in enumerate(self.classes)}
        truth = np.asarray([index.get(label, OOD_LABEL) for label in labels])
        known = truth != OOD_LABEL
        predicted = self.probabilities.argmax(axis=1)
        if known.any():
            out["encrypted_accuracy"] = float((predicted[known] == truth[known]).mean())
            out["n_labelled"] = int(known.sum())
        if known.any() and not known.all():
            logits = self.logits if self.logits is not None else np.log(
                np.maximum(self.probabilities, 1e-300))
            out.update({f"ood_{k}_encrypted": v for k, v in ood_metrics(logits, truth).items()})
            out["n_ood"] = int((~known).sum())
        return out


def ensemble(members: list[Predictions], *, score: str, threshold: float) -> Predictions:
    """The mean of the members' class probabilities (their energies averaged too); the members
    must answer the same queries with the same classes, in any order."""
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two providers' predictions")
    first = members[0]
    for other in members[1:]:
        if other.ids != first.ids:
            raise ValueError("the providers' predictions are not of the same queries")
        if sorted(other.classes) != sorted(first.classes):
            raise ValueError(f"the providers' classes differ: {first.classes} vs {other.classes}")
    order = [[m.classes.index(c) for c in first.classes] for m in members]
    probabilities = np.mean([m.probabilities[:, o] for m, o in zip(members, order, strict=True)],
                            axis=0)
    energy = np.mean([m.energy for m in members], axis=0)
    return Predictions(first.ids, first.classes, probabilities, energy, score, threshold)

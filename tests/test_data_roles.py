"""Each organisation's own data: three sources, align once and serve many, predictions out, resume,
providers chosen by task. The tiny models; one Flower simulation, the other runs over the silos'
own handler in this process (:mod:`simulations.local_grid`: no Ray, the same coordinator and silos)."""

import csv
import json
from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity
from tiny import FILLER, save_tiny_models, topic_texts, write_corpus

from protocol import Action
from simulations.engine import simulate
from simulations.local_grid import coordinate
from simulations.report import build_report
from strategy.server_app import app as server_app

RUNS = iter(range(1000, 2000))  # a fresh run id per in-process run


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def orgs(tmp_path_factory) -> dict:
    """Three files, one per role, none a split of another: public texts of their own (JSONL),
    the provider's labelled data (CSV) and the querier's texts (plain text, no labels or ids)."""
    root = tmp_path_factory.mktemp("orgs")
    models = save_tiny_models(root)
    public, _ = topic_texts(90, seed=11)
    queries, _ = topic_texts(25, seed=13)
    files = {
        "public": write_jsonl(root / "public.jsonl", [{"text": t} for t in public]),
        "task": write_corpus(root / "news.csv", 80, seed=12),
        "queries": root / "mine.txt",
    }
    files["queries"].write_text("\n".join(queries) + "\n")
    return {"root": root, "models": models, **files}


def overrides(orgs: dict, out: Path, *extra: str) -> list[str]:
    m = orgs["models"]
    return [f"public.source={orgs['public']}", f"silos.alice.model={m['bert']}",
            f"silos.alice.queries.source={orgs['queries']}", "silos.alice.task=news",
            f"silos.bob.model={m['bert64']}", f"silos.bob.tasks.news.source={orgs['task']}",
            "silos.carol=null", f"run.output_dir={out}",
            f"run.cache_dir={orgs['root'] / 'cache'}", "serve.batch_size=10", *extra]


def run(orgs: dict, out: Path, *extra: str, engine: bool = False, before=None) -> dict:
    """One run: through Flower's simulation engine (``engine``), or in this process."""
    if engine:
        from silos.client_app import app as client_app

        n = 3 if any(e.startswith("silos.carol.role") for e in extra) else 2
        simulate(server_app, client_app, num_silos=n, overrides=overrides(orgs, out, *extra))
    else:
        coordinate(overrides(orgs, out, *extra), run_id=next(RUNS), before=before)
    return build_report(out, json.loads((out / "run.json").read_text()), "pytest")


@pytest.fixture
def task_identity(monkeypatch):
    """Flower's Message needs the process' task identity, which its engines set."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def actions(out: Path, silo: str, run_id: int) -> list[str]:
    lines = (out / "silos" / silo / "messages.jsonl").read_text().splitlines()
    return [r["action"] for r in map(json.loads, lines) if r["run_id"] == run_id]


def predictions(out: Path, provider: str = "bob") -> list[dict]:
    path = out / "silos" / "alice" / "predictions" / "news" / f"{provider}.csv"
    with path.open() as f:
        return list(csv.DictReader(f))


def test_three_sources_predictions_equal_plaintext_and_a_rerun_reuses_the_map(orgs, tmp_path):
    out = tmp_path / "out"
    first = run(orgs, out, engine=True)
    (pair,) = first["pairs"]
    assert pair["status"] == "ok", pair.get("error")
    assert pair["map"] == "fitted" and pair["agreement"] == 1.0 and pair["max_abs_error"] <= 1e-3
    assert "encrypted_accuracy" not in pair  # the querier's texts are unlabelled: no score
    rows = predictions(out)
    lines = orgs["queries"].read_text().splitlines()
    assert [r["id"] for r in rows] == [str(i + 1) for i in range(len(lines))]
    assert {r["label"] for r in rows} <= {"politics", "sport", "tech"}
    for row in rows:
        probs = [float(row[f"p_{c}"]) for c in ("politics", "sport", "tech")]
        assert sum(probs) == pytest.approx(1.0) and float(row["msp"]) == pytest.approx(max(probs))
        assert row["ood"] == str(float(row["msp"]) < 0.5)
    jsonl = [json.loads(x) for x in (out / "silos" / "alice" / "predictions" / "news" /
                                     "bob.jsonl").read_text().splitlines()]
    assert [r["label"] for r in jsonl] == [r["label"] for r in rows]
    assert actions(out, "bob", first["run_id"]).count("cross_products") == 1

    # Unchanged data: the stored map is reused, the encrypted fit is not run, same predictions.
    second = run(orgs, out, engine=True)
    (again,) = second["pairs"]
    assert again["status"] == "ok" and again["map"] == "reused"
    assert "upload" not in actions(out, "alice", second["run_id"])
    assert "cross_products" not in actions(out, "bob", second["run_id"])
    assert [r["label"] for r in predictions(out)] == [r["label"] for r in rows]
    assert second["silos"]["bob"]["prepare_reused"] == ["news"]  # the head was not trained again


def test_a_changed_model_or_a_forced_refit_fits_again(orgs, tmp_path, task_identity):
    out = tmp_path / "out"
    assert run(orgs, out)["pairs"][0]["map"] == "fitted"
    assert run(orgs, out)["pairs"][0]["map"] == "reused"
    changed = run(orgs, out, f"silos.bob.model={orgs['models']['llama']}")
    assert changed["pairs"][0]["map"] == "fitted"
    assert "provider_encoder" in changed["pairs"][0]["map_why"]
    assert changed["silos"]["bob"]["prepare_trained"] == ["news"]
    forced = run(orgs, out, f"silos.bob.model={orgs['models']['llama']}", "alignment.reuse=false")
    assert forced["pairs"][0]["map"] == "fitted"
    assert "cross_products" in actions(out, "bob", forced["run_id"])


def test_changed_public_texts_are_refitted_and_a_different_copy_is_refused(orgs, tmp_path,
                                                                           task_identity):
    out = tmp_path / "out"
    assert run(orgs, out)["pairs"][0]["map"] == "fitted"
    texts = [json.loads(x)["text"] for x in orgs["public"].read_text().splitlines()]
    edited = write_jsonl(tmp_path / "public2.jsonl",
                         [{"text": t} for t in [*texts[:-1], " ".join(FILLER[:5])]])
    refit = run(orgs, out, f"public.source={edited}")
    assert refit["pairs"][0]["map"] == "fitted" and "public_digest" in refit["pairs"][0]["map_why"]
    # The same number of public texts, one of them different, at the provider only: refused.
    refused = run(orgs, tmp_path / "out2", f"silos.bob.public={edited}")
    (pair,) = refused["pairs"]
    assert pair["status"] == "failed"
    digests = {s: refused["silos"][s]["public_digest"] for s in ("alice", "bob")}
    assert digests["alice"] != digests["bob"]
    assert digests["alice"] in pair["error"] and digests["bob"] in pair["error"]
    assert "prepare" not in actions(tmp_path / "out2", "bob", refused["run_id"])


def test_a_querier_is_paired_only_with_the_providers_of_its_task(orgs, tmp_path, task_identity):
    sport = write_corpus(tmp_path / "other.csv", 60, seed=21)
    m = orgs["models"]
    three = ["silos.carol.role=provider", f"silos.carol.model={m['llama']}",
             f"silos.carol.tasks.weather.source={sport}"]
    report = run(orgs, tmp_path / "out", *three)
    assert [(p["provider"], p["status"]) for p in report["pairs"]] == [("bob", "ok")]
    assert report["errors"] == [] and report["ensembles"] == []
    assert "prepare" not in actions(tmp_path / "out", "carol", report["run_id"])
    unknown = run(orgs, tmp_path / "out2", *three, "silos.alice.task=cooking")
    assert unknown["pairs"] == []
    (error,) = unknown["errors"]
    assert "'cooking'" in error and "bob: ['news']" in error and "carol: ['weather']" in error


def test_two_providers_of_one_task_give_an_ensemble(orgs, tmp_path, task_identity):
    m = orgs["models"]
    report = run(orgs, tmp_path / "out", "silos.carol.role=provider",
                 f"silos.carol.model={m['llama']}", f"silos.carol.tasks.news.source={orgs['task']}")
    assert [p["status"] for p in report["pairs"]] == ["ok", "ok"]
    (ensemble,) = report["ensembles"]
    assert ensemble["status"] == "ok" and ensemble["providers"] == ["bob", "carol"]
    rows = predictions(tmp_path / "out", "ensemble")
    bob, carol = predictions(tmp_path / "out", "bob"), predictions(tmp_path / "out", "carol")
    for mean, a, b in zip(rows, bob, carol, strict=True):
        assert float(mean["p_sport"]) == pytest.approx(
            (float(a["p_sport"]) + float(b["p_sport"])) / 2, abs=1e-9)


def fail_on(action: Action, nth: int, seen: list[Action]):
    """A fault for :func:`run`: the ``nth`` message of ``action`` fails; ``seen`` logs them all."""

    def before(sent: Action, _context) -> None:
        seen.append(sent)
        if sent == action and seen.count(action) == nth:
            raise RuntimeError(f"injected fault: {action.value} #{nth} failed")

    return before


def test_an_interrupted_serve_resumes_with_every_id_once(orgs, tmp_path, task_identity):
    """The querier fails on its third decryption; the next run serves only what is left."""
    out = tmp_path / "out"
    broken = run(orgs, out, before=fail_on(Action.DECRYPT, 3, []))
    assert broken["pairs"][0]["status"] == "failed"
    parts = out / "silos" / "alice" / "predictions" / "news" / ".bob.parts"
    assert len(list(parts.glob("*.safetensors"))) == 2  # two batches of ten answered and kept
    seen: list[Action] = []
    resumed = run(orgs, out, before=fail_on(Action.DECRYPT, 0, seen))
    (pair,) = resumed["pairs"]
    assert pair["status"] == "ok", pair.get("error")
    assert pair["map"] == "reused" and pair["n_resumed"] == 20 and pair["n_served"] == 5
    assert seen.count(Action.ENCRYPT) == 1  # only the last batch was encrypted again
    ids = [r["id"] for r in predictions(out)]
    assert sorted(ids, key=int) == [str(i) for i in range(1, 26)] and len(set(ids)) == 25
    assert pair["agreement"] == 1.0  # the kept batches' logits are this pair's
    assert not parts.exists()
    # Interrupted again, then resumed with another batch size: another serving, nothing mixed in.
    run(orgs, out, before=fail_on(Action.DECRYPT, 2, []))
    again = run(orgs, out, "serve.batch_size=7")
    assert again["pairs"][0]["n_resumed"] == 0 and again["pairs"][0]["n_served"] == 25
    assert again["pairs"][0]["agreement"] == 1.0

"""What a new user trips over (issue 16): a report that shows only its own run, a failed run's
report that says why, and errors that name the config key or the silo to fix. No Ray: the
coordinator runs over :class:`LocalGrid`, the silos' own handler in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from omegaconf import OmegaConf
from tiny import write_corpus

from conf import load_config
from protocol import Action, error_silo, message_type, request_content
from silos.client_app import handle
from silos.registry import PACKAGED_MODELS, ModelNotFoundError, check_model, resolve_model
from simulations import run_local
from simulations.local_grid import coordinate
from simulations.report import build_report, memory_by_silo, render_markdown


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower's Message needs the process' task identity, which its engines set."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus.csv", 60)


def base(tmp_path: Path, corpus: Path) -> list[str]:
    """A config whose silos fail in ``prepare`` (no such model folder): quick, and a failed run."""
    return [f"dataset.name={corpus}", "dataset.n_public=20", "dataset.n_private=20",
            "dataset.n_query=10", f"run.output_dir={tmp_path / 'out'}",
            f"run.cache_dir={tmp_path / 'cache'}",
            *(f"silos.{s}.model={tmp_path / 'models' / s}" for s in ("alice", "bob", "carol"))]


# -- bugs ---------------------------------------------------------------------------------------
def test_the_report_describes_its_own_run_only(tmp_path, corpus):
    """A run without carol, into the folder of an earlier run with carol: carol's messages of the
    earlier run stay in its messages.jsonl, but this run's report does not show them."""
    overrides = base(tmp_path, corpus)
    coordinate(overrides, run_id=111)
    run = coordinate([*overrides, "silos.carol=null"], run_id=222)
    out = tmp_path / "out"
    assert json.loads((out / "run.json").read_text())["run_id"] == 222
    assert set(memory_by_silo(out)) == {"alice", "bob", "carol"}  # the files hold both runs
    report = build_report(out, run, "pytest")
    assert set(report["memory"]) == {"alice", "bob"}
    for silo in ("alice", "bob"):  # this run's describe and prepare only, not the earlier run's
        assert sum(map(len, report["memory"][silo]["per_message"].values())) == 2
    assert "carol" not in (out / "report.md").read_text()
    lines = [json.loads(line) for line in (out / "silos" / "bob" / "messages.jsonl").open()]
    assert [r["run_id"] for r in lines] == [111, 111, 222, 222]


def test_a_failed_run_says_no_pair_completed_and_why(tmp_path, corpus):
    run = coordinate(base(tmp_path, corpus), run_id=5)
    assert run["pairs"] == [] and len(run["errors"]) == 3
    text = build_report(tmp_path / "out", run, "pytest") and (tmp_path / "out" / "report.md").read_text()
    assert "|  |" not in text and "| pair |" not in text  # no empty, broken table
    assert "No pair completed" in text
    for silo in ("alice", "bob", "carol"):  # each silo's error, by name, with what to change
        assert f"silo {silo!r} failed on 'prepare'" in text
    assert "no model folder or packaged model named" in text


def test_every_pair_failing_is_said_above_the_table():
    cfg = OmegaConf.to_container(load_config(), resolve=True)
    report = {"command": "x", "tasks": ["t"], "config": cfg, "errors": [], "memory": {}, "silos": {},
              "pairs": [{"querier": "alice", "provider": "bob", "status": "failed",
                         "error": "silo 'bob' failed on 'evaluate': boom"}]}
    text = render_markdown(report)
    assert "No pair completed" in text and "boom" in text
    report["pairs"] = []
    report["silos"] = {"alice": {"role": "querier"}}
    text = render_markdown(report)
    assert "No pair completed" in text and "no provider" in text and "|  |" not in text


# -- errors that say what to do -----------------------------------------------------------------
def test_a_silo_failing_in_describe_is_named_by_its_silo_name(tmp_path, corpus):
    """Every silo reads the public corpus in ``describe`` (for its digest); a missing file fails
    them there, before the coordinator knows which node is which: each error names the silo, not
    its node id, and the key to change."""
    overrides = [*base(tmp_path, corpus), f"public.source={tmp_path / 'absent.jsonl'}",
                 f"silos.alice.queries.source={corpus}", "silos.alice.task=corpus",
                 f"silos.bob.tasks.corpus.source={corpus}",
                 f"silos.carol.tasks.corpus.source={corpus}"]
    run = coordinate(overrides, run_id=9)
    failed = [e for e in run["errors"] if "'describe'" in e]
    assert len(failed) == 3
    for silo, error in zip(("alice", "bob", "carol"), sorted(failed), strict=True):
        assert error.startswith(f"silo {silo!r} failed on 'describe'"), error
        assert "node " not in error and f"public.source={tmp_path / 'absent.jsonl'}" in error


def test_a_node_for_an_unknown_silo_and_a_silo_without_a_node_are_both_reported(tmp_path, corpus):
    """Deployed SuperNodes for alice, bob and a mistyped 'karol': karol's describe fails under its
    name (not in the run config), and carol, which no node runs, is reported rather than silently
    having no pairs; a silo two nodes claim is reported too."""
    nodes = [{"silo": "alice"}, {"silo": "bob"}, {"silo": "karol"}, {"silo": "bob"}]
    errors = coordinate(base(tmp_path, corpus), run_id=3, node_configs=nodes)["errors"]
    assert any(e.startswith("silo 'karol' failed on 'describe'") and "unknown silo 'karol'" in e
               and "configured silos: ['alice', 'bob', 'carol']" in e for e in errors), errors
    assert any(e.startswith("silo 'carol' (in the run config) did not answer")
               and "--node-config 'silo=\"carol\"'" in e for e in errors), errors
    assert any("both run silo 'bob'" in e for e in errors), errors


def test_a_silo_whose_config_does_not_load_is_still_named(tmp_path):
    """Even an error before any setting is resolved is reported under the node's claimed silo."""
    message = Message(request_content({}), dst_node_id=3, message_type=message_type(Action.DESCRIBE))
    context = Context(run_id=1, node_id=3, node_config={"silo": "dave"}, state=RecordDict(),
                      run_config={"overrides": f"run.output_dir={tmp_path}"})
    reply = handle(Action.DESCRIBE, message, context)
    assert error_silo(reply) == "dave" and "unknown silo 'dave'" in reply.content["error"]["message"]


@pytest.mark.parametrize("kind", ["absolute path", "relative path", "hub-like name", "no config"])
def test_a_model_that_does_not_exist_is_named_with_the_packaged_models(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    name = {"absolute path": str(tmp_path / "no-such-model"), "relative path": "models/mpnet",
            "hub-like name": "no-such-model", "no config": "empty"}[kind]
    (tmp_path / "models").mkdir()
    for call in (lambda: check_model(name), lambda: resolve_model(name, cache_dir=tmp_path)):
        with pytest.raises(ModelNotFoundError) as caught:
            call()
        message = str(caught.value)
        assert f"no model folder or packaged model named {name!r}" in message
        assert all(packaged in message for packaged in PACKAGED_MODELS)
        assert "Repo id" not in message


def test_config_errors_name_the_key_before_any_worker_starts(tmp_path, corpus, monkeypatch, capsys):
    def no_simulation(*args, **kwargs):
        raise AssertionError("the simulation started")

    monkeypatch.setattr(run_local, "simulate", no_simulation)
    ok = [f"dataset.name={corpus}", "dataset.n_public=20", "dataset.n_private=20",
          "dataset.n_query=10", f"run.output_dir={tmp_path / 'out'}"]
    run_local.check_silos(load_config(ok))  # the packaged models and this corpus: fine
    cases = {
        f"dataset.name={tmp_path / 'absent.csv'}": [f"dataset.name={tmp_path / 'absent.csv'}",
                                                     "no packaged corpus, file"],
        "dataset.label_column=topic": ["dataset.label_column=topic", "['text', 'label']"],
        "dataset.text_column=body": ["dataset.text_column=body"],
        "dataset.n_public=5000": ["dataset.n_public=5000", "has 60", "lower dataset.n_public"],
        "dataset.n_query=0": ["dataset.n_query=0", "at least 1"],
        f"silos.carol.model={tmp_path / 'gone'}": [f"silos.carol.model={tmp_path / 'gone'}",
                                                   "no model folder or packaged model", "minilm-l6"],
        "dataset.holdout_classes=[golf]": ["dataset.holdout_classes=['golf']", "not classes"],
        "dataset.n_ood=5": ["dataset.n_ood=5", "dataset.ood"],
    }
    for override, needles in cases.items():
        with pytest.raises(ValueError) as caught:
            run_local.check_silos(load_config([*ok, override]))
        assert all(n in str(caught.value) for n in needles), (override, str(caught.value))
        assert run_local.main([*ok, override]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and needles[0] in err  # once, and no traceback

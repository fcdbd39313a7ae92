"""A provider that crashes or stops answering mid-serve: retries from config, failed pairs named."""

import json

from test_simulation import spying_server_app
from tiny import tiny_overrides

from protocol import Action
from simulations.engine import simulate
from simulations.faults import Fault, faulty_client_app
from simulations.report import build_report

BOB, CAROL = 1, 2  # partitions of the silos alice, bob, carol


def run(tmp_path, faults: list[Fault], *extra: str) -> dict:
    overrides = [*tiny_overrides(tmp_path, n_texts=200, n_public=80, n_private=60, n_query=20),
                 "serve.batch_size=8", *extra]  # 3 batches per pair: the fault hits mid-serve
    simulate(spying_server_app([]), faulty_client_app(*faults), num_silos=3, overrides=overrides)
    out = tmp_path / "out"
    report = build_report(out, json.loads((out / "run.json").read_text()), "pytest")
    return {p["provider"]: p for p in report["pairs"]} | {"_report": report}


def test_a_crash_is_resent_and_a_provider_that_keeps_crashing_fails_only_its_pair(tmp_path):
    # bob crashes on its 2nd and 3rd evaluate: the resend crashes too, the pair fails;
    # carol crashes on its 2nd only: the resend cures it and the pair is exact.
    faults = [Fault(BOB, Action.EVALUATE, nth=2, mode="raise", times=2,
                    state_dir=str(tmp_path / "faults")),
              Fault(CAROL, Action.EVALUATE, nth=2, mode="raise", times=1,
                    state_dir=str(tmp_path / "faults"))]
    pairs = run(tmp_path, faults, "coordinator.retries=1")
    bob, carol = pairs["bob"], pairs["carol"]
    assert bob["status"] == "failed"
    assert bob["failed_silo"] == "bob" and bob["failed_action"] == "evaluate"
    assert "injected fault" in bob["error"] and "(2 attempts)" in bob["error"]
    assert len(bob["resent"]) == 1
    assert carol["status"] == "ok", carol.get("error")  # the other pair keeps its results
    assert carol["agreement"] == 1.0 and carol["max_abs_error"] <= 1e-3
    assert len(carol["resent"]) == 1 and "injected fault" in carol["resent"][0]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "- alice → bob: silo 'bob' failed on 'evaluate'" in markdown


def test_a_provider_that_stops_answering_is_timed_out_and_the_resend_is_answered(tmp_path):
    # bob answers its 2nd evaluate only after 12 s; the serving timeout is 8 s: the first attempt
    # times out, the resend is answered once bob is back. The simulated silos share one worker,
    # which also handles the other pair's messages of that round before bob's resend: the
    # margin (8 s after the resend) leaves room for them on a loaded machine.
    fault = Fault(BOB, Action.EVALUATE, nth=2, mode="sleep", seconds=12.0,
                  state_dir=str(tmp_path / "faults"))
    pairs = run(tmp_path, [fault], "coordinator.retries=1", "coordinator.serve_timeout=8")
    bob = pairs["bob"]
    assert bob["status"] == "ok", bob.get("error")
    assert bob["agreement"] == 1.0
    assert bob["resent"] == ["silo 'bob' failed on 'evaluate': no reply within 8 s"]

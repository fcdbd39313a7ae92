"""The coordinator's rounds against a fake Grid: retries, time-outs, bundles, shared replies and
conversations run side by side. No Ray, no silos, milliseconds."""

import uuid

import pytest
from flwr.app import Error, Message
from flwr.supercore.task_identity import TaskIdentity

from conf import load_config
from protocol import (
    Action,
    bundle_reply,
    bundled_requests,
    error_content,
    reply_content,
)
from strategy.coordinator import AlignmentCoordinator
from strategy.rounds import Ask, Ledger, Rounds, Silo, SiloError

ALICE, BOB = Silo(1, "alice", "querier", "m"), Silo(2, "bob", "provider", "m")


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower's Message needs the process' task identity, which its engines set."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


class FakeGrid:
    """Answers each message as ``script[node]`` says, one entry per attempt (the last repeats):
    ``ok``, ``drop`` (no reply in time), ``flower`` (Flower's own error: node unavailable) or
    ``refuse`` (the silo's own error reply; in a bundle, to its last request only). A reply
    echoes the request's action and ``x``. Records every round: its messages and time-out."""

    def __init__(self, script: dict[int, list[str]]) -> None:
        self.script, self.sent, self.timeouts, self.rounds = script, {n: 0 for n in script}, [], []

    def get_node_ids(self) -> list[int]:
        return list(self.script)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        self.timeouts.append(timeout)
        self.rounds.append([(m.metadata.dst_node_id, m.metadata.message_type) for m in messages])
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            node = message.metadata.dst_node_id
            steps = self.script[node]
            kind = steps[min(self.sent[node], len(steps) - 1)]
            self.sent[node] += 1
            if kind == "flower":
                replies.append(Message(Error(code=4, reason="Node Unavailable"), reply_to=message))
            elif kind in ("ok", "refuse"):
                replies.append(Message(self.answer(node, message, kind), reply_to=message))
        return replies

    @staticmethod
    def answer(node, message, kind):
        name = message.metadata.message_type.removeprefix("query.")
        if name != "bundle":
            if kind == "refuse":
                return error_content(ValueError("refused"))
            request = message.content["request"]
            return reply_content({"answer": node, "action": name, "x": request.get("x", -1)})
        requests = bundled_requests(message.content)
        answers = [reply_content({"answer": node, "action": a.value, "x": r.get("x", -1)})
                   for a, r in requests]
        if kind == "refuse":
            answers[-1] = error_content(ValueError("refused"))
        return bundle_reply(answers)


def rounds(retries=1, timeout=600.0, serve_timeout=300.0, grid=None):
    return Rounds(grid, timeout=timeout, serve_timeout=serve_timeout, retries=retries)


def round_of(r: Rounds, grid, phase="align"):
    r.grid = grid
    ledger = Ledger()
    results = r.exchange([Ask(ALICE, Action.UPLOAD, {"x": 1}, phase),
                          Ask(BOB, Action.CROSS_PRODUCTS, {"x": 2}, phase)], [ledger, ledger])
    return results, ledger


def test_a_dropped_reply_is_resent_and_cured():
    grid = FakeGrid({1: ["ok"], 2: ["drop", "ok"]})
    results, ledger = round_of(rounds(retries=1), grid)
    assert results[0]["answer"] == 1 and results[1]["answer"] == 2
    assert grid.sent == {1: 1, 2: 2}  # only the silent node got the request again
    assert ledger.resent == ["silo 'bob' failed on 'cross_products': no reply within 600 s"]


def test_a_silo_that_stays_silent_fails_after_every_attempt():
    grid = FakeGrid({1: ["ok"], 2: ["drop"]})
    results, _ = round_of(rounds(retries=2, timeout=5.0), grid)
    assert grid.sent[2] == 3
    failure = results[1]
    assert isinstance(failure, SiloError) and failure.transient
    assert failure.reason == "no reply within 5 s (3 attempts)" and failure.silo == "bob"


def test_flowers_own_error_is_resent_but_a_silos_refusal_is_final():
    grid = FakeGrid({1: ["refuse"], 2: ["flower", "ok"]})
    results, ledger = round_of(rounds(retries=3), grid)
    assert grid.sent == {1: 1, 2: 2}
    assert isinstance(results[0], SiloError) and not results[0].transient
    assert "ValueError: refused" in results[0].reason
    assert results[1]["answer"] == 2 and len(ledger.resent) == 1
    assert "Node Unavailable" in ledger.resent[0]


def test_no_retries_means_one_attempt():
    grid = FakeGrid({1: ["drop"], 2: ["flower"]})
    results, ledger = round_of(rounds(retries=0), grid)
    assert grid.sent == {1: 1, 2: 1} and ledger.resent == []
    assert all(isinstance(r, SiloError) and r.transient for r in results)


def test_serving_rounds_have_their_own_time_out():
    r = rounds(retries=0, timeout=600.0, serve_timeout=30.0)
    grid = FakeGrid({1: ["ok"], 2: ["ok"]})
    round_of(r, grid, phase="align")
    round_of(r, grid, phase="serve")
    assert grid.timeouts == [600.0, 30.0]


def test_several_asks_of_one_silo_travel_as_one_bundle_answered_in_order():
    grid = FakeGrid({1: ["ok"], 2: ["ok"]})
    r, ledgers = rounds(grid=grid), [Ledger(), Ledger(), Ledger()]
    results = r.exchange([Ask(ALICE, Action.DECRYPT, {"x": 1}, "serve"),
                          Ask(BOB, Action.EVALUATE, {"x": 2}, "serve"),
                          Ask(ALICE, Action.ENCRYPT, {"x": 3}, "serve")], ledgers)
    assert grid.rounds == [[(1, "query.bundle"), (2, "query.evaluate")]]
    assert [(x["action"], x["x"]) for x in results] == [
        ("decrypt", 1), ("evaluate", 2), ("encrypt", 3)]
    assert all(ledger.rounds == {"serve": 1} for ledger in ledgers)


def test_one_refused_request_of_a_bundle_fails_alone():
    grid = FakeGrid({1: ["refuse"]})
    first, last = rounds(grid=grid).exchange(
        [Ask(ALICE, Action.DECRYPT, {"x": 1}, "serve"), Ask(ALICE, Action.REPORT, {"x": 2}, "serve")],
        [Ledger(), Ledger()])
    assert first["action"] == "decrypt"
    assert isinstance(last, SiloError) and last.action == Action.REPORT and not last.transient


def test_identical_uploads_are_encrypted_once_for_every_provider():
    """Enc(X̃) for one dimension serves each provider of that dimension: sent once, shared; an
    upload for another dimension, and any other action, is asked again."""
    grid = FakeGrid({1: ["ok"]})
    asks = [Ask(ALICE, Action.UPLOAD, {"d_out": 8}, "align"),
            Ask(ALICE, Action.UPLOAD, {"d_out": 8}, "align"),
            Ask(ALICE, Action.UPLOAD, {"d_out": 16}, "align"),
            Ask(ALICE, Action.SELECT, {"x": 4}, "align"), Ask(ALICE, Action.SELECT, {"x": 4}, "align")]
    results = rounds(grid=grid).exchange(asks, [Ledger() for _ in asks])
    assert grid.rounds == [[(1, "query.bundle")]]
    assert [r["action"] for r in results] == ["upload"] * 3 + ["select"] * 2
    assert results[0] is results[1]
    assert grid.sent == {1: 1}


def _conversation(querier: Silo, provider: Silo, steps: int, tag: int):
    """``steps`` asks of the querier, each followed by one of the provider; returns the xs seen."""
    seen = []
    for step in range(steps):
        (a,) = yield [Ask(querier, Action.SELECT, {"x": tag * 100 + step}, "align")]
        (b,) = yield [Ask(provider, Action.CROSS_PRODUCTS, {"x": a["x"]}, "align")]
        seen.append(b["x"])
    return {"seen": seen}


def test_conversations_run_side_by_side_in_as_many_rounds_as_the_longest():
    """Three pairs of one querier: six rounds, as for one pair, not eighteen; a pair whose
    provider refuses fails alone."""
    providers = [Silo(10 + i, f"p{i}", "provider", "m") for i in range(3)]
    grid = FakeGrid({1: ["ok"], 10: ["ok"], 11: ["ok"], 12: ["refuse"]})
    r = rounds(grid=grid)
    results = r.converse({p.name: (_conversation(ALICE, p, 3, i), Ledger())
                          for i, p in enumerate(providers)})
    assert r.count == 6
    assert results["p0"] == {"seen": [0, 1, 2]} and results["p1"] == {"seen": [100, 101, 102]}
    assert isinstance(results["p2"], SiloError) and results["p2"].silo == "p2"
    assert grid.rounds[0] == [(1, "query.bundle")]  # the querier's three asks in one message


def test_bad_settings_are_refused():
    cfg = load_config()
    with pytest.raises(ValueError, match="retries"):
        rounds(retries=-1)
    with pytest.raises(ValueError, match="batch_size"):
        AlignmentCoordinator.from_config(load_config(["serve.batch_size=0"]), lambda *a: "batched")
    coordinator = AlignmentCoordinator.from_config(cfg, lambda *a: "batched")
    assert coordinator.wait_for_nodes == cfg.coordinator.wait_for_nodes
    assert coordinator.serve_timeout == cfg.coordinator.serve_timeout


def test_a_resend_is_recorded_only_for_the_pairs_that_asked_the_silent_silo():
    grid = FakeGrid({1: ["ok"], 2: ["drop", "ok"]})
    mine, other = Ledger(), Ledger()
    rounds(grid=grid).exchange([Ask(ALICE, Action.DECRYPT, {}, "serve"),
                                Ask(BOB, Action.EVALUATE, {}, "serve")], [other, mine])
    assert len(mine.resent) == 1 and other.resent == []

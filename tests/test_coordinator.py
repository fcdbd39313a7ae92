"""The coordinator's retries and time-outs against a fake Grid: no Ray, no silos, milliseconds."""

import uuid

import pytest
from flwr.app import Error, Message
from flwr.supercore.task_identity import TaskIdentity

from protocol import Action, error_content, reply_content
from strategy.coordinator import AlignmentCoordinator, Ledger, SiloError


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower's Message needs the process' task identity, which its engines set."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


class FakeGrid:
    """Answers each message as ``script[node]`` says, one entry per attempt (the last repeats):
    ``ok``, ``drop`` (no reply in time), ``flower`` (Flower's own error: node unavailable) or
    ``refuse`` (the silo's own error reply). Records every send and the time-out it was given."""

    def __init__(self, script: dict[int, list[str]]) -> None:
        self.script, self.sent, self.timeouts = script, {n: 0 for n in script}, []

    def get_node_ids(self) -> list[int]:
        return list(self.script)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        self.timeouts.append(timeout)
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            node = message.metadata.dst_node_id
            steps = self.script[node]
            kind = steps[min(self.sent[node], len(steps) - 1)]
            self.sent[node] += 1
            if kind == "ok":
                replies.append(Message(reply_content({"answer": node}), reply_to=message))
            elif kind == "flower":
                replies.append(Message(Error(code=4, reason="Node Unavailable"), reply_to=message))
            elif kind == "refuse":
                replies.append(Message(error_content(ValueError("refused")), reply_to=message))
        return replies


def round_of(strategy, grid, phase="align"):
    ledger = Ledger()
    results = strategy._round(grid, [(1, "alice"), (2, "bob")], Action.UPLOAD, {}, ledger, phase)
    return results, ledger


def test_a_dropped_reply_is_resent_and_cured():
    grid = FakeGrid({1: ["ok"], 2: ["drop", "ok"]})
    results, ledger = round_of(AlignmentCoordinator(retries=1), grid)
    assert results[1]["answer"] == 1 and results[2]["answer"] == 2
    assert grid.sent == {1: 1, 2: 2}  # only the silent node got the request again
    assert ledger.resent == ["silo 'bob' failed on 'upload': no reply within 600 s"]


def test_a_silo_that_stays_silent_fails_after_every_attempt():
    grid = FakeGrid({1: ["ok"], 2: ["drop"]})
    results, _ = round_of(AlignmentCoordinator(retries=2, timeout=5.0), grid)
    assert grid.sent[2] == 3
    failure = results[2]
    assert isinstance(failure, SiloError) and failure.transient
    assert failure.reason == "no reply within 5 s (3 attempts)" and failure.silo == "bob"


def test_flowers_own_error_is_resent_but_a_silos_refusal_is_final():
    grid = FakeGrid({1: ["refuse"], 2: ["flower", "ok"]})
    results, ledger = round_of(AlignmentCoordinator(retries=3), grid)
    assert grid.sent == {1: 1, 2: 2}
    assert isinstance(results[1], SiloError) and not results[1].transient
    assert "ValueError: refused" in results[1].reason
    assert results[2]["answer"] == 2 and len(ledger.resent) == 1
    assert "Node Unavailable" in ledger.resent[0]


def test_no_retries_means_one_attempt():
    grid = FakeGrid({1: ["drop"], 2: ["flower"]})
    results, ledger = round_of(AlignmentCoordinator(retries=0), grid)
    assert grid.sent == {1: 1, 2: 1} and ledger.resent == []
    assert all(isinstance(r, SiloError) and r.transient for r in results.values())


def test_serving_rounds_have_their_own_time_out():
    strategy = AlignmentCoordinator(timeout=600.0, serve_timeout=30.0, retries=0)
    grid = FakeGrid({1: ["ok"], 2: ["ok"]})
    round_of(strategy, grid, phase="align")
    round_of(strategy, grid, phase="serve")
    assert grid.timeouts == [600.0, 30.0]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="retries"):
        AlignmentCoordinator(retries=-1)
    with pytest.raises(ValueError, match="batch_size"):
        AlignmentCoordinator(batch_size=0)

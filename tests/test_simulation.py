"""The whole Flower simulation with tiny in-memory models and three silos."""

import json
import math
import time

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from safetensors.numpy import load_file, save_file
from tiny import default_params, tiny_overrides, write_ood_corpus

from conf import load_config
from crypto import CkksKit, encrypt_queries
from crypto.serialization import HEADER_BYTES, CiphertextError, load_into
from protocol import Action, error_of, message_type, request_content
from silos.alignment import AffineMap
from silos.client_app import app as client_app
from silos.predictions import Predictions
from simulations.engine import simulate
from simulations.evaluation.classification import unaligned_accuracy
from simulations.report import build_report, pair_inputs
from simulations.spy import load_messages, spying_client_app
from strategy.server_app import run_coordinator


class SpyGrid:
    """A Grid that records every message the ServerApp sends and receives."""

    def __init__(self, grid: Grid, log: list[tuple[str, Message]]) -> None:
        self._grid, self._log = grid, log

    def get_node_ids(self):
        return self._grid.get_node_ids()

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self._log += [("request", m) for m in messages]
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._log += [("reply", m) for m in replies]
        return replies


def spying_server_app(log):
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_coordinator(SpyGrid(grid, log), load_config(context.run_config["overrides"]),
                        run_id=context.run_id)

    return app


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    out = root / "out"
    overrides = [
        *tiny_overrides(root, n_texts=320, n_public=120, n_private=120, n_query=70),
        "silos.carol.pooling=last",
        "serve.batch_size=32",  # several batches per pair
        # The optional cosine round: asked by the querier, answered by a provider whose own
        # policy allows it.
        "alignment.cosine=true",
        "silos.bob.policy.allow_cosine=true", "silos.carol.policy.allow_cosine=true",
        f"dataset.ood={write_ood_corpus(root / 'ood.csv', 40)}", "dataset.n_ood=30",
    ]
    log: list[tuple[str, Message]] = []
    simulate(spying_server_app(log), spying_client_app(str(root / "spy")), num_silos=3,
             overrides=overrides)
    run = json.loads((out / "run.json").read_text())
    report = build_report(out, run, "pytest")
    return out, report, log


def test_every_pair_succeeds_and_encrypted_equals_plaintext(tiny_run):
    out, report, _ = tiny_run
    pairs = report["pairs"]
    assert {(p["querier"], p["provider"]) for p in pairs} == {("alice", "bob"), ("alice", "carol")}
    # The run's id reached run.json and every silo's messages.jsonl lines: the report keeps them.
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    assert isinstance(run_id, int) and report["run_id"] == run_id
    for silo in ("alice", "bob", "carol"):
        lines = (out / "silos" / silo / "messages.jsonl").read_text().splitlines()
        assert lines and {json.loads(line)["run_id"] for line in lines} == {run_id}, silo
    assert set(report["memory"]) == {"alice", "bob", "carol"}
    for pair in pairs:
        assert pair["status"] == "ok", pair.get("error")
        assert pair["agreement"] == 1.0
        assert pair["max_abs_error"] <= 1e-3
        assert pair["encrypted_accuracy"] == pair["aligned_accuracy"]
        assert pair["map_relative_error"] <= 1e-4
        # Fit quality measured under encryption equals the plaintext computation.
        assert pair["r2"] == pytest.approx(pair["plaintext_r2"], abs=1e-5)
        # The optional cosine round (off by default) is on here: both sides' flags are set.
        assert pair["cosine"] == pytest.approx(pair["plaintext_cosine"], abs=1e-5)
        assert pair["n_queries"] == pair["n_served"] == 100
        # Three topics: chance is 1/3; the provider's head on its own embeddings, and through the
        # map, classify above it (the tiny random llama least: 0.57 native, 0.44 through the map).
        assert pair["native_accuracy"] > 0.5 and pair["encrypted_accuracy"] > 0.4
        # Without the map the provider's head sees the querier's embeddings as they are (zero
        # padded to its width): chance (measured 0.23 and 0.37).
        assert unaligned_accuracy(pair_inputs(report["config"], pair)) < 0.45
    # Through the map the two BERTs agree on every topic (1.0 measured), far above it.
    assert next(p for p in pairs if p["provider"] == "bob")["encrypted_accuracy"] > 0.9


def test_ood_scores_from_decrypted_logits_match_plaintext(tiny_run):
    _, report, _ = tiny_run
    for pair in report["pairs"]:
        assert pair["n_ood"] == 30
        for score in ("msp", "energy", "max_logit"):
            # The querier's scores of its decrypted logits are the float64 ones, up to CKKS noise.
            assert pair[f"ood_auroc_{score}_encrypted"] == pytest.approx(
                pair[f"ood_auroc_{score}_aligned"], abs=0.01)


def test_the_map_stays_with_the_querier(tiny_run):
    out, report, _ = tiny_run
    for pair in report["pairs"]:
        fitted = AffineMap.load(out / "silos" / "alice" / "maps" / f"{pair['provider']}.safetensors")
        assert fitted.coef_.shape == (32, pair["d_provider"])
    assert not (out / "silos" / "bob" / "maps").exists()


def _byte_values(records: dict, path: str = "") -> list[tuple[str, bytes]]:
    """Every bytes value of a message's records, with its key; float lists checked on the way."""
    found = []
    for name, record in records.items():
        assert not isinstance(record, ArrayRecord), f"{path}{name}: arrays must never travel"
        for key, value in dict(record).items():
            if isinstance(value, list) and value and isinstance(value[0], float):
                assert len(value) < 16, f"{path}{key}: a float list as long as an embedding"
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, bytes):
                    found.append((key, item))
    return found


def test_no_plaintext_embedding_or_secret_key_leaves_the_querier(tiny_run):
    """Spied on both sides: the ServerApp's every message in and out (SpyGrid) and every message
    each silo received and sent (the spying ClientApp). No message leaving the querier carries its
    secret key — every context deserialises, at the provider's end, to a public kit — and neither
    the ServerApp nor a provider ever receives a plaintext embedding of the querier's."""
    out, report, log = tiny_run
    vectors = []
    for pair in report["pairs"]:
        inputs = pair_inputs(report["config"], pair)
        vectors += [*inputs["x_fit"], *inputs["x_val"], *inputs["x"]]
        vectors += list(inputs["map"].transform(inputs["x"]))
    needles = [np.asarray(v[:4], dtype=dt).tobytes() for v in vectors
               for dt in (np.float32, np.float64)]
    sample = needles[:: max(1, len(needles) // 200)]  # public, query and mapped vectors alike

    spied = load_messages(out.parent / "spy")
    secrets = {m["secret_key"] for m in spied if "secret_key" in m}
    assert len(secrets) == 1 and all(m["partition"] == 0 for m in spied if "secret_key" in m)
    (secret,) = secrets
    windows = [secret[i : i + 32] for i in range(HEADER_BYTES, len(secret) - 32, 1024)]
    assert len(windows) > 10

    # What crossed: the ServerApp's view, and each silo's own view of its boundary.
    crossing = [(f"coordinator {kind}", _byte_values(dict(m.content.items())))
                for kind, m in log if not m.has_error()]
    crossing += [(f"querier sent {m['action']}", _byte_values(m["sent"]))
                 for m in spied if m["partition"] == 0]
    at_provider = [(f"provider received {m['action']}", _byte_values(m["received"]))
                   for m in spied if m["partition"] != 0]
    assert len(log) > 20 and at_provider and len(crossing) > 40
    contexts, blobs = [], []
    for where, values in crossing + at_provider:
        for key, blob in values:
            assert not any(w in blob for w in windows), f"{where}: {key} holds the secret key"
            assert not any(n in blob for n in sample), f"{where}: {key} holds an embedding"
            (contexts if key == "context" else blobs).append(blob)
    received_contexts = [blob for _, values in at_provider for key, blob in values
                         if key == "context"]
    assert received_contexts and contexts and blobs
    # At the provider, every context is CKKS parameters + Galois keys: it loads as such, the kit
    # it makes can neither encrypt nor decrypt, and no part of it loads as a secret key.
    kits = [CkksKit.from_public(data) for data in received_contexts]
    assert not any(kit.is_private for kit in kits)
    import tenseal.sealapi as seal

    for data in {*contexts}:
        for start in range(0, len(data), max(1, len(data) // 8)):
            with pytest.raises(CiphertextError):
                load_into(seal.SecretKey(), kits[0].context, data[start:])
    for blob in blobs:  # every other byte string is a ciphertext under the querier's key
        kits[0].load(blob)


def test_a_failing_silo_fails_only_its_pairs(tmp_path):
    out = tmp_path / "out"
    overrides = tiny_overrides(tmp_path, n_texts=200, n_public=80, n_private=60, n_query=30,
                               carol=str(tmp_path / "no-such-model"))
    simulate(spying_server_app([]), client_app, num_silos=3, overrides=overrides)
    run = json.loads((out / "run.json").read_text())
    assert [p["provider"] for p in run["pairs"]] == ["bob"]
    assert run["pairs"][0]["status"] == "ok"
    assert any("carol" in e for e in run["errors"])


def test_single_and_batched_paths_give_the_same_predictions(tmp_path):
    """The same queries served one per ciphertext (rotations, Galois keys) and feature-major."""
    logits = {}
    for path in ("single", "batched"):
        out = tmp_path / path
        overrides = [*tiny_overrides(tmp_path, n_texts=200, n_public=80, n_private=60,
                                     n_query=12),
                     "silos.carol=null", "serve.batch_size=5", f"serve.path={path}",
                     f"run.output_dir={out}"]
        simulate(spying_server_app([]), client_app, num_silos=2, overrides=overrides)
        report = build_report(out, json.loads((out / "run.json").read_text()), "pytest")
        (pair,) = report["pairs"]
        assert pair["status"] == "ok", pair.get("error")
        assert pair["path"] == path and pair["agreement"] == 1.0
        assert pair["max_abs_error"] <= 1e-3
        logits[path] = Predictions.load(out / "silos" / "alice" / "predictions" / "corpus" /
                                        "bob").logits
    assert (logits["single"].argmax(1) == logits["batched"].argmax(1)).all()
    np.testing.assert_allclose(logits["single"], logits["batched"], atol=2e-3)


def test_two_queriers_and_two_providers(tmp_path):
    """Four silos, chosen pairs: each querier has its own key; bob serves both queriers."""
    out = tmp_path / "out"
    overrides = [*tiny_overrides(tmp_path, n_texts=200, n_public=80, n_private=60, n_query=20),
                 "silos.dave.role=querier", f"silos.dave.model={tmp_path / 'llama'}",
                 "pairs=[alice:bob,dave:bob,dave:carol]"]
    simulate(spying_server_app([]), client_app, num_silos=4, overrides=overrides)
    report = build_report(out, json.loads((out / "run.json").read_text()), "pytest")
    pairs = {(p["querier"], p["provider"]): p for p in report["pairs"]}
    assert set(pairs) == {("alice", "bob"), ("dave", "bob"), ("dave", "carol")}
    for pair in pairs.values():
        assert pair["status"] == "ok", pair.get("error")
        assert pair["agreement"] == 1.0
    assert pairs["dave", "bob"]["d_querier"] == 48 and pairs["alice", "bob"]["d_querier"] == 32


def test_held_out_classes_become_ood_queries(tmp_path):
    """The provider never trains on 'sport'; the querier's sport texts are scored as OOD."""
    out = tmp_path / "out"
    overrides = [*tiny_overrides(tmp_path, n_texts=200, n_public=80, n_private=60, n_query=40),
                 "dataset.holdout_classes=[sport]", "silos.carol=null"]
    simulate(spying_server_app([]), client_app, num_silos=2, overrides=overrides)
    run = json.loads((out / "run.json").read_text())
    assert run["silos"]["bob"]["classes.corpus"] == ["politics", "tech"]
    (pair,) = build_report(out, run, "pytest")["pairs"]
    assert pair["status"] == "ok", pair.get("error")
    labels = [json.loads(line)["label"] for line in
              (out / "data" / "queries.jsonl").read_text().splitlines()]
    assert pair["n_ood"] == labels.count("sport") > 0
    assert pair["agreement"] == 1.0
    # The querier's OOD scores of what it decrypted are the float64 ones (up to CKKS noise).
    assert pair["ood_auroc_msp_encrypted"] == pytest.approx(pair["ood_auroc_msp_aligned"],
                                                            abs=0.01)


# -- bad requests at every boundary of a running silo: one simulation, named cases ---------------
# Each bad request is answered with a named error, and the silo answers the next valid request:
# before the protocol (nothing prepared, no map), then after it (malformed, truncated and
# foreign-key ciphertexts, a wrong dimension, an oversized batch, an unknown action, an unknown
# pair, NaN in a request and in the embeddings), and a querier whose query budget is spent is
# refused while the silo keeps serving. One Flower simulation sends them all (~1 min); each case
# below reads its own request's outcome.

D_BOB = 64  # the tiny provider model's width (tiny.save_tiny_models: bert64)

BEFORE_THE_PROTOCOL = {  # what the error names
    "evaluate before prepare": "LookupError",
    "querier action at a provider": "PermissionError",
    "encrypt before a map": "LookupError",
    "no request record": "no 'request' record",
}
AFTER_THE_PROTOCOL = {
    "truncated ciphertext": "CiphertextError",
    "bit-flipped ciphertext": "checksum mismatch",
    "ciphertexts under another key": "another key",
    "wrong dimension": f"expected {D_BOB} query ciphertexts",
    "oversized batch": "max_request_queries",
    "unknown action": "flower error",
    "unknown provider": "no map fitted for provider 'nobody'",
    "unknown querier": "no public context from querier 'eve'",
    "queries out of range": "IndexError",
    "NaN bound": "x_bound",
    "NaN embeddings": "NaN or inf",
}


def _ask(grid, node, action, request, kind=None):
    """One request to one node, as the coordinator sends it; its reply."""
    content = request_content(request) if request is not None else RecordDict()
    message = Message(content, dst_node_id=node, message_type=kind or message_type(action))
    (reply,) = grid.send_and_receive([message], timeout=60)
    return reply


class _Serving:
    """One valid single-path query through both silos, as the coordinator would send it."""

    def __init__(self, grid, alice: int, bob: int) -> None:
        self.grid, self.alice, self.bob = grid, alice, bob
        info = _ask(grid, bob, Action.DESCRIBE, {}).content["reply"]
        self.task = info["tasks"][0]
        self.n_classes = len(info[f"classes.{self.task}"])
        self.plan = {"provider": "bob", "task": self.task,
                     "classes": list(info[f"classes.{self.task}"]),
                     "head": info[f"head.{self.task}"], "batch_size": 1}
        self.request: dict = {}
        self.reply: dict = {}

    def round(self) -> str | None:
        """None, or the first error of the round."""
        enc = _ask(self.grid, self.alice, Action.ENCRYPT, {
            "provider": "bob", "start": 0, "stop": 1, "path": "single",
            "n_classes": self.n_classes, "with_context": True, "rotations": True})
        if error_of(enc):
            return error_of(enc)
        batch = enc.content["reply"]
        self.request = {"querier": "alice", "task": self.task, "path": "single", "n": 1,
                        "ciphertexts": list(batch["ciphertexts"]), "context": batch["context"]}
        ev = _ask(self.grid, self.bob, Action.EVALUATE, self.request)
        if error_of(ev):
            return error_of(ev)
        self.reply = ev.content["reply"]
        plan = _ask(self.grid, self.alice, Action.PLAN, self.plan)
        if error_of(plan):
            return error_of(plan)
        return error_of(_ask(self.grid, self.alice, Action.DECRYPT, {
            **self.plan, "start": 0, "n": 1, "path": "single", "n_classes": self.n_classes,
            "ciphertexts": list(ev.content["reply"]["ciphertexts"])}))


def _after_the_protocol(serving: _Serving) -> dict[str, tuple]:
    """(node, action, request) of each bad request sent once the protocol has run."""
    good, alice, bob, k = serving.request, serving.alice, serving.bob, serving.n_classes
    flipped = bytearray(good["ciphertexts"][0])
    flipped[len(flipped) // 2] ^= 4
    stranger = CkksKit.generate(default_params())
    return {
        "truncated ciphertext": (bob, Action.EVALUATE, {
            **good, "ciphertexts": [c[: len(c) // 3] for c in good["ciphertexts"]]}),
        "bit-flipped ciphertext": (bob, Action.EVALUATE, {
            **good, "ciphertexts": [bytes(flipped), *good["ciphertexts"][1:]]}),
        "ciphertexts under another key": (bob, Action.EVALUATE, {
            **good, "ciphertexts": encrypt_queries(stranger, np.zeros((1, D_BOB)), path="single",
                                                   n_classes=k)}),
        "wrong dimension": (bob, Action.EVALUATE, {
            "querier": "alice", "task": serving.task, "path": "batched", "n": 1,
            "ciphertexts": encrypt_queries(stranger, np.zeros((1, D_BOB - 1)), path="batched",
                                           n_classes=k)}),
        "oversized batch": (bob, Action.EVALUATE, {**good, "n": 10**6}),
        "unknown action": (bob, None, {}),
        "unknown provider": (alice, Action.ENCRYPT, {
            "provider": "nobody", "start": 0, "stop": 1, "path": "batched", "n_classes": k}),
        "unknown querier": (bob, Action.EVALUATE, {
            key: v for key, v in {**good, "querier": "eve"}.items() if key != "context"}),
        "queries out of range": (alice, Action.ENCRYPT, {
            "provider": "bob", "start": 0, "stop": 10**6, "path": "batched", "n_classes": k}),
        "NaN bound": (bob, Action.CROSS_PRODUCTS, {
            "querier": "alice", "d_in": 33, "x_bound": float("nan"), "fit": [b"x"]}),
    }


def _bad_request_app(cache_dir, errors: dict[str, str],
                     valid_after: dict[str, str | None]) -> ServerApp:
    """A ServerApp that sends every bad request, and a valid round after each, recording both."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        while len(list(grid.get_node_ids())) < 2:  # the simulated SuperNodes register in turn
            time.sleep(0.1)
        nodes = {str(_ask(grid, node, Action.DESCRIBE, {}).content["reply"]["silo"]): node
                 for node in grid.get_node_ids()}
        alice, bob = nodes["alice"], nodes["bob"]
        before = {
            "evaluate before prepare": (bob, Action.EVALUATE, {
                "querier": "alice", "task": "corpus", "ciphertexts": [b"junk"],
                "path": "batched", "n": 1}),
            "querier action at a provider": (bob, Action.ENCRYPT, {}),
            "encrypt before a map": (alice, Action.ENCRYPT, {
                "provider": "bob", "start": 0, "stop": 1, "path": "batched", "n_classes": 2}),
            "no request record": (alice, Action.UPLOAD, None),
        }
        for name, (node, action, request) in before.items():
            errors[name] = error_of(_ask(grid, node, action, request)) or ""
        run_coordinator(grid, load_config(context.run_config["overrides"]))

        serving = _Serving(grid, alice, bob)
        valid_after["the first round"] = serving.round()
        for name, (node, action, request) in _after_the_protocol(serving).items():
            kind = "query.no_such_action" if action is None else None
            errors[name] = error_of(_ask(grid, node, action, request, kind)) or ""
            valid_after[name] = serving.round()
        # NaN in the embeddings: poison the embedding cache, then ask alice to prepare again.
        for cached in (cache_dir / "embeddings").glob("*.safetensors"):
            array = load_file(cached)["embeddings"]
            save_file({"embeddings": np.full_like(array, np.nan)}, cached)
        errors["NaN embeddings"] = error_of(_ask(grid, alice, Action.PREPARE, {})) or ""
        valid_after["NaN embeddings"] = serving.round()
        # Spend the budget: then bob refuses alice, and still answers everything else.
        spending = None
        while spending is None and serving.reply["budget_left"] > 0:
            spending = serving.round()
        valid_after["spending the budget"] = spending
        errors["budget spent"] = error_of(_ask(grid, bob, Action.EVALUATE, serving.request)) or ""
        valid_after["budget spent"] = error_of(_ask(grid, bob, Action.DESCRIBE, {}))

    return app


@pytest.fixture(scope="module")
def bad_requests(tmp_path_factory):
    """The outcomes of one simulation that sends every bad request: by case name its error and
    the valid round after it (None: answered), and run.json."""
    import tenseal  # noqa: F401  (SEAL must be importable in the ServerApp's thread)

    root = tmp_path_factory.mktemp("bad")
    errors: dict[str, str] = {}
    valid_after: dict[str, str | None] = {}
    overrides = [*tiny_overrides(root, n_texts=200, n_public=80, n_private=60, n_query=20),
                 "silos.carol=null", "silos.bob.policy.query_budget=40",
                 "serve.path=single",  # one budget unit per query (the batched path costs 4,096)
                 "silos.bob.policy.max_request_queries=64",
                 "alignment.cosine=true"]  # alice asks for the cosine round; bob's policy refuses it
    simulate(_bad_request_app(root / "cache", errors, valid_after), client_app, num_silos=2,
             overrides=overrides)
    run = json.loads((root / "out" / "run.json").read_text())
    return {"errors": errors, "valid_after": valid_after, "run": run}


@pytest.mark.parametrize("case", BEFORE_THE_PROTOCOL)
def test_a_request_before_the_protocol_is_refused_by_name(bad_requests, case):
    assert BEFORE_THE_PROTOCOL[case] in bad_requests["errors"][case], bad_requests["errors"][case]


def test_the_protocol_runs_after_the_early_bad_requests(bad_requests):
    (pair,) = bad_requests["run"]["pairs"]
    assert pair["status"] == "ok", pair.get("error")
    assert pair["queries_charged"] == 20
    # bob's policy does not allow the cosine round: the coordinator does not ask it, the pair is
    # fine without it.
    assert math.isnan(pair["cosine"]) and not math.isnan(pair["r2"])
    assert bad_requests["valid_after"]["the first round"] is None  # a valid round goes through


@pytest.mark.parametrize("case", AFTER_THE_PROTOCOL)
def test_a_bad_request_gets_a_named_error_and_the_silo_serves_the_next(bad_requests, case):
    error = bad_requests["errors"][case]
    assert AFTER_THE_PROTOCOL[case] in error, (case, error)
    assert bad_requests["valid_after"][case] is None, (case, bad_requests["valid_after"][case])


def test_a_spent_budget_is_refused_and_the_provider_still_answers(bad_requests):
    outcomes = bad_requests["valid_after"]
    assert outcomes["spending the budget"] is None  # every query up to the budget was answered
    assert "QueryBudgetExceeded" in bad_requests["errors"]["budget spent"]
    assert outcomes["budget spent"] is None  # and bob still answers alice's other requests

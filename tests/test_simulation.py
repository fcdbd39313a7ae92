"""The whole Flower simulation with tiny in-memory models and three silos."""

import json
import time

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from safetensors.numpy import load_file
from tiny import tiny_overrides

from conf import load_config
from crypto import CkksKit
from crypto.serialization import HEADER_BYTES, CiphertextError, load_into
from silos.alignment import AffineMap
from silos.client_app import app as client_app
from simulations.engine import simulate
from simulations.report import build_report
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
        run_coordinator(SpyGrid(grid, log), load_config(context.run_config["overrides"]))

    return app


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    out = root / "out"
    overrides = [
        *tiny_overrides(root, n_texts=320, n_public=120, n_private=120, n_query=70),
        "silos.carol.pooling=last",
        "serve.batch_size=32",  # several batches per pair
    ]
    log: list[tuple[str, Message]] = []
    simulate(spying_server_app(log), spying_client_app(str(root / "spy")), num_silos=3,
             overrides=overrides)
    run = json.loads((out / "run.json").read_text())
    report = build_report(out, run, "pytest")
    return out, report, log


def test_every_pair_succeeds_and_encrypted_equals_plaintext(tiny_run):
    _, report, _ = tiny_run
    pairs = report["pairs"]
    assert {(p["querier"], p["provider"]) for p in pairs} == {("alice", "bob"), ("alice", "carol")}
    for pair in pairs:
        assert pair["status"] == "ok", pair.get("error")
        assert pair["agreement"] == 1.0
        assert pair["max_abs_error"] <= 1e-3
        assert pair["encrypted_accuracy"] == pair["aligned_accuracy"]
        assert pair["map_relative_error"] <= 1e-4
        # Fit quality measured under encryption equals the plaintext computation.
        assert pair["r2"] == pytest.approx(pair["plaintext_r2"], abs=1e-5)
        assert pair["cosine"] == pytest.approx(pair["plaintext_cosine"], abs=1e-5)
        assert pair["n_queries"] == 70 and pair["latency_ms_per_query"] > 0
        assert pair["bytes_per_query"] > 0 and pair["context_bytes"] > 0
        assert 0.0 <= pair["native_accuracy"] <= 1.0


def test_the_map_stays_with_the_querier(tiny_run):
    out, report, _ = tiny_run
    for pair in report["pairs"]:
        fitted = AffineMap.load(out / "silos" / "alice" / "maps" / pair["provider"])
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
    querier = out / "silos" / "alice"
    public = load_file(querier / "public_embeddings.safetensors")
    queries = load_file(querier / "query_embeddings.safetensors")["x"]
    vectors = [*public["x_fit"], *public["x_val"], *queries]
    for pair in report["pairs"]:
        vectors += list(AffineMap.load(querier / "maps" / pair["provider"]).transform(queries))
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
    for path, single_max in (("single", 1000), ("batched", 0)):
        out = tmp_path / path
        overrides = [*tiny_overrides(tmp_path, n_texts=200, n_public=80, n_private=60,
                                     n_query=12),
                     "silos.carol=null", "serve.batch_size=5", f"serve.single_max={single_max}",
                     f"run.output_dir={out}"]
        simulate(spying_server_app([]), client_app, num_silos=2, overrides=overrides)
        report = build_report(out, json.loads((out / "run.json").read_text()), "pytest")
        (pair,) = report["pairs"]
        assert pair["status"] == "ok", pair.get("error")
        assert pair["path"] == path and pair["agreement"] == 1.0
        assert pair["max_abs_error"] <= 1e-3
        logits[path] = load_file(out / "silos" / "alice" / "logits" / "bob.safetensors")["logits"]
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


def test_bad_requests_get_error_replies_and_the_silos_keep_serving(tmp_path):
    """Malformed requests are answered with named errors; the same silos then run the protocol."""
    from strategy.protocol import Action, error_of, message_type, request_content

    errors: dict[str, str] = {}

    def ask(grid, node, action, request):
        message = Message(request_content(request), dst_node_id=node,
                          message_type=message_type(action))
        (reply,) = grid.send_and_receive([message], timeout=60)
        return reply

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = {}
        while len(list(grid.get_node_ids())) < 2:  # the simulated SuperNodes register in turn
            time.sleep(0.1)
        for node in grid.get_node_ids():
            nodes[str(ask(grid, node, Action.DESCRIBE, {}).content["reply"]["silo"])] = node
        bad = {
            "evaluate before prepare": (nodes["bob"], Action.EVALUATE,
                                        {"querier": "alice", "ciphertexts": [b"junk"],
                                         "path": "batched", "n": 1}),
            "querier action at a provider": (nodes["bob"], Action.ENCRYPT, {}),
            "encrypt before a map": (nodes["alice"], Action.ENCRYPT,
                                     {"provider": "bob", "start": 0, "stop": 1, "path": "batched",
                                      "n_classes": 2}),
            "no request record": (nodes["alice"], Action.UPLOAD, None),
        }
        for name, (node, action, request) in bad.items():
            content = request_content(request) if request is not None else RecordDict()
            message = Message(content, dst_node_id=node, message_type=message_type(action))
            (reply,) = grid.send_and_receive([message], timeout=60)
            errors[name] = error_of(reply) or ""
        run_coordinator(grid, load_config(context.run_config["overrides"]))

    out = tmp_path / "out"
    overrides = [*tiny_overrides(tmp_path, n_texts=200, n_public=80, n_private=60, n_query=20),
                 "silos.carol=null"]
    simulate(app, client_app, num_silos=2, overrides=overrides)
    assert "LookupError" in errors["evaluate before prepare"]
    assert "PermissionError" in errors["querier action at a provider"]
    assert "LookupError" in errors["encrypt before a map"]
    assert "no 'request' record" in errors["no request record"]
    run = json.loads((out / "run.json").read_text())
    assert [p["status"] for p in run["pairs"]] == ["ok"]

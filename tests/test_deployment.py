"""Flower's deployment engine with real processes: a SuperLink with TLS and SuperNode authentication,
one registered SuperNode per silo, `flwr run`; refused SuperNodes; a silo killed mid-run.

The tests marked ``deploy`` start real processes (minutes): ``make test-deploy`` or ``pytest -m deploy``.
Every process is started in its own process group and stopped by pid; the module checks none is left.
"""

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from cryptography.x509 import DNSName, IPAddress, SubjectAlternativeName, load_pem_x509_certificate
from tiny import tiny_overrides

from conf import load_config
from deploy.local import DEPLOY_DIR, Deployment, own_data
from silos.settings import node_settings
from simulations.benchmark import benchmark_overrides
from simulations.report import build_report

SILOS = ["alice", "bob", "carol"]


# -- fast: configuration and credentials -----------------------------------------------------------
def test_node_config_names_the_silo_and_its_local_paths():
    cfg = load_config()
    s = node_settings(cfg, {"silo": "bob", "model": "/srv/mpnet", "public": "/srv/public.jsonl",
                            "tasks": "news=/srv/bbc.csv, sport=/srv/sport.csv",
                            "output-dir": "/srv/out", "cache-dir": "/srv/cache", "role": "provider"})
    assert (s.name, s.role, s.encoder.model, s.public.source) == ("bob", "provider", "/srv/mpnet",
                                                                  "/srv/public.jsonl")
    assert [(task, src.source) for task, src in s.tasks] == [("news", "/srv/bbc.csv"),
                                                              ("sport", "/srv/sport.csv")]
    alice = node_settings(cfg, {"silo": "alice", "queries": "/srv/mine.txt", "task": "news"})
    assert (alice.queries.source, alice.task) == ("/srv/mine.txt", "news")
    with pytest.raises(ValueError, match="NAME=PATH"):
        node_settings(cfg, {"silo": "bob", "tasks": "/srv/bbc.csv"})
    assert s.workdir == Path("/srv/out/silos/bob") and s.cache_dir == Path("/srv/cache")
    assert cfg.silos.bob.model == "mpnet-base"  # the run config itself is left alone
    assert node_settings(cfg, {"partition-id": 2, "num-partitions": 3}).name == "carol"
    with pytest.raises(KeyError, match="modle"):
        node_settings(cfg, {"silo": "bob", "modle": "x"})
    with pytest.raises(KeyError, match="mallory"):
        node_settings(cfg, {"silo": "mallory", "model": "x"})
    with pytest.raises(ValueError, match="role"):
        node_settings(cfg, {"silo": "bob", "role": "boss"})


def test_certificates_and_keys_are_what_flower_expects(tmp_path):
    subprocess.run([DEPLOY_DIR / "make_certs.sh", tmp_path / "certs", "10.0.0.5", "link.example.org"],
                   check=True, capture_output=True)
    subprocess.run([DEPLOY_DIR / "make_keys.sh", tmp_path / "keys", "alice"], check=True,
                   capture_output=True)
    cert = load_pem_x509_certificate((tmp_path / "certs" / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(IPAddress)} == {"127.0.0.1", "10.0.0.5"}
    assert set(sans.get_values_for_type(DNSName)) == {"localhost", "link.example.org"}
    private = load_ssh_private_key((tmp_path / "keys" / "alice").read_bytes(), None)
    public = load_ssh_public_key((tmp_path / "keys" / "alice.pub").read_bytes())
    assert isinstance(private.curve, ec.SECP384R1) and isinstance(public.curve, ec.SECP384R1)
    assert (tmp_path / "keys" / "alice").stat().st_mode & 0o077 == 0
    assert (tmp_path / "certs" / "server.key").stat().st_mode & 0o077 == 0
    key = (tmp_path / "keys" / "alice").read_bytes()
    subprocess.run([DEPLOY_DIR / "make_keys.sh", tmp_path / "keys", "alice"], check=True,
                   capture_output=True)
    assert (tmp_path / "keys" / "alice").read_bytes() == key  # never overwritten


# -- slow: real processes ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    # Each silo logs its messages (the tests read how many processes loaded an LM).
    tiny = [*tiny_overrides(root, n_texts=200, n_public=80, n_private=60, n_query=20),
            "run.message_log=true"]
    # Each SuperNode gets its own copy of its data, named in its node config; the run config
    # names none.
    overrides, node_configs = own_data([*tiny, *benchmark_overrides(load_config(tiny))],
                                       root / "hosts")
    assert not any(o.startswith("public.source=") for o in overrides)
    fed = Deployment(root / "federation", SILOS, poll_interval=0.1)
    try:
        fed.start(node_configs)
        yield fed, overrides, root, node_configs
    finally:
        fed.stop()
    assert fed.leftovers() == [], "processes of the deployment are still running"


def messages(out: Path, silo: str) -> list[dict]:
    return [json.loads(line) for line in (out / "silos" / silo / "messages.jsonl").read_text().splitlines()]


@pytest.mark.deploy
def test_full_protocol_through_tls_and_node_auth(deployment):
    fed, overrides, root, node_configs = deployment
    out = root / "out-full"
    done = fed.run([*overrides, f"run.output_dir={out}", "coordinator.timeout=300"], timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Successfully started run" in done.stdout and "uv sync" not in done.stdout + done.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["errors"] == []
    assert {s["node_id"] for s in run["silos"].values()} == set(fed.node_ids.values())
    report = build_report(out, run, "pytest", node_configs=node_configs)
    assert {(p["querier"], p["provider"]) for p in report["pairs"]} == {("alice", "bob"), ("alice", "carol")}
    assert run["silos"]["alice"]["public_digest"] == run["silos"]["bob"]["public_digest"]
    for pair in report["pairs"]:
        assert pair["status"] == "ok", pair.get("error")
        assert pair["agreement"] == 1.0  # encrypted predictions equal the plaintext ones
        assert pair["max_abs_error"] <= 1e-3
        assert pair["encrypted_accuracy"] == pair["aligned_accuracy"]
        assert pair["map_relative_error"] <= 1e-4
    # Flower 1.41 starts one ClientApp process per message. A silo loads its LM only in the
    # messages that embed texts not yet in its embedding cache: the querier's texts and a
    # provider's task data in `prepare`, the public texts where a map is fitted (the querier's
    # `upload`; a provider embeds them in `prepare` to train its head).
    for silo in SILOS:
        records = messages(out, silo)
        assert len({r["pid"] for r in records}) == len(records) > 2
        loads = [r["action"] for r in records if r["encoder_loads"]]
        assert set(loads) <= {"prepare", "upload"} and len(loads) == len(set(loads)) >= 1


@pytest.mark.deploy
def test_unregistered_key_and_wrong_root_certificate_are_refused(deployment):
    fed, _, root, _ = deployment
    subprocess.run([DEPLOY_DIR / "make_keys.sh", fed.keys, "rogue", "spare"], check=True,
                   capture_output=True)
    subprocess.run([DEPLOY_DIR / "make_certs.sh", root / "other-ca", "127.0.0.1"], check=True,
                   capture_output=True)
    spare = fed.register("spare")  # registered: only the certificate is wrong below
    online = fed.online()
    rogue = fed.start_supernode("alice", key=fed.keys / "rogue", max_wait_time=30, log_name="rogue")
    wrong_ca = fed.start_supernode("spare", root_certificates=root / "other-ca" / "ca.crt",
                                   max_wait_time=30, log_name="wrong-ca")
    assert rogue.wait(timeout=120) != 0
    assert wrong_ca.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in (fed.logs / "rogue.log").read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in (fed.logs / "wrong-ca.log").read_text()
    assert fed.online() == online and spare not in online


@pytest.mark.deploy
def test_a_silo_killed_mid_run_fails_only_its_pairs(deployment):
    fed, overrides, root, node_configs = deployment
    out = root / "out-killed"
    killed: list[int] = []

    def kill_bob_when_alignment_starts() -> None:
        log = fed.logs / "bob.log"
        start = log.stat().st_size
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with log.open() as f:
                f.seek(start)
                if "Receiving: query.cross_products" in f.read():
                    killed.extend(fed.kill("bob"))
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_bob_when_alignment_starts, daemon=True)
    watcher.start()
    # The SuperLink declares bob unavailable once he misses his heartbeats (~1 min), well before
    # the coordinator's own timeout would expire.
    done = fed.run([*overrides, f"run.output_dir={out}", "coordinator.timeout=240"], timeout=900)
    watcher.join(timeout=5)
    assert killed, "bob's SuperNode never received its alignment request"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    pairs = {p["provider"]: p for p in run["pairs"]}
    assert pairs["bob"]["status"] == "failed" and pairs["bob"]["failed_silo"] == "bob"
    assert "silo 'bob' failed on 'cross_products'" in pairs["bob"]["error"]
    assert "Node Unavailable" in pairs["bob"]["error"], pairs["bob"]["error"]
    assert pairs["bob"]["seconds"]["align"] < 240
    assert pairs["carol"]["status"] == "ok"
    assert "failed: alice → bob: silo 'bob' failed on 'cross_products'" in done.stdout
    report = build_report(out, run, "pytest", node_configs=node_configs)
    carol = next(p for p in report["pairs"] if p["provider"] == "carol")
    assert carol["agreement"] == 1.0 and carol["encrypted_accuracy"] == carol["aligned_accuracy"]

"""Serving over helper processes (crypto.processes) and the path choice (crypto.cost).

Helpers are persistent: the first test that needs one pays for its start-up (~1 s); the pool is
this test process's, as a silo's would be."""

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from tiny import default_params

from crypto import (
    CircuitPrivacy,
    CkksKit,
    EncryptedLinearHead,
    SinglePlan,
    decrypt_logits,
    encrypt_queries,
    prepare_workers,
)
from crypto.cost import Calibration, CostModel, operation_counts
from crypto.processes import HelperError, pool, shares
from crypto.serialization import CiphertextError
from simulations.attacks import c1_solve, noise_solve

PARAMS = default_params()
D, K = 41, 3  # an odd d: the features split unevenly


@pytest.fixture(scope="module")
def querier() -> CkksKit:
    return CkksKit.generate(PARAMS)


@pytest.fixture(scope="module")
def head() -> EncryptedLinearHead:
    rng = np.random.default_rng(0)
    return EncryptedLinearHead(rng.normal(size=(D, K)) / np.sqrt(D), rng.normal(size=K))


def _kit(querier: CkksKit, path: str) -> CkksKit:
    steps = SinglePlan(D, K, querier.slots).rotation_steps if path == "single" else []
    return CkksKit.from_public(querier.public_bytes(steps))


def test_shares_cover_every_unit_once_in_order():
    assert shares(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shares(2, 5) == [(0, 1), (1, 2)]  # never an empty share
    assert shares(7, 1) == [(0, 7)]
    with pytest.raises(ValueError):
        shares(5, 0)


@pytest.mark.parametrize(("path", "n"), [("batched", 4100), ("single", 5)])
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_give_the_logits_of_one_process(querier, head, path, n, workers):
    """Encrypted over ``workers`` processes and evaluated by one, or the other way round: the same
    layout, the same logits in the same order (4100 queries: two batched groups)."""
    rng = np.random.default_rng(n + workers)
    Z = rng.uniform(-2, 2, size=(n, D))
    kit = _kit(querier, path)
    expected = Z @ head.coef + head.intercept
    alone = encrypt_queries(querier, Z, path=path, n_classes=K)
    spread = encrypt_queries(querier, Z, path=path, n_classes=K, workers=workers)
    assert len(spread) == len(alone) == head.expected_ciphertexts(path, n, kit.slots)
    replies = 2 * K if path == "batched" else n
    results = []
    for blobs, evaluators in ((alone, 1), (spread, 1), (alone, workers), (spread, workers)):
        out = head.evaluate(kit, blobs, path=path, n=n, workers=evaluators)
        assert len(out) == replies
        results.append(decrypt_logits(querier, out, path=path, n=n, n_classes=K))
    for logits in results:
        assert np.abs(logits - expected).max() <= 1e-3
        assert (logits.argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize(("path", "n"), [("batched", 3), ("single", 3)])
def test_unprotected_replies_are_bit_for_bit_those_of_one_process(querier, head, path, n):
    """Without protection nothing is random: the helpers' replies (the batched path's partial sums
    added here) are the very bytes one process computes."""
    kit = _kit(querier, path)
    blobs = encrypt_queries(querier, np.random.default_rng(1).uniform(-1, 1, (n, D)), path=path,
                            n_classes=K)
    off = CircuitPrivacy.off(kit)
    alone = head.evaluate(kit, blobs, path=path, n=n, privacy=off)
    assert head.evaluate(kit, blobs, path=path, n=n, privacy=off, workers=2) == alone
    protected = head.evaluate(kit, blobs, path=path, n=n, workers=2)
    assert all(a != b for a, b in zip(protected, alone, strict=True))  # re-randomised, flooded
    assert all(len(p) < len(a) for p, a in zip(protected, alone, strict=True))  # and rescaled


@pytest.mark.parametrize("attack", [c1_solve, noise_solve])
@pytest.mark.parametrize("workers", [2, 3])
def test_replies_from_helpers_are_protected(querier, head, attack, workers):
    """The attacks that copy the head from one unprotected reply work through helpers too (the
    partial sums add up exactly), and fail once the replies are protected: on every class, each
    of whose replies is masked by another process."""
    kit = _kit(querier, "batched")

    def spread(privacy):
        return lambda blobs: head.evaluate(kit, blobs, path="batched", n=1, privacy=privacy,
                                           workers=workers)

    broken = attack(querier, spread(CircuitPrivacy.off(kit)), D, K)
    assert broken.consistent and broken.max_error(head.coef, head.intercept) < 1e-6
    # Without the final rescale (which alone defeats these linear solves), only the masks that
    # the processes add stand in the way: not one column may come out.
    masks_only = CircuitPrivacy(kit, rescale=False)
    for privacy in (masks_only, CircuitPrivacy(kit)):
        safe = attack(querier, spread(privacy), D, K)
        assert not safe.consistent
        for k in range(K):
            assert np.abs(safe.coef[:, k] - head.coef[:, k]).max() > np.abs(head.coef).max()


def test_helpers_persist_across_requests(querier, head):
    kit = _kit(querier, "batched")
    blobs = encrypt_queries(querier, np.zeros((2, D)), path="batched", n_classes=K)
    head.evaluate(kit, blobs, path="batched", n=2, workers=2)
    before = pool().pids
    assert before
    start = time.perf_counter()
    head.evaluate(kit, blobs, path="batched", n=2, workers=2)
    assert time.perf_counter() - start < 0.5  # no interpreter start, no kit rebuilt
    assert set(pool().pids) == set(before)


def test_prepared_helpers_hold_the_kit_and_head_before_the_first_request(querier, head):
    kit = CkksKit.from_public(querier.public_bytes([1, 2, 3]))  # a context no helper has seen
    prepare_workers(kit, 3, head=head)
    idle = pool()._idle
    assert len(idle) >= 2
    assert all({kit.shared.digest, head.shared.digest} <= set(h.known) for h in idle[-2:])


def test_an_error_in_a_helper_surfaces_in_the_caller(querier, head):
    kit = _kit(querier, "batched")
    blobs = encrypt_queries(querier, np.zeros((2, D)), path="batched", n_classes=K)
    bad = list(blobs)
    bad[0] = bad[0][:-1] + bytes([bad[0][-1] ^ 1])  # feature 0: the first share, a helper's
    with pytest.raises(CiphertextError):
        head.evaluate(kit, bad, path="batched", n=2)  # one process: the error itself
    bad = list(blobs)
    bad[1] = bad[1][:-1] + bytes([bad[1][-1] ^ 1])
    with pytest.raises(HelperError, match=r"CiphertextError: ciphertext 1: checksum mismatch"):
        head.evaluate(kit, bad, path="batched", n=2, workers=2)
    # the helper that failed serves again
    out = head.evaluate(kit, blobs, path="batched", n=2, workers=2)
    assert decrypt_logits(querier, out, path="batched", n=2, n_classes=K).shape == (2, K)


def test_a_helper_that_dies_surfaces_and_is_replaced(querier, head):
    kit = _kit(querier, "single")
    Z = np.random.default_rng(2).uniform(-1, 1, (4, D))
    blobs = encrypt_queries(querier, Z, path="single", n_classes=K)
    head.evaluate(kit, blobs, path="single", n=4, workers=2)  # a warm helper
    for pid in pool().pids:
        os.kill(pid, 9)
    with pytest.raises(HelperError, match="exited"):
        head.evaluate(kit, blobs, path="single", n=4, workers=2)
    out = head.evaluate(kit, blobs, path="single", n=4, workers=2)  # a fresh one
    logits = decrypt_logits(querier, out, path="single", n=4, n_classes=K)
    assert np.abs(logits - (Z @ head.coef + head.intercept)).max() <= 1e-3


def test_helpers_stop_when_the_interpreter_exits():
    script = (
        "import numpy as np, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from tiny import default_params\n"
        "from crypto import CkksKit, encrypt_queries\n"
        "from crypto.processes import pool\n"
        "q = CkksKit.generate(default_params())\n"
        "encrypt_queries(q, np.zeros((1, 8)), path='batched', n_classes=2, workers=2)\n"
        "print(*pool().pids)\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True, cwd=root, env=env)
    pids = [int(p) for p in done.stdout.split()]
    assert pids
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
# -- the path choice -------------------------------------------------------------------------------
def _model(params=PARAMS, **seconds) -> CostModel:
    """A calibration with round numbers near this machine's at N=8192 (ms), sizes exact."""
    base = {"encrypt": 2.2e-3, "load_query": 0.6e-3, "scalar_multiply_add": 0.15e-3,
            "multiply_add": 0.14e-3, "rotate": 1.3e-3, "encode": 0.5e-3, "protect": 6e-3,
            "dump_reply": 0.4e-3, "load_reply": 0.25e-3, "decrypt": 0.4e-3, **seconds}
    return CostModel([Calibration(params.poly_modulus_degree, params.coeff_mod_bit_sizes, base,
                                  131305, 131224, 492_000, 750_000, 750_000)])


def test_choose_path_picks_single_for_one_query_and_batched_for_thousands():
    model = _model()
    for spb in (0.0, 8e-8):
        assert model.choose_path(384, 5, 1, params=PARAMS, seconds_per_byte=spb,
                                 count_context=False) == "single"
        assert model.choose_path(384, 5, 4096, params=PARAMS, seconds_per_byte=spb,
                                 count_context=False) == "batched"
    # ... and a shipped calibration agrees
    from conf import CONF_DIR, load_config

    shipped = CostModel.load(CONF_DIR / load_config().serve.cost_model)
    assert shipped.choose_path(384, 5, 1, params=PARAMS, seconds_per_byte=0.0,
                               count_context=False) == "single"
    assert shipped.choose_path(384, 5, 4096, params=PARAMS, seconds_per_byte=0.0,
                               count_context=False) == "batched"


def test_costs_follow_the_layouts():
    batched = operation_counts("batched", 384, 5, 4096, 4097)  # two groups
    assert batched["queries_sent"] == 768 and batched["replies"] == 10
    single = operation_counts("single", 384, 5, 4096, 3)
    plan = SinglePlan(384, 5, 4096)
    assert single["rotate"] == 3 * plan.n_rotations
    assert single["queries_sent"] == 3 * plan.ciphertexts_per_query
    cost = _model().cost("single", 384, 5, 3, params=PARAMS)
    assert cost.bytes_up == 3 * plan.ciphertexts_per_query * 131305
    assert cost.context_bytes == 492_000 + len(plan.rotation_steps) * 750_000


def test_exact_bytes_match_real_ciphertexts(querier, head):
    """The model's bytes are the blobs' own sizes (sizes from a real calibration, another key)."""
    from simulations.bench_crypto import calibrate

    model = CostModel([calibrate(PARAMS, reps=2)])
    for path, n in (("batched", 5), ("single", 2)):
        kit = _kit(querier, path)
        blobs = encrypt_queries(querier, np.zeros((n, D)), path=path, n_classes=K)
        out = head.evaluate(kit, blobs, path=path, n=n)
        cost = model.cost(path, D, K, n, params=PARAMS)
        assert (cost.bytes_up, cost.bytes_down) == (sum(map(len, blobs)), sum(map(len, out)))
        steps = SinglePlan(D, K, querier.slots).rotation_steps if path == "single" else []
        # SEAL compresses the public key (zstd): its size varies by ~0.1 % from one key to the next
        assert cost.context_bytes == pytest.approx(len(querier.public_bytes(steps)), rel=1e-2)


def test_choose_path_agrees_with_the_measured_ordering(querier):
    """Two requests whose measured costs are far apart, either way: the calibrated model orders
    them as the clock does."""
    from simulations.bench_crypto import HeadBench, calibrate, measure_path

    model = CostModel([calibrate(PARAMS, reps=3)])
    for d, n in ((16, 4096), (300, 2)):  # few features, a full group / many features, two queries
        bench = HeadBench(d, 2, "n8192", seed=d, params=PARAMS)
        measured = {p: measure_path(bench, p, n, reps=1, sample=8) for p in ("batched", "single")}
        best = min(measured, key=lambda p: measured[p]["seconds"])
        assert max(measured.values(), key=lambda m: m["seconds"])["seconds"] > 2 * measured[best][
            "seconds"]
        assert model.choose_path(d, 2, n, params=PARAMS, seconds_per_byte=0.0,
                                 count_context=False) == best


def test_a_missing_calibration_is_refused(tmp_path):
    other = replace(PARAMS, poly_modulus_degree=16384, coeff_mod_bit_sizes=(60,) * 5)
    with pytest.raises(KeyError, match="--calibrate"):
        _model().cost("batched", 4, 2, 1, params=other)
    path = tmp_path / "model.json"
    _model().save(path)
    assert CostModel.load(path).cost("single", 384, 5, 1, params=PARAMS) == _model().cost(
        "single", 384, 5, 1, params=PARAMS)
    with pytest.raises(FileNotFoundError, match="--calibrate"):
        CostModel.load(tmp_path / "absent.json")

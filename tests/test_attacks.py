"""The semi-honest querier's attacks (simulations/attacks.py) work on unprotected replies and fail on
protected ones; each protection step stops the attack it exists for, and only that one.

A failing attack is one whose own check fails and whose estimate is off by the size of the weights,
or no better than least squares on the logits of the same queries. One test documents a limit of
the protection outside the semi-honest model (a querier that inflates its own noise).

In a git worktree run ``python -m pytest`` from its root: the virtualenv's editable install points
at the main checkout."""

import csv

import numpy as np
import pytest
import tenseal.sealapi as seal

from conf import load_config
from crypto import (
    CkksKit,
    CKKSParams,
    CrossProductPacking,
    EncryptedLinearHead,
    KeyMaterialError,
    SinglePlan,
    encrypt_queries,
)
from crypto.privacy import CircuitPrivacy, coefficient_ciphertexts
from crypto.serialization import HEADER_BYTES
from simulations.attacks import (
    batched_server,
    c1_lattice_solve,
    c1_solve,
    centred,
    cross_product_solve,
    inflated_noise_solve,
    lll,
    logits_baseline,
    noise_solve,
    primes,
    protection,
    raw_decryption,
    residues,
    reused_randomness,
    single_replies,
    single_server,
    slot_solve,
    solve_mod,
    to_coefficients,
    upload_difference_solve,
)

D, K = 16, 3
N_FIT, D_IN, D_OUT = 20, 6, 4


@pytest.fixture(scope="module")
def querier() -> CkksKit:
    return CkksKit.generate(CKKSParams.from_config(load_config().he))


@pytest.fixture(scope="module")
def head() -> EncryptedLinearHead:
    rng = np.random.default_rng(7)
    return EncryptedLinearHead(rng.normal(0, 0.3, (D, K)), rng.normal(0, 1, K))


@pytest.fixture(scope="module")
def batched_kit(querier) -> CkksKit:
    return CkksKit.from_public(querier.public_bytes())


def _single_steps(slots: int) -> list[int]:
    return sorted({*SinglePlan(D, K, slots).rotation_steps,
                   *SinglePlan(D, K, slots, complete_fold=False).rotation_steps})


@pytest.fixture(scope="module")
def single_kit(querier) -> CkksKit:
    return CkksKit.from_public(querier.public_bytes(_single_steps(querier.slots)))


@pytest.fixture(scope="module")
def eval_queries() -> np.ndarray:
    return np.random.default_rng(11).uniform(-1, 1, (10_000, D))


def _attack(attack, querier, kit, head, privacy, noise_std=0.0):
    return attack(querier, batched_server(head, kit, privacy, noise_std=noise_std), D, K)


# -- the querier's tools --------------------------------------------------------------------------
def test_to_coefficients_inverts_seals_ntt(querier):
    rng = np.random.default_rng(0)
    level = querier.query_level
    ps = [m.value() for m in querier.context.get_context_data(level).parms().coeff_modulus()]
    coeffs = np.stack([rng.integers(0, p, querier.params.poly_modulus_degree, dtype=np.uint64)
                       for p in ps])
    ntt, _ = coefficient_ciphertexts(querier, coeffs, level, 1.0)  # SEAL's forward NTT of them
    back = to_coefficients(querier, residues(ntt)[0], level)
    assert np.array_equal(back, coeffs)
    assert not np.array_equal(residues(ntt)[0], coeffs)


def test_lll_finds_a_planted_short_vector():
    rng = np.random.default_rng(6)
    Q = 2**100 + 277
    w = [int(x) for x in rng.integers(-1000, 1000, 3)]
    A = [[int(x) for x in rng.integers(0, 2**62, 5)] for _ in range(3)]
    target = [sum(w[j] * A[j][t] for j in range(3)) % Q for t in range(5)]
    basis = [[1 if i == j else 0 for i in range(3)] + A[j] + [0] for j in range(3)]
    basis += [[0] * 3 + [Q if i == t else 0 for i in range(5)] + [0] for t in range(5)]
    basis.append([0] * 3 + [-x % Q for x in target] + [1])
    reduced = lll(basis)
    short = next(row for row in reduced if abs(row[-1]) == 1)
    assert [x * short[-1] for x in short[:3]] == w and not any(short[3:-1])


def test_solve_mod_solves_and_refuses_singular_systems():
    p = 1152921504606683137
    rng = np.random.default_rng(1)
    A = np.array([[int(x) for x in row] for row in rng.integers(0, 2**62, (6, 6))], dtype=object)
    X = np.array([[int(x) for x in row] for row in rng.integers(-2**40, 2**40, (6, 2))],
                 dtype=object)
    assert np.array_equal(solve_mod(A, A.dot(X) % p, p), X % p)
    A[3] = A[1]
    with pytest.raises(ValueError, match="singular"):
        solve_mod(A, A.dot(X) % p, p)


# -- batched path: c1 and noise solves ------------------------------------------------------------
@pytest.mark.parametrize("attack", [c1_solve, noise_solve])
def test_batched_attacks_copy_the_head_from_an_unprotected_reply(querier, batched_kit, head,
                                                                 attack):
    result = _attack(attack, querier, batched_kit, head, CircuitPrivacy.off(batched_kit))
    assert result.queries == 1 and result.consistent
    assert result.max_error(head.coef, head.intercept) < 1e-6


@pytest.mark.parametrize("attack", [c1_solve, noise_solve])
def test_batched_attacks_fail_on_a_protected_reply(querier, batched_kit, head, attack,
                                                   eval_queries):
    result = _attack(attack, querier, batched_kit, head, CircuitPrivacy(batched_kit))
    assert not result.consistent
    assert result.max_error(head.coef) > np.abs(head.coef).max()  # off by more than the weights
    assert result.agreement(head, eval_queries) < 0.8


def test_flooding_alone_leaves_the_c1_solve(querier, batched_kit, head):
    flood = CircuitPrivacy(batched_kit, bits=40, rerandomize=False, rescale=False)
    c1 = _attack(c1_solve, querier, batched_kit, head, flood)
    assert c1.consistent and c1.max_error(head.coef, head.intercept) < 1e-6
    noise = _attack(noise_solve, querier, batched_kit, head, flood)
    assert not noise.consistent and noise.max_error(head.coef) > np.abs(head.coef).max()


def test_rerandomisation_alone_leaves_the_noise_solve(querier, batched_kit, head):
    rerandomize = CircuitPrivacy(batched_kit, bits=0, rerandomize=True, rescale=False)
    noise = _attack(noise_solve, querier, batched_kit, head, rerandomize)
    assert noise.consistent and noise.max_error(head.coef, head.intercept) < 1e-6
    c1 = _attack(c1_solve, querier, batched_kit, head, rerandomize)
    assert not c1.consistent and c1.max_error(head.coef) > np.abs(head.coef).max()


def test_rescaling_does_not_stop_the_c1_solve_rerandomisation_does(querier, batched_kit):
    """Flooding + rescale without re-randomisation: the rounded c1 still gives V, by lattice
    reduction (a d=4 head: the pure-Python LLL is slow beyond d~8)."""
    rng = np.random.default_rng(4)
    small = EncryptedLinearHead(rng.normal(0, 0.3, (4, 2)), rng.normal(0, 1, 2))
    no_rerandomize = CircuitPrivacy(batched_kit, bits=40, rerandomize=False, rescale=True)
    serve = batched_server(small, batched_kit, no_rerandomize)
    linear = c1_solve(querier, serve, 4, 2)
    assert not linear.consistent  # the rounding defeats the linear solve ...
    lattice = c1_lattice_solve(querier, serve, 4, 2)
    assert lattice.consistent and lattice.max_error(small.coef, small.intercept) < 1e-6  # ... not LLL
    protected = c1_lattice_solve(querier, batched_server(small, batched_kit,
                                                         CircuitPrivacy(batched_kit)), 4, 2)
    assert not protected.consistent and protected.max_error(small.coef) > 0.1


def _zero_reply_noise(querier, kit, head, privacy) -> float:
    """RMS of the non-constant coefficients of the reply's decryption to the all-zero query: its
    noise, on the reply's last prime, in units of that prime."""
    blobs = encrypt_queries(querier, np.zeros((1, D)), path="batched", n_classes=K)
    ct = querier.load(head.evaluate(kit, blobs, path="batched", n=1, privacy=privacy)[0])
    p = primes(querier, ct)[0]
    noise = centred(to_coefficients(querier, raw_decryption(querier, ct), ct.parms_id())[0], p)
    return float(np.sqrt((noise[1:].astype(np.float64) ** 2).mean()))


def test_default_replies_carry_the_flooding(querier, batched_kit, head):
    """The rescale alone shrinks an honest reply's noise below one unit (so the noise solve fails
    on it too): what the flooding adds must still be there, ~2^23 after the rescale here."""
    flooded = _zero_reply_noise(querier, batched_kit, head, CircuitPrivacy(batched_kit))
    bare = _zero_reply_noise(querier, batched_kit, head, CircuitPrivacy(batched_kit, bits=0))
    assert flooded > 2.0**16 > 2.0**10 > bare


def test_logit_noise_does_not_stop_the_c1_solve(querier, batched_kit, head):
    result = _attack(c1_solve, querier, batched_kit, head, CircuitPrivacy.off(batched_kit),
                     noise_std=0.05)
    assert result.consistent and result.max_error(head.coef) < 1e-6
    # c from the mean of 4096 noisy slots: 0.05 / 64 standard error
    assert np.abs(result.intercept - head.intercept).max() < 0.01


def test_a_malicious_querier_inflating_its_noise_outgrows_the_flooding(querier, batched_kit, head):
    """Outside the semi-honest model, and a limit of the protection as it stands: the flooding bound
    assumes honest fresh noise, which the provider cannot check. A querier that adds noise of 2^80
    to its own all-zero query (decoding to slot values of ~1, a request like any other) gets V
    through the default protection."""
    result = _attack(inflated_noise_solve, querier, batched_kit, head, CircuitPrivacy(batched_kit))
    assert result.consistent and result.max_error(head.coef) < 1e-4
    honest = _attack(noise_solve, querier, batched_kit, head, CircuitPrivacy(batched_kit))
    assert not honest.consistent  # the same solve on honest noise fails


# -- single path: slot solve ----------------------------------------------------------------------
def _slots(querier, kit, head, complete_fold, privacy_name, n=6, seed=3):
    Z = np.random.default_rng(seed).uniform(-1, 1, (n, D))
    serve = single_server(head, kit, protection(kit, privacy_name), complete_fold=complete_fold)
    return Z, single_replies(querier, serve, Z, K)


@pytest.mark.parametrize("privacy_name", ["off", "default"])
def test_slot_solve_copies_the_head_from_a_partial_fold(querier, single_kit, head, privacy_name):
    Z, slots = _slots(querier, single_kit, head, False, privacy_name)
    result = slot_solve(SinglePlan(D, K, querier.slots, complete_fold=False), Z, slots)
    assert result.consistent and result.max_error(head.coef, head.intercept) < 1e-3
    baseline = logits_baseline(Z, slots[:, :K])  # 6 < d + 1 logit vectors: far from a copy
    assert not baseline.consistent and baseline.max_error(head.coef) > 0.1


def test_complete_fold_leaves_only_the_logits(querier, single_kit, head, eval_queries):
    Z, slots = _slots(querier, single_kit, head, True, "default")
    plan = SinglePlan(D, K, querier.slots)
    logits = Z @ head.coef + head.intercept
    s = np.arange(querier.slots)
    kept = s % plan.k_pad < K
    assert np.abs(slots[:, kept] - logits[:, s[kept] % plan.k_pad]).max() < 1e-3
    assert np.abs(slots[:, ~kept]).max() < 1e-3  # padding classes: zero
    result = slot_solve(plan, Z, slots)
    baseline = logits_baseline(Z, slots[:, :K])
    assert not result.consistent
    assert result.max_error(head.coef) > 0.1
    assert result.max_error(head.coef) > 0.5 * baseline.max_error(head.coef)
    assert result.agreement(head, eval_queries) <= baseline.agreement(head, eval_queries) + 0.02


# -- fitting: cross-product solve -----------------------------------------------------------------
def _fit(querier, single_block, privacy_name):
    rng = np.random.default_rng(5)
    X = rng.uniform(-1, 1, (N_FIT, D_IN))
    Y = rng.uniform(-1, 1, (N_FIT, D_OUT)) * 0.3
    packing = CrossProductPacking.plan(N_FIT, D_IN, D_OUT, querier.slots, single_block=single_block)
    kit = CkksKit.from_public(querier.public_bytes(packing.rotation_steps))
    replies = packing.multiply(kit, packing.encrypt(querier, X), Y,
                               privacy=protection(kit, privacy_name))
    return packing, X, Y, cross_product_solve(querier, packing, X, replies)


@pytest.mark.parametrize("privacy_name", ["off", "default"])
def test_cross_product_solve_recovers_y_from_several_blocks(querier, privacy_name):
    packing, _, Y, result = _fit(querier, False, privacy_name)
    assert packing.features_per_ct > 1
    assert result.consistent and result.max_error(Y) < 1e-3


def test_one_block_leaves_only_the_product(querier):
    packing, X, Y, result = _fit(querier, True, "default")
    assert packing.features_per_ct == 1
    assert not result.consistent
    assert np.abs(X.T @ result.coef - X.T @ Y).max() < 1e-3  # what the result reveals, no more
    minimum_norm = np.linalg.pinv(X.T) @ (X.T @ Y)
    assert result.max_error(Y) > 0.1
    assert result.max_error(Y) > 0.9 * float(np.abs(minimum_norm - Y).max())


# -- what protection randomises, and what a provider holds ----------------------------------------
def _requests(querier):
    z = np.random.default_rng(9).uniform(-1, 1, (1, D))
    return {"batched": encrypt_queries(querier, z, path="batched", n_classes=K),
            "single": encrypt_queries(querier, z, path="single", n_classes=K)}


@pytest.mark.parametrize("path", ["batched", "single"])
def test_two_protected_replies_differ_in_every_randomised_coefficient(querier, batched_kit,
                                                                      single_kit, head, path):
    kit = batched_kit if path == "batched" else single_kit
    blobs = _requests(querier)[path]

    def reply(privacy):
        return [residues(querier.load(b))
                for b in head.evaluate(kit, blobs, path=path, n=1, privacy=privacy)]

    first, second = reply(CircuitPrivacy(kit)), reply(CircuitPrivacy(kit))
    for a, b in zip(first, second, strict=True):
        assert (a[0] != b[0]).mean() > 0.99  # c0: flooded and re-randomised
        assert (a[1] != b[1]).mean() > 0.99  # c1: re-randomised
    bare = [reply(CircuitPrivacy.off(kit)) for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(*bare, strict=True))  # nothing else varies


def test_two_protected_fitting_replies_differ(querier):
    rng = np.random.default_rng(2)
    X, Y = rng.uniform(-1, 1, (N_FIT, D_IN)), rng.uniform(-1, 1, (N_FIT, D_OUT)) * 0.3
    packing = CrossProductPacking.plan(N_FIT, D_IN, D_OUT, querier.slots)
    kit = CkksKit.from_public(querier.public_bytes(packing.rotation_steps))
    blobs = packing.encrypt(querier, X)
    first, second = (packing.multiply(kit, blobs, Y) for _ in range(2))
    for a, b in zip(first, second, strict=True):
        ra, rb = residues(querier.load(a)), residues(querier.load(b))
        assert (ra[0] != rb[0]).mean() > 0.99 and (ra[1] != rb[1]).mean() > 0.99


@pytest.mark.parametrize("path", ["batched", "single", "fitting"])
def test_provider_contexts_encrypt_but_never_decrypt(querier, path):
    steps = {"batched": [], "single": _single_steps(querier.slots),
             "fitting": CrossProductPacking.plan(N_FIT, D_IN, D_OUT, querier.slots).rotation_steps}
    context = querier.public_bytes(steps[path])
    kit = CkksKit.from_public(context)
    assert not kit.is_private
    zero = seal.Ciphertext()
    kit.public_encryptor.encrypt_zero(kit.query_level, zero)
    zero.scale = 2.0**40
    assert np.abs(querier.decrypt(zero)).max() < 1e-6  # a valid encryption under the querier's key
    with pytest.raises(KeyMaterialError):
        kit.decrypt(zero)
    assert querier.secret_key_bytes()[HEADER_BYTES:] not in context  # not serialised ...
    key = querier._secret_key.data().dyn_array()
    words = np.fromiter((key.at(i) for i in range(key.size())), np.uint64, count=key.size())
    assert not any(words[i : i + 4].tobytes() in context for i in range(0, len(words), 512))


def test_bench_reports_the_attacks(tmp_path):
    from simulations.bench_attacks import COLUMNS, main

    out = tmp_path / "attacks"
    assert main(["--d", "8", "--k", "3", "--noise", "0", "--eval", "2000", "--max-queries", "12",
                 "--paths", "batched", "single", "--protections", "off", "default",
                 "--out", str(out)]) == 0
    with (out / "attacks.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    found = {(r["path"], r["attack"], r["protection"]): r["queries_needed"] for r in rows}
    assert found["batched", "c1 solve", "off"] == "1"
    assert found["batched", "noise solve", "off"] == "1"
    assert found["batched", "c1 solve", "default"] == ""
    assert found["batched", "noise solve", "default"] == ""
    assert int(found["batched", "logits baseline", "default"]) >= 2
    slot_off = int(found["single", "slot solve", "off"])
    assert slot_off < int(found["single", "logits baseline", "default"])
    assert "load average" in (out / "README.md").read_text()


# -- a provider's attack on the querier's uploads ---------------------------------------------------
def _upload(kit: CkksKit, seed: int = 3) -> tuple[CrossProductPacking, list[bytes]]:
    X = np.random.default_rng(seed).uniform(-1, 1, (N_FIT, D_IN))
    packing = CrossProductPacking.plan(N_FIT, D_IN, D_OUT, kit.slots)
    return packing, packing.encrypt(kit, X)


def _truth(querier: CkksKit, blobs: list[bytes]) -> np.ndarray:
    """What the differences decode to: the querier's own decryptions, subtracted."""
    slots = [querier.decrypt(ct) for ct in querier.load_many(blobs)]
    return np.array([s - slots[0] for s in slots[1:]])


def test_upload_difference_reads_enc_x_where_the_randomness_is_reused(querier, batched_kit):
    packing, blobs = _upload(reused_randomness(querier))
    assert packing.n_feature_groups == D_IN  # one ciphertext per feature: d plaintexts differ
    found = upload_difference_solve(batched_kit, blobs)
    assert found.same_randomness
    assert np.abs(found.slots - _truth(querier, blobs)).max() < 1e-6  # x_j - x_0 per text


def test_upload_difference_reads_nothing_from_fresh_encryptions(querier, batched_kit):
    _, blobs = _upload(querier)
    found = upload_difference_solve(batched_kit, blobs)
    assert not found.same_randomness
    truth = _truth(querier, blobs)
    assert np.abs(found.slots).max() > 1e6 * np.abs(truth).max()  # noise, not Δ·(x_j - x_0)
    # Two providers sent one shared Enc(X̃) hold the same bytes: their difference is zero, which
    # says only that they got the same upload. Two separate uploads of it differ like any two.
    assert upload_difference_solve(batched_kit, [blobs[0], blobs[0]]).slots.max() == 0.0
    _, again = _upload(querier)
    apart = upload_difference_solve(batched_kit, [blobs[0], again[0]])
    assert not apart.same_randomness and np.abs(apart.slots).max() > 1e6

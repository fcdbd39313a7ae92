from dataclasses import replace

import numpy as np
import pytest
from tiny import default_params

from crypto import (
    CiphertextError,
    CkksKit,
    CKKSParams,
    CrossProductPacking,
    EncryptedLinearHead,
    InsecureParametersError,
    InsecureParametersWarning,
    KeyMaterialError,
    SinglePlan,
    decrypt_logits,
    encrypt_queries,
)
from silos.alignment import AffineMap, augment

PARAMS = default_params()
N16384 = default_params("n16384")


def chain(sizes: tuple[int, ...], **changes) -> CKKSParams:
    """The default parameters with another modulus chain (and other fields)."""
    return replace(PARAMS, coeff_mod_bit_sizes=sizes, **changes)


@pytest.fixture(scope="module")
def querier():
    return CkksKit.generate(PARAMS)


def provider_kit(querier: CkksKit, steps=()) -> CkksKit:
    return CkksKit.from_public(querier.public_bytes(steps))


def test_presets_pass_the_security_check():
    from conf import he_presets, load_config

    for preset in he_presets():
        CKKSParams.from_config(load_config([f"he.preset={preset}"]).he).check()


@pytest.mark.parametrize("params", [
    chain((60, 60, 60, 60)),  # 240 bits > 218: below 128-bit security
    replace(PARAMS, poly_modulus_degree=4096, coeff_mod_bit_sizes=(30, 30, 30, 30)),  # 120 > 109
    chain((60, 60, 60)),  # two data primes: no separate fitting, query and reply levels
    chain((60, 60, 38, 40)),  # special prime smaller than a data prime: noisy rotations
    chain((60, 60, 38, 60), input_scale_bits=118),  # queries do not fit their level
    chain((60, 60, 38, 60), input_scale_bits=12),  # too coarse for 1e-3
    chain((40, 40, 38, 60)),  # no room for a product above the flooding
])
def test_unusable_parameters_are_refused(params):
    with pytest.raises(InsecureParametersError):
        params.check()


def test_insecure_needs_explicit_opt_in():
    with pytest.warns(InsecureParametersWarning):  # accepted, loudly
        chain((60, 60, 60, 60), allow_insecure=True).check()


def test_a_product_that_cannot_fit_is_refused_before_computing(querier):
    head = EncryptedLinearHead(np.full((384, 2), 1e6), np.zeros(2))  # logits up to ~1.5e9
    blobs = encrypt_queries(querier, np.zeros((3, 384)), path="batched", n_classes=2)
    with pytest.raises(InsecureParametersError, match="need"):
        head.evaluate(provider_kit(querier), blobs, path="batched", n=3)


def test_public_context_carries_no_secret_key(querier):
    data = querier.public_bytes([1, 2, 4])
    kit = CkksKit.from_public(data)
    assert not kit.is_private and kit.rotation_steps == {1, 2, 4}
    with pytest.raises(KeyMaterialError):
        kit.encrypt(np.ones(3))
    with pytest.raises(KeyMaterialError):
        kit.secret_key_bytes()
    # The secret key is not in the context, in any form SEAL would write it.
    assert querier.secret_key_bytes()[16:80] not in data
    with pytest.raises(InsecureParametersError):
        CkksKit.from_public(b"garbage")


def test_parameters_from_a_querier_are_checked(querier):
    weak = chain((60, 60, 60, 60), allow_insecure=True)
    with pytest.warns(InsecureParametersWarning):
        data = CkksKit.generate(weak).public_bytes()  # the querier's own config allows it ...
    with pytest.raises(InsecureParametersError, match="below the 128-bit"):
        CkksKit.from_public(data)  # ... a provider does not, whatever the querier says
    with pytest.raises(InsecureParametersError, match="192-bit"):
        CkksKit.from_public(querier.public_bytes(), min_security_bits=192)  # its own floor
    with pytest.raises(InsecureParametersError, match="not in the HE Standard"):
        CkksKit.from_public(querier.public_bytes(), min_security_bits=80)  # never below 128


def test_malformed_ciphertexts_are_refused(querier):
    kit = provider_kit(querier)
    good = querier.encrypt(np.ones(4))
    other = CkksKit.generate(N16384).encrypt(np.ones(4))
    for bad in (b"", b"\x00" * 64, good[: len(good) // 2], other):
        with pytest.raises(CiphertextError):
            kit.load(bad)


def test_encrypting_beyond_the_declared_bound_is_refused(querier):
    with pytest.raises(ValueError, match="max_abs_input"):
        querier.encrypt(np.array([0.0, 2 * PARAMS.max_abs_input]))
    with pytest.raises(ValueError, match="NaN"):
        querier.encrypt(np.array([np.nan]))


def test_ciphertexts_at_another_level_or_scale_are_refused(querier):
    """One odd ciphertext among a request's: refused before computing, by the head (both paths)
    and by the fitting, rather than summed into garbage."""
    head = EncryptedLinearHead(np.ones((2, 8)), np.zeros(8))  # K = 8: two copies per query
    plan = head.plan(querier.slots)
    kit = provider_kit(querier, plan.rotation_steps)
    odd_scale = querier.encrypt(np.ones(2), scale_bits=PARAMS.input_scale_bits - 4)
    odd_level = querier.encrypt(np.ones(2), first_level=True)
    batched = encrypt_queries(querier, np.ones((1, 2)), path="batched", n_classes=8)
    single = encrypt_queries(querier, np.ones((1, 2)), path="single", n_classes=8)
    packing = CrossProductPacking.plan(3, 2, 2, querier.slots)
    fit = packing.encrypt(querier, np.ones((3, 2)))
    assert len(batched) == len(single) == plan.ciphertexts_per_query == len(fit) == 2
    for odd in (odd_scale, odd_level):
        with pytest.raises(ValueError, match="differ in level or scale"):
            head.evaluate(kit, [batched[0], odd], path="batched", n=1)
        with pytest.raises(ValueError, match="differ in level or scale"):
            head.evaluate(kit, [single[0], odd], path="single", n=1)
        with pytest.raises(ValueError, match="differ in level or scale"):
            packing.multiply(kit, [fit[0], odd], np.ones((3, 2)))


@pytest.mark.parametrize(("n", "d", "k"), [(1000, 37, 5), (4100, 20, 3)])
def test_batched_head_matches_float64(querier, n, d, k):
    # d not a power of two; 4100 queries span two ciphertext groups.
    rng = np.random.default_rng(n)
    V, c = rng.normal(size=(d, k)) / np.sqrt(d), rng.normal(size=k)
    Z = rng.uniform(-2, 2, size=(n, d))
    kit = provider_kit(querier)  # no Galois keys at all
    assert kit.galois_keys is None
    out = EncryptedLinearHead(V, c).evaluate(
        kit, encrypt_queries(querier, Z, path="batched", n_classes=k), path="batched", n=n)
    logits = decrypt_logits(querier, out, path="batched", n=n, n_classes=k)
    expected = Z @ V + c
    assert np.abs(logits - expected).max() <= 1e-3
    assert (logits.argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize(("d", "k"), [(50, 4), (384, 5), (300, 50), (5000, 3)])
def test_single_query_head_matches_float64(querier, d, k):
    # (5000, 3): the query is longer than a ciphertext's 4096 slots and is split into chunks.
    rng = np.random.default_rng(d)
    V, c = rng.normal(size=(d, k)) / np.sqrt(d), rng.normal(size=k)
    Z = rng.uniform(-2, 2, size=(6, d))
    plan = SinglePlan(d, k, querier.slots)
    kit = provider_kit(querier, plan.rotation_steps)
    out = EncryptedLinearHead(V, c).evaluate(
        kit, encrypt_queries(querier, Z, path="single", n_classes=k), path="single", n=len(Z))
    logits = decrypt_logits(querier, out, path="single", n=len(Z), n_classes=k)
    assert np.abs(logits - (Z @ V + c)).max() <= 1e-3
    assert (logits.argmax(1) == (Z @ V + c).argmax(1)).all()


def test_single_query_path_has_few_rotations_and_only_their_keys():
    plan = SinglePlan(384, 5, 4096)
    assert plan.n_rotations <= 12  # 3 giant steps + log2(4096 / 8) = 9 for the complete fold
    assert len(plan.rotation_steps) == plan.n_rotations


def test_single_query_without_its_galois_keys_is_refused(querier):
    blobs = encrypt_queries(querier, np.ones((1, 3)), path="single", n_classes=2)
    with pytest.raises(KeyMaterialError, match="Galois"):
        EncryptedLinearHead(np.ones((3, 2)), np.zeros(2)).evaluate(
            provider_kit(querier), blobs, path="single", n=1)


def test_bias_is_added_after_the_product(querier):
    # A bias added before the weights would come back multiplied by them.
    V, c = np.full((4, 2), 0.5), np.array([10.0, -3.0])
    Z = np.ones((1, 4))
    for path, steps in (("batched", []), ("single", SinglePlan(4, 2, querier.slots).rotation_steps)):
        out = EncryptedLinearHead(V, c).evaluate(
            provider_kit(querier, steps), encrypt_queries(querier, Z, path=path, n_classes=2),
            path=path, n=1)
        logits = decrypt_logits(querier, out, path=path, n=1, n_classes=2)
        np.testing.assert_allclose(logits, [[12.0, -1.0]], atol=1e-4)


@pytest.mark.parametrize(("n", "d_in", "d_out", "params"), [
    (150, 51, 23, PARAMS),
    (300, 24, 700, PARAMS),  # d_out = 700 cut into 512 + 128 + 32 + 16 + 8 + 4
    (5000, 9, 40, PARAMS),  # more texts than a ciphertext's 4096 slots
    (9000, 5, 12, N16384),
])
def test_encrypted_cross_product_equals_plaintext(querier, n, d_in, d_out, params):
    rng = np.random.default_rng(n)
    X, Y = rng.uniform(-1, 1, (n, d_in)), rng.uniform(-1, 1, (n, d_out)) / 4
    owner = querier if params == PARAMS else CkksKit.generate(params)
    packing = CrossProductPacking.plan(n, d_in, d_out, owner.slots)
    kit = provider_kit(owner, packing.rotation_steps)
    xty = packing.decrypt(owner, packing.multiply(kit, packing.encrypt(owner, X), Y))
    assert np.linalg.norm(xty - X.T @ Y) / np.linalg.norm(X.T @ Y) <= 1e-6


def test_helper_processes_give_the_same_products(querier):
    rng = np.random.default_rng(3)
    X, Y = rng.uniform(-1, 1, (100, 300)), rng.uniform(-1, 1, (100, 8))
    packing = CrossProductPacking.plan(100, 300, 8, querier.slots)
    assert packing.n_feature_groups >= 8
    kit = provider_kit(querier, packing.rotation_steps)
    blobs = packing.encrypt(querier, X)
    alone = packing.decrypt(querier, packing.multiply(kit, blobs, Y, workers=1))
    shared = packing.decrypt(querier, packing.multiply(kit, blobs, Y, workers=2))
    for products in (alone, shared):  # each flooded afresh: equal up to the flooding's error
        np.testing.assert_allclose(products, X.T @ Y, atol=1e-4)


def test_encrypted_fit_gives_the_plaintext_map(querier):
    rng = np.random.default_rng(7)
    n, d_q, d_p = 640, 48, 96
    X = rng.uniform(-1, 1, (n, d_q))
    Y = np.tanh(X @ rng.normal(size=(d_q, d_p)) / 3 + 0.1 * rng.normal(size=(n, d_p)))
    Xa = augment(X)
    packing = CrossProductPacking.plan(n, d_q + 1, d_p, querier.slots)
    kit = provider_kit(querier, packing.rotation_steps)
    xty = packing.decrypt(querier, packing.multiply(kit, packing.encrypt(querier, Xa), Y))
    encrypted = AffineMap(alpha=0.1).fit_from_stats(Xa.T @ Xa, xty, n_samples=n)
    plain = AffineMap(alpha=0.1).fit(X, Y)
    rel = np.linalg.norm(encrypted.coef_ - plain.coef_) / np.linalg.norm(plain.coef_)
    assert rel <= 1e-4
    np.testing.assert_allclose(encrypted.intercept_, plain.intercept_, atol=1e-4)


SHAPES = [(d, k) for d in (32, 48, 64, 384, 576, 640, 768, 4096, 5000) for k in (2, 3, 5, 10, 50)]


def test_the_layout_constants_pick_what_the_calibrated_costs_would(monkeypatch):
    """ENCRYPTION_COST and ROTATION_COST are constants of the protocol (both parties must plan the
    same layout), not read from conf/cost_model.json; the costs it calibrated on this machine
    must still choose the same layouts, or the constants (and the protocol) need another look."""
    import crypto.fitting
    import crypto.head
    from conf import CONF_DIR, load_config
    from crypto import CostModel

    model = CostModel.load(CONF_DIR / str(load_config().serve.cost_model))
    for params in (PARAMS, N16384):
        seconds = model.calibration(params).seconds
        plans = [SinglePlan(d, k, params.slots).copies for d, k in SHAPES]
        packings = [CrossProductPacking.plan(n, d + 1, d_out, params.slots)
                    for n in (120, 640, 2000) for d, _ in SHAPES for d_out in (64, 768)]
        with monkeypatch.context() as patch:
            patch.setattr(crypto.head, "ENCRYPTION_COST", seconds["encrypt"] / seconds["rotate"])
            assert [SinglePlan(d, k, params.slots).copies for d, k in SHAPES] == plans
        for cost in (4.0, seconds["rotate"] / seconds["multiply_add"], 30.0):
            with monkeypatch.context() as patch:
                patch.setattr(crypto.fitting, "ROTATION_COST", cost)
                assert [CrossProductPacking.plan(p.n, p.d_in, p.d_out, p.slots)
                        for p in packings] == packings
    plans = [SinglePlan(d, k, PARAMS.slots).copies for d, k in SHAPES]
    monkeypatch.setattr(crypto.head, "ENCRYPTION_COST", 2.5)  # what the check would catch
    assert [SinglePlan(d, k, PARAMS.slots).copies for d, k in SHAPES] != plans

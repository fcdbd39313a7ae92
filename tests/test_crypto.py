import numpy as np
import pytest
import tenseal as ts

from crypto import (
    CiphertextError,
    CKKSParams,
    CrossProductPacking,
    EncryptedLinearHead,
    InsecureParametersError,
    context_from_bytes,
    make_context,
    public_context_bytes,
    vectors_from_bytes,
    vectors_to_bytes,
)
from crypto.context import ContextError
from crypto.head import decrypt_logits, encrypt_queries
from silos.alignment import AffineMap, augment

PARAMS = CKKSParams()


@pytest.fixture(scope="module")
def secret():
    return make_context(PARAMS)


@pytest.fixture(scope="module")
def public(secret):
    return context_from_bytes(public_context_bytes(secret), expect_public=True)


def test_presets_pass_the_security_check():
    from conf import he_presets, load_config

    for preset in he_presets():
        CKKSParams.from_config(load_config([f"he.preset={preset}"]).he).check()


@pytest.mark.parametrize("params", [
    CKKSParams(8192, (60, 40, 40, 40, 60)),  # 240 bits > 218: below 128-bit security
    CKKSParams(4096, (60, 40, 60)),  # 160 > 109
    CKKSParams(8192, (60, 60)),  # no level for the multiply
    CKKSParams(8192, (60, 30, 60), global_scale_bits=40),  # scale drifts at every rescale
    CKKSParams(8192, (45, 40, 60), global_scale_bits=40),  # 5 bits of headroom: wraps around
])
def test_unusable_parameters_are_refused(params):
    with pytest.raises(InsecureParametersError):
        params.check()


def test_insecure_needs_explicit_opt_in():
    CKKSParams(8192, (60, 40, 40, 40, 60), allow_insecure=True).check()


def test_public_context_has_no_secret_key(secret):
    data = public_context_bytes(secret)
    loaded = ts.context_from(data)
    assert not loaded.is_private() and not loaded.has_galois_keys()
    with pytest.raises(ContextError):
        context_from_bytes(secret.serialize(save_secret_key=True), expect_public=True)
    with pytest.raises(ContextError):
        context_from_bytes(b"garbage", expect_public=True)


def test_malformed_ciphertexts_are_refused(public):
    good = vectors_to_bytes([ts.ckks_vector(public, [1.0, 2.0])])[0]
    for bad in (b"", b"\x00" * 64, good[: len(good) // 2]):
        with pytest.raises(CiphertextError):
            vectors_from_bytes(public, [bad])


def test_batched_head_matches_float64_on_1000_queries(secret, public):
    rng = np.random.default_rng(0)
    d, k, n = 37, 5, 1000  # d not a power of two
    V, c = rng.normal(size=(d, k)), 3 * rng.normal(size=k)
    Z = rng.normal(size=(n, d))
    cts = vectors_from_bytes(public, vectors_to_bytes(encrypt_queries(secret, Z, path="batched")))
    out = EncryptedLinearHead(V, c).evaluate(cts, path="batched")
    logits = decrypt_logits(vectors_from_bytes(secret, vectors_to_bytes(out)), path="batched",
                            n=n, n_classes=k)
    expected = Z @ V + c
    assert np.abs(logits - expected).max() <= 1e-3
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_batched_head_needs_no_galois_keys(public):
    assert not public.has_galois_keys()
    V = np.ones((4, 2))
    cts = [ts.ckks_vector(public, [1.0, 2.0]) for _ in range(4)]
    assert len(EncryptedLinearHead(V, np.zeros(2)).evaluate_batched(cts)) == 2


def test_single_query_head_matches_float64():
    secret = make_context(PARAMS, galois_keys=True)
    rng = np.random.default_rng(1)
    d, k, n = 50, 4, 12
    V, c = rng.normal(size=(d, k)), rng.normal(size=k)
    Z = rng.normal(size=(n, d))
    out = EncryptedLinearHead(V, c).evaluate(encrypt_queries(secret, Z, path="single"),
                                             path="single")
    logits = decrypt_logits(out, path="single", n=n, n_classes=k)
    assert np.abs(logits - (Z @ V + c)).max() <= 1e-3
    assert (logits.argmax(1) == (Z @ V + c).argmax(1)).all()


def test_single_query_without_galois_keys_is_refused(secret):
    with pytest.raises(ValueError, match="Galois"):
        EncryptedLinearHead(np.ones((3, 2)), np.zeros(2)).evaluate_single(
            ts.ckks_vector(secret, [1.0, 2.0, 3.0]))


@pytest.mark.parametrize(("n", "d_in", "d_out"), [(150, 51, 23), (6, 4100, 3)])
def test_encrypted_cross_product_equals_plaintext(secret, n, d_in, d_out):
    # (6, 4100, 3): rows longer than one ciphertext's 4096 slots are split into chunks.
    rng = np.random.default_rng(n)
    X, Y = rng.uniform(-1, 1, (n, d_in)), rng.uniform(-1, 1, (n, d_out))
    packing = CrossProductPacking(d_in=d_in, slots=PARAMS.slots)
    rows = packing.encrypt_rows(secret, X)
    provider_ctx = context_from_bytes(public_context_bytes(secret), expect_public=True)
    products = packing.multiply(vectors_from_bytes(provider_ctx, vectors_to_bytes(rows)), Y)
    decrypted = packing.decrypt(vectors_from_bytes(secret, vectors_to_bytes(products)), d_out)
    np.testing.assert_allclose(decrypted, X.T @ Y, atol=1e-5 * n)


def test_encrypted_fit_gives_the_plaintext_map(secret, public):
    rng = np.random.default_rng(7)
    n, d_q, d_p = 300, 24, 40
    X = rng.uniform(-1, 1, (n, d_q))
    Y = np.tanh(X @ rng.normal(size=(d_q, d_p)) / 3 + 0.1 * rng.normal(size=(n, d_p)))
    Xa = augment(X)
    packing = CrossProductPacking(d_in=d_q + 1, slots=PARAMS.slots)
    rows = vectors_from_bytes(public, vectors_to_bytes(packing.encrypt_rows(secret, Xa)))
    xty = packing.decrypt(vectors_from_bytes(secret, vectors_to_bytes(packing.multiply(rows, Y))),
                          d_p)
    encrypted = AffineMap(alpha=0.1).fit_from_stats(Xa.T @ Xa, xty, n_samples=n)
    plain = AffineMap(alpha=0.1).fit(X, Y)
    rel = np.linalg.norm(encrypted.coef_ - plain.coef_) / np.linalg.norm(plain.coef_)
    assert rel <= 1e-4
    np.testing.assert_allclose(encrypted.intercept_, plain.intercept_, atol=1e-4)

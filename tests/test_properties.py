"""Property-based tests (hypothesis) of the deserialisation boundary: whatever bytes arrive — random,
truncated, bit-flipped — the answer is a typed error (a ValueError subclass the ClientApp turns into
an error reply), never a crash and never a silent wrong answer."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import default_params

from conf import load_config
from crypto import CiphertextError, CkksKit, InsecureParametersError, encrypt_queries
from crypto.kit import KeyMaterialError
from silos.budget import BUDGET_FILE
from silos.provider import Provider
from silos.settings import SiloSettings
from silos.state import put_arrays

TYPED = (CiphertextError, InsecureParametersError, KeyMaterialError, ValueError)
FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
D, K = 8, 3

QUERIER = CkksKit.generate(default_params())
PUBLIC = QUERIER.public_bytes([1, 2])
PROVIDER_KIT = CkksKit.from_public(PUBLIC)
CIPHERTEXT = QUERIER.encrypt(np.linspace(-1, 1, 16))
EXPECTED = np.linspace(-1, 1, 16)


def flipped(data: bytes, position: int, bit: int) -> bytes:
    out = bytearray(data)
    out[position % len(out)] ^= 1 << bit
    return bytes(out)


@FAST
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_refused_as_a_ciphertext(data):
    with pytest.raises(CiphertextError):
        PROVIDER_KIT.load(data)


@FAST
@given(st.integers(min_value=0, max_value=len(CIPHERTEXT) - 1))
def test_a_truncated_ciphertext_is_refused(length):
    with pytest.raises(CiphertextError):
        PROVIDER_KIT.load(CIPHERTEXT[:length])


@FAST
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=7))
def test_a_bit_flipped_ciphertext_is_refused_not_decrypted_to_garbage(position, bit):
    with pytest.raises(CiphertextError):
        PROVIDER_KIT.load(flipped(CIPHERTEXT, position, bit))


def test_the_untouched_ciphertext_still_decrypts():  # the properties above are not vacuous
    np.testing.assert_allclose(QUERIER.decrypt(PROVIDER_KIT.load(CIPHERTEXT))[:16], EXPECTED,
                               atol=1e-4)


@FAST
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_refused_as_a_public_context(data):
    with pytest.raises(TYPED):
        CkksKit.from_public(data)


@FAST
@given(st.data())
def test_a_damaged_public_context_is_refused_or_still_checked_and_public(data):
    """Truncated or bit-flipped: refused, or (a flip inside the JSON that still parses, e.g. a
    digit of max_abs_input) a kit whose parameters passed the security check — never a kit that
    can decrypt."""
    if data.draw(st.booleans()):
        damaged = PUBLIC[: data.draw(st.integers(0, len(PUBLIC) - 1))]
    else:
        damaged = flipped(PUBLIC, data.draw(st.integers(0)), data.draw(st.integers(0, 7)))
    try:
        kit = CkksKit.from_public(damaged)
    except TYPED:
        return
    kit.params.check()
    assert not kit.is_private


@pytest.fixture(scope="module")
def bob(tmp_path_factory):
    cfg = load_config([f"run.output_dir={tmp_path_factory.mktemp('bob')}"])
    state = RecordDict()
    rng = np.random.default_rng(0)
    put_arrays(state, "provider.head.news", coef=rng.normal(size=(D, K)), intercept=np.zeros(K))
    return Provider(SiloSettings.from_config(cfg, "bob"), state)


VALID = encrypt_queries(QUERIER, np.zeros((2, D)), path="batched", n_classes=K)


@FAST
@given(st.lists(st.binary(max_size=512), min_size=0, max_size=2 * D),
       st.integers(min_value=-3, max_value=10), st.sampled_from(["batched", "single", "x"]))
def test_the_provider_answers_any_evaluate_request_with_a_typed_error(bob, blobs, n, path):
    request = {"querier": "alice", "task": "news", "context": PUBLIC, "path": path, "n": n}
    if blobs:
        request["ciphertexts"] = blobs
    with pytest.raises((*TYPED, KeyError, LookupError)):
        bob.evaluate(ConfigRecord(request))
    assert not (bob.settings.state_dir / BUDGET_FILE).exists()  # nothing was charged


@FAST
@given(st.integers(min_value=0, max_value=D - 1), st.integers(min_value=0),
       st.integers(min_value=0, max_value=7))
def test_the_provider_refuses_a_request_with_one_damaged_ciphertext(bob, index, position, bit):
    blobs = list(VALID)
    blobs[index] = flipped(blobs[index], position, bit)
    with pytest.raises(CiphertextError):
        bob.evaluate(ConfigRecord({"querier": "alice", "task": "news", "context": PUBLIC, "path": "batched",
                                   "n": 2, "ciphertexts": blobs}))

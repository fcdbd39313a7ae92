"""The provider's serving limits (budget, request size, noise: its own policy) and the querier's
output policy, on the silo objects themselves (no Flower): every refusal is a typed error and
leaves the state and the budget as they were."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict
from tiny import default_params

from conf import load_config
from crypto import (
    CiphertextError,
    CkksKit,
    EncryptedLinearHead,
    InsecureParametersError,
    SinglePlan,
    decrypt_logits,
    encrypt_queries,
    query_capacity,
)
from silos.budget import BUDGET_FILE, QueryBudget, QueryBudgetExceeded
from silos.output_policy import OutputPolicy
from silos.provider import Provider
from silos.settings import SiloSettings
from silos.state import put_arrays

D, K = 24, 3


@pytest.fixture(scope="module")
def querier():
    return CkksKit.generate(default_params())


def head_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(D, K)) / np.sqrt(D), rng.normal(size=K)


def provider(tmp_path, *overrides: str) -> Provider:
    cfg = load_config([f"run.output_dir={tmp_path}", *overrides])
    state = RecordDict()
    coef, intercept = head_arrays()
    put_arrays(state, "provider.head.news", coef=coef, intercept=intercept)
    return Provider(SiloSettings.from_config(cfg, "bob"), state)


def budget_file(bob: Provider):
    return bob.settings.state_dir / BUDGET_FILE


def evaluate_request(kit, Z, *, path="batched", with_context=True, **extra) -> ConfigRecord:
    steps = SinglePlan(D, K, kit.slots).rotation_steps if path == "single" else []
    request = {"querier": "alice", "task": "news", "path": path, "n": len(Z),
               "ciphertexts": encrypt_queries(kit, Z, path=path, n_classes=K)}
    if with_context:
        request["context"] = kit.public_bytes(steps)
    request.update(extra)
    return ConfigRecord(request)


def test_query_capacity_counts_what_the_ciphertexts_can_carry():
    assert query_capacity("batched", 1, 4096) == 4096
    assert query_capacity("batched", 4097, 4096) == 8192
    assert query_capacity("single", 7, 4096) == 7
    with pytest.raises(ValueError):
        query_capacity("batched", 0, 4096)
    with pytest.raises(ValueError, match="unknown path"):
        query_capacity("other", 3, 4096)


def test_the_budget_refuses_once_exhausted_and_only_counts_answered_requests(tmp_path):
    budget = QueryBudget(tmp_path, limit=10)
    assert budget.charge("alice", 4) == 6
    assert budget.charge("alice", 6) == 0
    with pytest.raises(QueryBudgetExceeded, match="used 10 of its 10"):
        budget.charge("alice", 1)
    assert budget.used("alice") == 10 and budget.charge("dave", 10) == 0  # per querier
    assert QueryBudget(tmp_path / "other", limit=None).charge("alice", 10**9) == -1


def test_provider_budget_refuses_the_request_that_would_exceed_it(tmp_path, querier):
    bob = provider(tmp_path, "silos.bob.policy.query_budget=4100")  # one batched group: 4096 slots
    Z = np.random.default_rng(1).uniform(-1, 1, (5, D))
    reply = bob.evaluate(evaluate_request(querier, Z))
    assert reply["charged"] == 4096 and reply["budget_left"] == 4
    with pytest.raises(QueryBudgetExceeded, match="needs 4096 more"):
        bob.evaluate(evaluate_request(querier, Z))
    single = bob.evaluate(evaluate_request(querier, Z[:2], path="single"))  # 1 per query
    assert single["charged"] == 2 and single["budget_left"] == 2


def test_provider_refuses_oversized_and_miscounted_requests_before_reading_them(tmp_path, querier):
    bob = provider(tmp_path, "silos.bob.policy.max_request_queries=10")
    Z = np.zeros((3, D))
    with pytest.raises(ValueError, match="max_request_queries"):
        bob.evaluate(evaluate_request(querier, Z, n=11))
    junk = [b"not a ciphertext"] * (D + 1)  # never deserialised: the count is wrong
    with pytest.raises(ValueError, match=f"expected {D} query ciphertexts"):
        bob.evaluate(evaluate_request(querier, Z, ciphertexts=junk))
    wrong_dim = encrypt_queries(querier, np.zeros((3, D - 1)), path="batched", n_classes=K)
    with pytest.raises(ValueError, match=f"d={D}"):
        bob.evaluate(evaluate_request(querier, Z, ciphertexts=wrong_dim))
    with pytest.raises(ValueError, match="at least one query"):
        bob.evaluate(evaluate_request(querier, Z, n=0))
    assert not budget_file(bob).exists()  # nothing was charged


def test_provider_refuses_foreign_and_corrupt_ciphertexts(tmp_path, querier):
    bob = provider(tmp_path)
    Z = np.zeros((3, D))
    foreign = CkksKit.generate(default_params("n16384"))
    other_key = CkksKit.generate(default_params())  # same parameters: only the key id tells them apart
    cases = {
        "another parameter set": encrypt_queries(foreign, Z, path="batched", n_classes=K),
        "another key": encrypt_queries(other_key, Z, path="batched", n_classes=K),
        "truncated": [b[: len(b) // 2] for b in encrypt_queries(querier, Z, path="batched",
                                                                n_classes=K)],
        "empty": [b""] * D,
    }
    for name, blobs in cases.items():
        with pytest.raises(CiphertextError, match="another key" if name == "another key" else None):
            bob.evaluate(evaluate_request(querier, Z, ciphertexts=blobs))
        assert not budget_file(bob).exists(), name
    with pytest.raises(InsecureParametersError):
        bob.evaluate(evaluate_request(querier, Z, context=b"\x05junk"))
    with pytest.raises(LookupError, match="no public context from querier 'eve'"):
        bob.evaluate(evaluate_request(querier, Z, with_context=False, querier="eve"))


def test_noise_is_added_by_the_provider_with_the_configured_spread(tmp_path, querier):
    Z = np.random.default_rng(2).uniform(-1, 1, (2000, D))
    coef, intercept = head_arrays()
    exact = Z @ coef + intercept
    for std in (0.0, 0.5):
        bob = provider(tmp_path, f"silos.bob.policy.logit_noise={std}")
        out = bob.evaluate(evaluate_request(querier, Z))
        logits = decrypt_logits(querier, list(out["ciphertexts"]), path="batched", n=len(Z),
                                n_classes=K)
        spread = float(np.std(logits - exact))
        assert spread == pytest.approx(std, abs=max(1e-3, 0.05 * std))
        assert np.abs(logits - exact).max() <= 6 * std + 1e-3  # clipped


def test_single_path_computes_one_query_per_ciphertext_whatever_is_packed(querier):
    """A querier that packs a second query into the other periods of the slots gets no logits
    for it: the budget's one-per-query count holds."""
    coef, intercept = head_arrays()
    plan = SinglePlan(D, K, querier.slots)
    z1, z2 = np.full(D, 0.5), np.linspace(-1, 1, D)
    honest, other = plan.tile(z1), plan.tile(z2)
    # Period 0 computes from slots [0, P + K') (the giant steps read up to K' - 1 slots ahead);
    # every slot after that carries the second query.
    cut = plan.period + plan.k_pad
    packed = [np.concatenate([h[:cut], o[cut:]]) for h, o in zip(honest, other, strict=True)]
    kit = CkksKit.from_public(querier.public_bytes(plan.rotation_steps))
    out = EncryptedLinearHead(coef, intercept).evaluate(
        kit, [querier.encrypt(v) for v in packed], path="single", n=1)
    slots = querier.decrypt(kit.load(out[0]))
    np.testing.assert_allclose(slots[:K], z1 @ coef + intercept, atol=1e-3)
    second = z2 @ coef  # the bias is added to slots [0, K) only
    for m in range(1, querier.slots // plan.period):  # no other period holds z2's logits
        assert np.abs(slots[m * plan.period : m * plan.period + K] - second).max() > 1e-2


def test_output_policy_keeps_the_top_k_rounded():
    logits = np.array([[0.123, 2.456, -1.0, 2.449], [5.0, 1.0, 2.0, 3.0]])
    out = OutputPolicy(top_k=2, decimals=1).apply(logits)
    np.testing.assert_array_equal(out, [[-np.inf, 2.5, -np.inf, 2.4], [5.0, -np.inf, -np.inf, 3.0]])
    assert (out.argmax(1) == logits.argmax(1)).all()
    np.testing.assert_array_equal(OutputPolicy().apply(logits), logits)
    assert not OutputPolicy().active
    with pytest.raises(ValueError):
        OutputPolicy(top_k=-1)


def test_the_provider_policy_is_checked_at_the_edge():
    with pytest.raises(ValueError, match=r"silos\.bob\.policy: logit_noise"):
        SiloSettings.from_config(load_config(["silos.bob.policy.logit_noise=-1"]), "bob")
    with pytest.raises(ValueError, match=r"silos\.bob\.policy: query_budget"):
        SiloSettings.from_config(load_config(["silos.bob.policy.query_budget=-5"]), "bob")


def test_the_querier_refuses_logits_computed_for_another_key(querier):
    """A reply mixed up between queriers (another querier's context) is refused at decryption."""
    coef, intercept = head_arrays()
    other = CkksKit.generate(default_params())
    Z = np.zeros((2, D))
    out = EncryptedLinearHead(coef, intercept).evaluate(
        CkksKit.from_public(other.public_bytes()),
        encrypt_queries(other, Z, path="batched", n_classes=K), path="batched", n=2)
    with pytest.raises(CiphertextError, match="another key"):
        decrypt_logits(querier, out, path="batched", n=2, n_classes=K)
    assert CkksKit.from_secret(querier.params, querier.secret_key_bytes()).key_id == querier.key_id

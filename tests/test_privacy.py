"""The noise bound that sizes the flooding (crypto.privacy) holds for the noise a querier measures.

A querier can isolate the weight-dependent noise of a reply exactly: it subtracts its own
plaintexts from its ciphertexts (leaving encryptions of zero with the same randomness), has them
evaluated without protection, subtracts the bias, and decrypts. What is left is the noise E the
provider's flooding must hide. The bound must hold (else the flooding is too small) and must not be
vacuous (else it wastes precision).
"""

import math

import numpy as np
import pytest
import tenseal.sealapi as seal
from tiny import default_params

from crypto import CircuitPrivacy, CkksKit, CrossProductPacking, EncryptedLinearHead, SinglePlan
from crypto.head import encrypt_queries

QUERIER = CkksKit.generate(default_params())


def zero_copies(kit: CkksKit, blobs: list[bytes], values: list[np.ndarray], bits: int,
                level) -> list[bytes]:
    """The querier's ciphertexts minus their plaintexts: encryptions of zero, same randomness."""
    out = []
    for blob, v in zip(blobs, values, strict=True):
        ct, plain = kit.load(blob), seal.Plaintext()
        kit.encoder.encode(np.asarray(v, np.float64).tolist(), level, 2.0**bits, plain)
        kit.evaluator.sub_plain_inplace(ct, plain)
        out.append(kit.dump(ct))
    return out


def measured_std(kit: CkksKit, reply: bytes, bias: np.ndarray | float) -> float:
    """Per-coefficient std of a reply's noise, from the spread of its decoded slots (the real part
    of each of the N/2 slots of a random polynomial has variance σ²·N/2)."""
    ct = kit.load(reply)
    kit.evaluator.sub_plain_inplace(ct, kit.encode(bias, ct.scale, like=ct))
    slots = kit.decrypt(ct) * ct.scale
    return float(np.std(slots) / math.sqrt(kit.params.poly_modulus_degree / 2))


def check(bound: float, measured: float, looseness: float) -> None:
    """The model's std is at least the measured one (up to the estimate's ~2 % sampling error;
    the flooding then covers τ ≈ 8.7 of them), and at most ``looseness`` times it: where noises of
    rotated copies of one ciphertext add, the model adds their stds (Cauchy-Schwarz), an upper
    bound that costs log2(looseness) bits of precision and no security."""
    assert measured <= 1.05 * bound, (measured, bound)
    assert bound <= looseness * measured, (measured, bound)


def test_batched_noise_bound_holds():
    rng = np.random.default_rng(0)
    d, k = 48, 3
    V, c = rng.normal(0, 0.4, (d, k)), rng.normal(0, 1, k)
    Z = rng.uniform(-1, 1, (200, d))
    blobs = encrypt_queries(QUERIER, Z, path="batched", n_classes=k)
    zeros = zero_copies(QUERIER, blobs, [Z[:, j] for j in range(d)],
                        QUERIER.params.input_scale_bits, QUERIER.query_level)
    provider = CkksKit.from_public(QUERIER.public_bytes())
    head = EncryptedLinearHead(V, c)
    replies = head.evaluate(provider, zeros, path="batched", n=len(Z),
                            privacy=CircuitPrivacy.off(provider))
    scale = QUERIER.load(replies[0]).scale / 2.0**QUERIER.params.input_scale_bits
    for j, bound in enumerate(head.batched_noise(scale)):
        check(bound.std, measured_std(QUERIER, replies[j], float(c[j])), looseness=1.05)


@pytest.mark.parametrize("complete_fold", [True, False])
def test_single_noise_bound_holds(complete_fold):
    rng = np.random.default_rng(1)
    d, k = 100, 5
    V, c = rng.normal(0, 0.3, (d, k)), rng.normal(0, 1, k)
    z = rng.uniform(-1, 1, d)
    plan = SinglePlan(d, k, QUERIER.slots, complete_fold=complete_fold)
    blobs = encrypt_queries(QUERIER, z[None], path="single", n_classes=k)
    zeros = zero_copies(QUERIER, blobs, plan.tile(z), QUERIER.params.input_scale_bits,
                        QUERIER.query_level)
    provider = CkksKit.from_public(QUERIER.public_bytes(plan.rotation_steps))
    head = EncryptedLinearHead(V, c)
    query = provider.load_many(zeros)
    reply = head.evaluate_single(provider, query, privacy=CircuitPrivacy.off(provider),
                                 complete_fold=complete_fold)
    scale = reply.scale / query[0].scale
    bias = np.zeros(QUERIER.slots)
    bias[:k] = c
    if complete_fold:
        bias = np.tile(bias[: plan.k_pad], QUERIER.slots // plan.k_pad)
    bound = head.single_noise(provider, query[0], scale, complete_fold=complete_fold)
    check(bound.std, measured_std(QUERIER, provider.dump(reply), bias), looseness=128)


def test_fitting_noise_bound_holds():
    rng = np.random.default_rng(2)
    n, d_in, d_out = 300, 6, 24
    X, Y = rng.uniform(-1, 1, (n, d_in)), rng.uniform(-1, 1, (n, d_out)) / 3
    packing = CrossProductPacking.plan(n, d_in, d_out, QUERIER.slots)
    blobs = packing.encrypt(QUERIER, X)
    # the same slot layout as packing.encrypt, to subtract each ciphertext's plaintext
    F, T, R = packing.features_per_ct, packing.block, packing.part_cap
    values = []
    for tc in range(packing.n_text_chunks):
        rows = X[tc * packing.texts_per_block : (tc + 1) * packing.texts_per_block]
        for fg in range(packing.n_feature_groups):
            cols = rows[:, fg * F : (fg + 1) * F]
            slots = np.zeros((F, T))
            slots[: cols.shape[1], R : R + len(rows)] = cols.T
            values.append(slots.ravel())
    zeros = zero_copies(QUERIER, blobs, values, QUERIER.params.fit_input_scale_bits,
                        QUERIER.fit_level)
    provider = CkksKit.from_public(QUERIER.public_bytes(packing.rotation_steps))
    replies = packing.multiply(provider, zeros, Y, privacy=CircuitPrivacy.off(provider))
    like = provider.load(zeros[0])
    scale = QUERIER.load(replies[0]).scale / like.scale
    bounds = packing._noise(provider, Y, like)(scale)
    for index, reply in enumerate(replies):
        part = index % len(packing.parts)
        check(bounds[part].std, measured_std(QUERIER, reply, 0.0), looseness=128)

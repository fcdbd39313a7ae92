"""Circuit privacy: a reply that decrypts to its result and to nothing else, even for the key holder.

A semi-honest querier keeps its secret key and the randomness of every ciphertext it made. A reply
is a linear function of those ciphertexts with the provider's weights as coefficients, so without
protection its ``c1`` half and its noise are known combinations of the querier's own polynomials,
solved for the weights by linear algebra (``simulations/attacks.py``). Two steps close that:

1. **Re-randomisation.** Add a fresh encryption of zero under the querier's *public* key: its
   ``u, e0, e1`` are the provider's, so ``c1`` becomes an RLWE sample unrelated to the querier's.
2. **Noise flooding.** Add to ``c0`` a polynomial F with coefficients uniform in [-B, B]. With E the
   weight-dependent noise of the decryption, ``E + F`` and ``F`` are within statistical distance
   ``||E||_1 / (2B) <= N·E∞ / (2B)``; ``B = 2^(s-1)·N·E∞`` makes that ``2^-s``.

E∞ is bounded from the computation by :class:`NoiseBound`: per-coefficient standard deviations,
added as variances where the sources are independent (different fresh ciphertexts) and as standard
deviations where they are not (rotated copies of one ciphertext), times a Gaussian tail factor
that holds for all N coefficients except with probability 2^-s: the average-case noise model of
CKKS (Costache et al., "On the precision loss in approximate homomorphic encryption", 2022), with
SEAL's own error distribution (σ = 3.2). ``tests/test_privacy.py`` checks the bound against the
noise the querier measures on every path.

What remains after both steps is the result slots, at a precision set by B: the querier's
parameters must hold ``B`` below the scale (``crypto.params``), and the provider refuses before
computing when they do not. The protected reply is then rescaled to one prime, a public function
of a ciphertext that is already simulatable from the result, so it reveals nothing more.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from crypto.serialization import assemble_ciphertext

SEAL_SIGMA = 3.2  # SEAL's error standard deviation (util/globals: noise_standard_deviation)
# A fresh query's noise as the querier knows it: SEAL's error plus its own encoding rounding.
FRESH_VARIANCE = SEAL_SIGMA**2 + 1 / 12
ROUNDING_VARIANCE = 1 / 12  # one rounding to an integer, uniform in [-1/2, 1/2]
MIN_REPLY_SCALE_BITS = 24  # a protected reply is rescaled while its scale stays at least this


def tail_factor(n_coefficients: int, bits: int) -> float:
    """τ with P(|X| > τσ for any of ``n_coefficients`` Gaussian coefficients) <= 2^-bits."""
    return math.sqrt(2.0 * math.log(2.0 * n_coefficients * 2.0**bits))


def plain_norm_sq(slot_norm_sq: float, scale: float, poly_modulus_degree: int) -> float:
    """Squared 2-norm of the coefficients of a plaintext whose slot values have squared norm
    ``slot_norm_sq``, encoded at ``scale``.

    Parseval on the canonical embedding: N·||w||² = Σ over the N embeddings = 2·scale²·||v||²
    (slots and their conjugates), plus the encoding's rounding (N coefficients, 1/12 each). (A
    scalar encodes as a constant polynomial instead: (scale·|v| + 1/2)².)"""
    n = poly_modulus_degree
    return 2.0 * scale**2 * slot_norm_sq / n + n / 12


def key_switch_variance(level_prime_bits: list[int], special_bits: int,
                        poly_modulus_degree: int) -> float:
    """Per-coefficient variance SEAL's key switching (a rotation) adds at a level.

    Each data prime's digit of c1 (uniform mod q_i) times that key's error, divided by the special
    prime P, plus the rounding of that division times the ternary secret."""
    n = poly_modulus_degree
    digits = sum(n * (2.0 ** (2 * b) / 12) * SEAL_SIGMA**2 / 2.0 ** (2 * special_bits)
                 for b in level_prime_bits)
    return digits + ROUNDING_VARIANCE * (1 + n * 2 / 3)


@dataclass(frozen=True)
class NoiseBound:
    """Standard deviation of a ciphertext's weight-dependent noise, per coefficient."""

    std: float

    @classmethod
    def fresh(cls) -> NoiseBound:
        return cls(math.sqrt(FRESH_VARIANCE))

    def times(self, norm_sq: float) -> NoiseBound:
        """Product with a plaintext of squared coefficient norm ``norm_sq`` (its coefficients are
        fixed, the noise's independent: the variance scales by the squared 2-norm)."""
        return NoiseBound(self.std * math.sqrt(norm_sq))

    def rotated(self, key_switch_var: float) -> NoiseBound:
        """A rotation: an automorphism (norm kept) plus fresh key-switching noise."""
        return NoiseBound(math.sqrt(self.std**2 + key_switch_var))

    @staticmethod
    def independent(bounds: list[NoiseBound]) -> NoiseBound:
        """Sum of terms whose noises are independent (variances add)."""
        return NoiseBound(math.sqrt(sum(b.std**2 for b in bounds)))

    @staticmethod
    def correlated(bounds: list[NoiseBound]) -> NoiseBound:
        """Sum of terms that may share noise (standard deviations add: Cauchy-Schwarz)."""
        return NoiseBound(sum(b.std for b in bounds))

    def folded(self, steps: int, key_switch_var: float) -> NoiseBound:
        """``steps`` rotate-and-add folds: each adds a rotated copy of itself (correlated)."""
        std = self.std
        for _ in range(steps):
            std = 2 * std + math.sqrt(key_switch_var)
        return NoiseBound(std)


class CircuitPrivacy:
    """The provider's protection of its replies: re-randomise, flood with ``bits`` of statistical
    security, then rescale to the last prime.

    ``bits = 0`` turns flooding off, ``rerandomize=False`` the fresh encryption of zero and
    ``rescale=False`` the final rescale: they exist only to show, with the attacks
    (``simulations/attacks.py``), what each step prevents. :meth:`off` is the unprotected reply.
    """

    def __init__(self, kit, *, bits: int = 40, rerandomize: bool = True,
                 rescale: bool = True) -> None:
        if bits < 0:
            raise ValueError(f"the flooding's statistical security must be >= 0 bits, got {bits}")
        if rerandomize and kit.public_key is None:
            raise ValueError("re-randomising a reply needs the querier's public key; its public "
                             "context holds none")
        self.kit, self.bits = kit, int(bits)
        self.rerandomize, self.rescale = rerandomize, rescale

    @classmethod
    def off(cls, kit) -> CircuitPrivacy:
        """No protection at all: the reply as the bare computation leaves it."""
        return cls(kit, bits=0, rerandomize=False, rescale=False)

    @property
    def settings(self) -> dict:
        """What rebuilds this protection in a helper process, around the helper's own kit (whose
        flooding then draws from the helper's ``os.urandom``)."""
        return {"bits": self.bits, "rerandomize": self.rerandomize, "rescale": self.rescale}

    def flood_bits(self, noise: NoiseBound) -> float:
        """log2 B for a ciphertext of this noise (0 when flooding is off)."""
        if self.bits == 0:
            return 0.0
        n = self.kit.params.poly_modulus_degree
        e_inf = tail_factor(n, self.bits) * max(noise.std, 1.0)
        return (self.bits - 1) + math.log2(n) + math.log2(e_inf)

    def protect(self, ciphertext: seal.Ciphertext, noise: NoiseBound) -> seal.Ciphertext:
        """The reply as it may leave the provider: flooded, re-randomised, on the last prime."""
        return self.finish(self.mask(ciphertext, noise))

    def mask(self, ciphertext: seal.Ciphertext | None, noise: NoiseBound, *,
             like: tuple | None = None) -> seal.Ciphertext | None:
        """The random part of :meth:`protect`, in place: a fresh encryption of zero and the flooding
        for a reply of ``noise``. Additions commute, so it may be added to any one share of a
        reply that is a sum of shares (``crypto.head``'s batched path over helper processes), once
        per reply, before the shares are added up and :meth:`finish` rescales the sum: the
        reply is then exactly what :meth:`protect` of the whole sum gives. A share that is None
        (nothing to add) becomes the mask alone, at ``like`` = (level, scale)."""
        kit = self.kit
        level, scale = like if ciphertext is None else (ciphertext.parms_id(), ciphertext.scale)
        if self.rerandomize:
            zero = seal.Ciphertext()
            kit.public_encryptor.encrypt_zero(list(level), zero)
            zero.scale = scale
            ciphertext = kit.add_into(ciphertext, zero)
        if self.bits > 0:
            plus, minus = self._flood(list(level), scale, self.flood_bits(noise))
            ciphertext = kit.add_into(ciphertext, plus)
            kit.evaluator.sub_inplace(ciphertext, minus)
        return ciphertext

    def finish(self, ciphertext: seal.Ciphertext) -> seal.Ciphertext:
        """The last step of :meth:`protect`: rescaled while the scale allows, in place."""
        while self.rescale and self._can_rescale(ciphertext):
            self.kit.evaluator.rescale_to_next_inplace(ciphertext)
        return ciphertext

    def _can_rescale(self, ciphertext: seal.Ciphertext) -> bool:
        """Another rescale keeps the scale at or above 2^MIN_REPLY_SCALE_BITS (its rounding, ~2^11
        in the slots, then stays below the flooding's error)."""
        data = self.kit.context.get_context_data(ciphertext.parms_id())
        if data.next_context_data() is None:
            return False
        last = data.parms().coeff_modulus()[-1].bit_count()
        return math.log2(ciphertext.scale) - last >= MIN_REPLY_SCALE_BITS

    def _flood(self, level, scale: float,
               log_bound: float) -> tuple[seal.Ciphertext, seal.Ciphertext]:
        """Two ciphertexts whose difference is (F, 0), F uniform in [-2^b, 2^b), b = ⌈log_bound⌉."""
        kit = self.kit
        bits = math.ceil(log_bound)
        data = kit.context.get_context_data(level)
        primes = [m.value() for m in data.parms().coeff_modulus()]
        if bits + 2 > data.total_coeff_modulus_bit_count():
            raise ValueError(f"flooding needs {bits} bits, the reply's primes hold "
                             f"{data.total_coeff_modulus_bit_count()}")
        n = kit.params.poly_modulus_degree
        nibbles = random_nibbles(math.ceil((bits + 1) / 4), n)
        residues = np.stack([uniform_residues(nibbles, bits, q) for q in primes])
        return coefficient_ciphertexts(kit, residues, level, scale)


def random_nibbles(rows: int, n: int) -> np.ndarray:
    """``rows × n`` base-16 digits from the OS's cryptographic generator: the querier sees the
    leading digits of every flooding coefficient, so a predictable generator (numpy's PCG64)
    would let it subtract the flooding."""
    raw = np.frombuffer(os.urandom((rows * n + 1) // 2), dtype=np.uint8)
    digits = np.stack([raw >> 4, raw & 15], axis=1).ravel()[: rows * n]
    return digits.astype(np.uint64).reshape(rows, n)


def uniform_residues(nibbles: np.ndarray, bits: int, prime: int) -> np.ndarray:
    """(U - 2^bits) mod ``prime``, U the integer whose base-16 digits are ``nibbles`` (most
    significant first) reduced to [0, 2^(bits+1)): exact in uint64 by Horner's rule, since every
    partial value stays below prime·16 < 2^64 for primes below 2^60."""
    q = np.uint64(prime)
    x = np.zeros(nibbles.shape[1], dtype=np.uint64)
    top = (bits + 1) % 4 or 4  # the leading digit holds what is left of bits + 1
    for i, digit in enumerate(nibbles):
        if i == 0:
            digit = digit % np.uint64(1 << top)
        x = (x * np.uint64(16) + digit) % q
    return (x + q - np.uint64(pow(2, bits, prime))) % q


def coefficient_ciphertexts(kit, c0_residues: np.ndarray, level,
                            scale: float) -> tuple[seal.Ciphertext, seal.Ciphertext]:
    """(c0, 1) and (0, 1) in NTT form, c0 given per prime in coefficient form: their difference
    adds c0 to a ciphertext's first half and nothing else (SEAL refuses to move a ciphertext with
    ``c1 = 0``, a transparent one, to NTT form)."""
    pair = []
    for first in (c0_residues, np.zeros_like(c0_residues)):
        data = np.zeros((2, *c0_residues.shape), dtype=np.uint64)
        data[0] = first
        data[1, :, 0] = 1
        ciphertext = assemble_ciphertext(kit.context, data, level, scale, ntt_form=False)
        kit.evaluator.transform_to_ntt_inplace(ciphertext)
        pair.append(ciphertext)
    return pair[0], pair[1]

"""CKKS parameter sets and the checks that refuse unsafe or unusable ones before anything is encrypted.

The protocol needs exactly one ciphertext × plaintext multiply per result (a matrix product), then
only additions and rotations. So results are never rescaled: they are decrypted at scale
``input_scale × weight_scale``. Queries are encrypted at the *last* level, on the first prime alone
(60 bits hold a logit product with 2^-20 precision), which makes every query ciphertext and
operation as small as CKKS allows. The public embeddings of the fitting are encrypted at the
*first* level, on all data primes (the last prime is SEAL's special prime for key switching),
because the fitting rotates them before multiplying and sums thousands of products: 100 bits give
it 40-bit scales.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass

# Largest total coefficient modulus (bits) that keeps 128-bit classical security for a ternary secret,
# from the Homomorphic Encryption Standard (Albrecht et al., 2018), Table 1 — the table SEAL enforces.
MAX_LOG_Q_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
MAX_LOG_Q = {  # the same table at every security level it lists
    128: MAX_LOG_Q_128,
    192: {1024: 19, 2048: 37, 4096: 75, 8192: 152, 16384: 305, 32768: 611},
    256: {1024: 14, 2048: 29, 4096: 58, 8192: 118, 16384: 237, 32768: 476},
}

# Fewest bits a plaintext weight may be encoded with: 2^-16 relative error per weight keeps the
# protocol's 1e-3 absolute error with several thousand terms summed.
MIN_WEIGHT_SCALE_BITS = 16


class InsecureParametersError(ValueError):
    """A parameter set below 128-bit security, or one that cannot hold the protocol's computation."""


class InsecureParametersWarning(UserWarning):
    """A parameter set below 128-bit security, used because the config says allow_insecure."""


@dataclass(frozen=True)
class CKKSParams:
    """A CKKS parameter set: ring degree, modulus chain (bits per prime) and the two encoding scales.

    ``input_scale_bits`` is the scale of encrypted queries, ``fit_input_scale_bits`` that of the
    encrypted public embeddings, which the fitting rotates *before* multiplying: a rotation adds
    key-switching noise of ~N·σ ≈ 2^15 whatever the scale, so they need the higher one.
    ``weight_scale_bits`` is the largest scale of the plaintexts they are multiplied by (lowered per
    computation when the result's bound needs the room, see :meth:`weight_scale_for`).
    ``max_abs_input`` bounds every encrypted query value: the querier refuses to encrypt beyond it
    and the provider sizes its scales with it.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    input_scale_bits: int = 25
    fit_input_scale_bits: int = 40
    weight_scale_bits: int = 40
    max_abs_input: float = 4.0
    allow_insecure: bool = False

    @classmethod
    def from_config(cls, he: object) -> CKKSParams:
        """Build from the ``he`` config section (any mapping with the dataclass' keys)."""
        get = he.get if hasattr(he, "get") else lambda k, d=None: getattr(he, k, d)
        return cls(
            poly_modulus_degree=int(get("poly_modulus_degree")),
            coeff_mod_bit_sizes=tuple(int(b) for b in get("coeff_mod_bit_sizes")),
            input_scale_bits=int(get("input_scale_bits", cls.input_scale_bits)),
            fit_input_scale_bits=int(get("fit_input_scale_bits", cls.fit_input_scale_bits)),
            weight_scale_bits=int(get("weight_scale_bits", cls.weight_scale_bits)),
            max_abs_input=float(get("max_abs_input", cls.max_abs_input)),
            allow_insecure=bool(get("allow_insecure", False)),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> CKKSParams:
        """Parameters sent by a querier; a provider checks them before building anything."""
        try:
            values = json.loads(text)
            values["coeff_mod_bit_sizes"] = tuple(values["coeff_mod_bit_sizes"])
            return cls(**values).check()
        except (TypeError, KeyError, ValueError) as err:
            if isinstance(err, InsecureParametersError):
                raise
            raise InsecureParametersError(f"malformed CKKS parameters ({err})") from None

    @property
    def is_secure(self) -> bool:
        """At least 128-bit classical security per the HE Standard table."""
        n = self.poly_modulus_degree
        return n in MAX_LOG_Q_128 and self.log_q <= MAX_LOG_Q_128[n]

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def log_q(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def security_bits(self) -> int:
        """The highest HE Standard level (128, 192, 256) this N and log Q reach; 0 below 128."""
        n = self.poly_modulus_degree
        return max((level for level, table in MAX_LOG_Q.items() if self.log_q <= table.get(n, -1)),
                   default=0)

    @property
    def data_bits(self) -> int:
        """Bits of a ciphertext at the first level (all primes but the special one): the fitting."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def query_bits(self) -> int:
        """Bits of a ciphertext at the last level (the first prime only): encrypted queries."""
        return self.coeff_mod_bit_sizes[0]

    def check(self) -> CKKSParams:
        """Raise InsecureParametersError unless the set is >= 128-bit and can hold one product."""
        n = self.poly_modulus_degree
        if n not in MAX_LOG_Q_128:
            raise InsecureParametersError(
                f"poly_modulus_degree must be one of {sorted(MAX_LOG_Q_128)}, got {n}"
            )
        if self.log_q > MAX_LOG_Q_128[n]:
            what = (f"log Q = {self.log_q} bits exceeds {MAX_LOG_Q_128[n]} for N={n}: below "
                    "128-bit security (HE Standard)")
            if not self.allow_insecure:
                raise InsecureParametersError(
                    f"{what}. Shorten coeff_mod_bit_sizes, raise N, or set he.allow_insecure=true "
                    "for experiments only.")
            warnings.warn(f"INSECURE CKKS PARAMETERS: {what}; used only because "
                          "he.allow_insecure=true. Never serve real data with them.",
                          InsecureParametersWarning, stacklevel=2)
        if len(self.coeff_mod_bit_sizes) < 2:
            raise InsecureParametersError(
                "the modulus chain needs a data prime and a special prime (for rotations), got "
                f"{list(self.coeff_mod_bit_sizes)}"
            )
        if any(not 20 <= b <= 60 for b in self.coeff_mod_bit_sizes):
            raise InsecureParametersError(
                f"SEAL primes must have 20 to 60 bits, got {list(self.coeff_mod_bit_sizes)}"
            )
        if self.coeff_mod_bit_sizes[-1] < max(self.coeff_mod_bit_sizes[:-1]):
            raise InsecureParametersError(
                "the special (last) prime must be at least as large as every data prime, or key "
                "switching (rotations) adds noise of the size of the data"
            )
        if min(self.input_scale_bits, self.fit_input_scale_bits) < 20:
            raise InsecureParametersError(
                f"input scales of {self.input_scale_bits} / {self.fit_input_scale_bits} bits cannot "
                "reach the 1e-3 accuracy the protocol promises; use >= 20 bits"
            )
        if not self.max_abs_input > 0:
            raise InsecureParametersError(f"max_abs_input must be positive, got {self.max_abs_input}")
        self.weight_scale_for(self.max_abs_input)  # the simplest product must fit
        self.weight_scale_for(1.0, self.fit_input_scale_bits, self.data_bits)
        return self

    def weight_scale_for(self, bound: float, input_scale_bits: float | None = None,
                         level_bits: int | None = None) -> float:
        """Plaintext scale for a product whose decrypted values are bounded by ``bound``.

        The result lives at ``input_scale × weight_scale`` in ``data_bits`` bits, one of which is the
        sign and one a margin for noise. Raises InsecureParametersError if the weights would get
        fewer than MIN_WEIGHT_SCALE_BITS bits: the computation does not fit this chain, and it is
        refused before anything is computed rather than decrypted as garbage.
        """
        if not math.isfinite(bound) or bound < 0:
            raise InsecureParametersError(f"the result bound must be finite, got {bound}")
        input_bits = self.input_scale_bits if input_scale_bits is None else input_scale_bits
        level_bits = self.query_bits if level_bits is None else level_bits
        room = math.floor(level_bits - 2 - input_bits - max(0, math.ceil(math.log2(bound + 1))))
        bits = min(self.weight_scale_bits, room)
        if bits < MIN_WEIGHT_SCALE_BITS:
            raise InsecureParametersError(
                f"results up to {bound:.3g} need {input_bits:g} + "
                f"{MIN_WEIGHT_SCALE_BITS} + {math.ceil(math.log2(bound + 1))} + 2 bits, the "
                f"ciphertext's primes hold {level_bits}: use a longer chain or a smaller input scale"
            )
        return 2.0**bits

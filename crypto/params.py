"""CKKS parameter sets and the checks that refuse unsafe or unusable ones before anything is encrypted.

The protocol needs exactly one ciphertext × plaintext multiply per result (a matrix product), then
only additions and rotations, then the reply's protection (``crypto.privacy``): a fresh encryption
of zero and a flooding polynomial 2^40·N times the weight-dependent noise. So a result must sit at a
scale far above its noise: queries are encrypted on all data primes but the last (``query_bits``,
120 by default) at a high input scale, the fitting's public embeddings on every data prime
(``data_bits``, 158). A protected reply is rescaled to the first prime alone, its smallest form.
The last prime of the chain is SEAL's special prime for key switching.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
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
# Largest standard deviation the flooding may add to a decrypted result: 1e-4 keeps the protocol's
# 1e-3 absolute error over 10,000 queries (4.4 σ).
MAX_FLOODING_ERROR = 1e-4


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

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    input_scale_bits: int
    fit_input_scale_bits: int
    weight_scale_bits: int
    max_abs_input: float
    allow_insecure: bool = False

    @classmethod
    def from_config(cls, he: object) -> CKKSParams:
        """Build from the ``he`` config section (conf/he/*.yaml merged into conf/default.yaml)."""
        get = he.get if hasattr(he, "get") else lambda k, d=None: getattr(he, k, d)
        return cls(
            poly_modulus_degree=int(get("poly_modulus_degree")),
            coeff_mod_bit_sizes=tuple(int(b) for b in get("coeff_mod_bit_sizes")),
            input_scale_bits=int(get("input_scale_bits")),
            fit_input_scale_bits=int(get("fit_input_scale_bits")),
            weight_scale_bits=int(get("weight_scale_bits")),
            max_abs_input=float(get("max_abs_input")),
            allow_insecure=bool(get("allow_insecure", False)),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes, *, min_security_bits: int | None = None) -> CKKSParams:
        """Parameters sent by a querier; a provider checks them, at its own
        ``min_security_bits``, before building anything."""
        try:
            values = json.loads(text)
            values["coeff_mod_bit_sizes"] = tuple(values["coeff_mod_bit_sizes"])
            return cls(**values).check(min_security_bits=min_security_bits)
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
        """Bits of a ciphertext at the query level (all data primes but the last)."""
        return sum(self.coeff_mod_bit_sizes[:-2])

    def check(self, *, min_security_bits: int | None = None) -> CKKSParams:
        """Raise InsecureParametersError unless the set is secure and can hold the protocol.

        ``min_security_bits`` is a provider's own floor (128, 192 or 256): below it the set is
        refused whatever ``allow_insecure`` says, since that flag is the querier's."""
        n = self.poly_modulus_degree
        if n not in MAX_LOG_Q_128:
            raise InsecureParametersError(
                f"poly_modulus_degree must be one of {sorted(MAX_LOG_Q_128)}, got {n}"
            )
        if min_security_bits is not None:
            if min_security_bits not in MAX_LOG_Q:
                raise InsecureParametersError(
                    f"a minimum security of {min_security_bits} bits is not in the HE Standard "
                    f"table; use one of {sorted(MAX_LOG_Q)}")
            if self.security_bits < min_security_bits:
                raise InsecureParametersError(
                    f"log Q = {self.log_q} bits at N={n} is below the {min_security_bits}-bit "
                    f"security this provider requires (HE Standard: at most "
                    f"{MAX_LOG_Q[min_security_bits][n]} bits); refused whatever allow_insecure says")
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
        if len(self.coeff_mod_bit_sizes) < 4:
            raise InsecureParametersError(
                "the modulus chain needs three data primes (fitting, queries, replies) and a "
                f"special prime (for rotations), got {list(self.coeff_mod_bit_sizes)}"
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
        if self.input_scale_bits + math.log2(self.max_abs_input) + 2 > self.query_bits:
            raise InsecureParametersError(
                f"queries at 2^{self.input_scale_bits} up to {self.max_abs_input:g} do not fit "
                f"the query level's {self.query_bits} bits")
        if self.fit_input_scale_bits + 2 > self.data_bits:
            raise InsecureParametersError(
                f"public embeddings at 2^{self.fit_input_scale_bits} do not fit the first level's "
                f"{self.data_bits} bits")
        self.weight_scale_for(self.max_abs_input)  # the simplest product must fit
        self.weight_scale_for(1.0, self.fit_input_scale_bits, self.data_bits)
        return self

    def weight_scale_for(self, bound: float, input_scale_bits: float | None = None,
                         level_bits: int | None = None,
                         flood_bits_at: Callable[[float], float] | None = None) -> float:
        """Plaintext scale for a product whose decrypted values are bounded by ``bound``.

        The result lives at ``input_scale × weight_scale`` in ``level_bits`` bits, one of which is
        the sign and one a margin for noise. ``flood_bits_at(scale)`` is log2 of the flooding bound
        a reply computed at that weight scale needs (it grows with the scale): it must fit too.
        Raises InsecureParametersError if the weights would get fewer than MIN_WEIGHT_SCALE_BITS
        bits: the computation does not fit this chain, and it is refused before anything is
        computed rather than decrypted as garbage (or sent unflooded).
        """
        if not math.isfinite(bound) or bound < 0:
            raise InsecureParametersError(f"the result bound must be finite, got {bound}")
        input_bits = self.input_scale_bits if input_scale_bits is None else input_scale_bits
        level_bits = self.query_bits if level_bits is None else level_bits
        value_bits = max(0, math.ceil(math.log2(bound + 1)))
        room = math.floor(level_bits - 2 - input_bits - value_bits)
        flood = 0.0
        for bits in range(min(self.weight_scale_bits, room), MIN_WEIGHT_SCALE_BITS - 1, -1):
            flood = 0.0 if flood_bits_at is None else flood_bits_at(2.0**bits)
            if flood <= level_bits - 2:
                # The flooding's error in every decoded slot: std B·√(N/3) over the result's scale.
                error = 2.0 ** (flood - input_bits - bits) * math.sqrt(self.poly_modulus_degree / 3)
                if flood and error > MAX_FLOODING_ERROR:
                    raise InsecureParametersError(
                        f"the flooding (2^{flood:.0f}) would leave errors of ~{error:.1e} in every "
                        f"result at input scale 2^{input_bits:g}: raise the input scale")
                return 2.0**bits
        raise InsecureParametersError(
            f"results up to {bound:.3g} at input scale 2^{input_bits:g} need {input_bits:g} + "
            f"{MIN_WEIGHT_SCALE_BITS} + {value_bits} + 2 bits"
            + (f" and flooding of 2^{flood:.0f}" if flood else "")
            + f"; the ciphertext's primes hold {level_bits}: use a longer chain or a smaller "
            "input scale")

"""CKKS parameter sets and the checks that refuse unsafe or unusable ones before anything is encrypted."""

from __future__ import annotations

from dataclasses import dataclass

# Largest total coefficient modulus (bits) that keeps 128-bit classical security for a ternary secret,
# from the Homomorphic Encryption Standard (Albrecht et al., 2018), Table 1 — the table SEAL enforces.
MAX_LOG_Q_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


class InsecureParametersError(ValueError):
    """A parameter set below 128-bit security, or one that cannot hold the protocol's computation."""


@dataclass(frozen=True)
class CKKSParams:
    """A CKKS parameter set: ring degree, modulus chain (bits per prime) and encoding scale.

    The first prime holds the integer part of the results, the middle primes are consumed by rescaling
    (one per plaintext multiply), the last is the special prime used for key switching.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    global_scale_bits: int = 40
    allow_insecure: bool = False

    @classmethod
    def from_config(cls, he: object) -> CKKSParams:
        """Build from the ``he`` config section (any mapping with the dataclass' keys)."""
        get = he.get if hasattr(he, "get") else lambda k, d=None: getattr(he, k, d)
        return cls(
            poly_modulus_degree=int(get("poly_modulus_degree")),
            coeff_mod_bit_sizes=tuple(int(b) for b in get("coeff_mod_bit_sizes")),
            global_scale_bits=int(get("global_scale_bits")),
            allow_insecure=bool(get("allow_insecure", False)),
        )

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def log_q(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def levels(self) -> int:
        """Plaintext multiplies (rescales) the chain allows."""
        return len(self.coeff_mod_bit_sizes) - 2

    def check(self) -> CKKSParams:
        """Raise InsecureParametersError unless the set is >= 128-bit and can hold one multiply."""
        n = self.poly_modulus_degree
        if n not in MAX_LOG_Q_128:
            raise InsecureParametersError(
                f"poly_modulus_degree must be one of {sorted(MAX_LOG_Q_128)}, got {n}"
            )
        if self.log_q > MAX_LOG_Q_128[n] and not self.allow_insecure:
            raise InsecureParametersError(
                f"log Q = {self.log_q} bits exceeds {MAX_LOG_Q_128[n]} for N={n}: below 128-bit "
                "security (HE Standard). Shorten coeff_mod_bit_sizes, raise N, or set "
                "he.allow_insecure=true for experiments only."
            )
        if self.levels < 1:
            raise InsecureParametersError(
                "the modulus chain needs at least one middle prime (one rescale) for the plaintext "
                f"multiply of the protocol, got {list(self.coeff_mod_bit_sizes)}"
            )
        middle = self.coeff_mod_bit_sizes[1:-1]
        if any(bits != self.global_scale_bits for bits in middle):
            raise InsecureParametersError(
                f"middle primes {list(middle)} must equal the scale ({self.global_scale_bits} bits) "
                "or every rescale drifts the scale"
            )
        headroom = self.coeff_mod_bit_sizes[0] - self.global_scale_bits
        if headroom < 10:
            raise InsecureParametersError(
                f"first prime leaves {headroom} bits above the scale: results above 2^{headroom - 1} "
                "would wrap around; raise the first prime or lower global_scale_bits"
            )
        if self.global_scale_bits < 25:
            raise InsecureParametersError(
                f"a {self.global_scale_bits}-bit scale cannot reach the 1e-3 accuracy the protocol "
                "promises; use >= 25 bits"
            )
        return self

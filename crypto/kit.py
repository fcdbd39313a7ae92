"""The SEAL objects of one CKKS parameter set, for the querier (with the secret key) or a provider.

Built on TenSEAL's ``sealapi`` rather than its ``CKKSVector`` because the protocol needs what the
vector API hides: symmetric encryption whose ciphertexts travel *seeded* (half the bytes), Galois
keys for only the rotation steps a computation uses, pre-encoded plaintexts reused across
ciphertexts, and products left unrescaled (see ``crypto.params``).

What leaves the querier is :meth:`CkksKit.public_bytes`: the parameters, its public key (with which
a provider re-randomises its replies, ``crypto.privacy``) and, when a computation rotates, Galois
keys for its steps. Public and Galois keys can encrypt and evaluate, never decrypt; the secret key
is only ever serialised by :meth:`CkksKit.secret_key_bytes`, for the querier's own node state.

Levels: the fitting's public embeddings are encrypted on every data prime (``fit_level``), queries
on all but the last (``query_level``), and every reply is rescaled to the first prime alone once
it is protected (``crypto.privacy``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

import numpy as np
import tenseal.sealapi as seal

from crypto.params import CKKSParams, InsecureParametersError
from crypto.processes import Shared
from crypto.serialization import TAG_BYTES, CiphertextError, dump, load_into


class KeyMaterialError(ValueError):
    """Key material that is missing, of the wrong kind, or not for these parameters."""


def galois_element(step: int, poly_modulus_degree: int) -> int:
    """SEAL's Galois element for a left rotation of the CKKS slots by ``step`` (3^step mod 2N)."""
    slots = poly_modulus_degree // 2
    if step % slots == 0:
        raise ValueError(f"rotation step {step} is the identity on {slots} slots")
    return pow(3, step % slots, 2 * poly_modulus_degree)


Placement = tuple[tuple[int, ...], float]


def placement(ciphertext: seal.Ciphertext) -> Placement:
    """(level, scale) of a ciphertext: what every term of one encrypted sum must share."""
    return tuple(ciphertext.parms_id()), ciphertext.scale


def common_placement(ciphertexts: Iterable[seal.Ciphertext], what: str,
                     like: Placement | None = None) -> Placement:
    """The (level, scale) that ``ciphertexts`` (and ``like``, when given) all share, else a
    ValueError naming ``what``: SEAL refuses a sum across levels, but not across scales, which it
    would decrypt to garbage; a querier's request is checked before anything is computed."""
    found = {placement(ct) for ct in ciphertexts} | ({like} if like is not None else set())
    if len(found) != 1:
        raise ValueError(f"{what} differ in level or scale" if found else f"no {what}")
    return found.pop()


class CkksKit:
    """Encoder, evaluator and keys of one parameter set.

    ``CkksKit.generate(params)`` makes a querier's kit with a fresh secret key;
    ``CkksKit.from_public(data)`` a provider's, which can evaluate and encrypt zeros under the
    querier's public key, never decrypt.
    """

    def __init__(self, params: CKKSParams, *, secret_key: seal.SecretKey | None = None,
                 min_security_bits: int | None = None) -> None:
        self.params = params.check(min_security_bits=min_security_bits)
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_modulus_degree)
        parms.set_coeff_modulus(
            seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes)))
        security = seal.SEC_LEVEL_TYPE.NONE if params.allow_insecure else seal.SEC_LEVEL_TYPE.TC128
        self.context = seal.SEALContext(parms, True, security)
        if not self.context.parameters_set():
            raise InsecureParametersError(
                f"SEAL refuses these parameters: {self.context.parameters_error_message()}")
        self.encoder = seal.CKKSEncoder(self.context)
        self.evaluator = seal.Evaluator(self.context)
        self.galois_keys: seal.GaloisKeys | None = None
        self.public_key: seal.PublicKey | None = None
        self.public_encryptor: seal.Encryptor | None = None
        self.rotation_steps: frozenset[int] = frozenset()
        self.public_data: bytes = b""  # what from_public was built from (for helper processes)
        self.min_security_bits = min_security_bits  # the floor it was checked at (helpers too)
        # Id of the querier's key, written into every ciphertext and checked on load: a ciphertext
        # under another key (same parameters) is refused rather than computed into garbage. A
        # one-way hash of the secret key for the querier; read from the public context otherwise.
        self.key_id: bytes | None = None
        self._secret_key = secret_key
        if secret_key is not None:
            self._encryptor = seal.Encryptor(self.context, secret_key)
            self._decryptor = seal.Decryptor(self.context, secret_key)
            self._keygen = seal.KeyGenerator(self.context, secret_key)
            self.key_id = hashlib.blake2b(dump(secret_key), digest_size=TAG_BYTES,
                                          person=b"secure-align-id").digest()

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def generate(cls, params: CKKSParams) -> CkksKit:
        """A querier's kit with a new secret key."""
        params.check()
        probe = cls(params)
        return cls(params, secret_key=seal.KeyGenerator(probe.context).secret_key())

    @classmethod
    def from_secret(cls, params: CKKSParams, secret_key: bytes) -> CkksKit:
        """The querier's kit again, from its node state."""
        probe = cls(params)
        key = load_into(seal.SecretKey(), probe.context, secret_key, "secret key")
        return cls(params, secret_key=key)

    @classmethod
    def from_public(cls, data: bytes, *, min_security_bits: int = 128) -> CkksKit:
        """A provider's kit from a querier's :meth:`public_bytes`.

        The parameters are checked first, against the *provider's* ``min_security_bits``: a
        querier's ``allow_insecure`` does not lower it. Kits are kept per process, keyed by the
        context's bytes: a provider serving a stream of requests under one context loads its keys
        once (~85 ms for a single-path context of 9 MiB, against 28 ms to evaluate a query:
        reports/crypto)."""
        if not isinstance(data, bytes | bytearray):
            raise InsecureParametersError("expected a public context (parameters + key id + keys)")
        return _public_kit(bytes(data), min_security_bits)

    @classmethod
    def _load_public(cls, data: bytes, min_security_bits: int) -> CkksKit:
        params_json, key_id, public_key, keys = _split(data)
        params = CKKSParams.from_json(params_json, min_security_bits=min_security_bits)
        kit = cls(params, min_security_bits=min_security_bits)
        kit.public_data = bytes(data)
        kit.key_id = key_id
        if public_key:
            kit.public_key = load_into(seal.PublicKey(), kit.context, public_key, "public key",
                                       tag=key_id)
            kit.public_encryptor = seal.Encryptor(kit.context, kit.public_key)
        if keys:
            kit.galois_keys = load_into(seal.GaloisKeys(), kit.context, keys, "Galois keys",
                                        tag=key_id)
            kit.rotation_steps = frozenset(
                s for s in range(1, kit.slots)
                if kit.galois_keys.has_key(galois_element(s, kit.params.poly_modulus_degree)))
        return kit

    @functools.cached_property
    def shared(self) -> Shared:
        """This kit as a helper process rebuilds it, once (``crypto.processes``): a provider's from
        the public context, a querier's from its parameters and secret key (which cross a pipe to
        the querier's own helper, never a disk)."""
        if self.is_private:
            params = self.params.to_json().encode()
            return Shared("secret_kit", Shared.digest_of(b"secret", params, self.key_id),
                          lambda: {"params": params, "secret_key": self.secret_key_bytes()})
        if not self.public_data:
            raise KeyMaterialError("this kit was not built from a public context")
        floor = self.min_security_bits
        data = self.public_data
        return Shared("public_kit", Shared.digest_of(b"public", data, str(floor).encode()),
                      lambda: {"data": data, "min_security_bits": floor})

    # -- keys -------------------------------------------------------------------------------------
    @property
    def is_private(self) -> bool:
        return self._secret_key is not None

    @property
    def slots(self) -> int:
        return self.params.slots

    def secret_key_bytes(self) -> bytes:
        """The secret key, for the querier's own node state only."""
        return dump(self._require_secret())

    def public_bytes(self, rotation_steps: Iterable[int] = ()) -> bytes:
        """Parameters + the public key + Galois keys for ``rotation_steps`` only.

        Galois keys are generated seeded (SEAL halves their size); nothing here can decrypt.
        """
        self._require_secret()
        steps = sorted({int(s) % self.slots for s in rotation_steps} - {0})
        keys = b""
        if steps:
            elements = [galois_element(s, self.params.poly_modulus_degree) for s in steps]
            keys = dump(self._keygen.create_galois_keys(elements), self._tag)
        return _join(self.params.to_json().encode(), self._tag,
                     dump(self._public_key(), self._tag), keys)

    def _public_key(self) -> seal.PublicKey:
        """The querier's public key, made once per kit (sealapi cannot return SEAL's seeded form:
        it travels whole, ~0.5 MiB at N=8192)."""
        if self.public_key is None:
            self.public_key = seal.PublicKey()
            self._keygen.create_public_key(self.public_key)
        return self.public_key

    def _require_secret(self) -> seal.SecretKey:
        if self._secret_key is None:
            raise KeyMaterialError(
                "this kit holds no secret key (a provider's kit cannot encrypt or decrypt)")
        return self._secret_key

    # -- querier: encrypt / decrypt ---------------------------------------------------------------
    def encrypt(self, values: np.ndarray, *, scale_bits: int | None = None,
                first_level: bool = False) -> bytes:
        """Seeded symmetric encryption of up to ``slots`` values.

        Default: a query, at the input scale on the query level. ``first_level``: on every data
        prime, for the fitting's longer computation.
        """
        self._require_secret()
        values = np.asarray(values, dtype=np.float64).ravel()
        if len(values) > self.slots:
            raise ValueError(f"{len(values)} values do not fit {self.slots} slots")
        if not np.isfinite(values).all():
            raise ValueError("refusing to encrypt NaN or inf")
        bound = self.params.max_abs_input
        if len(values) and np.abs(values).max() > bound:
            raise ValueError(
                f"|value| {np.abs(values).max():.3g} exceeds he.max_abs_input={bound:g}: the "
                "provider's scales assume it; rescale the inputs or raise the bound")
        plain = seal.Plaintext()
        bits = self.params.input_scale_bits if scale_bits is None else scale_bits
        level = self.fit_level if first_level else self.query_level
        self.encoder.encode(values.tolist(), level, 2.0**bits, plain)
        return dump(self._encryptor.encrypt_symmetric(plain), self._tag)

    def decrypt(self, ciphertext: seal.Ciphertext) -> np.ndarray:
        self._require_secret()
        plain = seal.Plaintext()
        self._decryptor.decrypt(ciphertext, plain)
        return np.asarray(self.encoder.decode_double(plain))

    # -- levels -----------------------------------------------------------------------------------
    @property
    def fit_level(self):
        return self.context.first_parms_id()

    @property
    def query_level(self):
        return self.context.first_context_data().next_context_data().parms_id()

    def prime_bits(self, ciphertext: seal.Ciphertext) -> list[int]:
        """Bit sizes of the primes ``ciphertext`` lives on."""
        data = self.context.get_context_data(ciphertext.parms_id())
        return [m.bit_count() for m in data.parms().coeff_modulus()]

    # -- both: (de)serialise ----------------------------------------------------------------------
    @property
    def _tag(self) -> bytes:
        return self.key_id if self.key_id is not None else bytes(TAG_BYTES)

    def load(self, data: bytes, what: str = "ciphertext") -> seal.Ciphertext:
        """A ciphertext of this kit's parameters and key (checked), ready to compute on."""
        ciphertext = load_into(seal.Ciphertext(), self.context, data, what, tag=self.key_id)
        if ciphertext.size() != 2:
            raise CiphertextError(f"{what}: expected a fresh 2-part ciphertext, got "
                                  f"{ciphertext.size()} parts")
        return ciphertext

    def load_many(self, blobs: Iterable[bytes]) -> list[seal.Ciphertext]:
        return [self.load(b, f"ciphertext {i}") for i, b in enumerate(blobs)]

    @staticmethod
    def scale_bits(ciphertext: seal.Ciphertext) -> float:
        return float(np.log2(ciphertext.scale))

    def level_bits(self, ciphertext: seal.Ciphertext) -> int:
        """Bits of the primes ``ciphertext`` lives on (its room for a product)."""
        data = self.context.get_context_data(ciphertext.parms_id())
        return data.total_coeff_modulus_bit_count()

    def dump(self, ciphertext: seal.Ciphertext) -> bytes:
        """A result ciphertext's bytes, tagged with the key of the ciphertexts it came from."""
        return dump(ciphertext, self._tag)

    # -- provider: evaluate -----------------------------------------------------------------------
    def encode(self, values: np.ndarray | float, scale: float,
               like: seal.Ciphertext | None = None) -> seal.Plaintext:
        """A plaintext at ``scale``, at ``like``'s level (default: the queries' level)."""
        plain = seal.Plaintext()
        value = float(values) if np.isscalar(values) else np.asarray(values, np.float64).tolist()
        level = self.query_level if like is None else like.parms_id()
        self.encoder.encode(value, level, scale, plain)
        return plain

    def multiply_add(self, acc: seal.Ciphertext | None, ciphertext: seal.Ciphertext,
                     plain: seal.Plaintext) -> seal.Ciphertext | None:
        """``acc + ciphertext × plain``; an all-zero plaintext adds nothing (SEAL refuses the
        transparent product it would make)."""
        if plain.is_zero():
            return acc
        out = seal.Ciphertext()
        self.evaluator.multiply_plain(ciphertext, plain, out)
        return self.add_into(acc, out)

    def add_into(self, acc: seal.Ciphertext | None, term: seal.Ciphertext) -> seal.Ciphertext:
        if acc is None:
            return term
        self.evaluator.add_inplace(acc, term)
        return acc

    def rotate(self, ciphertext: seal.Ciphertext, step: int) -> seal.Ciphertext:
        """Slots rotated left by ``step`` (needs the Galois key for that exact step)."""
        step %= self.slots
        if step == 0:
            return ciphertext
        if self.galois_keys is None or step not in self.rotation_steps:
            raise KeyMaterialError(f"no Galois key for rotation step {step}: the querier's public "
                            f"context holds steps {sorted(self.rotation_steps)}")
        out = seal.Ciphertext()
        self.evaluator.rotate_vector(ciphertext, step, self.galois_keys, out)
        return out


@functools.lru_cache(maxsize=4)
def _public_kit(data: bytes, min_security_bits: int) -> CkksKit:
    """A per-process cache of providers' kits (immutable once built: safe to share)."""
    return CkksKit._load_public(data, min_security_bits)


def _join(params: bytes, key_id: bytes, public_key: bytes, keys: bytes) -> bytes:
    return (len(params).to_bytes(4, "little") + params + key_id
            + len(public_key).to_bytes(4, "little") + public_key + keys)


def _split(data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(parameters JSON, key id, public key, Galois keys) of a public context."""
    if not isinstance(data, bytes | bytearray) or len(data) < 4:
        raise InsecureParametersError("expected a public context (parameters + key id + keys)")
    size = int.from_bytes(data[:4], "little")
    end = 4 + size + TAG_BYTES
    if end + 4 > len(data):
        raise InsecureParametersError("truncated public context")
    pk_size = int.from_bytes(data[end:end + 4], "little")
    if end + 4 + pk_size > len(data):
        raise InsecureParametersError("truncated public context")
    pk_end = end + 4 + pk_size
    return (bytes(data[4:4 + size]), bytes(data[4 + size:end]), bytes(data[end + 4:pk_end]),
            bytes(data[pk_end:]))

"""Attacks a semi-honest querier runs on the provider's replies, to show what each protection stops.

The querier keeps its secret key and every ciphertext it made (so it knows their ``c1`` halves and
their noise exactly) and decrypts every slot of every reply. Against an unprotected reply:

- **c1 solve** (batched path, one request of one query): the reply's ``c1`` is, pointwise in NTT
  form mod a prime, Σ_j w_jk·a_j with a_j the querier's own ``c1`` and w_jk = round(V[j,k]·Δ_w)
  integers: d NTT points solve for them exactly (a few more check the solution).
- **noise solve** (batched path, the all-zero query): each query ciphertext then decrypts to its
  pure noise e_j, which the querier knows; the reply decrypts to Σ_j w_jk·e_j + (c-term) (+ a fresh
  encryption's noise if re-randomised): least squares over the N-1 non-constant coefficients.
- **slot solve** (single path): with the fold stopped at the period, the slots hold partial sums
  of V[i,k]·z[i]; least squares over all slots of a few queries gives V.
- **cross-product solve** (fitting): with several feature blocks per ciphertext, the slots of
  Enc(X̃)ᵀY hold partial sums across texts, linear in Y with known coefficients from X̃.
- **logits baseline**: least squares on the decrypted logits alone, what any querier can do
  (d+1 queries for a full copy without noise).

A provider (or providers colluding) has one attack of its own, on the querier's uploads:

- **upload difference** (``Enc(X̃)``, one ciphertext per feature group, or any two uploads): the
  difference of two ciphertexts whose encryptions drew the same randomness is Δ·(m - m') in the
  clear; decoding it needs no key. SEAL draws fresh randomness for every encryption, so the
  difference is noise; providers that receive one shared ``Enc(X̃)`` hold the same bytes, and so
  no more than one of them holds.

Two more show the limits of the protection: the **c1 lattice solve** recovers V from a rescaled
but not re-randomised reply (rounding is not hiding: LLL on a hidden-number problem), and the
**inflated-noise solve**, a *malicious* querier's, gets V through the default protection by adding
noise of its own far above what the flooding is sized for.

Each attack sees only what the querier sees: its own kit, the bytes it sent and the bytes it got
back from ``serve`` (the provider, a callable). It returns its estimate and whether its own check
passed (it knows when a solve failed). ``crypto.privacy`` is what makes them fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from crypto import CkksKit, CrossProductPacking, EncryptedLinearHead, SinglePlan, encrypt_queries
from crypto.privacy import CircuitPrivacy, coefficient_ciphertexts
from crypto.serialization import assemble_ciphertext

Serve = Callable[[list[bytes]], list[bytes]]

# Named protection settings of the provider's replies (crypto.privacy): none, each single step
# alone, all but re-randomisation, or all of them (the protocol's default).
PROTECTIONS = {
    "off": {"bits": 0, "rerandomize": False, "rescale": False},
    "flood": {"bits": 40, "rerandomize": False, "rescale": False},
    "rerandomize": {"bits": 0, "rerandomize": True, "rescale": False},
    "rescale": {"bits": 0, "rerandomize": False, "rescale": True},
    "flood+rescale": {"bits": 40, "rerandomize": False, "rescale": True},
    "default": {"bits": 40, "rerandomize": True, "rescale": True},
}


def protection(kit: CkksKit, name: str) -> CircuitPrivacy:
    """The provider's CircuitPrivacy for a named setting (see PROTECTIONS)."""
    if name not in PROTECTIONS:
        raise ValueError(f"unknown protection {name!r}; expected one of {sorted(PROTECTIONS)}")
    return CircuitPrivacy(kit, **PROTECTIONS[name])


@dataclass
class Recovered:
    """An attacker's estimate: the head (V, c) or, for the fitting, Y in ``coef``.

    ``consistent`` is the attacker's own verdict (check equations hold, residual small): it knows
    without the truth whether its solve worked."""

    coef: np.ndarray
    intercept: np.ndarray | None
    queries: int
    consistent: bool

    def max_error(self, coef: np.ndarray, intercept: np.ndarray | None = None) -> float:
        """Largest absolute error against the truth (coefficients, and intercept if given)."""
        err = float(np.abs(self.coef - coef).max())
        if intercept is not None and self.intercept is not None:
            err = max(err, float(np.abs(self.intercept - intercept).max()))
        return err

    def agreement(self, head: EncryptedLinearHead, Z: np.ndarray) -> float:
        """Share of the queries Z on which the copy's argmax equals the head's."""
        c = np.zeros(head.n_classes) if self.intercept is None else self.intercept
        return float(((Z @ self.coef + c).argmax(1) == (Z @ head.coef + head.intercept).argmax(1))
                     .mean())


# -- the querier's raw view of ciphertexts ----------------------------------------------------------
def residues(ct: seal.Ciphertext) -> np.ndarray:
    """(parts, primes, N) uint64: a ciphertext's coefficients as SEAL stores them (NTT form)."""
    arr = ct.dyn_array()
    size = arr.size()
    flat = np.fromiter((arr.at(i) for i in range(size)), np.uint64, count=size)
    return flat.reshape(ct.size(), ct.coeff_modulus_size(), ct.poly_modulus_degree())


def primes(kit: CkksKit, ct: seal.Ciphertext) -> list[int]:
    return [m.value() for m in kit.context.get_context_data(ct.parms_id()).parms().coeff_modulus()]


def raw_decryption(kit: CkksKit, ct: seal.Ciphertext) -> np.ndarray:
    """(primes, N) uint64: c0 + c1·s in NTT form, before any decoding (the querier's secret key)."""
    plain = seal.Plaintext()
    seal.Decryptor(kit.context, kit._secret_key).decrypt(ct, plain)
    arr = plain.dyn_array()
    flat = np.fromiter((arr.at(i) for i in range(arr.size())), np.uint64, count=arr.size())
    return flat.reshape(ct.coeff_modulus_size(), ct.poly_modulus_degree())


def to_coefficients(kit: CkksKit, ntt: np.ndarray, level) -> np.ndarray:
    """(primes, N) NTT-form residues to coefficient form, by SEAL's own inverse NTT (on an
    assembled NTT-form ciphertext whose c0 they are; c1 = 1)."""
    data = np.ones((2, *ntt.shape), dtype=np.uint64)
    data[0] = ntt
    ct = assemble_ciphertext(kit.context, data, level, 2.0**20, ntt_form=True)
    kit.evaluator.transform_from_ntt_inplace(ct)
    return residues(ct)[0]


def centred(x: np.ndarray, prime: int) -> np.ndarray:
    """Residues mod ``prime`` (< 2^62) as signed integers in (-prime/2, prime/2]."""
    x = x.astype(np.int64)
    return np.where(x > prime // 2, x - np.int64(prime), x)


def _crt(residues_per_prime: np.ndarray, ps: list[int]) -> list[int]:
    """Integers in [0, Π ps) from their residues (primes, N), by Garner's formula."""
    x, modulus = [int(v) for v in residues_per_prime[0]], ps[0]
    for row, p in zip(residues_per_prime[1:], ps[1:], strict=True):
        inv = pow(modulus, -1, p)
        x = [v + modulus * ((int(r) - v) * inv % p) for v, r in zip(x, row, strict=True)]
        modulus *= p
    return x


def solve_mod(A: np.ndarray, B: np.ndarray, prime: int) -> np.ndarray:
    """X with A X = B (mod prime), A square (object arrays of Python ints); ValueError if singular."""
    n = A.shape[0]
    M = np.concatenate([A, B], axis=1).astype(object) % prime
    for i in range(n):
        nonzero = np.nonzero(M[i:, i] != 0)[0]
        if not len(nonzero):
            raise ValueError("singular system")
        r = i + int(nonzero[0])
        if r != i:
            M[[i, r]] = M[[r, i]]
        M[i] = M[i] * pow(int(M[i, i]), -1, prime) % prime
        if i + 1 < n:
            M[i + 1 :] = (M[i + 1 :] - np.outer(M[i + 1 :, i], M[i])) % prime
    for i in range(n - 1, 0, -1):  # back substitution: clear column i above the diagonal
        M[:i] = (M[:i] - np.outer(M[:i, i], M[i])) % prime
    return M[:, n:]


def _intercept(kit: CkksKit, reply: list[seal.Ciphertext], sent: list[seal.Ciphertext],
               coef: np.ndarray) -> np.ndarray:
    """c from every decrypted slot of a batched reply: slot s holds z_s·V + c (+ noise), z_s what
    the querier's ciphertexts decrypt to there (zero past the queries sent), so the mean over all
    slots of the residual averages the noise away."""
    slots = np.stack([kit.decrypt(ct) for ct in sent], axis=1)
    return np.array([float((kit.decrypt(ct) - slots @ coef[:, k]).mean())
                     for k, ct in enumerate(reply)])


# -- (i) batched path -------------------------------------------------------------------------------
def c1_solve(querier: CkksKit, serve: Serve, n_features: int, n_classes: int, *,
             z: np.ndarray | None = None, checks: int = 8,
             rng: np.random.Generator | None = None) -> Recovered:
    """One request of one query; V from the reply's c1 by linear algebra mod its first prime.

    The query's d ciphertexts have c1 = a_j; an unprotected logit k has c1 = Σ_j w_jk·a_j with
    w_jk the integer encodings of V[j,k] at the weight scale Δ_w = reply scale / query scale."""
    rng = np.random.default_rng() if rng is None else rng
    z = rng.uniform(-1, 1, n_features) if z is None else np.asarray(z, np.float64)
    Z = z.reshape(1, n_features)
    blobs = encrypt_queries(querier, Z, path="batched", n_classes=n_classes)
    sent = querier.load_many(blobs)
    reply = querier.load_many(serve(blobs))
    p = primes(querier, reply[0])[0]  # the reply's first prime: also the queries' first
    a = np.stack([residues(ct)[1, 0] for ct in sent], axis=1).astype(object)  # (N, d)
    b = np.stack([residues(ct)[1, 0] for ct in reply], axis=1).astype(object)  # (N, K)
    points = np.arange(n_features + checks)
    try:
        w = solve_mod(a[points[:n_features]], b[points[:n_features]], p)
        ok = bool(np.all((a[points[n_features:]].dot(w) - b[points[n_features:]]) % p == 0))
    except ValueError:
        w, ok = np.zeros((n_features, n_classes), dtype=object), False
    signed = np.vectorize(lambda x: int(x) - p if int(x) > p // 2 else int(x), otypes=[float])(w)
    coef = signed * (sent[0].scale / reply[0].scale)
    return Recovered(coef, _intercept(querier, reply, sent, coef), 1, ok)


def lll(basis: list[list[int]], delta: tuple[int, int] = (99, 100)) -> list[list[int]]:
    """LLL-reduced basis, in exact integers (Cohen, *A Course in Computational Algebraic Number
    Theory*, Algorithm 2.6.7): pure Python, for the small lattices of :func:`c1_lattice_solve`."""
    b = [[int(x) for x in row] for row in basis]
    n = len(b)
    num, den = delta
    d = [1] + [0] * n  # d[i + 1]: Gram determinant of the first i + 1 vectors
    lam = [[0] * n for _ in range(n)]

    def dot(u: list[int], v: list[int]) -> int:
        return sum(x * y for x, y in zip(u, v, strict=True))

    def reduce(k: int, j: int) -> None:
        if 2 * abs(lam[k][j]) > d[j + 1]:
            r = (2 * lam[k][j] + d[j + 1]) // (2 * d[j + 1])
            b[k] = [x - r * y for x, y in zip(b[k], b[j], strict=True)]
            lam[k][j] -= r * d[j + 1]
            for i in range(j):
                lam[k][i] -= r * lam[j][i]

    def swap(k: int, kmax: int) -> None:
        b[k], b[k - 1] = b[k - 1], b[k]
        for j in range(k - 1):
            lam[k][j], lam[k - 1][j] = lam[k - 1][j], lam[k][j]
        mu = lam[k][k - 1]
        B = (d[k - 1] * d[k + 1] + mu * mu) // d[k]
        for i in range(k + 1, kmax + 1):
            t = lam[i][k]
            lam[i][k] = (d[k + 1] * lam[i][k - 1] - mu * t) // d[k]
            lam[i][k - 1] = (B * t + mu * lam[i][k]) // d[k + 1]
        d[k] = B

    d[1] = dot(b[0], b[0])
    k, kmax = 1, 0
    while k < n:
        if k > kmax:
            kmax = k
            for j in range(k + 1):
                u = dot(b[k], b[j])
                for i in range(j):
                    u = (d[i + 1] * u - lam[k][i] * lam[j][i]) // d[i]
                if j < k:
                    lam[k][j] = u
                elif u == 0:
                    raise ValueError("dependent basis vectors")
                else:
                    d[k + 1] = u
        reduce(k, k - 1)
        if den * d[k + 1] * d[k - 1] < num * d[k] ** 2 - den * lam[k][k - 1] ** 2:
            swap(k, kmax)
            k = max(1, k - 1)
        else:
            for j in range(k - 2, -1, -1):
                reduce(k, j)
            k += 1
    return b


def c1_lattice_solve(querier: CkksKit, serve: Serve, n_features: int, n_classes: int, *,
                     equations: int | None = None,
                     rng: np.random.Generator | None = None) -> Recovered:
    """The c1 solve through the final rescale: rounding is no protection, re-randomisation is.

    Without re-randomisation a rescaled reply's c1 is y = round(C / q_last) with C = Σ_j w_j·A_j
    (mod Q) coefficient-wise (the weights are constants): every coefficient t gives
    Σ_j w_j·A_j[t] - q_last·y_t ≡ r_t (mod Q) with |r_t| <= q_last/2, a hidden-number problem
    whose short solution (λ·w, r, M) LLL finds in dimension d + m + 1 (pure Python: small d only;
    d = 4 takes a second, 16 a few minutes). Checked on all N coefficients."""
    rng = np.random.default_rng() if rng is None else rng
    m = n_features + 4 if equations is None else equations
    z = rng.uniform(-1, 1, (1, n_features))
    blobs = encrypt_queries(querier, z, path="batched", n_classes=n_classes)
    sent = querier.load_many(blobs)
    reply = querier.load_many(serve(blobs))
    q_ps, r_ps = primes(querier, sent[0]), primes(querier, reply[0])
    Q, Pr = math.prod(q_ps), math.prod(r_ps)
    dropped = Q // Pr  # the primes the rescale divided by (1: not rescaled)
    A = [_crt(to_coefficients(querier, residues(ct)[1], ct.parms_id()), q_ps) for ct in sent]
    delta_w = reply[0].scale * dropped / sent[0].scale
    weight = max(1, dropped // 2 // max(1, 2 ** math.ceil(math.log2(delta_w + 1))))
    M = max(1, dropped // 2)
    coef, ok = np.zeros((n_features, n_classes)), True
    for k, ct in enumerate(reply):
        y = _crt(to_coefficients(querier, residues(ct)[1], ct.parms_id()), r_ps)
        basis = [[weight if i == j else 0 for i in range(n_features)]
                 + [A[j][t] for t in range(m)] + [0] for j in range(n_features)]
        basis += [[0] * n_features + [Q if i == t else 0 for i in range(m)] + [0]
                  for t in range(m)]
        basis.append([0] * n_features + [-dropped * y[t] % Q for t in range(m)] + [M])
        w = None
        for row in lll(basis):
            if abs(row[-1]) == M and all(x % weight == 0 for x in row[:n_features]):
                w = [x // weight * (1 if row[-1] == M else -1) for x in row[:n_features]]
                break
        if w is None:
            ok = False
            continue
        worst = max(abs((sum(wj * a[t] for wj, a in zip(w, A, strict=True)) - dropped * y[t]
                         + Q // 2) % Q - Q // 2) for t in range(len(y)))
        ok = ok and worst <= dropped // 2 + 1
        coef[:, k] = np.array(w, dtype=np.float64) / delta_w
    return Recovered(coef, _intercept(querier, reply, sent, coef), 1, ok)


def noise_solve(querier: CkksKit, serve: Serve, n_features: int, n_classes: int) -> Recovered:
    """One request of the all-zero query; V from the noise of the reply's decryption.

    Each query ciphertext decrypts to its own noise e_j (the zero query encodes to the zero
    polynomial); the reply decrypts to Σ_j w_jk·e_j plus the c-term at coefficient 0 and whatever
    fresh noise re-randomisation adds: least squares over coefficients 1..N-1, mod the reply's
    first prime, centred. A flooded or rescaled reply leaves nothing of Σ w·e to fit."""
    Z = np.zeros((1, n_features))
    blobs = encrypt_queries(querier, Z, path="batched", n_classes=n_classes)
    sent = querier.load_many(blobs)
    reply = querier.load_many(serve(blobs))
    p = primes(querier, reply[0])[0]

    def noise(ct: seal.Ciphertext) -> np.ndarray:
        return centred(to_coefficients(querier, raw_decryption(querier, ct), ct.parms_id())[0], p)

    E = np.stack([noise(ct) for ct in sent], axis=1).astype(np.float64)[1:]  # (N-1, d)
    D = np.stack([noise(ct) for ct in reply], axis=1).astype(np.float64)[1:]  # (N-1, K)
    beta, *_ = np.linalg.lstsq(E, D, rcond=None)
    residual = np.sqrt(((E @ beta - D) ** 2).mean())
    ok = bool(residual < 1e-3 * max(np.sqrt((D**2).mean()), 1.0))
    coef = beta * (sent[0].scale / reply[0].scale)
    return Recovered(coef, _intercept(querier, reply, sent, coef), 1, ok)


def integer_coefficients(kit: CkksKit, ct: seal.Ciphertext) -> np.ndarray:
    """(N,) float64: a ciphertext's decryption as centred integers mod its whole modulus (CRT over
    its primes, exact in Python ints, then rounded to float: for values beyond one prime)."""
    ps = primes(kit, ct)
    modulus = math.prod(ps)
    x = _crt(to_coefficients(kit, raw_decryption(kit, ct), ct.parms_id()), ps)
    return np.array([float(v - modulus) if v > modulus // 2 else float(v) for v in x])


def inflated_noise_solve(querier: CkksKit, serve: Serve, n_features: int, n_classes: int, *,
                         noise_bits: int = 80, rng: np.random.Generator | None = None) -> Recovered:
    """A *malicious* querier (outside the semi-honest model): the noise solve with the all-zero
    query whose ciphertexts carry noise E_j of ~2^noise_bits that it adds itself.

    The provider floods with a bound computed from *honest* fresh noise (σ = 3.2): it cannot see a
    ciphertext's noise, and E_j of 2^80 decodes, at the input scale 2^86, to slot values of ~1: a
    request like any other. Σ_j w_jk·E_j then outgrows the flooding (and survives the
    rescale and re-randomisation), and least squares on the reply's decryption gives V."""
    rng = np.random.default_rng() if rng is None else rng
    Z = np.zeros((1, n_features))
    blobs = []
    for ct in querier.load_many(encrypt_queries(querier, Z, path="batched", n_classes=n_classes)):
        ps = primes(querier, ct)
        E = [int(x) << max(0, noise_bits - 62)
             for x in rng.integers(-2**61, 2**61, querier.params.poly_modulus_degree)]
        res = np.array([[e % p for e in E] for p in ps], dtype=np.uint64)
        plus, minus = coefficient_ciphertexts(querier, res, ct.parms_id(), ct.scale)
        querier.evaluator.add_inplace(ct, plus)
        querier.evaluator.sub_inplace(ct, minus)
        blobs.append(querier.dump(ct))
    sent = querier.load_many(blobs)
    reply = querier.load_many(serve(blobs))
    E = np.stack([integer_coefficients(querier, ct) for ct in sent], axis=1)[1:]
    D = np.stack([integer_coefficients(querier, ct) for ct in reply], axis=1)[1:]
    beta, *_ = np.linalg.lstsq(E, D, rcond=None)
    residual = np.sqrt(((E @ beta - D) ** 2).mean())
    ok = bool(residual < 1e-2 * max(np.sqrt((D**2).mean()), 1.0))
    coef = beta * (sent[0].scale / reply[0].scale)
    return Recovered(coef, _intercept(querier, reply, sent, coef), 1, ok)


# -- (ii) single path -------------------------------------------------------------------------------
def _fold_groups(slots: int, support: int, strides: list[int],
                 bias_class: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slots that hold the same linear function of the pre-fold vector (support ``support``) and
    the same bias: (0/1 matrix of one representative per group over the support, group of each
    slot, representative slot of each group). The fold's structure is public, so the querier
    computes it once and averages the slots of a group."""
    F = np.zeros((slots, support), dtype=np.int8)
    F[np.arange(support), np.arange(support)] = 1
    for stride in strides:
        F = F + np.roll(F, -stride, axis=0)
    keys = np.concatenate([F, bias_class[:, None].astype(np.int8)], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return F[first], inverse.ravel(), first


class SlotModel:
    """The single path's slots as linear functions of (V, c), for a known query z.

    Mirrors crypto.head: y'[j] = Σ_{t<K'} V[(j+t) mod P, j mod K']·z[(j+t) mod P] on period 0,
    folded over strides ``plan.fold_strides``, plus the bias (c in slots k < K, or in every slot
    ≡ k mod K' when the fold is complete). Unknowns: V row-major (d·K), then c (K)."""

    def __init__(self, plan: SinglePlan) -> None:
        if plan.n_chunks != 1:
            raise ValueError("the slot model covers one chunk (d <= slots)")
        self.plan = plan
        d, K, P, Kp, S = plan.n_features, plan.n_classes, plan.period, plan.k_pad, plan.slots
        s = np.arange(S)
        bias = np.where(s % Kp < K, s % Kp, -1) if plan.complete_fold else np.where(s < K, s, -1)
        self.fold, self.group, first = _fold_groups(S, P, plan.fold_strides, bias)
        self.bias = np.zeros((len(first), K))
        rep_bias = bias[first]
        self.bias[rep_bias >= 0, rep_bias[rep_bias >= 0]] = 1.0
        self.counts = np.bincount(self.group, minlength=len(first)).astype(np.float64)
        j = np.arange(P)
        self._pairs = []  # (slot j, feature i, class k) of every product in y'
        for t in range(Kp):
            i, k = (j + t) % P, j % Kp
            keep = (i < d) & (k < K)
            self._pairs.append((j[keep], i[keep], k[keep]))
        self.useful = (np.abs(self.fold).sum(1) + self.bias.sum(1)) > 0
        # The class each group's sum belongs to: y'[j] holds class j mod K' only, and the strides
        # are multiples of K', so every slot sums one class (-1: none); the fit then splits into K
        # independent ones of d + 1 unknowns.
        self.group_class = np.full(len(first), -1)
        self.separable = True
        for g in range(len(first)):
            classes = {int(c) for c in np.nonzero(self.fold[g])[0] % Kp if c < K}
            classes |= {int(c) for c in np.nonzero(self.bias[g])[0]}
            if len(classes) > 1:
                self.separable = False
            elif classes:
                self.group_class[g] = classes.pop()
        self._blocks: dict[bytes, list[np.ndarray]] = {}

    @property
    def n_unknowns(self) -> int:
        return self.plan.n_features * self.plan.n_classes + self.plan.n_classes

    def design(self, z: np.ndarray) -> np.ndarray:
        """(groups, d·K + K): each slot group's value as a linear function of the unknowns."""
        d, K, P = self.plan.n_features, self.plan.n_classes, self.plan.period
        pre = np.zeros((P, d * K))
        for j, i, k in self._pairs:
            pre[j, i * K + k] += z[i]
        return np.concatenate([self.fold @ pre, self.bias], axis=1)

    def observe(self, slots: np.ndarray) -> np.ndarray:
        """Mean decrypted value of each slot group."""
        return np.bincount(self.group, weights=slots, minlength=len(self.counts)) / self.counts

    def class_blocks(self, z: np.ndarray) -> list[np.ndarray]:
        """Per class k: the weighted design of its slot groups over (V[:, k], c_k), remembered per
        query (a growing attack re-fits on every query so far)."""
        key = np.asarray(z, np.float64).tobytes()
        if key not in self._blocks:
            d, K = self.plan.n_features, self.plan.n_classes
            A = self.design(z) * np.sqrt(self.counts)[:, None]
            self._blocks[key] = [A[self.group_class == k][:, [*range(k, d * K, K), d * K + k]]
                                 for k in range(K)]
        return self._blocks[key]

    def class_values(self, slots: np.ndarray) -> list[np.ndarray]:
        """Per class k: the weighted mean values of its slot groups (rows of class_blocks)."""
        y = self.observe(slots) * np.sqrt(self.counts)
        return [y[self.group_class == k] for k in range(self.plan.n_classes)]


def single_replies(querier: CkksKit, serve: Serve, Z: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, slots): every decrypted slot of the single-path replies to queries Z, one per request."""
    out = []
    for z in np.atleast_2d(Z):
        blobs = encrypt_queries(querier, z[None, :], path="single", n_classes=n_classes)
        (reply,) = serve(blobs)
        out.append(querier.decrypt(querier.load(reply)))
    return np.stack(out)


def slot_solve(plan: SinglePlan, Z: np.ndarray, slots: np.ndarray,
               model: SlotModel | None = None) -> Recovered:
    """Least squares for (V, c) over every slot of the replies to queries Z (weighted by how many
    slots repeat each value: the same fit as over all slots)."""
    model = SlotModel(plan) if model is None else model
    d, K = plan.n_features, plan.n_classes
    if not model.separable:
        keep, w = model.useful, np.sqrt(model.counts[model.useful])
        A = np.concatenate([model.design(z)[keep] * w[:, None] for z in Z])
        y = np.concatenate([model.observe(s)[keep] * w for s in slots])
        theta, _, rank, _ = np.linalg.lstsq(A, y, rcond=None)
        return Recovered(theta[: d * K].reshape(d, K), theta[d * K :], len(Z),
                         bool(rank == model.n_unknowns))
    blocks = [model.class_blocks(z) for z in Z]
    values = [model.class_values(s) for s in slots]
    coef, intercept, ok = np.zeros((d, K)), np.zeros(K), True
    for k in range(K):  # one independent fit per class: its column of V and its c
        theta, _, rank, _ = np.linalg.lstsq(np.concatenate([b[k] for b in blocks]),
                                            np.concatenate([v[k] for v in values]), rcond=None)
        coef[:, k], intercept[k], ok = theta[:d], theta[d], ok and bool(rank == d + 1)
    return Recovered(coef, intercept, len(Z), ok)


# -- (iii) fitting ----------------------------------------------------------------------------------
class CrossProductModel:
    """The slots of Enc(X̃)ᵀY as linear functions of Y, for the querier's own X̃.

    Mirrors crypto.fitting: y'[s] = Σ_{t<r} x[s+t]·diag_t[s mod T] with diag_t[j] = Y[text at slot
    j+t, offset + j mod r] inside each block, summed over text chunks, folded over strides T/2 … r
    (across the whole ciphertext). Unknowns per part: its r columns of Y, row-major (text, column).
    """

    def __init__(self, packing: CrossProductPacking) -> None:
        self.packing = packing
        S, T = packing.slots, packing.block
        self.groups = []  # per part: (fold of one slot per group, group of each slot, counts)
        for r in packing.parts:
            strides = [T >> k for k in range(1, int(np.log2(T // r)) + 1)]
            fold, group, first = _fold_groups(S, S, strides, np.zeros(S, dtype=int))
            self.groups.append((strides, fold, group, first,
                                np.bincount(group, minlength=len(first)).astype(np.float64)))

    def unfolded(self, X: np.ndarray, group: int, part: int) -> np.ndarray:
        """(slots, n·r): y' of reply (feature group, part) before the fold."""
        packing = self.packing
        T, F, R, S = packing.block, packing.features_per_ct, packing.part_cap, packing.slots
        r = packing.parts[part]
        out = np.zeros((S, packing.n * r))
        j = np.arange(T)
        for tc in range(packing.n_text_chunks):
            lo = tc * packing.texts_per_block
            count = min(packing.texts_per_block, packing.n - lo)
            for t in range(r):
                x = j + t
                keep = (x < T) & (x >= R) & (x < R + count)
                jj, texts = j[keep], lo + x[keep] - R
                for m in range(F):
                    feature = group * F + m
                    if feature >= packing.d_in:
                        break
                    out[m * T + jj, texts * r + jj % r] += X[texts, feature]
        return out

    def design(self, X: np.ndarray, group: int, part: int) -> np.ndarray:
        """(slot groups, n·r): one row per set of slots that hold the same sum."""
        strides, fold, _, first, _ = self.groups[part]
        pre = self.unfolded(X, group, part)
        if len(first) <= 256:  # few distinct slots (one block): their sums directly
            return fold @ pre
        for stride in strides:  # many: fold the whole design, keep one slot per group
            pre = pre + np.roll(pre, -stride, axis=0)
        return pre[first]

    def observe(self, slots: np.ndarray, part: int) -> np.ndarray:
        """Mean decrypted value of each slot group (averages the reply's flooding)."""
        _, _, group, _, counts = self.groups[part]
        return np.bincount(group, weights=slots, minlength=len(counts)) / counts


def cross_product_solve(querier: CkksKit, packing: CrossProductPacking, X: np.ndarray,
                        replies: list[bytes], model: CrossProductModel | None = None) -> Recovered:
    """Y (n × d_out) by least squares over every slot of Enc(X̃)ᵀY, part by part.

    With one block per ciphertext the slots hold X̃ᵀY only (d_in equations per column of Y): the
    minimum-norm solution is then all there is, as from the result itself."""
    model = CrossProductModel(packing) if model is None else model
    parts = packing.parts
    decrypted = [querier.decrypt(ct) for ct in querier.load_many(replies)]
    Y = np.zeros((packing.n, packing.d_out))
    ok, offset = True, 0
    for p, r in enumerate(parts):
        counts = model.groups[p][4]
        rows, values = [], []
        for g in range(packing.n_feature_groups):
            A = model.design(X, g, p)
            keep = np.abs(A).sum(1) > 0  # slots that hold nothing of Y
            w = np.sqrt(counts[keep])
            rows.append(A[keep] * w[:, None])
            values.append(model.observe(decrypted[g * len(parts) + p], p)[keep] * w)
        theta, _, rank, _ = np.linalg.lstsq(np.concatenate(rows), np.concatenate(values), rcond=None)
        ok = ok and bool(rank == packing.n * r)
        Y[:, offset : offset + r] = theta.reshape(packing.n, r)
        offset += r
    return Recovered(Y, None, packing.n, ok)


# -- (iv) baseline ----------------------------------------------------------------------------------
def logits_baseline(Z: np.ndarray, logits: np.ndarray) -> Recovered:
    """(V, c) by least squares on decrypted logits alone (minimum norm below d+1 queries)."""
    Z = np.atleast_2d(Z)
    A = np.concatenate([Z, np.ones((len(Z), 1))], axis=1)
    theta, *_ = np.linalg.lstsq(A, logits, rcond=None)
    return Recovered(theta[:-1], theta[-1], len(Z), bool(len(Z) >= Z.shape[1] + 1))


# -- the provider, as the attacks see it ------------------------------------------------------------
def batched_server(head: EncryptedLinearHead, kit: CkksKit, privacy: CircuitPrivacy, *,
                   n: int = 1, noise_std: float = 0.0,
                   rng: np.random.Generator | None = None) -> Serve:
    """The provider's batched path for requests of ``n`` queries."""
    return lambda blobs: head.evaluate(kit, blobs, path="batched", n=n, noise_std=noise_std,
                                       rng=rng, privacy=privacy)


def single_server(head: EncryptedLinearHead, kit: CkksKit, privacy: CircuitPrivacy, *,
                  complete_fold: bool = True, noise_std: float = 0.0,
                  rng: np.random.Generator | None = None) -> Serve:
    """The provider's single path for one query per request, with the chosen fold."""
    def serve(blobs: list[bytes]) -> list[bytes]:
        ct = head.evaluate_single(kit, kit.load_many(blobs), noise_std=noise_std, rng=rng,
                                  privacy=privacy, complete_fold=complete_fold)
        return [kit.dump(ct)]
    return serve


# -- a provider's attack on the querier's uploads ---------------------------------------------------
def reused_randomness(querier: CkksKit, seed: int = 1) -> CkksKit:
    """The querier's kit with every encryption drawing the same randomness (one fixed PRNG seed):
    what the protocol must never do, to show what fresh randomness protects."""
    kit = CkksKit.from_secret(querier.params, querier.secret_key_bytes())
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(querier.params.poly_modulus_degree)
    parms.set_coeff_modulus(kit.context.key_context_data().parms().coeff_modulus())
    parms.set_random_generator(seal.Blake2xbPRNGFactory([seed] * 8))
    security = (seal.SEC_LEVEL_TYPE.NONE if querier.params.allow_insecure
                else seal.SEC_LEVEL_TYPE.TC128)
    kit._encryptor = seal.Encryptor(seal.SEALContext(parms, True, security), kit._secret_key)
    return kit


@dataclass
class UploadDifferences:
    """What the upload difference attack got: ``slots[i]`` decodes ``ct[i+1] - ct[0]``;
    ``same_randomness`` is the attacker's own check (their ``c1`` halves are equal)."""

    slots: np.ndarray
    same_randomness: bool


def upload_difference_solve(provider: CkksKit, blobs: list[bytes]) -> UploadDifferences:
    """A provider's (or colluding providers') attack on ciphertexts it received from the querier:
    subtract the first from each of the others, then decode ``(c0 - c0', 0)``, which decrypts to
    ``c0 - c0'`` under *any* key, here one of the attacker's own. Where both encryptions drew the
    same randomness, that is Δ·(m - m') exactly."""
    cts = provider.load_many(blobs)
    first = residues(cts[0])
    own = CkksKit.generate(provider.params)  # (d, 0) decrypts to d whatever the secret key
    slots, same = [], True
    for ct in cts[1:]:
        data = residues(ct)
        same = same and bool(np.array_equal(data[1], first[1]))
        ps = np.array(primes(provider, ct), dtype=np.uint64)[:, None]
        a, b = data[0], first[0]
        diff = np.zeros_like(data)
        diff[0] = np.where(a >= b, a - b, a + ps - b)
        slots.append(own.decrypt(assemble_ciphertext(own.context, diff, ct.parms_id(), ct.scale,
                                                     ntt_form=True)))
    return UploadDifferences(np.array(slots), same)

"""A provider's linear head on encrypted inputs: Enc(z) ↦ Enc(z V + c), plaintext weights only.

Two packings; the coordinator picks one per request (``crypto.cost``: time and bytes of each):

- ``batched`` (feature-major SIMD): ciphertext j holds feature j of up to N/2 queries; logit k is
  Σ_j V[j,k]·ct_j + c[k]: scalar multiplies and additions only, no rotation, so the querier's
  public context carries **no Galois keys**. The provider returns K ciphertexts per batch.
- ``single`` (one query per ciphertext): the hybrid diagonal method of Halevi–Shoup with
  baby-step/giant-step. The query, zero-padded to a power-of-two period P, fills the slots; with
  K' = next power of two ≥ K, ``y'[j] = Σ_{t<K'} diag_t[j]·z[j+t]`` where
  ``diag_t[j] = V[(j+t) mod P, j mod K']`` on period 0 (zero elsewhere), then folding ``y'`` over
  strides S/2 … K' (S the slot count) leaves logit k in every slot ≡ k mod K'. The fold is
  *complete*: stopping at stride P/2 would also give logit k in slot k, but leave partial sums of
  the head's products in the other slots, from which a querier solves for V in a few queries.
  Rotations: (K'/g - 1) giant + log2(S/K') fold, ~10 for d=384, K=5, against ~d for TenSEAL's
  ``matmul``. Galois keys are generated for exactly those steps.

Every reply is protected before it leaves (``crypto.privacy``: re-randomised, flooded, rescaled);
the plaintext scale is chosen so that the logits and the flooding fit the chain, checked before
anything is computed.

``workers`` > 1 spreads a request over that many processes (``crypto.processes``: this one and
persistent helpers; SEAL holds the GIL, so threads would not help). The querier splits its
encryption by feature (batched) or by query (single). The provider splits the single path by
query, each process protecting its own replies; the batched path by feature: each process sums
its features' products for every class and adds the random part of the protection (a fresh
encryption of zero and the flooding, ``CircuitPrivacy.mask``) to the replies dealt to it, one
process per reply; this process adds the partial sums (exact modular additions), the bias, and
rescales. Additions commute, so every reply is exactly what one process would send: the same
ciphertext when unprotected, the same distribution when protected. The layout and order of what
comes back are those of one process.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tenseal.sealapi as seal

from crypto.kit import CkksKit, Placement, common_placement, placement
from crypto.privacy import (
    ROUNDING_VARIANCE,
    CircuitPrivacy,
    NoiseBound,
    key_switch_variance,
    plain_norm_sq,
)
from crypto.processes import Shared, pool, shares

PATHS = ("batched", "single")


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


# What one more query ciphertext costs, in rotations: SinglePlan weighs it to pick ``copies`` (the
# querier's rotated copies of a query against the provider's giant-step rotations). It is a
# constant of the protocol, not a measurement of this machine, and so not read from the calibrated
# cost model (conf/cost_model.json, crypto/cost.py): the querier and the provider each compute the
# plan from (d, K, N), on their own machines, and must reach the same layout (the ciphertexts a
# request holds, the Galois keys its context carries). Its value: encode + encrypt 1.5 ms against a
# rotation's 1.25 ms (N=8192, the query level, timed here with CkksKit). The calibration's
# encrypt / rotate (serialisation included) is 1.76 at N=8192 and 1.34 at N=16384, and picks the
# same ``copies`` for every shape the product serves (tests/test_crypto.py holds them together);
# a ratio past ~2 would change the layout of K=3..50 heads.
ENCRYPTION_COST = 1.2


class SinglePlan:
    """Slot layout and rotation steps of the single-query path for d inputs, K classes, S slots.

    Baby steps are done by the querier, which encrypts ``copies`` rotated copies of its query:
    a rotation of a fresh ciphertext would add key-switching noise (~2^15) at the small input
    scale, while the provider's rotations all act on products, at a scale where it vanishes.
    ``copies`` trades query ciphertexts for provider rotations (``ENCRYPTION_COST``).
    """

    def __init__(self, n_features: int, n_classes: int, slots: int, *,
                 complete_fold: bool = True) -> None:
        if min(n_features, n_classes) < 1:
            raise ValueError(f"need >= 1 feature and class, got {n_features}, {n_classes}")
        self.n_features, self.n_classes, self.slots = n_features, n_classes, slots
        # complete_fold=False stops at the period (the layout that leaks partial sums): attacks only
        self.complete_fold = complete_fold
        self.k_pad = _pow2(n_classes)
        if self.k_pad > slots:
            raise ValueError(f"{n_classes} classes do not fit {slots} slots")
        self.period = min(max(_pow2(n_features), self.k_pad), slots)  # P
        self.n_chunks = math.ceil(n_features / self.period)  # d > slots: one ciphertext per chunk
        options = [1 << i for i in range(int(math.log2(self.k_pad)) + 1)]
        self.copies = min(options, key=lambda g: self.n_chunks * g * ENCRYPTION_COST + self.k_pad // g)
        self.giant = self.k_pad // self.copies

    @property
    def ciphertexts_per_query(self) -> int:
        return self.n_chunks * self.copies

    @property
    def fold_span(self) -> int:
        """Slots the fold sums over: all of them (complete), or one period."""
        return self.slots if self.complete_fold else self.period

    @property
    def fold_strides(self) -> list[int]:
        return [self.fold_span >> s for s in range(1, int(math.log2(self.fold_span // self.k_pad)) + 1)]

    @property
    def rotation_steps(self) -> list[int]:
        giant = (q * self.copies for q in range(1, self.giant))
        return sorted({*giant, *self.fold_strides})

    @property
    def n_rotations(self) -> int:
        """Rotations per query (the path's cost driver)."""
        return self.giant - 1 + len(self.fold_strides)

    def tile(self, z: np.ndarray) -> list[np.ndarray]:
        """The querier's slot vectors for one query: per chunk and copy β, the chunk zero-padded to
        P, rotated left by β, tiled over the slots."""
        padded = np.zeros(self.n_chunks * self.period)
        padded[: self.n_features] = z
        return [np.tile(np.roll(chunk, -b), self.slots // self.period)
                for chunk in padded.reshape(self.n_chunks, self.period)
                for b in range(self.copies)]

    def diagonals(self, coef: np.ndarray) -> np.ndarray:
        """(chunks, giant, copies, slots): the plaintexts rot(diag_{q·g+β}, -q·g).

        Each diagonal covers the first period only, zero elsewhere: the query is tiled over every
        period, but only period 0 is computed, so a querier that packs other queries in the other
        periods learns nothing more from them — one query per ciphertext, as the query budget
        counts (``query_capacity``)."""
        P, K, g = self.period, self.k_pad, self.copies
        V = np.zeros((self.n_chunks * P, K))
        V[: self.n_features, : self.n_classes] = coef
        j = np.arange(P)
        out = np.empty((self.n_chunks, self.giant, g, self.slots))
        for c in range(self.n_chunks):
            block = V[c * P : (c + 1) * P]
            for q in range(self.giant):
                for b in range(g):
                    diag = block[(j + q * g + b) % P, j % K]
                    out[c, q, b] = np.roll(np.pad(diag, (0, self.slots - P)), q * g)
        return out


def query_capacity(path: str, n: int, slots: int) -> int:
    """Queries a request of ``n`` queries can carry, whatever the querier claims: what a query
    budget must count. Batched: every slot of each group's feature ciphertexts can hold a query,
    so a request costs whole groups of ``slots``. Single: one query per ciphertext set (the
    diagonals cover one period, see :meth:`SinglePlan.diagonals`)."""
    if n < 1:
        raise ValueError(f"a request needs at least one query, got n={n}")
    if path == "batched":
        return math.ceil(n / slots) * slots
    if path == "single":
        return n
    raise ValueError(f"unknown path {path!r}; expected one of {PATHS}")


def _noise(rng: np.random.Generator | None, std: float, size: int) -> np.ndarray:
    """Gaussian noise of standard deviation ``std``, clipped at NOISE_CLIP·std (bounded, so it
    fits the scale chosen for the logits)."""
    if std <= 0:
        return np.zeros(size)
    rng = np.random.default_rng() if rng is None else rng
    return np.clip(rng.normal(0.0, std, size), -NOISE_CLIP * std, NOISE_CLIP * std)


# Noise is clipped at this many standard deviations; the logit bound grows by as much.
NOISE_CLIP = 6.0


def encrypt_queries(kit: CkksKit, Z: np.ndarray, *, path: str, n_classes: int,
                    workers: int = 1) -> list[bytes]:
    """Querier side: encrypt aligned vectors Z (n × d) in the path's packing, over ``workers``
    processes (the batched path split by feature, the single path by query)."""
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.size == 0:
        raise ValueError(f"expected a non-empty (n, d) array, got shape {Z.shape}")
    if not np.isfinite(Z).all():
        raise ValueError("aligned vectors hold NaN or inf")
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; expected one of {PATHS}")
    parts = shares(Z.shape[1] if path == "batched" else len(Z), workers)
    cut = (lambda a, b: Z[:, a:b]) if path == "batched" else (lambda a, b: Z[a:b])
    jobs = [{"Z": cut(a, b), "path": path, "n_classes": n_classes} for a, b in parts[:-1]]
    theirs, mine = pool().run("encrypt", jobs, {"kit": kit.shared},
                              lambda: encrypt_share(kit, cut(*parts[-1]), path, n_classes))
    if path == "single":
        return [blob for part in [*theirs, mine] for blob in part]
    per_share = [*theirs, mine]  # [share][group] -> that share's features of the group
    return [blob for g in range(len(mine)) for part in per_share for blob in part[g]]


def prepare_workers(kit: CkksKit, workers: int, *,
                    head: EncryptedLinearHead | None = None) -> None:
    """Start the helpers that requests with ``workers`` will use and build ``kit`` (and ``head``)
    in each, once per silo process (~1 s): the first request is then as fast as the next. A
    querier calls it with its kit, a provider when a querier's serving context arrives."""
    shared = {"kit": kit.shared} | ({} if head is None else {"head": head.shared})
    pool().warm(workers - 1, shared)


def encrypt_share(kit: CkksKit, Z: np.ndarray, path: str, n_classes: int) -> list:
    """One process's share of :func:`encrypt_queries`: single-path blobs in query order, or
    batched blobs per group of ``slots`` queries (features of Z's columns, in order)."""
    if path == "batched":
        return [[kit.encrypt(Z[g : g + kit.slots, j]) for j in range(Z.shape[1])]
                for g in range(0, len(Z), kit.slots)]
    plan = SinglePlan(Z.shape[1], n_classes, kit.slots)
    return [kit.encrypt(v) for z in Z for v in plan.tile(z)]


def decrypt_logits(kit: CkksKit, blobs: list[bytes], *, path: str, n: int,
                   n_classes: int) -> np.ndarray:
    """Querier side: decrypt the provider's reply into an (n, K) float64 array of logits."""
    vectors = kit.load_many(blobs)
    if path == "batched":
        groups = math.ceil(n / kit.slots)
        if len(vectors) != groups * n_classes:
            raise ValueError(f"expected {groups * n_classes} logit ciphertexts, got {len(vectors)}")
        columns = [kit.decrypt(v) for v in vectors]
        return np.concatenate([np.stack(columns[g * n_classes : (g + 1) * n_classes], axis=1)
                               for g in range(groups)])[:n]
    if path == "single":
        if len(vectors) != n:
            raise ValueError(f"expected {n} logit ciphertexts, got {len(vectors)}")
        return np.stack([kit.decrypt(v)[:n_classes] for v in vectors])
    raise ValueError(f"unknown path {path!r}; expected one of {PATHS}")


class EncryptedLinearHead:
    """Evaluate ``z V + c`` on ciphertexts; V (d × K) and c (K) stay in the provider's plaintext."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        if self.coef.ndim != 2 or self.intercept.shape != (self.coef.shape[1],):
            raise ValueError(
                f"coef must be (d, K) and intercept (K,), got {self.coef.shape}, "
                f"{self.intercept.shape}"
            )
        if not (np.isfinite(self.coef).all() and np.isfinite(self.intercept).all()):
            raise ValueError("the head holds NaN or inf")
        self._diagonals: dict[tuple, list] = {}

    @functools.cached_property
    def shared(self) -> Shared:
        """This head as a helper process keeps it (its encoded diagonals with it)."""
        coef, intercept = self.coef, self.intercept
        digest = Shared.digest_of(b"head", str(coef.shape).encode(), coef.tobytes(),
                                  intercept.tobytes())
        return Shared("head", digest, lambda: {"coef": coef, "intercept": intercept})

    @property
    def n_features(self) -> int:
        return self.coef.shape[0]

    @property
    def n_classes(self) -> int:
        return self.coef.shape[1]

    def plan(self, slots: int) -> SinglePlan:
        return SinglePlan(self.n_features, self.n_classes, slots)

    def logit_bound(self, kit: CkksKit, noise_std: float = 0.0) -> float:
        """Largest |logit| for queries with |z| <= max_abs_input, plus the clipped noise."""
        return float((np.abs(self.coef).sum(axis=0) * kit.params.max_abs_input
                      + np.abs(self.intercept)).max() + NOISE_CLIP * noise_std)

    def _weight_scale(self, kit: CkksKit, like: seal.Ciphertext, noise_std: float,
                      privacy: CircuitPrivacy, noise_at) -> float:
        """Largest plaintext scale whose logits and flooding fit ``like``'s primes."""
        return kit.params.weight_scale_for(
            self.logit_bound(kit, noise_std), kit.scale_bits(like), kit.level_bits(like),
            flood_bits_at=lambda scale: privacy.flood_bits(noise_at(scale)))

    def expected_ciphertexts(self, path: str, n: int, slots: int) -> int:
        """How many query ciphertexts a request of ``n`` queries must hold."""
        query_capacity(path, n, slots)  # checks n and path
        if path == "batched":
            return math.ceil(n / slots) * self.n_features
        return n * self.plan(slots).ciphertexts_per_query

    def check_request(self, path: str, n: int, slots: int, count: int) -> None:
        """Refuse a request of ``count`` query ciphertexts that is not what ``n`` queries on
        ``path`` must hold: checked before any is deserialised (or a query budget charged)."""
        expected = self.expected_ciphertexts(path, n, slots)
        if count != expected:
            raise ValueError(f"expected {expected} query ciphertexts for {n} queries on the {path} "
                             f"path (d={self.n_features}), got {count}")

    def evaluate(self, kit: CkksKit, blobs: list[bytes], *, path: str, n: int,
                 noise_std: float = 0.0, rng: np.random.Generator | None = None,
                 privacy: CircuitPrivacy | None = None, workers: int = 1) -> list[bytes]:
        """Ciphertext bytes in, protected logit ciphertext bytes out (the provider's whole job).

        The ciphertext count is checked before any is deserialised. ``noise_std`` > 0 adds
        Gaussian noise (clipped at NOISE_CLIP·std) to every slot of every logit ciphertext: a
        plaintext add the provider enforces, which makes each logit it releases noisy.
        ``privacy`` protects each reply; by default 40-bit flooding and re-randomisation.
        ``workers`` > 1 spreads the work over that many processes (see the module's docstring);
        a helper's ``rng`` is seeded from ``rng`` (fresh OS entropy when it is None).
        """
        privacy = CircuitPrivacy(kit) if privacy is None else privacy
        self.check_request(path, n, kit.slots, len(blobs))
        if not (np.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be finite and >= 0, got {noise_std}")
        if path == "batched":
            return self._evaluate_batched_blobs(kit, blobs, n, noise_std=noise_std, rng=rng,
                                                privacy=privacy, workers=workers)
        per = self.plan(kit.slots).ciphertexts_per_query
        parts = shares(n, workers)
        jobs = [{"blobs": blobs[a * per : b * per], "first": a, "noise_std": noise_std,
                 "seed": None if rng is None else int(rng.integers(2**63)),
                 "privacy": privacy.settings} for a, b in parts[:-1]]
        a, b = parts[-1]
        theirs, mine = pool().run(
            "evaluate_single", jobs, {"kit": kit.shared, "head": self.shared},
            lambda: self._evaluate_single_blobs(kit, blobs[a * per : b * per], a, noise_std=noise_std,
                                                rng=rng, privacy=privacy))
        return [blob for part in [*theirs, mine] for blob in part]

    def _evaluate_single_blobs(self, kit: CkksKit, blobs: list[bytes], first: int, *,
                               noise_std: float, rng: np.random.Generator | None,
                               privacy: CircuitPrivacy) -> list[bytes]:
        """Replies to consecutive single-path queries, the first of them query ``first``."""
        per = self.plan(kit.slots).ciphertexts_per_query
        cts = [kit.load(blob, f"ciphertext {first * per + i}") for i, blob in enumerate(blobs)]
        return [kit.dump(self.evaluate_single(kit, cts[i * per : (i + 1) * per],
                                              noise_std=noise_std, rng=rng, privacy=privacy))
                for i in range(len(cts) // per)]

    def _evaluate_batched_blobs(self, kit: CkksKit, blobs: list[bytes], n: int, *,
                                noise_std: float, rng: np.random.Generator | None,
                                privacy: CircuitPrivacy, workers: int) -> list[bytes]:
        """The batched path on ciphertext bytes, its features spread over ``workers`` processes."""
        d, groups = self.n_features, math.ceil(n / kit.slots)
        first = kit.load(blobs[0], "ciphertext 0")
        scale, noises = self._batched_scale(kit, first, noise_std, privacy)
        like = placement(first)
        parts = shares(d, workers)

        def pick(a: int, b: int) -> list[bytes]:
            return [blobs[g * d + j] for g in range(groups) for j in range(a, b)]

        # The random half of each reply's protection (CircuitPrivacy.mask) is added by one process
        # to its partial sum, the replies dealt round-robin: this one only adds up and rescales.
        units = [(g, k) for g in range(groups) for k in range(self.n_classes)]
        masks = [units[i :: len(parts)] for i in range(len(parts))]
        stds = [b.std for b in noises]
        jobs = [{"blobs": pick(a, b), "columns": (a, b), "groups": groups, "scale": scale,
                 "like": like, "masks": mask, "noises": stds, "privacy": privacy.settings}
                for (a, b), mask in zip(parts[:-1], masks, strict=False)]

        def local() -> list[list[seal.Ciphertext | None]]:
            sums = self._batched_sums(kit, pick(*parts[-1]), parts[-1], groups, scale, like)
            return _masked(sums, masks[-1], noises, privacy, like)

        theirs, mine = pool().run("batched_sums", jobs, {"kit": kit.shared, "head": self.shared},
                                  local)
        partials = [[[None if blob is None else kit.load(blob, "a helper's partial sum")
                      for blob in row] for row in part] for part in theirs] + [mine]
        sums = [[functools.reduce(_add_partial(kit), (part[g][k] for part in partials), None)
                 for k in range(self.n_classes)] for g in range(groups)]
        return [kit.dump(ct) for ct in self._batched_finish(
            kit, sums, noise_std=noise_std, rng=rng, privacy=privacy, noises=noises, masked=True)]

    def batched_noise(self, scale: float) -> list[NoiseBound]:
        """Noise of each class's batched reply at weight scale ``scale``: logit k is
        Σ_j encode(V[j,k])·ct_j + bias, independent fresh noises times constant weights."""
        weights_sq = ((np.abs(self.coef) * scale + 0.5) ** 2).sum(axis=0)
        return [NoiseBound.fresh().times(w).rotated(ROUNDING_VARIANCE) for w in weights_sq]

    def single_noise(self, kit: CkksKit, like: seal.Ciphertext, scale: float, *,
                     complete_fold: bool = True) -> NoiseBound:
        """Noise of a single-path reply at weight scale ``scale``."""
        plan = SinglePlan(self.n_features, self.n_classes, kit.slots, complete_fold=complete_fold)
        return self._single_noise(kit, plan, like)(scale)

    def evaluate_batched(self, kit: CkksKit, features: list[seal.Ciphertext], n: int, *,
                         noise_std: float = 0.0, rng: np.random.Generator | None = None,
                         privacy: CircuitPrivacy | None = None) -> list[seal.Ciphertext]:
        """K logit ciphertexts per group of N/2 queries, from d feature-major ciphertexts per group."""
        privacy = CircuitPrivacy(kit) if privacy is None else privacy
        groups = math.ceil(n / kit.slots)
        if n < 1 or len(features) != groups * self.n_features:
            raise ValueError(f"expected {groups * self.n_features} feature ciphertexts for {n} "
                             f"queries, got {len(features)}")
        scale, noises = self._batched_scale(kit, features[0], noise_std, privacy)
        like = placement(features[0])
        sums = self._batched_sums(kit, features, (0, self.n_features), groups, scale, like)
        return self._batched_finish(kit, sums, noise_std=noise_std, rng=rng, privacy=privacy,
                                    noises=noises, masked=False)

    def _batched_scale(self, kit: CkksKit, like: seal.Ciphertext, noise_std: float,
                       privacy: CircuitPrivacy) -> tuple[float, list[NoiseBound]]:
        """The batched path's weight scale and each class's reply noise at it."""
        noise_at = self.batched_noise
        scale = self._weight_scale(kit, like, noise_std, privacy,
                                   lambda sc: max(noise_at(sc), key=lambda b: b.std))
        return scale, noise_at(scale)

    def _batched_sums(self, kit: CkksKit, features: list, columns: tuple[int, int], groups: int,
                      scale: float, like: Placement) -> list[list[seal.Ciphertext | None]]:
        """Σ_j V[j,k]·ct_j over the features ``columns`` = [a, b), per group and class (None where
        every weight of the share rounds to zero). ``features`` are ciphertexts or their bytes,
        group-major, and must all sit at ``like`` = (level, scale)."""
        a, b = columns
        width = b - a
        if len(features) != groups * width:
            raise ValueError(f"expected {groups * width} feature ciphertexts, got {len(features)}")
        cts = [kit.load(ct, f"ciphertext {(i // width) * self.n_features + a + i % width}")
               if isinstance(ct, bytes | bytearray) else ct for i, ct in enumerate(features)]
        common_placement(cts, "the query ciphertexts", like)
        sums = []
        for g in range(groups):
            row = []
            for k in range(self.n_classes):
                acc = None
                for j, ct in enumerate(cts[g * width : (g + 1) * width], start=a):
                    # A scalar encodes in microseconds; encoding each weight when it is used keeps
                    # memory flat (d × K encoded plaintexts would take N·8 bytes each).
                    weight = kit.encode(float(self.coef[j, k]), scale, like=ct)
                    acc = kit.multiply_add(acc, ct, weight)
                row.append(acc)
            sums.append(row)
        return sums

    def _batched_finish(self, kit: CkksKit, sums: list[list[seal.Ciphertext | None]], *,
                        noise_std: float, rng: np.random.Generator | None,
                        privacy: CircuitPrivacy, noises: list[NoiseBound],
                        masked: bool) -> list[seal.Ciphertext]:
        """Bias (and the provider's logit noise) added to each class's sum, then protected (only
        rescaled when ``masked``: each sum already holds its mask, see ``_masked``)."""
        logits = []
        for row in sums:
            for k, acc in enumerate(row):
                if acc is None:
                    raise ValueError(f"the head's column {k} rounds to zero at this scale")
                bias = float(self.intercept[k])
                if noise_std > 0:
                    bias = bias + _noise(rng, noise_std, kit.slots)
                kit.evaluator.add_plain_inplace(acc, kit.encode(bias, acc.scale, like=acc))
                logits.append(privacy.finish(acc) if masked else privacy.protect(acc, noises[k]))
        return logits

    def _encoded_diagonals(self, kit: CkksKit, plan: SinglePlan, scale: float,
                           like: seal.Ciphertext) -> list:
        key = (kit.params, scale, tuple(like.parms_id()), plan.complete_fold)
        if key not in self._diagonals:  # encoded once per head and parameter set, reused per query
            diags = plan.diagonals(self.coef)
            self._diagonals[key] = [[[kit.encode(diags[c, q, b], scale, like=like)
                                      for b in range(plan.copies)] for q in range(plan.giant)]
                                    for c in range(plan.n_chunks)]
        return self._diagonals[key]

    def _single_noise(self, kit: CkksKit, plan: SinglePlan, like: seal.Ciphertext):
        """Noise of a single-path reply as a function of the weight scale (see crypto.privacy)."""
        key = ("norms", plan.slots, plan.complete_fold)
        if key not in self._diagonals:
            self._diagonals[key] = (plan.diagonals(self.coef) ** 2).sum(axis=-1)
        norms = self._diagonals[key]  # squared slot norms, (chunks, giant, copies)
        ks = key_switch_variance(kit.prime_bits(like), kit.params.coeff_mod_bit_sizes[-1],
                                 kit.params.poly_modulus_degree)
        n = kit.params.poly_modulus_degree

        def noise_at(scale: float) -> NoiseBound:
            giants = []
            for q in range(plan.giant):  # independent query ciphertexts (chunk × copy) per giant
                inner = NoiseBound.independent(
                    [NoiseBound.fresh().times(plain_norm_sq(float(v), scale, n))
                     for v in norms[:, q].ravel()])
                giants.append(inner.rotated(ks) if q else inner)
            total = NoiseBound.correlated(giants)  # the same query ciphertexts in every giant step
            return total.folded(len(plan.fold_strides), ks).rotated(ROUNDING_VARIANCE)

        return noise_at

    def evaluate_single(self, kit: CkksKit, query: list[seal.Ciphertext], *,
                        noise_std: float = 0.0, rng: np.random.Generator | None = None,
                        privacy: CircuitPrivacy | None = None,
                        complete_fold: bool = True) -> seal.Ciphertext:
        """One logit ciphertext (slot k = logit k) from one query's ciphertexts (chunk × copy)."""
        privacy = CircuitPrivacy(kit) if privacy is None else privacy
        plan = SinglePlan(self.n_features, self.n_classes, kit.slots, complete_fold=complete_fold)
        if len(query) != plan.ciphertexts_per_query:
            raise ValueError(f"expected {plan.ciphertexts_per_query} ciphertexts per query, "
                             f"got {len(query)}")
        common_placement(query, "the query ciphertexts")
        noise_at = self._single_noise(kit, plan, query[0])
        scale = self._weight_scale(kit, query[0], noise_std, privacy, noise_at)
        diags = self._encoded_diagonals(kit, plan, scale, query[0])
        total = None
        for q in range(plan.giant):
            inner = None
            for c in range(plan.n_chunks):
                for b in range(plan.copies):
                    inner = kit.multiply_add(inner, query[c * plan.copies + b], diags[c][q][b])
            if inner is not None:
                total = kit.add_into(total, kit.rotate(inner, q * plan.copies))
        if total is None:
            raise ValueError("the head's weights round to zero at this scale")
        for stride in plan.fold_strides:
            total = kit.add_into(total, kit.rotate(total, stride))
        bias = _noise(rng, noise_std, kit.slots)
        bias[: self.n_classes] += self.intercept
        if plan.complete_fold:  # every slot k mod K' holds logit k: so does its bias
            bias = np.tile(bias[: plan.k_pad], kit.slots // plan.k_pad)
        kit.evaluator.add_plain_inplace(total, kit.encode(bias, total.scale, like=total))
        return privacy.protect(total, noise_at(scale))


def _masked(sums: list[list[seal.Ciphertext | None]], units: list[tuple[int, int]],
            noises: list[NoiseBound], privacy: CircuitPrivacy,
            like: Placement) -> list[list[seal.Ciphertext | None]]:
    """``sums`` with the mask of each reply (group, class) in ``units`` added (in place)."""
    for g, k in units:
        sums[g][k] = privacy.mask(sums[g][k], noises[k], like=like)
    return sums


def _add_partial(kit: CkksKit):
    def add(acc: seal.Ciphertext | None, term: seal.Ciphertext | None) -> seal.Ciphertext | None:
        return acc if term is None else kit.add_into(acc, term)
    return add


# -- helper processes' shares (crypto.worker runs them) ------------------------------------------
def evaluate_single_share(kit: CkksKit, head: EncryptedLinearHead, blobs: list[bytes], first: int,
                          noise_std: float, seed: int | None, privacy: dict) -> list[bytes]:
    """A helper's consecutive single-path queries, protected here (flooding from this process's
    ``os.urandom``)."""
    rng = None if seed is None else np.random.default_rng(seed)
    return head._evaluate_single_blobs(kit, blobs, first, noise_std=noise_std, rng=rng,
                                       privacy=CircuitPrivacy(kit, **privacy))


def batched_sums_share(kit: CkksKit, head: EncryptedLinearHead, blobs: list[bytes],
                       columns: tuple[int, int], groups: int, scale: float, like: Placement,
                       masks: list[tuple[int, int]], noises: list[float],
                       privacy: dict) -> list[list[bytes | None]]:
    """A helper's partial sums over its features, the replies ``masks`` masked here (flooding
    from this process's ``os.urandom``), as bytes: the provider's own process adds them up and
    rescales them before anything leaves."""
    sums = head._batched_sums(kit, blobs, tuple(columns), groups, scale, like)
    sums = _masked(sums, masks, [NoiseBound(x) for x in noises],
                   CircuitPrivacy(kit, **privacy), like)
    return [[None if ct is None else kit.dump(ct) for ct in row] for row in sums]

"""Encrypted sufficient statistics of the alignment fit: Enc(X̃)ᵀ Y, block-diagonal packing.

The querier encrypts its public embeddings X̃ (n × d_in) column-wise: a ciphertext holds F = S/T
querier features, each in a block of T slots with its texts at slots [R, R + texts) (the first R
slots of a block stay zero). For every part of R provider dimensions (d_out is cut into powers of
two), the provider computes the hybrid diagonal product of Halevi–Shoup within each block:

    y'[j] = Σ_{t<R} diag_t[j] · x[j + t],   diag_t[j] = Y[text at slot j + t, j mod R]

with baby-step/giant-step rotations, then folds y' over strides T/2 … R: slot (block m, b) holds
Σ_i X̃[i, m]·Y[i, b]. One ciphertext × plaintext multiply yields S products; the diagonal
plaintexts depend only on Y, so they are encoded once and reused by every querier ciphertext.

The protocol uses one block per ciphertext (T = S, ``single_block``): the fold then runs over
every slot, and every slot holds an entry of X̃ᵀY (each R-th slot the same one). With several
blocks the slots past R of each block hold partial sums across texts and blocks, from which a
querier solves for Y itself (``simulations/attacks.py``); that layout exists for the attack only.
Each reply is then protected (``crypto.privacy``).

``plan`` picks the part size R (and T, for the attack's layout) to minimise multiplies + rotations
(a rotation costs ~12 multiply-adds at the fitting's level: ``ROTATION_COST``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal
from tqdm.auto import tqdm

from crypto.kit import CkksKit, common_placement
from crypto.privacy import CircuitPrivacy, NoiseBound, key_switch_variance, plain_norm_sq
from crypto.processes import pool

# One rotation ≈ this many multiply-adds at the fitting's level (N=8192, three data primes, timed
# here with CkksKit: a rotation 2.0 ms, a multiply 0.13 ms plus the add). It steers plan()'s choice
# of R, which both parties make on their own machines and must agree on (the querier encrypts in
# the layout, the provider computes in it), so it is a constant of the protocol, not read from the
# calibrated cost model (conf/cost_model.json, which times the query level only: rotate /
# multiply_add 10.5 at N=8192, 17.6 at N=16384). The protocol's one-block layout picks the same R
# for any value from 4 to 30 (tests/test_crypto.py); only the attack's layout is sensitive to it.
ROTATION_COST = 12.0


def _pow2_floor(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def _parts(d_out: int, cap: int) -> list[int]:
    """d_out cut into powers of two no larger than ``cap`` (768 → [512, 256])."""
    parts, rest = [], d_out
    while rest:
        size = min(cap, _pow2_floor(rest))
        parts.append(size)
        rest -= size
    return parts


@dataclass(frozen=True)
class CrossProductPacking:
    """Slot layout of Enc(X̃)ᵀY for n texts, ``d_in`` querier and ``d_out`` provider columns."""

    n: int
    d_in: int
    d_out: int
    slots: int
    block: int  # T: slots per feature block
    part_cap: int  # largest R

    @classmethod
    def plan(cls, n: int, d_in: int, d_out: int, slots: int, *,
             single_block: bool = True) -> CrossProductPacking:
        """The cheapest layout (multiplies + ROTATION_COST × rotations) for this shape.

        ``single_block=False`` packs several features per ciphertext: cheaper for small n, but it
        leaves partial sums in the reply (see the module's docstring); attacks only."""
        if min(n, d_in, d_out, slots) < 1:
            raise ValueError(f"n, d_in, d_out and slots must be positive, got {n, d_in, d_out, slots}")
        best = None
        cap = 1
        while cap <= min(_pow2_floor(d_out), slots // 2):
            block = slots if single_block else min(slots, 1 << math.ceil(math.log2(n + cap)))
            if block - cap >= 1:
                packing = cls(n, d_in, d_out, slots, block, cap)
                if best is None or packing.cost < best.cost:
                    best = packing
            cap *= 2
        if best is None:
            raise ValueError(f"no layout fits {slots} slots")
        return best

    # -- layout -----------------------------------------------------------------------------------
    @property
    def texts_per_block(self) -> int:
        return self.block - self.part_cap

    @property
    def n_text_chunks(self) -> int:
        return math.ceil(self.n / self.texts_per_block)

    @property
    def features_per_ct(self) -> int:
        return self.slots // self.block

    @property
    def n_feature_groups(self) -> int:
        return math.ceil(self.d_in / self.features_per_ct)

    @property
    def n_ciphertexts(self) -> int:
        return self.n_text_chunks * self.n_feature_groups

    @property
    def parts(self) -> list[int]:
        return _parts(self.d_out, self.part_cap)

    @property
    def baby(self) -> int:
        return 1 << math.ceil(math.log2(self.part_cap) / 2)

    @property
    def rotation_steps(self) -> list[int]:
        steps = set(range(1, self.baby))
        for r in self.parts:
            steps.update(q * self.baby for q in range(1, max(1, r // self.baby)))
            steps.update(self.block >> s for s in range(1, int(math.log2(self.block // r)) + 1))
        return sorted(steps)

    @property
    def cost(self) -> float:
        multiplies = self.n_ciphertexts * sum(self.parts)
        rotations = self.n_ciphertexts * (self.baby - 1) + self.n_feature_groups * sum(
            max(1, r // self.baby) - 1 + int(math.log2(self.block // r)) for r in self.parts)
        return multiplies + ROTATION_COST * rotations

    # -- querier ----------------------------------------------------------------------------------
    def encrypt(self, kit: CkksKit, X: np.ndarray, *, progress: bool = False) -> list[bytes]:
        """Enc(X̃) in this layout, text chunk by text chunk."""
        X = np.asarray(X, dtype=np.float64)
        if X.shape != (self.n, self.d_in):
            raise ValueError(f"expected X of shape {(self.n, self.d_in)}, got {X.shape}")
        out = []
        F, T, R = self.features_per_ct, self.block, self.part_cap
        for tc in tqdm(range(self.n_text_chunks), desc="Enc(X̃)", disable=not progress):
            rows = X[tc * self.texts_per_block : (tc + 1) * self.texts_per_block]
            for fg in range(self.n_feature_groups):
                cols = rows[:, fg * F : (fg + 1) * F]
                slots = np.zeros((F, T))
                slots[: cols.shape[1], R : R + len(rows)] = cols.T
                out.append(kit.encrypt(slots.ravel(), scale_bits=kit.params.fit_input_scale_bits,
                                       first_level=True))
        return out

    def decrypt(self, kit: CkksKit, blobs: list[bytes]) -> np.ndarray:
        """X̃ᵀY (d_in × d_out), float64, from the provider's reply (feature group × part)."""
        parts = self.parts
        if len(blobs) != self.n_feature_groups * len(parts):
            raise ValueError(f"expected {self.n_feature_groups * len(parts)} product ciphertexts, "
                             f"got {len(blobs)}")
        F, T = self.features_per_ct, self.block
        out = np.zeros((self.n_feature_groups * F, self.d_out))
        for index, ct in enumerate(kit.load_many(blobs)):
            fg, p = divmod(index, len(parts))
            offset = sum(parts[:p])
            blocks = kit.decrypt(ct).reshape(F, T)[:, : parts[p]]
            out[fg * F : (fg + 1) * F, offset : offset + parts[p]] = blocks
        return out[: self.d_in]

    # -- provider ---------------------------------------------------------------------------------
    def multiply(self, kit: CkksKit, blobs: list[bytes], Y: np.ndarray, *, x_bound: float = 1.0,
                 workers: int = 1, progress: bool = False,
                 privacy: CircuitPrivacy | None = None) -> list[bytes]:
        """Enc(X̃)ᵀY from the querier's ciphertexts and the provider's plaintext Y (n × d_out).

        ``x_bound`` is the querier's declared bound on |X̃|; with Y it bounds every sum, which sets
        the plaintext scale (refused before computing if the chain cannot hold it and the
        flooding). ``workers`` > 1 splits the querier's feature groups over that many processes
        (SEAL runs on one core). ``privacy`` protects each reply; by default 40-bit flooding and
        re-randomisation.
        """
        privacy = CircuitPrivacy(kit) if privacy is None else privacy
        Y = np.asarray(Y, dtype=np.float64)
        if Y.shape != (self.n, self.d_out):
            raise ValueError(f"expected Y of shape {(self.n, self.d_out)}, got {Y.shape}")
        if not np.isfinite(Y).all():
            raise ValueError("Y holds NaN or inf")
        if len(blobs) != self.n_ciphertexts:
            raise ValueError(f"expected {self.n_ciphertexts} ciphertexts, got {len(blobs)}")
        loaded = kit.load_many(blobs)  # validates every ciphertext before any work
        common_placement(loaded, "the querier's ciphertexts")
        bound = float(x_bound * np.abs(Y).sum(axis=0).max())
        noise_at = self._noise(kit, Y, loaded[0])
        scale = kit.params.weight_scale_for(
            bound, kit.scale_bits(loaded[0]), kit.level_bits(loaded[0]),
            flood_bits_at=lambda sc: privacy.flood_bits(max(noise_at(sc), key=lambda b: b.std)))
        noises = [b.std for b in noise_at(scale)]
        # blobs are text chunk-major; a task is one feature group over all text chunks.
        order = [[tc * self.n_feature_groups + fg for tc in range(self.n_text_chunks)]
                 for fg in range(self.n_feature_groups)]
        groups = [[blobs[i] for i in group] for group in order]
        bar = tqdm(total=len(groups), desc="Enc(X̃)ᵀY", unit="group", disable=not progress,
                   mininterval=2.0)
        # Shares for helper processes (crypto.processes; the last share stays here, with the
        # progress bar); a helper's first job costs ~1 s to start it, so small jobs stay here.
        workers = max(1, min(workers, len(groups) // 4))
        bounds = np.linspace(0, len(groups), workers + 1).astype(int)
        job = {"packing": self, "Y": Y, "scale": scale, "noises": noises,
               "privacy": privacy.settings}
        jobs = [{**job, "groups": groups[a:b]} for a, b in itertools.pairwise(bounds[:-1])]

        def local() -> list[list[bytes]]:
            worker = _GroupWorker(kit, self, Y, scale, noises, privacy)
            mine = []
            bar.update(int(bounds[-2]))
            for group in order[bounds[-2]:]:  # already loaded (and checked) above
                mine.append(worker.run([loaded[i] for i in group]))
                bar.update()
            return mine

        theirs, mine = pool().run("fit", jobs, {"kit": kit.shared}, local)
        bar.close()
        return [blob for part in [*theirs, mine] for group in part for blob in group]

    def _noise(self, kit: CkksKit, Y: np.ndarray, like: seal.Ciphertext):
        """Noise of each part's reply as a function of the weight scale (see crypto.privacy)."""
        T, n = self.block, kit.params.poly_modulus_degree
        ks = key_switch_variance(kit.prime_bits(like), kit.params.coeff_mod_bit_sizes[-1], n)
        g = self.baby
        j = np.arange(T)
        # squared slot norms of every diagonal: [text chunk][part] -> (giants, babies)
        norms = []
        for Yc in _padded_chunks(self, Y):
            per_part, offset = [], 0
            for r in self.parts:
                table = np.zeros((max(1, r // g), min(g, r)))
                for q in range(table.shape[0]):
                    for b in range(table.shape[1]):
                        t = q * g + b
                        rows = j + t
                        keep = rows < T
                        table[q, b] = float((Yc[rows[keep], offset + j[keep] % r] ** 2).sum())
                per_part.append(table * self.features_per_ct)  # tiled over the F blocks
                offset += r
            norms.append(per_part)
        baby_std = [math.sqrt(NoiseBound.fresh().std**2 + (ks if b else 0.0)) for b in range(g)]

        def noise_at(scale: float) -> list[NoiseBound]:
            out = []
            for p, r in enumerate(self.parts):
                giants = []
                for q in range(max(1, r // g)):
                    per_chunk = []  # text chunks are independent ciphertexts
                    for chunk in norms:
                        row = chunk[p][q]
                        # babies of one ciphertext share its noise: their terms add as stds
                        per_chunk.append(sum(math.sqrt(plain_norm_sq(v, scale, n)) * baby_std[b]
                                             for b, v in enumerate(row)))
                    inner = NoiseBound.independent([NoiseBound(x) for x in per_chunk])
                    giants.append(inner.rotated(ks) if q else inner)
                total = NoiseBound.correlated(giants)
                out.append(total.folded(int(math.log2(self.block // r)), ks))
            return out

        return noise_at

    def _diagonals(self, kit: CkksKit, Yc: np.ndarray, scale: float,
                   like: seal.Ciphertext) -> list[list[list]]:
        """Plaintexts rot(diag_{q·g+β}, -q·g) for every part, tiled over the F blocks."""
        T, F, g = self.block, self.features_per_ct, self.baby
        j = np.arange(T)
        encoded, offset = [], 0
        for r in self.parts:
            giants = []
            for q in range(max(1, r // g)):
                row = []
                for b in range(min(g, r)):
                    t = q * g + b
                    diag = Yc[j + t, offset + j % r]  # zero where slot j + t leaves the block
                    diag[j + t >= T] = 0.0
                    row.append(kit.encode(np.tile(np.roll(diag, q * g), F), scale, like=like))
                giants.append(row)
            encoded.append(giants)
            offset += r
        return encoded


def _padded_chunks(packing: CrossProductPacking, Y: np.ndarray) -> list[np.ndarray]:
    """Y per text chunk, laid out by slot: slot s of a block holds the text at s - R."""
    T, R = packing.block, packing.part_cap
    out = []
    for tc in range(packing.n_text_chunks):
        Yc = np.zeros((T + R, packing.d_out))
        chunk = Y[tc * packing.texts_per_block : (tc + 1) * packing.texts_per_block]
        Yc[R : R + len(chunk)] = chunk
        out.append(Yc)
    return out


class _GroupWorker:
    """The provider's work for one feature group: diagonals encoded once, reused for every group."""

    def __init__(self, kit: CkksKit, packing: CrossProductPacking, Y: np.ndarray, scale: float,
                 noises: list[float], privacy: CircuitPrivacy) -> None:
        self.kit, self.packing, self.scale = kit, packing, scale
        self.noises, self.privacy = [NoiseBound(x) for x in noises], privacy
        self.chunks = _padded_chunks(packing, Y)
        self._encoded: list | None = None  # encoded at the level of the first group's ciphertexts

    def run(self, cts: list[seal.Ciphertext]) -> list[bytes]:
        kit, packing = self.kit, self.packing
        if self._encoded is None:
            self._encoded = [packing._diagonals(kit, Yc, self.scale, cts[0]) for Yc in self.chunks]
        parts, g = packing.parts, packing.baby
        accs: list[list[seal.Ciphertext | None]] = [[None] * max(1, r // g) for r in parts]
        for ct, diags in zip(cts, self._encoded, strict=True):
            babies = [kit.rotate(ct, b) for b in range(min(g, packing.part_cap))]
            for p in range(len(parts)):
                for q, row in enumerate(diags[p]):
                    for b, plain in enumerate(row):
                        accs[p][q] = kit.multiply_add(accs[p][q], babies[b], plain)
        out = []
        for p, r in enumerate(parts):
            total = None
            for q, inner in enumerate(accs[p]):
                if inner is None:
                    continue
                total = kit.add_into(total, kit.rotate(inner, q * g))
            if total is None:  # Y's columns of this part are all zero
                raise ValueError("the provider's embeddings round to zero at this scale")
            stride = packing.block // 2
            while stride >= r:
                total = kit.add_into(total, kit.rotate(total, stride))
                stride //= 2
            out.append(kit.dump(self.privacy.protect(total, self.noises[p])))
        return out


def run_share(kit: CkksKit, packing: CrossProductPacking, Y: np.ndarray, scale: float,
              noises: list[float], privacy: dict, groups: list[list[bytes]]) -> list[list[bytes]]:
    """A helper process's share of :meth:`CrossProductPacking.multiply`, protected here."""
    worker = _GroupWorker(kit, packing, Y, scale, noises, CircuitPrivacy(kit, **privacy))
    return [worker.run(kit.load_many(group)) for group in groups]

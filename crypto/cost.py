"""Time and bytes of one serving request on each head path, to pick the path per request.

A request of n queries (d features, K classes, S = N/2 slots) costs, on each path, a count of CKKS
primitives that follows from the path's layout (``crypto.head``), times what one primitive takes:

- ``batched``: G = ⌈n/S⌉ groups; G·d encryptions, loads and (K per load) scalar multiply-adds; G·K
  replies (bias, protection, serialisation, decryption). Its cost is per *group*: a request of one
  query costs as much as one of S.
- ``single``: per query, the :class:`crypto.head.SinglePlan`'s ciphertexts (chunks × copies),
  multiply-adds (× giant steps) and rotations, and one reply; plus its diagonals, encoded per
  request (the provider builds its head per request).

Times are for one process per side (``workers`` divides both paths' work alike, but for the
batched path's K protections, so the choice is made at one). Bytes are exact: counts times the
serialised size of a query ciphertext and of a protected reply, which depend only on N and the
primes of their level (SEAL's compression finds nothing to remove in residues of 60-bit primes,
as in the presets; with smaller primes it would vary by a few bytes), plus the serving context,
sent once per session: the public key (compressed by SEAL: ~0.1 % either way) and, for the single
path, a Galois key per rotation step.

The constants are measured, not guessed: ``python -m simulations.bench_crypto --calibrate`` times
every primitive as the paths call it (``crypto.kit``: serialisation and checks included) on this
machine and writes them, with the sizes, to the JSON file that ``serve.cost_model`` names
(``conf/cost_model.json``: one entry per parameter set, keyed by N and the modulus chain). It lives
in ``conf/`` because it is an input of the coordinator's decision, shipped with the app like the HE
presets, and JSON because it is data a person can read and diff; the benchmark's report
(``reports/crypto``) shows how the choices compare with measured requests. Only the ratio of the
two paths' times steers the choice, so a calibration from similar hardware carries over.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from crypto.head import PATHS, SinglePlan
from crypto.params import CKKSParams

# What --calibrate times, in seconds per call (as crypto.kit does it):
PRIMITIVES = {
    "encrypt": "querier: encode S values + seeded symmetric encryption + serialisation",
    "load_query": "provider: deserialise and check a query ciphertext",
    "scalar_multiply_add": "provider: encode a scalar weight, ciphertext × plaintext, add",
    "multiply_add": "provider: ciphertext × an encoded plaintext vector, add",
    "rotate": "provider: one rotation of a product (key switching)",
    "encode": "provider: encode S values at the product's level (diagonals, single-path bias)",
    "protect": "provider: re-randomise, flood and rescale one reply (crypto.privacy)",
    "dump_reply": "provider: serialise a protected reply",
    "load_reply": "querier: deserialise and check a reply",
    "decrypt": "querier: decrypt and decode a reply",
}


@dataclass(frozen=True)
class Calibration:
    """Measured seconds per primitive and exact bytes per object, for one parameter set."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    seconds: dict[str, float]
    query_bytes: int  # one serialised query ciphertext
    reply_bytes: int  # one serialised protected reply
    context_bytes: int  # the public context without Galois keys
    galois_bytes: int  # what the first rotation step's key adds to it (the key set's header too)
    galois_key_bytes: int  # what each further step's key adds

    @property
    def key(self) -> str:
        return _key(self.poly_modulus_degree, self.coeff_mod_bit_sizes)

    def context_with(self, steps: int) -> int:
        """Bytes of a public context holding Galois keys for ``steps`` rotation steps."""
        if steps == 0:
            return self.context_bytes
        return self.context_bytes + self.galois_bytes + (steps - 1) * self.galois_key_bytes


def _key(poly_modulus_degree: int, chain: tuple[int, ...]) -> str:
    return f"N={poly_modulus_degree} chain={'-'.join(str(b) for b in chain)}"


@dataclass(frozen=True)
class PathCost:
    """One request on one path: compute seconds (querier + provider), bytes each way, and the
    serving context the path needs (sent once per session)."""

    path: str
    seconds: float
    bytes_up: int
    bytes_down: int
    context_bytes: int

    @property
    def bytes(self) -> int:
        return self.bytes_up + self.bytes_down

    def total(self, seconds_per_byte: float, *, count_context: bool) -> float:
        """Seconds, with every byte on the wire costing ``seconds_per_byte``."""
        sent = self.bytes + (self.context_bytes if count_context else 0)
        return self.seconds + seconds_per_byte * sent


def operation_counts(path: str, n_features: int, n_classes: int, slots: int,
                     n: int) -> dict[str, int]:
    """How many of each primitive a request of ``n`` queries takes on ``path``, and its
    ciphertexts each way (``queries_sent``, ``replies``)."""
    if min(n_features, n_classes, slots, n) < 1:
        raise ValueError(f"d, K, slots and n must be positive, got {n_features, n_classes, slots, n}")
    if path == "batched":
        groups = math.ceil(n / slots)
        sent, replies = groups * n_features, groups * n_classes
        return {"encrypt": sent, "load_query": sent,
                "scalar_multiply_add": sent * n_classes + replies,  # weights, then the bias
                "multiply_add": 0, "rotate": 0, "encode": 0, "protect": replies,
                "dump_reply": replies, "load_reply": replies, "decrypt": replies,
                "queries_sent": sent, "replies": replies, "rotation_steps": 0}
    if path == "single":
        plan = SinglePlan(n_features, n_classes, slots)
        per = plan.ciphertexts_per_query
        return {"encrypt": n * per, "load_query": n * per, "scalar_multiply_add": 0,
                "multiply_add": n * per * plan.giant, "rotate": n * plan.n_rotations,
                "encode": per * plan.giant + n,  # the diagonals (per request), each query's bias
                "protect": n, "dump_reply": n, "load_reply": n, "decrypt": n,
                "queries_sent": n * per, "replies": n,
                "rotation_steps": len(plan.rotation_steps)}
    raise ValueError(f"unknown path {path!r}; expected one of {PATHS}")


class CostModel:
    """Calibrated primitives for one or more parameter sets (see the module's docstring)."""

    def __init__(self, calibrations: list[Calibration], about: dict | None = None) -> None:
        self.calibrations = {c.key: c for c in calibrations}
        self.about = dict(about or {})

    @classmethod
    def load(cls, path: Path | str) -> CostModel:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no cost model at {path}: write one with python -m "
                                    "simulations.bench_crypto --calibrate")
        data = json.loads(path.read_text())
        calibrations = []
        for entry in data["calibrations"]:
            entry = {**entry, "coeff_mod_bit_sizes": tuple(entry["coeff_mod_bit_sizes"])}
            missing = set(PRIMITIVES) - set(entry["seconds"])
            if missing:
                name = _key(entry["poly_modulus_degree"], entry["coeff_mod_bit_sizes"])
                raise ValueError(f"{path}: the calibration {name} lacks {sorted(missing)}")
            calibrations.append(Calibration(**entry))
        return cls(calibrations, data.get("about"))

    def save(self, path: Path | str) -> None:
        entries = [{**asdict(c), "coeff_mod_bit_sizes": list(c.coeff_mod_bit_sizes)}
                   for c in self.calibrations.values()]
        Path(path).write_text(json.dumps({"about": self.about, "primitives": PRIMITIVES,
                                          "calibrations": entries}, indent=1) + "\n")

    def calibration(self, params: CKKSParams) -> Calibration:
        key = _key(params.poly_modulus_degree, tuple(params.coeff_mod_bit_sizes))
        if key not in self.calibrations:
            raise KeyError(f"the cost model has no calibration for {key} (it has "
                           f"{sorted(self.calibrations)}): run python -m simulations.bench_crypto "
                           "--calibrate with this preset")
        return self.calibrations[key]

    def cost(self, path: str, n_features: int, n_classes: int, n: int, *,
             params: CKKSParams) -> PathCost:
        """Predicted compute seconds and exact bytes of a request of ``n`` queries on ``path``."""
        cal = self.calibration(params)
        counts = operation_counts(path, n_features, n_classes, params.slots, n)
        seconds = sum(counts[name] * cal.seconds[name] for name in PRIMITIVES)
        return PathCost(path, seconds, counts["queries_sent"] * cal.query_bytes,
                        counts["replies"] * cal.reply_bytes,
                        cal.context_with(counts["rotation_steps"]))

    def choose_path(self, n_features: int, n_classes: int, n: int, *, params: CKKSParams,
                    seconds_per_byte: float, count_context: bool) -> str:
        """The path whose request costs least: compute seconds plus ``seconds_per_byte`` per byte
        on the wire (0: time only). ``count_context``: this request also ships the path's serving
        context (the single path's Galois keys, MiBs: the first single request of a session)."""
        if not (math.isfinite(seconds_per_byte) and seconds_per_byte >= 0):
            raise ValueError(f"seconds_per_byte must be finite and >= 0, got {seconds_per_byte}")
        costs = [self.cost(path, n_features, n_classes, n, params=params) for path in PATHS]
        return min(costs, key=lambda c: c.total(seconds_per_byte,
                                                count_context=count_context)).path


def choose_path(n_features: int, n_classes: int, n: int, *, model: CostModel,
                params: CKKSParams, seconds_per_byte: float, count_context: bool) -> str:
    """:meth:`CostModel.choose_path`, for callers that hold the model (the coordinator)."""
    return model.choose_path(n_features, n_classes, n, params=params,
                             seconds_per_byte=seconds_per_byte, count_context=count_context)


def seconds_per_byte(link_mbit_s: float) -> float:
    """What a byte costs on a link of ``link_mbit_s`` megabits per second."""
    if not link_mbit_s > 0:
        raise ValueError(f"the link speed must be positive, got {link_mbit_s}")
    return 8.0 / (link_mbit_s * 1e6)

"""The provider: owns a private head per task, computes on the querier's ciphertexts, never decrypts.

It receives only public contexts (CKKS parameters, checked, and Galois keys) and ciphertexts; its
kit has no secret key, so it cannot encrypt nor decrypt. It returns
ciphertexts, plus one plaintext scalar per alignment (Σ‖y‖² of the held-out public texts, for R²).
Its limits (budget, noise, request size, minimum security, flooding, the optional cosine round) are
its own policy (``settings.policy``, silos/policy.py), never the querier's or the operator's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from crypto import CircuitPrivacy, CkksKit, CrossProductPacking, EncryptedLinearHead, query_capacity
from silos.budget import QueryBudget
from silos.data import TextTable, encode_labels
from silos.head import LinearHead
from silos.runtime import embed, public_space, public_texts, task_tables
from silos.saving import atomic_write
from silos.settings import SiloSettings
from silos.state import get_arrays, get_config, put_arrays, put_config

NOT_PREPARED = "the provider is not prepared yet (send 'prepare' first)"


class Provider:
    def __init__(self, settings: SiloSettings, state: RecordDict) -> None:
        self.settings = settings
        self.state = state

    # -- data -------------------------------------------------------------------------------------
    def _head_key(self, table: TextTable) -> str:
        """What a task's head is trained from: it is trained again only when this changes."""
        s = self.settings
        return hashlib.sha256(json.dumps({
            "data": table.digest, "public": public_texts(self.settings).digest,
            "encoder": s.encoder.fingerprint, "l2": s.head_l2, "max_iter": s.head_max_iter,
        }, sort_keys=True).encode()).hexdigest()

    def describe(self, request: ConfigRecord) -> dict:
        """Role, model and the tasks it offers: their classes and the digest of each head's data
        (a querier's stored predictions are keyed by it)."""
        s = self.settings
        public = public_texts(self.settings)
        info = {"silo": s.name, "role": s.role, "model": s.encoder.model,
                "fingerprint": s.encoder.fingerprint, "public_digest": public.digest,
                "n_public": len(public), "tasks": [],
                # so that the coordinator does not ask for a round this provider refuses
                "allow_cosine": s.policy.allow_cosine}
        for task, table in task_tables(self.settings).items():
            info["tasks"].append(task)
            info[f"classes.{task}"] = encode_labels(table.labels)["label_names"]
            info[f"head.{task}"] = self._head_tag(self._head_key(table))
        return info

    def _head_tag(self, key: str) -> str:
        """What the querier is told of a head: a tag that changes with it (its stored answers are
        keyed by it), an HMAC under a salt this provider keeps, so that the tag cannot confirm a
        guess of its private data the way a bare hash of it would."""
        path = self.settings.workdir / "heads" / "salt"
        if not path.exists():
            atomic_write(path, lambda tmp: tmp.write_bytes(os.urandom(32)))
        return hmac.new(path.read_bytes(), key.encode(), hashlib.sha256).hexdigest()

    def prepare(self, request: ConfigRecord) -> dict:
        """A head per task: the stored one if trained from the same data (and public texts, and
        model), else trained on the provider's embeddings of its labelled data, and stored."""
        start = time.perf_counter()
        s = self.settings
        reply: dict = {"trained": [], "reused": []}
        for task, table in task_tables(self.settings).items():
            key = self._head_key(table)
            path = s.workdir / "heads" / f"{task}.safetensors"
            head = LinearHead.load(path) if path.exists() else None
            if head is None or head.provenance_.get("key") != key:
                scale = float(self._public()["scale"][0])  # the space the map aligns into
                x = embed(s.encoder, table.texts, s.cache_dir) / scale
                encoded = encode_labels(table.labels)
                head = LinearHead(l2=s.head_l2, max_iter=s.head_max_iter).fit(
                    x, encoded["labels"], classes=encoded["label_names"])
                head.provenance_ = {"key": key, "scale": scale}
                head.save(path)
                reply["trained"].append(task)
                reply[f"train_accuracy.{task}"] = float(
                    (head.predict(x) == encoded["labels"]).mean())
            else:
                reply["reused"].append(task)
            put_arrays(self.state, f"provider.head.{task}", coef=head.coef_,
                       intercept=head.intercept_)
            reply["dim"] = int(head.coef_.shape[0])
        reply["seconds"] = time.perf_counter() - start
        return reply

    def _public(self) -> dict[str, np.ndarray]:
        """The scaled public embeddings (fit and held-out parts): embedded on first use only, so
        a run whose heads and the querier's maps are all stored never embeds them."""
        if "provider.public" not in self.state:
            put_arrays(self.state, "provider.public", **public_space(self.settings))
        return get_arrays(self.state, "provider.public", NOT_PREPARED)

    @staticmethod
    def _querier(request: ConfigRecord) -> str:
        """The querier's name as the coordinator sends it: what the budget is kept by."""
        querier = str(request["querier"])
        if not querier:
            raise ValueError("the request names no querier")
        return querier

    def _receive_context(self, request: ConfigRecord) -> CkksKit:
        """The querier's public context: from this request (and kept), or the one kept before.

        Checked against this provider's ``min_security_bits`` whatever the context's own
        ``allow_insecure`` says (that flag is the querier's)."""
        querier = self._querier(request)
        floor = self.settings.policy.min_security_bits
        if "context" in request:
            data = bytes(request["context"])
            kit = CkksKit.from_public(data, min_security_bits=floor)
            put_config(self.state, "provider.contexts", **{querier: data})
            return kit
        contexts = get_config(self.state, "provider.contexts",
                              f"no public context from querier {querier!r} (align first)")
        if querier not in contexts:
            raise LookupError(f"no public context from querier {querier!r} (align first)")
        return CkksKit.from_public(bytes(contexts[querier]), min_security_bits=floor)

    def _privacy(self, kit: CkksKit) -> CircuitPrivacy:
        """How this provider protects its replies (its own policy, never the querier's)."""
        return CircuitPrivacy(kit, bits=self.settings.policy.privacy_bits)

    @staticmethod
    def _x_bound(request: ConfigRecord) -> float:
        bound = float(request.get("x_bound", 1.0))
        if not 0.0 < bound < float("inf"):
            raise ValueError(f"x_bound must be a positive finite bound on |X̃|, got {bound}")
        return bound

    def cross_products(self, request: ConfigRecord) -> dict:
        """Enc(X̃)ᵀY for the fit and held-out public texts, from the querier's encrypted rows."""
        start = time.perf_counter()
        public = self._public()
        kit = self._receive_context(request)
        d_in, bound = int(request["d_in"]), self._x_bound(request)
        y_fit, y_val = public["fit"], public["val"]
        reply = {"d_out": int(y_fit.shape[1])}
        privacy = self._privacy(kit)
        fit = CrossProductPacking.plan(len(y_fit), d_in, y_fit.shape[1], kit.slots)
        reply["fit"] = fit.multiply(kit, list(request["fit"]), y_fit, x_bound=bound,
                                    workers=self.settings.workers, progress=True, privacy=privacy)
        if len(y_val):
            val = CrossProductPacking.plan(len(y_val), d_in, y_val.shape[1], kit.slots)
            reply["val"] = val.multiply(kit, list(request["val"]), y_val, x_bound=bound,
                                        workers=self.settings.workers, privacy=privacy)
            reply["y_sq_sum_val"] = float(np.sum(public["val"].astype(np.float64) ** 2))
        reply["seconds"] = time.perf_counter() - start
        return reply

    def cosine_products(self, request: ConfigRecord) -> dict:
        """Enc(D·X̃)ᵀŶ on the held-out texts, Ŷ the row-normalised provider embeddings.

        Optional, and refused unless this provider's policy has ``allow_cosine``: it reveals
        statistics of Ŷ beyond X̃ᵀY (whatever rows the querier chooses to send)."""
        if not self.settings.policy.allow_cosine:
            raise PermissionError(f"provider {self.settings.name!r} does not answer the cosine "
                                  "round: its policy's allow_cosine is false")
        start = time.perf_counter()
        y_val = self._public()["val"].astype(np.float64)
        kit = self._receive_context(request)
        packing = CrossProductPacking.plan(len(y_val), int(request["d_in"]), y_val.shape[1],
                                           kit.slots)
        y_hat = y_val / np.maximum(np.linalg.norm(y_val, axis=1, keepdims=True), 1e-12)
        products = packing.multiply(kit, list(request["rows"]), y_hat,
                                    x_bound=self._x_bound(request), workers=self.settings.workers,
                                    privacy=self._privacy(kit))
        return {"products": products, "d_out": y_val.shape[1],
                "seconds": time.perf_counter() - start}

    def evaluate(self, request: ConfigRecord) -> dict:
        """The head on encrypted aligned queries: encrypted logits, for the querier only.

        Refused before any ciphertext is read: a request larger than ``max_request_queries``, one
        whose ciphertext count does not match its queries, one past the querier's budget (kept on
        this provider's disk, across runs: silos/budget.py).
        """
        start = time.perf_counter()
        policy = self.settings.policy
        task = str(request["task"])
        arrays = get_arrays(self.state, f"provider.head.{task}",
                            f"provider {self.settings.name!r} has no head for task {task!r}")
        head = EncryptedLinearHead(arrays["coef"], arrays["intercept"])
        querier, path, n = self._querier(request), str(request["path"]), int(request["n"])
        if n > policy.max_request_queries:
            raise ValueError(f"a request of {n} queries exceeds this provider's "
                             f"max_request_queries={policy.max_request_queries}")
        kit = self._receive_context(request)
        cost = query_capacity(path, n, kit.slots)
        blobs = list(request["ciphertexts"])
        head.check_request(path, n, kit.slots, len(blobs))
        budget = QueryBudget(self.settings.state_dir, policy.query_budget)
        budget.check(querier, cost)
        logits = head.evaluate(kit, blobs, path=path, n=n, noise_std=policy.logit_noise,
                               privacy=self._privacy(kit), workers=self.settings.serve_workers)
        remaining = budget.charge(querier, cost)  # only once answered
        return {"ciphertexts": logits, "n_classes": head.n_classes, "charged": cost,
                "budget_left": remaining, "seconds": time.perf_counter() - start}

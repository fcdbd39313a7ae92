"""The provider: owns a private head, computes on the querier's ciphertexts, never decrypts.

It receives only public contexts (CKKS parameters, checked, and Galois keys) and ciphertexts; its
kit has no secret key, so it cannot encrypt nor decrypt. It returns
ciphertexts, plus one plaintext scalar per alignment (Σ‖y‖² of the held-out public texts, for R²).
Its limits (budget, noise, request size, minimum security, flooding, the optional cosine round) are
its own policy (``settings.policy``, silos/policy.py), never the querier's or the operator's.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from crypto import CircuitPrivacy, CkksKit, CrossProductPacking, EncryptedLinearHead, query_capacity
from silos.budget import QueryBudget
from silos.embedding_cache import encode_cached
from silos.head import LinearHead
from silos.ood import OOD_LABEL, class_map
from silos.runtime import embed_queries, load_benchmark, load_encoder
from silos.saving import atomic_save_file
from silos.settings import SiloSettings
from silos.state import get_arrays, get_config, put_arrays, put_config

NOT_PREPARED = "the provider is not prepared yet (send 'prepare' first)"


class Provider:
    def __init__(self, settings: SiloSettings, state: RecordDict) -> None:
        self.settings = settings
        self.state = state

    def describe(self, request: ConfigRecord) -> dict:
        s = self.settings
        corpus, _ = load_benchmark(s.corpus)
        classes, _ = class_map(corpus.label_names, s.corpus.holdout_classes)
        # allow_cosine: so that the coordinator does not ask for a round this provider refuses.
        return {"silo": s.name, "role": s.role, "model": s.encoder.model, "classes": classes,
                "allow_cosine": s.policy.allow_cosine}

    def prepare(self, request: ConfigRecord) -> dict:
        """Embed public and private texts, train the head on the private ones.

        Benchmark only: also scores the head on the provider's own embeddings of the query split
        (``native_accuracy``) — the split is public knowledge of the benchmark, not the querier's.
        """
        start = time.perf_counter()
        s = self.settings
        corpus, split = load_benchmark(s.corpus)
        encoder = load_encoder(s.encoder, s.cache_dir)
        fit_ix, val_ix = s.corpus.public_parts(split.public)
        public = encode_cached(encoder, [corpus.texts[i] for i in split.public], s.cache_dir)
        private = encode_cached(encoder, [corpus.texts[i] for i in split.private], s.cache_dir)
        # Benchmark only: the querier's query set (with its OOD queries), for native scores.
        native, labels = embed_queries(encoder, s.corpus, s.cache_dir)
        classes, remap = class_map(corpus.label_names, s.corpus.holdout_classes)
        truth = np.where(labels == OOD_LABEL, OOD_LABEL, remap[labels])
        trained = remap[corpus.labels[split.private]] != OOD_LABEL  # held-out classes: not trained
        private, private_labels = private[trained], remap[corpus.labels[split.private]][trained]
        # The provider's space is its encoder's output over a fixed scale (|y| <= 1 on public data),
        # which bounds every encrypted sum; the head is trained in that same space.
        scale = float(np.abs(public).max()) or 1.0
        position = {index: row for row, index in enumerate(split.public)}
        y_fit = public[[position[i] for i in fit_ix]] / scale
        y_val = public[[position[i] for i in val_ix]] / scale
        head = LinearHead(l2=s.head_l2, max_iter=s.head_max_iter).fit(
            private / scale, private_labels, classes=classes)
        put_arrays(self.state, "provider.public", y_fit=y_fit, y_val=y_val)
        put_arrays(self.state, "provider.head", coef=head.coef_, intercept=head.intercept_)
        native_logits = head.decision_function(native / scale)
        known = truth != OOD_LABEL
        s.workdir.mkdir(parents=True, exist_ok=True)
        head.save(s.workdir / "head")
        atomic_save_file({"y_fit": y_fit, "y_val": y_val}, s.workdir / "public_embeddings.safetensors")
        atomic_save_file({"logits": native_logits, "truth": truth}, s.workdir / "native_logits.safetensors")
        return {
            "seconds": time.perf_counter() - start,
            "dim": encoder.dim,
            "train_accuracy": float((head.predict(private / scale) == private_labels).mean()),
            "native_accuracy": float((native_logits.argmax(1)[known] == truth[known]).mean()),
            **{f"split_{k}": v for k, v in split.summary().items()},
        }

    def _public(self) -> dict[str, np.ndarray]:
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
        y_fit, y_val = public["y_fit"], public["y_val"]
        reply = {"d_out": int(y_fit.shape[1])}
        privacy = self._privacy(kit)
        fit = CrossProductPacking.plan(len(y_fit), d_in, y_fit.shape[1], kit.slots)
        reply["fit"] = fit.multiply(kit, list(request["fit"]), y_fit, x_bound=bound,
                                    workers=self.settings.workers, progress=True, privacy=privacy)
        if len(y_val):
            val = CrossProductPacking.plan(len(y_val), d_in, y_val.shape[1], kit.slots)
            reply["val"] = val.multiply(kit, list(request["val"]), y_val, x_bound=bound,
                                        workers=self.settings.workers, privacy=privacy)
            reply["y_sq_sum_val"] = float(np.sum(public["y_val"].astype(np.float64) ** 2))
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
        y_val = self._public()["y_val"].astype(np.float64)
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
        arrays = get_arrays(self.state, "provider.head", NOT_PREPARED)
        head = EncryptedLinearHead(arrays["coef"], arrays["intercept"])
        querier, path, n = self._querier(request), str(request["path"]), int(request["n"])
        if n > policy.max_request_queries:
            raise ValueError(f"a request of {n} queries exceeds this provider's "
                             f"max_request_queries={policy.max_request_queries}")
        kit = self._receive_context(request)
        cost = query_capacity(path, n, kit.slots)
        blobs = list(request["ciphertexts"])
        expected = head.expected_ciphertexts(path, n, kit.slots)
        if len(blobs) != expected:
            raise ValueError(f"expected {expected} query ciphertexts for {n} queries on the "
                             f"{path} path (d={head.n_features}), got {len(blobs)}")
        budget = QueryBudget(self.settings.state_dir, policy.query_budget)
        budget.check(querier, cost)
        logits = head.evaluate(kit, blobs, path=path, n=n, noise_std=policy.logit_noise,
                               privacy=self._privacy(kit))
        remaining = budget.charge(querier, cost)  # only once answered
        return {"ciphertexts": logits, "n_classes": head.n_classes, "charged": cost,
                "budget_left": remaining, "seconds": time.perf_counter() - start}

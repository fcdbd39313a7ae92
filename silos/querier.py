"""The querier: holds the CKKS secret key, fits one map per provider under encryption, queries them.

Nothing it sends is plaintext: public contexts (parameters and Galois keys, never the secret key)
and ciphertexts only. Its state (the secret key, its scaled embeddings, the maps, the decrypted
batches in progress) lives in the node's ``context.state`` and its own workdir: a map is stored
with its provenance and reused while that is unchanged (``alignment.reuse``); decrypted batches
are written as they arrive, so a run killed while serving resumes where it stopped; the
predictions are written per (provider, task) (silos/predictions.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from crypto import CkksKit, CrossProductPacking, SinglePlan, decrypt_logits, encrypt_queries
from silos.alignment import AffineMap, augment, fit_quality
from silos.output_policy import OutputPolicy
from silos.predictions import Predictions, ServingParts, ensemble
from silos.runtime import embed, public_space, public_texts, querier_task, query_texts
from silos.settings import SiloSettings
from silos.state import get_arrays, get_config, put_arrays, put_config

NOT_PREPARED = "the querier is not prepared yet (send 'prepare' first)"


class Querier:
    def __init__(self, settings: SiloSettings, state: RecordDict) -> None:
        self.settings = settings
        self.state = state

    # -- discovery and set-up ---------------------------------------------------------------------
    def describe(self, request: ConfigRecord) -> dict:
        s = self.settings
        public = public_texts(self.settings)
        return {"silo": s.name, "role": s.role, "model": s.encoder.model,
                "fingerprint": s.encoder.fingerprint, "task": querier_task(self.settings),
                "n_queries": len(query_texts(self.settings)), "public_digest": public.digest,
                "n_public": len(public)}

    def prepare(self, request: ConfigRecord) -> dict:
        """Embed the querier's own texts; create this run's key pair (never written to disk)."""
        start = time.perf_counter()
        s = self.settings
        queries = embed(s.encoder, query_texts(self.settings).texts, s.cache_dir)
        put_arrays(self.state, "querier.queries", x=queries)
        kit = CkksKit.generate(s.he)
        put_config(self.state, "querier.he", secret_key=kit.secret_key_bytes(),
                   dim=int(queries.shape[1]))
        return {"seconds": time.perf_counter() - start, "dim": int(queries.shape[1]),
                "n_queries": len(queries)}

    def _kit(self) -> CkksKit:
        record = get_config(self.state, "querier.he", NOT_PREPARED)
        return CkksKit.from_secret(self.settings.he, bytes(record["secret_key"]))

    def _packing(self, n: int, d_out: int) -> CrossProductPacking:
        dim = int(get_config(self.state, "querier.he", NOT_PREPARED)["dim"])
        return CrossProductPacking.plan(n, dim + 1, d_out, self.settings.he.slots)

    # -- align once, serve many -------------------------------------------------------------------
    def _map_path(self, provider: str) -> Path:
        return self.settings.workdir / "maps" / f"{provider}.safetensors"

    def _provenance(self, request: ConfigRecord) -> dict:
        """What a map of this pair depends on: if any of it changes, the map is fitted again."""
        s = self.settings
        return {"querier_encoder": s.encoder.fingerprint,
                "provider_encoder": str(request["provider_fingerprint"]),
                "public_digest": public_texts(self.settings).digest,
                "he": s.he.to_json(), "alignment": s.alignment_config(),
                "cosine_round": s.cosine}

    def restore(self, request: ConfigRecord) -> dict:
        """Load the stored map of this pair if its provenance is unchanged (and reuse is on)."""
        provider = str(request["provider"])
        path = self._map_path(provider)
        if not self.settings.reuse:
            return {"reused": False, "why": "alignment.reuse=false"}
        if not path.exists():
            return {"reused": False, "why": "no stored map"}
        stored = AffineMap.load(path)
        expected = self._provenance(request)
        changed = sorted(k for k in expected if stored.provenance_.get(k) != expected[k])
        if changed:
            return {"reused": False, "why": f"changed: {', '.join(changed)}"}
        self._keep_map(provider, stored)
        record = stored.provenance_
        return {"reused": True, "why": f"stored {record['fitted_at']}", "alpha": stored.alpha,
                "r2": record["r2"], "cosine": record["cosine"], "fitted_at": record["fitted_at"]}

    def _keep_map(self, provider: str, fitted: AffineMap) -> None:
        put_arrays(self.state, f"querier.map.{provider}", coef=fitted.coef_,
                   intercept=fitted.intercept_, scale=np.array([fitted.provenance_["scale"]]))
        put_config(self.state, "querier.fitted_at", **{provider: fitted.provenance_["fitted_at"]})

    # -- encrypted alignment ----------------------------------------------------------------------
    def _public(self) -> dict[str, np.ndarray]:
        """The scaled public embeddings, fit and held-out parts: embedded on first use only (a
        run that reuses every map never embeds the public texts)."""
        if "querier.public" not in self.state:
            put_arrays(self.state, "querier.public", **public_space(self.settings))
        return get_arrays(self.state, "querier.public", NOT_PREPARED)

    def upload(self, request: ConfigRecord) -> dict:
        """Public context + Enc(X̃) of the fit and held-out public texts, laid out for a provider
        of ``d_out`` dimensions. The context's Galois keys cover exactly the layouts' rotations."""
        start = time.perf_counter()
        d_out = int(request["d_out"])
        public = self._public()
        kit = self._kit()
        fit = self._packing(len(public["fit"]), d_out)
        reply = {"fit": fit.encrypt(kit, augment(public["fit"]), progress=True),
                 "d_in": fit.d_in, "n_fit": fit.n, "n_val": len(public["val"]), "x_bound": 1.0}
        steps = set(fit.rotation_steps)
        if len(public["val"]):
            val = self._packing(len(public["val"]), d_out)
            reply["val"] = val.encrypt(kit, augment(public["val"]))
            steps.update(val.rotation_steps)
        reply["context"] = kit.public_bytes(steps)
        reply["seconds"] = time.perf_counter() - start
        return reply

    def select(self, request: ConfigRecord) -> dict:
        """Decrypt X̃ᵀY, score every ridge alpha on the held-out texts, keep the best.

        With ``alignment.cosine``, replies with Enc(D·X̃_val), D = 1/‖ẑ_i‖ of the chosen map, for
        the provider to return the statistics of the held-out mean cosine: statistics of its
        row-normalised embeddings beyond X̃ᵀY, so off by default (and a provider may refuse it).
        """
        start = time.perf_counter()
        provider = str(request["provider"])
        d_out = int(request["d_out"])
        public = self._public()
        kit = self._kit()
        xty_fit = self._packing(len(public["fit"]), d_out).decrypt(kit, list(request["fit"]))
        xa_fit = augment(public["fit"])
        xtx_fit = xa_fit.T @ xa_fit
        n_fit = len(xa_fit)
        has_val = len(public["val"]) > 0
        s = self.settings
        # Without a held-out part (holdout=0) nothing is scored and default_alpha is used.
        candidates = s.alphas if s.select_alpha and has_val else (s.default_alpha,)
        r2, held_out_maps = {}, {}
        xtx_val, xty_val = np.zeros_like(xtx_fit), np.zeros_like(xty_fit)
        if has_val:
            xa_val = augment(public["val"])
            xtx_val = xa_val.T @ xa_val
            val = self._packing(len(public["val"]), d_out)
            xty_val = val.decrypt(kit, list(request["val"]))
            for alpha in candidates:
                held_out_maps[alpha] = AffineMap(alpha).fit_from_stats(
                    xtx_fit, xty_fit, n_samples=n_fit)
                r2[alpha] = fit_quality(held_out_maps[alpha].augmented_coef(), xtx=xtx_val,
                                        xty=xty_val, y_sq_sum=float(request["y_sq_sum_val"]),
                                        n_samples=len(xa_val))
        alpha = max(r2, key=r2.get) if r2 else s.default_alpha
        reply = {"alpha": alpha, "alphas": [float(a) for a in r2],
                 "r2_by_alpha": [float(v) for v in r2.values()]}
        stats = {"xtx_fit": xtx_fit, "xty_fit": xty_fit, "xtx_val": xtx_val, "xty_val": xty_val,
                 "alpha": np.array([alpha])}
        if has_val and s.cosine:  # optional: the provider's policy must allow it
            held_out = held_out_maps[alpha]
            norms = np.linalg.norm(held_out.transform(public["val"]), axis=1)
            rows = augment(public["val"]) / np.maximum(norms, 1e-12)[:, None]
            row_scale = 1.0 / max(1.0, float(np.abs(rows).max()))  # keep |row| <= 1, as for X̃
            reply["rows"] = val.encrypt(kit, rows * row_scale)
            stats.update(held_out_coef=held_out.augmented_coef(), row_scale=np.array([row_scale]))
        if has_val:
            stats["r2"] = np.array([r2[alpha]])
        put_arrays(self.state, f"querier.stats.{provider}", **stats)
        reply["seconds"] = time.perf_counter() - start
        return reply

    def finish(self, request: ConfigRecord) -> dict:
        """Held-out mean cosine of the chosen map; the final map refit on all public texts, stored
        with its provenance for later runs."""
        start = time.perf_counter()
        provider = str(request["provider"])
        d_out = int(request["d_out"])
        stats = get_arrays(self.state, f"querier.stats.{provider}",
                           f"no alignment statistics for provider {provider!r} (send 'select')")
        alpha = float(stats["alpha"][0])
        public = self._public()
        n_fit, n_val = len(public["fit"]), len(public["val"])
        cosine, r2 = float("nan"), float("nan")
        if n_val:
            r2 = float(stats["r2"][0])
        # No products: the provider's policy does not allow the cosine round (not asked).
        if n_val and "held_out_coef" in stats and len(request.get("products", [])):
            packing = self._packing(n_val, d_out)
            products = packing.decrypt(self._kit(), list(request["products"]))
            cosine = float(np.sum(stats["held_out_coef"] * products)
                           / (n_val * stats["row_scale"][0]))
        final = AffineMap(alpha).fit_from_stats(
            stats["xtx_fit"] + stats["xtx_val"], stats["xty_fit"] + stats["xty_val"],
            n_samples=n_fit + n_val)
        final.provenance_ = {**self._provenance(request), "r2": r2, "cosine": cosine,
                             "scale": float(public["scale"][0]), "d_out": d_out,
                             "fitted_at": datetime.now(UTC).isoformat(timespec="microseconds")}
        final.save(self._map_path(provider))
        self._keep_map(provider, final)
        del self.state[f"querier.stats.{provider}"]
        return {"alpha": alpha, "r2": r2, "cosine": cosine, "d_in": final.coef_.shape[0],
                "d_out": d_out, "seconds": time.perf_counter() - start}

    # -- encrypted inference ----------------------------------------------------------------------
    def _parts(self, request: ConfigRecord) -> ServingParts:
        """The decrypted batches of one (provider, task) serving, keyed by everything that
        decides their logits: batches of another serving are never mixed in."""
        s = self.settings
        provider, task = str(request["provider"]), str(request["task"])
        fitted_at = get_config(self.state, "querier.fitted_at",
                               f"no map for provider {provider!r} yet (align first)")
        if provider not in fitted_at:
            raise LookupError(f"no map for provider {provider!r} yet (align first)")
        key = {"queries": query_texts(self.settings).digest, "map": str(fitted_at[provider]),
               "provider": provider, "task": task, "classes": list(request["classes"]),
               "head": str(request["head"]), "batch_size": int(request["batch_size"]),
               "output": [s.serve.output_top_k, s.serve.output_decimals]}
        return ServingParts(s.workdir / "predictions" / task / f".{provider}.parts", key)

    def plan(self, request: ConfigRecord) -> dict:
        """The batches still to serve for this (provider, task): all of them, unless an earlier
        run of the same serving was interrupted (its decrypted batches are kept)."""
        parts = self._parts(request)
        n, size = len(query_texts(self.settings)), int(request["batch_size"])
        done = parts.open()
        todo = [(a, min(a + size, n)) for a in range(0, n, size) if a not in done]
        return {"starts": [a for a, _ in todo], "stops": [b for _, b in todo],
                "n_done": sum(min(a + size, n) - a for a in done)}

    def encrypt(self, request: ConfigRecord) -> dict:
        """Map a batch of private queries locally and encrypt the aligned vectors.

        With ``with_context`` the reply also carries the public context for serving: parameters
        only for the batched path, plus the Galois keys of the single path's steps for this head
        shape (d_out × n_classes) if ``rotations`` is asked for.
        """
        start = time.perf_counter()
        provider = str(request["provider"])
        first, stop = int(request["start"]), int(request["stop"])
        path = str(request["path"])
        n_classes = int(request["n_classes"])
        queries = get_arrays(self.state, "querier.queries", NOT_PREPARED)["x"]
        if not 0 <= first < stop <= len(queries):
            raise IndexError(f"batch [{first}, {stop}) outside the {len(queries)} queries")
        fitted = get_arrays(self.state, f"querier.map.{provider}",
                            f"no map fitted for provider {provider!r} yet (align first)")
        z = queries[first:stop] / fitted["scale"][0] @ fitted["coef"] + fitted["intercept"]
        kit = self._kit()
        reply = {"ciphertexts": encrypt_queries(kit, z, path=path, n_classes=n_classes,
                                                workers=self.settings.serve_workers),
                 "n": stop - first, "path": path}
        if request.get("with_context", False):
            steps = (SinglePlan(z.shape[1], n_classes, kit.slots).rotation_steps
                     if request.get("rotations", False) else [])
            reply["context"] = kit.public_bytes(steps)
        reply["seconds"] = time.perf_counter() - start
        return reply

    def decrypt(self, request: ConfigRecord) -> dict:
        """Decrypt one batch's logits and write them to disk at once (atomically), so that a run
        killed later loses nothing it has answered."""
        start = time.perf_counter()
        logits = decrypt_logits(
            self._kit(), list(request["ciphertexts"]),
            path=str(request["path"]), n=int(request["n"]), n_classes=int(request["n_classes"]),
        )
        serve = self.settings.serve
        logits = OutputPolicy(serve.output_top_k, serve.output_decimals).apply(logits)
        self._parts(request).write(int(request["start"]), logits)
        return {"seconds": time.perf_counter() - start}

    def report(self, request: ConfigRecord) -> dict:
        """The predictions of one (provider, task), written as CSV and JSONL; scores where the
        querier's texts have labels."""
        s = self.settings
        provider, task = str(request["provider"]), str(request["task"])
        classes = [str(c) for c in request["classes"]]
        queries = query_texts(self.settings)
        parts = self._parts(request)
        logits = parts.assemble(len(queries))
        folder = s.workdir / "predictions" / task
        result = Predictions.from_logits(queries.ids, classes, logits, score=s.ood_score,
                                         threshold=s.ood_threshold).write(folder / provider)
        parts.remove()
        return {**result.scores(queries.labels), "predictions": str(folder / f"{provider}.csv")}

    def ensemble(self, request: ConfigRecord) -> dict:
        """The mean probabilities of several providers of one task, written beside theirs."""
        s = self.settings
        task, providers = str(request["task"]), [str(p) for p in request["providers"]]
        queries = query_texts(self.settings)
        folder = s.workdir / "predictions" / task
        result = ensemble([Predictions.load(folder / p) for p in providers], score=s.ood_score,
                          threshold=s.ood_threshold)
        result.write(folder / "ensemble")
        return {**result.scores(queries.labels), "predictions": str(folder / "ensemble.csv")}

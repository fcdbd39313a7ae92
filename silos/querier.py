"""The querier: holds the CKKS secret key, fits the map under encryption, queries the providers.

Nothing it sends is plaintext: public contexts (parameters and Galois keys, never the secret key)
and ciphertexts only. Its state — the secret key, its scaled embeddings, one fitted map per
provider, decrypted logits — lives in the node's ``context.state``; its artifacts (for the
benchmark referee) in its own workdir.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from crypto import CkksKit, CrossProductPacking, SinglePlan, decrypt_logits, encrypt_queries
from silos.alignment import AffineMap, augment, fit_quality
from silos.data import write_split
from silos.embedding_cache import encode_cached
from silos.ood import OOD_LABEL, ood_metrics
from silos.output_policy import OutputPolicy
from silos.runtime import embed_queries, load_benchmark, load_encoder
from silos.saving import atomic_save_file
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
        return {"silo": s.name, "role": s.role, "model": s.encoder.model,
                "n_queries": s.corpus.n_query + s.corpus.n_ood}

    def prepare(self, request: ConfigRecord) -> dict:
        """Embed the public and query texts; create the key pair."""
        start = time.perf_counter()
        s = self.settings
        corpus, split = load_benchmark(s.corpus)
        encoder = load_encoder(s.encoder, s.cache_dir)
        fit_ix, val_ix = s.corpus.public_parts(split.public)
        texts = [corpus.texts[i] for i in split.public]
        public = encode_cached(encoder, texts, s.cache_dir)
        queries, labels = embed_queries(encoder, s.corpus, s.cache_dir)  # incl. OOD queries
        # A fixed scale keeps every encrypted sum far below the CKKS modulus (|x| <= 1 on public data).
        scale = float(np.abs(public).max()) or 1.0
        position = {index: row for row, index in enumerate(split.public)}
        x_fit = public[[position[i] for i in fit_ix]] / scale
        x_val = public[[position[i] for i in val_ix]] / scale
        put_arrays(self.state, "querier.public", x_fit=x_fit, x_val=x_val)
        put_arrays(self.state, "querier.queries", x=queries / scale, labels=labels)
        kit = CkksKit.generate(s.he)
        put_config(self.state, "querier.he", secret_key=kit.secret_key_bytes(),
                   label_names=list(corpus.label_names), dim=encoder.dim)
        s.workdir.mkdir(parents=True, exist_ok=True)
        atomic_save_file({"x_fit": x_fit, "x_val": x_val}, s.workdir / "public_embeddings.safetensors")
        atomic_save_file({"x": queries / scale, "labels": labels},
                  s.workdir / "query_embeddings.safetensors")
        write_split(s.workdir / "split.json", split, s.corpus.name)
        return {"seconds": time.perf_counter() - start, "dim": encoder.dim,
                "n_fit": len(x_fit), "n_val": len(x_val), "n_queries": len(queries),
                **{f"split_{k}": v for k, v in split.summary().items()}}

    def _kit(self) -> CkksKit:
        record = get_config(self.state, "querier.he", NOT_PREPARED)
        return CkksKit.from_secret(self.settings.he, bytes(record["secret_key"]))

    def _packing(self, n: int, d_out: int) -> CrossProductPacking:
        dim = int(get_config(self.state, "querier.he", NOT_PREPARED)["dim"])
        return CrossProductPacking.plan(n, dim + 1, d_out, self.settings.he.slots)

    # -- encrypted alignment ----------------------------------------------------------------------
    def upload(self, request: ConfigRecord) -> dict:
        """Public context + Enc(X̃) of the fit and held-out public texts, laid out for a provider
        of ``d_out`` dimensions. The context's Galois keys cover exactly the layouts' rotations."""
        start = time.perf_counter()
        d_out = int(request["d_out"])
        public = get_arrays(self.state, "querier.public", NOT_PREPARED)
        kit = self._kit()
        fit = self._packing(len(public["x_fit"]), d_out)
        reply = {"fit": fit.encrypt(kit, augment(public["x_fit"]), progress=True),
                 "d_in": fit.d_in, "n_fit": fit.n, "n_val": len(public["x_val"]), "x_bound": 1.0}
        steps = set(fit.rotation_steps)
        if len(public["x_val"]):
            val = self._packing(len(public["x_val"]), d_out)
            reply["val"] = val.encrypt(kit, augment(public["x_val"]))
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
        public = get_arrays(self.state, "querier.public", NOT_PREPARED)
        kit = self._kit()
        xty_fit = self._packing(len(public["x_fit"]), d_out).decrypt(kit, list(request["fit"]))
        xa_fit = augment(public["x_fit"])
        xtx_fit = xa_fit.T @ xa_fit
        n_fit = len(xa_fit)
        has_val = len(public["x_val"]) > 0
        s = self.settings
        # Without a held-out part (holdout=0) nothing is scored and default_alpha is used.
        candidates = s.alphas if s.select_alpha and has_val else (s.default_alpha,)
        r2, held_out_maps = {}, {}
        xtx_val, xty_val = np.zeros_like(xtx_fit), np.zeros_like(xty_fit)
        if has_val:
            xa_val = augment(public["x_val"])
            xtx_val = xa_val.T @ xa_val
            val = self._packing(len(public["x_val"]), d_out)
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
            norms = np.linalg.norm(held_out.transform(public["x_val"]), axis=1)
            rows = augment(public["x_val"]) / np.maximum(norms, 1e-12)[:, None]
            row_scale = 1.0 / max(1.0, float(np.abs(rows).max()))  # keep |row| <= 1, as for X̃
            reply["rows"] = val.encrypt(kit, rows * row_scale)
            stats.update(held_out_coef=held_out.augmented_coef(), row_scale=np.array([row_scale]))
        if has_val:
            stats["r2"] = np.array([r2[alpha]])
        put_arrays(self.state, f"querier.stats.{provider}", **stats)
        reply["seconds"] = time.perf_counter() - start
        return reply

    def finish(self, request: ConfigRecord) -> dict:
        """Held-out mean cosine of the chosen map; the final map refit on all public texts."""
        start = time.perf_counter()
        provider = str(request["provider"])
        d_out = int(request["d_out"])
        stats = get_arrays(self.state, f"querier.stats.{provider}",
                           f"no alignment statistics for provider {provider!r} (send 'select')")
        alpha = float(stats["alpha"][0])
        public = get_arrays(self.state, "querier.public", NOT_PREPARED)
        n_fit, n_val = len(public["x_fit"]), len(public["x_val"])
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
        final.save(self.settings.workdir / "maps" / provider)
        put_arrays(self.state, f"querier.map.{provider}", coef=final.coef_,
                   intercept=final.intercept_)
        del self.state[f"querier.stats.{provider}"]
        return {"alpha": alpha, "r2": r2, "cosine": cosine, "d_in": final.coef_.shape[0],
                "d_out": d_out, "seconds": time.perf_counter() - start}

    # -- encrypted inference ----------------------------------------------------------------------
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
        z = queries[first:stop] @ fitted["coef"] + fitted["intercept"]
        kit = self._kit()
        reply = {"ciphertexts": encrypt_queries(kit, z, path=path, n_classes=n_classes),
                 "n": stop - first, "path": path}
        if request.get("with_context", False):
            steps = (SinglePlan(z.shape[1], n_classes, kit.slots).rotation_steps
                     if request.get("rotations", False) else [])
            reply["context"] = kit.public_bytes(steps)
        reply["seconds"] = time.perf_counter() - start
        return reply

    def decrypt(self, request: ConfigRecord) -> dict:
        start = time.perf_counter()
        provider = str(request["provider"])
        logits = decrypt_logits(
            self._kit(), list(request["ciphertexts"]),
            path=str(request["path"]), n=int(request["n"]), n_classes=int(request["n_classes"]),
        )
        serve = self.settings.serve
        logits = OutputPolicy(serve.output_top_k, serve.output_decimals).apply(logits)
        key = f"querier.logits.{provider}"
        batches = get_arrays(self.state, key, "") if key in self.state else {}
        batches[f"{int(request['start']):09d}"] = logits
        put_arrays(self.state, key, **batches)
        return {"seconds": time.perf_counter() - start}

    def report(self, request: ConfigRecord) -> dict:
        """Accuracy of the decrypted predictions; the logits are written for the referee."""
        provider = str(request["provider"])
        classes = list(request["classes"])
        batches = get_arrays(self.state, f"querier.logits.{provider}",
                             f"no decrypted logits for provider {provider!r}")
        logits = np.concatenate([batches[k] for k in sorted(batches)])
        queries = get_arrays(self.state, "querier.queries", NOT_PREPARED)
        names = list(get_config(self.state, "querier.he", NOT_PREPARED)["label_names"])
        known = queries["labels"] != OOD_LABEL
        unknown = {names[y] for y in queries["labels"][known]} - set(classes)
        if unknown:
            raise ValueError(f"provider {provider!r} has no class for labels {sorted(unknown)}")
        truth = np.asarray([classes.index(names[y]) if y != OOD_LABEL else OOD_LABEL
                            for y in queries["labels"]])
        if len(logits) != len(truth):
            raise ValueError(f"{len(logits)} decrypted predictions for {len(truth)} queries")
        predicted = logits.argmax(axis=1)
        out = self.settings.workdir / "logits"
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_file({"logits": logits, "truth": truth}, out / f"{provider}.safetensors")
        del self.state[f"querier.logits.{provider}"]
        reply = {"encrypted_accuracy": float((predicted[known] == truth[known]).mean()),
                 "n": int(known.sum())}
        if not known.all():  # OOD scores of the decrypted logits, computed here, by the querier
            reply.update({f"ood_{k}_encrypted": v for k, v in ood_metrics(logits, truth).items()})
            reply["n_ood"] = int((~known).sum())
        return reply


"""The benchmark referee: plaintext references for each pair, from the silos' own artifacts.

Only a benchmark on one machine can do this: it reads every silo's workdir (the querier's map and
predictions, the provider's head) and embeds every role's texts with both silos' models (through
the embedding cache the silos filled), including the querier's texts with the provider's model for
the native scores. In the protocol no party sees these together. Nothing here feeds back into the
run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from crypto.params import CKKSParams
from silos.alignment import AffineMap
from silos.head import LinearHead
from silos.ood import OOD_LABEL, ood_metrics
from silos.predictions import Predictions
from silos.runtime import embed, public_space, query_texts
from silos.settings import SiloSettings, node_settings
from strategy.table import markdown_table


def pair_inputs(cfg: dict, pair: dict, node_configs: dict[str, dict] | None = None) -> dict:
    """Everything a plaintext reference of one pair needs: both silos' scaled embeddings of the
    public texts (fit and held-out parts) and of the querier's texts, the querier's map, the
    provider's head, the decrypted predictions and the truth (``OOD_LABEL``: no class of it).
    ``node_configs``: a deployment's (each silo names its own data there)."""
    config = OmegaConf.create(cfg)
    q, p = (node_settings(config, {"silo": name, **(node_configs or {}).get(name, {})})
            if node_configs else SiloSettings.from_config(config, name)
            for name in (pair["querier"], pair["provider"]))
    task = pair["task"]
    queries = query_texts(q)
    fitted = AffineMap.load(q.workdir / "maps" / f"{p.name}.safetensors")
    head = LinearHead.load(p.workdir / "heads" / f"{task}.safetensors")
    x_public, y_public = public_space(q), public_space(p)
    labels = queries.labels or [OOD_LABEL] * len(queries)
    truth = np.asarray([head.classes_.index(y) if y in head.classes_ else OOD_LABEL
                        for y in labels])
    return {
        "x_fit": x_public["fit"], "x_val": x_public["val"], "y_fit": y_public["fit"],
        "y_val": y_public["val"], "map": fitted, "head": head, "truth": truth,
        "x": embed(q.encoder, queries.texts, q.cache_dir) / fitted.provenance_["scale"],
        "native_x": embed(p.encoder, queries.texts, p.cache_dir) / head.provenance_["scale"],
        "decrypted": Predictions.load(q.workdir / "predictions" / task / p.name),
        "labelled": queries.labels is not None,
    }


def referee_pair(cfg: dict, pair: dict, node_configs: dict[str, dict] | None = None) -> dict:
    """Accuracies of the native, encrypted, aligned and plaintext-fit paths, and their agreement."""
    inputs = pair_inputs(cfg, pair, node_configs)
    head, encrypted_fit, truth = inputs["head"], inputs["map"], inputs["truth"]
    plaintext_fit = AffineMap(alpha=encrypted_fit.alpha).fit(
        np.vstack([inputs["x_fit"], inputs["x_val"]]), np.vstack([inputs["y_fit"], inputs["y_val"]]))
    known = truth != OOD_LABEL  # OOD queries have no class: accuracies count the others
    reference = head.decision_function(encrypted_fit.transform(inputs["x"]))  # float64
    plain = head.decision_function(plaintext_fit.transform(inputs["x"]))
    native = head.decision_function(inputs["native_x"])
    encrypted = inputs["decrypted"].logits
    relative = np.linalg.norm(encrypted_fit.coef_ - plaintext_fit.coef_) / np.linalg.norm(
        plaintext_fit.coef_)
    r2, cosine = held_out_quality(encrypted_fit.alpha, inputs)
    figures = {
        "plaintext_r2": r2,
        "plaintext_cosine": cosine,
        "agreement": float((encrypted.argmax(1) == reference.argmax(1)).mean()),
        # Over the logits the querier kept (its output policy may drop some: -inf).
        "max_abs_error": float(np.abs(encrypted - reference)[np.isfinite(encrypted)].max()),
        "map_relative_error": float(relative),
    }
    if inputs["labelled"] and known.any():
        figures.update({
            "native_accuracy": float((native.argmax(1) == truth)[known].mean()),
            "aligned_accuracy": float((reference.argmax(1) == truth)[known].mean()),
            "plaintext_fit_accuracy": float((plain.argmax(1) == truth)[known].mean()),
        })
    if inputs["labelled"] and known.any() and not known.all():
        for name, logits in (("native", native), ("aligned", reference)):
            figures.update({f"ood_{k}_{name}": v for k, v in ood_metrics(logits, truth).items()})
    return figures


def held_out_quality(alpha: float, inputs: dict) -> tuple[float, float]:
    """R² and mean cosine on the held-out public texts, in plaintext: what the protocol reports."""
    if not len(inputs["x_val"]):
        return float("nan"), float("nan")
    predicted = AffineMap(alpha).fit(inputs["x_fit"], inputs["y_fit"]).transform(inputs["x_val"])
    target = inputs["y_val"].astype(np.float64)
    r2 = 1 - ((predicted - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()
    cosine = np.sum(predicted * target, axis=1) / (
        np.linalg.norm(predicted, axis=1) * np.linalg.norm(target, axis=1))
    return float(r2), float(cosine.mean())


def memory_by_silo(output_dir: Path, run_id: int | None = None) -> dict[str, dict]:
    """Each silo's resident memory from its ``messages.jsonl``: the peak over its messages, the
    peak per action, and per action every message's peak and its growth over the memory the
    process held when the message started (in order: to see whether it grows with batches).

    ``run_id``: keep only that run's lines (every run into one output folder appends to the same
    files, and a silo left out of this run still has its folder); None keeps every line.
    """
    memory = {}
    for log in sorted((output_dir / "silos").glob("*/messages.jsonl")):
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        records = [r for r in records if "peak_rss_mib" in r
                   and (run_id is None or r.get("run_id") == run_id)]
        if not records:
            continue
        per_message: dict[str, list[float]] = {}
        growth: dict[str, list[float]] = {}
        for r in records:
            per_message.setdefault(r["action"], []).append(r["peak_rss_mib"])
            if r.get("start_rss_mib") is not None:
                growth.setdefault(r["action"], []).append(
                    round(r["peak_rss_mib"] - r["start_rss_mib"], 1))
        memory[log.parent.name] = {
            "peak_rss_mib": max(r["peak_rss_mib"] for r in records),
            "peak_rss_mib_by_action": {a: max(v) for a, v in per_message.items()},
            "per_message": per_message,
            "growth_per_message": growth,
        }
    return memory


def build_report(output_dir: Path, run: dict, command: str, *,
                 node_configs: dict[str, dict] | None = None, referee: bool = True) -> dict:
    """Merge the run summary with the referee's figures (unless ``referee`` is off); write
    report.json and report.md. ``node_configs``: a deployment's, whose silos name their own
    data."""
    pairs = []
    for pair in run["pairs"]:
        pair = dict(pair)
        if pair.get("status") == "ok" and referee:
            pair.update(referee_pair(run["config"], pair, node_configs))
        pairs.append(pair)
    cfg = run.get("config", {})
    memory = memory_by_silo(output_dir, run.get("run_id"))
    silos = run.get("silos", {})
    report = {
        "command": command,
        "run_id": run.get("run_id"),
        "tasks": sorted({p["task"] for p in pairs if p.get("task")}),
        "pairs": [{"n_public": silos.get(p["querier"], {}).get("n_public"), **p} for p in pairs],
        "ensembles": run.get("ensembles", []),
        "silos": silos,
        "errors": run.get("errors", []),
        "seconds": run.get("seconds", {}),
        "memory": memory,
        "config": cfg,
    }
    (output_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (output_dir / "report.md").write_text(render_markdown(report))
    return report


def _no_pair_completed(report: dict) -> list[str]:
    """What a report says instead of its tables when no (querier, provider) pair ran: why."""
    silos = report.get("silos", {})
    lines = ["**No pair completed**: no (querier, provider) pair ran."]
    if report["errors"]:
        lines += ["", "Why (the silos' and the coordinator's errors):",
                  *[f"- {e}" for e in report["errors"]]]
    else:
        roles = {role: [name for name, s in silos.items() if s.get("role") == role]
                 for role in ("querier", "provider")}
        lines += ["", f"Why: the silos that answered were {roles['querier'] or 'no querier'} "
                  f"(queriers) and {roles['provider'] or 'no provider'} (providers), and a pair "
                  "needs one of each (and, with `pairs`, a listed one)."]
    return lines


def _n_public(report: dict) -> str:
    counts = {s.get("n_public") for s in report.get("silos", {}).values() if s.get("n_public")}
    return "/".join(str(n) for n in sorted(counts)) or "—"


def _ensembles(report: dict) -> list[str]:
    lines = []
    for e in report.get("ensembles", []):
        if e.get("status") != "ok":
            lines.append(f"- {e['querier']} · {e['task']}: ensemble failed: {e.get('error')}")
        elif "beats_best" in e:
            lines.append(f"- {e['querier']} · {e['task']}: the ensemble of "
                         f"{', '.join(e['providers'])} scores {e['accuracy']:.3f}, the best "
                         f"single provider {e['best_single']:.3f}: it "
                         f"{'beats' if e['beats_best'] else 'does not beat'} it "
                         f"({e['predictions']})")
        else:
            lines.append(f"- {e['querier']} · {e['task']}: ensemble of "
                         f"{', '.join(e['providers'])}: {e['predictions']} (unlabelled texts)")
    return ["Ensembles (mean probabilities of the providers of one task):", *lines, ""] \
        if lines else []


def _maps(report: dict) -> list[str]:
    lines = [f"- {p['querier']} → {p['provider']}: {p['map']} ({p.get('map_why', '')}); "
             f"predictions: {p.get('predictions')}" + (
                 f"; resumed {p['n_resumed']} answered queries" if p.get("n_resumed") else "")
             for p in report["pairs"] if p.get("status") == "ok"]
    return ["Maps and predictions:", *lines, ""] if lines else []


def render_markdown(report: dict) -> str:
    """The run's Markdown report: the pairs' tables, or why no pair completed."""
    cfg = report["config"]
    he = cfg.get("he", {})
    lines = [
        "# Secure cross-silo inference: run report",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Tasks: {', '.join(report['tasks']) or '—'}; public texts "
        f"{_n_public(report)} (the map is fit on {1 - cfg['alignment']['holdout']:.0%} and "
        f"scored on the rest, then refit on all); CKKS N={he.get('poly_modulus_degree')}, "
        f"moduli {he.get('coeff_mod_bit_sizes')}, query scale 2^{he.get('input_scale_bits')}, "
        f"fit scale 2^{he.get('fit_input_scale_bits')}; batch size "
        f"{cfg['serve']['batch_size']} (path: {cfg['serve']['path']}).",
        "",
        *(["**INSECURE: he.allow_insecure=true and the CKKS parameters are below 128-bit "
           "security (HE Standard). Experiments only.**", ""]
          if he.get("allow_insecure") and "poly_modulus_degree" in he
          and not CKKSParams.from_config(he).is_secure else []),
    ]
    if not report["pairs"]:  # no table at all: an empty one renders as a broken `|  |`
        return "\n".join([*lines, *_no_pair_completed(report), ""])
    if not any(p.get("status") == "ok" for p in report["pairs"]):
        lines += ["**No pair completed**: every pair failed (why: \"Failed pairs\" below).", ""]
    lines += [
        markdown_table(report["pairs"]),
        "",
        "- native: the provider's head on its own embeddings of the query texts (no alignment).",
        "- plain-fit: the map fit in plaintext on the same public texts (what encryption must not "
        "cost); aligned: the map fit through the encrypted protocol, evaluated in float64.",
        "- encrypted: labels from the logits the querier decrypted; agreement: encrypted vs float64 "
        "predictions; max |err|: encrypted vs float64 logits.",
        "- ms/query: encrypt + evaluate + decrypt compute, amortised over the batch; KiB/query: "
        "query and logit ciphertexts, amortised (the public context is sent once per pair).",
        "",
        "| pair | status | alpha | map rel. error | fit context KiB | align MiB up | align s "
        "| serve context KiB | serve wall ms/query |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["pairs"]:
        lines.append(
            f"| {p['querier']} → {p['provider']} | {p.get('status')} {p.get('error', '')} | "
            f"{p.get('alpha', '—')} | {p.get('map_relative_error', float('nan')):.1e} | "
            f"{p.get('context_bytes', 0) / 1024:.0f} | {p.get('align_bytes_up', 0) / 2**20:.1f} | "
            f"{p.get('seconds', {}).get('align', 0):.1f} | "
            f"{p.get('serve_context_bytes', 0) / 1024:.1f} | "
            f"{p.get('wall_ms_per_query', float('nan')):.2f} |"
        )
    lines += ["", *_maps(report), *_ensembles(report)]
    seconds = report.get("seconds", {})
    if report.get("memory"):
        lines += ["", "Peak resident memory per message, MiB (messages.jsonl; simulated silos share "
                  "a worker process, so each figure includes it): " + "; ".join(
                      f"{silo} {m['peak_rss_mib']:.0f} (" + ", ".join(
                          f"{a} {v:.0f}" for a, v in m["peak_rss_mib_by_action"].items()) + ")"
                      for silo, m in report["memory"].items())]
    lines += ["", "Phase wall times (s): " + ", ".join(
        f"{k} {v:.1f}" for k, v in seconds.items()), ""]
    failed = [p for p in report["pairs"] if p.get("status") != "ok"]
    if failed:  # what failed, by pair; the other pairs' results above stand
        lines += ["Failed pairs:", *[f"- {p['querier']} → {p['provider']}: {p.get('error')}"
                                     for p in failed], ""]
    resent = [(p, r) for p in report["pairs"] for r in p.get("resent", [])]
    if resent:
        lines += ["Resent requests (timeouts or Flower errors, then retried):",
                  *[f"- {p['querier']} → {p['provider']}: {r}" for p, r in resent], ""]
    if report["errors"]:
        lines += ["Errors:", *[f"- {e}" for e in report["errors"]], ""]
    return "\n".join(lines)

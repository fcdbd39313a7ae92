"""The benchmark referee: plaintext references for each pair, from the silos' own artifacts.

Only a benchmark on one machine can do this: it reads every silo's workdir (the querier's map,
embeddings and decrypted logits; the provider's head and embeddings). In the protocol no party
sees these together. Nothing here feeds back into the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from crypto.params import CKKSParams
from silos.alignment import AffineMap
from silos.head import LinearHead
from silos.ood import OOD_LABEL, ood_metrics
from strategy.table import markdown_table


def referee_pair(output_dir: Path, pair: dict) -> dict:
    """Accuracies of the encrypted, aligned and plaintext-fit paths, and their agreement."""
    q_dir = output_dir / "silos" / pair["querier"]
    p_dir = output_dir / "silos" / pair["provider"]
    queries = load_file(q_dir / "query_embeddings.safetensors")
    decrypted = load_file(q_dir / "logits" / f"{pair['provider']}.safetensors")
    head = LinearHead.load(p_dir / "head")
    encrypted_fit = AffineMap.load(q_dir / "maps" / pair["provider"])
    x_public = load_file(q_dir / "public_embeddings.safetensors")
    y_public = load_file(p_dir / "public_embeddings.safetensors")
    plaintext_fit = AffineMap(alpha=encrypted_fit.alpha).fit(
        np.vstack([x_public["x_fit"], x_public["x_val"]]),
        np.vstack([y_public["y_fit"], y_public["y_val"]]),
    )
    truth = decrypted["truth"]
    known = truth != OOD_LABEL  # OOD queries have no class: accuracies count the others
    reference = head.decision_function(encrypted_fit.transform(queries["x"]))  # float64
    plain = head.decision_function(plaintext_fit.transform(queries["x"]))
    encrypted = decrypted["logits"]
    relative = np.linalg.norm(encrypted_fit.coef_ - plaintext_fit.coef_) / np.linalg.norm(
        plaintext_fit.coef_)
    r2, cosine = held_out_quality(encrypted_fit.alpha, x_public, y_public)
    figures = {
        "plaintext_r2": r2,
        "plaintext_cosine": cosine,
        "aligned_accuracy": float((reference.argmax(1) == truth)[known].mean()),
        "plaintext_fit_accuracy": float((plain.argmax(1) == truth)[known].mean()),
        "encrypted_accuracy": float((encrypted.argmax(1) == truth)[known].mean()),
        "agreement": float((encrypted.argmax(1) == reference.argmax(1)).mean()),
        # Over the logits the querier kept (its output policy may drop some: -inf).
        "max_abs_error": float(np.abs(encrypted - reference)[np.isfinite(encrypted)].max()),
        "map_relative_error": float(relative),
    }
    if not known.all():
        native = load_file(p_dir / "native_logits.safetensors")
        for name, logits, labels in (("native", native["logits"], native["truth"]),
                                     ("aligned", reference, truth)):
            figures.update({f"ood_{k}_{name}": v for k, v in ood_metrics(logits, labels).items()})
    return figures


def held_out_quality(alpha: float, x: dict, y: dict) -> tuple[float, float]:
    """R² and mean cosine on the held-out public texts, in plaintext: what the protocol reports."""
    if not len(x["x_val"]):
        return float("nan"), float("nan")
    predicted = AffineMap(alpha).fit(x["x_fit"], y["y_fit"]).transform(x["x_val"])
    target = y["y_val"].astype(np.float64)
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


def build_report(output_dir: Path, run: dict, command: str) -> dict:
    """Merge the run summary with the referee's figures; write report.json and report.md."""
    pairs = []
    for pair in run["pairs"]:
        pair = dict(pair)
        if pair.get("status") == "ok":
            pair.update(referee_pair(output_dir, pair))
        pairs.append(pair)
    cfg = run.get("config", {})
    dataset = cfg.get("dataset", {})
    memory = memory_by_silo(output_dir, run.get("run_id"))
    report = {
        "command": command,
        "run_id": run.get("run_id"),
        "task": dataset.get("name"),
        "pairs": [{"task": dataset.get("name"), "n_public": dataset.get("n_public"), **p}
                  for p in pairs],
        "silos": run.get("silos", {}),
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


def render_markdown(report: dict) -> str:
    """The run's Markdown report: the pairs' tables, or why no pair completed."""
    cfg = report["config"]
    he = cfg.get("he", {})
    lines = [
        "# Secure cross-silo inference: run report",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Task: {report['task']}, public texts {cfg['dataset']['n_public']} (the map is fit on "
        f"{1 - cfg['alignment']['holdout']:.0%} and scored on the rest, then refit on all), "
        f"provider's private texts {cfg['dataset']['n_private']}, queries "
        f"{cfg['dataset']['n_query']}; CKKS N={he.get('poly_modulus_degree')}, "
        f"moduli {he.get('coeff_mod_bit_sizes')}, query scale 2^{he.get('input_scale_bits')}, "
        f"fit scale 2^{he.get('fit_input_scale_bits')}; batch size "
        f"{cfg['serve']['batch_size']} (single path up to {cfg['serve']['single_max']}).",
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

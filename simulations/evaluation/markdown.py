"""The suite's README.md: what was measured, by which command, with tables and the figures."""

from __future__ import annotations


def _f(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def main_table(summary: dict) -> str:
    """Per pair and task: native vs aligned vs encrypted accuracy, OOD AUROC (MSP), latency."""
    ood = {(r["task"], r["querier_model"], r["provider_model"]): r
           for r in summary.get("ood", []) if r["score"] == "msp"}
    lines = ["| task | querier → provider | native | querier's own head | aligned | encrypted "
             "| agreement | unaligned | OOD AUROC native / aligned / encrypted (MSP) "
             "| ms/query | KiB/query |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.get("classification", []):
        pair = f"{r['querier_model']} → {r['provider_model']}"
        if r.get("status") != "ok":
            lines.append(f"| {r['task']} | {pair} | failed: {r.get('error', '')} |"
                         + " |" * 9)
            continue
        o = ood.get((r["task"], r["querier_model"], r["provider_model"]))
        auroc = (f"{o['auroc_native']:.3f} / {o['auroc_aligned']:.3f} / {o['auroc_encrypted']:.3f}"
                 if o else "—")
        lines.append(
            f"| {r['task']} | {pair} | {_f(r['native_accuracy'])} | "
            f"{_f(r['querier_own_accuracy'])} | {_f(r['aligned_accuracy'])} | "
            f"{_f(r['encrypted_accuracy'])} | {_f(r['agreement'], 4)} | "
            f"{_f(r['unaligned_accuracy'])} | {auroc} | {r['latency_ms_per_query']:.2f} | "
            f"{r['bytes_per_query'] / 1024:.1f} |")
    return "\n".join(lines)


README_START, README_END = "<!-- evaluation:start -->", "<!-- evaluation:end -->"


def readme_block(summary: dict) -> str:
    """The project README's main table, naming the command and where the rest is."""
    run = summary.get("experiments", {}).get("classification", {})
    runs = summary.get("classification_runs", {})
    he = next(iter(runs.values()), {}).get("he", {})
    c = summary.get("config", {}).get("classification", {})
    return "\n".join([
        README_START,
        f"Measured by `{run.get('command')}` on this machine "
        f"({run.get('seconds', 0) / 60:.0f} min for this part; full report, figures and raw "
        "figures in [reports/evaluation](../reports/evaluation/README.md)). Each task: "
        f"{c.get('n_public')} public texts for the encrypted fit, {c.get('n_private')} private "
        f"texts for the provider's head, {c.get('n_query')} queries + {c.get('n_ood')} OOD texts "
        f"of the other corpus; CKKS N={he.get('poly_modulus_degree')}, moduli "
        f"{he.get('coeff_mod_bit_sizes')}.",
        "",
        main_table(summary),
        "",
        README_END,
    ])


def _convergence(summary: dict) -> list[str]:
    rows = summary.get("convergence", [])
    if not rows:
        return []
    largest = max(r["n_public"] for r in rows)
    lines = [f"At the largest public set ({largest} fit texts; {summary.get('convergence_texts')} "
             "texts in all, the rest held out):", "",
             "| A → B | CKA | ridge R² | ridge cosine | retrieval ridge / lstsq / Procrustes |",
             "|---|---|---|---|---|"]
    for a, b in sorted({(r["model_a"], r["model_b"]) for r in rows}):
        mine = {r["method"]: r for r in rows if (r["model_a"], r["model_b"]) == (a, b)
                and r["n_public"] == largest}
        if "ridge" not in mine:
            continue
        retrieval = " / ".join(_f(mine[m]["top1_retrieval"]) if m in mine else "—"
                               for m in ("ridge", "lstsq", "procrustes"))
        lines.append(f"| {a} → {b} | {_f(mine['ridge']['cka'])} | {_f(mine['ridge']['r2'])} | "
                     f"{_f(mine['ridge']['cosine'])} | {retrieval} |")
    return [*lines, "", "![convergence](convergence.png)", ""]


def _generation(summary: dict) -> list[str]:
    g = summary.get("generation")
    if not g:
        return []
    lines = [f"Token-level ridge maps fit on {g['n_fit_texts']} {g['corpus']} texts, scored on "
             f"{g['n_test_texts']} others at the positions where both models have read the same "
             "characters.", "",
             "| A → B | tokenizer match | top-1 agreement | top-5 | top-1 (all paired) "
             "| median ppl under B: cross / B's own |", "|---|---|---|---|---|---|"]
    for d in g["directions"]:
        lines.append(f"| {d['model_a']} → {d['model_b']} | {_f(d['tokenizer_match_rate'])} | "
                     f"{_f(d['top1_agreement'])} | {_f(d['top5_agreement'])} | "
                     f"{_f(d['top1_agreement_all_pairs'])} | "
                     f"{_f(d['median_cross_perplexity'], 1)} / {_f(d['median_own_perplexity'], 1)} |")
    lines += ["", "Greedy continuations (cross: A's states through the map and B's head; own: B "
              "alone), sorted by the cross perplexity under B — best first:", ""]
    for d in g["directions"]:
        lines += [f"**{d['model_a']} → {d['model_b']}**", "",
                  "| prompt | cross | ppl | B's own | ppl |", "|---|---|---|---|---|"]
        for e in sorted(d["examples"], key=lambda e: e["cross_perplexity"]):
            def cell(text: str) -> str:
                return text.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {cell(e['prompt'])} | {cell(e['cross'])} | "
                         f"{_f(e['cross_perplexity'], 1)} | {cell(e['own'])} | "
                         f"{_f(e['own_perplexity'], 1)} |")
        lines.append("")
    c = g["encrypted_head"]
    lines += [f"B's LM head under CKKS ({c['vocab']:,} vocabulary rows): a {c['slice_rows']}-row "
              f"slice took {c['slice_seconds'] * 1e3:.0f} ms per token (encrypt "
              f"{c['encrypt_s'] * 1e3:.0f}, evaluate {c['evaluate_s'] * 1e3:.0f}, decrypt "
              f"{c['decrypt_s'] * 1e3:.0f}; max |err| {c['slice_max_abs_error']:.1e}, relative "
              f"{c.get('slice_max_relative_error', float('nan')):.1e}); the whole "
              f"head, extrapolated: ~{c['estimated_seconds_per_token']:.1f} s and "
              f"~{c['estimated_mib_per_token']:.0f} MiB per generated token.", ""]
    return lines


def _tradeoffs(summary: dict) -> list[str]:
    rows = summary.get("tradeoffs", [])
    if not rows:
        return []
    lines = ["| d | path | N | moduli | security | query scale | ms/query | KiB/query | context KiB "
             "| max \\|err\\| | agreement | Pareto |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['d']} | {r['path']}{' B=' + str(r['batch']) if r['path'] == 'batched' else ''} | "
            f"{r.get('N', '—')} | {r.get('coeff_mod_bit_sizes', '—')} | {r['security_bits']} | "
            f"{'2^' + str(r['input_scale_bits']) if 'input_scale_bits' in r else '—'} | "
            f"{r['latency_ms_per_query']:.3f} | {r['bytes_per_query'] / 1024:.1f} | "
            f"{r['context_bytes'] / 1024:.0f} | {r['max_abs_error']:.1e} | "
            f"{r['argmax_agreement']:.3f} | {'yes' if r['pareto'] else ''} |")
    return [*lines, "", *_preset_choice(rows), "![trade-offs](tradeoffs.png)", ""]


def _preset_choice(rows: list[dict]) -> list[str]:
    """Why the default preset (conf/default.yaml's he.preset): its cost against the others at its
    own input scale, from this sweep's rows."""
    from conf import load_config

    he = load_config().he
    n, scale = int(he.poly_modulus_degree), int(he.input_scale_bits)
    single = [r for r in rows if r["path"] == "single" and r.get("input_scale_bits") == scale]
    by_n = {}
    for r in single:
        by_n.setdefault(r["N"], []).append(r["latency_ms_per_query"])
    if n not in by_n:
        return []
    base = sum(by_n[n]) / len(by_n[n])
    errors: dict[int, float] = {}
    for r in rows:
        if r["path"] == "single" and r.get("N") == n:
            bits = r["input_scale_bits"]
            errors[bits] = max(errors.get(bits, 0.0), r["max_abs_error"])
    scales = ", ".join(f"2^{b}: {e:.0e}" for b, e in sorted(errors.items()))
    others = "; ".join(f"N={m} ({next(r['security_bits'] for r in single if r['N'] == m)}-bit) "
                       f"{sum(v) / len(v) / base:.1f}× its latency" for m, v in sorted(by_n.items())
                       if m != n)
    chain = "-".join(str(b) for b in he.coeff_mod_bit_sizes)
    return [f"The default preset is `{he.preset}` (N={n}, moduli {chain}, "
            f"{next(r['security_bits'] for r in single if r['N'] == n)}-bit): the smallest ring that "
            f"holds both the encrypted fit (all {len(he.coeff_mod_bit_sizes) - 1} data primes) and "
            f"the query product at 2^{scale} with errors far below 1e-3; "
            f"{others or 'no larger preset measured'}. Query scales at N={n} (single path, max "
            f"|err| over dims): {scales}.", ""]


def render(summary: dict) -> str:
    machine = summary.get("machine", {})
    runs = [f"{name}: `{e['command']}` ({e['seconds']:.0f} s, load average "
            f"{e['load_average_before']:.1f} at its start)"
            for name, e in summary.get("experiments", {}).items()]
    lines = [
        "# The paper's evaluation, reproduced on this machine",
        "",
        f"Every figure and table here comes from these commands, on {machine.get('cpus')} CPUs "
        "(raw figures: `summary.json` and the CSVs beside this file):",
        "",
        *[f"- {r}" for r in runs],
        "",
        "## Classification and OOD detection (encrypted, through the Flower simulation)",
        "",
        "Every ordered pair of different models, on each packaged task: the map fit through the "
        "encrypted protocol on the task's public texts, the querier's queries served under CKKS. "
        "native = the provider's head on its own embeddings; querier's own head = the same labels "
        "and head type on the querier's embeddings (what the provider's labelled data is worth); "
        "unaligned = the provider's head on the querier's raw embeddings (zero-padded/truncated). "
        "OOD queries: texts of the other corpus, or, in a task with held-out classes, the query "
        "texts of a class the provider's head never saw; AUROC from the max softmax probability of the "
        "decrypted logits (energy and max logit in `ood.csv`). ms/query: encrypt + evaluate + "
        "decrypt compute, amortised over the batch.",
        "",
        main_table(summary),
        "",
        "![classification](classification.png)",
        "",
        "![ood](ood.png)",
        "",
        "## Representation convergence",
        "",
        *_convergence(summary),
        "## Cross-model generation",
        "",
        *_generation(summary),
        "## Privacy / latency trade-offs of the encrypted head",
        "",
        *_tradeoffs(summary),
    ]
    return "\n".join(lines) + "\n"

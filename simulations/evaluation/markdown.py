"""The suite's README.md: what was measured, by which command, with tables and the figures."""

from __future__ import annotations

from simulations.evaluation.stats import fmt_ci


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
    lines = ["| task | querier → provider | native [95 %] | querier's own head | aligned "
             "| encrypted [95 %] | agreement | unaligned "
             "| OOD AUROC native / aligned / encrypted [95 %] (MSP) "
             "| ms/query | KiB/query |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.get("classification", []):
        pair = f"{r['querier_model']} → {r['provider_model']}"
        if r.get("status") != "ok":
            lines.append(f"| {r['task']} | {pair} | failed: {r.get('error', '')} |"
                         + " |" * 9)
            continue
        o = ood.get((r["task"], r["querier_model"], r["provider_model"]))
        auroc = (f"{o['auroc_native']:.3f} / {o['auroc_aligned']:.3f} / "
                 f"{_ci(o, 'auroc_encrypted')}" if o else "—")
        lines.append(
            f"| {r['task']} | {pair} | {_ci(r, 'native_accuracy')} | "
            f"{_f(r['querier_own_accuracy'])} | {_f(r['aligned_accuracy'])} | "
            f"{_ci(r, 'encrypted_accuracy')} | {_f(r['agreement'], 4)} | "
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


def _skipped(skipped: dict[str, str]) -> list[str]:
    """A paragraph per model an experiment could not run on, with why (what to install)."""
    return [line for model, why in skipped.items() for line in (f"**{model}: skipped** — {why}", "")]


def _generation(summary: dict) -> list[str]:
    g = summary.get("generation")
    if not g:
        return []
    lines = _skipped(g.get("skipped", {}))
    lines += [f"Token-level ridge maps fit on {g['n_fit_texts']} {g['corpus']} texts, scored on "
             f"{g['n_test_texts']} others at the positions where both models have read the same "
             "characters.", "",
             "| A → B | tokenizer match | top-1 agreement [95 %] | top-5 [95 %] | top-1 (all paired) "
             "| median ppl under B: cross / B's own |", "|---|---|---|---|---|---|"]
    for d in g["directions"]:
        lines.append(f"| {d['model_a']} → {d['model_b']} | {_f(d['tokenizer_match_rate'])} | "
                     f"{_ci(d, 'top1_agreement')} | {_ci(d, 'top5_agreement')} | "
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


def _ci(row: dict, key: str, digits: int = 3) -> str:
    return fmt_ci(row.get(key), row.get(f"{key}_ci"), digits)


def _span(row: dict, key: str) -> str:
    """mean (lowest – highest pair)."""
    if row.get(key) is None:
        return "—"
    return f"{row[key]:.3f} ({row[f'{key}_min']:.2f}–{row[f'{key}_max']:.2f})"


def _domain(summary: dict) -> list[str]:
    table = summary.get("table2", [])
    if not table:
        return []
    texts = summary.get("domain_texts", {})
    models = summary.get("config", {}).get("domain", {}).get("models", [])
    lines = [f"Every ordered pair of {len(models)} models ({', '.join(models)}); per task "
             f"{table[0]['n_queries']} queries, the provider's head trained on "
             f"{texts.get(table[0]['task'] + '/private', '?')} private texts. Each cell: the mean "
             "over pairs (lowest–highest pair). ÷ native: aligned accuracy over the provider's "
             "native accuracy on the same queries; ÷ in-domain: over the same pair's in-domain "
             "aligned accuracy, the paper's comparison. Each pair's 95 % bootstrap intervals are "
             "in `domain.csv` and the per-pair table below.", ""]
    for corpus, why in summary.get("domain_skipped", {}).items():
        lines += [f"**{corpus}: skipped** — {why}", ""]
    lines += ["| task | public set | n public | aligned ÷ native | aligned ÷ in-domain "
              "| aligned acc | native acc | held-out R² | top-1 retrieval | OOD AUROC aligned "
              "(native) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        auroc = (f"{_span(r, 'auroc_aligned')} ({r['auroc_native']:.3f})"
                 if r.get("auroc_aligned") is not None else "—")
        lines.append(f"| {r['task']} | {r['condition']} | {r['n_public']} | {_span(r, 'ratio')} | "
                     f"{_span(r, 'vs_in_domain')} | {_span(r, 'aligned_accuracy')} | "
                     f"{_span(r, 'native_accuracy')} | {_span(r, 'r2')} | "
                     f"{_span(r, 'retrieval')} | {auroc} |")
    paper = summary.get("paper_table2", {})
    if paper:
        lines += ["", "The paper's Table 2 (accuracy %: map fitted in-domain → on public data of "
                  "another domain → that + 128 in-domain texts) and its ratios to the in-domain "
                  "figure, to compare with our ÷ in-domain column:", "",
                  "| paper task | in-domain | cross | cross + 128 | cross ÷ in-domain "
                  "| (cross + 128) ÷ in-domain |", "|---|---|---|---|---|---|"]
        for task, (first, cross, plus) in paper.items():
            lines.append(f"| {task} | {first} | {cross} | {plus} | {cross / first:.3f} | "
                         f"{plus / first:.3f} |")
    lines += ["", "![table 2](table2.png)", "", "Per pair (95 % bootstrap intervals over the "
              "queries):", "", "| task | public set | querier → provider | aligned ÷ native "
              "| aligned acc | native acc | OOD AUROC aligned | R² | retrieval |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.get("domain", []):
        lines.append(f"| {r['task']} | {r['condition']} | {r['querier_model']} → "
                     f"{r['provider_model']} | {_ci(r, 'ratio')} | {_ci(r, 'aligned_accuracy')} "
                     f"| {_ci(r, 'native_accuracy')} | {_ci(r, 'auroc_aligned')} | "
                     f"{r['r2']:.3f} | {_ci(r, 'retrieval')} |")
    return [*lines, ""]


def _control(summary: dict) -> list[str]:
    table = {(r["task"], r["condition"]): r for r in summary.get("table2", [])}
    tasks = sorted({t for t, c in table if c == "control:shuffled"})
    if not tasks:
        return []
    lines = ["The in-domain fit against the same fit with the querier's public rows shuffled "
             "(no text paired with itself). Mean over pairs (lowest–highest pair); chance: "
             "retrieval 1/n queries, accuracy the majority class's share.", "",
             "| task | fit | held-out R² | top-1 retrieval | aligned accuracy | chance retrieval "
             "| majority class |", "|---|---|---|---|---|---|---|"]
    for task in tasks:
        for cond in ("in-domain", "control:shuffled"):
            r = table[(task, cond)]
            lines.append(f"| {task} | {cond} | {_span(r, 'r2')} | {_span(r, 'retrieval')} | "
                         f"{_span(r, 'aligned_accuracy')} | {r['chance_retrieval']:.4f} | "
                         f"{r['majority_accuracy']:.3f} |")
    return [*lines, "", "![control](control.png)", ""]


def _scale(summary: dict) -> list[str]:
    rows = summary.get("scale", [])
    if not rows:
        return []
    params = summary.get("scale_params", {})
    lines = _skipped(summary.get("scale_skipped", {}))
    lines += [f"{summary.get('scale_texts')} texts ({', '.join(summary.get('scale_lists', []))}), "
             f"{rows[0]['n_test']} held out; ridge with alpha picked on a fifth of the fit texts. "
             "Control: the fit texts' rows of A shuffled. Parameters (from the checkpoints): "
             + ", ".join(f"{m} {n / 1e6:.0f}M" for m, n in params.items()) + ".", "",
             "| A → B | CKA (control) | R² [95 %] (control) | top-1 retrieval [95 %] (control) |",
             "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (min(r["params_a"], r["params_b"]), r["model_a"])):
        lines.append(f"| {r['model_a']} → {r['model_b']} | {r['cka']:.3f} ({r['cka_control']:.3f})"
                     f" | {_ci(r, 'r2')} ({r['r2_control']:.3f}) | {_ci(r, 'retrieval')} "
                     f"({r['retrieval_control']:.3f}) |")
    lines += ["", "![scale](scale.png)", ""]
    classified = summary.get("scale_classification", [])
    if classified:
        lines += [f"Classification for the pairs with a Qwen model ({classified[0]['task']}, the "
                  f"in-domain fit of Table 2, {classified[0]['n_queries']} queries; plaintext "
                  "path, 95 % bootstrap intervals):", "",
                  "| querier → provider | native acc | aligned acc | aligned ÷ native "
                  "| OOD AUROC aligned (native) | R² | retrieval |", "|---|---|---|---|---|---|---|"]
        for r in classified:
            auroc = (f"{_ci(r, 'auroc_aligned')} ({r['auroc_native']:.3f})"
                     if r.get("auroc_aligned") is not None else "—")
            lines.append(f"| {r['querier_model']} → {r['provider_model']} | "
                         f"{_ci(r, 'native_accuracy')} | {_ci(r, 'aligned_accuracy')} | "
                         f"{_ci(r, 'ratio')} | {auroc} | {r['r2']:.3f} | {_ci(r, 'retrieval')} |")
        lines.append("")
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
    refused = [f"- refused: {r['path']}, d={r['d']}, {r['preset']} at 2^{r['input_scale_bits']}: "
               f"{r['reason']}" for r in summary.get("tradeoffs_refused", [])]
    return [*lines, "", *refused, *([""] if refused else []), *_preset_choice(rows),
            "![trade-offs](tradeoffs.png)", ""]


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
    runs = [f"{name}: `{e['command']}` — skipped: {e['skipped']}" if "skipped" in e else
            f"{name}: `{e['command']}` ({e['seconds']:.0f} s, load average "
            f"{e['load_average_before']:.1f} at its start"
            + (f", {e['load_average_after']:.1f} at its end)" if "load_average_after" in e else ")")
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
        "The configured (querier, provider) pairs (`classification.pairs`; none: every ordered "
        "pair of `models`), on each configured task: the map fit through the encrypted protocol "
        "on the task's public texts, the querier's queries served under CKKS. "
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
        "## Table 2: public data from another domain (plaintext, the product's own fitting path)",
        "",
        *_domain(summary),
        "## Random-pairing control",
        "",
        *_control(summary),
        "## Scale: convergence against parameter count",
        "",
        *_scale(summary),
        "## Cross-model generation",
        "",
        *_generation(summary),
        "## Privacy / latency trade-offs of the encrypted head",
        "",
        *_tradeoffs(summary),
    ]
    return "\n".join(lines) + "\n"

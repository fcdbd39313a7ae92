"""The paper's evaluation suite: convergence, classification, OOD, generation, privacy/latency.

    python -m simulations.evaluate                 # everything (18 min on 2 idle cores, caches cold)
    python -m simulations.evaluate --quick         # two models, small sets (2.5 min): CI's test
    python -m simulations.evaluate --only generation,tradeoffs generation.new_tokens=40

KEY=VALUE pairs override conf/evaluation.yaml. Writes README.md, summary.json, CSVs and PNGs into
``output_dir`` (reports/evaluation); the simulations' silo folders go to ``runs_dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from omegaconf import DictConfig, OmegaConf

from conf import CONF_DIR, dotlist, load_config, refuse_unknown_keys
from silos.registry import ModelNotInstalledError
from simulations.evaluation import classification, convergence, figures, tradeoffs
from simulations.evaluation.embeddings import embed_lists, task_texts
from simulations.tables import write_csv

EXPERIMENTS = ("classification", "convergence", "domain", "scale", "generation", "tradeoffs")


def load_evaluation_config(overrides: list[str], quick: bool) -> DictConfig:
    """conf/evaluation.yaml (its ``quick`` section merged over it for ``--quick``) with the
    overrides, every key checked as ``conf.load_config`` checks the run config's."""
    base = OmegaConf.load(CONF_DIR / "evaluation.yaml")
    quick_section = base.pop("quick")
    if quick:
        base = OmegaConf.merge(base, quick_section)
    cli = dotlist(overrides)
    refuse_unknown_keys(cli, base, "conf/evaluation.yaml", open_keys=("classification.tasks",))
    return OmegaConf.merge(base, cli)


def _experiments(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = set(names) - set(EXPERIMENTS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown experiments {sorted(unknown)}; choose from "
                                         f"{','.join(EXPERIMENTS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.evaluate",
        description="Reproduce the paper's evaluation on the packaged models, through the "
        "product's silos, strategy and crypto: representation convergence, encrypted "
        "classification and OOD detection for every ordered model pair on both packaged tasks, "
        "cross-model generation between the causal LMs, and the CKKS privacy/latency trade-off.",
        epilog="defaults and every key: conf/evaluation.yaml",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides (OmegaConf dotlist), e.g. models=[minilm-l6,mpnet-base]")
    parser.add_argument("--quick", action="store_true",
                        help="two models and small sets: a ~3 minute smoke run (CI)")
    parser.add_argument("--readme", action="store_true",
                        help="also rewrite the main table in docs/evaluation.md")
    parser.add_argument("--only", type=_experiments, default=list(EXPERIMENTS),
                        metavar="A,B", help=f"run only these experiments, comma-separated, of "
                        f"{','.join(EXPERIMENTS)} (summary.json keeps the others' last results)")
    return parser.parse_args(argv)


def _tasks(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """The configured tasks (``tasks.NAME=null`` removes one)."""
    return [(task, spec) for task, spec in cfg.classification.tasks.items() if spec is not None]


def run_classification(cfg: DictConfig, command: str) -> dict:
    c = cfg.classification
    rows, ood, runs = [], [], {}
    for task, spec in _tasks(cfg):
        print(f"[classification] {task}: "
              f"{list(map(list, c.pairs)) if c.get('pairs') else 'every ordered pair'} of "
              f"{list(cfg.models)} (one Flower simulation)", flush=True)
        run_dir = Path(cfg.runs_dir) / task
        report, seconds = classification.run_task(
            str(spec.get("dataset", task)), spec.get("ood"), models=list(cfg.models),
            n_public=int(c.n_public), n_private=int(c.n_private), n_query=int(c.n_query),
            n_ood=int(c.n_ood), seed=int(cfg.seed), cache_dir=str(cfg.cache_dir), run_dir=run_dir,
            extra=list(c.overrides), holdout_classes=list(spec.get("holdout_classes", [])),
            pairs=[(str(q), str(p)) for q, p in c.get("pairs") or []] or None,
            dtypes={str(k): str(v) for k, v in (c.get("dtype") or {}).items()})
        task_rows, task_ood = classification.rows(report, run_dir, task)
        rows += task_rows
        ood += task_ood
        runs[task] = {"seconds": seconds, "errors": report["errors"],
                      "he": {k: report["config"]["he"].get(k) for k in
                             ("preset", "poly_modulus_degree", "coeff_mod_bit_sizes")}}
        print(f"  {task}: {sum(r.get('status') == 'ok' for r in task_rows)}/{len(task_rows)} "
              f"pairs ok in {seconds:.0f} s", flush=True)
    out = Path(cfg.output_dir)
    figures.classification_figure(rows, out / "classification.png", command)
    if ood:
        figures.ood_figure(ood, out / "ood.png", command)
    return {"classification": rows, "ood": ood, "classification_runs": runs}


def run_convergence(cfg: DictConfig, command: str) -> dict:
    c = cfg.classification
    lists: dict[str, list[str]] = {}
    for task, spec in _tasks(cfg):  # the texts the classification simulations embedded
        texts = task_texts(str(spec.get("dataset", task)), spec.get("ood"),
                           n_public=int(c.n_public), n_private=int(c.n_private),
                           n_query=int(c.n_query), n_ood=int(c.n_ood) if spec.get("ood") else 0,
                           seed=int(cfg.seed))
        lists.update({f"{task}/{part}": part_texts for part, part_texts in texts.items()})
    cv = cfg.convergence
    if cv.extra_texts:  # more public text than the classification runs embedded (costs embedding)
        from silos.data import load_corpus

        corpus = load_corpus(str(cv.extra_corpus))
        pick = np.random.default_rng(int(cfg.seed) + 4).permutation(len(corpus))[: cv.extra_texts]
        lists["extra"] = [corpus.texts[i] for i in np.sort(pick)]
    order, seen = [], set()
    for name, texts in lists.items():  # each distinct text once (OOD texts recur across tasks)
        for i, text in enumerate(texts):
            if text not in seen:
                seen.add(text)
                order.append((name, i))
    embeddings = {}
    for model in cfg.models:
        print(f"[convergence] embeddings of {len(order)} texts by {model}", flush=True)
        arrays = embed_lists(model, lists, Path(cfg.cache_dir).expanduser())
        embeddings[model] = np.stack([arrays[name][i] for name, i in order])
    rows = convergence.convergence_rows(
        embeddings, sizes=list(cv.sizes), n_test=int(cv.n_test), methods=list(cv.methods),
        ridge_alphas=[float(a) for a in cv.ridge_alphas], seed=int(cfg.seed))
    figures.convergence_figure(rows, Path(cfg.output_dir) / "convergence.png", command)
    from silos.runtime import load_encoder

    load_encoder.cache_clear()  # the four encoders hold ~2.5 GB the generation needs
    return {"convergence": rows, "convergence_texts": len(order)}


def domain_specs(cfg: DictConfig, models: list[str]):
    """The encoder of each model in the domain and scale experiments: the silos' defaults, with
    ``domain.max_length`` and the per-model ``domain.dtype`` (bfloat16 for the large causal LMs)."""
    from simulations.evaluation.embeddings import encoder_spec

    d = cfg.domain
    dtypes = dict(d.get("dtype") or {})
    return {m: dataclasses.replace(encoder_spec(m), max_length=int(d.max_length),
                                   dtype=str(dtypes.get(m, "float32"))) for m in models}


def _domain_embeddings(cfg: DictConfig, models: list[str], lists: list[str] | None = None):
    from simulations.evaluation import domain

    d = cfg.domain
    corpora = {str(name): dict(sizes) for name, sizes in d.corpora.items() if sizes is not None}
    pool = domain.build_pool(corpora, int(cfg.seed))
    for corpus, why in pool.skipped.items():
        print(f"[domain] skipping {corpus}: {why}", flush=True)
    emb = domain.embed_pool(pool, domain_specs(cfg, models), Path(cfg.cache_dir).expanduser(),
                            log=lambda m: print(m, flush=True), lists=lists)
    return pool, emb


def run_domain(cfg: DictConfig, command: str) -> dict:
    """Table 2 and the random-pairing control, every ordered pair of ``domain.models``."""
    from conf import load_config
    from simulations.evaluation import domain

    d, defaults = cfg.domain, load_config()
    models = list(d.models)
    pool, emb = _domain_embeddings(cfg, models)
    pairs = [(a, b) for a in models for b in models if a != b]
    rows = []
    for task, spec in d.tasks.items():
        if spec is None:
            continue
        conds = domain.conditions(list(spec.cross), [int(k) for k in d.k_in_domain], pool.skipped)
        rows += domain.run_task(
            str(task), spec.get("ood"), conds, emb, pool.labels, pairs=pairs,
            alphas=[float(a) for a in defaults.alignment.alphas],
            holdout=float(defaults.alignment.holdout), head_l2=float(defaults.head.l2),
            head_max_iter=int(defaults.head.max_iter), seed=int(cfg.seed),
            log=lambda m: print(m, flush=True))
    summary = domain.summary_rows(rows)
    figures.domain_figure(summary, Path(cfg.output_dir) / "table2.png", command)
    figures.control_figure(rows, Path(cfg.output_dir) / "control.png", command)
    return {"domain": rows, "table2": summary, "domain_skipped": pool.skipped,
            "domain_texts": {k: len(v) for k, v in pool.texts.items()},
            "paper_table2": domain.PAPER_TABLE2}


def installed(models) -> tuple[list[str], dict[str, str]]:
    """The models whose packages are here, and why each other is not: an experiment runs on
    what is installed and names what to install for the rest (the optional Qwen extras)."""
    from silos.registry import check_model

    present, missing = [], {}
    for model in dict.fromkeys(str(m) for m in models):
        try:
            check_model(model)
            present.append(model)
        except ModelNotInstalledError as err:
            missing[model] = str(err)
            print(f"  skipping {model}: {err}", flush=True)
    return present, missing


def run_scale(cfg: DictConfig, command: str) -> dict:
    """Convergence among ``scale.models`` against parameter count, on the domain pool's texts."""
    from conf import load_config
    from simulations.evaluation import domain, scale

    sc, defaults = cfg.scale, load_config()
    models, skipped = installed(sc.models)
    if len(models) < 2:
        raise ModelNotInstalledError("; ".join(skipped.values()) or "scale.models names fewer "
                                     "than two models")
    task, ood = str(sc.task), sc.get("ood")
    lists = [str(name) for name in sc.lists]
    task_lists = [f"{task}/public", f"{task}/private", f"{task}/query",
                  *([f"{ood}/extra"] if ood else [])]
    pool, emb = _domain_embeddings(cfg, models, lists)  # every model: the convergence texts
    # Classification for the pairs of a `scale.classify` model with it or a domain model: the
    # in-domain fit of Table 2 on the same texts (the domain models' embeddings are cache hits).
    chosen = [str(m) for m in sc.get("classify") or [] if str(m) in models]
    partners = [*chosen, *(str(m) for m in cfg.domain.models if m not in chosen)]
    _, extra = _domain_embeddings(cfg, partners if chosen else [], task_lists)
    for m, arrays in extra.items():
        emb.setdefault(m, {}).update(arrays)
    lists = [name for name in lists if name in pool.texts]
    stacked = {m: np.vstack([emb[m][name] for name in lists]) for m in models}
    cache = Path(cfg.cache_dir).expanduser()
    params = {m: scale.parameter_count(m, cache) for m in models}
    alphas = [float(a) for a in defaults.alignment.alphas]
    rows = scale.scale_rows(stacked, params, n_test=int(sc.n_test), alphas=alphas,
                            seed=int(cfg.seed))
    figures.scale_figure(rows, params, Path(cfg.output_dir) / "scale.png", command)
    pairs = [(a, b) for a in partners for b in partners
             if a != b and (a in chosen or b in chosen)]
    classified = domain.run_task(
        task, ood, [domain.Condition("in-domain")], emb, pool.labels, pairs=pairs, alphas=alphas,
        holdout=float(defaults.alignment.holdout), head_l2=float(defaults.head.l2),
        head_max_iter=int(defaults.head.max_iter), seed=int(cfg.seed),
        log=lambda m: print(m, flush=True)) if pairs else []
    return {"scale": rows, "scale_params": params, "scale_lists": lists, "scale_skipped": skipped,
            "scale_texts": len(next(iter(stacked.values()))), "scale_classification": classified}


def generation_prompts(corpus, rest: np.ndarray, n: int) -> list[str]:
    prompts = ["The government said", "In the match on Saturday,"][:n]
    return prompts + [" ".join(corpus.texts[i].split()[:8]) for i in rest[: n - len(prompts)]]


def run_generation(cfg: DictConfig) -> dict:
    from silos.data import load_corpus
    from simulations.evaluation import generation

    g = cfg.generation
    cache = Path(cfg.cache_dir).expanduser()
    corpus = load_corpus(str(g.corpus))
    order = np.random.default_rng(int(cfg.seed) + 3).permutation(len(corpus))
    fit = [corpus.texts[i] for i in order[: g.n_fit_texts]]
    test = [corpus.texts[i] for i in order[g.n_fit_texts: g.n_fit_texts + g.n_test_texts]]
    prompts = generation_prompts(corpus, order[g.n_fit_texts + g.n_test_texts:], int(g.n_prompts))
    present, skipped = installed(m for pair in g.pairs for m in pair)
    pairs = [(str(a), str(b)) for a, b in g.pairs  # each a direction A → B
             if str(a) in present and str(b) in present]
    if not pairs:
        raise ModelNotInstalledError("; ".join(skipped.values()))
    dtypes = dict(g.get("dtype") or {})
    lms, states = {}, {}
    for name in dict.fromkeys(m for pair in pairs for m in pair):
        print(f"[generation] loading {name} ({dtypes.get(name, 'float32')})", flush=True)
        lms[name] = generation.CausalLM(name, cache, max_tokens=int(g.max_tokens),
                                        dtype=str(dtypes.get(name, "float32")))
        states[name] = generation.all_states(lms[name], {"fit": fit, "test": test})
    directions = []
    for first, second in pairs:
        print(f"[generation] {first} → {second}", flush=True)
        started = time.perf_counter()
        directions.append(generation.run_direction(
            lms[first], lms[second], states, prompts, alpha=float(g.alpha),
            new_tokens=int(g.new_tokens)))
        directions[-1]["seconds"] = time.perf_counter() - started
    main = directions[0]
    a, b = lms[pairs[0][0]], lms[pairs[0][1]]
    mapped = main.pop("mapping").transform(states[a.name]["test"][0].states)
    for d in directions[1:]:
        d.pop("mapping")
    print(f"[generation] {b.name}'s LM head under CKKS: a {g.encrypted_slice}-row slice", flush=True)
    cost = generation.encrypted_head_cost(b, mapped, int(g.encrypted_slice), dict(load_config().he))
    summary = {k: v for k, v in main.items() if k != "examples"}
    return {"generation": {**summary, "directions": directions, "encrypted_head": cost,
                           "corpus": str(g.corpus), "n_fit_texts": len(fit), "skipped": skipped,
                           "n_test_texts": len(test)}}


def run_tradeoffs(cfg: DictConfig, command: str) -> dict:
    t = cfg.tradeoffs
    print("[tradeoffs] presets × scales × dims × paths", flush=True)
    rows, refused = tradeoffs.tradeoff_rows(
        presets=list(t.presets), input_scale_bits=list(t.input_scale_bits), dims=list(t.dims),
        classes=int(t.classes), batch=int(t.batch), reps=int(t.reps), seed=int(cfg.seed))
    figures.tradeoff_figure(rows, Path(cfg.output_dir) / "tradeoffs.png", command)
    return {"tradeoffs": rows, "tradeoffs_refused": refused}


def _flat(row: dict) -> dict:
    """A row for CSV: each 95 % interval ``x_ci`` as two columns ``x_ci_low``, ``x_ci_high``."""
    out = {}
    for key, value in row.items():
        if key.endswith("_ci") and isinstance(value, list | tuple) and len(value) == 2:
            out[f"{key}_low"], out[f"{key}_high"] = value
        else:
            out[key] = value
    return out


def _run(name: str, cfg: DictConfig, command: str) -> dict:
    if name == "classification":
        return run_classification(cfg, command)
    if name == "convergence":
        return run_convergence(cfg, command)
    if name == "domain":
        return run_domain(cfg, command)
    if name == "scale":
        return run_scale(cfg, command)
    if name == "generation":
        return run_generation(cfg)
    return run_tradeoffs(cfg, command)


def write_reports(summary: dict, out: Path) -> None:
    """summary.json, one CSV per table and README.md in ``out``."""
    from simulations.evaluation.markdown import render

    summary.pop("seconds", None)
    for key in ("classification", "ood", "convergence", "domain", "table2", "scale",
                "scale_classification", "tradeoffs"):
        if summary.get(key):
            write_csv(out / f"{key}.csv", [_flat(r) for r in summary[key]])
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "README.md").write_text(render(summary))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_evaluation_config(args.overrides, args.quick)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    command = " ".join(["python -m simulations.evaluate", *(["--quick"] if args.quick else []),
                        *([f"--only {','.join(args.only)}"] if len(args.only) < len(EXPERIMENTS) else []),
                        *args.overrides])
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    experiments = summary.get("experiments", {})  # each experiment's last run: command, time
    started = time.perf_counter()
    failed_experiments = []
    for name in args.only:
        t0, load = time.perf_counter(), os.getloadavg()[0]
        try:
            summary.update(_run(name, cfg, command))
        except ModelNotInstalledError as err:  # an optional model (make install-qwen): say so
            print(f"[{name}] skipped: {err}", flush=True)
            experiments[name] = {"command": command, "skipped": str(err)}
        except Exception as err:  # the others still run; the exit status says so
            traceback.print_exc()
            print(f"[{name}] failed: {err!r}", flush=True)
            experiments[name] = {"command": command, "failed": repr(err)}
            failed_experiments.append(name)
        else:
            experiments[name] = {"command": command, "seconds": time.perf_counter() - t0,
                                 "load_average_before": load,
                                 "load_average_after": os.getloadavg()[0]}
            print(f"[{name}] done in {experiments[name]['seconds']:.0f} s", flush=True)
        # Written after every experiment: a later one's failure loses nothing measured before it.
        summary.update(command=command, seconds_this_command=time.perf_counter() - started,
                       experiments=experiments, quick=args.quick,
                       machine={"cpus": os.cpu_count(), "platform": platform.platform()},
                       config=OmegaConf.to_container(cfg))
        write_reports(summary, out)
    total = time.perf_counter() - started
    if args.readme:
        from simulations.bench_crypto import update_readme
        from simulations.evaluation.markdown import README_END, README_START, readme_block

        update_readme(Path("docs/evaluation.md"), readme_block(summary), README_START, README_END)
    print(f"\nwrote {out / 'README.md'} and {summary_file} ({total:.0f} s)")
    failed = [r for r in summary.get("classification", []) if r.get("status") != "ok"]
    return 1 if failed or failed_experiments else 0


if __name__ == "__main__":
    sys.exit(main())

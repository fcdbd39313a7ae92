"""The coordinator's Flower ServerApp: runs the AlignmentCoordinator, writes ``run.json``, prints a table."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf

from conf import CONF_DIR, load_config
from crypto.cost import CostModel, choose_path, seconds_per_byte
from crypto.head import PATHS
from crypto.params import CKKSParams
from strategy.coordinator import AlignmentCoordinator
from strategy.polling import PollingGrid
from strategy.table import format_table

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_coordinator(PollingGrid(grid), load_config(str(context.run_config.get("overrides", ""))),
                    run_id=context.run_id)


def path_chooser(cfg: DictConfig):
    """How the coordinator picks each request's path: ``serve.path`` fixed, or (auto) the path
    the calibrated cost model (``serve.cost_model``) predicts cheaper, the bytes weighed at
    ``serve.link_mbit_s``."""
    path = str(cfg.serve.path)
    if path in PATHS:
        return lambda d, k, n, first: path
    if path != "auto":
        raise ValueError(f"serve.path must be auto, single or batched, got {path!r}")
    model_file = Path(str(cfg.serve.cost_model))
    model = CostModel.load(model_file if model_file.is_absolute() else CONF_DIR / model_file)
    params, per_byte = CKKSParams.from_config(cfg.he), seconds_per_byte(float(cfg.serve.link_mbit_s))
    try:
        model.calibration(params)
    except KeyError as err:  # parameters nobody calibrated (an experiment): the batched path
        warnings.warn(f"serve.path=auto: {err.args[0]}; every request takes the batched path",
                      stacklevel=2)
        return lambda d, k, n, first: "batched"
    return lambda d, k, n, first: choose_path(d, k, n, model=model, params=params,
                                              seconds_per_byte=per_byte, count_context=first)


def run_coordinator(grid: Grid, cfg: DictConfig, *, run_id: int | None = None) -> dict:
    """Run the whole protocol over ``grid``; the summary is also written to output_dir/run.json.

    ``run_id`` (Flower's, the same on every silo) is recorded so that the report keeps only this
    run's lines of the silos' ``messages.jsonl``, which every run into the same folder appends to.
    """
    coordinator = AlignmentCoordinator.from_config(cfg, path_chooser(cfg))
    summary = {"run_id": run_id, **coordinator.start(grid)}
    summary["config"] = OmegaConf.to_container(cfg, resolve=True)
    out = Path(str(cfg.run.output_dir)).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(summary, indent=2, default=str))
    print("\nCoordinator's view (encrypted results only):", flush=True)
    print(format_table(summary["pairs"]), flush=True)
    for error in summary["errors"]:
        print(f"error: {error}", flush=True)
    for pair in summary["pairs"]:
        if pair["status"] != "ok":
            print(f"failed: {pair['querier']} → {pair['provider']}: {pair['error']}", flush=True)
    print(predictions_summary(summary), flush=True)
    return summary


def predictions_summary(summary: dict) -> str:
    """Where the querier wrote each pair's predictions (and each ensemble's), with its scores."""
    lines = ["\nPredictions (written by the querier, on its own disk):"]
    for item in [*summary["pairs"], *summary.get("ensembles", [])]:
        if item.get("status") != "ok":
            continue
        who = item.get("provider") or "ensemble of " + ", ".join(item["providers"])
        score = item.get("encrypted_accuracy", item.get("accuracy"))
        scored = "" if score is None else f"  (accuracy {score:.3f})"
        lines.append(f"  {item['querier']} · {item['task']} · {who}: {item['predictions']}{scored}")
    for item in summary.get("ensembles", []):
        if "beats_best" in item:
            lines.append(f"  ensemble {'beats' if item['beats_best'] else 'does not beat'} the "
                         f"best single provider ({item['accuracy']:.3f} vs "
                         f"{item['best_single']:.3f})")
    return "\n".join(lines)

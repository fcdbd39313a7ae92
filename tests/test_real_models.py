"""The packaged MiniLM → MPNet pair on BBC News, end to end through Flower (minutes)."""

import json

import pytest

from silos.client_app import app as client_app
from simulations.engine import simulate
from simulations.report import build_report
from strategy.server_app import app as server_app


@pytest.mark.slow
def test_minilm_to_mpnet_on_bbc_news(tmp_path):
    out = tmp_path / "out"
    simulate(server_app, client_app, num_silos=2,
             overrides=["silos.carol=null", f"run.output_dir={out}"])
    report = build_report(out, json.loads((out / "run.json").read_text()), "pytest -m slow")
    (pair,) = report["pairs"]
    assert pair["status"] == "ok", pair.get("error")
    assert (pair["querier_model"], pair["provider_model"]) == ("minilm-l6", "mpnet-base")
    assert pair["native_accuracy"] >= 0.9  # the provider's head works on its own embeddings
    assert pair["aligned_accuracy"] >= 0.9 * pair["native_accuracy"]
    assert pair["agreement"] == 1.0
    assert pair["max_abs_error"] <= 1e-3
    assert pair["map_relative_error"] <= 1e-4

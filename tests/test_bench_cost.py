"""The cost benchmark (--quick: d = 16, small axes) runs the product and measures what it does."""

import csv
import json

import pytest

from simulations.bench_cost import COLUMNS, exponents, main, slope


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bench_cost")
    out = root / "out"
    assert main(["--quick", "--out", str(out), "--work", str(root / "work")]) == 0
    return {"out": out, "result": json.loads((out / "cost.json").read_text())}


def points(result: dict, axis: str) -> list[dict]:
    return sorted((r for r in result["points"] if r["axis"] == axis), key=lambda r: r["value"])


def test_serving_grows_linearly_with_queries_and_the_stored_map_is_reused(quick):
    result = quick["result"]
    rows = points(result, "queries")
    assert [r["queries"] for r in rows] == [4096, 8192, 16384]
    assert all(r["n_served"] == r["queries"] for r in rows)
    # Whole groups of 4,096 slots: bytes ∝ queries, but for the serving context sent once.
    e = result["exponents"]["queries"]
    assert 0.85 <= e["serve_bytes"]["exponent"] <= 1.1, e["serve_bytes"]
    assert e["serve_s"]["exponent"] > 0.5, e["serve_s"]
    # Align once, serve many: the base run fitted the map, every point reused it.
    assert result["base_run"]["maps"] == "fitted" and result["base_run"]["align_bytes"] > 0
    assert all(r["maps"] == "reused" and r["align_bytes"] == 0 for r in rows)
    assert e["align_bytes"]["exponent"] is None  # nothing to fit: zero bytes
    # Pipelined: a plan and the first encrypt, then per request of serve.batch_size queries an
    # evaluate and a bundle (decrypt, and the next encrypt or the report).
    for r in rows:
        requests = r["queries"] // 4096
        assert r["phases"]["serve"]["messages"] == 2 + 2 * requests
        assert requests <= r["serve_rounds"] <= r["phases"]["serve"]["messages"]


def test_providers_multiply_the_alignments_and_servings_and_rounds_are_counted(quick):
    one, two = points(quick["result"], "providers")
    assert (one["providers"], two["providers"]) == (1, 2)
    # Both providers are 64-d: the querier encrypts its public texts once for both (each provider
    # still gets them and replies), so alignment costs less than twice one provider's bytes.
    assert one["align_bytes"] < two["align_bytes"] < 2 * one["align_bytes"]
    assert two["serve_bytes"] == pytest.approx(2 * one["serve_bytes"], rel=0.01)
    assert two["messages"] > one["messages"]
    # Side by side: the second pair shares the first one's rounds; only the ensemble adds one.
    assert two["rounds"] == one["rounds"] + 1
    # However the coordinator groups its messages into rounds, each round holds at least one.
    for row in (one, two):
        assert 0 < row["rounds"] <= row["messages"] == sum(
            v["messages"] for v in row["phases"].values())
        assert row["rounds"] == len(row["rounds_detail"])
    assert "ensemble" in {a for r in two["rounds_detail"] for a in r}
    assert "ensemble" not in {a for r in one["rounds_detail"] for a in r}


def test_alignment_grows_with_the_public_texts_and_serving_does_not(quick):
    small, large = points(quick["result"], "public")
    assert small["maps"] == large["maps"] == "fitted"
    # 5,200 texts: 4,160 to fit, past one chunk of N/2 - R slots, so Enc(X̃) takes a second chunk.
    assert large["actions"]["upload"]["bytes_down"] > small["actions"]["upload"]["bytes_down"]
    assert large["align_bytes"] > small["align_bytes"]
    assert large["serve_bytes"] == pytest.approx(small["serve_bytes"], rel=1e-3)


def test_the_report_files_name_the_command_and_the_load(quick):
    out, result = quick["out"], quick["result"]
    about = result["about"]
    assert about["command"].startswith("python -m simulations.bench_cost --quick")
    report = (out / "report.md").read_text()
    assert f"`{about['command']}`" in report and about["loadavg_before"] in report
    assert "## Growth exponents" in report and "random-weight" in report
    with (out / "cost.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS and len(rows) == len(result["points"]) == 7
    assert all(r["loadavg_after"] for r in rows)
    assert (out / "cost.png").stat().st_size > 20_000
    # --render rebuilds the same report from cost.json, measuring nothing.
    before = report
    (out / "report.md").unlink()
    assert main(["--render", "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == before


def test_exponents_are_least_squares_slopes_of_logs():
    assert slope([1, 10, 100], [3, 30, 300]) == pytest.approx(1.0)
    assert slope([1, 10, 100], [5, 5, 5]) == pytest.approx(0.0)
    assert slope([1, 10], [0, 4]) is None and slope([10], [4]) is None
    rows = [{"axis": "public", "value": v, **{m: v**0.5 for m in
                                              ("wall_s", "align_s", "serve_s", "align_bytes",
                                               "serve_bytes", "total_bytes", "rounds",
                                               "messages")}} for v in (100, 400, 1600)]
    e = exponents(rows)["public"]["align_s"]
    assert e["exponent"] == pytest.approx(0.5) and e["local"] == pytest.approx([0.5, 0.5])

"""The README's figures block is generated from the committed reports and kept current."""

import csv
import json
import shutil
from pathlib import Path

from simulations.readme_figures import END, START, main, render

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_readme_matches_the_committed_reports():
    """Fails when a report changed and the README was not regenerated:
    run python -m simulations.readme_figures."""
    assert main(["--check"]) == 0
    text = (ROOT / "README.md").read_text()
    assert text.count(START) == text.count(END) == 1
    assert len(text.splitlines()) <= 200
    block = " ".join(text.split(START, 1)[1].split(END, 1)[0].split())
    for report in ("reports/crypto/README.md", "reports/align_once/report.md",
                   "reports/evaluation/README.md"):
        assert f"]({report})" in block, report  # each section links its full report
    if (ROOT / "reports" / "cost" / "cost.json").exists():
        assert "](reports/cost/report.md)" in block
        assert json.loads((ROOT / "reports/cost/cost.json").read_text())["about"]["command"] in block
    assert "python -m simulations.bench_crypto" in block and "load average" in block


def _copy(tmp_path: Path) -> tuple[Path, Path]:
    reports = tmp_path / "reports"
    shutil.copytree(ROOT / "reports", reports)
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    return readme, reports


def test_a_changed_report_makes_the_block_stale_until_regenerated(tmp_path, capsys):
    readme, reports = _copy(tmp_path)
    args = ["--readme", str(readme), "--reports", str(reports)]
    assert main([*args, "--check"]) == 0
    head = reports / "crypto" / "head.csv"
    with head.open() as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["path"] == "single" and r["d"] == "384" and r["K"] == "5"
               and r["protection"] == "on")
    row["latency_ms_per_query"] = "12345.6"
    with head.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main([*args, "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert "12,346" not in readme.read_text()
    assert main(args) == 0
    assert "| single | 384 → 5 | 1 | 12,346 |" in readme.read_text()
    assert main([*args, "--check"]) == 0
    # The text outside the block is left as it was.
    before, after = (ROOT / "README.md").read_text(), readme.read_text()
    assert before.split(START)[0] == after.split(START)[0]
    assert before.split(END)[1] == after.split(END)[1]


def test_a_new_run_of_a_benchmark_shows_its_command_and_load(tmp_path):
    readme, reports = _copy(tmp_path)
    reuse = reports / "align_once" / "reuse.json"
    data = json.loads(reuse.read_text())
    data.update(command="python -m simulations.bench_align_once --work /elsewhere",
                loadavg_before="9.99 9.99 9.99", second_seconds=42.0)
    reuse.write_text(json.dumps(data))
    block = " ".join(render(reports, readme).split())
    assert "`python -m simulations.bench_align_once --work /elsewhere`" in block
    assert "9.99 9.99 9.99" in block and "42 s against" in block
    # A report that is not there is left out, not invented.
    shutil.rmtree(reports / "align_once")
    assert "Align once, serve many" in render(ROOT / "reports", readme)
    assert "Align once, serve many" not in render(reports, readme)


def test_generation_shows_both_directions_of_a_pair_as_one():
    from simulations.readme_figures import _generation

    def direction(a: str, b: str, top1: float, match: float) -> dict:
        return {"model_a": a, "model_b": b, "top1_agreement": top1, "top5_agreement": 0.6,
                "tokenizer_match_rate": match, "median_cross_perplexity": 20.0,
                "median_own_perplexity": 3.0}

    (_, text) = _generation({"generation": {"directions": [
        direction("a", "b", 0.34, 1.0), direction("c", "a", 0.31, 0.91),
        direction("b", "a", 0.36, 1.0)]}})
    assert "a ↔ b 0.34 / 0.60 and 0.36 / 0.60 (match 1.00, ppl 20 vs 3.0)" in text
    assert "c → a 0.31 / 0.60 (match 0.91," in text  # no reverse: one direction

"""`flwr run .` on a local simulation SuperLink: no runtime dependency install, nothing left running."""

import json
import os
import subprocess
from pathlib import Path

from tiny import tiny_overrides

from deploy.local import free_port

ROOT = Path(__file__).resolve().parent.parent


def superlinks() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "flower-superlink" in line and "--port" in line]


def test_flwr_run_runs_the_app_in_this_env(tmp_path):
    before = superlinks()
    overrides = tiny_overrides(tmp_path, n_texts=200, n_public=80, n_private=60, n_query=20)
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "FLWR_PORT": str(free_port())}
    done = subprocess.run([str(ROOT / "simulations" / "flwr_run.sh"), *overrides], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [p["status"] for p in run["pairs"]] == ["ok", "ok"]
    # The apps ran in this virtual env (CPU torch): the SuperLink did not `uv sync` a new one, which
    # its streamed logs would announce ("Installing application dependencies... uv sync took").
    assert "Successfully started run" in done.stdout
    assert "uv sync" not in done.stdout + done.stderr
    assert not list((tmp_path / "flwr").glob("runtime-envs/*"))
    assert superlinks() == before, "the SuperLink the script started is still running"

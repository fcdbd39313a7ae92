"""Run the Flower app in Flower's simulation engine with a given run config, from Python.

``flwr.simulation.run_simulation`` hands the apps an empty run config, and config must reach the
apps through ``context.run_config`` (as under ``flwr run``). So this wraps the engine's own entry
point the way ``flwr-simulation`` does: a Run whose override config holds the dotlist, fused with the
``[tool.flwr.app.config]`` defaults of this project. Pinned to flwr 1.41 (pyproject).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.serverapp import ServerApp
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.telemetry import EventType

PROJECT_DIR = Path(__file__).resolve().parent.parent


def simulate(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    num_silos: int,
    overrides: list[str],
    backend: str = "ray",
    cpus_per_silo: float = 2,
    verbose: bool = False,
) -> None:
    """Run ``server_app`` against ``num_silos`` simulated SuperNodes running ``client_app``.

    Where the config names no public corpus, the benchmark preset's files are written first and
    named in the overrides (simulations/benchmark.py). Each silo logs its messages
    (``run.message_log``, for the report) unless the overrides say otherwise."""
    from conf import load_config
    from simulations.benchmark import benchmark_overrides

    overrides = ["run.message_log=true", *overrides]
    overrides = [*overrides, *benchmark_overrides(load_config(overrides))]
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs; silences a warning
    run_config = {"overrides": shlex.join(overrides)}
    run_id = generate_rand_int_from_bytes(RUN_ID_NUM_BYTES)
    run = Run.create_empty(run_id=run_id)
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    run.override_config = run_config
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(run_config))
    _run_simulation(
        num_supernodes=num_silos,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_name=backend,
        backend_config={"client_resources": {"num_cpus": cpus_per_silo, "num_gpus": 0.0},
                        "init_args": {"num_cpus": max(2, os.cpu_count() or 2)}},
        server_app_context=context,
        app_dir=str(PROJECT_DIR),
        run=run,
        is_app=True,  # only effect: node contexts get app_dir's config fused with ours
        verbose_logging=verbose,
    )

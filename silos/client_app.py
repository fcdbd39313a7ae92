"""The silo's Flower ClientApp: one ``@app.query`` handler per protocol action.

A handler resolves this node's silo from the run config (``overrides``) and node config, runs the
role's method on the node's ``context.state``, and replies. Any failure becomes an ``error`` reply
naming it; the node's state is only updated by handlers that succeed, so the silo keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from conf import load_config
from protocol import (
    PROVIDER_ACTIONS,
    QUERIER_ACTIONS,
    Action,
    error_content,
    reply_content,
)
from silos.provider import Provider
from silos.querier import Querier
from silos.runtime import load_encoder
from silos.settings import node_settings, silo_name

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from installed packages or local paths
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger(__name__)
app = ClientApp()
_handled_here = 0  # messages this process has handled (a deployed SuperNode starts one per message)


def handle(action: Action, message: Message, context: Context) -> Message:
    global _handled_here
    _handled_here += 1
    before = _memory_mib().get("rss_mib")
    _reset_peak_memory()
    started, loads = time.perf_counter(), load_encoder.cache_info().misses
    settings, name = None, _claimed_name(context)
    try:
        cfg = load_config(str(context.run_config.get("overrides", "")))
        name = _name_or(cfg, dict(context.node_config), name)
        settings = node_settings(cfg, dict(context.node_config))
        allowed = QUERIER_ACTIONS if settings.role == "querier" else PROVIDER_ACTIONS
        if action not in allowed:
            raise PermissionError(f"silo {settings.name!r} ({settings.role}) does not handle "
                                  f"{action.value!r}")
        if "request" not in message.content:
            raise ValueError("message has no 'request' record")
        role = Querier if settings.role == "querier" else Provider
        # Work on a copy: a failing handler must leave the node's state as it was.
        state = context.state.copy()
        reply = getattr(role(settings, state), action.value)(message.content["request"])
        context.state.clear()
        context.state.update(state)
        return Message(reply_content(reply), reply_to=message)
    except Exception as err:  # reported to the coordinator; the silo keeps serving
        log.exception("silo failed on %s", action.value)
        return Message(error_content(err, silo=name), reply_to=message)
    finally:
        if settings is not None:
            _record(settings.workdir, action, context.run_id, started,
                    load_encoder.cache_info().misses - loads, before)


def _claimed_name(context: Context) -> str | None:
    """The silo a deployed node says it is, before any config is read (so even a config that
    does not load can be reported under the silo's name rather than its node id)."""
    claimed = context.node_config.get("silo")
    return None if claimed is None else str(claimed)


def _name_or(cfg, node_config: dict, fallback: str | None) -> str | None:
    """This node's silo name (a simulated node's from its partition id), else ``fallback``."""
    try:
        return silo_name(cfg, node_config)
    except (KeyError, ValueError, TypeError):
        return fallback


def _reset_peak_memory() -> None:
    """Reset the process' resident-set high-water mark (Linux), so that the one read when the
    message ends is this message's peak, native (SEAL) allocations included."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _memory_mib() -> dict[str, float]:
    """Peak resident memory since the last reset (VmHWM) and the current one (VmRSS), MiB."""
    try:
        fields = dict(line.split(":", 1) for line in
                      Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {name: round(int(fields[key].split()[0]) / 1024, 1)
                for name, key in (("peak_rss_mib", "VmHWM"), ("rss_mib", "VmRSS"))}
    except (OSError, KeyError, ValueError):
        return {}


def _record(workdir: Path, action: Action, run_id: int, started: float, encoder_loads: int,
            start_rss_mib: float | None) -> None:
    """One line per message in the silo's own folder: which run and process ran it, did it load
    the LM, its resident memory when it started, its peak and when it ended.

    The file is appended to by every run that writes to this output folder (and by every process
    of a deployed run: one per message), so each line carries its run's id and the report keeps
    only its own run's lines.

    The LM is needed by ``prepare`` only (its embeddings then live in ``context.state``), so a run
    should show one encoder load per silo whatever the engine starts a process for. Simulated silos
    share a worker process but handle messages one at a time, so a message's peak is its silo's.
    """
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with (workdir / "messages.jsonl").open("a") as f:
            f.write(json.dumps({"run_id": run_id, "action": action.value, "pid": os.getpid(),
                                "nth_in_process": _handled_here, "encoder_loads": encoder_loads,
                                "seconds": round(time.perf_counter() - started, 4),
                                "start_rss_mib": start_rss_mib, **_memory_mib()}) + "\n")
    except OSError:  # bookkeeping only: never fail a message for it
        log.warning("could not record the message in %s", workdir)


def _register(action: Action) -> None:
    @app.query(action.value)
    def _handler(message: Message, context: Context) -> Message:
        return handle(action, message, context)


for _action in Action:
    _register(_action)

"""A ClientApp mod that logs each message a silo handles: which run and process ran it, whether it
loaded the LM, its resident memory when it started, its peak and when it ended.

Bookkeeping for benchmarks and tests, off the product path: it reads ``/proc`` only where the run
config switches it on (``run.message_log``; the simulation harness does). One line per message goes
to the silo's own ``messages.jsonl``, which every run into the same output folder (and every
process of a deployed run: one per message) appends to, so each line carries its run's id and the
report keeps only its own run's lines.

The LM is needed by ``prepare`` only (its embeddings then live in ``context.state``), so a run
should show one encoder load per silo whatever the engine starts a process for. Simulated silos
share a worker process but handle messages one at a time, so a message's peak is its silo's.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from protocol import actions_of
from silos.runtime import load_encoder
from silos.settings import node_settings, run_config

log = logging.getLogger(__name__)
# Messages this process has handled: a fact of the process (a deployed SuperNode starts one per
# message), not of any node, so it is not node state.
_handled_here = itertools.count(1)


def message_log(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the handler; where ``run.message_log`` is on, append this message's line."""
    try:
        cfg = run_config(context)
        on = bool(cfg.run.message_log)
    except Exception:  # a config that does not load: the handler reports it, nothing to log
        return call_next(message, context)
    if not on:
        return call_next(message, context)
    nth = next(_handled_here)
    before = _memory_mib().get("rss_mib")
    _reset_peak_memory()
    started, loads = time.perf_counter(), load_encoder.cache_info().misses
    reply = call_next(message, context)
    try:
        workdir = node_settings(cfg, dict(context.node_config)).workdir
    except Exception:  # the handler already replied with the reason
        return reply
    actions = [a.value for a in actions_of(message.metadata.message_type, message.content)]
    _append(workdir, {"run_id": context.run_id, "action": "+".join(actions), "pid": os.getpid(),
                      "nth_in_process": nth,
                      "encoder_loads": load_encoder.cache_info().misses - loads,
                      "seconds": round(time.perf_counter() - started, 4),
                      "start_rss_mib": before, **_memory_mib()})
    return reply


def _append(workdir: Path, line: dict) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with (workdir / "messages.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
    except OSError:  # bookkeeping only: never fail a message for it
        log.warning("could not record the message in %s", workdir)


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

"""Helper processes for the provider's share of a long encrypted computation.

SEAL (through ``sealapi``) holds the GIL, so a second core needs a second process. It is a fresh
interpreter (``python -m crypto.worker``), not a fork or ``multiprocessing`` child: the silos
run inside Ray or Flower worker processes, whose threads make forking unsafe and whose main module
must not be re-imported. The job and its result cross a pipe; nothing is written to disk.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from typing import Any


class Helper:
    """One helper process computing one job; ``result()`` waits for it."""

    def __init__(self, job: dict) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._process = subprocess.Popen([sys.executable, "-m", "crypto.worker"], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._output: bytes = b""
        payload = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer = threading.Thread(target=self._send, args=(payload,), daemon=True)
        self._writer.start()
        self._reader = threading.Thread(target=self._receive, daemon=True)
        self._reader.start()

    def _send(self, payload: bytes) -> None:
        try:
            self._process.stdin.write(payload)
            self._process.stdin.close()
        except BrokenPipeError:
            pass  # the helper died; result() reports it

    def _receive(self) -> None:
        self._output = self._process.stdout.read()

    def result(self) -> Any:
        self._writer.join()
        self._reader.join()
        code = self._process.wait()
        if code != 0 or not self._output:
            raise RuntimeError(f"a helper process failed (exit code {code})")
        status, value = pickle.loads(self._output)
        if status != "ok":
            raise RuntimeError(f"a helper process failed: {value}")
        return value

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()

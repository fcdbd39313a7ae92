"""Entry point of a helper process (``python -m crypto.worker``): a pickled job on stdin, the
pickled ``("ok", result)`` or ``("error", message)`` on stdout. See ``crypto.processes``."""

from __future__ import annotations

import pickle
import sys


def main() -> None:
    job = pickle.load(sys.stdin.buffer)
    try:
        from crypto.fitting import run_job

        reply = ("ok", run_job(job))
    except Exception as err:  # reported to the parent, which raises it
        reply = ("error", f"{type(err).__name__}: {err}")
    sys.stdout.buffer.write(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()

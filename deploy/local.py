"""Run the silos as real Flower deployment processes on this machine: TLS, SuperNode authentication.

    python -m deploy.local [--root DIR] [--port N] [KEY=VALUE ...]

It does what the README's "Deploying silos across machines" does on several hosts, with every host
being 127.0.0.1: make a CA and a SuperLink certificate, one key pair per silo; start
``flower-superlink`` with TLS and ``--enable-supernode-auth``; register the silos' public keys; start one
``flower-supernode`` per silo, named by ``--node-config 'silo="..."'`` with its own copy of its data
(``public``, ``queries``, ``tasks``: :func:`own_data`); ``flwr run`` the app against it;
stop every process it started, by process group and by descendant pid. Tests and
``deploy/compare_engines.py`` use :class:`Deployment` directly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEPLOY_DIR = PROJECT_DIR / "deploy"
FEDERATION = "deploy"  # the SuperLink connection's name in $FLWR_HOME/config.toml


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (tests run beside other engineers' SuperLinks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``: Flower's SuperExec starts the apps in their own sessions."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = (int(x) for x in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class Deployment:
    """A SuperLink and SuperNodes on this machine, started as separate processes, stopped by pid.

    Parameters
    ----------
    root : folder for certs/, keys/, logs/ and one FLWR_HOME per party (as if on separate hosts).
    silos : silo names, one SuperNode each.
    port : the SuperLink's single HTTPS port (Fleet, Control and Runtime APIs); free if None.
    poll_interval : seconds between a SuperExec's polls for tasks (Flower's default is 1 s).
    """

    def __init__(self, root: Path, silos: Iterable[str], *, port: int | None = None,
                 poll_interval: float | None = None) -> None:
        self.root = Path(root).resolve()
        self.silos = list(silos)
        self.port = port or free_port()
        self.poll_interval = poll_interval
        self.certs, self.keys, self.logs = (self.root / d for d in ("certs", "keys", "logs"))
        self.operator_home = self.root / "operator"  # FLWR_HOME of whoever runs `flwr`
        self.processes: dict[str, subprocess.Popen] = {}
        self.node_ports: dict[str, int] = {}
        self.node_ids: dict[str, int] = {}
        self.seen: set[int] = set()

    # -- environment ------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, home: Path) -> dict[str, str]:
        env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        if self.poll_interval is not None:
            env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(self.poll_interval)
        return env

    def credentials(self) -> None:
        """CA + server certificate for 127.0.0.1, and one SuperNode key pair per silo."""
        subprocess.run([str(DEPLOY_DIR / "make_certs.sh"), str(self.certs), "127.0.0.1"], check=True,
                       capture_output=True)
        subprocess.run([str(DEPLOY_DIR / "make_keys.sh"), str(self.keys), *self.silos], check=True,
                       capture_output=True)
        self.operator_home.mkdir(parents=True, exist_ok=True)
        (self.operator_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\n'
            f'address = "{self.address}"\nroot-certificates = "{self.certs / "ca.crt"}"\n')

    def _start(self, name: str, command: list[str], home: Path) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        home.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env(home),
                                    cwd=home, start_new_session=True)
        self.processes[name] = proc
        self.seen.add(proc.pid)
        return proc

    # -- the parties ------------------------------------------------------------------------------
    def start_superlink(self, timeout: float = 60.0) -> None:
        """TLS on its one port, only registered SuperNodes, and the apps run in this environment."""
        self._start("superlink", [
            "flower-superlink",
            "--ssl-ca-certfile", str(self.certs / "ca.crt"),
            "--ssl-certfile", str(self.certs / "server.pem"),
            "--ssl-keyfile", str(self.certs / "server.key"),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",  # else it `uv sync`s a CUDA torch per run
            "--isolation", "subprocess",
            "--host", "127.0.0.1", "--port", str(self.port),
        ], self.root / "superlink")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes["superlink"].poll() is not None:
                raise RuntimeError(f"flower-superlink exited; see {self.logs / 'superlink.log'}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"flower-superlink did not listen on {self.address} within {timeout:.0f} s")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """The operator's `flwr` CLI against this SuperLink."""
        return subprocess.run(["flwr", *args], env=self.env(self.operator_home), cwd=self.operator_home,
                              capture_output=True, text=True, timeout=timeout)

    def register(self, name: str) -> int:
        """Register a silo's public key; only then may its SuperNode connect."""
        done = self.flwr("supernode", "register", str(self.keys / f"{name}.pub"), FEDERATION,
                         "--name", name, "--format", "json")
        match = re.search(r'"node-id"\s*:\s*"?(\d+)', done.stdout) or re.search(r"(\d{6,})", done.stdout)
        if done.returncode != 0 or match is None:
            raise RuntimeError(f"registering {name} failed: {done.stdout}{done.stderr}")
        self.node_ids[name] = int(match.group(1))
        return self.node_ids[name]

    def start_supernode(self, name: str, *, key: Path | None = None, root_certificates: Path | None = None,
                        node_config: dict[str, str] | None = None, max_wait_time: float | None = None,
                        log_name: str | None = None) -> subprocess.Popen:
        """One silo's SuperNode: names its silo (and any local paths) in --node-config."""
        self.node_ports[log_name or name] = port = free_port()
        config = {"silo": name, **(node_config or {})}
        command = [
            "flower-supernode",
            "--superlink", self.address,
            "--root-certificates", str(root_certificates or self.certs / "ca.crt"),
            "--auth-supernode-private-key", str(key or self.keys / name),
            "--node-config", " ".join(f"{k}={json.dumps(str(v))}" for k, v in config.items()),
            "--host", "127.0.0.1", "--port", str(port),  # its local Runtime API, for its ClientApps
        ]
        if max_wait_time is not None:
            command += ["--max-wait-time", str(max_wait_time)]
        return self._start(log_name or name, command, self.root / f"node-{log_name or name}")

    def online(self) -> set[int]:
        done = self.flwr("supernode", "list", FEDERATION, "--format", "json")
        if "{" not in done.stdout:
            return set()
        nodes = json.loads(done.stdout[done.stdout.index("{"):]).get("nodes", [])
        return {int(n["node-id"]) for n in nodes if n.get("status") == "online"}

    def wait_online(self, names: Iterable[str], timeout: float = 90.0) -> None:
        wanted = {self.node_ids[n] for n in names}
        deadline = time.monotonic() + timeout
        while not wanted <= self.online():
            if time.monotonic() > deadline:
                raise TimeoutError(f"SuperNodes {sorted(names)} not online within {timeout:.0f} s")
            time.sleep(1.0)

    def start(self, node_configs: dict[str, dict[str, str]] | None = None) -> Deployment:
        """Credentials, SuperLink, registrations, one SuperNode per silo (with its own node
        config, e.g. its local data paths: :func:`own_data`), all online."""
        self.credentials()
        self.start_superlink()
        for name in self.silos:
            self.register(name)
            self.start_supernode(name, node_config=(node_configs or {}).get(name))
        self.wait_online(self.silos)
        return self

    def run(self, overrides: list[str], timeout: float = 1800.0) -> subprocess.CompletedProcess:
        """`flwr run` the project on this SuperLink, streaming its logs until the run ends."""
        value = shlex.join(overrides).replace("\\", "\\\\").replace('"', '\\"')
        return self.flwr("run", str(PROJECT_DIR), FEDERATION, "--stream",
                         "--run-config", f'overrides="{value}"', timeout=timeout)

    # -- stopping ---------------------------------------------------------------------------------
    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> list[int]:
        """Kill one party and everything it started (its SuperExec, its ClientApp processes)."""
        proc = self.processes[name]
        pids = [proc.pid, *descendants(proc.pid)]
        self.seen.update(pids)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        _signal(pids, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal([proc.pid], signal.SIGKILL)
            proc.wait(timeout=10)
        return pids

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every party and its descendants, SIGKILL what is left after ``grace`` seconds.

        A SuperNode that exits on its own (refused by the SuperLink) leaves its SuperExec behind for a
        moment, re-parented away from it: those are found by the ports in their command lines.
        """
        for proc in self.processes.values():
            self.seen.update([proc.pid, *descendants(proc.pid)])
        for proc in self.processes.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        _signal(self._ours(), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._ours():
            time.sleep(0.2)
        _signal(self._ours(), signal.SIGKILL)
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def _ours(self) -> list[int]:
        """Live pids of this deployment: every pid started or seen, and any process naming its ports."""
        for pid in list(self.seen):
            if _alive(pid):
                self.seen.update(descendants(pid))
        return sorted({p for p in self.seen if _alive(p)} | {pid for pid, _ in self._by_marker()})

    def _by_marker(self) -> list[tuple[int, str]]:
        ports = "|".join(str(p) for p in [self.port, *self.node_ports.values()])
        marker = re.compile(rf"{re.escape(str(self.root))}/|127\.0\.0\.1:(?:{ports})(?!\d)")
        out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        found = []
        for line in out.splitlines():
            pid, _, args = line.strip().partition(" ")
            if int(pid) != os.getpid() and _alive(int(pid)) and marker.search(args):
                found.append((int(pid), line.strip()))
        return found

    def leftovers(self) -> list[str]:
        """`ps` lines of this deployment's processes still running (none after :meth:`stop`)."""
        out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        lines = {int(line.split()[0]): line.strip() for line in out.splitlines()}
        return [lines.get(pid, str(pid)) for pid in self._ours()]

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


DATA_KEYS = ("public.source=", "silos.{silo}.queries", "silos.{silo}.task=",
             "silos.{silo}.tasks.")


def own_data(overrides: list[str], root: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Give every silo its own copy of its data, as on separate hosts: each role's file is copied
    into the silo's folder under ``root`` and named in its node config (``public``, ``queries``
    and ``task``, ``tasks``); the run config (the operator's) then names no data at all. Returns
    the run config's overrides and each silo's node config."""
    from conf import active_silos, load_config
    from silos.settings import SiloSettings

    cfg = load_config(overrides)
    configs: dict[str, dict[str, str]] = {}
    for name in active_silos(cfg):
        s = SiloSettings.from_config(cfg, name)
        folder = Path(root).resolve() / f"data-{name}"
        folder.mkdir(parents=True, exist_ok=True)

        def copy(source: str, folder: Path = folder) -> str:
            if not Path(source).is_file():  # a packaged corpus or dataset id: the same name
                return source
            target = folder / Path(source).name
            shutil.copyfile(source, target)
            return str(target)

        node = {"public": copy(s.public.source)} if s.public is not None else {}
        if s.queries is not None:
            node["queries"] = copy(s.queries.source)
        if s.task is not None:
            node["task"] = s.task
        if s.tasks:
            node["tasks"] = ",".join(f"{task}={copy(src.source)}" for task, src in s.tasks)
        configs[name] = node
    prefixes = [p.format(silo=name) for name in active_silos(cfg) for p in DATA_KEYS]
    kept = [o for o in overrides if not o.startswith(tuple(prefixes))]
    return kept, configs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local",
        description=(
            "Run the protocol through Flower's deployment engine on this machine: a SuperLink with TLS "
            "and SuperNode authentication, one registered SuperNode per configured silo, `flwr run`; "
            "then stop every process. Prints and writes the same report as simulations.run_local."
        ),
        epilog="KEY=VALUE: config overrides as for python -m simulations.run_local (conf/default.yaml)",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--root", type=Path, default=Path("outputs/deploy"),
                        help="certificates, keys, logs and FLWR_HOMEs (default: outputs/deploy)")
    parser.add_argument("--port", type=int, default=None, help="SuperLink port (default: a free one)")
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="SuperExec task poll interval in seconds (Flower's default: 1)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for the whole run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from conf import active_silos
    from simulations.run_local import load_run, report_run

    try:
        cfg, output_dir, overrides = load_run(args.overrides)
    except (KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    overrides, node_configs = own_data(overrides, args.root)
    with Deployment(args.root, active_silos(cfg), port=args.port,
                    poll_interval=args.poll_interval) as deployment:
        deployment.start(node_configs)
        print(f"SuperLink on {deployment.address} (TLS, SuperNode auth); SuperNodes online: "
              f"{deployment.node_ids}; logs in {deployment.logs}", flush=True)
        done = deployment.run(overrides, timeout=args.timeout)
        print(done.stdout[-4000:], flush=True)
    run_file = output_dir / "run.json"
    if done.returncode != 0 or not run_file.exists():
        print(f"error: `flwr run` failed (exit {done.returncode}) or wrote no {run_file}:\n"
              f"{done.stderr[-3000:]}", file=sys.stderr)
        return 1
    return report_run(output_dir, "python -m deploy.local " + " ".join(args.overrides), started,
                      node_configs=node_configs)


if __name__ == "__main__":
    sys.exit(main())

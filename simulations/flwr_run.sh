#!/usr/bin/env bash
# Run the app with `flwr run .` on a local simulation SuperLink started here, then stop it.
#
#   simulations/flwr_run.sh [KEY=VALUE ...]      (config overrides, as for simulations.run_local)
#
# Flower's self-managed local SuperLink installs the app's dependencies with `uv sync` at run time,
# which resolves torch to a multi-GB CUDA build; this SuperLink is started with
# --disable-runtime-dependency-installation so the apps run in this virtual env (CPU torch).
set -euo pipefail
cd "$(dirname "$0")/.."
export FLWR_TELEMETRY_ENABLED=0 HF_HUB_OFFLINE=1
export FLWR_HOME="${FLWR_HOME:-$PWD/.flwr}"
export PATH="$PWD/.venv/bin:$PATH"
control_port="${FLWR_PORT:-19093}"
# The silos' count, the output folder, and the benchmark preset's files (written here when the
# config names no public corpus, as simulations.run_local does), named in extra overrides.
read -r num_silos output_dir preset < <(python -c "import pathlib, shlex, sys
from conf import active_silos, load_config
from simulations.benchmark import benchmark_overrides
cfg = load_config(sys.argv[1:])
print(len(active_silos(cfg)), pathlib.Path(str(cfg.run.output_dir)).expanduser().resolve(),
      ' '.join(benchmark_overrides(cfg)))" "$@")

mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local-sim"

[superlink.local-sim]
address = "127.0.0.1:${control_port}"
insecure = true
options.num-supernodes = ${num_silos}
TOML

setsid flower-superlink --insecure --simulation --isolation subprocess \
  --disable-runtime-dependency-installation \
  --host 127.0.0.1 --port "${control_port}" \
  --log-file "$FLWR_HOME/superlink.log" > /dev/null 2>&1 &
superlink=$!
trap 'kill -- -"$superlink" 2>/dev/null || true' EXIT
for _ in $(seq 60); do
  (exec 3<>"/dev/tcp/127.0.0.1/${control_port}") 2>/dev/null && break
  sleep 0.5
done

overrides="run.message_log=true $* run.output_dir=${output_dir} ${preset}"
flwr run . local-sim --stream --run-config "overrides=\"${overrides}\""

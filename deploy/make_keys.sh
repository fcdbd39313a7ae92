#!/usr/bin/env bash
# Make one SuperNode authentication key pair per name, as Flower 1.41 expects them.
#
#   deploy/make_keys.sh OUT_DIR NAME [NAME ...]
#
# Writes OUT_DIR/NAME (the private key: OpenSSH-format ECDSA P-384, stays on that silo's host and is
# passed to `flower-supernode --auth-supernode-private-key`) and OUT_DIR/NAME.pub (the public key: the
# SuperLink's operator registers it with `flwr supernode register OUT_DIR/NAME.pub`). Existing keys are
# kept, never overwritten.
set -euo pipefail

if [[ $# -lt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  [[ $# -ge 1 && ( "$1" == "-h" || "$1" == "--help" ) ]] && exit 0
  exit 2
fi
out="$1"; shift
mkdir -p "$out"
for name in "$@"; do
  if [[ ! "$name" =~ ^[A-Za-z0-9_.-]+$ ]]; then
    echo "error: key name '$name' must be letters, digits, '_', '.' or '-'" >&2
    exit 2
  fi
  if [[ -f "$out/$name" ]]; then
    echo "kept: $out/$name"
    continue
  fi
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "secure-align supernode $name" -f "$out/$name"
  echo "made: $out/$name (private) and $out/$name.pub (register this one)"
done

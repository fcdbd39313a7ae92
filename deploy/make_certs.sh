#!/usr/bin/env bash
# Make a private CA and a SuperLink server certificate whose SANs cover the given hosts.
#
#   deploy/make_certs.sh OUT_DIR HOST [HOST ...]
#
# HOST is a DNS name or an IP address by which SuperNodes and `flwr` reach the SuperLink; localhost and
# 127.0.0.1 are always added because the SuperLink's own SuperExec connects to its Runtime API locally.
# Writes OUT_DIR/ca.crt (give it to every SuperNode and to `flwr`), OUT_DIR/server.pem and
# OUT_DIR/server.key (the SuperLink's only), and OUT_DIR/ca.key (keep offline: it can mint server
# certificates that every SuperNode trusts). An existing CA in OUT_DIR is reused, so adding a host
# re-issues only the server certificate.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
if [[ $# -lt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
  usage
  [[ $# -ge 1 && ( "$1" == "-h" || "$1" == "--help" ) ]] && exit 0
  exit 2
fi
out="$1"; shift
mkdir -p "$out"
umask 077

sans="DNS:localhost,IP:127.0.0.1"
for host in "$@"; do
  if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then
    entry="IP:$host"
  else
    entry="DNS:$host"
  fi
  [[ ",$sans," == *",$entry,"* ]] || sans="$sans,$entry"
done

if [[ ! -f "$out/ca.key" || ! -f "$out/ca.crt" ]]; then
  openssl req -x509 -newkey rsa:4096 -sha256 -days 3650 -nodes \
    -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=secure-align deployment CA" 2>/dev/null
fi

openssl req -newkey rsa:4096 -sha256 -nodes -keyout "$out/server.key" -out "$out/server.csr" \
  -subj "/CN=secure-align SuperLink" 2>/dev/null
cat > "$out/server.ext" <<EXT
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $sans
EXT
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -out "$out/server.pem" -days 825 -sha256 -extfile "$out/server.ext" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
chmod 644 "$out/ca.crt" "$out/server.pem"
echo "CA: $out/ca.crt  server certificate: $out/server.pem (SANs $sans)  key: $out/server.key"

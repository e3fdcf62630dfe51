#!/usr/bin/env bash
# `loadtest http` over TLS against plaintext, in one run on this machine.
#
# Starts two tansu brokers (memory engine): one plaintext, one reached only through a
# `stunnel4` TLS terminator with a certificate of a throw-away authority made here with
# `openssl` (tansu 0.6 has no TLS listener). Then runs `loadtest http` with `--brokers`
# on the first and `--tls-brokers` on the second and prints its figures, the
# TLS/plaintext ratios last. Extra arguments go to `loadtest http` (for example
# `--events 100000`).
#
# Needs: tansu (`cargo xtask install`), stunnel4 and openssl (Debian), a release build of
# loadtest (`cargo build --release -p loadtest`; LOADTEST=path overrides).
#
# The TLS figure includes the terminator's extra hop (user-space copy in stunnel), so the
# ratio is a lower bound of what a broker terminating TLS itself reaches.
set -euo pipefail

TANSU=${LMS_TANSU_BIN:-$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")}
LOADTEST=${LOADTEST:-${CARGO_TARGET_DIR:-target}/release/loadtest}
for tool in "$TANSU" "$LOADTEST" stunnel4 openssl; do
  command -v "$tool" >/dev/null || { echo "tls-bench: $tool not found" >&2; exit 1; }
done

dir=$(mktemp -d /tmp/lms-tls-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "tls-bench: nothing listens on $1" >&2; exit 1
}

cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 \
  -subj "/CN=tls-bench CA" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null

plain=$(port); inner=$(port); tls=$(port)
"$TANSU" broker --listener-url "tcp://127.0.0.1:$plain" --advertised-listener-url "tcp://127.0.0.1:$plain" \
  --storage-engine memory://tansu/ 2> plain.log & pids+=($!)
"$TANSU" broker --listener-url "tcp://127.0.0.1:$inner" --advertised-listener-url "tcp://127.0.0.1:$tls" \
  --storage-engine memory://tansu/ 2> inner.log & pids+=($!)
printf 'foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\ncert = server.pem\nkey = server.key\n' \
  "$tls" "$inner" > stunnel.conf
stunnel4 stunnel.conf 2> stunnel.log & pids+=($!)
wait_port "$plain"; wait_port "$inner"; wait_port "$tls"

cd - >/dev/null
"$LOADTEST" http --brokers "127.0.0.1:$plain" --tls-brokers "127.0.0.1:$tls" --tls-ca-file "$dir/ca.pem" "$@"

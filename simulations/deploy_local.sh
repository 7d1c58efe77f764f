#!/usr/bin/env bash
# Deploy pranc-fed by hand: one Flower SuperLink, N SuperNodes, one run. What `pranc-fed deploy`
# does, spelled out as plain commands so that it can be split over several machines.
#
# Usage (from the project root, with the virtualenv's bin/ on PATH or VENV set):
#   simulations/deploy_local.sh [CONFIG] [NODES]            # defaults: configs/mnist_lenet.yaml 3
#   TLS=1 AUTH=1 simulations/deploy_local.sh                # TLS + SuperNode authentication
#   OVERRIDES="federation.rounds=2 pranc.num_coeffs=1000" simulations/deploy_local.sh
#
# Environment: VENV (default .venv), HOST (SuperLink address, default 127.0.0.1), PORT (default
# 9090), TLS=1, AUTH=1 (needs TLS, turned on with it), OUT (results, default runs/deploy-local),
# OVERRIDES (config overrides, space separated), WORK (certificates, keys, logs, FLWR_HOME;
# default $OUT/deploy).
#
# Several machines. Each step says where it runs. In short:
#   server machine:  make certificates for its address (step 1; HOST=<its address>), start the
#                    SuperLink (step 2), keep ca.crt; register each node's PUBLIC key (step 3).
#   each node:       copy ca.crt over; make its own key pair (step 3, ssh-keygen) and send only the
#                    .pub file to the server operator; start flower-supernode with
#                    --superlink <server>:PORT, its own --node-config "partition-id=i num-partitions=N"
#                    and the same configs/ and dataset (step 4).
#   any machine with the project and ca.crt: `flwr run` and `flwr ls` (steps 5-6).
# Open PORT on the server's firewall; nodes only make outgoing connections.
set -euo pipefail

CONFIG=${1:-configs/mnist_lenet.yaml}
NODES=${2:-3}
VENV=${VENV:-.venv}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-9090}
TLS=${TLS:-0}
AUTH=${AUTH:-0}
OUT=${OUT:-runs/deploy-local}
OVERRIDES=${OVERRIDES:-}
[ "$AUTH" = 1 ] && TLS=1   # SuperNode authentication needs TLS

BIN="$VENV/bin"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$OUT/deploy}
mkdir -p "$WORK/logs" "$WORK/flwr-home"
CONFIG_ABS=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")

# Offline, no telemetry, no `uv sync` at run time; a private FLWR_HOME for the `flwr` connection.
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_HOME="$WORK/flwr-home" PATH="$BIN:$PATH"

# Stop every process this script started, however it ends (Ctrl-C included).
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do pkill -TERM -P "$pid" 2>/dev/null || true; kill -TERM "$pid" 2>/dev/null || true; done
  sleep 2
  for pid in "${PIDS[@]}"; do pkill -KILL -P "$pid" 2>/dev/null || true; kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. [server] Certificates: a CA, and a SuperLink certificate for HOST (and localhost) signed by it.
#    Nodes and `flwr` only need ca.crt. Keep ca.key offline in real deployments.
if [ "$TLS" = 1 ]; then
  C="$WORK/certs"; mkdir -p "$C"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -days 30 \
    -keyout "$C/ca.key" -out "$C/ca.crt" -subj "/O=pranc-fed/CN=pranc-fed CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes \
    -keyout "$C/server.key" -out "$C/server.csr" -subj "/O=pranc-fed/CN=$HOST" 2>/dev/null
  SAN="subjectAltName=IP:127.0.0.1,DNS:localhost"
  [[ "$HOST" =~ ^[0-9.]+$ ]] && [ "$HOST" != 127.0.0.1 ] && SAN="$SAN,IP:$HOST"
  [[ "$HOST" =~ [a-zA-Z] ]] && [ "$HOST" != localhost ] && SAN="$SAN,DNS:$HOST"
  openssl x509 -req -in "$C/server.csr" -CA "$C/ca.crt" -CAkey "$C/ca.key" -CAcreateserial -days 30 \
    -out "$C/server.pem" -extfile <(printf '%s\nextendedKeyUsage=serverAuth\n' "$SAN") 2>/dev/null
  SECURITY_LINK=(--ssl-ca-certfile "$C/ca.crt" --ssl-certfile "$C/server.pem" --ssl-keyfile "$C/server.key")
  SECURITY_NODE=(--root-certificates "$C/ca.crt")
  CONNECTION="root-certificates = \"$C/ca.crt\""
  CURL=(curl -sf --cacert "$C/ca.crt" "https://$HOST:$PORT/health")
else
  SECURITY_LINK=(--insecure); SECURITY_NODE=(--insecure); CONNECTION="insecure = true"
  CURL=(curl -sf "http://$HOST:$PORT/health")
fi
[ "$AUTH" = 1 ] && SECURITY_LINK+=(--enable-supernode-auth)

# 2. [server] The SuperLink: Fleet (nodes), Control (flwr) and ServerApp APIs on one port.
#    Use --host 0.0.0.0 to accept nodes from other machines.
flower-superlink --host "$HOST" --port "$PORT" --disable-runtime-dependency-installation "${SECURITY_LINK[@]}" \
  >"$WORK/logs/superlink.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 120); do "${CURL[@]}" >/dev/null 2>&1 && break; sleep 0.5; done
"${CURL[@]}" >/dev/null || { echo "SuperLink not healthy; see $WORK/logs/superlink.log" >&2; exit 1; }
# The `flwr` connection (any machine that submits or watches runs needs one like it).
printf '[superlink]\ndefault = "pranc"\n\n[superlink.pranc]\naddress = "%s:%s"\n%s\n' \
  "$HOST" "$PORT" "$CONNECTION" >"$FLWR_HOME/config.toml"
echo "SuperLink on $HOST:$PORT (TLS=$TLS, AUTH=$AUTH); logs in $WORK/logs"

# 3. [each node] an ECDSA P-384 key pair;  [server operator] register its public half.
#    A node whose key was not registered is refused ("Failed to activate SuperNode").
if [ "$AUTH" = 1 ]; then
  mkdir -p "$WORK/keys"
  for i in $(seq 0 $((NODES - 1))); do
    rm -f "$WORK/keys/node-$i" "$WORK/keys/node-$i.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "pranc-fed node-$i" -f "$WORK/keys/node-$i"
    flwr supernode register "$WORK/keys/node-$i.pub" pranc --name "node-$i"
  done
fi

# 4. [each node] a SuperNode with its partition. --port is the node's own API for the ClientApp
#    processes it starts (one per message): unique per node on one machine.
for i in $(seq 0 $((NODES - 1))); do
  NODE_AUTH=()
  [ "$AUTH" = 1 ] && NODE_AUTH=(--auth-supernode-private-key "$WORK/keys/node-$i")
  FLWR_HOME="$WORK/flwr-home/node-$i" flower-supernode --superlink "$HOST:$PORT" "${SECURITY_NODE[@]}" \
    "${NODE_AUTH[@]}" --port $((PORT + 100 + i)) --node-config "partition-id=$i num-partitions=$NODES" \
    >"$WORK/logs/node-$i.log" 2>&1 &
  PIDS+=($!)
done
for _ in $(seq 120); do
  ONLINE=$(flwr supernode ls pranc --format json | python3 -c \
    'import json,sys; print(sum(n.get("status") == "online" for n in json.load(sys.stdin).get("nodes", [])))' || echo 0)
  [ "$ONLINE" -ge "$NODES" ] && break; sleep 2
done
echo "$ONLINE of $NODES SuperNodes online"

# 5. [anywhere] submit the app with the config; results land in OUT on the server machine.
RUN_CONFIG="config-file=\"$CONFIG_ABS\" overrides=\"federation.num_clients=$NODES $OVERRIDES out_dir=$OUT\""
RUN_ID=$(flwr run . pranc --run-config "$RUN_CONFIG" --format json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["run-id"])')
echo "run $RUN_ID submitted; follow it with: FLWR_HOME=$FLWR_HOME flwr log $RUN_ID pranc --stream"

# 6. [anywhere] poll until finished (`flwr log --stream` exits 0 even when the run failed).
while true; do
  INFO=$(flwr ls pranc --run-id "$RUN_ID" --format json)
  STATUS=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["status"])' <<<"$INFO")
  case "$STATUS" in finished:*) break ;; esac
  sleep 5
done
echo "run $RUN_ID: $STATUS; results in $OUT"
# The SuperLink's own byte counter (Fleet API) next to the ledger the ServerApp wrote.
python3 - "$INFO" "$OUT/ledger.csv" <<'EOF'
import csv, json, os, sys
traffic = json.loads(sys.argv[1])["runs"][0]["network-traffic"]
rows = list(csv.DictReader(open(sys.argv[2]))) if os.path.exists(sys.argv[2]) else []
ledger = {d: sum(int(r["bytes"]) for r in rows if r["direction"] == d) for d in ("up", "down")}
print(f"SuperLink traffic counter: inbound {traffic['inbound-bytes']:,} B, outbound {traffic['outbound-bytes']:,} B")
print(f"ledger (RecordDict bytes):  up {ledger['up']:,} B, down {ledger['down']:,} B")
EOF
[ "$STATUS" = "finished:completed" ]

#!/usr/bin/env bash
# Start a token-authenticated Ray cluster on this machine: one head node and N worker nodes,
# each a separate raylet with its own ports and temp dir, so multi-node code paths (SPREAD
# placement, shared storage, node failures) can be tried on one box.
#
# Usage: cluster/local/start.sh [N_WORKERS=2] [CPUS_PER_NODE=2]
#
# Environment (all optional):
#   CNN_RAY_CLUSTER_DIR         state, logs and node temp dirs (default /tmp/cnn_ray_cluster;
#                               at most 36 characters: Ray's unix socket paths live under it)
#   CNN_RAY_HEAD_CPUS           logical CPUs of the head (default CPUS_PER_NODE; 0 = the head
#                               takes no training work, as on a real cluster)
#   CNN_RAY_HEAD_GPUS           GPUs of the head (default 0)
#   CNN_RAY_WORKER_GPUS         GPUs of each worker node (default 0; Ray's autodetection would
#                               give every node on this host all of its GPUs)
#   CNN_RAY_OBJECT_STORE_BYTES  object store per node (default 500000000)
#   CNN_RAY_GCS_PORT            GCS port (default 6379)
#   CNN_RAY_DASHBOARD_PORT      dashboard / Jobs API port (default 8265)
#   CNN_RAY_CLIENT_PORT         Ray Client server port (default 10001)
#   CNN_RAY_PORT_BASE           first per-node port (default 20000; node i uses
#                               BASE + 200*i ... BASE + 200*i + 199)
#   CNN_RAY_START_TIMEOUT       seconds to wait for all nodes to be ALIVE (default 90)
#   CNN_RAY_BIN                 the `ray` CLI to use (default: `ray` on PATH, else .venv/bin/ray)
#   RAY_AUTH_TOKEN              use this token (kept in the environment only), else
#   RAY_AUTH_TOKEN_PATH         use the token in this file (created, mode 600, if missing), else
#                               ~/.ray/auth_token (created with `ray get-auth-token --generate`).
#
# Stop it with cluster/local/stop.sh, inspect it with cluster/local/status.sh.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_common.sh"

N_WORKERS="${1:-2}"
CPUS_PER_NODE="${2:-2}"
HEAD_CPUS="${CNN_RAY_HEAD_CPUS:-$CPUS_PER_NODE}"
HEAD_GPUS="${CNN_RAY_HEAD_GPUS:-0}"
WORKER_GPUS="${CNN_RAY_WORKER_GPUS:-0}"
OBJECT_STORE_BYTES="${CNN_RAY_OBJECT_STORE_BYTES:-500000000}"
GCS_PORT="${CNN_RAY_GCS_PORT:-6379}"
DASHBOARD_PORT="${CNN_RAY_DASHBOARD_PORT:-8265}"
CLIENT_PORT="${CNN_RAY_CLIENT_PORT:-10001}"
PORT_BASE="${CNN_RAY_PORT_BASE:-20000}"
START_TIMEOUT="${CNN_RAY_START_TIMEOUT:-90}"

for pair in "N_WORKERS=$N_WORKERS" "CPUS_PER_NODE=$CPUS_PER_NODE" "CNN_RAY_HEAD_CPUS=$HEAD_CPUS" \
    "CNN_RAY_HEAD_GPUS=$HEAD_GPUS" "CNN_RAY_WORKER_GPUS=$WORKER_GPUS" \
    "CNN_RAY_OBJECT_STORE_BYTES=$OBJECT_STORE_BYTES" "CNN_RAY_GCS_PORT=$GCS_PORT" \
    "CNN_RAY_DASHBOARD_PORT=$DASHBOARD_PORT" "CNN_RAY_CLIENT_PORT=$CLIENT_PORT" \
    "CNN_RAY_PORT_BASE=$PORT_BASE" "CNN_RAY_START_TIMEOUT=$START_TIMEOUT"; do
    [[ "${pair#*=}" =~ ^[0-9]+$ ]] || die "${pair%%=*} must be a non-negative integer, got '${pair#*=}'"
done
((PORT_BASE + (N_WORKERS + 1) * PORTS_PER_NODE <= 65535)) || die "CNN_RAY_PORT_BASE too high for $N_WORKERS workers"
[[ "$CLUSTER_DIR" == /* && "$CLUSTER_DIR" != *[[:space:]]* ]] \
    || die "CNN_RAY_CLUSTER_DIR must be an absolute path without spaces, got '$CLUSTER_DIR'"
# <dir>/node<i>/session_<41 chars>/sockets/plasma_store must fit a 107-byte unix socket path.
((${#CLUSTER_DIR} <= 36)) \
    || die "CNN_RAY_CLUSTER_DIR is too long (${#CLUSTER_DIR} > 36 characters): use e.g. /tmp/cnn_ray_cluster"

RAY_BIN="$(find_ray_bin)"
mkdir -p "$CLUSTER_DIR"

if [[ -f "$STATE_FILE" ]]; then
    # shellcheck disable=SC1090
    (source "$STATE_FILE" && [[ -z "$(cluster_pids)" ]]) \
        || die "a cluster is already running from $CLUSTER_DIR: stop it with cluster/local/stop.sh first"
    rm -f "$STATE_FILE"
fi

# A port is taken if something accepts a TCP connection on it (the GCS and raylet listen on all
# interfaces, the dashboard on 127.0.0.1, so loopback sees them all).
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
ports_to_check=("$GCS_PORT" "$DASHBOARD_PORT" "$CLIENT_PORT")
for ((i = 0; i <= N_WORKERS; i++)); do
    base=$((PORT_BASE + i * PORTS_PER_NODE))
    ports_to_check+=("$base" $((base + 1)) $((base + 2)) $((base + 3)) $((base + 4)) $((base + 5)) \
        $((base + 6)) $((base + 7)))
done
for port in "${ports_to_check[@]}"; do
    if port_in_use "$port"; then
        die "port $port is already in use on this host: pick other ports" \
            "(CNN_RAY_GCS_PORT, CNN_RAY_DASHBOARD_PORT, CNN_RAY_CLIENT_PORT, CNN_RAY_PORT_BASE)"
    fi
done

# ---- token: from the environment or a file, never from (or into) the repository ----------
export RAY_AUTH_MODE=token
if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
    TOKEN_SOURCE=env
    TOKEN_PATH=""
else
    TOKEN_SOURCE=path
    TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    if [[ ! -s "$TOKEN_PATH" ]]; then
        (umask 077 && mkdir -p "$(dirname "$TOKEN_PATH")")
        if [[ "$TOKEN_PATH" == "$HOME/.ray/auth_token" ]]; then
            # Writes ~/.ray/auth_token (64 hex characters, 256 bits) if none exists.
            (umask 077 && env -u RAY_AUTH_TOKEN_PATH "$RAY_BIN" get-auth-token --generate >/dev/null)
        else
            # Same format as Ray's generator (secrets.token_hex(32)).
            (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$TOKEN_PATH")
        fi
        log "generated a new auth token in $TOKEN_PATH"
    fi
    chmod 600 "$TOKEN_PATH"
    export RAY_AUTH_TOKEN_PATH="$TOKEN_PATH"
fi

# ---- state first, so stop.sh can clean up even if a start fails half-way ------------------
NODE_DIRS=""
for ((i = 0; i <= N_WORKERS; i++)); do
    NODE_DIRS+="${NODE_DIRS:+ }$CLUSTER_DIR/node$i"
done
write_state() {
    {
        echo "# cnn_ray local cluster state, written by cluster/local/start.sh. No secrets here."
        printf 'CLUSTER_DIR=%q\n' "$CLUSTER_DIR"
        printf 'RAY_BIN=%q\n' "$RAY_BIN"
        printf 'GCS_PORT=%q\nGCS_ADDRESS=%q\n' "$GCS_PORT" "127.0.0.1:$GCS_PORT"
        printf 'DASHBOARD_PORT=%q\nDASHBOARD_URL=%q\n' "$DASHBOARD_PORT" "http://127.0.0.1:$DASHBOARD_PORT"
        printf 'CLIENT_PORT=%q\nPORT_BASE=%q\nPORTS_PER_NODE=%q\n' "$CLIENT_PORT" "$PORT_BASE" "$PORTS_PER_NODE"
        printf 'N_WORKERS=%q\nCPUS_PER_NODE=%q\nHEAD_CPUS=%q\n' "$N_WORKERS" "$CPUS_PER_NODE" "$HEAD_CPUS"
        printf 'NODE_DIRS=%q\n' "$NODE_DIRS"
        for ((i = 0; i <= N_WORKERS; i++)); do
            printf 'NODE%d_PORTS=%q\n' "$i" "$(node_port_flags "$i")"
        done
        printf 'TOKEN_SOURCE=%q\nTOKEN_PATH=%q\n' "$TOKEN_SOURCE" "$TOKEN_PATH"
        printf 'PIDS=%q\n' "${PIDS:-}"
    } >"$STATE_FILE.tmp"
    mv "$STATE_FILE.tmp" "$STATE_FILE"
}
write_state

on_error() {
    log "start failed (see $CLUSTER_DIR/start.log and $CLUSTER_DIR/node*/session_latest/logs);" \
        "stopping what was started"
    "$LOCAL_DIR/stop.sh" >&2 || true
}
trap on_error ERR

# Job entrypoints (`python jobs/train.py`) run with the raylet's PATH: put the Python that has
# Ray first so jobs use the same interpreter as the cluster.
PATH="$(dirname "$RAY_BIN"):$PATH"
export PATH
# The head's dashboard and autoscaler also serve Prometheus metrics on fixed ports (44227,
# 44217 by default); move them into the head's port block so two clusters do not clash.
export DASHBOARD_METRIC_PORT=$((PORT_BASE + 6)) AUTOSCALER_METRIC_PORT=$((PORT_BASE + 7))

START_LOG="$CLUSTER_DIR/start.log"
: >"$START_LOG"
common_flags=(--object-store-memory="$OBJECT_STORE_BYTES" --disable-usage-stats --log-color=false)

# The head: GCS, dashboard + Jobs API (bound to 127.0.0.1), Ray Client server, its own raylet.
# No --node-ip-address=127.0.0.1: Ray 2.60 rewrites a loopback node IP to the host's routable IP
# (services.resolve_ip_for_localhost), and the GCS/raylet listen on all interfaces regardless.
log "starting head (GCS 127.0.0.1:$GCS_PORT, dashboard http://127.0.0.1:$DASHBOARD_PORT, $HEAD_CPUS CPUs)"
# shellcheck disable=SC2046
env -u RAY_ADDRESS "$RAY_BIN" start --head \
    --port="$GCS_PORT" \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --ray-client-server-port="$CLIENT_PORT" \
    --num-cpus="$HEAD_CPUS" --num-gpus="$HEAD_GPUS" \
    --temp-dir="$CLUSTER_DIR/node0" $(node_port_flags 0) \
    "${common_flags[@]}" >>"$START_LOG" 2>&1

for ((i = 1; i <= N_WORKERS; i++)); do
    log "starting worker node $i ($CPUS_PER_NODE CPUs, $WORKER_GPUS GPUs)"
    # shellcheck disable=SC2046
    env -u RAY_ADDRESS "$RAY_BIN" start --address="127.0.0.1:$GCS_PORT" \
        --num-cpus="$CPUS_PER_NODE" --num-gpus="$WORKER_GPUS" \
        --temp-dir="$CLUSTER_DIR/node$i" $(node_port_flags "$i") \
        "${common_flags[@]}" >>"$START_LOG" 2>&1
done

# Wait until the GCS lists every node as ALIVE (through the authenticated state API).
want=$((N_WORKERS + 1))
deadline=$((SECONDS + START_TIMEOUT))
alive=0
while :; do
    alive="$("$RAY_BIN" list nodes --address "http://127.0.0.1:$DASHBOARD_PORT" \
        --filter state=ALIVE --format json 2>>"$START_LOG" | grep -o '"state": "ALIVE"' | wc -l || true)"
    ((alive >= want)) && break
    ((SECONDS < deadline)) || { log "only $alive of $want nodes ALIVE after ${START_TIMEOUT}s"; false; }
    sleep 1
done

PIDS="$(cluster_root_pids | sort -n | tr '\n' ' ')"
PIDS="${PIDS% }"
write_state
trap - ERR

cat <<EOF
cnn_ray local cluster is up: $want nodes ($alive ALIVE), state in $STATE_FILE
  dashboard / Jobs API : http://127.0.0.1:$DASHBOARD_PORT   (bound to 127.0.0.1, token required)
  GCS address          : 127.0.0.1:$GCS_PORT
  logs                 : $CLUSTER_DIR/node*/session_latest/logs

Submit a job (the token stays in a file or your environment, never in the repo):
  export RAY_AUTH_MODE=token
EOF
if [[ "$TOKEN_SOURCE" == path ]]; then
    echo "  export RAY_AUTH_TOKEN_PATH=$TOKEN_PATH"
else
    echo "  # RAY_AUTH_TOKEN is already exported in this shell"
fi
cat <<EOF
  ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --working-dir . \\
      -- python jobs/train.py --config jobs/configs/cifar10.yaml run.storage_path=$CLUSTER_DIR/runs

Status: cluster/local/status.sh    Stop: cluster/local/stop.sh
EOF

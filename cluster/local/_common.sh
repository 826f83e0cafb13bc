# Shared by start.sh, status.sh and stop.sh (sourced, never run on its own).
#
# One local cluster lives in one directory, ${CNN_RAY_CLUSTER_DIR:-/tmp/cnn_ray_cluster}:
#   cluster.env   the state file: ports, node temp dirs, token *source* (never the token), pids
#   start.log     the output of every `ray start`
#   node0/ ...    each node's Ray temp dir (session logs live in nodeN/session_latest/logs)
# Several clusters can run side by side on one host as long as each has its own directory and
# its own ports (CNN_RAY_GCS_PORT, CNN_RAY_DASHBOARD_PORT, CNN_RAY_CLIENT_PORT, CNN_RAY_PORT_BASE).

CLUSTER_DIR="${CNN_RAY_CLUSTER_DIR:-/tmp/cnn_ray_cluster}"
STATE_FILE="$CLUSTER_DIR/cluster.env"
LOCAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$LOCAL_DIR/../.." && pwd)"

# Ports each node gets inside its own block of PORTS_PER_NODE ports starting at
# CNN_RAY_PORT_BASE + index * PORTS_PER_NODE. Offsets 10..PORTS_PER_NODE-1 are the worker ports,
# which also bound how many worker processes a node can run at once (190). Offsets 6 and 7 of
# the head's block are the dashboard's and autoscaler's Prometheus ports.
PORTS_PER_NODE=200

die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 1
}

log() {
    echo "$(basename "$0"): $*" >&2
}

# The `ray` CLI: $CNN_RAY_BIN, else `ray` on PATH, else the repo's .venv.
find_ray_bin() {
    if [[ -n "${CNN_RAY_BIN:-}" ]]; then
        echo "$CNN_RAY_BIN"
    elif command -v ray >/dev/null 2>&1; then
        command -v ray
    elif [[ -x "$REPO_ROOT/.venv/bin/ray" ]]; then
        echo "$REPO_ROOT/.venv/bin/ray"
    else
        die "no 'ray' CLI found: activate the venv or set CNN_RAY_BIN"
    fi
}

# `ray start` flags for the per-node ports of node $1 (0 = head), given PORT_BASE.
node_port_flags() {
    local base=$((PORT_BASE + $1 * PORTS_PER_NODE))
    echo "--node-manager-port=$base" \
        "--object-manager-port=$((base + 1))" \
        "--dashboard-agent-listen-port=$((base + 2))" \
        "--dashboard-agent-grpc-port=$((base + 3))" \
        "--runtime-env-agent-port=$((base + 4))" \
        "--metrics-export-port=$((base + 5))" \
        "--min-worker-port=$((base + 10))" \
        "--max-worker-port=$((base + PORTS_PER_NODE - 1))"
}

# Load the state file written by start.sh; fail if there is none.
load_state() {
    [[ -f "$STATE_FILE" ]] \
        || die "no cluster state at $STATE_FILE (start one with start.sh, or set CNN_RAY_CLUSTER_DIR)"
    # shellcheck disable=SC1090
    source "$STATE_FILE"
}

# Token auth for the CLI calls we make (clients need RAY_AUTH_MODE=token as well as a token:
# in Ray 2.60 `ray job`/`ray status` ignore RAY_AUTH_TOKEN_PATH when RAY_AUTH_MODE is unset).
export_auth_env() {
    export RAY_AUTH_MODE=token
    if [[ "${TOKEN_SOURCE:-path}" == "path" ]]; then
        export RAY_AUTH_TOKEN_PATH="$TOKEN_PATH"
    elif [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
        die "this cluster was started with the token in RAY_AUTH_TOKEN; export it again first"
    fi
}

# Pids of this cluster's Ray processes that `ray start` launched (gcs_server, raylet, dashboard,
# monitor, log_monitor, ray client server): every Ray process whose command line names one of
# this cluster's node temp dirs, plus the client server on this cluster's client port. Their
# children (agents, workers, job drivers, dashboard modules) are found by with_descendants.
cluster_root_pids() {
    local pid args d
    while read -r pid args; do
        [[ "$pid" == "$$" || "$pid" == "${BASHPID:-}" ]] && continue
        [[ "$args" == *"/ray/"* || "$args" == *" -m ray."* ]] || continue
        for d in $NODE_DIRS; do
            if [[ "$args" == *"$d/session_"* || "$args " == *"--temp-dir=$d "* ]]; then
                echo "$pid"
                continue 2
            fi
        done
        if [[ "$args" == *"ray.util.client.server"* && "$args " == *" --port=$CLIENT_PORT "* ]]; then
            echo "$pid"
        fi
    done < <(ps -eww -o pid=,args=)
}

# Read pids on stdin; print them and all their descendants (those still alive), one per line.
with_descendants() {
    local roots
    roots="$(tr '\n' ' ')"
    [[ -n "${roots// /}" ]] || return 0
    ps -e -o pid=,ppid= | awk -v roots="$roots" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
        { parent[$1] = $2; alive[$1] = 1 }
        END {
            changed = 1
            while (changed) {
                changed = 0
                for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
            }
            for (p in keep) if (p in alive) print p
        }'
}

# Every live pid of this cluster: recorded pids that still look like ours, the current matches
# of cluster_root_pids, and all their descendants.
cluster_pids() {
    local pid args
    {
        cluster_root_pids
        for pid in ${PIDS:-}; do
            args="$(ps -ww -o args= -p "$pid" 2>/dev/null || true)"
            [[ -n "$args" && "$args" == *"$CLUSTER_DIR/"* ]] && echo "$pid"
        done
    } | sort -un | with_descendants | sort -n
}

# True if pid $1 is gone (or a zombie waiting to be reaped).
pid_gone() {
    local stat
    stat="$(ps -o stat= -p "$1" 2>/dev/null || true)"
    [[ -z "$stat" || "$stat" == Z* ]]
}

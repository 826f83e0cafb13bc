#!/usr/bin/env bash
# Stop the local cluster started by start.sh from ${CNN_RAY_CLUSTER_DIR:-/tmp/cnn_ray_cluster},
# and only that cluster.
#
# Usage: cluster/local/stop.sh [--clean]
#   --clean   also delete the node temp dirs (session logs) and start.log afterwards
#
# `ray stop` is not used: it signals every Ray process on the machine, including other users'
# clusters and test sessions. Instead this finds the processes whose command line names this
# cluster's node temp dirs (gcs_server, raylet, dashboard, monitor, log_monitor) or its Ray Client
# port, plus all their descendants (agents, workers, job drivers), and stops them the way
# `ray stop` does: SIGTERM to raylets, then to everything else, then to the GCS, each with a
# grace period, then SIGKILL to whatever is left.
#
# Environment: CNN_RAY_STOP_GRACE  total grace period in seconds (default 15)
# Exit status: 0 when no process of the cluster is left, 1 otherwise.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_common.sh"

CLEAN=0
case "${1:-}" in
    "") ;;
    --clean) CLEAN=1 ;;
    *) die "usage: stop.sh [--clean]" ;;
esac
GRACE="${CNN_RAY_STOP_GRACE:-15}"
[[ "$GRACE" =~ ^[0-9]+$ ]] || die "CNN_RAY_STOP_GRACE must be an integer, got '$GRACE'"

if [[ ! -f "$STATE_FILE" ]]; then
    log "no cluster state at $STATE_FILE: nothing to stop"
    exit 0
fi
load_state

# Collect the whole tree before signalling anything: once a raylet exits its children are
# re-parented and could no longer be told apart from other processes.
mapfile -t ALL < <(cluster_pids)
if ((${#ALL[@]} == 0)); then
    log "no running process of the cluster in $CLUSTER_DIR"
else
    raylets=() gcs=() others=()
    for pid in "${ALL[@]}"; do
        comm="$(ps -o comm= -p "$pid" 2>/dev/null || true)"
        case "$comm" in
            raylet) raylets+=("$pid") ;;
            gcs_server) gcs+=("$pid") ;;
            "") ;;
            *) others+=("$pid") ;;
        esac
    done

    # Send SIGTERM to the given pids and wait up to $1 seconds for them to exit.
    term_and_wait() {
        local grace="$1" pid left
        shift
        (($# > 0)) || return 0
        kill -TERM "$@" 2>/dev/null || true
        local deadline=$((SECONDS + grace))
        while :; do
            left=0
            for pid in "$@"; do
                pid_gone "$pid" || left=$((left + 1))
            done
            ((left == 0 || SECONDS >= deadline)) && return 0
            sleep 0.2
        done
    }
    step=$(((GRACE + 2) / 3))
    log "stopping ${#ALL[@]} processes (${#raylets[@]} raylets, ${#gcs[@]} GCS) of $CLUSTER_DIR"
    term_and_wait "$step" "${raylets[@]}"
    term_and_wait "$step" "${others[@]}"
    term_and_wait "$step" "${gcs[@]}"

    survivors=()
    for pid in "${ALL[@]}"; do
        pid_gone "$pid" || survivors+=("$pid")
    done
    if ((${#survivors[@]} > 0)); then
        log "SIGKILL to ${#survivors[@]} processes still running after ${GRACE}s: ${survivors[*]}"
        kill -KILL "${survivors[@]}" 2>/dev/null || true
        for _ in $(seq 20); do
            left=0
            for pid in "${survivors[@]}"; do pid_gone "$pid" || left=$((left + 1)); done
            ((left == 0)) && break
            sleep 0.1
        done
    fi
fi

# Anything left (including workers started during shutdown)?
mapfile -t LEFT < <(cluster_pids)
if ((${#LEFT[@]} > 0)); then
    log "could not stop: ${LEFT[*]}"
    exit 1
fi
rm -f "$STATE_FILE"
if ((CLEAN)); then
    for d in $NODE_DIRS; do
        if [[ "$d" == "$CLUSTER_DIR"/node* ]]; then rm -rf -- "$d"; fi
    done
    rm -f -- "$CLUSTER_DIR/start.log"
fi
log "stopped the cluster in $CLUSTER_DIR"

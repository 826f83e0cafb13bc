#!/usr/bin/env bash
# Show the local cluster started by start.sh: its addresses, `ray status` (resources and
# demands) and the node list from the state API. Both calls go through token auth.
#
# Usage: cluster/local/status.sh
# Exit status: 0 when the cluster answers, 1 when it is not running or does not answer.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_common.sh"

load_state
export_auth_env

pids="$(cluster_pids | tr '\n' ' ')"
echo "cluster dir   : $CLUSTER_DIR"
echo "dashboard/Jobs: $DASHBOARD_URL"
echo "GCS address   : $GCS_ADDRESS"
if [[ "$TOKEN_SOURCE" == path ]]; then
    echo "token         : file $TOKEN_PATH"
else
    echo "token         : RAY_AUTH_TOKEN (environment)"
fi
echo "processes     : ${pids:-none}"
[[ -n "${pids// /}" ]] || die "no process of the cluster is running (stale state: run stop.sh)"

echo
echo "== ray status"
"$RAY_BIN" status --address "$GCS_ADDRESS"
echo
echo "== nodes"
"$RAY_BIN" list nodes --address "$DASHBOARD_URL"

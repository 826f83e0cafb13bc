#!/usr/bin/env bash
# The main-job target, measured as a user runs it: start a local 2-CPU Ray cluster (token auth),
# `ray job submit` jobs/train.py with jobs/configs/cifar10.yaml (prepare step included), print
# the wall time from submission and the final top-1 on the 10,000 CIFAR-10 test images.
# Usage: benchmarks/run_cifar10_target.sh [key=value overrides...]   (needs the data extracted:
#   tar -xzf ../shared/data/cifar10-jpg.tar.gz -C ~/.cache/cnn_ray)
set -euo pipefail
cd "$(dirname "$0")/.."
export CNN_RAY_CLUSTER_DIR="${CNN_RAY_CLUSTER_DIR:-/tmp/cnn_ray_target}"
export CNN_RAY_DASHBOARD_PORT="${CNN_RAY_DASHBOARD_PORT:-8275}" CNN_RAY_GCS_PORT="${CNN_RAY_GCS_PORT:-6389}"
export CNN_RAY_CLIENT_PORT="${CNN_RAY_CLIENT_PORT:-10011}" CNN_RAY_PORT_BASE="${CNN_RAY_PORT_BASE:-23000}"
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
RUN_NAME="cifar10_target_$(date +%Y%m%d_%H%M%S)"
STORAGE="${STORAGE:-$HOME/cnn_ray_runs}"
cluster/local/start.sh 0 2
trap 'cluster/local/stop.sh' EXIT
start=$(date +%s)
ray job submit --address "http://127.0.0.1:${CNN_RAY_DASHBOARD_PORT}" --working-dir . -- \
  python jobs/train.py --config jobs/configs/cifar10.yaml "run.name=$RUN_NAME" \
  "run.storage_path=$STORAGE" "$@"
end=$(date +%s)
python - "$STORAGE/$RUN_NAME/metrics.jsonl" "$((end - start))" "$start" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
last = rows[-1]
print(f"[target] wall time from submission: {int(sys.argv[2])} s ({int(sys.argv[2]) / 60:.1f} min)")
print(f"[target] epochs: {last['epoch']}, final val_top1 (10,000 test images): {100 * last['val_top1']:.2f}%")
print(f"[target] per-epoch images_per_sec: {[round(r['images_per_sec']) for r in rows]}")
print(f"[target] per-epoch data_wait_share: {[round(r['data_wait_share'], 3) for r in rows]}")
print(f"[target] peak RSS of the train worker: {last['peak_rss_mb']:.0f} MB")
start = float(sys.argv[3])
print(f"[target] per-epoch val_top1 (tta_views): "
      f"{[(round(100 * r['val_top1'], 2), r.get('tta_views', 1)) for r in rows]}")
print(f"[target] minutes from submission at each epoch's report: "
      f"{[round((r['time'] - start) / 60, 1) for r in rows]}")
for goal in (0.85, 0.88, 0.90):
    hit = next((r for r in rows if r["val_top1"] >= goal), None)
    print(f"[target] time to {100 * goal:.0f}%: " + (
        f"{(hit['time'] - start) / 60:.1f} min (epoch {hit['epoch']})" if hit else "not reached"))
PY

"""`ray job submit --working-dir . -- python jobs/evaluate.py --config FILE [key=value ...]`.

Uses the cluster in RAY_ADDRESS (set by `ray job submit`) or starts local Ray when none is set.
A checkpoint of a run with `optim.ema.enabled` is evaluated with its averaged (EMA) weights, as
the run's own `val_top1` was; `eval.tta=none|flip|flip_translate` sets the test-time
augmentation (the report's `tta_views`). See `python jobs/evaluate.py --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, on any node

from cnn_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]]))

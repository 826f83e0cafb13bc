"""`ray job submit --working-dir . -- python jobs/doctor.py --config FILE [key=value ...] [--steps N] [--json F] [--trace DIR]`.

Uses the cluster in RAY_ADDRESS (set by `ray job submit`) or starts local Ray when none is set.
See `python jobs/doctor.py --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, on any node

from cnn_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["doctor", *sys.argv[1:]]))

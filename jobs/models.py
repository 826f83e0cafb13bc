"""`python jobs/models.py [NAME ...] [--json] [--markdown docs/models.md]`: the model table.

Parameters and GMAC per image at 32/128/224 px of every registered model (or the ones named,
timm/<name> too), built on the CPU; no Ray, no config. See `python jobs/models.py --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, on any node

from cnn_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["models", *sys.argv[1:]]))

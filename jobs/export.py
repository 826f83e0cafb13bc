"""`python jobs/export.py --checkpoint DIR --format torchscript|onnx [--out DIR] [--no-ema]`.

Writes ``model.ts`` or ``model.onnx`` and its preprocessing contract (``<file>.json``: input
size, channels, mean/std, class names) into ``--out`` (default ``<checkpoint>/export``), then
runs the exported file and the checkpoint on the same batch and prints the max absolute logit
difference (must be <= 1e-4, fp32). No Ray. See :mod:`cnn_ray.export`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, on any node

from cnn_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["export", *sys.argv[1:]]))

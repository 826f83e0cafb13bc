"""`ray job submit --working-dir . -- python jobs/predict.py --checkpoint DIR --data PATH
[--out FILE.parquet|FILE.csv] [--top-k 5] [--concurrency N] [key=value ...]`.

Batch prediction on Ray Data: images are decoded and preprocessed exactly as
``jobs/evaluate.py`` does, and a pool of ``--concurrency`` actors (each loads the checkpoint
once; one GPU each when the cluster has GPUs) writes path, predicted class and index, top-k
classes with probabilities. Bad files follow ``data.bad_input`` (``skip``: listed in
``<out>.bad_inputs.jsonl``). ``eval.tta=flip`` etc. selects test-time augmentation. Prints
images/s and the pure forward images/s of the same network. See :mod:`cnn_ray.predict`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, on any node

from cnn_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["predict", *sys.argv[1:]]))

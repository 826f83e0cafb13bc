"""cnn_ray: fast, cheap CNN training and sweeps on Ray.

Ray Data streams and augments image shards, Ray Train ``TorchTrainer`` workers train with DDP and
mixed precision, Ray Tune runs ASHA-scheduled searches over the same trainer.
"""

__version__ = "0.1.0"

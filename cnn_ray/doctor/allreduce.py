"""The doctor's gradient all-reduce measurement (Ray glue): ``num_workers`` Ray actors placed
as the run's Train workers would be (a placement group of the run's bundles and
``scaling.placement_strategy``) form a ``torch.distributed`` group (NCCL on GPUs, Gloo on CPUs,
as Ray Train's ``TorchTrainer`` picks) and time ``all_reduce`` of one flat fp32 tensor the size
of the model's trainable parameters: the bytes DDP exchanges every optimiser step.

DDP overlaps its bucketed all-reduce with the backward pass, so the figure is an upper bound of
what a step pays for communication; on one node it is the loopback/shared-memory cost, across
nodes it includes the network. The actors hold the run's resources for a few seconds: a
cluster busy with other work makes the measurement wait (``timeout_s``), then it is skipped.
"""

from __future__ import annotations

import statistics
from typing import Optional


def _peer_class():
    import ray

    @ray.remote
    class AllReducePeer:
        """One rank of the measurement group."""

        def address(self) -> tuple[str, int]:
            import socket

            import ray.util

            with socket.socket() as s:
                s.bind(("", 0))
                port = s.getsockname()[1]
            return ray.util.get_node_ip_address(), port

        def run(self, rank: int, world: int, addr: str, port: int, numel: int, iters: int,
                use_gpu: bool) -> list[float]:
            import time

            import torch
            import torch.distributed as dist

            dist.init_process_group("nccl" if use_gpu else "gloo", init_method=f"tcp://{addr}:{port}",
                                    rank=rank, world_size=world)
            try:
                device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
                x = torch.ones(numel, dtype=torch.float32, device=device)
                times = []
                for _ in range(iters + 1):  # the first call sets up the connections
                    if use_gpu:
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    dist.all_reduce(x)
                    if use_gpu:
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                return times[1:]
            finally:
                dist.destroy_process_group()

    return AllReducePeer


def measure_allreduce(numel: int, *, num_workers: int, cpus_per_worker: float, use_gpu: bool,
                      strategy: str = "PACK", iters: int = 5,
                      timeout_s: float = 60.0) -> tuple[Optional[float], str]:
    """Median seconds of one all-reduce of ``numel`` fp32 values over ``num_workers`` ranks.

    Returns ``(seconds, note)``; ``seconds`` is None (with the reason in ``note``) for one
    worker, or when the actors could not be placed within ``timeout_s``.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if num_workers < 2:
        return None, "one worker: no gradient exchange"
    bundle = {"CPU": cpus_per_worker, **({"GPU": 1.0} if use_gpu else {})}
    pg = placement_group([dict(bundle) for _ in range(num_workers)], strategy=strategy)
    try:
        try:
            ray.get(pg.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            return None, (f"skipped: {num_workers} x {bundle} could not be placed within "
                          f"{timeout_s:.0f} s (the cluster is busy)")
        peer = _peer_class()
        peers = [peer.options(num_cpus=cpus_per_worker, num_gpus=1 if use_gpu else 0,
                              scheduling_strategy=PlacementGroupSchedulingStrategy(
                                  pg, placement_group_bundle_index=i)).remote()
                 for i in range(num_workers)]
        addr, port = ray.get(peers[0].address.remote())
        runs = ray.get([p.run.remote(r, num_workers, addr, port, numel, iters, use_gpu)
                        for r, p in enumerate(peers)], timeout=max(timeout_s, 120.0))
        slowest = [max(step) for step in zip(*runs)]  # a step waits for the last rank
        backend = "nccl" if use_gpu else "gloo"
        return statistics.median(slowest), (f"{backend}, {num_workers} ranks "
                                            f"({strategy}), {4 * numel / 1e6:.1f} MB per all-reduce")
    finally:
        remove_placement_group(pg)

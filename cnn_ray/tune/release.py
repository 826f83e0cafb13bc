"""Releasing the Train workers of stopped trials (placement groups that outlive their trial).

A stopped trial's actor exits and its Train controller dies with it, but the workers'
placement group outlives them (it belongs to the job): :class:`ReleaseStoppedTrials` removes
such orphans once a second during a sweep, and :func:`wait_for_release` waits (briefly) until
every CPU is free again before :func:`cnn_ray.tune.run_sweep` returns.
"""

from __future__ import annotations

import time

from ray.tune import Callback

from cnn_ray.compat import placement_group_rows


def release_orphaned_placement_groups() -> list[str]:
    """Remove this job's placement groups whose creating actor has died; returns their ids.

    Why: when a scheduler stops a trial, Tune ends the trial's actor; the trial's Train
    controller (an actor it owns) dies with it, but the placement group holding the Train
    workers' CPUs belongs to the *job* and stays reserved until the driver exits. Train's own
    ``PlacementGroupCleaner`` removes it only through the State API, which needs the dashboard
    and a single Ray instance on the machine; without them the CPUs leak and later trials
    wait forever for workers. A placement group that is not detached, was created by an actor
    of this job, and whose creator is dead can never be used again, so removing it is safe.

    Reads Ray's GCS table through :func:`cnn_ray.compat.placement_group_rows` (the public
    ``placement_group_table`` omits the creator). Best effort: returns ``[]`` if that table
    cannot be read.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        rows, removed_state = placement_group_rows()
    except Exception as exc:  # noqa: BLE001 (private API: degrade, never fail a sweep)
        print(f"[cnn_ray] warning: cannot read the placement group table ({exc!r}); stopped "
              "trials may keep their workers' CPUs until the driver exits", flush=True)
        return []
    job = ray.get_runtime_context().get_job_id()
    nil = ray.ActorID.nil().binary()
    removed = []
    for info in rows:
        if (info.state == removed_state or info.is_detached or not info.creator_actor_dead
                or info.creator_actor_id in (b"", nil) or info.creator_job_id.hex() != job):
            continue
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(info.placement_group_id)))
            removed.append(info.placement_group_id.hex())
        except Exception:  # noqa: BLE001 (already removed in between)
            pass
    return removed


class ReleaseStoppedTrials(Callback):
    """Tune callback: once a second, release the Train workers of stopped trials
    (:func:`release_orphaned_placement_groups`) so the next trials can start."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self._next = 0.0

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval_s
            release_orphaned_placement_groups()


def wait_for_release(timeout: float = 30.0) -> bool:
    """Wait until every CPU is available again and no placement group is alive.

    A stopped trial's Train workers are released asynchronously (its controller dies with the
    trial actor; Train's detached ``PlacementGroupCleaner`` polls once a second). Returns
    whether everything was released within ``timeout`` seconds.
    """
    import ray

    deadline = time.time() + timeout
    while True:
        release_orphaned_placement_groups()
        if resources_released():
            return True
        if time.time() > deadline:
            print("[cnn_ray] warning: resources still reserved after the sweep: "
                  f"{ray.available_resources().get('CPU')} of {ray.cluster_resources().get('CPU')} "
                  "CPUs available", flush=True)
            return False
        time.sleep(0.5)


def resources_released() -> bool:
    """True when all CPUs are available and every placement group is removed."""
    import ray
    from ray.util import placement_group_table

    total = ray.cluster_resources().get("CPU", 0.0)
    free = ray.available_resources().get("CPU", 0.0)
    live = [pg for pg in placement_group_table().values() if pg.get("state") != "REMOVED"]
    return abs(total - free) < 1e-6 and not live

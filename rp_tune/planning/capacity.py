"""The devices a sweep runs on: a local machine's GPUs, a Ray cluster's (or its
autoscaler's maximum), the GPU share each trial takes and how many trials run at once."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rp_tune.config import (
    TrialConfig,
)

log = logging.getLogger(__name__)


AUTOSCALING_CONFIG_ENV = "RP_TUNE_AUTOSCALING_CONFIG"


AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"  # what `ray up` writes on the head node


def max_cluster_resources(
    current: Mapping[str, float], autoscaling: Mapping[str, Any] | None
) -> dict[str, float]:
    """The cluster's resources once the autoscaler has started all the workers it may.

    head node type's resources + the worker node types' resources x their max_workers, taking
    the types with most GPUs (then CPUs) first until the global max_workers is reached; never
    less than what is up now. Without an autoscaling config: what is up now.
    """
    out = {k: float(v) for k, v in current.items()}
    if not autoscaling:
        return out
    types = autoscaling.get("available_node_types") or {}
    head_type = autoscaling.get("head_node_type")
    total: dict[str, float] = {}
    for k, v in (types.get(head_type, {}).get("resources") or {}).items():
        total[k] = total.get(k, 0.0) + float(v)
    left = int(autoscaling.get("max_workers", 0) or 0)
    workers = sorted(
        (t for name, t in types.items() if name != head_type),
        key=lambda t: (
            -float((t.get("resources") or {}).get("GPU", 0)),
            -float((t.get("resources") or {}).get("CPU", 0)),
        ),
    )
    for t in workers:
        n = min(int(t.get("max_workers", left) or 0), left)
        left -= n
        for k, v in (t.get("resources") or {}).items():
            total[k] = total.get(k, 0.0) + n * float(v)
    for k, v in total.items():
        out[k] = max(out.get(k, 0.0), v)
    return out


def read_autoscaling_config() -> tuple[dict[str, Any] | None, Path]:
    """(the autoscaler's config as `ray up` wrote it on the head node, or None; its path)."""
    import yaml

    path = Path(os.environ.get(AUTOSCALING_CONFIG_ENV, AUTOSCALING_CONFIG)).expanduser()
    if not path.is_file():
        return None, path
    try:
        return yaml.safe_load(path.read_text()), path
    except (OSError, yaml.YAMLError) as e:
        log.warning("cannot read autoscaling config %s (%s): using what is up now", path, e)
        return None, path


def resolve_gpus(
    configs: Sequence[TrialConfig], capacity: Mapping[str, float] | None, where: str
) -> tuple[list[TrialConfig], str]:
    """Give every trial that left resources.gpus_per_worker unset (None) a device.

    The rule of the single-trial CLI, at cluster scale: one GPU per training worker wherever
    `capacity` (the Ray cluster at its largest, or this machine) has GPUs, else the CPU.
    Trials that set it (`--gpus-per-trial`, a space, `--set`) keep their value; 0 is the CPU.
    `capacity` None means not known yet (a cluster not joined): the configs stay unresolved.
    Returns the configs and one line saying what was chosen and why, for the console.
    """
    if not any(c.resources.gpus_per_worker is None for c in configs):
        gpus = sorted({c.resources.gpus_per_worker for c in configs})
        return list(
            configs
        ), f"GPUs per training worker as set: {', '.join(f'{g:g}' for g in gpus)}"
    if capacity is None:
        return list(configs), (
            f"GPUs: decided when the sweep joins {where}: one per training worker if it has "
            "GPUs, else the CPU (--gpus-per-trial sets it)"
        )
    n = float(capacity.get("GPU", 0) or 0)
    value = 1.0 if n > 0 else 0.0
    if n > 0:
        reason = (
            f"GPUs: {where} has {n:g}, so each training worker takes 1 GPU "
            "(--gpus-per-trial 0.25 packs 4 small trials per GPU; 0 trains on the CPU)"
        )
    else:
        reason = f"GPUs: {where} has none, so trials train on the CPU (--gpus-per-trial sets it)"
    out = [
        c.replace(**{"resources.gpus_per_worker": value})
        if c.resources.gpus_per_worker is None
        else c
        for c in configs
    ]
    return out, reason


def local_gpu_capacity() -> dict[str, float]:
    """The GPUs a local Ray would see on this machine (CUDA devices torch can use)."""
    import torch

    return {"GPU": float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0}


def planned_capacity(address: str | None) -> tuple[dict[str, float] | None, str]:
    """(capacity, where) for planning without starting Ray: this machine for a local Ray;
    for a cluster, its autoscaler's node types when their config is readable here (on a `ray
    up` head node), else None (decided once the sweep joins it)."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        return local_gpu_capacity(), "this machine"
    autoscaling, path = read_autoscaling_config()
    if autoscaling:
        return max_cluster_resources({}, autoscaling), f"the cluster's node types ({path})"
    return None, "the Ray cluster"


def default_concurrency(configs: Sequence[TrialConfig], resources: Mapping[str, float]) -> int:
    """Trials that fit at once: Tune does not count Train workers' resources, so we do.

    min over trials of floor(cluster GPUs / (workers x GPUs per worker)), or for CPU trials
    floor(cluster CPUs / (workers x CPUs per worker + 0.01 for the trial's driver)); >= 1.
    """
    fits = []
    for c in configs:
        r = c.resources
        if (r.gpus_per_worker or 0) > 0:
            fits.append(resources.get("GPU", 0) / (r.workers * r.gpus_per_worker))
        else:
            fits.append(resources.get("CPU", 1) / (r.workers * r.cpus_per_worker + 0.01))
    return max(1, math.floor(min(fits)))


def startup_concurrency(configs: Sequence[TrialConfig], concurrent: int) -> int:
    """Worker processes a local Ray is expected to start at once for this sweep.

    Train V2 runs each trial as three kinds of process: Tune's function trainable, Train's
    controller, and the trial's training workers, so `concurrent` trials need
    concurrent x (2 + workers). Ray's raylet throttles startups to its CPU count and prints a
    warning at 4x that, which on a small machine fires for any sweep of 3 trials at once.
    """
    workers = max((c.resources.workers for c in configs), default=1)
    return max(1, concurrent) * (2 + workers)

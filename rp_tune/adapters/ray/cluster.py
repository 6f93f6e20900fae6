"""The Ray processes of a sweep: the driver's SIGTERM, what a killed driver's Ray left
behind, the resources a trial's Tune driver reserves, the cluster's capacity."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rp_tune.config import TrialConfig
from rp_tune.planning.capacity import (
    default_concurrency,
    local_gpu_capacity,
    max_cluster_resources,
    read_autoscaling_config,
    resolve_gpus,
    startup_concurrency,
)

log = logging.getLogger(__name__)
console = logging.getLogger("rp_tune.console")  # the sweep's own lines; run_sweep.py shows them


def stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's or `kill`'s stop) stops the sweep as Ctrl-C does: it becomes
    the SIGINT that Tune handles by saving its state and returning, so the summary and the
    --resume command are printed. A second SIGTERM goes to the handler it replaced (Ray's:
    stop its processes and exit). Only from the main thread, where signals are handled."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, previous)
        os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGTERM, handler)


# What a Ray of the sweep's own (one machine, started by the driver) does not need. Ray Train
# starts a PreemptionWatcher actor per trial that polls for nodes being preempted (spot
# instances): a process of its own, ~1.5 CPU-seconds to start on a 2-core machine, with
# nothing to watch where the only node is the driver's. A cluster (--address) keeps it.
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@contextlib.contextmanager
def local_ray_environment() -> Iterator[None]:
    """LOCAL_RAY_ENV around `ray.init` of a local Ray: its raylet, and so every worker it
    starts, inherits it; this process's environment is as before afterwards. A variable the
    user set wins."""
    saved = {k: os.environ.get(k) for k in LOCAL_RAY_ENV}
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def interrupt_after() -> Iterator[None]:
    """Ctrl-C (SIGINT, and SIGTERM made SIGINT by `stop_on_sigterm`) during the block takes
    effect as it ends: for `ray.init`, which a KeyboardInterrupt half-way through would
    leave with processes started that `ray.shutdown` does not know of yet. Only from the
    main thread, where signals are handled."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if got:
        raise KeyboardInterrupt


def ray_logs_dir() -> str:
    """Where this Ray session keeps its processes' logs (the training workers' included)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is not None:
        return str(Path(node.get_session_dir_path(), "logs"))
    return "the Ray head node's /tmp/ray/session_latest/logs"


def stop_ray_session(session_dir: str) -> int:
    """SIGKILL what is left of a local Ray whose driver was killed; returns the count.

    A SIGKILLed driver takes only part of its Ray down: its GCS and raylet go with it, its
    dashboard agent and runtime-env agent run on, reparented, under process titles
    (`ray::DashboardAgent`) that no longer name anything. A process of the session is one
    whose command line names the session folder (`/tmp/ray/session_<date>_<pid>`) or that
    holds a file open in it (every Ray process keeps its logs there); each, and every
    process under it, is stopped.
    """
    import psutil

    folder = session_dir.rstrip("/")
    name = os.path.basename(folder)
    if not name.startswith("session_"):
        return 0
    victims: dict[int, Any] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = p.info["cmdline"] or []
            if p.pid == os.getpid() or not any("ray" in a for a in cmdline):
                continue
            if any(name in a for a in cmdline) or any(
                f.path.startswith(folder + "/") for f in p.open_files()
            ):
                for q in [p, *p.children(recursive=True)]:
                    victims[q.pid] = q
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for q in victims.values():
        try:
            q.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    psutil.wait_procs(list(victims.values()), timeout=10)
    return len(victims)


def stop_what_dead_drivers_left(root: str) -> list[str]:
    """Every command against a results root first stops the local Ray that a killed driver
    of any sweep under it left running (`stop_ray_session`), so that none outlives the next
    command; where that Ray ran on another host, the line says how to stop it there. One
    line per sweep for the console; none when nothing was left."""
    import socket

    from rp_tune.planning.plan import dead_drivers

    here, lines = socket.gethostname(), []
    for name, lease in sorted(dead_drivers(root).items()):
        session = str(lease.get("ray_session") or "")
        if not session:  # it joined a cluster (--address), or died before its Ray started
            continue
        host = lease.get("host")
        who = f"the killed driver of the sweep {name!r} (pid {lease.get('pid')} on {host})"
        if host != here:
            lines.append(
                f"{who} may have left its Ray running there: on {host}, "
                f"stop it with: pkill -9 -f {os.path.basename(session.rstrip('/'))}"
            )
            continue
        stopped = stop_ray_session(session)
        if stopped:
            lines.append(f"stopped {stopped} Ray processes that {who} left running ({session})")
    return lines


HEAD_RESOURCE = "node:__internal_head__"  # Ray gives the head node this resource


def trial_driver_resources(nodes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """What one trial's driver (the Tune trainable and its Train controller) reserves.

    It only waits on its workers, so 0.01 CPU. Where the head node has a CPU, the driver is
    pinned there: the autoscaler never removes the head, so losing a worker node (spot
    preemption, scale-down, hardware) costs only that node's training workers, which Ray
    Train restarts elsewhere from the trial's last checkpoint; the trial itself lives on.
    """
    for node in nodes:
        res = node.get("Resources", {})
        if node.get("Alive") and HEAD_RESOURCE in res and res.get("CPU", 0) >= 1:
            return {"CPU": 0.01, HEAD_RESOURCE: 0.001}
    return {"CPU": 0.01}


def expected_startups(
    configs: Sequence[TrialConfig], num_cpus: int | None, max_concurrent: int | None
) -> dict[str, int]:
    """Tell the local raylet how many worker processes this sweep starts at once.

    Without it a 2-core machine prints Ray's "8 PYTHON worker processes have been started
    ... 4x the maximum expected startup concurrency" on the console for a sweep of three
    trials, the normal shape of Train V2 (see `startup_concurrency`). A user's own
    RAY_worker_maximum_startup_concurrency wins; never below Ray's own default (the CPUs).
    Returns the local Ray's `_system_config`.
    """
    if "RAY_worker_maximum_startup_concurrency" in os.environ:
        return {}
    cpus = num_cpus or os.cpu_count() or 1
    capacity = {"CPU": float(cpus), **local_gpu_capacity()}
    resolved, _ = resolve_gpus(configs, capacity, "this machine")
    concurrent = max_concurrent or default_concurrency(resolved, capacity)
    expected = max(cpus, startup_concurrency(resolved, concurrent))
    return {"worker_maximum_startup_concurrency": expected}


def cluster_capacity(joined: bool) -> dict[str, float]:
    """Resources of the Ray cluster at its largest (see `max_cluster_resources`).

    When the sweep joined a cluster (`joined`, i.e. --address) and runs on a `ray up` head
    node, that node holds the autoscaler's config with every node type's resources; without
    it, an autoscaling cluster that starts with no GPU workers would run one trial at a time.
    """
    import ray

    current = ray.cluster_resources()
    autoscaling, cfg_path = read_autoscaling_config() if joined else (None, None)
    capacity = max_cluster_resources(current, autoscaling)
    if autoscaling:
        log.info(
            "autoscaling cluster (%s): up now %s, at most %s",
            cfg_path,
            {k: current.get(k, 0) for k in ("CPU", "GPU")},
            {k: capacity.get(k, 0) for k in ("CPU", "GPU")},
        )
    return capacity


def capacity_at(address: str, timeout_s: float = 5.0) -> dict[str, float]:
    """The resources of the running Ray cluster at `address`, at their largest (its
    autoscaler's node types where `ray up` left their config here), for a dry run: joins it
    as a driver for a moment (no task, no actor: the cluster lists a job of a few seconds)
    and leaves.

    ConnectionError naming the address when nothing answers at host:port within `timeout_s`
    (Ray's own connect would wait a minute before it gives up)."""
    import socket

    import ray

    host, _, port = address.rpartition(":")
    if host and port.isdigit() and "://" not in address:
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
        except OSError as e:
            raise ConnectionError(f"no Ray cluster answers at {address}: {e}") from None
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except ConnectionError as e:
        if os.environ.get("RAY_AUTH_MODE") is None:  # Ray 2.60's own clusters check a token
            raise ConnectionError(
                f"{e}; a cluster started by `ray start` or `ray up` checks a token: export "
                "RAY_AUTH_MODE=token where ~/.ray/auth_token (or RAY_AUTH_TOKEN) holds it, for "
                "the sweep too"
            ) from None
        raise
    try:
        return cluster_capacity(joined=True)
    finally:
        ray.shutdown()

"""Sweeps on Ray: the only module that imports ray.

Ray 2.60 runs Train V2, so a Tune function trainable builds and fits one `TorchTrainer` per
trial (DDP over `resources.workers` workers, or a fraction of a GPU for one worker); the
workers run `rp_tune.trial.train.run_trial` and report every epoch with `ray.train.report`, and
`TuneReportCallback` carries those reports to Tune. The Train run is named after the trial's
run key and stored beside the Tune experiment, so a trial that Tune restarts (after a driver
crash and `--resume`) finds its own checkpoints. Worker crashes are retried by Train
(`FailureConfig(max_failures)`) from the last checkpoint; trial crashes by Tune.

Every config is expanded and validated before Ray starts (`rp_tune.planning.plan`, which imports no
Ray), so a bad value stops the sweep with one message and nothing started or written. A
trial's identity is the run key stored when the sweep started, handed to its workers: a
newer release that added config fields resumes the trial from its own checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rp_tune.adapters.ray.callbacks import callback_class, trial_flat
from rp_tune.adapters.ray.cluster import (
    cluster_capacity,
    expected_startups,
    interrupt_after,
    local_ray_environment,
    ray_logs_dir,
    stop_on_sigterm,
    stop_ray_session,
    trial_driver_resources,
)
from rp_tune.adapters.ray.trainable import GROUPS_DIR, RECURRING_ERRORS, _tune_trial, error_summary
from rp_tune.config import TrialConfig, from_flat, trial_epochs
from rp_tune.core import storage as store
from rp_tune.core.errors import SweepError
from rp_tune.core.layout import GROUP_PREFIX
from rp_tune.core.provenance import CODE_DIFF_FILE, code_state
from rp_tune.planning.capacity import (
    default_concurrency,
    local_gpu_capacity,
    resolve_gpus,
)
from rp_tune.planning.plan import (
    SweepSummary,
    TrialOutcome,
    check_not_held,
    check_resume,
    driver_lock,
    plan_trials,
    stored_outcome,
    trial_cost,
    trial_status,
)
from rp_tune.planning.progress import Progress
from rp_tune.planning.records import (
    SUMMARY_FILE,
    TRIALS_FILE,
    all_results,
    copy_reused_trials,
    interrupted_before_stored,
    stored_trials,
    write_summary,
    write_trial_entries,
    write_unit,
)
from rp_tune.planning.space import space_params
from rp_tune.trial.groups import describe_units, is_unit, plan_units

log = logging.getLogger(__name__)
console = logging.getLogger("rp_tune.console")  # the sweep's own lines; run_sweep.py shows them


@dataclass
class _Driver:
    """One driver's state while it runs a sweep: the options it was given, where the sweep
    lives, and what its steps make (the lock, the tracker, the trials' configs by run key)."""

    configs: Sequence[TrialConfig]
    name: str
    storage: str
    space: str
    tracking_uri: str | None
    tracking: bool
    experiment: str | None
    log_weights: bool
    resume: bool
    address: str | None
    max_concurrent: int | None
    train_max_failures: int
    tune_max_failures: int
    num_cpus: int | None
    inject_fault_epoch: int | None
    verbose: bool
    extend: bool
    reuse: bool
    group_size: int
    system_metrics: str
    root: str = ""
    path: str = ""
    train_storage: str = ""
    uri: str | None = None
    lock: Any = None
    tracker: Any = None
    flats: dict[str, dict] = field(default_factory=dict)  # run key -> flat config, all trials
    known: dict[str, int] = field(default_factory=dict)  # run key -> its epochs
    callbacks: list[Any] = field(default_factory=list)
    need_ray: bool = True
    ahead: Any = None  # the trial plan made before Ray, for the devices of this machine
    local: dict[str, float] = field(default_factory=dict)
    resolved: Sequence[TrialConfig] = ()
    own_ray: bool = False  # this driver started its Ray (local): it stops it at the end
    search: Any = None  # SearchSettings of a matching-density search; None: the grid
    toy_noise: float | None = None  # testing: trials report a known curve, no training


def run_sweep(
    configs: Sequence[TrialConfig],
    *,
    name: str,
    storage: str,
    space: str = "",
    tracking_uri: str | None = None,
    tracking: bool = True,
    experiment: str | None = None,
    log_weights: bool = False,
    resume: bool = False,
    address: str | None = None,
    max_concurrent: int | None = None,
    train_max_failures: int = 3,
    tune_max_failures: int = 2,
    num_cpus: int | None = None,
    inject_fault_epoch: int | None = None,
    verbose: bool = False,
    extend: bool = False,
    reuse: bool = True,
    group_size: int = 1,
    system_metrics: str = "auto",
    search: Any = None,
    toy_noise: float | None = None,
) -> SweepSummary:
    """Run (or, with resume=True, continue) a sweep; returns the per-trial outcome.

    system_metrics: `auto` (the default: on for trials that train on a GPU), `on` or `off`:
    the training workers' CPU, memory, disk, network and GPU metrics per epoch
    (`tracking.SystemMetrics`) in each trial's MLflow run; a --resume keeps the sweep's.

    group_size: train up to this many trials that differ only in sparsity and seeds as one
    fused trial group each (`rp_tune.trial.fused`); each stays its own trial in every record.

    extend: add `configs` to a finished sweep and train only those it does not hold.
    reuse: a trial whose config finished in another sweep under the same results root is
    taken from there, not trained again (`plan.plan_trials`).

    verbose: Ray's, Tune's and the training workers' own output on the console too; without
    it they go to Ray's session logs, and this module's log to `<sweep>/driver.log`.

    search: SearchSettings of a matching-density search of the groups of `configs`
    (`planning.matching_plan`). toy_noise: testing only, `adapters.ray.toy`."""
    d = _Driver(**locals())  # the options as given; the steps fill in the rest
    _refuse_a_bad_state(d)
    _plan_before_ray(d)
    started, code = time.time(), code_state()
    _take_the_lock(d)
    handler = _log_to_the_sweep(d)
    try:
        _start_or_join_ray(d)
        _start_tracking(d)
        tuner = _restore_tuner(d) if d.resume else _new_tuner(d)
        grid = tuner.fit() if tuner is not None else []
        log.info("Ray Tune returned: %d trials in its results", len(grid))
        outcomes = _collect_outcomes(d, grid)
        log.info("every trial's outcome read: %d", len(outcomes))
        return _finish(d, outcomes, time.time() - started, code)
    finally:
        _let_go(d, handler)


def _let_go(d: _Driver, handler: logging.Handler | None) -> None:
    """The driver's end, however it ends: the tracker closed (after a second Ctrl-C or a
    crash: the sweep marked interrupted), the local Ray it started stopped (its state is
    saved; not left to the process's exit), its log file closed, the lock released."""
    if d.tracker is not None:  # fit() or the summary raised (a second Ctrl-C, a crash)
        d.tracker.sweep_end({"interrupted": 1})
        d.tracker.close()  # what cannot be delivered goes to the pending file
    if d.own_ray:
        import ray

        t = time.monotonic()
        ray.shutdown()
        log.info("the sweep's local Ray stopped in %.1f s", time.monotonic() - t)
    if handler is not None:
        for name_ in _LOGGED:
            logging.getLogger(name_).removeHandler(handler)
        handler.close()
    d.lock.release()


def _refuse_a_bad_state(d: _Driver) -> None:
    """SweepError, before anything is written: a bad option, a sweep another driver holds,
    storage that cannot be read, --resume without a sweep or --extend of an unfinished one,
    a new sweep where one exists, configs that are not the stored sweep's, a bad MLflow URI."""
    from ray import tune

    if d.system_metrics not in ("auto", "on", "off"):
        raise SweepError(f"--system-metrics {d.system_metrics!r} is invalid; valid: auto, on, off")
    d.root = store.resolve(d.storage)
    d.path = store.join(d.root, d.name)
    d.train_storage = store.join(d.root, f"{d.name}-train")
    d.lock = driver_lock(d.root, d.name)
    check_not_held(d.root, d.name)  # first: a sweep another driver starts may not restore
    try:
        can_restore = tune.Tuner.can_restore(d.path)
    except Exception as e:  # unreachable bucket, missing credentials, unknown scheme
        raise SweepError(f"--storage {d.storage!r} cannot be read: {e}") from None
    # a sweep whose every trial was reused has its trials.json and no Tune experiment
    exists = can_restore or store.exists(store.join(d.path, TRIALS_FILE))
    if d.resume and not can_restore:
        if not (exists or interrupted_before_stored(d.path)):
            raise SweepError(f"--resume: no sweep to resume at {d.path}")
        check_resume(d.path, d.configs, _search_record(d))  # what it stored, if it got far
        # stopped (Ctrl-C, SIGTERM) before Tune stored anything: nothing trained under Tune
        # (a Train run's checkpoints are found again by trial name); planned and started anew
        console.info("sweep %s never reached Ray Tune before it was stopped: starting it", d.name)
        d.resume, exists = False, False
    if d.extend and not exists:
        raise SweepError(f"--extend: no sweep at {d.path} to extend; start it without --extend")
    if not d.resume and not d.extend and exists:
        raise SweepError(
            f"a sweep already exists at {d.path}: pass --resume to continue it, --extend to add "
            "trials to it, or --name to start another"
        )
    if d.extend:
        left = [t for t in stored_trials(d.path) if stored_outcome(d.path, t).status != "finished"]
        if left:
            raise SweepError(
                f"--extend: {len(left)} trials of the sweep at {d.path} are not finished "
                f"(e.g. {left[0]['run_key']}); --resume it first"
            )
    if d.resume:
        check_resume(d.path, d.configs, _search_record(d))
    if d.tracking:
        from rp_tune.adapters.mlflow.tracking import default_tracking_uri

        try:
            d.uri = d.tracking_uri or default_tracking_uri(d.path)
        except ValueError as e:
            raise SweepError(str(e)) from None


def _search_record(d: _Driver) -> dict[str, Any] | None:
    """What identifies the driver's search, None for a grid (`check_resume`)."""
    if d.search is None:
        return None
    from rp_tune.planning.matching_plan import search_groups, search_record

    return search_record(search_groups(d.configs, d.space), d.search)


def _plan_before_ray(d: _Driver) -> None:
    """Where every trial finished already (reused, or kept by --extend), a local sweep has
    nothing to train: it records the trials and ends without starting Ray."""
    if not d.resume and d.search is None and not (d.address or os.environ.get("RAY_ADDRESS")):
        d.local = {"CPU": float(d.num_cpus or os.cpu_count() or 1), **local_gpu_capacity()}
        d.resolved, _ = resolve_gpus(d.configs, d.local, "this machine")
        held = stored_trials(d.path) if d.extend else ()
        d.ahead = plan_trials(d.resolved, d.root, d.name, held, d.reuse)
        d.need_ray = bool(d.ahead.train)


def _take_the_lock(d: _Driver) -> None:
    try:
        d.lock.acquire()
    except store.LockHeld as e:
        raise SweepError(str(e)) from None
    except OSError as e:  # a read-only or unreachable store
        raise SweepError(f"--storage {d.storage!r}: cannot write the sweep's lock: {e}") from None


def _log_to_the_sweep(d: _Driver) -> logging.Handler | None:
    """This driver's own log, `<sweep>/driver.log`, beside the sweep's results (local)."""
    if store.is_uri(d.path):
        return None
    Path(d.path).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(str(Path(d.path, "driver.log")))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name_ in _LOGGED:
        logging.getLogger(name_).addHandler(handler)
    return handler


def _start_or_join_ray(d: _Driver) -> None:
    """Stop what a crashed driver's Ray left here, then a Ray of our own (local), the
    cluster at --address / RAY_ADDRESS, or none when nothing is left to train."""
    import ray

    dead = d.lock.previous or {}
    if dead.get("ray_session") and dead.get("host") == d.lock.host:
        stopped = stop_ray_session(dead["ray_session"])
        if stopped:
            log.info(
                "stopped %d processes left by the crashed driver's Ray (%s)",
                stopped,
                dead["ray_session"],
            )
    if d.resume:  # the data may have been fixed since: trials that failed on it try again
        for key in store.list_names(store.join(d.train_storage, RECURRING_ERRORS)):
            store.delete(store.join(d.train_storage, RECURRING_ERRORS, key))
    # `ray job submit` sets RAY_ADDRESS for its driver: join that cluster as with --address.
    d.address = d.address or os.environ.get("RAY_ADDRESS") or None
    level = logging.INFO if d.verbose else logging.ERROR
    if not d.need_ray:
        console.info("every trial of the sweep finished before: nothing to train, no Ray")
    elif d.address is None and not ray.is_initialized():
        # address="local": a new Ray of our own, never the cluster that
        # /tmp/ray/ray_current_cluster happens to name (another sweep's, a test run's)
        startups = expected_startups(d.configs, d.num_cpus, d.max_concurrent)
        with local_ray_environment(), interrupt_after():
            ray.init(
                address="local",
                _system_config=startups,
                num_cpus=d.num_cpus,
                include_dashboard=True,
                log_to_driver=d.verbose,
                logging_level=level,
            )
        d.own_ray = True
        node = getattr(ray._private.worker, "_global_node", None)
        if node is not None:  # so that a successor can stop it if this driver is killed
            d.lock.update(ray_session=node.get_session_dir_path())
    elif not ray.is_initialized():
        with interrupt_after():
            ray.init(address=d.address, log_to_driver=d.verbose, logging_level=level)
    stop_on_sigterm()  # after ray.init, which sets its own SIGTERM handler
    if d.need_ray:
        console.info(
            "logs: Ray's and the training workers' in %s; this driver's in %s%s",
            ray_logs_dir(),
            str(Path(d.path, "driver.log")) if not store.is_uri(d.path) else "the console",
            "" if d.verbose else " (-v shows them here)",
        )
    if not d.verbose:  # Tune's own reporter: its new one prints a box at any verbosity,
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic one none at 0


def _start_tracking(d: _Driver) -> None:
    """The sweep's MLflow tracker and the Tune callback that feeds it."""
    if d.uri is None:
        return
    from rp_tune.adapters.mlflow.tracking import SweepTracker

    embedded = d.uri.startswith("sqlite:")
    exp_name = d.experiment or d.space or d.name
    location = None
    if embedded and not store.is_uri(d.path):
        location = Path(d.root, "mlartifacts", exp_name).resolve().as_uri()
    d.tracker = SweepTracker(
        d.uri,
        exp_name,
        sweep_path=d.path,
        space=d.space or d.name,
        sweep_dir=d.path,
        artifact_location=location,
        space_params=space_params(d.configs),
        configs=d.configs,
        after_a_killed_driver=d.lock.previous.get("token", "") if d.lock.previous else None,
        driver=d.lock.token,
    )
    if d.lock.previous:
        console.info(
            "the sweep's last driver was killed (pid %s on %s): the MLflow runs it left "
            "RUNNING are closed (KILLED) before this driver logs, and RUNNING again as their "
            "trials continue",
            d.lock.previous.get("pid"),
            d.lock.previous.get("host"),
        )
    d.lock.update(tracking_uri=d.uri)  # so that a command after a killed driver can close them
    d.callbacks.append(callback_class("TrackingCallback")(d.tracker, d.flats))
    console.info("MLflow tracking at %s (experiment %r)", d.uri, d.tracker.experiment)


def _trainable(d: _Driver, keys: Sequence[str]) -> Any:
    """`_tune_trial` with the flat configs of the trials `keys` (a group: its members) in
    Ray's object store, put there once: Tune's config of a trial names its run key only.

    Why not the flat config in Tune's config: Tune keeps a trial's config four times in its
    experiment state (config, unresolved config, the searcher's evaluated params, the last
    result) and again in its experiment tag, ~2 KB each, and rewrites the whole state for
    every trial, finished ones included: ~48 KB per trial, ~480 MB per save at 10,000."""
    import ray
    from ray import tune

    if not d.need_ray:
        return None
    plan = {k: json.dumps(d.flats[k], separators=(",", ":")) for k in keys}  # text: quick to load
    return tune.with_resources(
        tune.with_parameters(_tune_trial, plan=plan), trial_driver_resources(ray.nodes())
    )


def _trial_name(trial: Any) -> str:
    """A Tune trial's name and folder: its run key (by reference in Tune's state; a lambda
    would be pickled into every trial's record)."""
    return trial.config["trial"]["run_key"]


def _restore_tuner(d: _Driver) -> Any:
    """The interrupted sweep's Tuner, its unpickled callbacks (which lost their tracker and
    console) replaced by live ones; the trials as stored when it started."""
    from ray import tune

    for flag, given in (
        ("--log-weights", d.log_weights),
        ("--system-metrics", d.system_metrics != "auto"),
        ("--group-size", d.group_size > 1),  # the plan's groups, or the search's, as started
    ):
        if given:
            log.warning(
                "%s is set when a sweep starts and kept by --resume: this sweep keeps "
                "the setting it started with",
                flag,
            )
    entries = stored_trials(d.path)  # read once: trial epochs and configs
    d.known = {e["run_key"]: trial_epochs(e["flat"]) for e in entries}
    d.flats.update({e["run_key"]: e["flat"] for e in entries})
    # a search recorded an errored probe as failed and asked for its next seed: trained
    # again its result would reach no search
    tuner = tune.Tuner.restore(
        d.path,
        trainable=_trainable(d, list(d.known)),
        resume_unfinished=True,
        resume_errored=d.search is None,
    )
    run_config = tuner._local_tuner.get_run_config()
    stored = [from_flat(e["flat"]) for e in entries]
    capacity = cluster_capacity(d.address is not None)
    concurrent = d.max_concurrent or default_concurrency(stored or d.configs, capacity)
    d.callbacks.append(callback_class("ConsoleCallback")(Progress(d.known, concurrent), d.flats))
    lazy = (callback_class("TrackingCallback"), callback_class("ConsoleCallback"))
    run_config.callbacks = [
        c for c in run_config.callbacks or [] if not isinstance(c, lazy)
    ] + d.callbacks
    run_config.verbose = 1 if d.verbose else 0
    console.info(
        "sweep %s: resuming %d trials, at most %d at a time, results in %s",
        d.name,
        len(d.known),
        concurrent,
        d.path,
    )
    return tuner


def _new_tuner(d: _Driver) -> Any:
    """A new sweep: the devices Ray has, the trials to train (others reused or kept), the
    trial groups, then a Tuner over them; None when every trial finished before. A
    matching-density search: `_search_tuner`."""
    if d.search is not None:
        return _search_tuner(d)
    if d.need_ray:
        capacity = cluster_capacity(d.address is not None)
        configs, gpu_choice = resolve_gpus(d.configs, capacity, "the Ray cluster")
        console.info("%s", gpu_choice)
        if d.ahead is not None and [c.to_flat() for c in configs] == [
            c.to_flat() for c in d.resolved
        ]:  # the local Ray chose the devices the plan assumed: no second scan
            trials = d.ahead
        else:
            held = stored_trials(d.path) if d.extend else ()
            trials = plan_trials(configs, d.root, d.name, held, reuse=d.reuse)
    else:
        capacity, configs, trials = d.local, d.resolved, d.ahead
    _record_the_plan(d, trials)
    entries = _units(d, trials)
    d.known = {e["run_key"]: trial_epochs(e["flat"]) for e in trials.entries}
    concurrent = d.max_concurrent or default_concurrency(configs, capacity)
    progress = Progress(d.known, concurrent)
    progress.finished_before(e["run_key"] for e in trials.kept + trials.reused)
    d.callbacks.append(callback_class("ConsoleCallback")(progress, d.flats))
    if not entries:  # every trial finished before: nothing for Tune
        return None
    from rp_tune.adapters.ray.searcher import PlannedTrials

    plan = [e["run_key"] for e in trials.train]  # not a grid-search spec: see the searcher
    tuner = _tuner(d, _trainable(d, plan), PlannedTrials(entries), len(entries), concurrent)
    console.info(
        "sweep %s: %d trials, %d to train, at most %d at a time, results in %s",
        d.name,
        len(trials.entries),
        len(trials.train),
        concurrent,
        d.path,
    )
    return tuner


def _search_tuner(d: _Driver) -> Any:
    """A new matching-density search: its groups from the space's configs as Ray places
    them, `search/search.json` and an empty trials.json (the sweep is stored; its probes join as
    they start), then a Tuner whose searcher decides every trial."""
    from rp_tune.adapters.ray.searcher import MatchingTrials
    from rp_tune.planning.matching_plan import (
        describe_fusing,
        fused_size,
        search_groups,
        search_record,
        with_parallel,
        write_search,
    )

    capacity = cluster_capacity(d.address is not None)
    configs, gpu_choice = resolve_gpus(d.configs, capacity, "the Ray cluster")
    console.info("%s", gpu_choice)
    groups = search_groups(configs, d.space)
    concurrent = d.max_concurrent or default_concurrency(configs, capacity)
    settings = with_parallel(d.search, concurrent, len(groups), fused_size(groups, d.group_size))
    record = search_record(groups, d.search)  # as given: a --resume gives it again
    write_search(d.path, record)
    write_trial_entries(d.path, [])
    d.callbacks.append(callback_class("ConsoleCallback")(Progress({}, concurrent), d.flats))
    groups_dir = store.join(d.train_storage, GROUPS_DIR)  # a trial group's members file
    searcher = MatchingTrials(
        groups, settings, d.root, d.name, d.reuse, record, d.group_size, groups_dir
    )
    if d.group_size > 1:
        console.info("%s", describe_fusing(groups, d.group_size))
    worst = len(groups) * settings.worst_trials()  # the searcher ends it far sooner
    tuner = _tuner(d, _trainable(d, []), searcher, worst, concurrent)
    console.info(
        "sweep %s: matching-density search of %d groups (probes per round per group: %d), "
        "at most %d trials at a time, results in %s",
        d.name,
        len(groups),
        settings.parallel,
        concurrent,
        d.path,
    )
    return tuner


def _tuner(d: _Driver, trainable: Any, searcher: Any, samples: int, concurrent: int) -> Any:
    """The sweep's Tuner: the trainable, what every trial shares, the searcher that hands
    out each trial's own entry, the storage, retries and callbacks."""
    from ray import tune

    fault = None
    if d.inject_fault_epoch:
        fault = {"epoch": d.inject_fault_epoch, "dir": store.join(d.train_storage, "_faults")}
    param_space = {  # what every trial shares; each trial's own entry comes from the searcher
        "train_storage": d.train_storage,
        "train_max_failures": d.train_max_failures,
        "save_weights": d.log_weights,
        # measured for MLflow: nothing to measure for without tracking
        "system_metrics": d.system_metrics if d.uri is not None else "off",
        "fault": fault,
        "toy_noise": d.toy_noise,  # testing: a known accuracy curve instead of training
    }
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=samples,
            max_concurrent_trials=concurrent,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
            reuse_actors=d.toy_noise is not None,  # a toy trial is a second; its process is not
        ),
        run_config=tune.RunConfig(
            name=d.name,
            storage_path=d.root,
            failure_config=tune.FailureConfig(max_failures=d.tune_max_failures),
            callbacks=d.callbacks,
            verbose=1 if d.verbose else 0,
        ),
    )


def _record_the_plan(d: _Driver, trials: Any) -> None:
    """The reused trials' records into this sweep, and trials.json: every trial's entry."""
    if trials.reused:  # their records join this sweep; their checkpoints stay
        copy_reused_trials(d.root, d.name, trials.reused)
        by = Counter(e["reused_from"] for e in trials.reused)
        console.info(
            "reused %d trials that finished in other sweeps under %s, not trained again: %s",
            len(trials.reused),
            d.root,
            ", ".join(f"{n} from {s}" for s, n in sorted(by.items())),
        )
        for e in trials.reused:
            log.info("reused %s from %s", e["run_key"], e["reused_from"])
    if d.extend:
        console.info(
            "sweep %s extended: %d new trials, %d finished before and kept",
            d.name,
            len(trials.entries) - len(trials.kept),
            len(trials.kept),
        )
    write_trial_entries(d.path, trials.entries)
    d.flats.update({e["run_key"]: e["flat"] for e in trials.entries})


def _units(d: _Driver, trials: Any) -> list[dict[str, Any]]:
    """What Tune trains, each as Tune's config holds it: a trial alone by its run key (its
    flat config reaches it through `_trainable`), a trial group by its key, its members' keys
    and the file with the members' entries (in Tune's config they would repeat in every
    result row)."""
    units, why_alone = plan_units(trials.train, d.group_size)
    if d.group_size > 1:
        console.info("%s", describe_units(units, why_alone, d.group_size))
    entries = []
    for unit in units:
        if not is_unit(unit):
            entries.append({"run_key": unit["run_key"]})
            continue
        # members' own folders (for status and report) and their file, beside the Train runs
        entries.append(write_unit(d.path, store.join(d.train_storage, GROUPS_DIR), unit))
    return entries


def _collect_outcomes(d: _Driver, grid: Any) -> list[TrialOutcome]:
    """Every trial's outcome: from Tune's results (a group's members from their own rows),
    then the stored trials Tune did not hold (finished before, reused, not started)."""
    outcomes = []
    for i, result in enumerate(grid):
        trial = (result.config or {}).get("trial")
        error = "" if result.error is None else error_summary(result.error)
        if trial is not None and is_unit(trial):  # a group: each member from its rows
            for member in trial["members"]:
                flat = trial_flat(member, trial, d.flats)
                out = stored_outcome(d.path, {"run_key": member, "flat": flat})
                if error and out.status != "finished" and not out.error:
                    out.status, out.error = "failed", error
                outcomes.append(out)
        elif trial is None:  # stopped before it started (Ctrl-C): Tune kept no config
            key = store.basename(result.path) if result.path else f"trial-{i}"
            if not key.startswith(GROUP_PREFIX):  # a group's members: pending, from trials.json
                status = "failed" if error else "pending"
                outcomes.append(TrialOutcome(key, status, 0, d.known.get(key, 0), 0, error=error))
        else:
            flat = d.flats.get(trial["run_key"]) or trial["flat"]  # a search's probe: its own
            outcomes.append(_outcome(trial["run_key"], flat, result, error))
    seen = {t.run_key for t in outcomes}
    folders = set(store.list_names(d.path))  # once: most trials of a large sweep have none
    for e in stored_trials(d.path):  # finished before, reused, or not started by Tune yet
        if e["run_key"] not in seen:
            outcomes.append(stored_outcome(d.path, e, folders))
    return outcomes


def _outcome(key: str, flat: Mapping[str, Any], result: Any, error: str) -> TrialOutcome:
    """A trial's outcome from its Tune result: its last metrics, and its wall-clock,
    retries and device-hours from all it reported."""
    epochs = trial_epochs(flat)
    m = dict(result.metrics or {})
    if result.path:
        m.update(trial_cost(all_results(result.path) or [m], flat))
    return TrialOutcome(
        run_key=key,
        status=trial_status(m, epochs, errored=result.error is not None),
        epoch=int(m.get("epoch", 0) or 0),
        epochs=epochs,
        resumed_from_epoch=int(m.get("resumed_from_epoch", 0) or 0),
        metrics={k: v for k, v in m.items() if not k.startswith(("config", "_"))},
        error=error,
    )


def _finish(
    d: _Driver, outcomes: list[TrialOutcome], wall: float, code: dict[str, Any]
) -> SweepSummary:
    """summary.json (and the diff of a dirty checkout beside it), the sweep's end in MLflow
    with the summary as an artifact; the tracker closed once its events are delivered."""
    summary = SweepSummary(
        name=d.name,
        path=d.path,
        trials=outcomes,
        tracking_uri=d.uri,
        wall_seconds=wall,
        code=code,
        mlflow_url=d.tracker.link if d.tracker is not None else None,
    )
    if code["dirty"]:  # the commit alone does not say what ran: its diff beside it
        store.write_text(store.join(d.path, CODE_DIFF_FILE), code["diff"])
    write_summary(d.path, summary.to_json())
    log.info("summary written: %s", store.join(d.path, SUMMARY_FILE))
    if d.tracker is not None:
        with tempfile.TemporaryDirectory(prefix="rp_tune-summary-") as tmp:
            local = Path(tmp, SUMMARY_FILE)  # MLflow logs local files; storage may be s3://
            local.write_text(summary.to_json())
            counts = {
                "total": len(outcomes),
                "finished": summary.finished,
                "failed": summary.failed,
                "unfinished": summary.unfinished,
                "resumed": summary.resumed,
            }
            d.tracker.sweep_end(counts, artifacts=[str(local)], totals=summary.totals())
            d.tracker.close()  # waits until the events (and this file) are delivered or saved
            d.tracker = None
            log.info("MLflow tracking closed")
    return summary


# loggers whose records also go to <sweep>/driver.log (the console's own does not propagate)
_LOGGED = ("rp_tune", "rp_tune.console", "ray")


def __getattr__(name: str) -> Any:
    """The callback classes under this module's name too: `rp_tune.sweep` (the import path
    Tune pickled them by before the layered packages) forwards here."""
    if name in ("TrackingCallback", "ConsoleCallback"):
        return callback_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#!/usr/bin/env python
"""Run a search space as a Ray Tune sweep: `python run_sweep.py --space width_scan`.

Thin CLI over rp_tune.adapters.ray.sweep: every config is expanded and validated before Ray starts.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import sys

from rp_tune.config import ConfigError

STORAGE_ENV = "RP_TUNE_STORAGE"  # cluster.yaml sets these on every node
DATA_ROOT_ENV = "RP_TUNE_DATA_ROOT"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: one parser, its options in groups (the sweep, what to do with it,
    MLflow, resources); every command reads the same overrides (`_overrides`)."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=_spaces_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for add, title in GROUPS:
        add(p.add_argument_group(title))
    return p.parse_args(argv)


def _what_to_run(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--space",
        default="smoke",
        help="a module of search_spaces/, e.g. width_scan (default: smoke, 4 tiny CPU trials)",
    )
    g.add_argument("--smoke", action="store_true", help="the space's tiny SMOKE version")
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a flat config key for every trial (repeatable); data.root defaults "
        f"to ${DATA_ROOT_ENV} when set",
    )
    g.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="make a flat config key an axis of the sweep with these values (repeatable), "
        "e.g. --grid seed=0,1,2",
    )
    g.add_argument("--name", default=None, help="sweep name (default: the space's name)")
    g.add_argument(
        "--storage",
        default=os.environ.get(STORAGE_ENV, "results"),
        help=f"results folder (a shared path on a cluster) or s3://bucket/prefix (default: "
        f"${STORAGE_ENV}, else results)",
    )


def _commands(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    g.add_argument(
        "--extend",
        action="store_true",
        help="add trials to a finished sweep (a space edit, --set or --grid that gives more "
        "seeds or grid values): only those it does not hold are trained",
    )
    g.add_argument(
        "--search",
        default="grid",
        metavar="{grid,matching}",
        help="grid: train the space's grid (default); matching: per group of the grid without "
        "its density and seed axes, search the smallest density that matches dense (log "
        "space, to a factor 1.25 by default) in a fraction of the grid's trials",
    )
    g.add_argument(
        "--search-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the search (repeatable): low, high (density bounds in (0, 1]), "
        "resolution (> 1), seed_cap, dense_seeds, parallel, margin; over the space's SEARCH dict",
    )
    g.add_argument(
        "--no-reuse",
        action="store_true",
        help="train every trial, even one whose config finished in another sweep under "
        "--storage (by default it is taken from there)",
    )
    g.add_argument(
        "--status",
        action="store_true",
        help="the table of this sweep's trials (finished, running, failed, pending) from its "
        "storage, without starting Ray; during a run or after",
    )
    g.add_argument(
        "--report",
        action="store_true",
        help="write the results table and figures of an existing sweep; no training",
    )
    g.add_argument(
        "--evaluate",
        action="store_true",
        help="evaluate the sweep's finished trials again from their final checkpoints with "
        "the --set evaluation.* values (an OoD set, FGSM eps, top-5); no training",
    )
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="print the trial table and estimated GPU-hours; start nothing",
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Ray's, Tune's and the trials' own output on the console (default: in files of "
        "the sweep folder); with --dry-run, the table of every trial",
    )


def _tracking(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow server, e.g. http://head:5000 (default: MLFLOW_TRACKING_URI, else SQLite "
        "in the sweep's results folder)",
    )
    g.add_argument("--experiment", default=None, help="MLflow experiment (default: the space)")
    g.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    g.add_argument(
        "--log-weights",
        action="store_true",
        help="also log each trial's final weights as an MLflow artifact",
    )
    g.add_argument(
        "--system-metrics",
        choices=("auto", "on", "off"),
        default="auto",
        help="each trial's CPU, memory, disk, network and GPU utilization and memory per epoch "
        "in its MLflow run (MLflow's system metrics); auto: on for trials on a GPU (default)",
    )


def _resources(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs per DDP worker; fractions pack several trials on one GPU; 0: the CPU "
        "(default: 1 wherever the Ray cluster has GPUs, else the CPU)",
    )
    g.add_argument("--workers-per-trial", type=int, default=None, help="DDP workers per trial")
    g.add_argument("--cpus-per-worker", type=float, default=None)
    g.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="trials at once (default: what the cluster's GPUs/CPUs fit)",
    )
    g.add_argument(
        "--max-failures",
        type=int,
        default=3,
        help="worker-crash retries per trial (Train), from the last checkpoint",
    )
    g.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto' on a cluster node); default: local Ray",
    )
    g.add_argument(
        "--group-size",
        type=int,
        default=1,
        metavar="K",
        help="train up to K trials that differ only in sparsity and seeds as one fused model "
        "(one worker, K times wider kernels; each stays its own trial everywhere); DDP, "
        "dynamic sparse and ImageNet trials run alone (default: 1, every trial alone)",
    )
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    g.add_argument(
        "--assumed-tflops",
        type=float,
        default=None,
        help="sustained TFLOP/s per device for the --dry-run estimate (default: measured on "
        "the finished trials under --storage, else 25)",
    )
    g.add_argument(
        "--toy-trials",
        type=float,
        default=None,
        metavar="NOISE",
        help="testing: each trial reports a known accuracy curve of its density and width "
        "(seed noise NOISE) instead of training; spaces on synthetic data only",
    )
    g.add_argument(
        "--inject-fault",
        type=int,
        default=None,
        metavar="EPOCH",
        help="testing: SIGKILL each trial's training worker once at EPOCH",
    )


GROUPS = (
    (_what_to_run, "the sweep"),
    (_commands, "what to do with it (default: run it)"),
    (_tracking, "MLflow"),
    (_resources, "resources and scheduling"),
)


def _spaces_help() -> str:
    """The search spaces and their one-line descriptions, for --help."""
    from search_spaces import load_space, space_names

    lines = ["search spaces (--space NAME):"]
    for name in space_names():
        try:
            text = " ".join(str(load_space(name).DESCRIPTION).split())
        except (ValueError, AttributeError) as e:
            text = f"(cannot be loaded: {e})"
        lines.append(f"  {name:<20} {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse, expand and check the sweep's trials (one message and exit 2 for bad input,
    before anything starts), then one command: --status, --evaluate, --report, --dry-run,
    or the sweep itself. Ctrl-C or SIGTERM at any moment of a sweep, planning included,
    ends it as during training: what it stored is kept, --resume continues it (exit 1)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    command = next((c for c in COMMAND_FLAGS if getattr(args, c)), "run")
    name = args.name or (f"{args.space}-smoke" if args.smoke else args.space)
    if command == "run":  # from the first moment: planning a large sweep takes a while
        from rp_tune.adapters.ray.cluster import stop_on_sigterm

        stop_on_sigterm()
    try:
        return _command(args, command, name, argv)
    except KeyboardInterrupt:
        return _interrupted(args, command, name, argv)


def _command(args: argparse.Namespace, command: str, name: str, argv: list[str] | None) -> int:
    from rp_tune.core.errors import SweepError
    from rp_tune.planning.space import check_trials_fit

    try:
        configs = _configs(args)
        _stop_what_dead_drivers_left(args.storage)
        if command in ("status", "evaluate"):  # the storage only: no data, no Ray
            return COMMANDS[command](args, name, configs, argv)
        check_trials_fit(configs)
        if command == "run":
            _preflight(args, name, configs)
    except (SweepError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return COMMANDS[command](args, name, configs, argv)


def _interrupted(args: argparse.Namespace, command: str, name: str, argv: list[str] | None) -> int:
    """Ctrl-C or SIGTERM where Ray Tune does not handle it (Tune ends a sweep it runs with
    the summary): while planning, starting Ray or writing the summary. A sweep that stored
    its trials continues with --resume; one stopped before that gets a record, so that the
    same --resume plans it again. The driver has let go of its lock and MLflow runs."""
    from rp_tune.core import storage
    from rp_tune.planning.records import is_stored, record_interrupted_planning

    if command != "run":
        print("interrupted", file=sys.stderr)
        return 130
    path = storage.join(storage.resolve(args.storage), name)
    stored = False
    try:
        stored = is_stored(path)
        if not stored:
            record_interrupted_planning(path, resume_command(argv))
    except OSError as e:
        print(f"warning: {path}: cannot record the interruption: {e}", file=sys.stderr)
    if stored:
        print(f"interrupted (Ctrl-C or SIGTERM): what the sweep stored is kept; its table: "
              f"{_with(argv, '--status')}")  # fmt: skip
    else:
        print("interrupted (Ctrl-C or SIGTERM) before the sweep stored its trials: none trained")
    print(f"continue it with: {resume_command(argv)}")
    return 1


def _stop_what_dead_drivers_left(location: str) -> None:
    """Whatever the command: the Ray processes a killed driver of any sweep under the results
    root left running are stopped first (or the console says how, where they ran elsewhere)."""
    from rp_tune.adapters.ray.cluster import stop_what_dead_drivers_left
    from rp_tune.core import storage

    try:
        lines = stop_what_dead_drivers_left(storage.resolve(location))
    except Exception as e:  # a store that cannot be listed: the command says so on its own
        logging.getLogger("rp_tune").debug("no look for killed drivers' Ray: %s", e)
        return
    for line in lines:
        print(line)


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """The flat overrides every command reads: --set, --grid, $RP_TUNE_DATA_ROOT (where
    --set gives no data.root) and the per-trial resource flags."""
    from rp_tune.planning.space import parse_grid, parse_overrides

    overrides = parse_overrides(args.set)
    overrides.update(parse_grid(args.grid))
    if os.environ.get(DATA_ROOT_ENV) and "data.root" not in overrides:
        overrides["data.root"] = os.environ[DATA_ROOT_ENV]
    for key, value in (
        ("resources.gpus_per_worker", args.gpus_per_trial),
        ("resources.workers", args.workers_per_trial),
        ("resources.cpus_per_worker", args.cpus_per_worker),
    ):
        if value is not None:
            overrides[key] = value
    return overrides


def _configs(args: argparse.Namespace) -> list:
    """The sweep's trial configs, expanded and validated; SweepError for a bad option."""
    from rp_tune.core.errors import SweepError
    from rp_tune.planning.space import expand_space

    overrides = _overrides(args)
    if args.extend and args.resume:
        raise SweepError(
            "--extend adds trials to a finished sweep, --resume continues an interrupted one: "
            "pick one"
        )
    for flag, value, least in (
        ("--max-concurrent", args.max_concurrent, 1),
        ("--max-failures", args.max_failures, 0),
        ("--inject-fault", args.inject_fault, 1),
        ("--num-cpus", args.num_cpus, 1),
        ("--group-size", args.group_size, 1),
    ):
        if value is not None and value < least:
            raise SweepError(f"{flag}={value} is invalid; valid: an integer >= {least}")
    tflops = args.assumed_tflops
    if tflops is not None and not (math.isfinite(tflops) and tflops > 0):
        raise SweepError(f"--assumed-tflops={tflops:g} is invalid; valid: a number > 0")
    configs = expand_space(args.space, overrides, smoke=args.smoke)
    # a bad search: one message, before anything; the commands read it from here
    args.search_plan = _search(args, configs)
    real = sorted({c.data.name for c in configs} - {"synthetic"})
    if args.toy_trials is not None and (real or not args.toy_trials >= 0):
        raise SweepError(
            f"--toy-trials {args.toy_trials:g} replaces training by a known curve, for tests: "
            f"valid: a noise >= 0, in a space on synthetic data (this one trains on {real})"
        )
    return configs


def _search(args: argparse.Namespace, configs: list) -> tuple | None:
    """--search matching: (its groups, its settings); None for the grid. SweepError for a
    search that cannot be (see `matching_plan`)."""
    from rp_tune.planning.matching_plan import (
        check_probes,
        check_search,
        search_groups,
        search_settings,
    )
    from search_spaces import load_space

    check_search(args.search, args.extend)
    if args.search == "grid":
        if args.search_set:
            from rp_tune.core.errors import SweepError

            raise SweepError("--search-set sets a search: add --search matching")
        return None
    declared = getattr(load_space(args.space), "SEARCH", None)
    groups, settings = (
        search_groups(configs, args.space),
        search_settings(declared, args.search_set),
    )
    check_probes(groups, settings)
    return groups, settings


def _preflight(args: argparse.Namespace, name: str, configs: list) -> None:
    """Before a sweep starts: a --resume against the stored sweep (and no driver holding
    it), storage that can be written, the data roots the trials read."""
    from rp_tune.core import storage
    from rp_tune.core.errors import SweepError
    from rp_tune.planning.plan import check_not_held, check_resume
    from rp_tune.planning.space import check_data_roots

    if args.resume:
        root = storage.resolve(args.storage)
        check_not_held(root, name)
        search = args.search_plan
        record = None
        if search:
            from rp_tune.planning.matching_plan import search_record

            record = search_record(*search)
        check_resume(storage.join(root, name), configs, record)
    try:
        storage.check_usable(args.storage)
    except OSError as e:
        raise SweepError(f"--storage {args.storage!r} cannot be used: {e}") from None
    check_data_roots(configs)


def dry_run(args: argparse.Namespace, name: str, configs: list, argv: list[str] | None) -> int:
    """--dry-run: what the sweep varies, the device each trial takes, how many trials and the
    device-hours they need; nothing started, nothing written."""
    from rp_tune.core import storage
    from rp_tune.planning.capacity import default_concurrency, planned_capacity, resolve_gpus
    from rp_tune.planning.estimate import (
        ASSUMED_TFLOPS,
        device_kind,
        measured_speed,
        speed_assumption,
        trial_table,
    )
    from rp_tune.planning.records import trial_entries
    from rp_tune.planning.space import describe_axes
    from rp_tune.trial.groups import describe_units, plan_units

    capacity, where = planned_capacity(args.address)
    address = args.address or os.environ.get("RAY_ADDRESS")
    if capacity is None and address:  # a running cluster: ask it (Ray imported only here)
        from rp_tune.adapters.ray.cluster import capacity_at

        try:
            capacity, where = capacity_at(address), f"the Ray cluster at {address}"
        except Exception as e:  # not up yet: the sweep decides when it joins
            where = f"the Ray cluster at {address} (not reachable now: {e})"
    configs, gpu_choice = resolve_gpus(configs, capacity, where)
    root = storage.resolve(args.storage)
    measured = measured_speed(root) if args.assumed_tflops is None else None
    table, hours = trial_table(configs, args.assumed_tflops or ASSUMED_TFLOPS, measured)
    if args.verbose:
        print(table)
    print(describe_axes(args.space, configs))
    print(gpu_choice)
    print(
        f"{len(configs)} trials; estimated {hours:.1f} device-hours "
        f"({'/'.join(sorted({device_kind(c) for c in configs}))}) on the dense training "
        "FLOPs: 3 x forward FLOPs x training images x epochs (masks do not speed up dense "
        f"kernels), {speed_assumption(configs, args.assumed_tflops, measured)}"
    )
    search = args.search_plan
    if args.group_size > 1 and search is None:
        print(describe_units(*plan_units(trial_entries(configs), args.group_size), args.group_size))
    if search is not None:
        from rp_tune.planning.matching_plan import describe_search, fused_size, with_parallel

        groups, settings = search
        concurrent = args.max_concurrent or default_concurrency(configs, capacity)
        fused = fused_size(groups, args.group_size)
        settings = with_parallel(settings, concurrent, len(groups), fused)
        tflops = args.assumed_tflops or ASSUMED_TFLOPS
        hours = lambda c: trial_table([c], tflops, measured)[1]  # noqa: E731
        print(describe_search(groups, settings, hours, len(configs)))
        if args.group_size > 1:
            from rp_tune.planning.matching_plan import describe_fusing

            print(describe_fusing(groups, args.group_size))
    print(f"results would go to {storage.join(root, name)}")
    if not args.verbose:
        print("every trial with its run key and estimate: add -v")
    return 0


def run(args: argparse.Namespace, name: str, configs: list, argv: list[str] | None) -> int:
    """The sweep (or its --resume / --extend) on Ray; its summary table at the end; exit 0
    when every trial finished."""
    from rp_tune.adapters.ray.sweep import run_sweep
    from rp_tune.core.errors import SweepError

    handler = _console(args.verbose)
    search = args.search_plan
    try:
        summary = run_sweep(
            configs,
            name=name,
            storage=args.storage,
            space=args.space,
            tracking_uri=args.tracking_uri,
            tracking=not args.no_tracking,
            experiment=args.experiment,
            log_weights=args.log_weights,
            resume=args.resume,
            address=args.address,
            max_concurrent=args.max_concurrent,
            train_max_failures=args.max_failures,
            num_cpus=args.num_cpus,
            inject_fault_epoch=args.inject_fault,
            verbose=args.verbose,
            extend=args.extend,
            reuse=not args.no_reuse,
            group_size=args.group_size,
            system_metrics=args.system_metrics,
            search=search[1] if search else None,
            toy_noise=args.toy_trials,
        )
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:  # main() may run again in this process (a notebook, a test)
        logging.getLogger("rp_tune.console").removeHandler(handler)
    print(
        f"results: {summary.path}  (the table again: {_with(argv, '--status')}; report: "
        f"{_with(argv, '--report')})"
    )
    if summary.tracking_uri:
        print(f"MLflow UI: {mlflow_ui_command(summary.tracking_uri, summary.mlflow_url)}")
    if summary.unfinished or summary.failed:
        print(f"continue it with: {resume_command(argv)}")
    print(summary.cost_line())
    print(summary.table())
    if search:
        from rp_tune.planning.matching_plan import read_search, search_table

        print(search_table((read_search(summary.path) or {}).get("results", [])))
    return 0 if summary.failed == 0 and summary.finished == len(summary.trials) else 1


def _console(verbose: bool) -> logging.Handler:
    """The sweep's own lines (rp_tune.console) on stdout, plain (the handler, for run() to
    remove); with verbose, every INFO log on stderr as well (without, the driver's log goes
    to <sweep>/driver.log)."""
    console = logging.getLogger("rp_tune.console")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    console.addHandler(handler)
    console.setLevel(logging.INFO)
    console.propagate = verbose
    logging.getLogger("rp_tune").setLevel(logging.INFO)
    if not verbose:
        for h in logging.getLogger().handlers:  # the root's stderr: warnings and errors only
            h.setLevel(logging.WARNING)
        # MLflow sets its loggers' level when imported (later): its environment variable
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    return handler


def mlflow_ui_command(uri: str, link: str | None = None) -> str:
    """How to look at the runs: `mlflow ui` on a database, the address of a server; and the
    URL of the sweep's trials compared (its saved view), where the sweep made one."""
    import shlex

    if uri.startswith(("http://", "https://")):
        return f"open {link or uri} (the sweep's trials compared, on its MLflow server)"
    where = f"the sweep's trials compared: {link}" if link else "http://127.0.0.1:5000"
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)}   # then open {where}"


def _with(argv: list[str] | None, flag: str) -> str:
    """This command line with `flag` instead of the run: --status, --report."""
    return resume_command(argv).replace(" --resume", f" {flag}")


def status(args: argparse.Namespace, name: str, configs: list, argv: list[str] | None) -> int:
    """--status: every trial of the sweep at <storage>/<name> and where it stands."""
    from rp_tune.core import storage
    from rp_tune.planning.plan import driver_lock
    from rp_tune.planning.progress import counts, status_table, sweep_status
    from rp_tune.planning.records import read_summary

    root = storage.resolve(args.storage)
    path = storage.join(root, name)
    holder, dead = None, None
    try:
        dead = driver_lock(root, name).check()
    except storage.LockHeld as e:
        holder = str(e)
    except OSError as e:
        print(f"warning: cannot read the sweep's lock ({e}); assuming no driver", file=sys.stderr)
    try:
        states = sweep_status(path, driver_alive=holder is not None)
    except FileNotFoundError as e:
        print(
            f"error: {e}; start it with: python run_sweep.py --space {args.space}"
            f"{' --smoke' if args.smoke else ''}",
            file=sys.stderr,
        )
        return 2
    print(status_table(states))
    from rp_tune.planning.matching_plan import read_search, search_table

    search = read_search(path)
    if search is not None:  # a matching-density search: where each group stands
        print(search_table(search.get("results") or []))
    _after_a_killed_driver(args, path, dead)
    uri = _tracking_uri(args, path)
    if uri is not None:  # the URL the sweep made (summary.json): no call to MLflow here
        link = (read_summary(path) or {}).get("mlflow_url")  # None before a driver ended
        print(f"MLflow UI: {mlflow_ui_command(uri, link)}")
    c = counts(states)
    if holder is not None:
        print(f"running: {holder}")
    elif c["finished"] < len(states):
        print(f"no driver is running it; continue it with: {resume_command()}")
    return 0


def _after_a_killed_driver(args: argparse.Namespace, path: str, dead: dict | None) -> None:
    """A driver killed without ending its sweep (SIGKILL, a lost node) left its MLflow runs
    RUNNING: the next command against the sweep marks them KILLED and says so. `dead` is the
    lease it left (`DriverLock.check`), which names its tracking URI."""
    if not dead or args.no_tracking:
        return
    uri = dead.get("tracking_uri") or _tracking_uri(args, path)
    if uri is None or (uri.startswith("sqlite:///") and not os.path.isfile(uri[10:])):
        return  # no store, or a database on the killed driver's machine, not this one
    from rp_tune.adapters.mlflow.states import close_abandoned_runs

    try:
        closed = close_abandoned_runs(uri, path, dead.get("token"))
    except Exception as e:  # a server that is down: the next command tries again
        why = f"{type(e).__name__}: {e}"
        print(
            f"warning: MLflow at {uri}: cannot close the killed driver's runs ({why})",
            file=sys.stderr,
        )
        return
    if closed:
        print(
            f"the sweep's last driver (pid {dead.get('pid')} on {dead.get('host')}) was killed: "
            f"{closed} MLflow runs it left RUNNING are now KILLED; --resume continues them"
        )


def _dead_lease(root: str, name: str) -> dict | None:
    """The lease a killed driver left on the sweep, or None (none, or a live driver's)."""
    from rp_tune.core import storage
    from rp_tune.planning.plan import driver_lock

    try:
        return driver_lock(root, name).check()
    except (storage.LockHeld, OSError):
        return None


def resume_command(argv: list[str] | None = None) -> str:
    """This command line with --resume: what continues the sweep it started."""
    import shlex

    drop = ("--resume", "--status", "--report", "--dry-run", "--evaluate", "--extend")
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a not in drop]
    return shlex.join(["python", "run_sweep.py", *args, "--resume"])


def evaluate(args: argparse.Namespace, name: str, configs: list, argv: list[str] | None) -> int:
    """--evaluate: the final evaluation of the finished trials again (rp_tune.results.evaluate)."""
    from rp_tune.config import parse_set
    from rp_tune.core import storage
    from rp_tune.planning.plan import check_not_held
    from rp_tune.results.evaluate import evaluate_sweep

    root = storage.resolve(args.storage)
    sweep_dir = storage.join(root, name)
    dead = check_not_held(root, name)  # a running sweep's trials are its driver's
    _after_a_killed_driver(args, sweep_dir, dead)
    outcomes = evaluate_sweep(sweep_dir, parse_set(args.set or []), _tracking_uri(args, sweep_dir))
    for o in outcomes:
        values = "  ".join(f"{k} {v:.4f}" for k, v in sorted(o["metrics"].items()))
        note = o["error"] or values or "nothing new: the trial had every value"
        logged = "  (in MLflow)" if o["logged"] else ""
        print(f"{o['status']:<13} {o['run_key']}  {note}{logged}")
    failed = sum(o["status"] == "failed" for o in outcomes)
    done = len(outcomes) - failed
    print(f"{len(outcomes)} finished trials: {done} evaluated or saved before, {failed} failed")
    print(f"the report shows the values: {_with(None, '--report')}")
    return 1 if failed else 0


def _tracking_uri(args: argparse.Namespace, sweep_dir: str) -> str | None:
    """The MLflow store of a finished sweep: --tracking-uri, $MLFLOW_TRACKING_URI, or the
    results root's own database where there is one; None with --no-tracking."""
    from rp_tune.adapters.mlflow.tracking import default_tracking_uri, local_store
    from rp_tune.core import storage

    if args.no_tracking:
        return None
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None and not storage.is_uri(sweep_dir) and local_store(sweep_dir).is_file():
        uri = default_tracking_uri(sweep_dir)
    return uri


def report(args: argparse.Namespace, name: str, configs: list, argv: list[str] | None) -> int:
    """--report: results table and figures of the sweep at <storage>/<name>."""

    from rp_tune.core import storage
    from rp_tune.results.report import main as report_main

    root = storage.resolve(args.storage)
    sweep_dir = storage.join(root, name)
    _after_a_killed_driver(args, sweep_dir, _dead_lease(root, name))
    uri = _tracking_uri(args, sweep_dir)
    return report_main(
        [sweep_dir, "--space", args.space, *(["--tracking-uri", uri] if uri else [])]
    )


# one function per command, in the order the flags are read (the first given wins)
COMMAND_FLAGS = ("status", "evaluate", "report", "dry_run")
COMMANDS = {
    "status": status,
    "evaluate": evaluate,
    "report": report,
    "dry_run": dry_run,
    "run": run,
}


if __name__ == "__main__":
    code = main()
    # Everything is written and closed: spare the interpreter's last full garbage collection
    # of a heap that holds a large sweep's plan (2.5 s at 10,000 trials, after the summary).
    gc.freeze()
    raise SystemExit(code)

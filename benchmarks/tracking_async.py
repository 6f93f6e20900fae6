"""rp_tune's tracker against MLflow's own asynchronous logging, with the server going away.

    python benchmarks/tracking_async.py          # a 5 s outage mid-run, then down at the end
    python benchmarks/tracking_async.py --outage 30 --runs 8 --epochs 100

What a sweep's driver needs from tracking: training never waits for MLflow, and every epoch
reaches it once, whatever the server does. Two ways to get there, each run as a sweep's
driver runs it (one thread producing a row of the registered per-epoch metrics per trial per
epoch, `--interval` seconds apart) against `mlflow server` on loopback:

- `rp_tune`: `rp_tune.adapters.mlflow.tracking.SweepTracker` (a queue drained by one thread,
  failed calls
  retried in order with back-off; what is still queued at the end goes to a pending file that
  the next --resume replays);
- `mlflow_async`: `MlflowClient.log_batch(..., synchronous=False)`, MLflow's async queue, with
  MLflow's own HTTP retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES and back-off, as installed).

Scenario `restart`: the server is killed at a quarter of the run and started again `--outage`
seconds later. Scenario `down_at_end`: killed at three quarters and still down when the
producer ends; each strategy gets `--end-wait` seconds to finish (as a sweep's driver waits
before it exits) and the process then exits, or is killed after `--exit-wait` seconds (a
driver that cannot exit is stopped by its user or scheduler); then the server comes back
and `rp_tune` replays its pending file (a --resume). Each strategy and scenario runs in a
process of its own. Prints: the producer's time per logging call (mean, max), the metric
values in the store against those produced, the seconds from the producer's end until the
strategy let go, and how long the process took to exit. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.mlflow_screenshot import free_port, start_server  # noqa: E402
from rp_tune.trial.metrics import EPOCH, METRICS  # noqa: E402

KEYS = [m.name for m in METRICS.values() if m.when == EPOCH and not m.family and m.step == EPOCH]


def _row(epoch: int, run: int) -> dict[str, float]:
    return {"epoch": epoch, **{k: run + epoch / 1000 + i for i, k in enumerate(KEYS)}}


class Server:
    """An `mlflow server` on one port, killed and started again at will."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = start_server(folder / "mlflow.db", self.port)

    def kill(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
            self.proc = None

    def start(self) -> None:
        if self.proc is None:
            self.proc = start_server(self.folder / "mlflow.db", self.port)


def _stored(uri: str, experiment: str) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    total = 0
    for run in client.search_runs([exp.experiment_id]):
        for key in KEYS:
            total += len(client.get_metric_history(run.info.run_id, key))
    return total


def run_once(strategy: str, scenario: str, args: argparse.Namespace) -> dict[str, float]:
    """One strategy under one scenario, in this process; leaves the store in `args.folder`."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from rp_tune.adapters.mlflow.tracking import SweepTracker

    server = Server(Path(args.folder))
    print(json.dumps({"server_port": server.port}), flush=True)
    sweep = str(Path(args.folder, "sweep"))
    Path(sweep).mkdir(exist_ok=True)
    flat = {"model.name": "cifar_resnet_20", "sparsity.scheme": "erk"}
    if strategy == "rp_tune":
        tracker = SweepTracker(server.uri, EXPERIMENT, sweep_path=sweep, space="x", sweep_dir=sweep)
    else:
        client = MlflowClient(server.uri)
        exp_id = client.create_experiment(EXPERIMENT)
        run_ids = [client.create_run(exp_id, run_name=f"k{r}").info.run_id
                   for r in range(args.runs)]  # fmt: skip
        ops = []
    kill_at = args.epochs // 4 if scenario == "restart" else 3 * args.epochs // 4
    calls: list[float] = []
    for epoch in range(1, args.epochs + 1):
        if epoch == kill_at:
            server.kill()
            if scenario == "restart":
                threading.Timer(args.outage, server.start).start()
        for r in range(args.runs):
            row = _row(epoch, r)
            t0 = time.perf_counter()
            if strategy == "rp_tune":
                tracker.trial_result(f"k{r}", flat, row)
            else:
                ts = int(time.time() * 1000)
                metrics = [Metric(k, v, ts, epoch) for k, v in row.items() if k in KEYS]
                ops.append(client.log_batch(run_ids[r], metrics=metrics, synchronous=False))
            calls.append(time.perf_counter() - t0)
        time.sleep(args.interval)
    ended = time.perf_counter()
    failed, pending = 0, 0
    if strategy == "rp_tune":
        pending = tracker.close(timeout_s=args.end_wait)
    else:
        deadline = time.monotonic() + args.end_wait
        for op in ops:
            if time.monotonic() > deadline:
                break
            try:
                op.wait()  # MLflow's own: waits for the batch, raises if it failed
            except Exception:
                failed += 1
    out = {
        "call_mean_ms": 1000 * sum(calls) / len(calls),
        "call_max_ms": 1000 * max(calls),
        "let_go_s": time.perf_counter() - ended,
        "pending_events": pending,
        "failed_batches": failed,
    }
    server.kill()
    return out


EXPERIMENT = "bench"


def measure(strategy: str, scenario: str, args: argparse.Namespace) -> dict[str, float]:
    """`run_once` in a process of its own, killed if it cannot exit; then the store, with the
    pending file replayed (what the next --resume does), counted."""
    from rp_tune.adapters.mlflow.tracking import SweepTracker

    with tempfile.TemporaryDirectory(prefix="rp_tune-async-") as folder:
        cmd = [sys.executable, __file__, "--one", strategy, scenario, "--folder", folder,
               *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k in ("runs", "epochs", "interval", "outage", "end_wait"))]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        result: dict[str, float] = {}
        while not result and proc.poll() is None:
            time.sleep(0.2)
            result = next((json.loads(x) for x in lines if '"let_go_s"' in x), {})
        t0 = time.perf_counter()
        try:
            proc.wait(timeout=args.exit_wait)
            exited = time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            exited = float("inf")
        reader.join(timeout=5)
        result = result or next((json.loads(x) for x in lines if '"let_go_s"' in x), {})
        server = Server(Path(folder))
        try:
            stored = _stored(server.uri, EXPERIMENT)
            if strategy == "rp_tune" and result.get("pending_events"):
                sweep = str(Path(folder, "sweep"))
                SweepTracker(server.uri, EXPERIMENT, sweep_path=sweep, space="x",
                             sweep_dir=sweep).close()  # fmt: skip
            replayed = _stored(server.uri, EXPERIMENT)
        finally:
            server.kill()
    return {**result, "exit_s": exited, "stored": stored, "after_resume": replayed,
            "produced": args.runs * args.epochs * len(KEYS)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=4, help="trials logging at once")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--interval", type=float, default=0.1, help="seconds between epochs")
    p.add_argument("--outage", type=float, default=5.0, help="seconds the server is away")
    p.add_argument("--end-wait", type=float, default=30.0, help="seconds allowed at the end")
    p.add_argument("--exit-wait", type=float, default=60.0, help="seconds to exit, then killed")
    p.add_argument("--one", nargs=2, metavar=("STRATEGY", "SCENARIO"), help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_once(*args.one, args)), flush=True)
        return 0
    print(f"{len(KEYS)} metrics per row, {args.runs} runs x {args.epochs} epochs, one every "
          f"{args.interval}s; outage {args.outage}s; end wait {args.end_wait}s, exit wait "
          f"{args.exit_wait}s", flush=True)  # fmt: skip
    print(f"{'strategy':<13} {'scenario':<12} {'call mean ms':>12} {'call max ms':>11} "
          f"{'stored/produced':>17} {'after resume':>12} {'let go s':>8} {'exit s':>7} "
          f"{'pending':>7} {'failed':>6}", flush=True)  # fmt: skip
    for scenario in ("restart", "down_at_end"):
        for strategy in ("rp_tune", "mlflow_async"):
            r = measure(strategy, scenario, args)
            exit_s = "killed" if r["exit_s"] == float("inf") else f"{r['exit_s']:.1f}"
            print(f"{strategy:<13} {scenario:<12} {r.get('call_mean_ms', 0):>12.3f} "
                  f"{r.get('call_max_ms', 0):>11.2f} {r['stored']:>8}/{r['produced']:<8} "
                  f"{r['after_resume']:>12} {r.get('let_go_s', 0):>8.1f} {exit_s:>7} "
                  f"{r.get('pending_events', 0):>7} {r.get('failed_batches', 0):>6}",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How a sweep's start, memory, per-trial cost and Ctrl-C scale with its trial count, and how
fast the MLflow tracker stores epoch rows.

    python benchmarks/sweep_scale.py                          # 10, 100, 1,000, 10,000 trials
    python benchmarks/sweep_scale.py --sizes 10 100 --finish 10

For each size N: the smoke space over N/4 seeds (2 schemes x 2 densities), one epoch of 256
synthetic images per trial (a trial's own work is about a second), run as a user runs it
(`run_sweep.py`, a local Ray it starts itself, MLflow in the results root's SQLite file) in
a fresh storage. Measured from outside, as a user sees it:

- first_start_s: launch to Tune starting the first trial (its folder appears: planning,
  Ray's start, Tune's first step); first_result_s: launch to the console's first `started`
  line (its first epoch reported: Ray Train's worker group started, the data made, an epoch);
- driver_peak_mb: the driver process's peak resident memory (VmHWM) before the stop;
- fixed_s_per_trial: once the first trial finished, the wall time to the `--finish`-th
  (default 20) times the trials running at once, per trial, less a trial's own training
  and evaluation time (from its results): what each trial costs besides its own work, at
  steady state;
- ctrl_c_exit_s: SIGINT (Ctrl-C) once `--finish` trials finished, to the driver's exit,
  the sweep stopped and resumable (the rest are not trained).

Then the tracker's epoch rows/s into SQLite and into `mlflow server` on loopback
(`tracking_rate.py`'s measurement: `--tracking-runs` trials x `--tracking-epochs` epochs).
Prints one JSON line per size and store, then a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set so far (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _own_seconds(sweep: Path) -> list[float]:
    """Each finished trial's own training and evaluation seconds, from its results."""
    own = []
    for f in sweep.glob("*/result.json"):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip().endswith("}")]
        last = next((r for r in reversed(rows) if "test_acc" in r), None)
        if last is not None:
            own.append(float(last.get("train_seconds", 0)) + float(last.get("eval_seconds", 0)))
    return own


def stop_timed(proc: subprocess.Popen, sig: int, timeout: float) -> float:
    """Send `sig` (Ctrl-C: SIGINT) and wait for the exit: the seconds it took. A process
    still there after `timeout` is SIGKILLed with its process group."""
    sent = time.time()
    try:
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return time.time() - sent


def run_size(n: int, finish: int, cpus: int, folder: Path) -> dict:
    """One sweep of `n` trials, stopped by SIGINT once `finish` of them finished."""
    seeds = ",".join(str(i) for i in range(max(1, n // 4)))
    res = folder / f"res{n}"
    args = ["--space", "smoke", "--storage", str(res), "--num-cpus", str(cpus),
            "--grid", f"seed={seeds}", "--set", "train.epochs=1",
            "--set", "data.synthetic_train=256"]  # fmt: skip
    out_file = folder / f"sweep{n}.out"
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "run_sweep.py", *args], cwd=ROOT, stdout=open(out_file, "w"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    first_start, first_result, finished_at, peak, seen = None, None, [], 0.0, 0
    sweep = res / "smoke"
    want = min(finish, 4 * max(1, n // 4))
    concurrent = None
    try:
        while proc.poll() is None and len(finished_at) < want and time.time() - t0 < 3600:
            peak = max(peak, _peak_mb(proc.pid))
            text = out_file.read_text()
            lines = text.splitlines()
            if not text.endswith("\n"):  # the last line is being written: read it next time
                lines = lines[:-1]
            if first_start is None and any(sweep.glob("cifar_resnet_8-*/params.json")):
                first_start = time.time() - t0  # Tune started a trial: its folder, its params
            for line in lines[seen:]:
                if " started  " in line and first_result is None:
                    first_result = time.time() - t0
                if " finished " in line and "test_acc" in line:
                    finished_at.append(time.time())
                if "at most" in line and concurrent is None:  # "..., at most 3 at a time"
                    concurrent = int(line.split("at most ")[1].split()[0])
            seen = len(lines)
            time.sleep(0.05)
        peak = max(peak, _peak_mb(proc.pid))
    finally:
        exit_s = stop_timed(proc, signal.SIGINT, timeout=600)
    stored = (
        json.loads((sweep / "trials.json").read_text()) if (sweep / "trials.json").is_file() else []
    )
    # Tune's own records of the sweep: they must not grow with the trial count
    tune_files = [*sweep.glob("experiment_state-*.json"), *sweep.glob("searcher-state-*.pkl")]
    tune_kb = max((f.stat().st_size for f in tune_files), default=0) / 1024
    own = _own_seconds(sweep)
    own_mean = sum(own) / len(own) if own else float("nan")
    fixed = float("nan")
    if len(finished_at) >= 2 and concurrent:
        per_trial = (finished_at[-1] - finished_at[0]) * concurrent / (len(finished_at) - 1)
        fixed = per_trial - own_mean
    return {
        "trials": 4 * max(1, n // 4),
        "first_start_s": round(first_start, 1) if first_start is not None else None,
        "first_result_s": round(first_result, 1) if first_result is not None else None,
        "driver_peak_mb": round(peak),
        "finished": len(finished_at),
        "concurrent": concurrent,
        "own_s_per_trial": round(own_mean, 2),
        "fixed_s_per_trial": round(fixed, 1),
        "ctrl_c_exit_s": round(exit_s, 1),
        "driver_rc": proc.returncode,
        "stored_trials": len(stored),
        "tune_state_kb": round(tune_kb, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    p.add_argument("--finish", type=int, default=20, help="trials to finish before Ctrl-C")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--tracking-runs", type=int, default=16)
    p.add_argument("--tracking-epochs", type=int, default=40)
    p.add_argument("--store", choices=["sqlite", "server", "both", "none"], default="both")
    args = p.parse_args(argv)
    bad = [n for n in args.sizes if n < 1]
    if bad or args.finish < 1:
        p.error(f"--sizes {bad} / --finish {args.finish}: valid: integers >= 1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="rp_tune-scale-") as tmp:
        for n in args.sizes:
            row = run_size(n, args.finish, args.num_cpus, Path(tmp))
            print(json.dumps({"size": n, **row}), flush=True)
            rows.append(row)
        rates = {}
        if args.store != "none":
            from benchmarks.tracking_rate import measure_store

            stores = ["sqlite", "server"] if args.store == "both" else [args.store]
            for store in stores:
                r = measure_store(store, Path(tmp) / f"track-{store}", args.tracking_runs,
                                  args.tracking_epochs)  # fmt: skip
                print(json.dumps({"store": store, **r}), flush=True)
                rates[store] = r["rows_per_s"]
    print()
    print(f"{'trials':>7} {'first start s':>13} {'first result s':>14} {'driver MB':>9} "
          f"{'fixed s/trial':>13} {'Ctrl-C to exit s':>16}")  # fmt: skip
    for r in rows:
        print(f"{r['trials']:>7} {r['first_start_s']!s:>13} {r['first_result_s']!s:>14} "
              f"{r['driver_peak_mb']:>9} {r['fixed_s_per_trial']:>13} "
              f"{r['ctrl_c_exit_s']:>16}")  # fmt: skip
    for store, rate in rates.items():
        print(f"tracker into {store}: {rate:.0f} epoch rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A sweep's fixed cost per trial: its wall time less the trials' own time, by group size.

    python benchmarks/sweep_fixed_cost.py                 # K = 1 and K = 8, 16 trials
    python benchmarks/sweep_fixed_cost.py --k 1 4 8 --seeds 4

Runs the smoke space over `--seeds` seeds (2 schemes x 2 densities x 4 seeds = 16 trials of 2
epochs on the smoke data) once per group size, each as a user runs it (`run_sweep.py`, a
local Ray it starts itself, MLflow in SQLite) in a fresh storage, one Tune trial after
another (`--max-concurrent 1`: with trials overlapping, serial time taken from a parallel
wall clock would mean nothing), and reads its `summary.json`:

    fixed per trial = (sweep wall - own) / trials
    own = the trials' own training and evaluation time; the members of a group train
          together, so a group counts its training once and each member's evaluation.

What is left is what a trial costs besides its own work: starting Ray Train's worker group
(once per group), the trial's data and model setup, checkpoints, reporting. Prints numbers;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def own_seconds(trials: list[dict]) -> float:
    """Training once per group (its members' shared epochs) plus every trial's evaluation."""
    groups: dict[str, float] = defaultdict(float)
    total = 0.0
    for t in trials:
        m = t["metrics"]
        total += float(m.get("eval_seconds", 0.0))
        if m.get("group"):
            groups[m["group"]] = max(groups[m["group"]], float(m.get("train_seconds", 0.0)))
        else:
            total += float(m.get("train_seconds", 0.0))
    return total + sum(groups.values())


def run(k: int, seeds: int, cpus: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="rp_tune-fixed-cost-") as tmp:
        grid = ",".join(str(s) for s in range(seeds))
        cmd = [sys.executable, "run_sweep.py", "--space", "smoke", "--storage", tmp,
               "--grid", f"seed={grid}", "--group-size", str(k), "--num-cpus", str(cpus),
               "--max-concurrent", "1"]  # fmt: skip
        t0 = time.time()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
        seconds = time.time() - t0
        if r.returncode != 0:
            raise SystemExit(f"K={k}: the sweep failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        summary = json.loads(Path(tmp, "smoke", "summary.json").read_text())
    trials = summary["trials"]
    wall = float(summary["totals"]["sweep_wall_seconds"])
    own = own_seconds(trials)
    return {"k": k, "trials": len(trials), "sweep_wall_seconds": wall, "own_seconds": own,
            "fixed_per_trial_seconds": (wall - own) / len(trials),
            "command_seconds": seconds}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, nargs="+", default=[1, 8], help="group sizes")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()
    rows = [run(k, args.seeds, args.num_cpus) for k in args.k]
    base = rows[0]["fixed_per_trial_seconds"]
    for r in rows:
        print(
            f"K={r['k']:<3d} {r['trials']} trials: sweep wall {r['sweep_wall_seconds']:6.1f} s, "
            f"trials' own {r['own_seconds']:5.1f} s, fixed per trial "
            f"{r['fixed_per_trial_seconds']:5.2f} s ({r['fixed_per_trial_seconds'] / base:.2f}x "
            f"K={rows[0]['k']}); the whole command {r['command_seconds']:.1f} s"
        )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Trial-group throughput: one trial alone, K fused members, K packed processes; one run.

    python benchmarks/fused_speed.py --out fused_speed.json      # a GPU: under 10 minutes
    python benchmarks/fused_speed.py --reduced --out x.json      # the CPU version (~1 minute)

On a GPU it first runs the `gpu` tests (`pytest -m gpu`) and records their outcome; then,
for ResNet-20 and ResNet-56 at density 0.1 (ERK), synthetic CIFAR-sized data resident on the
device, batch 128, it measures training images/s (every member's images counted) in the
steady state (an epoch to warm up, then one measured):

- alone: one trial's epoch (`rp_tune.trial.train.train_epoch`);
- fused K (K = 1, 4, 8, 16): one trial group of K members, seeds 0..K-1 (`rp_tune.trial.fused`);
- packed K (K = 4, 8, 16): K processes, each one trial alone, sharing the device; they
  wait for each other after warming up, and the rate is their images over the span from
  the first start to the last end of their measured epochs.

The same configs in one run; the JSON holds the machine (device, CPU, cores), the torch
version, the git commit and date, and every rate with its ratio to `alone`. `--reduced` runs
the same code small (ResNet-8 at width 4, K = 1, 2, packed 2, a few steps; no `gpu` tests)
on the CPU, whatever the machine has, so that it cannot rot: a test runs it. The `gpu` tests
get 5 minutes at most. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rp_tune.config import from_flat, run_key  # noqa: E402
from rp_tune.core.provenance import code_state  # noqa: E402
from rp_tune.trial.build import setup  # noqa: E402
from rp_tune.trial.fused import build_group  # noqa: E402
from rp_tune.trial.train import train_epoch  # noqa: E402

FULL = {"models": ["cifar_resnet_20", "cifar_resnet_56"], "fused": [1, 4, 8, 16],
        "packed": [4, 8, 16], "steps": 60}  # fmt: skip
REDUCED = {"models": ["cifar_resnet_8_4"], "fused": [1, 2], "packed": [2], "steps": 4}


def make_cfg(model: str, seed: int, steps: int, batch: int, device: str):
    return from_flat(
        {
            "model.name": model,
            "sparsity.scheme": "erk",
            "sparsity.density": 0.1,
            "seed": seed,
            "data.name": "synthetic",
            "data.val_fraction": 0.0,
            "data.synthetic_train": steps * batch,
            "data.synthetic_test": batch,
            "train.batch_size": batch,
            "train.epochs": 2,
            "resources.gpus_per_worker": 1.0 if device == "cuda" else 0.0,
        }
    )


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def alone(model: str, steps: int, batch: int, device: str, seed: int = 0) -> dict:
    """One trial's second epoch: images/s and its span (wall clock)."""
    cfg = make_cfg(model, seed, steps, batch, device)
    with tempfile.TemporaryDirectory() as tmp:
        trial = setup(cfg, Path(tmp), run_key(cfg), device)
        train_epoch(trial, 0)
        _sync()
        t0 = time.time()
        row = train_epoch(trial, 1)
        _sync()
    return {"images_per_second": row["images_per_second"], "start": t0, "end": time.time(),
            "images": steps * batch}  # fmt: skip


def fused(model: str, k: int, steps: int, batch: int, device: str) -> float:
    """K members of one group, second epoch: every member's images / the epoch's seconds."""
    cfgs = [make_cfg(model, seed, steps, batch, device) for seed in range(k)]
    with tempfile.TemporaryDirectory() as tmp:
        group = build_group(cfgs, [Path(tmp) / str(i) for i in range(k)], device=device)
        group.train_epoch(0)
        _sync()
        rows = group.train_epoch(1)
    return sum(r["images_per_second"] for r in rows)


def packed(model: str, k: int, steps: int, batch: int, device: str) -> float:
    """K processes, one trial alone each, measured together (a file barrier after warm-up)."""
    with tempfile.TemporaryDirectory() as barrier:
        cmd = [sys.executable, __file__, "--worker", model, "--steps", str(steps), "--batch",
               str(batch), "--device", device, "--barrier", barrier, "--count", str(k)]  # fmt: skip
        procs = [
            subprocess.Popen([*cmd, "--seed", str(i)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
            for i in range(k)
        ]
        runs = []
        for p in procs:
            out, _ = p.communicate(timeout=900)
            if p.returncode != 0:
                raise RuntimeError(f"a packed worker failed (exit {p.returncode})")
            runs.append(json.loads(out.strip().splitlines()[-1]))
    span = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    return sum(r["images"] for r in runs) / span


def worker(args: argparse.Namespace) -> None:
    """A packed process: warm up, wait for the others, measure one epoch, print JSON."""
    cfg = make_cfg(args.worker, args.seed, args.steps, args.batch, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        trial = setup(cfg, Path(tmp), run_key(cfg), args.device)
        train_epoch(trial, 0)
        _sync()
        Path(args.barrier, f"ready-{args.seed}").touch()
        deadline = time.time() + 600
        while len(list(Path(args.barrier).glob("ready-*"))) < args.count:
            if time.time() > deadline:
                raise SystemExit("packed workers never all got ready")
            time.sleep(0.05)
        t0 = time.time()
        train_epoch(trial, 1)
        _sync()
    print(json.dumps({"start": t0, "end": time.time(), "images": args.steps * args.batch}))


def gpu_tests() -> dict:
    if not torch.cuda.is_available():
        return {"ran": False, "why": "no CUDA"}
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as e:  # the speeds still get measured and written
        return {"ran": True, "returncode": None, "summary": f"timed out after {e.timeout} s"}
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:]
    return {"ran": True, "returncode": r.returncode, "summary": tail}


def machine() -> dict:
    cuda = torch.cuda.is_available()
    code = code_state(ROOT)
    cpu = platform.processor() or platform.machine()
    return {
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({cpu})",
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "python": platform.python_version(),
        "commit": code["commit"],
        "dirty": code["dirty"],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reduced", action="store_true", help="the small CPU version")
    p.add_argument("--out", default=None, help="write the JSON here too")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="steps per epoch")
    p.add_argument("--skip-gpu-tests", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--device", default=None, help=argparse.SUPPRESS)
    p.add_argument("--barrier", default=None, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    plan = REDUCED if args.reduced or not torch.cuda.is_available() else FULL
    steps = args.steps or plan["steps"]
    device = "cuda" if torch.cuda.is_available() and plan is FULL else "cpu"
    if plan is REDUCED:
        args.skip_gpu_tests = True
    out: dict = {"machine": machine(), "reduced": plan is REDUCED, "batch": args.batch,
                 "steps_per_epoch": steps, "density": 0.1, "scheme": "erk"}  # fmt: skip
    out["gpu_tests"] = {"ran": False, "why": "skipped"} if args.skip_gpu_tests else gpu_tests()
    print(json.dumps(out["machine"]), flush=True)
    print(f"gpu tests: {out['gpu_tests']}", flush=True)
    results = []
    for model in plan["models"]:
        base = alone(model, steps, args.batch, device)["images_per_second"]
        rows = [("alone", 1, base)]
        rows += [("fused", k, fused(model, k, steps, args.batch, device)) for k in plan["fused"]]
        rows += [("packed", k, packed(model, k, steps, args.batch, device)) for k in plan["packed"]]
        for mode, k, rate in rows:
            results.append({"model": model, "mode": mode, "k": k, "images_per_second": rate,
                            "vs_alone": rate / base})  # fmt: skip
            print(f"{model:18s} {mode:7s} K={k:<3d} {rate:10.0f} images/s  {rate / base:6.2f}x "
                  "alone", flush=True)  # fmt: skip
    out["results"] = results
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

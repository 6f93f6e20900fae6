"""Where a result came from: the code (commit, dirty flag, diff) and the machine (versions,
CUDA, cuDNN, the GPU model). Every trial records its own machine, since the workers of one
sweep may differ; the driver records the code once per sweep.
"""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

CODE_DIFF_FILE = "code.diff"  # `git diff HEAD` and the untracked files' names
PACKAGES = ("torch", "torchvision", "numpy", "ray", "mlflow", "pyarrow")
# the keys a trial's final result carries (strings): "env_<name>"
ENV_PREFIX = "env_"


def package_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def code_state(where: str | Path | None = None) -> dict[str, Any]:
    """The code a sweep runs: {"commit", "dirty", "diff"}. dirty: tracked files differ from
    the commit, or files git does not ignore are untracked; diff: `git diff HEAD` (tracked
    changes, binary as such) and the untracked files' names. Outside a git checkout (an
    installed wheel) commit is "unknown", dirty None and diff "".
    """
    cwd = Path(where) if where else Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], cwd)
    if commit is None:
        return {"commit": "unknown", "dirty": None, "diff": ""}
    diff = _git(["diff", "HEAD", "--binary"], cwd) or ""
    untracked = (_git(["ls-files", "--others", "--exclude-standard"], cwd) or "").split()
    if untracked:
        diff += "".join(f"# untracked: {name}\n" for name in untracked)
    return {"commit": commit.strip(), "dirty": bool(diff), "diff": diff}

"""Where a result came from: the code (commit, dirty flag, diff) and the machine (versions,
CUDA, cuDNN, the GPU model). Every trial records its own machine, since the workers of one
sweep may differ; the driver records the code once per sweep.
"""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

CODE_DIFF_FILE = "code.diff"  # `git diff HEAD` and the untracked files' names
PACKAGES = ("torch", "torchvision", "numpy", "ray", "mlflow", "pyarrow")
# the keys a trial's final result carries (strings): "env_<name>"
ENV_PREFIX = "env_"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def environment(device: Any = None) -> dict[str, str]:
    """The trial's machine as flat strings: env_python, env_<package> for PACKAGES (read
    from their metadata: nothing is imported), env_cuda and env_cudnn (torch's build and
    runtime; "none" without CUDA) and env_gpu (the device's model, or "cpu")."""
    import torch

    out = {f"{ENV_PREFIX}python": platform.python_version()}
    out.update({f"{ENV_PREFIX}{p}": _version(p) for p in PACKAGES})
    cuda = torch.cuda.is_available()
    out[f"{ENV_PREFIX}cuda"] = str(torch.version.cuda) if cuda else "none"
    cudnn = torch.backends.cudnn.version() if cuda else None
    out[f"{ENV_PREFIX}cudnn"] = str(cudnn) if cudnn else "none"
    on_gpu = cuda and getattr(device, "type", str(device)) == "cuda"
    out[f"{ENV_PREFIX}gpu"] = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    out[f"{ENV_PREFIX}host"] = platform.node()
    return out


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=20, cwd=cwd
        )  # fmt: skip
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

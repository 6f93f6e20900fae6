"""The machine a trial ran on, as flat env_* strings beside its metrics."""

from __future__ import annotations

import platform
from typing import Any

import torch

from rp_tune.core.provenance import ENV_PREFIX, PACKAGES, package_version


def environment(device: Any = None) -> dict[str, str]:
    """The trial's machine as flat strings: env_python, env_<package> for PACKAGES (read
    from their metadata: nothing is imported), env_cuda and env_cudnn (torch's build and
    runtime; "none" without CUDA) and env_gpu (the device's model, or "cpu")."""
    out = {f"{ENV_PREFIX}python": platform.python_version()}
    out.update({f"{ENV_PREFIX}{p}": package_version(p) for p in PACKAGES})
    cuda = torch.cuda.is_available()
    out[f"{ENV_PREFIX}cuda"] = str(torch.version.cuda) if cuda else "none"
    cudnn = torch.backends.cudnn.version() if cuda else None
    out[f"{ENV_PREFIX}cudnn"] = str(cudnn) if cudnn else "none"
    on_gpu = cuda and getattr(device, "type", str(device)) == "cuda"
    out[f"{ENV_PREFIX}gpu"] = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    out[f"{ENV_PREFIX}host"] = platform.node()
    return out

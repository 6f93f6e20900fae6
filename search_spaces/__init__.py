"""Search spaces: one module per sweep.

Each module defines
- DESCRIPTION: one line, what the sweep reproduces;
- GRID: flat config key -> list of values; the sweep is their Cartesian product (or a list of
  such dicts: the union of their products, for axes that depend on one another);
- FIXED: flat config key -> value, the same for every trial;
- SMOKE: flat key -> value or list, replacing GRID/FIXED entries under `--smoke` (or a list
  of such dicts, one per grid, where GRID is a list);
- FIGURES (optional): the paper figures it serves, names from `rp_tune.results.figures.FIGURES`;
  the report names the plot that draws each.

Trials at density 1.0 are dense whatever the scheme, so they are run once per model and seed.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from types import ModuleType

# The synthetic-data override most spaces' SMOKE versions share: one quick epoch on CPU.
SMOKE_DATA = {
    "data.name": "synthetic",
    "data.synthetic_train": 256,
    "data.synthetic_test": 64,
    "train.epochs": 1,
    "train.batch_size": 64,
}


# ImageNet trials as Liu et al. run them (Table 1): the ImageNet recipe, 4-GPU DDP.
IMAGENET_FIXED = {
    "data.name": "imagenet",
    "train.recipe": "imagenet",
    "resources.workers": 4,
    "resources.gpus_per_worker": 1.0,
    "resources.cpus_per_worker": 8,
    "seed": 0,
}
# Their SMOKE version: synthetic 32x32 images through the same DDP/ImageNet-recipe path.
IMAGENET_SMOKE = {
    "model.name": "resnet18",
    "data.name": "synthetic",
    "data.synthetic_train": 64,
    "resources.workers": 1,
    "resources.gpus_per_worker": None,  # a GPU where there is one, else the CPU
    "resources.cpus_per_worker": 1,
    "train.epochs": 1,
    "train.batch_size": 8,
    "evaluation.batch_size": 16,
}


def space_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load_space(name: str) -> ModuleType:
    if name not in space_names():
        raise ValueError(f"unknown search space {name!r}; valid choices: {space_names()}")
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except SyntaxError as e:
        raise ValueError(f"search space {name!r}: {e.filename}, line {e.lineno}: {e.msg}") from None
    except Exception as e:  # an import or a value in the module fails
        # the space file's own line (the last frame in it), not a helper's it called
        where, tb = "?", e.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if os.path.basename(filename) == f"{name}.py":
                where = f"{filename}, line {tb.tb_lineno}"
            tb = tb.tb_next
        raise ValueError(
            f"search space {name!r} fails to load: {where}: {type(e).__name__}: {e}"
        ) from None
    for attr in ("DESCRIPTION", "GRID", "FIXED", "SMOKE"):
        if not hasattr(module, attr):
            raise ValueError(f"search space {name!r} lacks {attr}")
    return module

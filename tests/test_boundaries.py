"""Who may import what: the edges of the design, enforced.

- only the Ray adapter (`rp_tune/adapters/ray/`) imports ray, only the MLflow
  adapter (its tracker, run model and run states) imports mlflow, only the figures and the
  trial curves beside an MLflow run import matplotlib (every import statement, at the top or
  inside a function, is read from the source);
- the core (model names, layout, seeds, storage, provenance...), the config and the search
  spaces name no torch;
- planning a sweep (`--dry-run`) and every bad-input path of the CLI run without Ray, and
  `import rp_tune.config` loads no torch (checked in a fresh interpreter).
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "rp_tune").rglob("*.py")) + sorted((ROOT / "search_spaces").glob("*.py"))
ONLY = {
    "ray": {
        f"rp_tune/adapters/ray/{m}.py"
        for m in ("sweep", "trainable", "callbacks", "cluster", "searcher", "toy")
    },
    "mlflow": {
        "rp_tune/adapters/mlflow/tracking.py",
        "rp_tune/adapters/mlflow/runs.py",
        "rp_tune/adapters/mlflow/states.py",
    },  # fmt: skip
    "matplotlib": {"rp_tune/results/figures.py", "rp_tune/adapters/mlflow/curves.py"},
}
TORCH_FREE = {
    *(str(p.relative_to(ROOT)) for p in (ROOT / "rp_tune" / "core").glob("*.py")),
    "rp_tune/config/__init__.py",
    *(str(p.relative_to(ROOT)) for p in (ROOT / "search_spaces").glob("*.py")),
}


def _imports(path: Path) -> set[str]:
    """Top-level packages of every import statement in a file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_only_the_adapters_import_ray_mlflow_and_matplotlib():
    found = {str(p.relative_to(ROOT)): _imports(p) for p in SOURCES}
    for package, allowed in ONLY.items():
        users = {f for f, pkgs in found.items() if package in pkgs}
        assert users <= allowed, f"{package} imported by {sorted(users - allowed)}"


def test_config_planning_storage_and_spaces_name_no_torch():
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        if rel in TORCH_FREE:
            assert not {"torch", "torchvision"} & _imports(path), rel


def _fresh(code: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_importing_the_config_loads_no_torch():
    loaded = _fresh(
        "import json, sys; import rp_tune.config\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'ray', 'mlflow'))))"
    )
    assert loaded == []


BAD_OR_PLANNING = [
    ["--space", "width_scan", "--dry-run"],
    ["--space", "no_such_space"],
    ["--space", "smoke", "--set", "sparsity.density=2"],
    ["--space", "smoke", "--set", "train.epochs"],
    ["--space", "smoke", "--max-concurrent", "0"],
    ["--space", "smoke", "--set", "data.name=cifar10", "--set", "data.download=false",
     "--set", "data.root=/nonexistent-rp-tune-root"],
    ["--space", "smoke", "--resume"],
    ["--space", "smoke", "--set", "sparsity.layer_density=nope=0.5"],
    ["--space", "smoke", "--resume", "--set", "train.epochs=9"],  # against the stored sweep
]  # fmt: skip


@pytest.mark.slow  # a process of its own or a longer loop: seconds
def test_planning_and_bad_input_never_import_ray(tmp_path):
    """One fresh interpreter runs every case in turn: the dry run exits 0, each bad input 2,
    and after all of them neither ray nor mlflow was ever imported."""
    from rp_tune.planning.records import write_stored_trials
    from rp_tune.planning.space import expand_space

    stored = tmp_path / "stored"
    write_stored_trials(str(stored / "smoke"), expand_space("smoke"))
    cases = [[*args, "--storage", str(tmp_path / "results")] for args in BAD_OR_PLANNING[:-1]]
    cases.append([*BAD_OR_PLANNING[-1], "--storage", str(stored)])
    code = (
        "import contextlib, io, json, sys; sys.argv = ['run_sweep.py']\n"
        "import run_sweep\n"
        "codes = []\n"
        f"for args in {cases!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"  # noqa: E501
        "        codes.append(run_sweep.main(args))\n"
        "print(json.dumps({'rc': codes, 'ray': 'ray' in sys.modules, 'mlflow': 'mlflow' in sys.modules}))"  # noqa: E501
    )
    out = _fresh(code)
    assert out == {"rc": [0] + [2] * (len(cases) - 1), "ray": False, "mlflow": False}, out
    assert not (tmp_path / "results").exists()

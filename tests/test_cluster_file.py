"""The cluster file and the cluster arithmetic: cluster.yaml against Ray's own schema and
commands, the README walk-through, autoscaling-aware concurrency, trial drivers on the head.
(The multi-node run that loses a worker node is in test_fault_tolerance.py.)"""

import copy
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

from rp_tune.adapters.ray.cluster import HEAD_RESOURCE, trial_driver_resources
from rp_tune.planning.capacity import default_concurrency, max_cluster_resources
from rp_tune.planning.space import expand_space

ROOT = Path(__file__).resolve().parents[1]


def test_max_cluster_resources_counts_what_the_autoscaler_may_start():
    autoscaling = {
        "max_workers": 5,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 16}},
            "cpu": {"max_workers": 10, "resources": {"CPU": 32}},
            "gpu": {"max_workers": 4, "resources": {"CPU": 48, "GPU": 4}},
        },
    }
    # GPU types first: 4 GPU nodes, then 1 CPU node fills the global max of 5 workers
    now = {"CPU": 16.0, "memory": 1e9}
    cap = max_cluster_resources(now, autoscaling)
    assert cap == {"CPU": 16 + 4 * 48 + 32, "GPU": 16.0, "memory": 1e9}
    assert max_cluster_resources(now, None) == now
    # never less than what is up now
    assert max_cluster_resources({"CPU": 500.0}, autoscaling)["CPU"] == 500.0
    gpu_trials = expand_space("smoke", {"resources.gpus_per_worker": "0.25"})
    assert default_concurrency(gpu_trials, cap) == 64  # 16 GPUs / 0.25
    assert default_concurrency(gpu_trials, now) == 1  # no GPU up yet: one at a time
    # 1.5-CPU trials: 16 CPUs now fit 10 (1.5 + 0.01 each)
    cpu_trials = expand_space("smoke", {"resources.cpus_per_worker": "1.5"})
    assert default_concurrency(cpu_trials, now) == 10


def test_trial_drivers_go_to_the_head_node_when_it_has_a_cpu():
    head = {"Alive": True, "Resources": {"CPU": 8.0, HEAD_RESOURCE: 1.0}}
    worker = {"Alive": True, "Resources": {"CPU": 48.0, "GPU": 4.0}}
    assert trial_driver_resources([head, worker]) == {"CPU": 0.01, HEAD_RESOURCE: 0.001}
    cpuless_head = {"Alive": True, "Resources": {HEAD_RESOURCE: 1.0}}
    assert trial_driver_resources([cpuless_head, worker]) == {"CPU": 0.01}


# --------------------------------------------------------------------------------------------
# cluster.yaml and the README's cluster walk-through
# --------------------------------------------------------------------------------------------

CLUSTER_YAML = ROOT / "cluster.yaml"
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
# Programs the commands may use without further checks (shell built-ins and coreutils).
PLAIN = {
    "cd",
    "echo",
    "export",
    "kill",
    "sleep",
    "printf",
    "grep",
    "mkdir",
    "pkill",
    "ulimit",
    "exit",
    "true",
    "{",
    "}",
    "!",
}
# Files that exist on the nodes without coming from this repository.
RAY_MADE = {"~/ray_bootstrap_config.yaml"}


def _cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _commented_block(name: str) -> dict:
    """The YAML between `# BEGIN name` and `# END name`, uncommented as the file says."""
    lines = CLUSTER_YAML.read_text().splitlines()
    start, end = lines.index(f"# BEGIN {name}"), lines.index(f"# END {name}")
    return yaml.safe_load("\n".join(ln[2:] for ln in lines[start + 1 : end]))


def _ray_validated(config: dict) -> dict:
    """What `ray up` does to a config before it touches a cloud: defaults, then the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_own_validation():
    import jsonschema

    aws = _ray_validated(_cluster_config())
    assert aws["provider"]["type"] == "aws"
    nodes = aws["available_node_types"]
    head, gpu = nodes[aws["head_node_type"]], nodes["gpu_worker"]
    assert head["resources"]["CPU"] >= 1  # the trial drivers are pinned to the head
    assert "GPU" not in head["resources"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert aws["max_workers"] >= gpu["max_workers"]
    # the other clouds, as the comments at the end of the file say to switch
    gcp = _ray_validated({**_cluster_config(), **_commented_block("gcp")})
    assert gcp["provider"]["type"] == "gcp" and "gpu_worker" in gcp["available_node_types"]
    local = {**_cluster_config(), **_commented_block("local")}
    del local["available_node_types"], local["head_node_type"]
    local["max_workers"] = len(local["provider"]["worker_ips"])
    assert _ray_validated(local)["provider"]["type"] == "local"
    # the validation is real: a misspelt field is refused
    with pytest.raises(jsonschema.ValidationError):
        _ray_validated({**_cluster_config(), "setup_command": ["true"]})


def _simple_commands(line: str) -> list[list[str]]:
    """A shell line split into simple commands (argv lists), redirections dropped; the
    target of each `>` is recorded as a made file (as `("__made__", path)` pseudo-command)."""
    line = re.sub(r"(?<![^\s(])\d+(?=>)", "", line)  # `2>` names a descriptor, not an argument
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    tokens = list(lex)
    out: list[list[str]] = [[]]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in SEPARATORS:
            out.append([])
        elif set(tok) <= set("<>&") and ("<" in tok or ">" in tok):
            if i + 1 < len(tokens) and ">" in tok and not tokens[i + 1].isdigit():
                out.insert(-1, ["__made__", tokens[i + 1]])
            i += 1  # skip the target
        else:
            out[-1].append(tok)
        i += 1
    return [c for c in out if c]


def _local_path(remote: str, mounts: dict[str, str]) -> Path | None:
    """The repository file that a node path comes from through file_mounts."""
    for target, source in mounts.items():
        if remote == target or remote.startswith(target + "/"):
            return (ROOT / source / remote[len(target) :].lstrip("/")).resolve()
    return None


def _click_check(group, argv: list[str], where: str) -> list[str]:
    """Parse argv with the CLI's own click definitions; returns what follows a `--`."""
    import click

    cmd, name = group, group.name
    while isinstance(cmd, click.Group):
        assert argv and argv[0] in cmd.commands, f"{where}: no command {name} {argv[:1]}"
        cmd, name, argv = cmd.commands[argv[0]], f"{name} {argv[0]}", argv[1:]
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    try:
        cmd.make_context(name, list(argv), resilient_parsing=False)
    except click.UsageError as e:
        raise AssertionError(f"{where}: `{name} {' '.join(argv)}`: {e}") from None
    return rest


def _check_command(argv: list[str], where: str, mounts: dict[str, str], made: set[str]) -> None:
    """Every program, option and file an argv names must exist (see PLAIN for the rest)."""
    import mlflow.cli
    import ray.scripts.scripts
    from packaging.requirements import Requirement

    import run_sweep

    while argv and "=" in argv[0] and not argv[0].startswith("-"):
        argv = argv[1:]  # VAR=value prefix
    prog, args = argv[0], argv[1:]
    for tok in args:  # node paths inside the project must come from the repository
        local = _local_path(tok.split("=", 1)[-1], mounts)
        if local is not None:
            assert local.exists(), f"{where}: {tok} (from {local}) does not exist"
    if prog == "__made__":
        made.add(args[0])
    elif prog in ("nohup", "setsid"):
        _check_command(args, where, mounts, made)
    elif prog == "source":
        assert args[0] in made, f"{where}: sources {args[0]}, which no earlier command writes"
    elif prog == "ray":
        for tok in args:
            if tok.endswith((".yaml", ".yml")) or tok.startswith("--autoscaling-config"):
                path = tok.split("=", 1)[-1]
                assert path in RAY_MADE or (ROOT / path).is_file(), f"{where}: no file {path}"
        rest = _click_check(ray.scripts.scripts.cli, args, where)
        if rest:
            _check_command(rest, where, mounts, made)
        if args[:1] == ["exec"]:
            for inner in _simple_commands(args[2]):
                _check_command(inner, where, {"/home/ray/rp_tune": "."} | mounts, made)
    elif prog == "mlflow":
        _click_check(mlflow.cli.cli, args, where)
    elif prog == "pip":
        assert args[0] == "install", where
        for tok in args[1:]:
            if tok.startswith("-"):
                continue
            path, extras = (tok.split("[", 1) + [""])[:2]
            local = _local_path(path, mounts)
            if local is not None:
                tomllib = pytest.importorskip("tomllib")  # Python 3.11+
                project = tomllib.loads((local / "pyproject.toml").read_text())["project"]
                for extra in filter(None, extras.rstrip("]").split(",")):
                    assert extra in project.get("optional-dependencies", {}), (where, extra)
            else:
                Requirement(tok)  # a valid requirement, e.g. 'boto3>=1.34'
    elif prog == "python":
        if args[0] == "-m":
            assert importlib.util.find_spec(args[1]) is not None, f"{where}: no module {args[1]}"
            return
        script = _local_path(args[0], mounts) or (ROOT / args[0])
        assert script.is_file(), f"{where}: no script {args[0]}"
        if script.name == "run_sweep.py":
            try:
                run_sweep.parse_args(args[1:])
            except SystemExit:
                raise AssertionError(f"{where}: run_sweep.py refuses {args[1:]}") from None
    else:
        assert prog in PLAIN, f"{where}: {prog!r} is not checked; add a check for it"


def test_every_command_in_cluster_yaml_names_files_and_options_that_exist():
    config = _cluster_config()
    mounts = config["file_mounts"]
    assert all((ROOT / src).exists() for src in mounts.values())
    assert (ROOT / next(iter(mounts.values())) / "pyproject.toml").is_file()
    prepared = _ray_validated(config)
    checked = 0
    for node in ("head", "worker"):
        made: set[str] = set(RAY_MADE)
        for key in (
            "initialization_commands",
            f"{node}_setup_commands",
            f"{node}_start_ray_commands",
        ):
            for line in prepared[key]:
                for argv in _simple_commands(line):
                    _check_command(argv, f"cluster.yaml {key}: {line[:60]}", mounts, made)
                    checked += 1
    assert checked > 20
    # the head starts Ray with the autoscaler and an MLflow server with proxied artifacts
    head = " ".join(prepared["head_start_ray_commands"])
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "mlflow server" in head and "--artifacts-destination" in head
    # a misspelt option would be caught
    with pytest.raises(AssertionError, match="No such option"):
        _check_command(["ray", "start", "--heads"], "probe", mounts, set())
    with pytest.raises(AssertionError, match="refuses"):
        _check_command(["python", "run_sweep.py", "--spaces", "x"], "probe", mounts, set())


def test_the_readme_cluster_walkthrough_uses_real_commands_and_options():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Cluster") :]
    section = section[: section.index("\n## ", 1)]
    block = section[
        section.index("```bash") + len("```bash") : section.index(
            "```", section.index("```bash") + 7
        )
    ]
    lines = [ln.split("  #", 1)[0].strip() for ln in block.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    steps = [ln.split()[:2] for ln in lines]
    for step in (["ray", "up"], ["ray", "job"], ["ray", "attach"], ["ray", "down"]):
        assert step in steps, f"the walk-through lacks `{' '.join(step)}`"
    mounts = _cluster_config()["file_mounts"]
    for line in lines:
        for argv in _simple_commands(line):
            _check_command(argv, f"README: {line[:60]}", mounts, set(RAY_MADE))

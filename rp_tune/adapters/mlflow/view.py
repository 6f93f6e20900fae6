"""What the MLflow UI shows of a sweep: its trials side by side, in a view saved with the sweep.

MLflow 3's experiment page opens a saved view from an experiment tag
`mlflow.sharedViewState.<key>` when its URL carries `viewStateShareKey=<key>` (the UI's "share
view" button writes such tags). The tag holds JSON: the runs table's search (`searchFilter`,
`orderByKey`, `orderByAsc`) and its UI state (`selectedColumns`, `runsHiddenMode`,
`compareRunCharts`, `compareRunSections`, ...). The format is MLflow's UI code's
(ExperimentPageUIState, ExperimentPageSearchFacetsState and runs-charts.types in
mlflow/server/js), read for MLflow 3.17; `tests/test_mlflow_browser.py` opens the URL in
Chromium and checks that the page shows the trials and their charts, so a change of format in
a later MLflow fails a test instead of showing an empty page.

What a sweep's view shows: only this sweep's trials (the child runs of its parent run), best
test accuracy first, with their key params (model, depth, width, scheme, density, seed,
training mode) and final metrics (test accuracy, NLL, ECE, FGSM accuracy, OoD AUROCs,
achieved density) as columns; charts of test accuracy against density (a colour per scheme:
every trial run carries the tag `mlflow.runColor` of its scheme), a parallel-coordinates chart
over what the sweep varies, scheme and density against test accuracy, and the validation
accuracy curves. The experiment is tagged `mlflow.experimentKind = custom_model_development`
(MLflow's kind for model training); MLflow 3.17's UI reads the kind from its GenAI/Model
training switch instead, so the URL also says `workflowType=machine_learning`.

Nothing here imports mlflow: `rp_tune.adapters.mlflow.tracking` writes these tags.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from rp_tune.config import TrialConfig, ood_sets
from rp_tune.core.model_names import parse_cifar_resnet
from rp_tune.sparsity import SCHEMES

SHARE_TAG_PREFIX = "mlflow.sharedViewState."
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # MLflow's experiment kind for model training
RUN_COLOR_TAG = "mlflow.runColor"
# matplotlib's tab10, one per scheme in registry order; dense trials are black
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
DENSE_COLOR = "#000000"
# the trial params a comparison names (arch.* are derived from model.name, see arch_params)
KEY_PARAMS = (
    "model.name",
    "arch.depth",
    "arch.width",
    "sparsity.scheme",
    "sparsity.density",
    "seed",
    "sparsity.mode",
)
KEY_METRICS = ("test_acc", "test_acc_best_val", "test_loss", "test_ece", "fgsm_acc")
SECTION = "rp_tune-comparison"


def share_key(sweep_path: str) -> str:
    """The view's key: `rp_tune-` and 12 hex digits of the sweep's storage path, so every
    sweep of an experiment (another --name or --storage) keeps its own view."""
    return "rp_tune-" + hashlib.sha256(sweep_path.encode()).hexdigest()[:12]


def arch_params(model_name: str) -> dict[str, int]:
    """Depth and width of a CIFAR ResNet (`arch.depth`, `arch.width`), logged beside the
    config so the runs table and charts can order trials by them; {} for other models."""
    dw = parse_cifar_resnet(model_name)
    return {} if dw is None else {"arch.depth": dw[0], "arch.width": dw[1]}


def run_color(flat: Mapping[str, Any]) -> str:
    """The colour of a trial's run in MLflow's charts: its scheme's, black when dense."""
    if float(flat.get("sparsity.density", 0.0)) >= 1.0:
        return DENSE_COLOR
    names = list(SCHEMES)
    scheme = str(flat.get("sparsity.scheme"))
    return PALETTE[names.index(scheme) % len(PALETTE)] if scheme in names else PALETTE[-1]


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's canonical column key


def _varying(values: Mapping[str, set]) -> list[str]:
    return [k for k in KEY_PARAMS if len(values.get(k, ())) > 1]


def comparison_view(configs: Sequence[TrialConfig], parent_run_id: str) -> dict[str, Any]:
    """The saved view of a sweep's trials (module docstring): JSON-ready."""
    values: dict[str, set] = {}
    for cfg in configs:
        flat = {**cfg.to_flat(), **arch_params(cfg.model.name)}
        for k in KEY_PARAMS:
            if k in flat:
                values.setdefault(k, set()).add(str(flat[k]))
    metrics = list(KEY_METRICS)
    metrics += [f"ood_auroc_{n}" for n in sorted({n for c in configs for n in ood_sets(c)})]
    metrics.append("achieved_density")
    columns = [_column("params", k) for k in KEY_PARAMS if k in values]
    columns += [_column("metrics", m) for m in metrics]
    columns.append(_column("attributes", "Dataset"))  # the trial's dataset input: name, digest
    parallel = [
        k for k in _varying(values) if k not in ("sparsity.scheme", "sparsity.density", "seed")
    ]
    if all(arch_params(c.model.name) for c in configs) and {"arch.depth", "arch.width"} & set(
        parallel
    ):  # every net a CIFAR ResNet: its name says no more than its depth and width
        parallel = [k for k in parallel if k != "model.name"]
    n = len(configs)  # every trial on every chart, not MLflow's default 10 (or 100)
    charts = [
        _scatter("rp_tune-test_acc-vs-density", "sparsity.density", "test_acc", n),
        {
            **_chart("rp_tune-parallel", "PARALLEL", n),
            "selectedParams": [*parallel, "sparsity.scheme", "sparsity.density"],
            "selectedMetrics": ["test_acc"],
            "showAllRuns": True,
        },
        {
            **_chart("rp_tune-val_acc", "LINE", n),
            "metricKey": "val_acc",
            "selectedMetricKeys": ["val_acc"],
            "lineSmoothness": 0,
            "xAxisKey": "step",
            "scaleType": "linear",
            "xAxisScaleType": "linear",
            "useGlobalXaxisKey": False,
            "useGlobalLineSmoothing": False,
        },
        _scatter("rp_tune-fgsm-vs-density", "sparsity.density", "fgsm_acc", n),
        _scatter("rp_tune-ece-vs-density", "sparsity.density", "test_ece", n),
    ]
    sections = [
        {
            "uuid": SECTION,
            "name": "rp_tune: trials compared",
            "display": True,
            "isReordered": False,
            "deleted": False,
            "isGenerated": False,
        },
        # the UI adds a chart for every other metric in these two, which stay folded
        {
            "uuid": "rp_tune-model-metrics",
            "name": "Model metrics",
            "display": False,
            "isReordered": False,
            "deleted": False,
            "isGenerated": True,
        },
        {
            "uuid": "rp_tune-system-metrics",
            "name": "System metrics",
            "display": False,
            "isReordered": False,
            "deleted": False,
            "isGenerated": True,
        },
    ]
    return {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        "orderByKey": _column("metrics", "test_acc"),
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,  # params first (the UI's default puts metrics first)
        "runsHiddenMode": "SHOW_ALL",  # charts show every trial, not the first 10
        "compareRunCharts": charts,
        "compareRunSections": sections,
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
        "groupBy": None,
    }


def _chart(uuid: str, kind: str, runs: int) -> dict[str, Any]:
    return {
        "uuid": uuid,
        "type": kind,
        "runsCountToCompare": max(100, runs),
        "metricSectionId": SECTION,
        "deleted": False,
        "isGenerated": False,
    }


def _scatter(uuid: str, param: str, metric: str, runs: int) -> dict[str, Any]:
    return {
        **_chart(uuid, "SCATTER", runs),
        "xaxis": {"key": param, "type": "PARAM"},
        "yaxis": {"key": metric, "type": "METRIC"},
    }


def view_tags(configs: Sequence[TrialConfig], sweep_path: str, parent_run_id: str) -> dict:
    """The experiment tags a sweep sets: its kind, and its saved view under its share key."""
    view = json.dumps(comparison_view(configs, parent_run_id), separators=(",", ":"))
    return {EXPERIMENT_KIND_TAG: MODEL_TRAINING, SHARE_TAG_PREFIX + share_key(sweep_path): view}


def comparison_url(base: str, experiment_id: str, sweep_path: str) -> str:
    """The address of a sweep's saved view in the MLflow UI at `base` (http://host:port):
    its trials in the chart view, in MLflow's model-training pages."""
    query = "&".join(
        f"{k}={quote(v)}"
        for k, v in (
            ("viewStateShareKey", share_key(sweep_path)),
            ("workflowType", "machine_learning"),
            ("compareRunsMode", "CHART"),
        )
    )
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"

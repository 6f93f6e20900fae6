"""The MLflow UI as a researcher sees it, in a real browser (Debian's Chromium, driven by
Playwright): `mlflow server` on loopback against a finished smoke sweep's store, the URL the
sweep printed at its end opened in a fresh profile. Skipped with the reason where Chromium or
Playwright is absent; `.ci/run` installs both."""

import re

import pytest
from mlflow.tracking import MlflowClient

from benchmarks.mlflow_screenshot import URL_LINE, chromium, open_page, serve
from tests.helpers import mlflow_runs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(chromium() is None, reason="needs Chromium: apt-get install chromium"),
]
pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install -e '.[dev]'")


def test_the_printed_url_opens_the_sweeps_trials_compared(smoke_sweep):
    assert smoke_sweep.run.returncode == 0, smoke_sweep.run.stderr[-3000:]
    printed = URL_LINE.search(smoke_sweep.run.stdout)
    assert printed, smoke_sweep.run.stdout[-2000:]
    db = smoke_sweep.root / "mlflow.db"
    _, children = mlflow_runs(MlflowClient(f"sqlite:///{db}"), "smoke")
    names = [c.info.run_name for c in children]
    assert names
    with serve(db) as base:
        url = printed.group(1).replace("http://127.0.0.1:5000", base)
        charts, _ = open_page(url, [*names, "rp_tune: trials compared", "Parallel Coordinates"])
        # the model-training runs page in the sweep's saved view, not MLflow's GenAI overview
        assert "You're viewing a shared view" in charts and "Observability" not in charts
        assert re.search(rf"\b{len(names)} matching runs", charts)  # the trials, no parent
        assert "sparsity.density vs. test_acc" in charts
        table_url = url.replace("compareRunsMode=CHART", "compareRunsMode=TABLE")
        _, rows = open_page(table_url, names, size=(2800, 1000))  # every column on screen
    name_col = "attributes.`Run Name`"  # its text: the colour, then the run's name
    shown = {r[name_col].split()[-1]: r for r in rows if name_col in r}
    assert sorted(shown) == sorted(names)
    for child in children:  # each trial's row: its own test accuracy, scheme and dataset
        row = shown[child.info.run_name]
        assert row["metrics.`test_acc`"] == repr(child.data.metrics["test_acc"])
        assert row["params.`sparsity.scheme`"] == child.data.params["sparsity.scheme"]
        assert row["metrics.`fgsm_acc`"] == repr(child.data.metrics["fgsm_acc"])
        assert row["attributes.`Dataset`"].startswith("synthetic (")

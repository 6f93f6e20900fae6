"""Where a sweep's runs stand in MLflow, and ending what a stopped or killed driver left
RUNNING: the sweep's parent run found by its path, its children closed as KILLED.

A driver marks the parent run with its lease token (`DRIVER_TAG`), so a command that holds
the dead lease of an earlier driver never closes the runs of one that took the sweep over.
"""

from __future__ import annotations

from typing import Any

DRIVER_TAG = "rp_tune.driver"  # the parent run's: the lease token of the driver running it


def find_parent_run(client: Any, sweep_path: str, experiment_ids: list[str] | None = None):
    """The run id of the sweep's parent run (tags rp_tune.role = sweep and its path), in the
    given experiments or any; None if there is none."""
    ids = experiment_ids or [e.experiment_id for e in client.search_experiments()]
    for exp in ids:
        runs = client.search_runs(
            [exp],
            filter_string=(
                f"tags.`rp_tune.sweep_path` = '{sweep_path}' and tags.`rp_tune.role` = 'sweep'"
            ),
            max_results=1,
        )
        if runs:
            return runs[0].info.run_id
    return None


def close_running_children(client: Any, experiment_id: str, parent: str) -> int:
    """Mark every child run of `parent` still RUNNING as KILLED (tag rp_tune.status
    "interrupted"): its trial stopped with the sweep and continues on `--resume`, which sets
    it RUNNING again when its first epoch arrives. Returns how many."""
    query = f"tags.`mlflow.parentRunId` = '{parent}' and attributes.status = 'RUNNING'"
    running, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
        running += [r.info.run_id for r in page]
        token = page.token
        if not token:
            break
    for run_id in running:
        client.set_tag(run_id, "rp_tune.status", "interrupted")
        client.set_terminated(run_id, "KILLED")
    return len(running)


def close_abandoned_runs(tracking_uri: str, sweep_path: str, driver: str | None = None) -> int:
    """After a driver that was killed (SIGKILL, a lost node: it could not end its runs): the
    sweep's parent run and every trial run it left RUNNING become KILLED, tag rp_tune.status
    "interrupted". Returns how many runs changed (0 where none was left running, so a second
    call does nothing).

    `driver`: the killed driver's lease token. The parent run names the driver that last
    started it (tag `rp_tune.driver`); when that is another one (a --resume that took the
    sweep over meanwhile), its runs are live and nothing is touched."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    parent = find_parent_run(client, sweep_path)
    if parent is None:
        return 0
    run = client.get_run(parent)
    known = driver not in (None, "", "?")  # "?": a lease that did not parse
    if known and run.data.tags.get(DRIVER_TAG, driver) != driver:
        return 0
    closed = close_running_children(client, run.info.experiment_id, parent)
    if run.info.status == "RUNNING":
        client.set_tag(parent, "rp_tune.status", "interrupted")
        client.set_terminated(parent, "KILLED")
        closed += 1
    return closed

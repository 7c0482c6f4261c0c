"""Helpers for the last cells of a template: a summary that runners and jobs can read.

Also the one home of the job steps (``register``, ``deploy``, ``smoke_test``, ``promote``).

``emit_summary`` displays the summary for the reader and attaches it to the cell output
under a dedicated MIME type, which ``ptdeploy run`` reads back from the executed
notebook (no scraping of printed text). On Databricks it also sets job task values so
the next task of a job (deploy after register, smoke test after deploy) gets them.
"""

from __future__ import annotations

import json
from typing import Any

from ptdeploy.templates.parameters import databricks_dbutils

SUMMARY_MIME = "application/vnd.ptdeploy.summary+json"

# The job steps: the task keys of the job definitions (resources/*.job.yml), in order, and
# the values of a template's ``steps`` parameter (``all`` runs them in one go). The one
# home of these names: specs, the bundle generator, the catalog and flow import them.
REGISTER_TASK = "register"
DEPLOY_TASK = "deploy"
SMOKE_TEST_TASK = "smoke_test"
PROMOTE_TASK = "promote"  # all traffic and the champion alias to the new version
JOB_TASKS = (REGISTER_TASK, DEPLOY_TASK, SMOKE_TEST_TASK, PROMOTE_TASK)
ALL_STEPS = "all"
STEPS = (ALL_STEPS, *JOB_TASKS)


def emit_summary(summary: dict[str, Any], namespace: dict[str, Any] | None = None) -> None:
    from IPython.display import display

    clean = json.loads(json.dumps(summary, default=str))
    text = "\n".join(f"{k}: {v}" for k, v in clean.items())
    display({SUMMARY_MIME: clean, "text/plain": text}, raw=True)
    set_task_values(clean, namespace)


def set_task_values(values: dict[str, Any], namespace: dict[str, Any] | None = None) -> None:
    """``dbutils.jobs.taskValues.set`` for each value, on Databricks only."""
    dbutils = databricks_dbutils(namespace)
    if dbutils is None:
        return
    for key, value in values.items():
        dbutils.jobs.taskValues.set(key=key, value=value)


def get_task_value(
    task_key: str, key: str, debug_value: Any, namespace: dict[str, Any] | None = None
) -> Any:
    """A value set by an earlier task of the job; ``debug_value`` outside a job.

    Databricks' ``taskValues.get`` raises ``TypeError`` outside a job when ``debugValue``
    is None (https://docs.databricks.com/dev-tools/databricks-utils.html), so None is
    passed as ``""`` and read back as None. Inside a job a value the upstream task never
    set is an error that says which task must run first. Off Databricks (no dbutils) the
    ``debug_value`` applies, as outside a job.
    """
    from ptdeploy.errors import TaskValueError

    dbutils = databricks_dbutils(namespace)
    if dbutils is None:
        return debug_value
    debug = "" if debug_value is None else debug_value
    try:
        value = dbutils.jobs.taskValues.get(taskKey=task_key, key=key, debugValue=debug)
    except ValueError as exc:
        raise TaskValueError(
            f"this job task needs task value {key!r} from task {task_key!r}, which did not set "
            f"it ({exc}). Make this task depend on {task_key!r} (depends_on) and run the job "
            f"from the start, or run {task_key!r} first."
        ) from exc
    return None if value == "" and debug_value is None else value


def read_summary(notebook: Any) -> dict[str, Any] | None:
    """The last summary emitted in an executed notebook (an nbformat node), or None."""
    found = None
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if SUMMARY_MIME in data:
                found = data[SUMMARY_MIME]
    return found

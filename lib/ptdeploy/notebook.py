"""Helpers for the last cells of a template: a summary that runners and jobs can read.

``emit_summary`` displays the summary for the reader and attaches it to the cell output
under a dedicated MIME type, which ``ptdeploy run`` reads back from the executed
notebook (no scraping of printed text). On Databricks it also sets job task values so
the next task of a job (deploy after register, smoke test after deploy) gets them.
"""

from __future__ import annotations

import json
from typing import Any

from ptdeploy.parameters import databricks_dbutils

SUMMARY_MIME = "application/vnd.ptdeploy.summary+json"


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
    """A value set by an earlier task of the job; ``debug_value`` off Databricks.

    ``dbutils.jobs.taskValues.get`` itself returns ``debugValue`` when the notebook runs
    outside a job; off Databricks there is no dbutils at all, so the same default applies.
    """
    dbutils = databricks_dbutils(namespace)
    if dbutils is None:
        return debug_value
    return dbutils.jobs.taskValues.get(taskKey=task_key, key=key, debugValue=debug_value)


def read_summary(notebook: Any) -> dict[str, Any] | None:
    """The last summary emitted in an executed notebook (an nbformat node), or None."""
    found = None
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if SUMMARY_MIME in data:
                found = data[SUMMARY_MIME]
    return found

"""The bundle validates against the Databricks CLI's own JSON schema for bundles.

``tests/data/databricks_bundle_schema.json`` is a subset of ``bundle/schema/jsonschema.json``
of github.com/databricks/cli (commit in its ``$comment``): every definition reachable from
the root, resource types other than jobs replaced by ``{}``, descriptions dropped.
``databricks bundle validate`` stays the real check (it needs a workspace); this one fails
on an unknown key or a value of the wrong type without one.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "tests" / "data" / "databricks_bundle_schema.json").read_text())


def bundle_document(root: Path = REPO) -> dict:
    """databricks.yml with its ``include`` files merged, as the CLI loads them."""
    doc = yaml.safe_load((root / "databricks.yml").read_text())
    for pattern in doc.get("include", []):
        for path in sorted(root.glob(pattern)):
            extra = yaml.safe_load(path.read_text()) or {}
            for kind, items in (extra.get("resources") or {}).items():
                doc.setdefault("resources", {}).setdefault(kind, {}).update(items)
    return doc


def errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return sorted(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    )


def test_the_committed_bundle_follows_the_databricks_schema():
    doc = bundle_document()
    assert set(doc["resources"]["jobs"]) == {
        p.name.removesuffix(".job.yml") for p in (REPO / "resources").glob("*.job.yml")
    }
    assert errors(doc) == []


def test_prod_target_runs_as_a_service_principal_in_production_mode():
    targets = bundle_document()["targets"]
    assert targets["dev"]["mode"] == "development"
    prod = targets["prod"]
    assert prod["mode"] == "production"
    assert prod["run_as"] == {"service_principal_name": "${var.service_principal}"}
    assert {"group_name": "${var.ops_group}", "level": "CAN_RUN"} in prod["permissions"]


def test_jobs_declare_parameters_once_and_tasks_only_their_step():
    for name, job in bundle_document()["resources"]["jobs"].items():
        names = [p["name"] for p in job["parameters"]]
        assert "steps" not in names and "target" in names, name
        for task in job["tasks"]:
            base = task["notebook_task"].get("base_parameters", {})
            assert set(base) <= {"steps"}, f"{name}/{task['task_key']}: {base}"
        env = job["job_clusters"][0]["new_cluster"]["spark_env_vars"]
        assert env["HF_TOKEN"] == "{{secrets/${var.hf_secret_scope}/${var.hf_secret_key}}}"


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda job: job.update(max_concurent_runs=1), "max_concurent_runs"),
        (lambda job: job.update(max_concurrent_runs="one"), "max_concurrent_runs"),
        (lambda job: job["tasks"][0].update(notebook_tsk={}), "notebook_tsk"),
        (lambda job: job["parameters"][0].pop("default"), "default"),
        (lambda job: job["tasks"][0].update(run_if="SOMETIMES"), "run_if"),
    ],
)
def test_an_unknown_key_or_a_wrong_type_is_refused(edit, where):
    doc = bundle_document()
    edit(doc["resources"]["jobs"]["llama_completions"])
    found = errors(doc)
    assert found and any(where in e for e in found), found

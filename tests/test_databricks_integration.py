"""Against a real workspace: skipped without DATABRICKS_HOST (and credentials).

These create nothing billable unless PTDEPLOY_DATABRICKS_E2E=1 is also set: then the
Llama notebook runs on its databricks.yaml parameters with teardown, which creates a
provisioned-throughput endpoint (minutes, and money) and deletes it at the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.databricks,
    pytest.mark.skipif(
        not os.environ.get("DATABRICKS_HOST"),
        reason="needs a real workspace: set DATABRICKS_HOST and DATABRICKS_TOKEN (or a profile)",
    ),
]

REPO = Path(__file__).resolve().parents[1]
SYSTEM_AI_LLAMA = os.environ.get("PTDEPLOY_TEST_UC_MODEL", "system.ai.meta_llama_v3_1_8b_instruct")


@pytest.fixture(scope="module")
def w():
    from ptdeploy import targets

    return targets.workspace_client("databricks")


def test_listing_endpoints_works_with_unified_auth(w):
    endpoints = list(w.serving_endpoints.list())  # raises unless the credentials work
    assert all(e.name and e.state is not None for e in endpoints)


def test_optimization_info_of_a_system_ai_model(w):
    from ptdeploy.serving import optimization

    info = optimization.get_optimization_info(w, SYSTEM_AI_LLAMA, "1")
    assert info.optimizable
    assert info.chunk_size and info.chunk_size > 0


def test_unknown_endpoint_is_a_clear_error(w):
    from ptdeploy.errors import EndpointNotFoundError
    from ptdeploy.serving import endpoints

    with pytest.raises(EndpointNotFoundError, match="ptdeploy-does-not-exist"):
        endpoints.get_endpoint(w, "ptdeploy-does-not-exist")


@pytest.mark.skipif(
    os.environ.get("PTDEPLOY_DATABRICKS_E2E") != "1",
    reason="creates a billable endpoint: set PTDEPLOY_DATABRICKS_E2E=1",
)
def test_llama_notebook_on_databricks(tmp_path):
    from ptdeploy.templates import runner

    result = runner.run_notebook(
        REPO / "notebooks" / "llama_completions.ipynb",
        REPO / "parameters" / "llama_completions" / "databricks.yaml",
        {"teardown": "true", "endpoint_name": "ptdeploy-it-llama"},
        out_dir=tmp_path,
        progress=False,
    )
    assert result.ok, result.describe_failure()
    assert result.summary["endpoint_deleted"] is True

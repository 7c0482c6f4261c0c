"""The load-test notebook end to end on the local workspace, its parameters, and
``run_load_test`` against a real endpoint (tiny-llama)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from ptdeploy.capacity import loadtest
from ptdeploy.errors import EndpointNotFoundError, ParameterError
from ptdeploy.templates import flow, job, runner, specs
from ptdeploy.templates.notebook import read_summary
from ptdeploy.templates.parameters import Params

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "load_test_endpoint.ipynb"
LOCAL = REPO / "parameters" / "load_test_endpoint" / "local.yaml"
ENDPOINT = "nb-load-test"
PRICES = {"dbu_per_hour_per_unit": "10", "price_per_dbu": "0.5"}
SHORT = {
    "endpoint_name": ENDPOINT,
    "concurrency": "1,2",
    "requests_per_level": "4",
    # generous: the count cap, not the clock, must end each level on a busy CI machine
    "max_seconds_per_level": "120",
    "max_tokens": "8",
}


def params(**overrides: str) -> Params:
    values = runner.resolve_parameters(NOTEBOOK, LOCAL, {**SHORT, **overrides})
    return Params(specs.LOAD_TEST_ENDPOINT, values, "python")


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory):
    """The template's job rehearsed offline (one task, in its own kernel, its parameters
    through the offline dbutils widgets, as ``resources/load_test_endpoint.job.yml``
    declares it): deploys tiny-llama (the endpoint is missing), load-tests it, prices it."""
    out = tmp_path_factory.mktemp("load-test-notebook")
    overrides = {**SHORT, **PRICES, "out_dir": str(out / "results")}
    run = job.rehearse_job("load_test_endpoint", overrides=overrides, out_dir=out, root=REPO)
    assert run.ok, run.table()
    (task,) = run.tasks
    summary = read_summary(nbformat.read(task.output, as_version=4))
    return SimpleNamespace(output=task.output, summary=summary, results=out / "results")


@pytest.mark.slow  # runs the notebook end to end (module fixture)
def test_notebook_deploys_load_tests_plots_and_checks_capacity(notebook_run):
    s = notebook_run.summary
    assert s["endpoint"] == ENDPOINT and s["deployed_now"] is True
    assert s["task"] == "llm/v1/completions"
    # deployed with the planner's min/max for the workload of local.yaml
    assert s["min_provisioned_throughput"] == s["planned_min_provisioned_throughput"]
    assert s["max_provisioned_throughput"] == s["planned_max_provisioned_throughput"]
    assert s["max_provisioned_throughput"] % s["chunk_size"] == 0
    assert [lv["concurrency"] for lv in s["levels"]] == [1, 2]
    assert [lv["requests"] for lv in s["levels"]] == [4, 4]
    assert s["total_requests"] == 8 and s["errors"] == 0
    assert all(lv["total_tokens_per_second"] > 0 for lv in s["levels"])
    assert s["verdict"] in {"over-provisioned", "under-provisioned", "right-sized"}
    check = s["capacity_check"]
    assert check["deployed_max_provisioned_throughput"] == s["max_provisioned_throughput"]
    assert check["measured_tokens_per_second"] == s["best_total_tokens_per_second"]
    results = Path(s["results_dir"])
    assert results == notebook_run.results
    for name in ("latency_vs_concurrency.png", "throughput_vs_concurrency.png"):
        png = results / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(png) in s["plots"]
    assert (results / "levels.csv").is_file() and (results / "samples.csv").is_file()
    text = notebook_run.output.read_text()
    assert text.count('"image/png"') >= 2, "both plots are shown inline"
    assert "Verdict:" in text
    # the prices given: the plan and the verdict state the cost (10 DBU/h x 0.5 per chunk)
    assert "Cost as deployed:" in text and "Cost as planned:" in text
    chunks = s["max_provisioned_throughput"] // s["chunk_size"]
    assert s["planned_cost"]["per_hour_at_max"] == pytest.approx(5.0 * chunks)
    assert "Bearer" not in text and "DATABRICKS_TOKEN" not in text


@pytest.mark.slow  # runs the notebook end to end (module fixture)
def test_run_load_test_against_the_local_workspace(notebook_run, tmp_path):
    from ptdeploy import targets

    w = targets.workspace_client("local")
    result = loadtest.run_load_test(
        w,
        ENDPOINT,
        concurrency=(1, 3),
        requests_per_level=5,
        max_seconds_per_level=120,
        prompt="The capital of France is",
        max_tokens=6,
        temperature=0,
        out_dir=tmp_path,
        progress=False,
    )
    assert result.task is loadtest.Task.COMPLETIONS  # detected from the endpoint
    assert [lv.requests for lv in result.levels] == [5, 5]
    assert [lv.stop_reason for lv in result.levels] == ["requests", "requests"]
    assert result.total_requests == 10 and not result.errors_by_kind()
    assert sorted(s.index for s in result.samples if s.concurrency == 3) == [0, 1, 2, 3, 4]
    prompt_tokens = {s.input_tokens for s in result.samples}
    assert len(prompt_tokens) == 1 and prompt_tokens.pop() > 0  # same prompt, same count
    assert all(1 <= s.output_tokens <= 6 for s in result.samples)
    assert all(s.total_tokens == s.input_tokens + s.output_tokens for s in result.samples)
    for level in result.levels:
        assert level.requests_per_second > 0 and level.output_tokens_per_second > 0
        assert level.total_tokens_per_second > level.output_tokens_per_second
        assert 0 < level.p50_latency_s <= level.p95_latency_s <= level.p99_latency_s
    assert (tmp_path / "summary.json").is_file()


@pytest.mark.slow  # runs the notebook end to end (module fixture)
def test_an_existing_endpoint_is_used_as_it_is(notebook_run):
    from ptdeploy import targets

    p = params(deploy_if_missing="false", task="completions")
    found = flow.load_test_target(p, targets.workspace_client("local"))
    assert found.deployed_now is False and found.capacity_plan is None
    assert found.task is loadtest.Task.COMPLETIONS
    s = notebook_run.summary
    assert found.deployed.max_provisioned_throughput == s["max_provisioned_throughput"]
    assert found.chunk_size == s["chunk_size"]


def test_a_missing_endpoint_needs_deploy_if_missing(local_client):
    import fakes

    w = local_client(fakes.ReadyWorker, fakes.Catalog())  # the app in-process: no server to start
    p = params(endpoint_name="nb-load-test-absent", deploy_if_missing="false")
    with pytest.raises(EndpointNotFoundError, match="deploy_if_missing=true"):
        flow.load_test_target(p, w)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"concurrency": "1,2,x"}, "'concurrency'"),
        ({"concurrency": "1,1"}, "distinct"),
        ({"concurrency": "0,4"}, "between 1 and 256"),
        ({"peak_requests_per_second": "0"}, "'peak_requests_per_second'"),
        ({"rest_requests_per_second": "9"}, "cannot exceed the peak"),
        ({"target": "databricks"}, "'deploy_if_missing'=true applies to target 'local' only"),
        ({"task": "completion"}, "Did you mean 'completions'"),
        ({"headroom": "0.5"}, "'headroom'"),
    ],
)
def test_bad_parameters_name_the_parameter(overrides, message):
    with pytest.raises(ParameterError, match=message):
        params(**overrides)


def test_optional_p95_target_and_out_dir(tmp_path):
    p = params(p95_latency_target_s="", out_dir="")
    assert p.p95_latency_target_s is None and flow.workload(p).p95_latency_target_s is None
    assert flow.load_test_out_dir(p).parent.name == "loadtest"
    assert flow.load_test_out_dir(params(out_dir=str(tmp_path))) == tmp_path

"""Load test: bounding, error recording, percentiles, token rates, payloads, CLI.

The load test runs through databricks-sdk against the local workspace's real app
(in-process, ``tests/fakes.py``) whose endpoints ``ep`` (completions), ``ep-chat`` and
``ep-embed`` are served by a scripted worker: each request runs the test's
``behaviour(call_number, body)``, which returns (latency, response) or raises, and the
latency advances the load test's injected clock, so durations and latencies are exact
numbers and nothing sleeps.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import threading
from dataclasses import dataclass

import fakes
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors.platform import NotFound, TooManyRequests
from databricks.sdk.service.serving import ServingEndpointDetailed
from fakes import FakeClock
from ptdeploy import cli
from ptdeploy.capacity import loadtest
from ptdeploy.capacity.loadtest import Task, percentile, run_load_test
from ptdeploy.errors import EndpointError, InvalidRequestError, ParameterError

ENDPOINTS = {"ep": "llm/v1/completions", "ep-chat": "llm/v1/chat"}
ENDPOINTS["ep-embed"] = "llm/v1/embeddings"


def completion(prompt_tokens: int = 10, completion_tokens: int = 30) -> dict:
    return {
        "object": "text_completion",
        "choices": [{"index": 0, "text": "..."}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


SCRIPT: dict = {}  # the running test's behaviour, clock and calls (one app per module)
_LOCK = threading.Lock()


def _scripted(body: dict) -> dict:
    with _LOCK:
        number = len(SCRIPT["calls"])
        SCRIPT["calls"].append(body)
    latency, response = SCRIPT["behaviour"](number, body)
    SCRIPT["clock"].advance(latency)
    return response


class ScriptedWorker(fakes.ReadyWorker):
    """Answers each request with the test's behaviour, in a thread: a level's requests
    really run in parallel."""

    async def infer(self, body: dict) -> dict:
        return await asyncio.to_thread(_scripted, body)


@pytest.fixture(scope="module")
def workspace(module_local_client) -> WorkspaceClient:
    catalog = fakes.Catalog(task_of=lambda name: ENDPOINTS[name.rsplit(".", 1)[-1]])
    w = module_local_client(ScriptedWorker, catalog)
    fakes.create_endpoints(w, {name: f"main.default.{name}" for name in ENDPOINTS})
    return w


@dataclass
class Scripted:
    w: WorkspaceClient
    clock: FakeClock
    calls: list[dict]


@pytest.fixture
def script(workspace):
    """``script(behaviour) -> Scripted``: the endpoints answer with ``behaviour``."""

    def make(behaviour) -> Scripted:
        SCRIPT.update(behaviour=behaviour, clock=FakeClock(100.0), calls=[])
        return Scripted(workspace, SCRIPT["clock"], SCRIPT["calls"])

    return make


def constant(latency: float = 1.0, **usage):
    return lambda number, kwargs: (latency, completion(**usage))


def run(fake: Scripted, endpoint: str = "ep", **kwargs):
    kwargs.setdefault("task", "completions")
    kwargs.setdefault("progress", False)
    return run_load_test(fake.w, endpoint, clock=fake.clock, **kwargs)


# --------------------------------------------------------------------------- bounding


def test_count_cap_per_level(script):
    fake = script(constant(0.5))
    result = run(fake, concurrency=(1, 2, 4), requests_per_level=3, max_seconds_per_level=1e6)
    assert [lv.requests for lv in result.levels] == [3, 3, 3]
    assert [lv.stop_reason for lv in result.levels] == ["requests"] * 3
    assert len(fake.calls) == 9
    assert [s.concurrency for s in result.samples] == [1] * 3 + [2] * 3 + [4] * 3


def test_progress_callback_gets_each_sample_as_it_lands(script, capsys):
    fake = script(constant(0.5))
    seen = []
    result = run(
        fake,
        concurrency=(1, 2),
        requests_per_level=3,
        max_seconds_per_level=1e6,
        progress=seen.append,
    )
    assert sorted((s.concurrency, s.index) for s in seen) == sorted(
        (s.concurrency, s.index) for s in result.samples
    )
    assert "concurrency" not in capsys.readouterr().err  # the caller draws, not the library


def test_duration_cap_at_concurrency_one(script):
    # Each request takes 1 s of fake time; none is issued once 5 s have passed:
    # requests start at t = 0, 1, 2, 3, 4.
    fake = script(constant(1.0))
    result = run(fake, concurrency=(1,), requests_per_level=1000, max_seconds_per_level=5)
    (level,) = result.levels
    assert level.requests == 5
    assert level.stop_reason == "duration"
    assert level.duration_s == pytest.approx(5.0)
    assert level.requests_per_second == pytest.approx(1.0)
    assert [s.start_s for s in result.samples] == pytest.approx([0, 1, 2, 3, 4])


def test_duration_cap_with_parallel_workers(script):
    # Time moves 1 s per completed request. A request is issued only while fewer than 5
    # have completed, and at most 4 are in flight: between 5 and 5 + 4 - 1 requests.
    fake = script(constant(1.0))
    result = run(fake, concurrency=(4,), requests_per_level=1000, max_seconds_per_level=5)
    (level,) = result.levels
    assert 5 <= level.requests <= 8
    assert level.stop_reason == "duration"


def test_levels_really_run_in_parallel(script):
    # Three requests must be in flight together to pass the barrier; fewer workers would
    # break it (BrokenBarrierError is then recorded as an error).
    barrier = threading.Barrier(3, timeout=20)

    def behaviour(number, kwargs):
        barrier.wait()
        return 0.1, completion()

    fake = script(behaviour)
    result = run(fake, concurrency=(3,), requests_per_level=6, max_seconds_per_level=1e6)
    assert result.levels[0].requests == 6
    assert result.levels[0].errors == 0


# --------------------------------------------------------------------------- statistics


def test_percentiles_on_known_latencies(script):
    latencies = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    fake = script(lambda number, kwargs: (latencies[number], completion()))
    result = run(fake, concurrency=(1,), requests_per_level=10, max_seconds_per_level=1e6)
    (level,) = result.levels
    # Linear interpolation: position (n - 1) * q = 9 * q.
    # p50: 9 * 0.50 = 4.5  -> 0.5 + 0.5 * (0.6 - 0.5) = 0.55
    # p95: 9 * 0.95 = 8.55 -> 0.9 + 0.55 * (1.0 - 0.9) = 0.955
    # p99: 9 * 0.99 = 8.91 -> 0.9 + 0.91 * (1.0 - 0.9) = 0.991
    assert level.p50_latency_s == pytest.approx(0.55)
    assert level.p95_latency_s == pytest.approx(0.955)
    assert level.p99_latency_s == pytest.approx(0.991)
    assert level.mean_latency_s == pytest.approx(0.55)
    assert level.duration_s == pytest.approx(5.5)
    assert level.requests_per_second == pytest.approx(10 / 5.5)
    assert [s.latency_s for s in result.samples] == pytest.approx(latencies)


def test_percentile_function():
    assert percentile([4, 1, 3, 2], 50) == pytest.approx(2.5)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    assert percentile([1, 2], 0) == 1 and percentile([1, 2], 100) == 2


def test_token_rates_from_usage(script):
    # 4 requests of 0.5 s each at concurrency 1: 2 s. 30 output tokens and 40 in total
    # per request: 120 / 2 = 60 output tokens/s, 160 / 2 = 80 tokens/s.
    fake = script(constant(0.5, prompt_tokens=10, completion_tokens=30))
    result = run(fake, concurrency=(1,), requests_per_level=4, max_seconds_per_level=1e6)
    (level,) = result.levels
    assert level.output_tokens_per_second == pytest.approx(60)
    assert level.total_tokens_per_second == pytest.approx(80)
    assert {(s.input_tokens, s.output_tokens, s.total_tokens) for s in result.samples} == {
        (10, 30, 40)
    }


def test_usage_as_dict_without_total_and_missing_usage(script):
    responses = [
        {"usage": {"prompt_tokens": 5, "completion_tokens": 7}},  # no total: 5 + 7
        {"predictions": [1]},  # no usage at all
    ]
    fake = script(lambda number, kwargs: (1.0, responses[number]))
    result = run(fake, concurrency=(1,), requests_per_level=2, max_seconds_per_level=1e6)
    assert (result.samples[0].total_tokens, result.samples[1].total_tokens) == (12, None)
    # Rates use the requests that reported usage, over the level's 2 s.
    assert result.levels[0].total_tokens_per_second == pytest.approx(12 / 2)


def test_no_usage_anywhere_gives_no_token_rate(script):
    fake = script(lambda number, kwargs: (1.0, {"predictions": [0.1]}))
    result = run(fake, concurrency=(1,), requests_per_level=2, max_seconds_per_level=1e6)
    assert result.levels[0].total_tokens_per_second is None
    assert result.levels[0].requests_per_second == pytest.approx(1.0)


# --------------------------------------------------------------------------- errors


def test_errors_are_recorded_not_raised(script):
    def behaviour(number, body):
        if number == 1:
            raise InvalidRequestError("max_tokens", "slow down")  # the endpoint answers 400
        if number == 2:
            raise RuntimeError("boom")  # the endpoint answers 500
        return 0.25, completion()

    fake = script(behaviour)
    result = run(fake, concurrency=(1,), requests_per_level=4, max_seconds_per_level=1e6)
    (level,) = result.levels
    assert (level.requests, level.errors) == (4, 2)
    by_index = {s.index: s for s in result.samples}
    assert (by_index[1].error_type, by_index[1].status_code) == ("InvalidParameterValue", 400)
    assert by_index[1].error_message == "slow down"
    assert (by_index[2].error_type, by_index[2].status_code) == ("InternalError", 500)
    assert not any(by_index[i].ok for i in (1, 2))
    # Latency percentiles come from the two successes only (0.25 s each).
    assert level.p99_latency_s == pytest.approx(0.25)
    assert result.errors_by_kind() == {
        "InvalidParameterValue (400): slow down": 1,
        "InternalError (500): Inference failed in served entity 'ep-1': boom": 1,
    }
    assert not result.all_failed


def test_errors_no_endpoint_answers_are_described_too():
    # What never comes back as an answer: a client-side failure, and the SDK's retry
    # wrapper (TimeoutError) around the error that made it retry.
    assert loadtest._describe_error(TooManyRequests("slow down")) == (
        "TooManyRequests", "slow down", 429,
    )  # fmt: skip
    assert loadtest._describe_error(RuntimeError("boom")) == ("RuntimeError", "boom", None)
    try:
        raise NotFound("no such endpoint")
    except NotFound as cause:
        try:
            raise TimeoutError("Timed out after 0:00:01") from cause
        except TimeoutError as err:
            kind, message, status = loadtest._describe_error(err)
    assert (kind, status) == ("NotFound", 404)
    assert message == "no such endpoint (SDK: Timed out after 0:00:01)"


def test_all_failed(script):
    def behaviour(number, kwargs):
        raise RuntimeError("gone")  # the endpoint answers 500

    fake = script(behaviour)
    result = run(fake, concurrency=(1, 2), requests_per_level=2, max_seconds_per_level=1e6)
    assert result.all_failed
    assert [lv.errors for lv in result.levels] == [2, 2]
    assert result.levels[0].p50_latency_s is None
    assert result.levels[0].total_tokens_per_second is None
    assert result.best_level() is None


# --------------------------------------------------------------------------- payloads and tasks


def test_payload_per_task(script):
    fake = script(constant(0.1))
    one = {"concurrency": (1,), "requests_per_level": 1}
    run(fake, task="completions", **one, prompt="Hi", max_tokens=5)
    run(fake, "ep-chat", task="llm/v1/chat", **one, prompt="Hello")
    run(fake, "ep-embed", task=Task.EMBEDDINGS, **one, inputs=["a", "b"])
    completions, chat, embeddings = fake.calls
    assert completions == {"prompt": "Hi", "max_tokens": 5}
    assert chat["max_tokens"] == loadtest.DEFAULT_MAX_TOKENS
    assert chat["messages"] == [{"role": "user", "content": "Hello"}]
    assert embeddings == {"input": ["a", "b"]}


def test_task_detected_from_endpoint(script):
    fake = script(constant(0.1))
    result = run(fake, "ep-chat", task=None, concurrency=(1,), requests_per_level=1)
    assert result.task is Task.CHAT


def _described(**fields) -> ServingEndpointDetailed:
    return ServingEndpointDetailed.from_dict({"name": "ep", **fields})


def test_task_of_an_external_model_endpoint():
    entity = {"name": "e", "external_model": {"name": "m", "provider": "openai"}}
    entity["external_model"]["task"] = "llm/v1/embeddings"
    described = _described(config={"served_entities": [entity]})
    assert loadtest.endpoint_task(described, "ep") is Task.EMBEDDINGS


def test_task_not_determinable_requires_argument():
    with pytest.raises(ParameterError, match="task") as info:
        loadtest.endpoint_task(_described(config={"served_entities": []}), "ep")
    assert "'ep'" in str(info.value)


def test_task_detection_on_missing_endpoint(script):
    fake = script(constant(0.1))
    with pytest.raises(EndpointError, match="'nope'.*ResourceDoesNotExist"):
        run(fake, "nope", task=None, concurrency=(1,), requests_per_level=1)
    assert fake.calls == []  # nothing was sent


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(concurrency=[0]), "concurrency"),
        (dict(concurrency=[]), "concurrency"),
        (dict(concurrency="1,2"), "concurrency"),
        (dict(concurrency=[1, 1]), "concurrency"),
        (dict(concurrency=[1, 10_000]), "concurrency"),
        (dict(requests_per_level=0), "requests_per_level"),
        (dict(requests_per_level=2.5), "requests_per_level"),
        (dict(max_seconds_per_level=0), "max_seconds_per_level"),
        (dict(max_seconds_per_level="30"), "max_seconds_per_level"),
        (dict(task="translation"), "task"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(temperature=3.0), "temperature"),
        (dict(prompt=""), "prompt"),
        (dict(task="embeddings", max_tokens=8), "max_tokens"),
        (dict(task="completions", messages=[{"role": "user", "content": "x"}]), "messages"),
        (dict(task="chat", messages=[{"text": "x"}]), "messages"),
        (dict(task="chat", inputs=["x"]), "inputs"),
    ],
)
def test_invalid_arguments_name_the_field(script, kwargs, field):
    fake = script(constant(0.1))
    with pytest.raises(ParameterError) as info:
        run(fake, **kwargs)
    assert str(info.value).startswith(f"{field}:")
    assert fake.calls == []


# --------------------------------------------------------------------------- results


def test_table_text_and_saved_files(script, tmp_path):
    fake = script(constant(0.5))
    out = tmp_path / "run"
    result = run(
        fake, concurrency=(1, 2), requests_per_level=4, max_seconds_per_level=1e6, out_dir=out
    )
    assert result.out_dir == out
    table = result.table()
    assert [row["concurrency"] for row in table] == [1, 2]
    assert {"requests_per_second", "p95_latency_s", "total_tokens_per_second"} <= set(table[0])
    text = result.to_text().splitlines()
    assert text[0].split()[:3] == ["concurrency", "requests", "errors"]
    assert len(text) == 3
    assert list(result.to_dataframe()["requests"]) == [4, 4]

    with (out / "samples.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and rows[0]["ok"] == "True"
    assert len(json.loads((out / "samples.json").read_text())) == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["endpoint"] == "ep" and summary["task"] == "llm/v1/completions"
    assert summary["payload"]["max_tokens"] == loadtest.DEFAULT_MAX_TOKENS
    assert len(summary["levels"]) == 2
    assert (out / "levels.csv").is_file()
    assert not list(out.glob(".*.tmp"))


def test_best_level_respects_latency_target(script):
    # Concurrency 1: 1 s per request; concurrency 4: 4 s per request of fake time (the
    # shared clock sums them) -> higher throughput is not reachable under a 2 s p95.
    fake = script(constant(1.0))
    result = run(fake, concurrency=(1, 4), requests_per_level=4, max_seconds_per_level=1e6)
    assert result.best_level(p95_latency_target_s=2.0).concurrency == 1
    assert result.best_level(p95_latency_target_s=0.5) is None


# --------------------------------------------------------------------------- real SDK


def _completion_answer(task, body):
    return {
        "object": "text_completion",
        "choices": [{"index": 0, "text": "ok"}],
        "usage": {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10},
    }


@pytest.fixture
def served(local_client):
    """The local workspace's real app with two completions endpoints: ``ok``, and
    ``throttled`` whose AI Gateway allows 0 calls a minute (every query answers 429).
    Returns (client, worker class recording bodies, log of HTTP requests)."""
    import fakes

    worker = fakes.recording_worker(_completion_answer)
    logs: list = []

    def wrap(app):
        logs.append(fakes.RequestLog(app))
        return logs[-1]

    w = local_client(worker, fakes.Catalog(), wrap=wrap)
    fakes.create_endpoints(w, {"ok": "main.default.ok", "throttled": "main.default.throttled"})
    limit = {"calls": 0, "renewal_period": "minute"}
    w.api_client.do(
        "PUT", "/api/2.0/serving-endpoints/throttled/ai-gateway", body={"rate_limits": [limit]}
    )
    return w, worker, logs[0]


def test_real_sdk_client_records_usage_and_throttling(served):
    w, worker, log = served
    ok = run_load_test(
        w, "ok", task="completions", concurrency=(1, 2), requests_per_level=3,
        prompt="Hi", max_tokens=4, progress=False,
    )  # fmt: skip
    assert [lv.requests for lv in ok.levels] == [3, 3]
    assert ok.levels[0].errors == 0
    assert {s.total_tokens for s in ok.samples} == {10}
    first = next(r for r in log.requests if r[1].endswith("/invocations"))
    assert first[1] == "/serving-endpoints/ok/invocations"
    assert worker.bodies[0] == ("ok", {"prompt": "Hi", "max_tokens": 4})
    assert first[2] == f"Bearer {w.config.token}"

    throttled = run_load_test(
        w, "throttled", task="completions", concurrency=(1,), requests_per_level=1, progress=False
    )
    (sample,) = throttled.samples
    assert not sample.ok
    assert sample.status_code == 429
    assert sample.error_type == "RequestLimitExceeded"
    assert throttled.all_failed
    # Sent once: the load-test client does not retry (the SDK's default client would
    # retry it for 300 s).
    throttled_posts = [r for r in log.requests if "throttled/invocations" in r[1]]
    assert len(throttled_posts) == 1
    # The caller's client keeps the SDK's own retry settings.
    assert w.config.retry_timeout_seconds is None


def test_load_test_client_copy_does_not_retry_and_has_a_large_pool(served):
    w, _, _ = served
    copy = loadtest._load_test_client(w, max_concurrency=64)
    assert copy is not w
    assert copy.config.retry_timeout_seconds == 1
    assert copy.config.max_connection_pools == copy.config.max_connections_per_pool == 64
    assert copy.config.host == w.config.host
    assert isinstance(copy.config.clock, loadtest._NoRetryWaitClock)
    assert not isinstance(w.config.clock, loadtest._NoRetryWaitClock)
    assert w.config.retry_timeout_seconds is None and w.config.max_connection_pools is None
    other = object()  # a client it cannot copy (not a WorkspaceClient) is used as it is
    assert loadtest._load_test_client(other, 8) is other


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptdeploy loadtest")
    cli.configure_loadtest_parser(parser)
    return parser


def test_cli_defaults():
    args = _parser().parse_args(["ep"])
    assert args.concurrency == (1, 2, 4, 8)
    assert args.requests_per_level == 20 and args.max_seconds_per_level == 30
    assert args.task is None and args.target == "local"
    args = _parser().parse_args(["ep", "--concurrency", "2, 4", "--task", "chat"])
    assert args.concurrency == (2, 4) and args.task is Task.CHAT


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--concurrency", "1,x"], "--concurrency"),
        (["--concurrency", "0,2"], "--concurrency"),
        (["--concurrency", "2,2"], "--concurrency"),
        (["--requests-per-level", "0"], "--requests-per-level"),
        (["--max-seconds-per-level", "-1"], "--max-seconds-per-level"),
        (["--task", "translation"], "--task"),
        (["--max-tokens", "many"], "--max-tokens"),
        (["--temperature", "5"], "--temperature"),
        (["--target", "aws"], "--target"),
    ],
)
def test_cli_rejects_invalid_arguments(argv, option, capsys):
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["ep", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and repr(argv[1]) in err


def test_cli_profile_is_for_databricks_only(script, capsys):
    args = _parser().parse_args(["ep", "--profile", "prod"])
    assert cli.run_loadtest(args, client=script(constant(0.1)).w) == 2
    assert "--profile" in capsys.readouterr().err


def test_cli_run_prints_table_writes_results_and_plots(script, tmp_path, capsys):
    out = tmp_path / "out"
    args = _parser().parse_args(
        ["ep", "--task", "completions", "--concurrency", "1,2", "--requests-per-level", "2",
         "--out", str(out), "--no-progress"]
    )  # fmt: skip
    fake = script(lambda n, body: (0.0, completion()))
    assert cli.run_loadtest(args, client=fake.w) == 0
    printed = capsys.readouterr().out
    assert "concurrency" in printed and "p95 s" in printed and str(out) in printed
    for name in ("samples.csv", "summary.json", "latency_vs_concurrency.png"):
        assert (out / name).is_file()


def test_cli_exits_non_zero_when_every_request_failed(script, tmp_path, capsys):
    args = _parser().parse_args(
        ["nope", "--task", "chat", "--concurrency", "1", "--requests-per-level", "2",
         "--out", str(tmp_path), "--no-progress", "--no-plots"]
    )  # fmt: skip
    assert cli.run_loadtest(args, client=script(constant(0.1)).w) == 1  # no such endpoint
    err = capsys.readouterr().err
    assert "every request failed" in err and "2 x ResourceDoesNotExist (404)" in err


def test_cli_reports_an_endpoint_whose_task_cannot_be_read(script, tmp_path, capsys):
    args = _parser().parse_args(["nope", "--out", str(tmp_path), "--no-progress"])
    assert cli.run_loadtest(args, client=script(constant(0.1)).w) == 2
    assert "detect its task" in capsys.readouterr().err

"""Worker processes: loading, concurrent requests, batching, failures, stop.

Spawning a worker costs several seconds of imports on 2 cores, so the workers this
module needs are started together, once.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal

import pytest
from ptdeploy import state
from ptdeploy.errors import InvalidRequestError
from ptdeploy.workspace.worker import (
    FAILED,
    READY,
    STOPPED,
    EntityWorker,
    SparePool,
    WorkerConfig,
    WorkerError,
    WorkerNotReadyError,
    _exit_reason,
    _next_batch,
    expected_batch,
)

PROMPTS = [
    "The capital of France is",
    "A cat",
    "Provisioned throughput serving endpoints scale in chunks of tokens per second",
    "What is Apache Spark?",
    "hello",
    "A kitten rests on a rug.",
    "Stock prices fell sharply today.",
    "Databricks Model Serving runs foundation models",
]
LOAD_TIMEOUT = 180
pytestmark = pytest.mark.slow  # worker processes import torch (seconds each on 2 cores)


@pytest.fixture(scope="module")
def workers(registered_tiny_completions):
    name, version = registered_tiny_completions
    uri = state.tracking_uri()
    started = {
        # a generous wait so that concurrent test requests reliably share batches
        "good": EntityWorker("tiny-1", name, version, tracking_uri=uri, max_wait_ms=200),
        "missing": EntityWorker("tiny-999", name, "999", tracking_uri=uri),
        "doomed": EntityWorker("tiny-doomed", name, version, tracking_uri=uri),
    }
    for worker in started.values():
        worker.start()
    yield started
    for worker in started.values():
        worker.stop()


@pytest.fixture(scope="module")
def good(workers) -> EntityWorker:
    worker = workers["good"]
    assert worker.wait_ready(LOAD_TIMEOUT) == READY, worker.error
    return worker


def body(prompt: str, **kw) -> dict:
    return {"prompt": prompt, "temperature": 0, "max_tokens": 12, **kw}


def test_worker_loads_and_serves(good):
    assert good.state == READY and good.error is None
    assert good.task == "llm/v1/completions"
    resp = good.infer_blocking(body(PROMPTS[0], logprobs=1))
    assert resp["object"] == "text_completion" and resp["model"] == "tiny-1"
    assert resp["usage"]["completion_tokens"] <= 12
    stats = good.stats()
    assert stats["batch_invariant"] is True and stats["torch_threads"] >= 1


def test_concurrent_requests_are_batched_and_answer_as_alone(good):
    alone = [good.infer_blocking(body(p)) for p in PROMPTS]
    before = good.stats()

    async def concurrently():
        return await asyncio.gather(*(good.infer(body(p)) for p in PROMPTS))

    together = asyncio.run(concurrently())
    after = good.stats()
    assert [r["choices"] for r in together] == [r["choices"] for r in alone]
    assert after["responses"] - before["responses"] == len(PROMPTS)
    assert after["max_batch_size"] > 1, after["batch_sizes"]
    assert after["batches"] - before["batches"] < len(PROMPTS)


def test_a_short_request_is_not_held_back_by_a_long_one(good):
    """Continuous batching in the worker: the short request joins the running batch."""
    long_body = body(PROMPTS[0], max_tokens=200)
    short_body = body(PROMPTS[3], max_tokens=2)
    short_alone = good.infer_blocking(short_body)
    finished: list[str] = []

    async def both():
        async def one(name, b, delay):
            await asyncio.sleep(delay)
            resp = await good.infer(b)
            finished.append(name)
            return resp

        return await asyncio.gather(one("long", long_body, 0), one("short", short_body, 0.05))

    long_resp, short_resp = asyncio.run(both())
    assert finished == ["short", "long"]
    assert long_resp["usage"]["completion_tokens"] == 200
    assert short_resp["choices"] == short_alone["choices"]


def test_invalid_request_is_refused_before_the_worker(good):
    sent = good.stats()["requests"]

    async def bad():
        return await good.infer({"prompt": "x", "max_tokens": -1})

    with pytest.raises(InvalidRequestError) as err:
        asyncio.run(bad())
    assert err.value.field == "max_tokens"
    assert good.stats()["requests"] == sent  # never sent to the process
    assert good.infer_blocking(body("A cat"))["choices"][0]["finish_reason"] in ("stop", "length")


def test_error_inside_the_worker_fails_that_request_only(good):
    errors = good.stats()["errors"]
    too_long = "hello " * 600  # valid JSON, but longer than the model's 512-token context
    with pytest.raises(InvalidRequestError) as err:
        good.infer_blocking(body(too_long))
    assert "context length" in str(err.value)
    assert good.stats()["errors"] == errors + 1
    assert good.state == READY
    assert good.infer_blocking(body("hello"))["usage"]["prompt_tokens"] > 0


def test_unknown_model_version_fails_with_a_message_naming_it(workers, registered_tiny_completions):
    missing = workers["missing"]
    assert missing.wait_ready(LOAD_TIMEOUT) == FAILED
    name, _ = registered_tiny_completions
    assert f"{name} version 999" in missing.error
    assert "Registered versions" in missing.error
    assert missing.task is None
    with pytest.raises(WorkerNotReadyError, match="failed"):
        missing.infer_blocking(body("x"))


def test_process_death_fails_the_worker_and_its_pending_requests(workers):
    doomed = workers["doomed"]
    assert doomed.wait_ready(LOAD_TIMEOUT) == READY, doomed.error

    async def killed_mid_request():
        # 16 sampled rows of up to 480 tokens: seconds of work, killed after a moment
        long = {"prompt": PROMPTS[0], "temperature": 1.0, "max_tokens": 480, "n": 16}
        task = asyncio.ensure_future(doomed.infer(long))
        await asyncio.sleep(0.3)
        os.kill(doomed.pid, signal.SIGKILL)
        return await asyncio.wait_for(task, 30)

    with pytest.raises(WorkerError, match="SIGKILL"):
        asyncio.run(killed_mid_request())
    assert doomed.wait_ready(5) == FAILED
    assert "killed by SIGKILL" in doomed.error and "tiny" in doomed.error
    with pytest.raises(WorkerNotReadyError):
        doomed.infer_blocking(body("x"))


def test_stop(workers):
    worker = workers["good"]
    worker.stop()
    assert worker.state == STOPPED
    assert not worker._process.is_alive()
    with pytest.raises(WorkerNotReadyError, match="STOPPED"):
        worker.infer_blocking(body("x"))
    worker.stop()  # twice is fine


# ------------------------------------------------------------------ batching policy


def config(**kw) -> WorkerConfig:
    base = {
        "entity_name": "e",
        "model_name": "m",
        "model_version": "1",
        "tracking_uri": "sqlite://",
        "batching": True,
        "max_batch_size": 3,
        "max_wait_ms": 1000.0,
        "torch_threads": 1,
    }
    return WorkerConfig(**{**base, **kw})


def inbox_with(*ids: int) -> queue.Queue:
    inbox: queue.Queue = queue.Queue()
    for i in ids:
        inbox.put(("infer", i, f"request {i}"))
    return inbox


def test_batches_are_fifo_and_bounded():
    inbox = inbox_with(1, 2, 3, 4, 5)
    assert _next_batch(inbox, config()) == (
        [(1, "request 1"), (2, "request 2"), (3, "request 3")],
        False,
    )
    # fewer than max_batch_size waiting: the batch closes when the wait window ends
    assert _next_batch(inbox, config(max_wait_ms=50)) == (
        [(4, "request 4"), (5, "request 5")],
        False,
    )


class WatchedInbox(queue.Queue):
    """An inbox that records how long each ``get`` was allowed to wait."""

    def __init__(self, *ids: int) -> None:
        super().__init__()
        self.timeouts: list[float] = []
        for i in ids:
            self.put(("infer", i, f"request {i}"))

    def get(self, block=True, timeout=None):
        if timeout is not None:
            self.timeouts.append(timeout)
        return super().get(block, timeout)


def test_lone_client_does_not_wait_for_a_batch_to_fill():
    """A lone client (expected 1) pays no batching delay; what is queued still joins."""
    inbox = WatchedInbox(1, 2)
    batch, _ = _next_batch(inbox, config(max_wait_ms=10_000), expected=1)
    assert batch == [(1, "request 1"), (2, "request 2")]  # what was queued joined
    assert inbox.timeouts == []  # and nothing waited


def test_batch_waits_only_for_the_requests_it_expects():
    inbox = WatchedInbox(1, 2)
    # expects 2, has 2: takes them and waits for nothing more (max_batch_size is 3): the
    # one get with a timeout is the second request's, already queued
    assert _next_batch(inbox, config(max_wait_ms=10_000), expected=2)[0] == [
        (1, "request 1"),
        (2, "request 2"),
    ]
    assert len(inbox.timeouts) == 1
    inbox.timeouts.clear()
    # expects 3, has 1: waits, within the window, for the others
    inbox.put(("infer", 3, "request 3"))
    batch, _ = _next_batch(inbox, config(max_wait_ms=1), expected=3)
    assert batch == [(3, "request 3")]
    assert inbox.timeouts and all(0 < t <= 0.001 for t in inbox.timeouts)


def test_expected_batch_is_what_was_answered_plus_what_queued():
    assert expected_batch(answered=1, queued=0, max_batch_size=8) == 1  # a lone client
    assert expected_batch(answered=4, queued=4, max_batch_size=8) == 8  # two half batches
    assert expected_batch(answered=8, queued=5, max_batch_size=8) == 8
    assert expected_batch(answered=0, queued=0, max_batch_size=8) == 1


def test_batching_off_serves_one_at_a_time():
    inbox = inbox_with(1, 2)
    assert _next_batch(inbox, config(batching=False)) == ([(1, "request 1")], False)
    assert _next_batch(inbox, config(batching=False)) == ([(2, "request 2")], False)


def test_stop_message_ends_after_the_batch():
    inbox = inbox_with(1)
    inbox.put(("stop",))
    assert _next_batch(inbox, config()) == ([(1, "request 1")], True)
    empty: queue.Queue = queue.Queue()
    empty.put(None)  # the server went away
    assert _next_batch(empty, config()) == ([], True)


def test_exit_reasons():
    assert _exit_reason(-signal.SIGKILL) == "was killed by SIGKILL (out of memory?)"
    assert _exit_reason(1) == "exited with code 1"
    assert _exit_reason(None) == "stopped answering"


def test_constructor_checks():
    with pytest.raises(ValueError, match="max_batch_size"):
        EntityWorker("e", "m", "1", tracking_uri="sqlite://", max_batch_size=0)
    worker = EntityWorker("e", "m", "1", tracking_uri="sqlite://")
    assert worker.state == "LOADING" and worker.task is None and worker.error is None


@pytest.mark.slow  # two more processes importing torch
def test_a_spare_process_takes_the_model_and_is_replaced_once_it_is_ready(
    registered_tiny_completions,
):
    """The local workspace's spare: imports done ahead, it becomes the worker."""
    name, version = registered_tiny_completions
    pool = SparePool(1)
    worker = EntityWorker(
        "tiny-spare", name, version, tracking_uri=state.tracking_uri(), spares=pool
    )
    try:
        spare_pid = pool._spares[0][0].pid
        worker.start()
        assert worker.pid == spare_pid and not pool._spares  # taken, not spawned
        assert worker.wait_ready(LOAD_TIMEOUT) == READY, worker.error
        assert [p.pid for p, _ in pool._spares] != [spare_pid] and len(pool._spares) == 1
        assert worker.infer_blocking(body(PROMPTS[0]))["choices"][0]["text"]
    finally:
        worker.stop()
        pool.close()
    assert not pool._spares

"""Streamed load tests: time to first token and inter-token latency, through databricks-sdk.

The local workspace's app runs in-process with a worker that streams its answer in
pieces at a known pace, so the measured times can be checked against it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import fakes
import pytest
from databricks.sdk import WorkspaceClient
from ptdeploy.capacity import loadtest, plots
from ptdeploy.errors import ParameterError

FIRST_DELAY, GAP, PIECES = 0.15, 0.05, 5


class PacedWorker(fakes.ReadyWorker):
    """A chat worker: the first piece after FIRST_DELAY, then one every GAP seconds."""

    async def infer(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._answer()

    async def stream(self, body: dict[str, Any]):
        await asyncio.sleep(FIRST_DELAY)
        for i in range(PIECES):
            if i:
                await asyncio.sleep(GAP)
            yield (0, f"w{i} ")
        yield self._answer()

    def _answer(self) -> dict[str, Any]:
        return {
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "w0 w1 w2 w3 w4 "},
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 4, "completion_tokens": PIECES, "total_tokens": 9},
        }


@pytest.fixture()
def w(local_client) -> WorkspaceClient:
    client = local_client(PacedWorker, fakes.Catalog(task_of=lambda name: "llm/v1/chat"))
    entity = {"entity_name": "main.default.chat", "entity_version": "1"}
    entity |= {"min_provisioned_throughput": 0, "max_provisioned_throughput": 20}
    client.api_client.do(
        "POST",
        "/api/2.0/serving-endpoints",
        body={"name": "chat", "config": {"served_entities": [entity]}},
    )
    for _ in range(200):
        if client.serving_endpoints.get("chat").state.ready.value == "READY":
            break
        asyncio.run(asyncio.sleep(0.05))
    return client


def test_streamed_load_test_records_time_to_first_token_and_inter_token_latency(w, tmp_path):
    result = loadtest.run_load_test(
        w, "chat", concurrency=(1, 2), requests_per_level=4, stream=True, progress=False,
        out_dir=tmp_path,
    )  # fmt: skip
    assert result.streamed and not result.all_failed
    for level in result.levels:
        # the first piece leaves after FIRST_DELAY; whole answers take 4 gaps more
        assert FIRST_DELAY <= level.p50_time_to_first_token_s < level.p50_latency_s
        assert GAP * 0.8 <= level.mean_inter_token_latency_s < GAP * 4
        assert level.total_tokens_per_second > 0  # usage from the last chunk
    text = result.to_text()
    assert "p50 ttft s" in text and "itl ms" in text
    assert "time_to_first_token_s" in (tmp_path / "samples.csv").read_text().splitlines()[0]
    assert "p95_time_to_first_token_s" in (tmp_path / "levels.csv").read_text()
    figs = plots.plot_load_test(result, out_dir=tmp_path / "plots")
    assert set(figs) == {"latency", "throughput", "streaming"}
    assert (tmp_path / "plots" / plots.STREAMING_PNG).stat().st_size > 0


def test_unstreamed_load_test_has_no_streaming_columns(w):
    result = loadtest.run_load_test(
        w, "chat", concurrency=(1,), requests_per_level=2, progress=False
    )
    assert not result.streamed and "ttft" not in result.to_text()
    assert result.levels[0].p50_time_to_first_token_s is None


def test_stream_must_be_a_boolean(w):
    with pytest.raises(ParameterError, match="^stream: got 'yes'"):
        loadtest.run_load_test(w, "chat", stream="yes", progress=False)

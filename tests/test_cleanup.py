"""ptdeploy cleanup: only the endpoints ptdeploy created, dry run first, nothing else touched.

Driven through databricks-sdk against the local workspace's real app (in-process on a
loopback port, with a worker that is ready at once), as a user's code would be.
"""

from __future__ import annotations

import argparse

import fakes
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.service.serving import EndpointCoreConfigInput, ServedEntityInput
from ptdeploy import cli
from ptdeploy.serving import cleanup, endpoints
from ptdeploy.serving.throughput import ThroughputPlan

MODEL = "main.default.tiny"
CHUNK = fakes.CHUNK


@pytest.fixture()
def w(local_client):
    return local_client(fakes.ReadyWorker, fakes.Catalog(models={(MODEL, "1")}))


def deploy(w: WorkspaceClient, name: str) -> None:
    spec = endpoints.EndpointSpec(
        name=name,
        entity_name=MODEL,
        entity_version="1",
        plan=ThroughputPlan(0, CHUNK, CHUNK, scale_to_zero_enabled=True),
    )
    endpoints.create_or_update(w, spec, timeout=30, progress=False, poll_interval=0.05)


def created_by_hand(w: WorkspaceClient, name: str) -> None:
    entity = ServedEntityInput(
        entity_name=MODEL, entity_version="1", min_provisioned_throughput=0,
        max_provisioned_throughput=CHUNK,
    )  # fmt: skip
    w.serving_endpoints.create(
        name, config=EndpointCoreConfigInput(name=name, served_entities=[entity])
    )


def args(**kw) -> argparse.Namespace:
    base = {"target": "local", "profile": None, "match": None, "delete": False, "yes": False}
    return argparse.Namespace(**(base | kw))


def test_only_what_ptdeploy_created_is_listed_and_a_dry_run_deletes_nothing(w, capsys):
    deploy(w, "llama-a")
    deploy(w, "llama-b")
    created_by_hand(w, "someone-elses")
    assert [e.name for e in cleanup.managed_endpoints(w)] == ["llama-a", "llama-b"]
    assert [e.name for e in cleanup.managed_endpoints(w, "*-b")] == ["llama-b"]
    assert cli.run_cleanup(args(), client=w) == 0
    out = capsys.readouterr().out
    assert "Would delete (dry run; add --delete) 2 endpoint(s)" in out and "llama-a" in out
    assert "someone-elses" not in out
    assert len(list(w.serving_endpoints.list())) == 3  # nothing deleted


def test_delete_with_yes_removes_them_and_leaves_the_rest(w, capsys):
    deploy(w, "llama-a")
    created_by_hand(w, "someone-elses")
    assert cli.run_cleanup(args(delete=True, yes=True), client=w) == 0
    assert "deleted llama-a" in capsys.readouterr().out
    assert [e.name for e in w.serving_endpoints.list()] == ["someone-elses"]


def test_a_filter_that_matches_nothing_is_an_error_and_changes_nothing(w, capsys):
    deploy(w, "llama-a")
    assert cli.run_cleanup(args(match="gte-*", delete=True, yes=True), client=w) == 2
    assert "no serving endpoint created by ptdeploy matching 'gte-*'" in capsys.readouterr().err
    assert [e.name for e in w.serving_endpoints.list()] == ["llama-a"]


def test_declining_the_confirmation_deletes_nothing(w, capsys, monkeypatch):
    deploy(w, "llama-a")
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    assert cli.run_cleanup(args(delete=True), client=w, ask=lambda _: "n") == 1
    assert "Nothing deleted" in capsys.readouterr().out
    assert [e.name for e in w.serving_endpoints.list()] == ["llama-a"]

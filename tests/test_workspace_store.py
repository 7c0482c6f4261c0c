"""Endpoint records on disk: round trip, atomic writes, nothing half-written."""

from __future__ import annotations

import json
import os

import pytest
from ptdeploy.workspace import store as st


def _record(name: str = "ep") -> st.EndpointRecord:
    entity = st.ServedEntity(
        name="tiny-1",
        entity_name="main.default.tiny",
        entity_version="1",
        task="llm/v1/completions",
        min_provisioned_throughput=0,
        max_provisioned_throughput=20,
    )
    cfg = st.EndpointConfig([entity], [st.Route("tiny-1", 100)], config_version=1, start_time=5)
    return st.EndpointRecord(
        name=name,
        id="abc",
        creator="me@localhost",
        creation_timestamp=1,
        last_updated_timestamp=2,
        config=cfg,
        pending_config=None,
        tags=[{"key": "team", "value": "ml"}],
        ai_gateway={"usage_tracking_config": {"enabled": True}},
    )


def test_round_trip_keeps_every_field(tmp_path):
    store = st.EndpointStore(tmp_path)
    rec = _record()
    store.put(rec)
    assert store.get("ep") == rec
    assert st.EndpointStore(tmp_path).load_all() == [rec]  # a new store (a restart) sees it
    assert rec.task == "llm/v1/completions"


def test_put_replaces_atomically_and_leaves_no_temp_file(tmp_path):
    store = st.EndpointStore(tmp_path)
    store.put(_record())
    changed = _record()
    changed.config_update = st.UPDATE_FAILED
    store.put(changed)
    assert store.get("ep").config_update == st.UPDATE_FAILED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep.json"]


def test_failed_write_keeps_the_previous_record(tmp_path, monkeypatch):
    store = st.EndpointStore(tmp_path)
    store.put(_record())

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    changed = _record()
    changed.tags = []
    with pytest.raises(st.StoreError, match="No space left"):
        store.put(changed)
    monkeypatch.undo()
    assert store.get("ep").tags == [{"key": "team", "value": "ml"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep.json"]


def test_unreadable_file_is_skipped_not_fatal(tmp_path):
    store = st.EndpointStore(tmp_path)
    store.put(_record("good"))
    (tmp_path / "bad.json").write_text("{not json")
    assert [r.name for r in store.load_all()] == ["good"]


def test_delete_and_unsafe_names(tmp_path):
    store = st.EndpointStore(tmp_path)
    store.put(_record())
    assert store.delete("ep") is True
    assert store.delete("ep") is False
    assert store.get("ep") is None
    with pytest.raises(st.StoreError):
        store.get("../etc/passwd")


def test_unknown_keys_from_a_newer_version_are_ignored(tmp_path):
    store = st.EndpointStore(tmp_path)
    data = _record().to_dict()
    data["future_field"] = 1
    data["config"]["served_entities"][0]["future_entity_field"] = "x"
    (tmp_path / "ep.json").write_text(json.dumps(data))
    assert store.get("ep") == _record()

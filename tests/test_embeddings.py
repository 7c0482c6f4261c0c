"""The embedding templates' shared steps, through databricks-sdk against the local
workspace's real app (in-process, ``tests/fakes.py``) with a scripted embeddings worker.

The real model through the real local endpoint is exercised by the notebook runs in
tests/test_notebooks.py (including the MiniLM quality assertion).
"""

from __future__ import annotations

import math

import fakes
import pytest
from ptdeploy.errors import QueryError
from ptdeploy.templates import embeddings

# A GTE-like endpoint: vectors far from unit length, paraphrases pointing alike.
VECTORS = {
    "a cat sits on the mat": [9.0, 1.0, 0.0],
    "a kitten rests on a rug": [8.0, 2.0, 0.5],
    "stock prices fell sharply": [0.5, 0.0, 7.0],
    "the stock market dropped today": [1.0, 0.5, 6.0],
    "zero": [0.0, 0.0, 0.0],
}


def gte(task, body):
    data = [
        {"object": "embedding", "index": i, "embedding": VECTORS[text]}
        for i, text in enumerate(body["input"])
    ]
    return {
        "object": "list",
        "model": "gte",
        "data": data,
        "usage": {"prompt_tokens": 3 * len(data), "total_tokens": 3 * len(data)},
    }


@pytest.fixture(scope="module")
def worker():
    return fakes.recording_worker(gte)


@pytest.fixture
def api(worker):
    """What the endpoint's worker was sent in this test: ``[(endpoint, body), ...]``."""
    worker.bodies.clear()
    return worker


@pytest.fixture(scope="module")
def w(module_local_client, worker):
    client = module_local_client(worker, fakes.Catalog(task_of=lambda _: "llm/v1/embeddings"))
    fakes.create_endpoints(client, {"gte": "main.default.gte"})
    return client


SENTENCES = list(VECTORS)[:4]


def test_one_request_for_the_batch_and_norms_as_served(w, api):
    check = embeddings.query_sample(w, "gte", SENTENCES, normalize=False)
    assert api.bodies == [("gte", {"input": SENTENCES})]
    assert check.served_norms[0] == pytest.approx(math.sqrt(82))
    assert not check.served_normalized
    assert check.vectors[0] == VECTORS["a cat sits on the mat"]
    assert any("not unit length" in note for note in check.notes)
    assert "NOT unit length" in check.report()


def test_normalize_gives_unit_vectors_and_keeps_similarities(w):
    raw = embeddings.query_sample(w, "gte", SENTENCES, normalize=False)
    unit = embeddings.query_sample(w, "gte", SENTENCES, normalize=True)
    assert all(n == pytest.approx(1.0) for n in embeddings.vector_norms(unit.vectors))
    assert unit.served_norms == raw.served_norms  # what the endpoint served is still reported
    for got, want in zip(unit.table.matrix, raw.table.matrix, strict=True):
        assert got == pytest.approx(want)  # cosine ignores the norm
    dot = sum(x * y for x, y in zip(unit.vectors[0], unit.vectors[1], strict=True))
    assert dot == pytest.approx(unit.table.matrix[0][1])  # dot product = cosine now
    assert not unit.notes
    assert "normalize=True" in unit.report()


def test_nearest_pairs_the_paraphrases_and_summary_is_plain(w):
    check = embeddings.query_sample(w, "gte", SENTENCES, normalize=True)
    assert check.nearest() == {
        "a cat sits on the mat": "a kitten rests on a rug",
        "a kitten rests on a rug": "a cat sits on the mat",
        "stock prices fell sharply": "the stock market dropped today",
        "the stock market dropped today": "stock prices fell sharply",
    }
    summary = check.summary()
    assert summary["embedding_dim"] == 3 and summary["sentences"] == SENTENCES
    assert summary["similarity_matrix"][0][0] == pytest.approx(1.0)
    assert summary["served_normalized"] is False and summary["normalized_client_side"] is True


def test_agreement_with_the_registered_model(w):
    reference = [[2 * x for x in VECTORS[s]] for s in SENTENCES]  # same directions
    check = embeddings.query_sample(w, "gte", SENTENCES, normalize=False, reference=reference)
    assert check.registry_agreement == pytest.approx(1.0)
    assert "cosine >= 1.000000" in check.report()
    off = [VECTORS[s] for s in SENTENCES[1:]] + [VECTORS[SENTENCES[0]]]
    assert embeddings.agreement([VECTORS[s] for s in SENTENCES], off) < 0.5


def test_agreement_refuses_mismatched_shapes():
    with pytest.raises(QueryError, match="one per sentence"):
        embeddings.agreement([[1.0]], [])
    with pytest.raises(QueryError, match="dimension 2 and 3"):
        embeddings.agreement([[1.0, 0.0]], [[1.0, 0.0, 0.0]])


def test_zero_vector_stays_zero():
    assert embeddings.unit_vectors([[0.0, 0.0], [3.0, 4.0]]) == [[0.0, 0.0], [0.6, 0.8]]
    assert math.isnan(embeddings.agreement([[0.0, 0.0]], [[1.0, 0.0]]))


def test_is_normalized_tolerates_rounding_only():
    assert embeddings.is_normalized([1.0, 0.99995, 1.0002])
    assert not embeddings.is_normalized([1.0, 0.9])
    assert not embeddings.is_normalized([])


def test_sample_sentences_hold_the_quality_triple():
    s = embeddings.SAMPLE_SENTENCES
    assert {"a cat sits on the mat", "a kitten rests on a rug", "stock prices fell sharply"} <= set(
        s
    )

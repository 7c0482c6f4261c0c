"""The embedding templates' shared steps (GTE, BGE, or any BERT-family encoder).

``gte_embeddings`` and ``bge_embeddings`` differ in parameters and prose only: both log
an encoder for ``llm/v1/embeddings`` with ``metadata={"model_type": ...}``, then call
the functions here to smoke-test what was registered and what the endpoint serves.

Normalization. GTE v1.5 returns embeddings that are *not* unit length (Databricks says so
in its provisioned-throughput page); BGE and all-MiniLM-L6-v2 ship a sentence-transformers
``Normalize`` step. Cosine similarity does not care, but a dot product is only a cosine
similarity on unit vectors, and vector indexes often assume one or the other. So the
sample query reports the norms the endpoint actually served, and ``normalize=True``
scales the vectors handed back to the caller to unit length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ptdeploy.errors import QueryError
from ptdeploy.llm_tasks import TASK_EMBEDDINGS
from ptdeploy.models import smoke
from ptdeploy.serving import query

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

    from ptdeploy.models.registry import RegisteredVersion

TASK = TASK_EMBEDDINGS

# Two pairs of paraphrases and one outlier: a working embedding model puts each sentence
# nearest to its paraphrase, which the similarity table makes visible at a glance.
SAMPLE_SENTENCES: tuple[str, ...] = (
    "a cat sits on the mat",
    "a kitten rests on a rug",
    "stock prices fell sharply",
    "the stock market dropped today",
    "Provisioned throughput serves foundation models with guaranteed performance.",
)
# A norm this close to 1 counts as normalized (float32 rounding, pooling arithmetic).
UNIT_TOLERANCE = 1e-3


def vector_norms(vectors: Sequence[Sequence[float]]) -> list[float]:
    """L2 norm of each vector."""
    return [math.sqrt(math.fsum(x * x for x in v)) for v in vectors]


def unit_vectors(vectors: Sequence[Sequence[float]]) -> list[list[float]]:
    """Each vector scaled to unit L2 norm (a zero vector has no direction: it stays zero)."""
    return [
        [x / n for x in v] if n > 0 else list(v)
        for v, n in zip(vectors, vector_norms(vectors), strict=True)
    ]


def is_normalized(norms: Sequence[float], tolerance: float = UNIT_TOLERANCE) -> bool:
    return bool(norms) and all(abs(n - 1.0) <= tolerance for n in norms)


@dataclass(frozen=True)
class EmbeddingCheck:
    """What one batch query of the endpoint showed."""

    sentences: list[str]
    vectors: list[list[float]]  # as handed to the caller: unit length when normalized
    served_norms: list[float]  # as the endpoint served them
    normalized: bool  # whether ``vectors`` were normalized here, client side
    table: query.SimilarityTable
    usage: query.Usage | None = None
    registry_agreement: float | None = None  # min cosine(endpoint, registry) per sentence
    notes: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return len(self.vectors[0])

    @property
    def served_normalized(self) -> bool:
        return is_normalized(self.served_norms)

    def nearest(self) -> dict[str, str]:
        """Each sentence's nearest other sentence (by cosine similarity)."""
        return {label: self.table.most_similar(i)[0] for i, label in enumerate(self.sentences)}

    def report(self) -> str:
        """A few lines for a notebook cell: dimension, norms, similarity table."""
        lo, hi = min(self.served_norms), max(self.served_norms)
        served = (
            "unit length (the model normalizes)"
            if self.served_normalized
            else f"NOT unit length (norms {lo:.3f} … {hi:.3f})"
        )
        lines = [
            f"{len(self.sentences)} embeddings of dimension {self.dim}; served vectors are {served}",
        ]
        if self.normalized:
            lines.append("normalize=True: the vectors returned here are unit length (dot = cosine)")
        if self.usage and self.usage.prompt_tokens is not None:
            lines.append(f"usage: {self.usage.prompt_tokens} input tokens")
        if self.registry_agreement is not None:
            lines.append(
                f"endpoint vs registered model: cosine >= {self.registry_agreement:.6f} per sentence"
            )
        lines.extend(self.notes)
        lines.append("")
        lines.append("cosine similarity:")
        lines.append(self.table.format())
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """Plain values for ``flow.finish``: tests and the next job task read them."""
        return {
            "embedding_dim": self.dim,
            "served_norms": [round(n, 6) for n in self.served_norms],
            "served_normalized": self.served_normalized,
            "normalized_client_side": self.normalized,
            "sentences": list(self.sentences),
            "similarity_matrix": [[round(x, 6) for x in row] for row in self.table.matrix],
            "nearest": self.nearest(),
            "registry_agreement": self.registry_agreement,
        }


def registry_vectors(
    model_uri: str, sentences: Sequence[str] = SAMPLE_SENTENCES
) -> list[list[float]]:
    """Embeddings of ``sentences`` by the registered model, loaded back in this process.

    Pooled and normalized as the model's sentence-transformers config says (recorded in the
    logged metadata): the reference the endpoint's answers are compared with.
    """
    return smoke.embed_from_registry(model_uri, list(sentences))


def agreement(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """The smallest cosine similarity between ``a[i]`` and ``b[i]``: 1.0 means identical
    directions for every sentence (the endpoint serves what was registered, pooled alike)."""
    if len(a) != len(b) or not a:
        raise QueryError(f"cannot compare {len(a)} with {len(b)} vectors: one per sentence.")
    if {len(v) for v in a} != {len(v) for v in b}:
        raise QueryError(
            f"vectors of dimension {len(a[0])} and {len(b[0])} cannot be compared: the "
            "endpoint does not serve the registered model."
        )
    worst = 1.0
    for u, v, nu, nv in zip(a, b, vector_norms(a), vector_norms(b), strict=True):
        if nu == 0 or nv == 0:
            return float("nan")
        worst = min(worst, math.fsum(x * y for x, y in zip(u, v, strict=True)) / (nu * nv))
    return worst


def query_sample(
    w: WorkspaceClient,
    endpoint: str,
    sentences: Sequence[str] = SAMPLE_SENTENCES,
    *,
    normalize: bool,
    reference: Sequence[Sequence[float]] | None = None,
) -> EmbeddingCheck:
    """Embed ``sentences`` in one request; report norms, similarities and, given the
    registered model's own vectors as ``reference``, how closely the endpoint agrees."""
    texts = list(sentences)
    served = query.embed(w, endpoint, texts, normalize=False)
    norms = vector_norms(served.vectors)
    vectors = unit_vectors(served.vectors) if normalize else served.vectors
    notes = []
    if not normalize and not is_normalized(norms):
        notes.append(
            "these vectors are not unit length: normalize them (normalize=True) before using "
            "dot products as cosine similarities"
        )
    return EmbeddingCheck(
        sentences=texts,
        vectors=vectors,
        served_norms=norms,
        normalized=normalize,
        table=query.cosine_similarity_table(texts, vectors),
        usage=served.usage,
        registry_agreement=agreement(served.vectors, reference) if reference is not None else None,
        notes=notes,
    )


# ------------------------------------------------------------- notebook steps (GTE, BGE)


def register_step(p: Any) -> tuple[RegisteredVersion, list[list[float]] | None]:
    """The register step of the GTE/BGE templates: load, log for ``llm/v1/embeddings`` with
    ``p.model_type``, register (challenger), and embed the sample sentences from the
    registry (the reference the endpoint's vectors are compared with). Outside this step:
    the version the register task handed over, and no reference."""
    from ptdeploy.templates import flow

    if not flow.runs(p, flow.REGISTER_TASK):
        return flow.registered_version(p), None
    loaded = flow.load(p)
    registered = flow.log_and_register(p, loaded, task=TASK, model_type=p.model_type)
    reference = registry_vectors(registered.model_uri)
    print(f"registry smoke test: {len(reference)} embeddings of dimension {len(reference[0])}")
    return registered, reference


def smoke_test_step(
    p: Any, w: WorkspaceClient, registered: RegisteredVersion, reference: Any = None
) -> EmbeddingCheck | None:
    """The smoke-test step: embed the sample sentences through the endpoint (compared with
    the registry's ``reference`` when there is one); promotion only if it passes."""
    from ptdeploy.templates import flow

    return flow.smoke_test_step(
        p,
        w,
        registered,
        lambda: query_sample(w, p.endpoint_name, normalize=p.normalize, reference=reference),
    )

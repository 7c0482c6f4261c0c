"""The local workspace's inference engine: a registered model, served as Databricks serves it.

Why not MLflow's ``transformers`` pyfunc: it ignores ``logprobs``, fails on ``n > 1``,
samples by default, returns un-pooled CLS embeddings and, when served, ignores
``max_tokens`` (see DESIGN.md). The engine loads the logged *components* (weights and
tokenizer, straight from the artifacts with ``from_pretrained``: 0.3 s for tiny-llama where
``mlflow.transformers.load_model`` takes 7 s) and runs its own generation loop.

What a request gets (and the choices made where the APIs leave room):

- ``temperature == 0``: greedy, exact and deterministic. ``temperature > 0``: sampling
  from the softmax of ``logits / temperature`` restricted by ``top_k`` and ``top_p``.
  The default temperature is Databricks' 1.0.
- ``max_tokens``: the maximum number of generated tokens. Absent: ``DEFAULT_MAX_TOKENS``
  (256), clamped to the context. Given and too large for the context: an error
  (completions with ``error_behavior="truncate"`` clamp instead).
- ``stop``: the text is cut before the first occurrence of any stop sequence and the
  choice finishes with ``stop``; so does the end-of-sequence token. Reaching
  ``max_tokens`` (or the context length) finishes with ``length``.
- ``usage``: ``prompt_tokens`` counts each prompt once (not once per choice), as the
  tokenizer encodes it for the model (special tokens and chat template included);
  ``completion_tokens`` counts every token the model generated for every choice, up to
  and including the one that completed a stop sequence or the end-of-sequence token.
  Tokens after a stop are never generated. ``total_tokens`` is their sum.
- ``logprobs``/``top_logprobs``: log-softmax of the model's *raw* logits (before
  temperature, top-k and top-p), for the tokens that make up the returned text (the
  end-of-sequence token and tokens lying wholly inside a cut stop sequence are left out).
- ``n``: n choices per prompt; with greedy decoding they are identical, so the engine
  generates once and copies (usage still counts n choices).
- Embeddings: inputs truncated to the model's maximum length, pooled as the logged
  ``metadata["pooling"]`` says (``{"mode": "cls"|"mean"|"max"|"mean_sqrt_len"|"lasttoken",
  "normalize": bool, "max_seq_length": int?}``, written by ptdeploy from the model's
  sentence-transformers config). Without it: CLS pooling, not normalized, which is
  what GTE and BGE use.

Batching. Requests are served together in one generation loop: per-row positions and
per-row settings (greedy and sampled rows, different ``max_tokens`` and ``stop`` mix in
one batch) and per-row stopping (a finished row leaves the batch and its KV cache).
Greedy results with batching are bitwise identical to unbatched ones on Llama-family
models, on any x86 CPU. That is not free on a CPU; three things break it and the engine
fixes each:

1. Matrix products are not batch-invariant: MKL's sgemm computes a row's dot products
   in a different order depending on the number of rows and the instruction set (AMD
   EPYC, AVX2, 1-2 threads: rows differ for M < 4 and M in 5-7, 9-11; Intel Xeon with
   AVX-512 differs again). No fixed rule holds on every processor, so the engine
   *measures* it when it loads (``calibrate_linear_rows``): for each linear shape of the
   model it finds the smallest row multiple (4, 8, 16, ... up to the largest decode
   batch) under which every row gets the same bits at every batch size and position,
   and pads each ``nn.Linear``'s rows to it. Where no multiple works, each row is
   multiplied on its own (``PER_ROW``): slower, invariant by construction. It also
   records, per shape, the row counts at which the plain product already gives the
   padded bits (no padding there: ``calibrate_unpadded_rows``). The weights are first
   prepacked for oneDNN (``pack_linear_weights``): MKL repacks the weight at every call,
   which made padded products 2-3x a one-row product, while the prepacked kernel is
   invariant at every row count on the AMD EPYC here; calibration measures it like any
   kernel and drops the packing if only one row at a time keeps it invariant. The
   results are kept per torch thread count (``Engine.linear_row_multiple``).
2. Prefill would multiply ``prompts x width`` rows at once, a size no single request
   has alone. Prompts admitted together share one prefill pass only up to the row count
   at which the calibrated linears were measured to give every row its bits alone
   (``calibrate_prefill_rows``, ``Engine.prefill_rows``; 512 here); beyond it, or when
   even the smallest size fails, each prompt is prefilled on its own, with exactly the
   shapes it has alone. The KV caches are joined (left-padded) for batched decoding.
3. Attention over a left-padded batch sums over masked keys and shifted positions,
   which rounds differently. The engine registers a row-wise attention
   (``ptdeploy_rowwise``): each row attends only to its own valid keys, with exactly
   the shapes it would have alone; rows of the same length share one SDPA call where
   SDPA was measured batch-invariant (``attention_rows_invariant``).

Greedy argmax over logits that differ in the 7th digit can pick another token, so this
is what makes "same request, same answer, whatever else is in the batch" true. The
engine checks it end to end when it loads (``Engine.batch_invariant``); a model family
where it does not hold is still served correctly, through the standard masked attention
and batched prefill.

Start-up. Those measurements cost SmolLM2-135M about 2 s per load on the 2-core machine
(linear rows 0.7 s, prefill rows 0.2 s, the end-to-end check 0.8 s), for answers that
depend only on the machine and the model's shapes. The first load on a machine measures
them; the results are kept in ``<state dir>/calibration/`` (``CalibrationCache``) under a
key naming everything they depend on (``calibration_key``: CPU model and flags, torch
version and build, CPU capability, kernel environment variables, this file's code,
thread count, batch rows, dtype, linear and attention shapes; for the end-to-end check
also the weights, ``weights_id``), so later loads read them back. Nothing is assumed
from another machine, thread count or torch: a different key is measured again.
``Engine.load_phases`` times each phase of a load; the worker logs them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptdeploy.errors import InvalidRequestError, ModelLoadError, version_list
from ptdeploy.llm_tasks import TASK_CHAT, TASK_COMPLETIONS, TASK_EMBEDDINGS, TASKS, logged_task
from ptdeploy.pooling import DEFAULT_POOLING, POOLING_MODES, pool
from ptdeploy.workspace.schemas import (
    DEFAULT_MAX_TOKENS,
    ChatRequest,
    Choice,
    CompletionRequest,
    EmbeddingRequest,
    Request,
    TokenLogprob,
    TopLogprob,
    Usage,
    chat_response,
    completion_response,
    embedding_response,
    parse_request,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ROWWISE_ATTENTION = "ptdeploy_rowwise"
# Families whose attention modules go through transformers' attention interface with the
# standard (module, query, key, value, mask, scaling) contract and no sliding window.
ROWWISE_MODEL_TYPES = ("llama",)
# Row multiples tried, smallest first, when calibrating the linear layers (see
# calibrate_linear_rows); PER_ROW: each row multiplied on its own.
LINEAR_ROW_CANDIDATES = (4, 8, 16)
PER_ROW = 0
# Row counts at which calibrate_prefill_rows checks one prefill pass of several prompts.
PREFILL_PROBE_SIZES = (24, 33, 64, 127, 256, 512)


# ------------------------------------------------------------------ throughput estimate

# Calibrated with this engine on the project's 2-core machine (float32): see
# estimate_tokens_per_second.
STEP_OVERHEAD_S = 0.004  # Python and kernel launches of one decode step (tiny-llama)
MEMORY_BANDWIDTH = 9.0e9  # bytes/s: a decode step reads every float32 weight once
CPU_FLOPS = 3.5e10  # sustained FLOP/s of skinny (8-row) matmuls on prepacked weights
ENCODER_FLOPS = 1.2e11  # sustained FLOP/s of an encoder's full-batch forward pass
DECODE_BATCH = 8


def estimate_tokens_per_second(parameter_count: int, kind: str = "causal-lm") -> int:
    """Tokens per second one local worker sustains: the local ``throughput_chunk_size``.

    On Databricks a chunk is what one unit of GPU capacity sustains for the model; the
    local unit is one worker process. This is a formula, not a measurement at request
    time, so ``get-model-optimization-info`` answers the same number every time
    (notebooks compute multiples of it):

    - causal LMs generate in batched decode steps of ``DECODE_BATCH`` sequences; a step
      reads every weight once (memory bound on a CPU) and computes ``2 * P`` FLOPs per
      sequence: ``tokens/s = B / (STEP_OVERHEAD_S + 4P / MEMORY_BANDWIDTH + B * 2P / CPU_FLOPS)``;
    - encoders (``kind="encoder"``) embed whole batches in one forward pass:
      ``tokens/s = ENCODER_FLOPS / 2P``.

    Calibration (this engine, one torch thread, CPU time so that other work on the
    2-core machine counts less; 2026-11-29, prepacked oneDNN linears): tiny-llama (0.14 M
    parameters) about 1,300 tokens/s at batch 8 (Python-bound, hence the overhead);
    SmolLM2-135M 64 tokens/s at batch 8 and 14 at batch 1 (the two points give the
    bandwidth and FLOP rate); all-MiniLM-L6-v2 (22.7 M) about 2,300-3,000 tokens/s at
    batch 8-32. The formula gives 1,937, 64 (14 at B=1) and 2,641. Before prepacked
    weights, the same machine gave SmolLM2 20-30 tokens/s at batch 8 (constants 0.003 s,
    4e9 B/s, 2e10 FLOP/s). The result is at least 1.
    """
    p = max(int(parameter_count), 1)
    if kind == "encoder":
        tps = ENCODER_FLOPS / (2.0 * p)
    else:
        step = STEP_OVERHEAD_S + 4.0 * p / MEMORY_BANDWIDTH + DECODE_BATCH * 2.0 * p / CPU_FLOPS
        tps = DECODE_BATCH / step
    return max(1, int(tps))


# ------------------------------------------------------------------ load phases


class LoadPhases:
    """Wall-clock seconds of each phase of loading an engine, in order (``Engine.load_phases``).

    The worker logs them in one line when it is READY, so start-up can be read phase by
    phase from the server log (``benchmarks/startup.py`` does).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started

    def describe(self) -> str:
        return ", ".join(f"{name} {s:.2f} s" for name, s in self.seconds.items())


# ------------------------------------------------------------------ batch invariance


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The matrix product every batch-invariant linear goes through (tests swap it).

    A weight packed by ``pack_linear_weights`` goes through oneDNN's prepacked kernel.
    """
    import torch.nn.functional as F

    packed = getattr(weight, "ptdeploy_packed", None)
    if packed is not None:
        return _packed_linear_op()(x, packed, bias, "none", [], "")
    return F.linear(x, weight, bias)


_OWN_LINEAR = _linear  # a swapped kernel (the tests' stand-in BLAS) is never cached


@functools.cache
def _packed_linear_op() -> Any:
    import torch

    return torch.ops.mkldnn._linear_pointwise.default


def pack_linear_weights(model: Any, max_rows: int) -> bool:
    """Give every linear weight a oneDNN prepacked twin (``weight.ptdeploy_packed``).

    Measured on the 2-core AMD EPYC (AVX2), one torch thread, SmolLM2-135M's shapes: MKL's
    sgemm repacks the weight at every call, so a row-padded product costs 2-3x a
    matrix-vector one (lm_head 22 ms against 9 ms for one row); oneDNN's kernel on a
    weight packed once costs 13 ms for one row and 24 ms for eight (MKL: 28), and gave
    every row the same bits at every row count from 1 to 16. Nothing is assumed from
    that: ``calibrate_linear_rows`` measures the packed kernel like any other, and the
    engine drops the packing if only ``PER_ROW`` keeps it invariant
    (``unpack_linear_weights``). The dense weights stay (tied embeddings read them): the packing costs one more copy of
    the linear weights in memory. False when this torch has no oneDNN or the dtype is
    not packable.
    """
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    try:
        for weight in _linear_weights(model):
            weight.ptdeploy_packed = torch.ops.mkldnn._reorder_linear_weight(
                weight.detach(), max_rows
            )
    except Exception as exc:  # an unsupported dtype or build: the dense kernels serve
        log.info("oneDNN weight packing not available: %s", exc)
        unpack_linear_weights(model)
        return False
    return True


def unpack_linear_weights(model: Any) -> None:
    for weight in _linear_weights(model):
        if hasattr(weight, "ptdeploy_packed"):
            del weight.ptdeploy_packed


def _linear_weights(model: Any) -> list[torch.Tensor]:
    import torch

    seen: dict[int, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            seen.setdefault(id(module.weight), module.weight)
    return list(seen.values())


def padded_linear(
    rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, multiple: int
) -> torch.Tensor:
    """``rows @ weight.T + bias`` with the rows padded to ``multiple`` (or one at a time)."""
    import torch

    rows = rows.contiguous()
    m = rows.shape[0]
    if multiple == PER_ROW:
        return torch.cat([_linear(rows[i : i + 1], weight, bias) for i in range(m)])
    pad = (-m) % multiple
    if not pad:
        return _linear(rows, weight, bias)
    out = _linear(torch.cat([rows, rows.new_zeros(pad, rows.shape[-1])]), weight, bias)
    return out[:m]


def _invariant_linear_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``nn.Linear.forward`` with rows padded to the calibrated multiple (module docstring),
    or not padded at the row counts where calibration found the same bits without it."""
    shape = x.shape
    if math.prod(shape[:-1]) in self.ptdeploy_unpadded:  # the kernels flatten leading dims
        return _linear(x, self.weight, self.bias)
    out = padded_linear(
        x.reshape(-1, shape[-1]), self.weight, self.bias, self.ptdeploy_row_multiple
    )
    return out.reshape(*shape[:-1], out.shape[-1])


def _rows_invariant(linear: Any, probe: torch.Tensor, max_rows: int, multiple: int) -> bool:
    """Does every row get the same bits alone and at every batch size up to ``max_rows``?

    Rows padded to ``multiple`` fall into a few padded sizes (``multiple``, twice that,
    ...); a row's result does not depend on the other rows' values, so one product per
    padded size, full of distinct rows, covers every batch size and every position.
    """
    import torch

    weight, bias = linear.weight, linear.bias
    alone = [padded_linear(probe[i : i + 1], weight, bias, multiple)[0] for i in range(max_rows)]
    for size in range(multiple, max_rows + multiple, multiple):
        together = padded_linear(probe[:size], weight, bias, multiple)
        if not all(torch.equal(together[i], alone[i]) for i in range(min(size, max_rows))):
            return False
    return True


def _unpadded_row_counts(
    linear: Any, probe: torch.Tensor, max_rows: int, multiple: int
) -> frozenset[int]:
    """The row counts at which the plain product gives every row its padded bits.

    Padding only costs: where ``m`` rows multiplied as they are give bitwise what each
    row gets padded to ``multiple`` (alone, so at every batch size), the padding is
    skipped. Multiples of ``multiple`` are such counts by definition.
    """
    import torch

    weight, bias = linear.weight, linear.bias
    alone = padded_linear(probe[:max_rows], weight, bias, multiple)  # invariant: as alone
    counts = set()
    for m in range(1, max_rows + 1):
        if (
            multiple != PER_ROW
            and m % multiple == 0
            or torch.equal(_linear(probe[:m], weight, bias), alone[:m])
        ):
            counts.add(m)
    return frozenset(counts)


def _linear_groups(model: Any) -> dict[tuple[int, int, bool], list[Any]]:
    """The model's linear modules by (in, out, bias) shape: kernels depend on the shape only."""
    import torch

    groups: dict[tuple[int, int, bool], list[Any]] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            key = (module.in_features, module.out_features, module.bias is not None)
            groups.setdefault(key, []).append(module)
    return groups


def _named_linear_groups(model: Any) -> dict[str, list[Any]]:
    return {_shape_name(shape): group for shape, group in _linear_groups(model).items()}


def _probe(module: Any, rows: int, generator: torch.Generator) -> torch.Tensor:
    import torch

    return torch.randn(rows, module.in_features, generator=generator, dtype=module.weight.dtype)


def calibrate_linear_rows(model: Any, max_rows: int) -> int:
    """The smallest row multiple under which the model's linears are batch-invariant here.

    Measured on this CPU, with torch's current thread count, for one linear of each
    (in, out, bias) shape in the model: a candidate of ``LINEAR_ROW_CANDIDATES`` (or
    ``max_rows`` itself, which gives every decode step one shape) is kept when each of
    ``max_rows`` distinct rows gets bitwise the same output alone and at every batch
    size and position. ``PER_ROW`` when none is: each row multiplied on its own.
    """
    import torch

    shapes = {key: group[0] for key, group in _linear_groups(model).items()}
    max_rows = max(1, int(max_rows))
    candidates = sorted({c for c in LINEAR_ROW_CANDIDATES if c < max_rows} | {max_rows})
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        # the largest padded size any candidate reaches
        probes = {
            key: _probe(module, max_rows + candidates[-1], generator)
            for key, module in shapes.items()
        }
        for multiple in candidates:
            if all(
                _rows_invariant(module, probes[key], max_rows, multiple)
                for key, module in shapes.items()
            ):
                return multiple
    return PER_ROW


def calibrate_unpadded_rows(model: Any, max_rows: int, multiple: int) -> None:
    """Measure, per linear shape, the row counts that need no padding (``_unpadded_row_counts``).

    Kept on each module per (torch threads, multiple); ``set_linear_row_multiple`` applies it.
    """
    import torch

    key = (torch.get_num_threads(), multiple)
    max_rows = max(1, int(max_rows))
    generator = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        for group in _linear_groups(model).values():
            counts = _unpadded_row_counts(
                group[0], _probe(group[0], max_rows, generator), max_rows, multiple
            )
            keep_unpadded_rows(group, key, counts)


def keep_unpadded_rows(
    modules: Sequence[Any], key: tuple[int, int], counts: frozenset[int]
) -> None:
    """Record on each module the row counts that need no padding for ``key`` (torch
    threads, row multiple): measured (``calibrate_unpadded_rows``) or read back from the
    calibration cache; ``set_linear_row_multiple`` applies them."""
    for module in modules:
        module.__dict__.setdefault("ptdeploy_unpadded_by", {})[key] = counts


def calibrate_prefill_rows(model: Any, max_rows: int) -> int:
    """Up to how many rows one prefill pass may multiply and still give each row its bits alone.

    Prefilling several prompts in one pass multiplies ``prompts x longest`` rows at once
    through every linear but the output layer (which sees one row per prompt). Measured
    with the modules' own (calibrated) forward, for each shape: at each size of
    ``PREFILL_PROBE_SIZES`` the first and last rows of the product must equal the same
    rows multiplied alone; the result is the largest size before the first that fails
    (0 when even the smallest does: one prompt per pass, the shapes it has alone).
    """
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    shapes = [g[0] for g in _linear_groups(model).values() if all(m is not output for m in g)]
    generator = torch.Generator().manual_seed(3)
    limit = 0
    with torch.inference_mode():
        for size in sorted(s for s in PREFILL_PROBE_SIZES if s > max_rows):
            for module in shapes:
                probe = _probe(module, size, generator)
                together = module(probe)
                for i in (*range(min(4, size)), *range(max(4, size - 4), size)):
                    if not torch.equal(together[i], module(probe[i : i + 1])[0]):
                        return limit
            limit = size
    return limit


def _rowwise_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention where each row sees only its own keys, with the shapes it has alone.

    ``ptdeploy_kv_start`` (passed by the engine through the model's forward kwargs) is
    each row's number of left-padding positions. Without it (the model used outside
    the engine) this is plain SDPA with transformers' mask.
    """
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    starts = kwargs.pop("ptdeploy_kv_start", None)
    if starts is None:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    batch, heads, q_len, head_dim = query.shape
    kv_len = key.shape[2]
    if q_len not in (1, kv_len):
        raise NotImplementedError("row-wise attention serves full prefill and 1-token decode")
    groups = getattr(module, "num_key_value_groups", 1)
    if batch == 1 and starts[0] == 0:  # one row, no padding: what the loop does, without it
        if groups > 1:
            key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        o = F.scaled_dot_product_attention(
            query.contiguous(),
            key.contiguous(),
            value.contiguous(),
            is_causal=q_len > 1,
            scale=scaling,
        )
        return o.transpose(1, 2).contiguous(), None
    import torch

    out = query.new_zeros(batch, q_len, heads, head_dim)
    row_groups = kwargs.pop("ptdeploy_row_groups", None) or [[b] for b in range(batch)]
    for rows in row_groups:  # rows of one group have the same padding, so the same shapes
        start = starts[rows[0]]
        if rows == list(range(rows[0], rows[-1] + 1)):
            sel: Any = slice(rows[0], rows[-1] + 1)
        else:
            sel = torch.tensor(rows, dtype=torch.long)
        k, v = key[sel, :, start:, :], value[sel, :, start:, :]
        if groups > 1:
            k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        if q_len == 1:  # decode: the new token attends to every valid key
            q = query[sel].contiguous()
            o = F.scaled_dot_product_attention(q, k.contiguous(), v.contiguous(), scale=scaling)
            out[sel] = o.transpose(1, 2)
        else:  # prefill: valid queries, causal over valid keys
            q = query[sel, :, start:, :].contiguous()
            o = F.scaled_dot_product_attention(
                q, k.contiguous(), v.contiguous(), is_causal=True, scale=scaling
            )
            out[sel, start:] = o.transpose(1, 2)
    return out, None


def attention_rows_invariant(model: Any, max_rows: int) -> bool:
    """Does SDPA give a row the same bits alone and beside rows of the same shapes?

    Measured (model's head count and size, decode and causal prefill, a few lengths and
    batch sizes up to ``max_rows``). True: rows with the same padding share one attention
    call (``row_groups``); False: every row gets its own call.
    """
    import torch
    import torch.nn.functional as F

    config = model.config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    generator = torch.Generator().manual_seed(4)
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        for length in (1, 7, 33):
            for batch in sorted({2, 3, max(2, int(max_rows))}):
                for q_len in {1, length}:
                    q, k, v = (
                        torch.randn(batch, heads, n, head_dim, generator=generator, dtype=dtype)
                        for n in (q_len, length, length)
                    )
                    causal = q_len > 1
                    together = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    for i in range(batch):
                        alone = F.scaled_dot_product_attention(
                            q[i : i + 1], k[i : i + 1], v[i : i + 1], is_causal=causal
                        )
                        if not torch.equal(together[i : i + 1], alone):
                            return False
    return True


def row_groups(starts: Sequence[int], together: bool) -> list[list[int]]:
    """Rows that may share an attention call: the same padding (``together``), else none."""
    if not together:
        return [[b] for b in range(len(starts))]
    groups: dict[int, list[int]] = {}
    for b, start in enumerate(starts):
        groups.setdefault(start, []).append(b)
    return list(groups.values())


def _register_rowwise_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if ROWWISE_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ROWWISE_ATTENTION, _rowwise_attention)
    if ROWWISE_ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        ALL_MASK_ATTENTION_FUNCTIONS.register(ROWWISE_ATTENTION, sdpa_mask)


def use_rowwise_attention(model: Any) -> bool:
    """Switch a causal LM of a supported family to row-wise attention; False (standard
    attention kept) for other families and model classes that refuse it."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ROWWISE_MODEL_TYPES or getattr(model.config, "sliding_window", None):
        return False
    _register_rowwise_attention()
    try:
        model.set_attn_implementation(ROWWISE_ATTENTION)
    except Exception as exc:  # a model class that refuses custom attention
        log.warning("row-wise attention not available for %s: %s", model_type, exc)
        return False
    return True


def install_invariant_linears(model: Any, multiple: int) -> None:
    """Route every ``nn.Linear`` through the padded product (``_invariant_linear_forward``)."""
    import torch

    set_linear_row_multiple(model, multiple)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = types.MethodType(_invariant_linear_forward, module)


def make_batch_invariant(model: Any, max_rows: int, phases: LoadPhases | None = None) -> int | None:
    """Switch a causal LM to calibrated linears and row-wise attention.

    Returns the calibrated row multiple (``PER_ROW`` included), or None when the model's
    family is not supported (it keeps its standard attention).
    """
    if not use_rowwise_attention(model):
        return None
    multiple = calibrate_linear_rows_packed(model, max_rows, phases or LoadPhases())
    install_invariant_linears(model, multiple)
    return multiple


def calibrate_linear_rows_packed(model: Any, max_rows: int, phases: LoadPhases) -> int:
    """Pack the linear weights for oneDNN and calibrate; unpack if only PER_ROW holds with it.

    The row multiple, as ``calibrate_linear_rows``; the row counts that need no padding
    are measured too (``calibrate_unpadded_rows``).
    """
    with phases.timed("packing"):
        packed = pack_linear_weights(model, max_rows)
    with phases.timed("linear calibration"):
        multiple = calibrate_linear_rows(model, max_rows)
        if packed and multiple == PER_ROW:  # this CPU's oneDNN kernel is not invariant: MKL's?
            unpack_linear_weights(model)
            multiple = calibrate_linear_rows(model, max_rows)
        calibrate_unpadded_rows(model, max_rows, multiple)
    return multiple


def set_linear_row_multiple(model: Any, multiple: int) -> None:
    """Pad every linear's rows to ``multiple``, except at the row counts calibrated for it
    with torch's current thread count (``calibrate_unpadded_rows``; none if not calibrated)."""
    import torch

    key = (torch.get_num_threads(), multiple)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.ptdeploy_row_multiple = multiple
            by = module.__dict__.get("ptdeploy_unpadded_by", {})
            module.ptdeploy_unpadded = by.get(key, frozenset())


# ------------------------------------------------------------------ calibration cache

# Environment variables that make torch, MKL or oneDNN pick other kernels (or other
# rounding) on the same CPU: part of every calibration key.
KERNEL_ENV = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_DEFAULT_FPMATH_MODE",
    "ONEDNN_DEFAULT_FPMATH_MODE",
)
CALIBRATION_DIR = "calibration"  # under the state directory


def _cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags (``avx2``, ``avx512f``, ...), from
    ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``); elsewhere the platform's name."""
    import platform

    name, flags = "", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            field_name, _, value = line.partition(":")
            field_name = field_name.strip()
            if field_name in ("model name", "Hardware", "CPU part") and not name:
                name = value.strip()
            elif field_name in ("flags", "Features") and not flags:
                flags = value
            if not line.strip() and name and flags:  # the first processor is enough
                break
    return name or platform.processor() or "unknown", frozenset(flags.split())


@functools.cache
def _engine_digest() -> str:
    """This file's digest: the calibration code and the generation loop it checks live here,
    so an edited engine never reuses results measured by another."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _shape_name(shape: tuple[int, int, bool]) -> str:
    in_features, out_features, bias = shape
    return f"{in_features}x{out_features}{'+bias' if bias else ''}"


def _as_stored(key: dict[str, Any]) -> dict[str, Any]:
    """``key`` as it reads back from a cache file (JSON types), so that a stored key
    compares equal to the one asked for."""
    return json.loads(json.dumps(key, sort_keys=True))


def calibration_key(model: Any, max_rows: int, threads: int) -> dict[str, Any]:
    """Everything the load-time calibration of ``model`` depends on (module docstring, 1-3).

    The CPU (model name and every feature flag: an AVX-512 machine rounds differently
    from an AVX2 one), the kernels torch dispatches to there (version, build
    configuration, CPU capability, oneDNN, the environment variables that change them),
    this engine's code, the thread count, the largest decode batch, the dtype, the linear
    shapes (the output layer's apart: prefill calibration leaves it out) and the
    attention heads. Not the weights: kernels reduce in an order set by the shapes.
    """
    import platform

    import torch

    cpu, flags = _cpu_info()
    config = model.config
    heads = int(config.num_attention_heads)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    key = {
        "measures": "linear rows, unpadded rows, prefill rows, attention rows",
        "cpu": cpu,
        "cpu_flags": sorted(flags),
        "machine": platform.machine(),
        "torch": str(torch.__version__),
        "torch_build": hashlib.sha256(torch.__config__.show().encode()).hexdigest()[:16],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "kernel_env": {name: os.environ[name] for name in KERNEL_ENV if name in os.environ},
        "engine": _engine_digest(),
        "threads": int(threads),
        "max_rows": int(max_rows),
        "dtype": str(next(model.parameters()).dtype),
        "linears": sorted(_shape_name(shape) for shape in _linear_groups(model)),
        "output_layer": (
            _shape_name((output.in_features, output.out_features, output.bias is not None))
            if isinstance(output, torch.nn.Linear)
            else None
        ),
        "attention": {
            "heads": heads,
            "head_dim": int(getattr(config, "head_dim", None) or config.hidden_size // heads),
        },
    }
    return _as_stored(key)


@dataclass(frozen=True)
class Calibration:
    """What the engine measured for a causal LM on this machine and thread count."""

    packed: bool  # the linear weights are prepacked for oneDNN (pack_linear_weights)
    multiple: int  # calibrate_linear_rows (PER_ROW: 0)
    unpadded: dict[str, tuple[int, ...]]  # per linear shape: calibrate_unpadded_rows
    prefill_rows: int  # calibrate_prefill_rows
    group_attention: bool  # attention_rows_invariant

    def to_dict(self) -> dict[str, Any]:
        return {
            "packed": self.packed,
            "multiple": self.multiple,
            "unpadded": {name: list(rows) for name, rows in sorted(self.unpadded.items())},
            "prefill_rows": self.prefill_rows,
            "group_attention": self.group_attention,
        }

    @classmethod
    def from_dict(cls, raw: Any, key: dict[str, Any]) -> Calibration:
        """A cached calibration, checked against the model it is for (ValueError if not)."""
        max_rows = key["max_rows"]
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        packed, multiple = raw["packed"], raw["multiple"]
        prefill, grouped, unpadded = raw["prefill_rows"], raw["group_attention"], raw["unpadded"]
        if not (isinstance(packed, bool) and isinstance(grouped, bool)):
            raise ValueError("packed and group_attention must be booleans")
        candidates = {c for c in LINEAR_ROW_CANDIDATES if c < max_rows} | {max_rows, PER_ROW}
        if type(multiple) is not int or multiple not in candidates:
            raise ValueError(f"multiple={multiple!r} is not one of {sorted(candidates)}")
        if type(prefill) is not int or prefill not in {0, *PREFILL_PROBE_SIZES}:
            raise ValueError(f"prefill_rows={prefill!r} is not a probed size")
        if not isinstance(unpadded, dict) or sorted(unpadded) != key["linears"]:
            raise ValueError("unpadded does not name this model's linear shapes")
        rows: dict[str, tuple[int, ...]] = {}
        for name, counts in unpadded.items():
            if not isinstance(counts, list) or not all(
                type(m) is int and 1 <= m <= max_rows for m in counts
            ):
                raise ValueError(f"unpadded[{name!r}] is not a list of row counts")
            rows[name] = tuple(counts)
        return cls(packed, multiple, rows, prefill, grouped)


class CalibrationCache:
    """Results of load-time measurements on disk, one JSON file per key.

    A file holds ``{"key": ..., "result": ...}`` under a name derived from the key; it is
    used only when its stored key is the one asked for and its result parses: a corrupt,
    truncated or foreign file is ignored (logged) and measured again, then overwritten.
    Files are written atomically (a temporary file renamed over the old one), so
    concurrent workers never read half a file. Failing to write only costs the next load
    its measurement.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.root / f"{digest[:32]}.json"

    def get(self, key: dict[str, Any], parse: Callable[[Any], Any]) -> Any:
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("calibration cache %s is unreadable (%s): measuring again", path, exc)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            log.warning("calibration cache %s was written for another key: measuring again", path)
            return None
        try:
            return parse(entry["result"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("calibration cache %s is not valid (%s): measuring again", path, exc)
            return None

    def put(self, key: dict[str, Any], result: Any) -> None:
        from ptdeploy.state import write_atomic

        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps({"key": key, "result": result}, sort_keys=True))
        except OSError as exc:
            log.warning("cannot write the calibration cache %s: %s", path, exc)


def _parse_check(raw: Any) -> bool:
    if not isinstance(raw, dict) or not isinstance(raw.get("batch_invariant"), bool):
        raise ValueError("batch_invariant must be a boolean")
    return raw["batch_invariant"]


def default_calibration_dir() -> Path:
    """``<state dir>/calibration``: results measured on this machine."""
    from ptdeploy import state

    return state.state_dir() / CALIBRATION_DIR


def weights_id(mlmodel: Any, model_dir: Path) -> str:
    """Identity of a logged model version's weights: the MLflow model's UUID and every
    weight file's name, size and modification time (a registered version's artifacts are
    not rewritten; a file that was is a new identity)."""
    files = sorted(
        (p.relative_to(model_dir).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in model_dir.rglob("*")
        if p.is_file()
    )
    raw = json.dumps([getattr(mlmodel, "model_uuid", None), files])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


# ------------------------------------------------------------------ generation rows


@dataclass
class _Row:
    """One sequence to generate."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no logprobs; k: the k best alternatives too


@dataclass
class _Generated:
    token_ids: list[int] = field(default_factory=list)
    # per generated token: (logprob of the chosen token, [(token id, logprob)...])
    logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    ended_by_eos: bool = False


@dataclass
class _Prepared:
    """A request turned into rows, and how to build its response from their results."""

    request: Request
    rows: list[_Row]
    choice_rows: list[int]  # choice index -> index in rows (greedy choices share a row)
    prompt_tokens: int
    prefixes: list[str]  # per choice: text put before the generation (echo)
    with_logprobs: bool = False


# ------------------------------------------------------------------ the engine


class Engine:
    """A model and its tokenizer, serving one ``llm/v1`` task.

    The engine owns the model it is given: for Llama-family causal LMs it switches the
    attention implementation and the linear layers to their batch-invariant forms (the
    model keeps computing the same function, to the last bit of batch composition).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        task: str,
        pooling: dict[str, Any] | None = None,
        *,
        served_name: str = "model",
        max_batch_rows: int = 16,
        embed_batch_rows: int = 64,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        load_phases: LoadPhases | None = None,
        calibration_dir: Path | None = None,
        weights_id: str | None = None,
    ) -> None:
        """``calibration_dir``: where load-time measurements are cached (default
        ``<state dir>/calibration``); ``weights_id``: identity of the weights
        (``weights_id()``), which lets the end-to-end invariance check be cached too."""
        import torch

        self.load_phases = load_phases or LoadPhases()
        self.calibration_dir = calibration_dir
        self.weights_id = weights_id
        if task not in TASKS:
            raise ModelLoadError(f"task={task!r} is not served; valid tasks: {', '.join(TASKS)}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.task = task
        self.served_name = served_name
        self.max_batch_rows = max(1, max_batch_rows)
        self.embed_batch_rows = max(1, embed_batch_rows)
        self.clock = clock
        self.generator = torch.Generator()
        self.generator.manual_seed(
            seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        )
        self.pooling = self._check_pooling(pooling) if task == TASK_EMBEDDINGS else None
        self.context_length = self._context_length()
        self.batch_invariant = False
        # calibrated linear row multiple per torch thread count (None: standard attention)
        self._row_multiples: dict[int, int] = {}
        self._applied_rows: tuple[int, int] | None = None  # (threads, multiple) on the modules
        self._prefill_rows: dict[int, int] = {}  # per torch thread count: see prefill_rows
        self._group_attention: dict[int, bool] = {}  # per thread count: see group_attention
        self._token_cache: dict[int, tuple[str, tuple[int, ...]]] = {}
        if task == TASK_EMBEDDINGS:
            self.embed_max_length = min(
                int((pooling or {}).get("max_seq_length") or self.context_length),
                self.context_length,
            )
        else:
            if task == TASK_CHAT and not getattr(tokenizer, "chat_template", None):
                raise ModelLoadError(
                    "the tokenizer has no chat template, so the model cannot serve llm/v1/chat; "
                    "log it with task='llm/v1/completions' or give the tokenizer a chat_template"
                )
            self.eos_ids = self._eos_ids()
            self.pad_id = self._pad_id()
            if use_rowwise_attention(self.model):
                self._make_batch_invariant()

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_registry(
        cls,
        model_name: str,
        version: str | int,
        tracking_uri: str | None = None,
        *,
        dtype: str = "float32",
        torch_threads: int | None = None,
        **kwargs: Any,
    ) -> Engine:
        """Load a registered model version (its logged components) from an MLflow registry.

        ``tracking_uri`` defaults to the local target's registry. The task comes from the
        logged ``metadata.task`` (or the flavor's ``inference_task``), the embedding
        pooling from ``metadata.pooling``. Weights load as float32 by default: bfloat16
        matmuls are slow on CPUs without AMX, and float32 keeps results reproducible.
        ``torch_threads`` sets torch's intra-op threads (process-wide) before loading.

        The registry is read before torch and transformers are imported, so a wrong
        name or version fails in about two seconds, not ten.
        """
        phases = LoadPhases()
        with phases.timed("registry"):
            path, mlmodel = resolve_model_version(model_name, str(version), tracking_uri)
        task = model_task(mlmodel, f"{model_name} version {version}")

        with phases.timed("imports"):
            import torch
            from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

        if torch_threads:
            torch.set_num_threads(torch_threads)
        hf_logging.disable_progress_bar()
        flavor = mlmodel.flavors.get("transformers", {})
        metadata = mlmodel.metadata or {}
        torch_dtype = {
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }
        if dtype not in torch_dtype:
            raise ModelLoadError(f"dtype={dtype!r} is not valid; use one of {sorted(torch_dtype)}")
        model_dir = path / str(flavor.get("model_binary", "model"))
        tokenizer_dir = path / "components" / "tokenizer"
        auto = AutoModel if task == TASK_EMBEDDINGS else AutoModelForCausalLM
        try:
            if model_dir.is_dir() and tokenizer_dir.is_dir():
                with phases.timed("weights"):
                    model = auto.from_pretrained(model_dir, dtype=torch_dtype[dtype])
                with phases.timed("tokenizer"):
                    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
                kwargs.setdefault("weights_id", weights_id(mlmodel, model_dir))
            else:  # save_pretrained=False: weights come from the hub (or its local cache)
                import mlflow.transformers

                with phases.timed("weights"):
                    parts = mlflow.transformers.load_model(path.as_uri(), return_type="components")
                model, tokenizer = parts["model"].to(torch_dtype[dtype]), parts["tokenizer"]
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load the weights of {model_name} version {version} from {path}: {exc}"
            ) from exc
        kwargs.setdefault("served_name", model_name)
        return cls(model, tokenizer, task, metadata.get("pooling"), load_phases=phases, **kwargs)

    def _check_pooling(self, pooling: dict[str, Any] | None) -> dict[str, Any]:
        merged = dict(DEFAULT_POOLING)
        merged.update(pooling or {})
        if merged["mode"] not in POOLING_MODES:
            raise ModelLoadError(
                f"metadata pooling mode {merged['mode']!r} is not supported; valid modes: "
                f"{', '.join(POOLING_MODES)}"
            )
        merged["normalize"] = bool(merged.get("normalize"))
        return merged

    def _context_length(self) -> int:
        config = self.model.config
        lengths = [
            getattr(config, name, None)
            for name in ("max_position_embeddings", "n_positions", "max_sequence_length")
        ]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        lengths.append(tok_max if isinstance(tok_max, int) and tok_max < 1_000_000 else None)
        known = [int(n) for n in lengths if isinstance(n, int) and n > 0]
        return min(known) if known else 2048

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        gen_cfg = getattr(self.model, "generation_config", None)
        for source in (getattr(gen_cfg, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(i) for i in source)
        return frozenset(ids)

    def _pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, *self.eos_ids):
            if isinstance(candidate, int):
                return candidate
        return 0

    def _make_batch_invariant(self) -> None:
        """Calibrate the linears, prefill and attention for this machine (module docstring),
        then check batch invariance end to end, reusing the results cached for the same
        key (``calibration_key``): the first load on a machine measures, later loads of a
        model with the same shapes (and, for the check, the same weights) read them back.
        """
        import torch
        import transformers

        threads, phases = torch.get_num_threads(), self.load_phases
        cache = (
            CalibrationCache(self.calibration_dir or default_calibration_dir())
            if _linear is _OWN_LINEAR
            else None
        )
        key = calibration_key(self.model, self.max_batch_rows, threads)
        with phases.timed("cache"):
            calibration = (
                cache.get(key, functools.partial(Calibration.from_dict, key=key)) if cache else None
            )
        if calibration is not None:
            with phases.timed("packing"):
                if calibration.packed and not pack_linear_weights(self.model, self.max_batch_rows):
                    calibration = None  # cannot happen with the same torch build; measure
        if calibration is None:
            calibration = self._calibrate(threads, key["linears"])
            if cache is not None:
                cache.put(key, calibration.to_dict())
        else:
            for name, group in _named_linear_groups(self.model).items():
                keep_unpadded_rows(
                    group, (threads, calibration.multiple), frozenset(calibration.unpadded[name])
                )
            install_invariant_linears(self.model, calibration.multiple)
        self._row_multiples[threads] = calibration.multiple
        self._prefill_rows[threads] = calibration.prefill_rows
        self._group_attention[threads] = calibration.group_attention
        self._applied_rows = None

        check_key = None
        if cache is not None and self.weights_id is not None:
            check_key = _as_stored(
                {
                    **key,
                    "measures": "batched greedy == unbatched, end to end",
                    "calibration": calibration.to_dict(),
                    "weights": self.weights_id,
                    "transformers": transformers.__version__,
                    "pad_id": self.pad_id,
                }
            )
            cached = cache.get(check_key, _parse_check)
            if cached is not None:
                self.batch_invariant = cached
                return
        with phases.timed("invariance check"):
            self.batch_invariant = self._check_batch_invariance()
        if check_key is not None and cache is not None:
            cache.put(check_key, {"batch_invariant": self.batch_invariant})

    def _calibrate(self, threads: int, linears: list[str]) -> Calibration:
        """Measure everything ``Calibration`` holds (and apply it to the model)."""
        phases = self.load_phases
        multiple = calibrate_linear_rows_packed(self.model, self.max_batch_rows, phases)
        install_invariant_linears(self.model, multiple)
        packed = any(hasattr(w, "ptdeploy_packed") for w in _linear_weights(self.model))
        with phases.timed("prefill calibration"):
            prefill_rows = calibrate_prefill_rows(self.model, self.max_batch_rows)
        with phases.timed("attention calibration"):
            group_attention = attention_rows_invariant(self.model, self.max_batch_rows)
        unpadded = {
            name: tuple(sorted(group[0].ptdeploy_unpadded_by[(threads, multiple)]))
            for name, group in _named_linear_groups(self.model).items()
        }
        assert sorted(unpadded) == linears
        return Calibration(packed, multiple, unpadded, prefill_rows, group_attention)

    def _check_batch_invariance(self) -> bool:
        """Prefill and one decode step of three rows, alone and together: bitwise equal?"""
        vocab = int(self.model.config.vocab_size)
        prompts = [  # two of the same length: they share attention calls where allowed
            [(7 * i + 3) % vocab for i in range(6)],
            [(5 * i + 1) % vocab for i in range(2)],
            [(11 * i + 2) % vocab for i in range(6)],
        ]
        rows = [_Row(p, max_new_tokens=2, top_logprobs=3) for p in prompts]
        alone = [self._generate([r])[0] for r in rows]
        together = self._generate(rows)
        same = all(
            a.token_ids == t.token_ids and a.logprobs == t.logprobs
            for a, t in zip(alone, together, strict=True)
        )
        if not same:
            log.warning("batched generation is not bitwise identical to unbatched on this model")
        return same

    # ------------------------------------------------------------------ public API

    def infer(self, body: Any) -> dict[str, Any]:
        """Validate a request body for this engine's task and serve it."""
        return self._one(parse_request(self.task, body))

    def complete(self, req: CompletionRequest | dict[str, Any]) -> dict[str, Any]:
        return self._one(self._coerce(req, TASK_COMPLETIONS))

    def chat(self, req: ChatRequest | dict[str, Any]) -> dict[str, Any]:
        return self._one(self._coerce(req, TASK_CHAT))

    def embed(self, req: EmbeddingRequest | dict[str, Any]) -> dict[str, Any]:
        return self._one(self._coerce(req, TASK_EMBEDDINGS))

    def complete_batch(
        self, reqs: Sequence[CompletionRequest | dict[str, Any]]
    ) -> list[dict[str, Any]]:
        return self._all([self._coerce(r, TASK_COMPLETIONS) for r in reqs])

    def chat_batch(self, reqs: Sequence[ChatRequest | dict[str, Any]]) -> list[dict[str, Any]]:
        return self._all([self._coerce(r, TASK_CHAT) for r in reqs])

    def embed_batch(
        self, reqs: Sequence[EmbeddingRequest | dict[str, Any]]
    ) -> list[dict[str, Any]]:
        return self._all([self._coerce(r, TASK_EMBEDDINGS) for r in reqs])

    def serve(
        self,
        requests: Sequence[Request],
        on_response: Callable[[int, dict[str, Any] | Exception], None] | None = None,
    ) -> list[dict[str, Any] | Exception]:
        """Serve validated requests together; one result (or exception) per request.

        Generation requests share one batched generation loop, embedding requests one
        forward pass per ``embed_batch_rows`` inputs. A request that fails (prompt too
        long for the context...) fails alone. ``on_response(index, result)`` is called
        as soon as a request's last row finishes, before slower rows of the batch.
        """
        results: list[dict[str, Any] | Exception | None] = [None] * len(requests)

        def done(i: int, result: dict[str, Any] | Exception) -> None:
            results[i] = result
            if on_response is not None:
                on_response(i, result)

        embeds = [i for i, r in enumerate(requests) if isinstance(r, EmbeddingRequest)]
        gens = [i for i, r in enumerate(requests) if not isinstance(r, EmbeddingRequest)]
        if embeds:
            self._serve_isolated(self._serve_embeddings, [(i, requests[i]) for i in embeds], done)
        if gens:
            self._serve_isolated(self._serve_generation, [(i, requests[i]) for i in gens], done)
        return [r if r is not None else RuntimeError("no result") for r in results]

    # ------------------------------------------------------------------ internals

    def _coerce(self, req: Any, task: str) -> Request:
        return parse_request(task, req) if isinstance(req, dict) else req

    def _one(self, req: Request) -> dict[str, Any]:
        result = self.serve([req])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def _all(self, reqs: list[Request]) -> list[dict[str, Any]]:
        results = self.serve(reqs)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results  # type: ignore[return-value]

    def _serve_isolated(
        self,
        serve: Callable[[list[tuple[int, Request]], Callable[..., None]], None],
        items: list[tuple[int, Request]],
        done: Callable[[int, dict[str, Any] | Exception], None],
    ) -> None:
        """Serve items together; if the batch itself fails, serve them one by one.

        A failure the engine did not foresee (a tokenizer or model error on one input)
        then reaches only the request that caused it.
        """
        answered: set[int] = set()

        def track(i: int, result: dict[str, Any] | Exception) -> None:
            answered.add(i)
            done(i, result)

        try:
            serve(items, track)
        except Exception as exc:
            rest = [(i, r) for i, r in items if i not in answered]
            if len(rest) == 1:
                done(rest[0][0], exc)
                return
            for i, req in rest:
                try:
                    serve([(i, req)], done)
                except Exception as single_exc:
                    done(i, single_exc)

    # ----------------------------------------------------------- generation requests

    def _serve_generation(
        self, items: list[tuple[int, Request]], done: Callable[..., None]
    ) -> None:
        batch = GenerationBatch(self)
        for i, req in items:
            self.submit(batch, req, functools.partial(done, i))
        while not batch.idle:
            batch.step()

    def submit(
        self,
        batch: GenerationBatch,
        request: Request,
        done: Callable[[dict[str, Any] | Exception], None],
        on_delta: Callable[[int, str], None] | None = None,
    ) -> None:
        """Queue a completions or chat request in ``batch`` (continuous batching).

        ``done(response)`` runs when the request's last row finishes, during one of the
        batch's steps; ``done(error)`` at once for a request the model cannot take (a
        prompt longer than the context...). ``on_delta(choice_index, text)`` (streaming)
        gets each choice's text as it becomes final: the echoed prompt first, then new
        text after each step — never text that a stop sequence could still cut, nor half
        a UTF-8 character — and the suffix last; the deltas of a choice add up to its
        text in the response.
        """
        try:
            prep = self._prepare(request)
        except InvalidRequestError as exc:
            done(exc)
            return
        generated: list[_Generated | None] = [None] * len(prep.rows)
        remaining = [len(prep.rows)]

        def row_done(k: int, gen: _Generated) -> None:
            generated[k] = gen
            remaining[0] -= 1
            if remaining[0] == 0:
                try:
                    response: dict[str, Any] | Exception = self._respond(prep, generated)  # type: ignore[arg-type]
                except Exception as exc:  # decoding the answer failed: this request only
                    response = exc
                done(response)

        streams: dict[int, Callable[[_Generated, bool], None]] = {}
        if on_delta is not None:
            for k in range(len(prep.rows)):
                choices = [c for c, r in enumerate(prep.choice_rows) if r == k]
                streams[k] = self._streamer(prep, k, choices, on_delta)
        for k, row in enumerate(prep.rows):
            batch.add(row, _Generated(), functools.partial(row_done, k), streams.get(k))

    def _streamer(
        self,
        prep: _Prepared,
        k: int,
        choices: list[int],
        on_delta: Callable[[int, str], None],
    ) -> Callable[[_Generated, bool], None]:
        """A row's token hook that turns its new final text into deltas for its choices."""
        row = prep.rows[k]
        sent = [0]
        suffix = getattr(prep.request, "suffix", None) or ""
        for c in choices:
            if prep.prefixes[c]:
                on_delta(c, prep.prefixes[c])

        def on_token(gen: _Generated, finished: bool) -> None:
            text = gen.text if finished else self._settled_text(row, gen)
            new = text[sent[0] :] if len(text) > sent[0] else ""
            sent[0] = max(sent[0], len(text))
            if finished:
                new += suffix
            if new:
                for c in choices:
                    on_delta(c, new)

        return on_token

    def _settled_text(self, row: _Row, gen: _Generated) -> str:
        """The text generated so far that no later token can change: without a trailing
        partial UTF-8 character and without an ending that could start a stop sequence."""
        text = self._decode(gen.token_ids).rstrip("\ufffd")
        hold = 0
        for stop in row.stop:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        return text[: len(text) - hold]

    def _prepare(self, req: Request) -> _Prepared:
        if isinstance(req, ChatRequest):
            if self.task == TASK_EMBEDDINGS:
                raise InvalidRequestError(
                    "messages", "This model serves llm/v1/embeddings, not chat."
                )
            prompt_ids = [self._chat_ids(req)]
            prefixes = [""]
            top = (req.top_logprobs or 0) if req.logprobs else None
            truncate = False
            with_logprobs = req.logprobs
        elif isinstance(req, CompletionRequest):
            if self.task == TASK_EMBEDDINGS:
                raise InvalidRequestError(
                    "prompt", "This model serves llm/v1/embeddings, not completions."
                )
            prompt_ids = [self._prompt_ids(p, i, req) for i, p in enumerate(req.prompts)]
            prefixes = req.prompts if req.echo else [""] * len(req.prompts)
            top = req.logprobs
            truncate = req.error_behavior == "truncate"
            with_logprobs = req.logprobs is not None
        else:
            raise InvalidRequestError("input", f"This model serves {self.task}, not embeddings.")
        rows: list[_Row] = []
        choice_rows: list[int] = []
        choice_prefixes: list[str] = []
        for p, ids in enumerate(prompt_ids):
            max_new = self._max_new_tokens(req, len(ids), p, truncate)
            copies = 1 if req.greedy else req.n
            first = len(rows)
            for _ in range(copies):
                rows.append(
                    _Row(
                        ids,
                        max_new,
                        temperature=req.temperature,
                        top_p=req.top_p,
                        top_k=req.top_k,
                        stop=req.stop,
                        top_logprobs=top,
                    )
                )
            for c in range(req.n):
                choice_rows.append(first + (0 if req.greedy else c))
                choice_prefixes.append(prefixes[p])
        return _Prepared(
            req,
            rows,
            choice_rows,
            sum(len(ids) for ids in prompt_ids),
            choice_prefixes,
            with_logprobs,
        )

    def _chat_ids(self, req: ChatRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.text} for m in req.messages]
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # templates may refuse role orders (e.g. system not first)
            raise InvalidRequestError(
                "messages", f"Invalid messages: the model's chat template refused them: {exc}"
            ) from exc
        # The template already holds the special tokens (BOS...): do not add them twice.
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= self.context_length:
            raise InvalidRequestError(
                "messages",
                f"Invalid messages: the conversation is {len(ids)} tokens long and the model's "
                f"context length is {self.context_length} tokens; shorten the messages.",
            )
        return list(ids)

    def _prompt_ids(self, prompt: str, index: int, req: CompletionRequest) -> list[int]:
        name = "prompt" if isinstance(req.prompt, str) else f"prompt[{index}]"
        ids = list(self.tokenizer(prompt)["input_ids"])
        if not ids:
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise InvalidRequestError(
                    name, f"Invalid {name}: it is empty (0 tokens); give some text to complete."
                )
            ids = [bos]
        if len(ids) >= self.context_length:
            if req.error_behavior == "truncate":
                return ids[-(self.context_length - 1) :]
            raise InvalidRequestError(
                name,
                f"Invalid {name}: it is {len(ids)} tokens long and the model's context length is "
                f"{self.context_length} tokens; shorten it (or send error_behavior='truncate').",
            )
        return ids

    def _max_new_tokens(self, req: Request, prompt_len: int, index: int, truncate: bool) -> int:
        room = self.context_length - prompt_len
        asked = getattr(req, "max_tokens", None)
        if asked is None:
            return min(DEFAULT_MAX_TOKENS, room)
        if asked > room and not truncate:
            raise InvalidRequestError(
                "max_tokens",
                f"Invalid max_tokens: {asked}. The prompt{'' if index == 0 else f' {index}'} has "
                f"{prompt_len} tokens and the model's context length is {self.context_length}, "
                f"so max_tokens must be at most {room}.",
            )
        return min(asked, room)

    def _respond(self, prep: _Prepared, generated: list[_Generated]) -> dict[str, Any]:
        choices = []
        completion_tokens = 0
        for c, r in enumerate(prep.choice_rows):
            gen = generated[r]
            completion_tokens += len(gen.token_ids)
            prefix = prep.prefixes[c]
            text = prefix + gen.text
            req = prep.request
            if isinstance(req, CompletionRequest) and req.suffix:
                text += req.suffix
            logprobs = self._token_logprobs(gen, len(prefix)) if prep.with_logprobs else None
            choices.append(Choice(text, gen.finish_reason, logprobs))  # type: ignore[arg-type]
        usage = Usage(prep.prompt_tokens, completion_tokens)
        build = chat_response if isinstance(prep.request, ChatRequest) else completion_response
        return build(
            choices,
            usage,
            model=self.served_name,
            with_logprobs=prep.with_logprobs,
            created=int(self.clock()),
        )

    def _token_info(self, token_id: int) -> tuple[str, tuple[int, ...]]:
        """A token as OpenAI shows it: text (or ``bytes:\\xe2\\x80`` for partial UTF-8), bytes."""
        info = self._token_cache.get(token_id)
        if info is None:
            raw = token_bytes(self.tokenizer.convert_ids_to_tokens(token_id) or "")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            info = self._token_cache[token_id] = (text, tuple(raw))
        return info

    def _token_logprobs(self, gen: _Generated, offset: int) -> tuple[TokenLogprob, ...]:
        """Logprobs of the tokens that make up the returned text."""
        ids = gen.token_ids[:-1] if gen.ended_by_eos else gen.token_ids
        out = []
        start = 0
        for k, tid in enumerate(ids):
            if k > 0:
                start = len(self._decode(ids[:k]))
                if gen.finish_reason == "stop" and start >= len(gen.text):
                    break  # this token lies inside the stop sequence that was cut off
            chosen, top = gen.logprobs[k]
            text, raw = self._token_info(tid)
            alternatives = tuple(
                TopLogprob(self._token_info(t)[0], lp, self._token_info(t)[1]) for t, lp in top
            )
            out.append(
                TokenLogprob(
                    text, chosen, raw, alternatives, text_offset=offset + min(start, len(gen.text))
                )
            )
        return tuple(out)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ------------------------------------------------------------------ generation loop

    @property
    def rowwise(self) -> bool:
        """Row-wise attention, per-row prefill and calibrated linears are in use."""
        return self.model.config._attn_implementation == ROWWISE_ATTENTION

    @property
    def linear_row_multiple(self) -> int | None:
        """The linears' row multiple for torch's current thread count (``PER_ROW``: 0)."""
        import torch

        return self._row_multiples.get(torch.get_num_threads()) if self.rowwise else None

    def _calibrate_for_threads(self) -> None:
        """MKL splits work by thread count: calibrate again when it changed since loading."""
        import torch

        if not self.rowwise:
            return
        threads = torch.get_num_threads()
        if threads not in self._row_multiples:
            multiple = calibrate_linear_rows(self.model, self.max_batch_rows)
            calibrate_unpadded_rows(self.model, self.max_batch_rows, multiple)
            self._row_multiples[threads] = multiple
            self._applied_rows = None
            set_linear_row_multiple(self.model, multiple)  # prefill calibration runs the modules
            self._prefill_rows[threads] = calibrate_prefill_rows(self.model, self.max_batch_rows)
            self._group_attention[threads] = attention_rows_invariant(
                self.model, self.max_batch_rows
            )
        applied = (threads, self._row_multiples[threads])
        if applied != self._applied_rows:  # walking the modules every step costs ~1 ms
            set_linear_row_multiple(self.model, applied[1])
            self._applied_rows = applied

    def _generate(
        self, rows: list[_Row], on_row_done: Callable[[int, _Generated], None] | None = None
    ) -> list[_Generated]:
        """Generate every row; at most ``max_batch_rows`` decode together, the rest join
        as rows finish (FIFO)."""
        batch = GenerationBatch(self)
        results: list[_Generated] = []
        for r, row in enumerate(rows):
            gen = _Generated()
            results.append(gen)
            done = functools.partial(on_row_done, r) if on_row_done is not None else None
            batch.add(row, gen, done)
        while not batch.idle:
            batch.step()
        return results

    def _prefill(
        self, prompts: list[list[int]]
    ) -> tuple[list[torch.Tensor], list[tuple[Any, Any]], list[int]]:
        """Prompts prefilled together: each one's next-token logits, the KV cache (keys,
        values per layer, prompts left-padded to the longest) and each one's padding.

        Each row gets exactly the bits it gets alone (module docstring, 2): several rows
        are prefilled in one forward pass only with row-wise attention (each row attends
        to its own tokens with its own shapes) and within ``prefill_rows`` (the token
        count up to which the calibrated linears give every row its bits alone); else
        the engine prefills them one at a time (``GenerationBatch``).
        """
        import torch
        from transformers import DynamicCache

        width = max(len(ids) for ids in prompts)
        starts = [width - len(ids) for ids in prompts]
        cache = DynamicCache()
        extra = (
            {
                "ptdeploy_kv_start": starts,
                "ptdeploy_row_groups": row_groups(starts, self.group_attention),
            }
            if self.rowwise
            else {}
        )
        out = self.model(
            input_ids=torch.tensor(
                [[self.pad_id] * s + ids for s, ids in zip(starts, prompts, strict=True)],
                dtype=torch.long,
            ),
            position_ids=torch.tensor(
                [[0] * s + list(range(len(ids))) for s, ids in zip(starts, prompts, strict=True)],
                dtype=torch.long,
            ),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        logits = out.logits[:, -1, :].float()
        return list(logits), layers, starts

    @property
    def group_attention(self) -> bool:
        """Rows with the same padding share one attention call (``attention_rows_invariant``)."""
        import torch

        return self._group_attention.get(torch.get_num_threads(), False)

    @property
    def prefill_rows(self) -> int:
        """Prompt tokens one prefill pass may hold for torch's current thread count (0: one
        prompt per pass)."""
        import torch

        return self._prefill_rows.get(torch.get_num_threads(), 0) if self.rowwise else 0

    def _next_token(self, row: _Row, gen: _Generated, logits: torch.Tensor) -> int:
        import torch

        if row.temperature == 0.0:
            token = int(torch.argmax(logits))
        else:
            scores = logits / row.temperature
            if row.top_k is not None and row.top_k < scores.shape[-1]:
                kth = torch.topk(scores, row.top_k).values[-1]
                scores = scores.masked_fill(scores < kth, -math.inf)
            if row.top_p < 1.0:
                sorted_scores, order = torch.sort(scores, descending=True)
                probs = torch.softmax(sorted_scores, dim=-1)
                # drop tokens once the mass *before* them already reaches top_p (keeps >= 1)
                drop = (torch.cumsum(probs, dim=-1) - probs) >= row.top_p
                scores = scores.clone()
                scores[order[drop]] = -math.inf
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        if row.top_logprobs is not None:
            logprobs = torch.log_softmax(logits, dim=-1)
            top: list[tuple[int, float]] = []
            if row.top_logprobs > 0:
                values, indices = torch.topk(logprobs, row.top_logprobs)
                top = [(int(i), float(v)) for v, i in zip(values, indices, strict=True)]
            gen.logprobs.append((float(logprobs[token]), top))
        gen.token_ids.append(token)
        return token

    def _finished(self, row: _Row, gen: _Generated) -> bool:
        token = gen.token_ids[-1]
        if token in self.eos_ids:
            gen.ended_by_eos = True
            gen.finish_reason = "stop"
            gen.text = self._decode(gen.token_ids[:-1])
            return True
        if row.stop:
            text = self._decode(gen.token_ids)
            cuts = [i for i in (text.find(s) for s in row.stop) if i >= 0]
            if cuts:
                gen.text = text[: min(cuts)]
                gen.finish_reason = "stop"
                return True
        if len(gen.token_ids) >= row.max_new_tokens:
            gen.text = self._decode(gen.token_ids)
            gen.finish_reason = "length"
            return True
        return False

    # ------------------------------------------------------------------ embeddings

    def _serve_embeddings(
        self, items: list[tuple[int, Request]], done: Callable[..., None]
    ) -> None:

        texts: list[str] = []
        spans: list[tuple[int, int, int]] = []  # request index, first text, count
        for i, req in items:
            if self.task != TASK_EMBEDDINGS:
                done(
                    i,
                    InvalidRequestError("input", f"This model serves {self.task}, not embeddings."),
                )
                continue
            assert isinstance(req, EmbeddingRequest)
            prefix = req.instruction or ""
            spans.append((i, len(texts), len(req.inputs)))
            texts.extend(prefix + t for t in req.inputs)
        if not spans:
            return
        vectors: list[torch.Tensor] = []
        counts: list[int] = []
        for start in range(0, len(texts), self.embed_batch_rows):
            v, c = self._embed_texts(texts[start : start + self.embed_batch_rows])
            vectors.extend(v)
            counts.extend(c)
        dim = int(vectors[0].shape[-1])
        for i, first, count in spans:
            req = next(r for j, r in items if j == i)
            assert isinstance(req, EmbeddingRequest)
            if req.dimensions is not None and req.dimensions != dim:
                done(
                    i,
                    InvalidRequestError(
                        "dimensions",
                        f"Invalid dimensions: {req.dimensions}. This model's embeddings have {dim} "
                        "dimensions and cannot be shortened; leave dimensions out.",
                    ),
                )
                continue
            mine = vectors[first : first + count]
            usage = Usage(sum(counts[first : first + count]))
            done(
                i,
                embedding_response(
                    [v.tolist() for v in mine],
                    usage,
                    model=self.served_name,
                    encoding_format=req.encoding_format,
                ),
            )

    def _embed_texts(self, texts: list[str]) -> tuple[list[torch.Tensor], list[int]]:
        import torch

        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.embed_max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            out = self.model(**enc)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            hidden = out[0]
        pooled = pool(hidden, enc["attention_mask"], self.pooling or DEFAULT_POOLING)
        counts = [int(n) for n in enc["attention_mask"].sum(dim=1)]
        return list(pooled.float()), counts


@dataclass
class _Slot:
    """A row in a generation batch."""

    row: _Row
    gen: _Generated
    done: Callable[[_Generated], None] | None
    on_token: Callable[[_Generated, bool], None] | None = None  # (gen, finished): streaming
    start: int = 0  # left padding of this row in the batch's KV cache
    position: int = 0  # position id of the next token fed to the model
    logits: Any = None  # the next token is chosen from these (None: fed, awaiting logits)


class GenerationBatch:
    """Rows decoded together; rows join and leave between decode steps (continuous batching).

    ``add`` queues a row; each ``step`` (1) admits queued rows while fewer than
    ``engine.max_batch_rows`` are active — each is prefilled alone and its KV cache joined
    to the batch's, left-padded to a common width; (2) chooses every active row's next
    token, finishing rows that stop (their ``done`` callback runs at once, before slower
    rows); (3) runs one decode step for the rows left. A request that arrives while others
    decode therefore starts at the next step instead of waiting for the whole batch.

    Every row keeps the shapes it has alone in prefill and in attention (row-wise), and
    the linears are calibrated (module docstring): greedy rows get the same bits whatever
    joins or leaves around them. Families without row-wise attention decode with the
    left-padding mask instead.
    """

    def __init__(self, engine: Engine) -> None:
        from transformers import DynamicCache

        self.engine = engine
        self.waiting: list[_Slot] = []
        self.active: list[_Slot] = []
        self.cache = DynamicCache()
        self.width = 0  # sequence length of the cache (padding included)
        self.steps = 0

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.active

    def add(
        self,
        row: _Row,
        gen: _Generated,
        done: Callable[[_Generated], None] | None = None,
        on_token: Callable[[_Generated, bool], None] | None = None,
    ) -> None:
        self.waiting.append(_Slot(row, gen, done, on_token))

    def step(self) -> None:
        """Admit, choose the next tokens, decode once (see the class docstring)."""
        import torch

        engine = self.engine
        engine._calibrate_for_threads()
        with torch.inference_mode():
            room = engine.max_batch_rows - len(self.active)
            if self.waiting and room > 0:
                admitted, self.waiting = self.waiting[:room], self.waiting[room:]
                self._admit(admitted)
            keep = []
            for slot in self.active:
                engine._next_token(slot.row, slot.gen, slot.logits)
                slot.logits = None
                finished = engine._finished(slot.row, slot.gen)
                if slot.on_token is not None:
                    slot.on_token(slot.gen, finished)
                if finished:
                    if slot.done is not None:
                        slot.done(slot.gen)
                else:
                    keep.append(slot)
            if len(keep) < len(self.active):
                self._select([i for i, s in enumerate(self.active) if s in keep])
                self.active = keep
            if self.active:
                self._decode()
        self.steps += 1

    def _admit(self, slots: list[_Slot]) -> None:
        """Prefill the slots (together where the engine can, ``Engine._prefill``) and join
        their KV caches to the batch's, left-padded to a common width."""
        limit = self.engine.prefill_rows
        group: list[_Slot] = []
        for slot in slots:
            longest = max([len(s.row.prompt_ids) for s in group] + [len(slot.row.prompt_ids)])
            if group and (len(group) + 1) * longest > limit:
                self._join(group)
                group = []
            group.append(slot)
        if group:
            self._join(group)

    def _join(self, slots: list[_Slot]) -> None:
        import torch

        logits, layers, starts = self.engine._prefill([s.row.prompt_ids for s in slots])
        width = len(slots[0].row.prompt_ids) + starts[0]
        for slot, slot_logits, start in zip(slots, logits, starts, strict=True):
            slot.logits, slot.position, slot.start = slot_logits, width - start, start
        if not self.active:
            from transformers import DynamicCache

            self.cache = DynamicCache(ddp_cache_data=layers)
            self.width = width
            self.active.extend(slots)
            return
        if width > self.width:  # widen the batch: more left padding for every row
            self._pad_left(width - self.width)
        pad = self.width - width
        for slot in slots:
            slot.start += pad
        for layer, (k, v) in zip(self.cache.layers, layers, strict=True):
            layer.keys = torch.cat([layer.keys, _pad_left(k, pad)])
            layer.values = torch.cat([layer.values, _pad_left(v, pad)])
        self.active.extend(slots)

    def _pad_left(self, pad: int) -> None:
        for layer in self.cache.layers:
            layer.keys, layer.values = _pad_left(layer.keys, pad), _pad_left(layer.values, pad)
        for slot in self.active:
            slot.start += pad
        self.width += pad

    def _select(self, keep: list[int]) -> None:
        """Keep these rows of the cache; drop the left padding no remaining row needs."""
        import torch

        if not keep:
            return
        index = torch.tensor(keep, dtype=torch.long)
        trim = min(self.active[i].start for i in keep)
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, trim:]
            layer.values = layer.values[index, :, trim:]
        for i in keep:
            self.active[i].start -= trim
        self.width -= trim

    def _decode(self) -> None:
        import torch

        engine = self.engine
        rows = len(self.active)
        starts = torch.tensor([s.start for s in self.active], dtype=torch.long)
        mask = (torch.arange(self.width + 1)[None, :] >= starts[:, None]).long()
        starts_list = [s.start for s in self.active]
        extra = (
            {
                "ptdeploy_kv_start": starts_list,
                "ptdeploy_row_groups": row_groups(starts_list, engine.group_attention),
            }
            if engine.rowwise
            else {}
        )
        out = engine.model(
            input_ids=torch.tensor([[s.gen.token_ids[-1]] for s in self.active], dtype=torch.long),
            attention_mask=mask,
            position_ids=torch.tensor([[s.position] for s in self.active], dtype=torch.long),
            past_key_values=self.cache,
            use_cache=True,
            **extra,
        )
        logits = out.logits[:, -1, :].float()
        for b in range(rows):
            self.active[b].logits = logits[b]
            self.active[b].position += 1
        self.width += 1


def _pad_left(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Zeros before the sequence axis (-2) of a [batch, heads, seq, dim] cache tensor."""
    import torch

    if not pad:
        return t
    return torch.cat([t.new_zeros(*t.shape[:-2], pad, t.shape[-1]), t], dim=-2)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (printable stand-ins for the 256 bytes), inverted."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


_BYTE_DECODER = _byte_decoder()
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_bytes(raw: str) -> bytes:
    """The exact bytes of a vocabulary entry: byte-level BPE, SentencePiece byte tokens and ``▁``."""
    match = _BYTE_TOKEN.fullmatch(raw)
    if match:
        return bytes([int(match.group(1), 16)])
    if raw and all(ch in _BYTE_DECODER for ch in raw):
        return bytes(_BYTE_DECODER[ch] for ch in raw)
    return raw.replace("\u2581", " ").encode("utf-8")


# ------------------------------------------------------------------ registry


def resolve_model_version(
    model_name: str, version: str, tracking_uri: str | None = None
) -> tuple[Path, Any]:
    """The local directory of a registered model version's artifacts, and its MLmodel.

    With the local target's file artifact store this is the artifact directory itself
    (nothing is copied); other stores are downloaded once to a temporary directory.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from ptdeploy import state

    uri = tracking_uri or state.tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        mv = client.get_model_version(model_name, version)
    except MlflowException as exc:
        hint = ""
        try:
            versions = client.search_model_versions(f"name='{model_name}'")
            hint = (
                f" Registered versions of {model_name}: {version_list(versions)}."
                if versions
                else f" No model named {model_name} is registered there."
            )
        except Exception:
            pass
        raise ModelLoadError(
            f"Model {model_name} version {version} is not in the registry at {uri}: "
            f"{exc.message if hasattr(exc, 'message') else exc}.{hint}"
        ) from exc
    if mv.status != "READY":
        raise ModelLoadError(
            f"Model {model_name} version {version} is {mv.status}, not READY: "
            f"{mv.status_message or 'wait for the registration to finish'}."
        )
    download_uri = client.get_model_version_download_uri(model_name, version)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=download_uri, tracking_uri=uri)
        mlmodel = Model.load(local)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read the artifacts of {model_name} version {version} at {download_uri}: {exc}"
        ) from exc
    return Path(local), mlmodel


def model_task(mlmodel: Any, what: str = "the model") -> str:
    """The ``llm/v1`` task a logged model serves, from its metadata or flavor."""
    task = logged_task(mlmodel.metadata, mlmodel.flavors)
    if task in TASKS:
        return task
    pipeline_task = mlmodel.flavors.get("transformers", {}).get("task")
    raise ModelLoadError(
        f"{what} was not logged for an llm/v1 task (metadata task {task!r}, pipeline task "
        f"{pipeline_task!r}); log it with task= one of {', '.join(TASKS)} to serve it."
    )

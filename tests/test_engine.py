"""The inference engine: generation settings, usage, logprobs, batching, embeddings."""

from __future__ import annotations

import base64
import json
import math
import struct

import pytest
from ptdeploy.errors import InvalidRequestError, ModelLoadError
from ptdeploy.llm_tasks import TASK_CHAT, TASK_COMPLETIONS, TASK_EMBEDDINGS
from ptdeploy.models import sources
from ptdeploy.workspace import engine as engine_module
from ptdeploy.workspace.engine import (
    PER_ROW,
    Engine,
    GenerationBatch,
    calibrate_linear_rows,
    estimate_tokens_per_second,
    model_task,
    pool,
    token_bytes,
)
from ptdeploy.workspace.schemas import parse_request

# Prompts of very different lengths (2 to 21 tokens), so batches are left-padded.
PROMPTS = [
    "The capital of France is",
    "A cat",
    "Provisioned throughput serving endpoints scale in chunks of tokens per second and more",
    "What is Apache Spark?",
    "hello",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """As in a worker on 2 cores: parallel matmuls crawl when another process is busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def completions() -> Engine:
    loaded = sources.build_tiny_llama()
    return Engine(loaded.model, loaded.tokenizer, TASK_COMPLETIONS, seed=0)


@pytest.fixture(scope="module")
def chat() -> Engine:
    loaded = sources.build_tiny_llama()
    return Engine(loaded.model, loaded.tokenizer, TASK_CHAT, seed=0)


def greedy(prompt: str, **kw) -> dict:
    return {"prompt": prompt, "temperature": 0, **kw}


def text(resp: dict, i: int = 0) -> str:
    choice = resp["choices"][i]
    return choice["text"] if "text" in choice else choice["message"]["content"]


# ------------------------------------------------------------------ greedy & batching


def test_greedy_is_deterministic(completions):
    req = greedy(PROMPTS[0], max_tokens=20, logprobs=3)
    a, b = completions.complete(req), completions.complete(req)
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"]
    assert a["id"] != b["id"]


def test_batched_greedy_is_bitwise_identical_to_unbatched(completions):
    assert completions.batch_invariant
    reqs = [greedy(p, max_tokens=24, logprobs=5) for p in PROMPTS]
    alone = [completions.complete(r) for r in reqs]
    together = completions.complete_batch(reqs)
    for a, t in zip(alone, together, strict=True):
        # texts and every logprob, to the last bit: same request, same answer
        assert a["choices"] == t["choices"]
        assert a["usage"] == t["usage"]


def test_batch_mixing_settings_keeps_greedy_rows_identical(completions):
    """Sampled rows, other max_tokens and stops in the batch change nothing for a greedy row."""
    target = greedy(PROMPTS[2], max_tokens=16, logprobs=2)
    alone = completions.complete(target)
    mixed = completions.complete_batch(
        [
            {"prompt": PROMPTS[0], "temperature": 1.0, "max_tokens": 30, "n": 3},
            target,
            greedy(PROMPTS[1], max_tokens=2),
            greedy(PROMPTS[3], max_tokens=40, stop=["e"]),
        ]
    )
    assert mixed[1]["choices"] == alone["choices"]
    assert mixed[2]["usage"]["completion_tokens"] <= 2


# Processors disagree on how a matrix product rounds a row depending on how many rows
# it has (AVX2 and AVX-512 differ). These stand-ins for other BLAS kernels let the tests
# check, on whatever CPU runs them, that the engine measures what its CPU needs.


def _rounds_by_row_count(x, weight, bias):
    """A BLAS whose results change unless the row count is a multiple of 8."""
    import torch.nn.functional as F

    y = F.linear(x, weight, bias)
    return y + y * (2.0**-20 * (x.shape[0] % 8))


def _rounds_by_position(x, weight, bias):
    """A BLAS whose results for a row depend on its position in the batch."""
    import torch.nn.functional as F

    y = F.linear(x, weight, bias)
    y[1::2] += y[1::2] * 2.0**-20
    return y


def _alone_and_together(engine: Engine) -> tuple[list[dict], list[dict]]:
    reqs = [greedy(p, max_tokens=12, logprobs=3) for p in PROMPTS]
    return [engine.complete(r) for r in reqs], engine.complete_batch(reqs)


def test_calibration_on_this_cpu_makes_linears_batch_invariant():
    """Whatever this CPU's kernels do, the calibrated multiple keeps every row's bits."""
    import torch

    loaded = sources.build_tiny_llama()
    multiple = calibrate_linear_rows(loaded.model, 16)
    assert multiple in (4, 8, 16, PER_ROW)
    probe = torch.Generator().manual_seed(1)  # other rows than the calibration's own
    for module in loaded.model.modules():
        if isinstance(module, torch.nn.Linear) and multiple != PER_ROW:
            rows = torch.randn(32, module.in_features, generator=probe)
            assert engine_module._rows_invariant(module, rows, 16, multiple)


@pytest.mark.parametrize(
    ("blas", "expected"), [(_rounds_by_row_count, 8), (_rounds_by_position, PER_ROW)]
)
def test_batched_greedy_stays_identical_on_other_kernels(monkeypatch, blas, expected):
    """An AVX-512-like BLAS: the engine measures another multiple and stays invariant."""
    monkeypatch.setattr(engine_module, "_linear", blas)
    loaded = sources.build_tiny_llama()
    engine = Engine(loaded.model, loaded.tokenizer, TASK_COMPLETIONS, seed=0)
    assert engine.linear_row_multiple == expected
    assert engine.batch_invariant
    alone, together = _alone_and_together(engine)
    assert [a["choices"] for a in alone] == [t["choices"] for t in together]
    # and the calibration is what makes it so: the AVX2 rule would break on this BLAS
    engine_module.set_linear_row_multiple(engine.model, 4)
    engine._row_multiples = dict.fromkeys(engine._row_multiples, 4)
    alone, together = _alone_and_together(engine)
    assert [a["choices"] for a in alone] != [t["choices"] for t in together]


def _rounds_above_32_rows(x, weight, bias):
    """A BLAS whose kernels change (and round differently) above 32 rows."""
    import torch.nn.functional as F

    y = F.linear(x, weight, bias)
    return y + y * 2.0**-20 if x.shape[0] > 32 else y


def test_prompts_share_a_prefill_pass_only_as_far_as_rows_keep_their_bits(monkeypatch):
    """Prompts arriving together are prefilled in one pass only up to the row count the
    engine measured safe; beyond it they are prefilled apart, and answers stay identical."""
    monkeypatch.setattr(engine_module, "_linear", _rounds_above_32_rows)
    loaded = sources.build_tiny_llama()
    engine = Engine(loaded.model, loaded.tokenizer, TASK_COMPLETIONS, seed=0)
    assert 0 < engine.prefill_rows <= 32
    alone, together = _alone_and_together(engine)
    assert [a["choices"] for a in alone] == [t["choices"] for t in together]
    # and the calibration is what makes it so: one pass for all five prompts would not
    engine._prefill_rows = dict.fromkeys(engine._prefill_rows, 512)
    alone, together = _alone_and_together(engine)
    assert [a["choices"] for a in alone] != [t["choices"] for t in together]


def test_a_new_thread_count_is_calibrated_before_generating(completions):
    import torch

    threads = torch.get_num_threads()
    completions._row_multiples.pop(threads + 1, None)
    torch.set_num_threads(threads + 1)
    try:
        completions.complete(greedy(PROMPTS[1], max_tokens=2))
        assert completions._row_multiples[threads + 1] in (4, 8, 16, PER_ROW)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------ calibration cache


@pytest.fixture
def measured(monkeypatch) -> list[str]:
    """What the engine measures while loading: one entry per calibration or check run."""
    calls: list[str] = []
    for name in ("calibrate_linear_rows", "calibrate_prefill_rows", "attention_rows_invariant"):
        real = getattr(engine_module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(engine_module, name, spy)
    real_check = Engine._check_batch_invariance

    def check(self):
        calls.append("invariance check")
        return real_check(self)

    monkeypatch.setattr(Engine, "_check_batch_invariance", check)
    return calls


def _load(cache_dir, weights="weights-1") -> Engine:
    loaded = sources.build_tiny_llama()
    return Engine(
        loaded.model,
        loaded.tokenizer,
        TASK_COMPLETIONS,
        seed=0,
        calibration_dir=cache_dir,
        weights_id=weights,
    )


def _calibrated(engine: Engine) -> tuple:
    linears = {
        name: group[0].ptdeploy_unpadded
        for name, group in engine_module._named_linear_groups(engine.model).items()
    }
    packed = [hasattr(w, "ptdeploy_packed") for w in engine_module._linear_weights(engine.model)]
    return (
        engine.linear_row_multiple,
        engine.prefill_rows,
        engine.group_attention,
        engine.batch_invariant,
        linears,
        packed,
    )


def test_a_second_load_reuses_the_measurements_of_the_first(tmp_path, measured):
    first = _load(tmp_path)
    assert "calibrate_linear_rows" in measured and "invariance check" in measured
    measured.clear()
    second = _load(tmp_path)
    assert measured == []  # nothing measured again: read back from the cache
    assert _calibrated(second) == _calibrated(first)
    assert second.batch_invariant
    alone, together = _alone_and_together(second)
    assert [a["choices"] for a in alone] == [t["choices"] for t in together]
    assert [a["choices"] for a in alone] == [a["choices"] for a in _alone_and_together(first)[0]]


def test_other_weights_check_invariance_again_but_reuse_the_calibration(tmp_path, measured):
    _load(tmp_path, weights="weights-1")
    measured.clear()
    _load(tmp_path, weights="weights-2")
    assert measured == ["invariance check"]
    measured.clear()
    _load(tmp_path, weights=None)  # unknown weights: the check always runs
    assert measured == ["invariance check"]


@pytest.mark.parametrize(
    "change",
    ["an AVX-512 flag", "another CPU", "another thread count", "another torch version"],
)
def test_the_cache_is_keyed_by_machine_threads_and_torch(tmp_path, measured, monkeypatch, change):
    import torch

    _load(tmp_path)
    measured.clear()
    name, flags = engine_module._cpu_info()
    if change == "an AVX-512 flag":
        monkeypatch.setattr(engine_module, "_cpu_info", lambda: (name, flags | {"avx512f"}))
    elif change == "another CPU":
        monkeypatch.setattr(engine_module, "_cpu_info", lambda: ("Intel Xeon", flags))
    elif change == "another torch version":
        monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    threads = torch.get_num_threads()
    if change == "another thread count":
        torch.set_num_threads(threads + 1)
    try:
        _load(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert "calibrate_linear_rows" in measured and "invariance check" in measured


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_text("{not json"),
        lambda path: path.write_text(path.read_text()[: len(path.read_text()) // 2]),
        lambda path: path.write_text(
            json.dumps({**json.loads(path.read_text()), "key": {"cpu": "elsewhere"}})
        ),
        lambda path: path.write_text(
            json.dumps({**json.loads(path.read_text()), "result": {"multiple": 3, "packed": "yes"}})
        ),
    ],
    ids=["not json", "truncated", "foreign key", "invalid result"],
)
def test_a_corrupt_or_foreign_entry_is_measured_again_and_rewritten(tmp_path, measured, damage):
    first = _load(tmp_path, weights=None)
    (entry,) = tmp_path.glob("*.json")
    damage(entry)
    measured.clear()
    second = _load(tmp_path, weights=None)
    assert "calibrate_linear_rows" in measured
    assert _calibrated(second) == _calibrated(first)
    measured.clear()
    _load(tmp_path, weights=None)  # rewritten whole: read back again
    assert measured == ["invariance check"]


def test_a_swapped_kernel_is_measured_and_never_cached(tmp_path, measured, monkeypatch):
    """The stand-in BLAS of the tests above must not read nor write the real kernel's results."""
    _load(tmp_path)
    monkeypatch.setattr(engine_module, "_linear", _rounds_by_row_count)
    measured.clear()
    engine = _load(tmp_path)
    assert engine.linear_row_multiple == 8 and "calibrate_linear_rows" in measured
    assert len(list(tmp_path.glob("*.json"))) == 2  # the real kernel's two entries only


def test_a_request_joins_a_running_batch_and_answers_as_alone(completions):
    """Continuous batching: a later request starts at the next step, not after the batch."""
    long_req = parse_request(TASK_COMPLETIONS, greedy(PROMPTS[0], max_tokens=40, logprobs=2))
    short_req = parse_request(TASK_COMPLETIONS, greedy(PROMPTS[3], max_tokens=3, logprobs=2))
    alone = [
        completions.complete(greedy(PROMPTS[i], max_tokens=m, logprobs=2))
        for i, m in ((0, 40), (3, 3))
    ]
    answers: dict[str, tuple[int, dict]] = {}
    batch = GenerationBatch(completions)
    completions.submit(batch, long_req, lambda r: answers.setdefault("long", (batch.steps, r)))
    for _ in range(10):
        batch.step()
    completions.submit(batch, short_req, lambda r: answers.setdefault("short", (batch.steps, r)))
    batch.step()
    assert len(batch.active) == 2  # decoding together
    while not batch.idle:
        batch.step()
    # the short one joined at step 10 and left after its 3 tokens, long before the long one
    assert answers["short"][0] <= 13 < answers["long"][0]
    assert answers["long"][1]["choices"] == alone[0]["choices"]
    assert answers["short"][1]["choices"] == alone[1]["choices"]


def test_rows_beyond_the_batch_limit_wait_and_join_as_rows_finish():
    loaded = sources.build_tiny_llama()
    engine = Engine(loaded.model, loaded.tokenizer, TASK_COMPLETIONS, seed=0, max_batch_rows=2)
    reqs = [
        greedy(p, max_tokens=m, logprobs=1) for p, m in zip(PROMPTS, (12, 2, 7, 3, 5), strict=True)
    ]
    alone = [engine.complete(r) for r in reqs]
    batch = GenerationBatch(engine)
    answers: dict[int, dict] = {}
    most = 0
    for i, r in enumerate(reqs):
        engine.submit(
            batch, parse_request(TASK_COMPLETIONS, r), lambda a, i=i: answers.setdefault(i, a)
        )
    while not batch.idle:
        batch.step()
        most = max(most, len(batch.active))
    assert most == 2
    assert [answers[i]["choices"] for i in range(len(reqs))] == [a["choices"] for a in alone]


def test_a_request_the_model_cannot_take_fails_alone_at_submission(completions):
    batch = GenerationBatch(completions)
    got: list = []
    completions.submit(batch, parse_request(TASK_COMPLETIONS, greedy("hello " * 600)), got.append)
    assert isinstance(got[0], InvalidRequestError) and batch.idle


def _stream(engine: Engine, task: str, body: dict) -> tuple[list[tuple], dict]:
    """Serve one request with streaming: the (choice, delta) events and the response."""
    events: list[tuple] = []
    batch = GenerationBatch(engine)
    engine.submit(
        batch,
        parse_request(task, body),
        lambda r: events.append(("done", r)),
        on_delta=lambda c, text: events.append((c, text)),
    )
    while not batch.idle:
        batch.step()
    assert events[-1][0] == "done"
    return events[:-1], events[-1][1]


@pytest.mark.parametrize(
    "extra",
    [{}, {"echo": True, "suffix": " [end]"}, {"n": 2}],
    ids=["plain", "echo-suffix", "n2"],
)
def test_streamed_deltas_add_up_to_the_answer(completions, extra):
    deltas, resp = _stream(
        completions, TASK_COMPLETIONS, greedy(PROMPTS[0], max_tokens=20, **extra)
    )
    assert len(deltas) > 3  # token by token, not one piece at the end
    for choice in resp["choices"]:
        assert "".join(t for c, t in deltas if c == choice["index"]) == choice["text"]
    # streaming changes how the answer travels, not the answer
    unstreamed = completions.complete(greedy(PROMPTS[0], max_tokens=20, **extra))
    assert resp["choices"] == unstreamed["choices"]


def test_streaming_never_sends_text_a_stop_sequence_cuts(completions):
    full = text(completions.complete(greedy(PROMPTS[0], max_tokens=30)))
    stop = full[12:15]
    deltas, resp = _stream(
        completions, TASK_COMPLETIONS, greedy(PROMPTS[0], max_tokens=30, stop=[stop])
    )
    streamed = "".join(t for _, t in deltas)
    assert streamed == text(resp) == full[: full.index(stop)]
    assert resp["choices"][0]["finish_reason"] == "stop"


def test_chat_streams_too(chat):
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 12, "temperature": 0}
    deltas, resp = _stream(chat, TASK_CHAT, body)
    assert "".join(t for _, t in deltas) == resp["choices"][0]["message"]["content"]


@pytest.mark.slow  # logs and registers a model in MLflow
def test_registry_model_answers_like_the_in_memory_one(completions, registered_tiny_completions):
    """Same seed, same weights: the engine loaded from the MLflow registry agrees."""
    engine = Engine.from_registry(*registered_tiny_completions)
    assert engine.task == TASK_COMPLETIONS and engine.served_name == registered_tiny_completions[0]
    req = greedy(PROMPTS[0], max_tokens=12)
    assert text(engine.complete(req)) == text(completions.complete(req))


# ------------------------------------------------------------------ request fields


def test_max_tokens_is_exact(completions):
    for n in (1, 7):
        resp = completions.complete(greedy(PROMPTS[0], max_tokens=n, logprobs=0))
        choice = resp["choices"][0]
        assert choice["finish_reason"] == "length"
        assert resp["usage"]["completion_tokens"] == n
        assert len(choice["logprobs"]["tokens"]) == n


def test_default_max_tokens_and_eos(completions):
    resp = completions.complete(greedy(PROMPTS[0]))
    assert resp["usage"]["completion_tokens"] <= 256
    # this prompt ends with the end-of-sequence token after 25 tokens: finish_reason stop
    eos = completions.complete(greedy(PROMPTS[2], max_tokens=100, logprobs=0))
    choice = eos["choices"][0]
    assert choice["finish_reason"] == "stop"
    # the EOS token is generated (and counted) but not part of the text or the logprobs
    assert eos["usage"]["completion_tokens"] == len(choice["logprobs"]["tokens"]) + 1


def test_stop_sequence_truncates(completions):
    full = text(completions.complete(greedy(PROMPTS[0], max_tokens=30)))
    stop = full[10:13]
    cut = full.index(stop)
    resp = completions.complete(
        greedy(PROMPTS[0], max_tokens=30, stop=[stop, "never-there"], logprobs=0)
    )
    choice = resp["choices"][0]
    assert choice["text"] == full[:cut]
    assert choice["finish_reason"] == "stop"
    assert resp["usage"]["completion_tokens"] < 30
    # logprobs cover the tokens of the returned text, not the cut stop sequence
    assert "".join(choice["logprobs"]["tokens"]).startswith(full[:cut])
    assert choice["logprobs"]["text_offset"][-1] < len(full[:cut])


def test_n_choices_and_usage(completions):
    sampled = completions.complete(
        {"prompt": PROMPTS[0], "max_tokens": 10, "temperature": 1.0, "n": 3}
    )
    assert [c["index"] for c in sampled["choices"]] == [0, 1, 2]
    assert len({c["text"] for c in sampled["choices"]}) > 1  # independent samples
    prompt_tokens = len(completions.tokenizer(PROMPTS[0])["input_ids"])
    assert sampled["usage"]["prompt_tokens"] == prompt_tokens  # counted once, not per choice
    same = completions.complete(greedy(PROMPTS[0], max_tokens=10, n=3))
    assert len({c["text"] for c in same["choices"]}) == 1
    assert same["usage"]["completion_tokens"] == 30  # every choice is counted


def test_list_of_prompts_with_n(completions):
    resp = completions.complete(greedy(["A cat", "hello"], max_tokens=4, n=2))
    texts = [c["text"] for c in resp["choices"]]
    assert texts[0] == texts[1] == text(completions.complete(greedy("A cat", max_tokens=4)))
    assert texts[2] == texts[3] == text(completions.complete(greedy("hello", max_tokens=4)))
    tok = completions.tokenizer
    assert resp["usage"]["prompt_tokens"] == len(tok("A cat")["input_ids"]) + len(
        tok("hello")["input_ids"]
    )
    assert (
        resp["usage"]["total_tokens"]
        == resp["usage"]["prompt_tokens"] + resp["usage"]["completion_tokens"]
    )


def test_top_k_1_and_tiny_top_p_are_greedy(completions):
    reference = text(completions.complete(greedy(PROMPTS[3], max_tokens=15)))
    top_k = completions.complete(
        {"prompt": PROMPTS[3], "max_tokens": 15, "temperature": 1.5, "top_k": 1}
    )
    top_p = completions.complete(
        {"prompt": PROMPTS[3], "max_tokens": 15, "temperature": 1.5, "top_p": 1e-6}
    )
    assert text(top_k) == text(top_p) == reference


def test_echo_and_suffix(completions):
    plain = text(completions.complete(greedy("A cat", max_tokens=5)))
    resp = completions.complete(greedy("A cat", max_tokens=5, echo=True, suffix="!"))
    assert text(resp) == "A cat" + plain + "!"


def test_context_length_errors(completions):
    long_prompt = "hello " * 600  # 600 tokens; the context is 512
    with pytest.raises(InvalidRequestError) as err:
        completions.complete(greedy(long_prompt, max_tokens=5))
    assert err.value.field == "prompt" and "context length is 512" in str(err.value)
    with pytest.raises(InvalidRequestError) as err:
        completions.complete(greedy(PROMPTS[0], max_tokens=600))
    assert err.value.field == "max_tokens" and "at most 507" in str(err.value)
    clamped = completions.complete(greedy(PROMPTS[0], max_tokens=600, error_behavior="truncate"))
    assert clamped["usage"]["total_tokens"] <= 512


def test_a_failing_request_fails_alone(completions, monkeypatch):
    original = completions._prompt_ids

    def explode(prompt, index, req):
        if prompt == "boom":
            raise RuntimeError("tokenizer exploded")
        return original(prompt, index, req)

    monkeypatch.setattr(completions, "_prompt_ids", explode)
    ok, boom = (parse_request(TASK_COMPLETIONS, greedy(p, max_tokens=3)) for p in ("A cat", "boom"))
    results = completions.serve([ok, boom])
    assert isinstance(results[1], RuntimeError)
    assert text(results[0]) == text(completions.complete(greedy("A cat", max_tokens=3)))


def test_short_requests_are_answered_before_long_ones_finish(completions):
    order = []
    reqs = [
        parse_request(TASK_COMPLETIONS, greedy(PROMPTS[0], max_tokens=40)),
        parse_request(TASK_COMPLETIONS, greedy(PROMPTS[1], max_tokens=2)),
    ]
    completions.serve(reqs, on_response=lambda i, r: order.append(i))
    assert order == [1, 0]


# ------------------------------------------------------------------ chat


def test_chat_uses_the_template_and_counts_exactly(chat):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is Apache Spark?"},
    ]
    resp = chat.chat({"messages": messages, "max_tokens": 8, "temperature": 0})
    assert resp["object"] == "chat.completion"
    assert resp["choices"][0]["message"]["role"] == "assistant"
    rendered = chat.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>assistant\n")
    expected = len(chat.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    usage = resp["usage"]
    assert usage["prompt_tokens"] == expected
    assert usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == expected + usage["completion_tokens"]


def test_chat_logprobs_and_top_logprobs(chat):
    resp = chat.chat(
        {
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 12,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 5,
        }
    )
    choice = resp["choices"][0]
    content = choice["logprobs"]["content"]
    if choice["finish_reason"] == "length":
        assert len(content) == resp["usage"]["completion_tokens"] == 12
    for entry in content:
        top = entry["top_logprobs"]
        assert len(top) == 5
        values = [t["logprob"] for t in top]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0 for v in values) and sum(math.exp(v) for v in values) <= 1 + 1e-6
        # greedy: the chosen token is the most likely one, with the same logprob
        assert entry["logprob"] == top[0]["logprob"]
        assert entry["bytes"] == top[0]["bytes"]
    # the tokens' bytes make up the text exactly
    joined = b"".join(bytes(e["bytes"]) for e in content).decode("utf-8", errors="replace")
    assert joined == choice["message"]["content"]
    without = chat.chat(
        {
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 3,
            "temperature": 0,
            "logprobs": True,
        }
    )
    assert all(e["top_logprobs"] == [] for e in without["choices"][0]["logprobs"]["content"])


def test_chat_batched_equals_unbatched(chat):
    reqs = [
        {
            "messages": [{"role": "user", "content": p}],
            "max_tokens": 10,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 2,
        }
        for p in PROMPTS
    ]
    alone = [chat.chat(r) for r in reqs]
    assert [a["choices"] for a in alone] == [b["choices"] for b in chat.chat_batch(reqs)]


@pytest.mark.slow
def test_smollm2_greedy_batched_equals_unbatched_and_knows_paris():
    """The real 30-layer model (grouped-query attention): same invariance, sensible answer."""
    loaded = sources.load_model("smollm2-135m-instruct")
    engine = Engine(loaded.model, loaded.tokenizer, TASK_CHAT, seed=0)
    assert engine.batch_invariant
    questions = ["What is the capital of France?", "Name a color.", "What is Apache Spark?"]
    reqs = [
        {"messages": [{"role": "user", "content": q}], "max_tokens": 8, "temperature": 0}
        for q in questions
    ]
    alone = [engine.chat(r) for r in reqs]
    together = engine.chat_batch(reqs)
    assert [a["choices"] for a in alone] == [t["choices"] for t in together]
    assert "Paris" in text(alone[0])


def test_engine_refuses_a_chat_model_without_template():
    loaded = sources.build_tiny_llama()
    loaded.tokenizer.chat_template = None
    with pytest.raises(ModelLoadError, match="no chat template"):
        Engine(loaded.model, loaded.tokenizer, TASK_CHAT)


# ------------------------------------------------------------------ loading & helpers


@pytest.mark.slow  # logs and registers a model in MLflow
def test_unknown_registry_version_names_the_model(registered_tiny_completions):
    name, _ = registered_tiny_completions
    with pytest.raises(ModelLoadError) as err:
        Engine.from_registry(name, "999")
    assert f"{name} version 999" in str(err.value) and "Registered versions" in str(err.value)


def test_model_task_requires_an_llm_task():
    from mlflow.models import Model

    logged = Model(metadata={"task": TASK_CHAT})
    assert model_task(logged) == TASK_CHAT
    flavor_only = Model()
    flavor_only.flavors["transformers"] = {"inference_task": TASK_EMBEDDINGS}
    assert model_task(flavor_only) == TASK_EMBEDDINGS
    plain = Model()
    plain.flavors["transformers"] = {"task": "text-generation"}
    with pytest.raises(ModelLoadError, match="llm/v1"):
        model_task(plain)


def test_token_bytes():
    assert token_bytes("Ġthe") == b" the"  # byte-level BPE
    assert token_bytes("<0xE2>") == b"\xe2"  # SentencePiece byte fallback
    assert token_bytes("\u2581the") == b" the"  # SentencePiece word start


def test_throughput_estimate_is_stable_and_ordered():
    tiny, small, big = (
        estimate_tokens_per_second(p) for p in (139_584, 134_515_008, 8_000_000_000)
    )
    assert tiny > small > 0 and big >= 1
    assert estimate_tokens_per_second(134_515_008) == small  # a formula: same answer every time
    assert estimate_tokens_per_second(22_713_216, kind="encoder") > small


# ------------------------------------------------------------------ embeddings (MiniLM)

SENTENCES = ["a cat sits on the mat", "a kitten rests on a rug", "stock prices fell sharply"]


@pytest.fixture(scope="module")
def minilm(registered_minilm) -> Engine:
    return Engine.from_registry(*registered_minilm)


@pytest.mark.slow
def test_minilm_embeddings_match_sentence_transformers_pooling(minilm):
    import torch
    from transformers import AutoModel, AutoTokenizer

    assert minilm.pooling == {"mode": "mean", "normalize": True}
    resp = minilm.embed({"input": SENTENCES})
    got = torch.tensor([d["embedding"] for d in resp["data"]])
    # by hand, from the packaged model: mean over real tokens, then L2 normalisation
    path = sources.minilm_dir()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got.norm(dim=1), torch.ones(3), atol=1e-5)
    cat, kitten, stocks = got
    assert float(cat @ kitten) > float(cat @ stocks) + 0.3
    assert resp["usage"] == {
        "prompt_tokens": int(enc["attention_mask"].sum()),
        "total_tokens": int(enc["attention_mask"].sum()),
    }
    assert [d["index"] for d in resp["data"]] == [0, 1, 2]


@pytest.mark.slow
def test_minilm_batching_base64_and_dimensions(minilm):
    singles = [minilm.embed({"input": s})["data"][0]["embedding"] for s in SENTENCES]
    batched = minilm.embed_batch(
        [{"input": SENTENCES[:2]}, {"input": SENTENCES[2], "encoding_format": "base64"}]
    )
    vectors = [d["embedding"] for d in batched[0]["data"]]
    raw = base64.b64decode(batched[1]["data"][0]["embedding"])
    vectors.append(list(struct.unpack(f"<{len(raw) // 4}f", raw)))
    for single, vector in zip(singles, vectors, strict=True):
        assert len(vector) == 384
        assert max(abs(a - b) for a, b in zip(single, vector, strict=True)) < 1e-5
    with pytest.raises(InvalidRequestError, match="384 dimensions"):
        minilm.embed({"input": "x", "dimensions": 128})
    with pytest.raises(InvalidRequestError, match="not completions"):
        minilm.complete({"prompt": "x"})


@pytest.mark.slow
def test_default_pooling_is_cls_unnormalised(minilm):
    """No pooling in the metadata (GTE/BGE): the first token's hidden state, as is."""
    import torch

    engine = Engine(minilm.model, minilm.tokenizer, TASK_EMBEDDINGS)
    assert engine.pooling == {"mode": "cls", "normalize": False}
    vector = torch.tensor(engine.embed({"input": SENTENCES[0]})["data"][0]["embedding"])
    enc = minilm.tokenizer([SENTENCES[0]], return_tensors="pt")
    with torch.no_grad():
        cls = minilm.model(**enc).last_hidden_state[0, 0]
    assert torch.allclose(vector, cls, atol=1e-5) and abs(float(vector.norm()) - 1) > 0.1


def test_pooling_modes():
    import torch

    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third position is padding
    assert pool(hidden, mask, {"mode": "cls"}).tolist() == [[1.0, 0.0]]
    assert pool(hidden, mask, {"mode": "mean"}).tolist() == [[2.0, 2.0]]
    assert pool(hidden, mask, {"mode": "max"}).tolist() == [[3.0, 4.0]]
    assert pool(hidden, mask, {"mode": "lasttoken"}).tolist() == [[3.0, 4.0]]
    assert torch.allclose(
        pool(hidden, mask, {"mode": "mean_sqrt_len"}), torch.tensor([[4.0, 4.0]]) / math.sqrt(2)
    )
    assert torch.allclose(
        pool(hidden, mask, {"mode": "mean", "normalize": True}),
        torch.tensor([[0.7071, 0.7071]]),
        atol=1e-4,
    )
    with pytest.raises(ModelLoadError, match="not supported"):
        Engine(
            sources.build_tiny_llama().model,
            sources.build_tiny_llama().tokenizer,
            TASK_EMBEDDINGS,
            {"mode": "weird"},
        )

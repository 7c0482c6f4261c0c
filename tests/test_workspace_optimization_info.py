"""get-model-optimization-info of the local workspace: the decision and the chunk size."""

from __future__ import annotations

import json

import pytest
from ptdeploy.workspace import optimization_info as oi


def _mlmodel(arch: str | None, task: str | None, **metadata) -> dict:
    flavor = {"pipeline_model_type": arch, "model_binary": "model", "source_model_name": "org/none"}
    if task:
        flavor["inference_task"] = task
    return {
        "flavors": {"transformers": flavor},
        "metadata": {**({"task": task} if task else {}), **metadata},
    }


def _write_safetensors(directory, shapes: dict[str, list[int]]) -> None:
    """A safetensors file whose header declares ``shapes`` (data bytes are zeros)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4
        for d in shape:
            size *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "model.safetensors", "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw + b"\0" * offset)


def test_llama_completions_is_optimizable_with_a_chunk_from_its_parameter_count(tmp_path):
    _write_safetensors(tmp_path / "model", {"w": [100, 1000], "b": [1000]})  # 101,000 params
    desc = oi.describe(_mlmodel("LlamaForCausalLM", "llm/v1/completions"), tmp_path, "m", "1")
    assert desc.optimizable and desc.model_type == "llama"
    assert desc.parameter_count == 101_000
    from ptdeploy.workspace.engine import estimate_tokens_per_second

    expected = int(estimate_tokens_per_second(101_000, "causal-lm")) // 10 * 10
    assert desc.response() == {
        "optimizable": True,
        "model_type": "llama",
        "throughput_chunk_size": expected,
    }
    assert expected % 10 == 0 and expected >= 10


@pytest.mark.parametrize(
    ("arch", "model_type"),
    [
        ("MistralForCausalLM", "mistral"),
        ("MixtralForCausalLM", "mixtral"),
        ("MptForCausalLM", "mpt"),
        ("DbrxForCausalLM", "dbrx"),
    ],
)
def test_other_supported_families(arch, model_type):
    desc = oi.describe(_mlmodel(arch, "llm/v1/chat"), None, "m", "1")
    assert desc.optimizable and desc.model_type == model_type
    assert desc.throughput_chunk_size == oi.MIN_CHUNK  # nothing known of its size


@pytest.mark.parametrize(
    ("arch", "model_type"),
    [("GptOssForCausalLM", "gpt-oss"), ("Gemma3ForCausalLM", "gemma3")],
)
def test_model_unit_families_answer_a_model_unit_chunk(arch, model_type):
    desc = oi.describe(_mlmodel(arch, "llm/v1/chat"), None, "m", "1")
    assert desc.response() == {
        "optimizable": True,
        "model_type": model_type,
        "model_unit_chunk_size": oi.MODEL_UNIT_CHUNK,
    }


def test_embeddings_take_the_family_of_metadata_model_type():
    gte = oi.describe(
        _mlmodel("BertModel", "llm/v1/embeddings", model_type="gte-large"), None, "m", "1"
    )
    assert gte.response()["model_type"] == "gte"
    bge = oi.describe(
        _mlmodel("NewModel", "llm/v1/embeddings", model_type="bge-large"), None, "m", "1"
    )
    assert bge.response()["model_type"] == "bge"
    plain = oi.describe(_mlmodel("BertModel", "llm/v1/embeddings"), None, "m", "1")
    assert plain.optimizable and plain.model_type == "bert"


@pytest.mark.parametrize(
    ("mlmodel", "why"),
    [
        (_mlmodel("GPT2LMHeadModel", "llm/v1/completions"), "GPT2LMHeadModel is not one"),
        (_mlmodel("LlamaForCausalLM", None), "task None"),
        (_mlmodel("LlamaForCausalLM", "text-generation"), "task 'text-generation'"),
        (_mlmodel("LlamaForCausalLM", "llm/v1/embeddings"), "not a BERT-family encoder"),
        (
            {"flavors": {"python_function": {}}, "metadata": {"task": "llm/v1/chat"}},
            "transformers flavor",
        ),
    ],
)
def test_not_optimizable_answers_only_false_and_keeps_the_reason(mlmodel, why):
    desc = oi.describe(mlmodel, None, "m", "1")
    assert desc.response() == {"optimizable": False}
    assert why in desc.reason


def test_parameter_estimate_from_config_is_close_to_the_real_count():
    from ptdeploy.models.sources import build_tiny_llama

    loaded = build_tiny_llama()
    real = sum(p.numel() for p in loaded.model.parameters())
    estimate = oi.estimate_parameters_from_config(loaded.model.config.to_dict())
    assert abs(estimate - real) / real < 0.05


@pytest.mark.slow  # logs and registers a model in MLflow
def test_registry_lookup(registered_tiny_completions):
    from ptdeploy import state

    name, version = registered_tiny_completions
    catalog = oi.RegistryCatalog(state.tracking_uri())
    desc = catalog.describe(name, version)
    assert desc.optimizable and desc.model_type == "llama" and desc.task == "llm/v1/completions"
    assert desc.parameter_count and desc.parameter_count > 100_000  # counted from the weights
    with pytest.raises(
        oi.ModelVersionNotFoundError,
        match=f"{name}/99 does not exist; existing versions: {version}",
    ):
        catalog.describe(name, "99")
    with pytest.raises(oi.ModelVersionNotFoundError, match="main.default.nope does not exist"):
        catalog.describe("main.default.nope", "1")

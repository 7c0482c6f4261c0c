"""Model sources: offline names, local directories, hub ids, and their errors."""

from __future__ import annotations

import json

import pytest
from ptdeploy.errors import ModelSourceError
from ptdeploy.models import sources


def test_resolve_offline_names():
    for name in sources.OFFLINE_MODELS:
        assert sources.resolve_source(name).kind == "offline"


def test_unknown_offline_name_lists_the_valid_ones():
    with pytest.raises(ModelSourceError) as err:
        sources.resolve_source("smollm3-135m")
    assert "not a known offline model" in str(err.value)
    assert "smollm2-135m-instruct" in str(err.value)


def test_missing_model_directory(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelSourceError, match="no such model directory"):
        sources.resolve_source(str(missing))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelSourceError, match="has no config.json"):
        sources.resolve_source(str(tmp_path))


def test_hub_ids_and_revision():
    src = sources.resolve_source("meta-llama/Llama-3.2-1B-Instruct", revision="main")
    assert src.is_hub and src.revision == "main"
    with pytest.raises(ModelSourceError, match="not a valid hub id|neither"):
        sources.resolve_source("org/bad name")
    with pytest.raises(ModelSourceError, match="hub models only"):
        sources.resolve_source("tiny-llama", revision="main")


def test_hub_model_offline_fails_with_a_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="HF_HUB_OFFLINE=1"):
        sources.load_model("someorg/not-cached-model")


def test_tiny_llama_is_deterministic():
    import torch

    a, b = sources.build_tiny_llama(), sources.build_tiny_llama()
    ids = a.tokenizer("The capital of France is", return_tensors="pt")
    out_a = a.model.generate(**ids, max_new_tokens=6, do_sample=False)
    out_b = b.model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(out_a, out_b)
    assert a.kind == "causal-lm" and a.architecture == "LlamaForCausalLM"
    assert a.tokenizer.chat_template


def test_local_directory_roundtrip(tmp_path):
    tiny = sources.build_tiny_llama()
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = sources.load_model(str(tmp_path))
    assert loaded.source.kind == "local" and loaded.kind == "causal-lm"


def test_pooling_config_read_from_sentence_transformers_files(tmp_path):
    (tmp_path / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
        )
    )
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True})
    )
    assert sources.read_pooling_config(tmp_path) == {"mode": "cls", "normalize": False}


def test_minilm_offline_package():
    loaded = sources.load_model("all-minilm-l6-v2")
    assert loaded.kind == "encoder"
    assert loaded.pooling == {"mode": "mean", "normalize": True}


@pytest.mark.slow
def test_smollm2_converted_once_and_cache_verified():
    path = sources.smollm2_dir()
    manifest = json.loads((path / "ptdeploy-manifest.json").read_text())
    assert "model.safetensors" in manifest["files"]
    assert sources._cache_is_valid(path)
    loaded = sources.load_model("smollm2-135m-instruct")
    assert loaded.architecture == "LlamaForCausalLM"
    assert loaded.model.num_parameters() > 100_000_000


def test_damaged_cache_is_detected(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"1234")
    (tmp_path / "ptdeploy-manifest.json").write_text(
        json.dumps({"files": {"a.bin": {"size": 4, "sha256": "0" * 64}}})
    )
    assert not sources._cache_is_valid(tmp_path)

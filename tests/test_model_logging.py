"""Logging with the transformers flavor: task checks before anything is written."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from ptdeploy import model_logging, models, targets
from ptdeploy.errors import ModelLoggingError


@pytest.fixture(scope="module")
def tiny():
    return models.build_tiny_llama()


def _run_count():
    targets.configure_mlflow("local")
    return len(mlflow.search_runs(search_all_experiments=True))


def test_unknown_task(tiny):
    with pytest.raises(ModelLoggingError, match="task='llm/v1/translate' is not valid"):
        model_logging.log_model(tiny, task="llm/v1/translate")


def test_embeddings_task_on_causal_lm_is_refused_before_logging(tiny):
    before = _run_count()
    with pytest.raises(ModelLoggingError, match="causal language model"):
        model_logging.log_model(tiny, task="llm/v1/embeddings", model_type="gte-large")
    assert _run_count() == before


def test_chat_task_on_encoder_is_refused():
    enc = models.load_model("all-minilm-l6-v2")
    with pytest.raises(ModelLoggingError, match="encoder"):
        model_logging.check_task(enc, "llm/v1/chat")


def test_save_pretrained_false_needs_a_hub_model(tiny):
    before = _run_count()
    with pytest.raises(ModelLoggingError, match="save_pretrained=False needs a hub model"):
        model_logging.log_model(tiny, task="llm/v1/completions", save_pretrained=False)
    assert _run_count() == before


def test_embedding_model_type_required_and_checked():
    enc = models.load_model("all-minilm-l6-v2")
    with pytest.raises(ModelLoggingError, match="need metadata model_type"):
        model_logging.build_metadata(enc, "llm/v1/embeddings", None, None)
    with pytest.raises(ModelLoggingError, match="model_type='e5-large' is not valid"):
        model_logging.build_metadata(enc, "llm/v1/embeddings", "e5-large", None)
    meta = model_logging.build_metadata(enc, "llm/v1/embeddings", "bge-large", None)
    assert meta["model_type"] == "bge-large" and meta["pooling"]["mode"] == "mean"


def test_logged_model_has_task_metadata_and_greedy_generation(tiny):
    targets.configure_mlflow("local")
    logged = model_logging.log_model(tiny, task="llm/v1/completions")
    info = mlflow.models.get_model_info(logged.model_uri)
    assert info.metadata["task"] == "llm/v1/completions"
    assert info.flavors["transformers"]["pipeline_model_type"] == "LlamaForCausalLM"
    components = mlflow.transformers.load_model(logged.model_uri, return_type="components")
    assert components["model"].generation_config.do_sample is False
    reqs = mlflow.pyfunc.get_model_dependencies(logged.model_uri)
    text = Path(reqs).read_text()
    assert "torch==" in text and "transformers==" in text


def test_input_examples_have_the_task_shape():
    assert "prompt" in model_logging.input_example("llm/v1/completions")
    assert model_logging.input_example("llm/v1/chat")["messages"][0]["role"] == "user"
    assert isinstance(model_logging.input_example("llm/v1/embeddings")["input"], list)

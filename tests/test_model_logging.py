"""Logging with the transformers flavor: task checks before anything is written."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pytest
from ptdeploy import targets
from ptdeploy.errors import ModelLoggingError
from ptdeploy.models import model_logging, sources


@pytest.fixture(scope="module")
def tiny():
    return sources.build_tiny_llama()


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
    enc = sources.load_model("all-minilm-l6-v2")
    with pytest.raises(ModelLoggingError, match="encoder"):
        model_logging.check_task(enc, "llm/v1/chat")


def test_save_pretrained_false_needs_a_hub_model(tiny):
    before = _run_count()
    with pytest.raises(ModelLoggingError, match="save_pretrained=False needs a hub model"):
        model_logging.log_model(tiny, task="llm/v1/completions", save_pretrained=False)
    assert _run_count() == before


def test_embedding_model_type_required_and_checked():
    enc = sources.load_model("all-minilm-l6-v2")
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


@pytest.fixture
def notices():
    """Warnings of transformers and MLflow, read from their own loggers (neither
    propagates to the root logger, so pytest's caplog would not see them)."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(f"{record.name}: {record.getMessage()[:120]}")

    handler = Collect(level=logging.WARNING)
    loggers = [logging.getLogger("transformers"), logging.getLogger("mlflow")]
    for logger in loggers:
        logger.addHandler(handler)
    yield seen
    for logger in loggers:
        logger.removeHandler(handler)


def test_logging_an_offline_model_is_quiet_and_records_its_license(notices):
    """No model-card lookup on a model that is not on the hub, no license warning for a
    model whose license is known, no generation-flag or BPE clean-up notices."""
    loaded = sources.build_tiny_llama(seed=3)
    assert loaded.tokenizer.clean_up_tokenization_spaces is False  # byte-level BPE
    targets.configure_mlflow("local")
    logged = model_logging.log_model(loaded, task="llm/v1/completions")
    assert notices == []
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri))
    assert "apache-2.0" in (local / "LICENSE.txt").read_text()
    assert "license: apache-2.0" in (local / "model_card_data.yaml").read_text()


def test_a_local_directory_without_a_card_is_not_looked_up_on_the_hub(tmp_path, notices):
    tiny = sources.build_tiny_llama(seed=4)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = sources.load_model(str(tmp_path))
    card = model_logging.model_card(loaded)
    assert card.data.license == "other"  # unknown: MLflow rightly asks to check it
    targets.configure_mlflow("local")
    model_logging.log_model(loaded, task="llm/v1/completions")
    assert not [n for n in notices if "model card" in n], notices
    assert [n for n in notices if "license" in n], notices


def test_only_mlflows_own_predict_notices_are_dropped():
    flt = model_logging._DropNotices(("Passing `generation_config` together",))

    def record(level, msg):
        return logging.LogRecord("transformers.generation.utils", level, "", 0, msg, (), None)

    assert not flt.filter(record(logging.WARNING, "Passing `generation_config` together with x"))
    assert flt.filter(record(logging.WARNING, "Something else"))
    assert flt.filter(record(logging.ERROR, "Passing `generation_config` together with x"))

"""Steps of the templates that need no model: the Hugging Face token of gated models."""

from __future__ import annotations

import fakes
import pytest
from ptdeploy.errors import SecretNotFoundError
from ptdeploy.templates import dbutils as offline
from ptdeploy.templates import flow, specs
from ptdeploy.templates.parameters import Params


def _params(**overrides):
    yaml_values = {
        "model_source": "meta-llama/Llama-3.2-1B-Instruct",
        "model_revision": "",
        "catalog": "main",
        "schema": "default",
        "model_name": "m",
        "alias": "champion",
        "save_pretrained": False,
        "task": "llm/v1/completions",
        "endpoint_name": "ep",
        "min_chunks": 0,
        "max_chunks": 1,
        "scale_to_zero": False,
        "wait_timeout_minutes": 5,
        "prompt": "hi",
        "max_tokens": 4,
        "expect": "",
        "teardown": False,
        **fakes.GATEWAY_OFF,
        "target": "databricks",
        "steps": "register",
    }
    values = {**yaml_values, **overrides}
    return Params(specs.LLAMA_COMPLETIONS, specs.LLAMA_COMPLETIONS.validate(values), "python")


@pytest.fixture
def no_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("PTDEPLOY_HF_SECRET", raising=False)
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)


def test_a_gated_model_without_token_fails_at_once_naming_the_secret(no_token, monkeypatch):
    monkeypatch.setenv("PTDEPLOY_HF_SECRET", "ml/hf")
    with pytest.raises(SecretNotFoundError) as err:
        flow.require_hub_token(_params())
    message = str(err.value)
    assert "gated" in message and "secret ml/hf" in message
    assert "databricks secrets put-secret ml hf" in message


def test_the_token_comes_from_the_secret_on_databricks(no_token, tmp_path, monkeypatch):
    path = tmp_path / "secrets.json"
    offline.put_secret("ptdeploy", "hf_token", "hf_x", path)
    dbutils = offline.OfflineDbutils()
    dbutils.secrets = offline.Secrets(path)
    monkeypatch.setattr("ptdeploy.templates.parameters._ipython", lambda: None)
    flow.require_hub_token(_params(), {"dbutils": dbutils})
    import os

    assert os.environ["HF_TOKEN"] == "hf_x"


def test_offline_and_ungated_models_need_no_token(no_token):
    flow.require_hub_token(_params(model_source="tiny-llama"))
    flow.require_hub_token(_params(model_source="Alibaba-NLP/gte-large-en-v1.5"))

"""The parameters form in local Jupyter: the right control per type, the spec's labels,
the CLI's own message next to a refused value, and edits that the next cells read."""

from __future__ import annotations

import html

import pytest
from ptdeploy.errors import ParameterError
from ptdeploy.templates import parameters
from ptdeploy.templates.runner import resolve_parameters
from ptdeploy.templates.specs import LLAMA_COMPLETIONS

from tests.test_parameters import _namespace


@pytest.fixture
def jupyter(monkeypatch):
    """A Jupyter kernel as resolve() recognises it; nothing displayed for real."""

    class ZMQInteractiveShell:
        user_ns: dict = {}

    for var in ("PTDEPLOY_HEADLESS", "PTDEPLOY_LAB_PARAMETERS", "PTDEPLOY_LAB_OVERRIDES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(parameters, "_ipython", lambda: ZMQInteractiveShell())
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    parameters._FORMS.clear()
    yield monkeypatch
    parameters._FORMS.clear()


def _cli_message(**values) -> str:
    """What `ptdeploy run notebooks/llama_completions.ipynb -p NAME VALUE` prints."""
    with pytest.raises(ParameterError) as err:
        resolve_parameters("llama_completions", None, {k: str(v) for k, v in values.items()})
    return str(err.value)


def test_each_type_gets_its_control_labelled_from_the_spec(jupyter):
    parameters.resolve(LLAMA_COMPLETIONS, _namespace())
    form = parameters._FORMS["llama_completions"]
    kinds = {name: type(c).__name__ for name, c in form.controls.items()}
    assert kinds["task"] == "Dropdown" and kinds["target"] == "Dropdown"
    assert kinds["save_pretrained"] == "Dropdown"
    assert list(form.controls["save_pretrained"].options) == ["true", "false"]
    assert kinds["max_tokens"] == "IntText" and kinds["min_chunks"] == "IntText"
    assert kinds["prompt"] == "Text" and kinds["model_revision"] == "Text"
    assert form.controls["model_revision"].placeholder == "a branch, tag or commit (or empty)"
    assert form.controls["max_chunks"].description == "Max throughput (chunks)"
    assert "a whole number &gt;= 1, &lt;= 8192" in form.messages["max_tokens"].value


def test_an_edit_is_what_the_following_cells_read(jupyter):
    p = parameters.resolve(LLAMA_COMPLETIONS, _namespace())
    form = parameters._FORMS["llama_completions"]
    form.controls["max_tokens"].value = 7  # typed in the widget, no cell re-run
    form.controls["target"].value = "databricks"
    assert p.max_tokens == 7 and p["target"] == "databricks"
    assert p.as_dict()["max_tokens"] == 7


def test_a_refused_value_shows_the_cli_message_and_never_reaches_the_library(jupyter):
    p = parameters.resolve(LLAMA_COMPLETIONS, _namespace())
    form = parameters._FORMS["llama_completions"]
    form.controls["max_tokens"].value = 0
    message = _cli_message(max_tokens=0)
    assert "must be >= 1" in message
    assert html.escape(message) in form.messages["max_tokens"].value
    assert "ptdeploy-param-error" in form.messages["max_tokens"].value
    with pytest.raises(ParameterError, match="must be >= 1") as err:
        _ = p.max_tokens
    assert message in str(err.value)
    with pytest.raises(ParameterError):
        _ = p.prompt  # no other value leaks out either while the form is invalid

    form.controls["model_name"].value = "a.b"  # two errors, each next to its own widget
    assert html.escape(_cli_message(model_name="a.b")) in form.messages["model_name"].value
    assert "must be &gt;= 1" in form.messages["max_tokens"].value

    form.controls["max_tokens"].value = 5
    form.controls["model_name"].value = "fixed"
    assert p.max_tokens == 5 and "ptdeploy-param-error" not in form.messages["max_tokens"].value


def test_cross_checks_show_under_the_form(jupyter):
    p = parameters.resolve(LLAMA_COMPLETIONS, _namespace())
    form = parameters._FORMS["llama_completions"]
    form.controls["min_chunks"].value = 3
    assert "min_chunks must be &lt;= max_chunks" in form.cross_message.value
    with pytest.raises(ParameterError, match="min_chunks must be <= max_chunks"):
        _ = p.min_chunks
    form.controls["max_chunks"].value = 3
    assert form.cross_message.value == "" and p.max_chunks == 3


def test_rerunning_keeps_the_edit_unless_the_cell_changed(jupyter):
    parameters.resolve(LLAMA_COMPLETIONS, _namespace())
    form = parameters._FORMS["llama_completions"]
    form.controls["max_tokens"].value = 9
    assert parameters.resolve(LLAMA_COMPLETIONS, _namespace()).max_tokens == 9
    form.controls["max_tokens"].value = 0
    with pytest.raises(ParameterError, match="'max_tokens'"):
        parameters.resolve(LLAMA_COMPLETIONS, _namespace())
    assert parameters.resolve(LLAMA_COMPLETIONS, _namespace(max_tokens=8)).max_tokens == 8


def test_ptdeploy_lab_seeds_widgets_from_the_parameters_file(jupyter):
    jupyter.setenv("PTDEPLOY_LAB_PARAMETERS", "local")
    jupyter.setenv("PTDEPLOY_LAB_OVERRIDES", '{"model_source": "tiny-llama", "top_k": 3}')
    p = parameters.resolve(LLAMA_COMPLETIONS, _namespace(min_chunks=0, max_chunks=1))
    # parameters/llama_completions/local.yaml has min_chunks 1, max_chunks 2
    assert (p.min_chunks, p.max_chunks, p.model_source) == (1, 2, "tiny-llama")
    assert parameters._FORMS["llama_completions"].controls["model_source"].value == "tiny-llama"


def test_papermill_and_headless_runs_ignore_the_lab_seeds(jupyter):
    jupyter.setenv("PTDEPLOY_LAB_PARAMETERS", "local")
    ns = _namespace(max_tokens=32, In=["", "# Parameters\nmax_tokens = 32\n"])
    p = parameters.resolve(LLAMA_COMPLETIONS, ns)
    assert p.surface == "papermill" and p.max_tokens == 32 and p.max_chunks == 1
    assert "llama_completions" not in parameters._FORMS

"""Typed notebook parameters: conversion from widget strings, errors that name the
parameter, unknown names refused, papermill's injected cell detected."""

from __future__ import annotations

import fakes
import pytest
from ptdeploy.errors import ParameterError
from ptdeploy.templates import parameters
from ptdeploy.templates.parameters import Param, ParameterSpec
from ptdeploy.templates.specs import LLAMA_COMPLETIONS

SPEC = ParameterSpec(
    notebook="demo",
    params=(
        Param("count", "int", minimum=0, maximum=10),
        Param("ratio", "float"),
        Param("enabled", "bool"),
        Param("mode", "choice", choices=("fast", "slow")),
        Param("note", "str", optional=True),
    ),
)


def test_widget_strings_become_typed_values():
    typed = SPEC.validate(
        {"count": "7", "ratio": "0.5", "enabled": "True", "mode": "slow", "note": ""}
    )
    assert typed == {"count": 7, "ratio": 0.5, "enabled": True, "mode": "slow", "note": None}


def test_int_from_widget_string_1960():
    p = Param("max_tokens", "int")
    assert p.convert("1960") == 1960
    assert p.convert(" 1960 ") == 1960
    assert p.convert(1960.0) == 1960


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"count": "abc"}, "parameter 'count': invalid value 'abc': expected a whole number"),
        ({"count": "2.5"}, "expected a whole number"),
        ({"count": True}, "expected a whole number"),
        ({"count": "11"}, "must be <= 10"),
        ({"count": "-1"}, "must be >= 0"),
        (
            {"enabled": "maybe"},
            "parameter 'enabled': invalid value 'maybe': expected true or false",
        ),
        ({"mode": "fats"}, "Did you mean 'fast'?"),
        ({"ratio": "nan"}, "parameter 'ratio'"),
        ({"count": ""}, "a value is required"),
    ],
)
def test_bad_values_name_the_parameter_and_what_is_valid(values, fragment):
    with pytest.raises(ParameterError) as err:
        SPEC.validate(values, require_all=False)
    assert fragment in str(err.value)
    assert "Valid:" in str(err.value)


def test_all_errors_reported_at_once():
    with pytest.raises(ParameterError) as err:
        SPEC.validate({"count": "x", "mode": "y"}, require_all=False)
    assert "'count'" in str(err.value) and "'mode'" in str(err.value)


def test_unknown_parameter_is_an_error_with_did_you_mean():
    with pytest.raises(
        ParameterError, match=r"unknown parameter\(s\) 'cuont' \(did you mean 'count'\?\)"
    ):
        SPEC.validate({"cuont": 1}, require_all=False)


def test_secret_names_are_refused_as_parameters():
    with pytest.raises(ValueError, match="secret"):
        Param("databricks_token")
    with pytest.raises(ParameterError, match="secrets are never parameters"):
        SPEC.validate({"token": "dapi123"}, require_all=False)


def test_missing_declared_parameter_in_cell():
    with pytest.raises(ParameterError, match="missing parameter"):
        SPEC.validate({"count": 1})


def _namespace(**overrides):
    ns = {
        "model_source": "tiny-llama",
        "model_revision": "",
        "catalog": "main",
        "schema": "default",
        "model_name": "m",
        "alias": "champion",
        "save_pretrained": True,
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
        "target": "local",
        "steps": "all",
    }
    ns.update(overrides)
    return ns


def test_resolve_from_notebook_globals(monkeypatch):
    monkeypatch.setenv("PTDEPLOY_HEADLESS", "1")
    ns = _namespace(max_tokens="32", In=["", "# Parameters\nmax_tokens = '32'\n"])
    p = parameters.resolve(LLAMA_COMPLETIONS, ns)
    assert p.max_tokens == 32 and p.surface == "papermill"
    assert p["target"] == "local"
    assert "max_tokens" in p._repr_markdown_()


def test_resolve_refuses_unknown_injected_parameter():
    ns = _namespace(modle_source="x", In=["", "# Parameters\nmodle_source = 'x'\n"])
    with pytest.raises(ParameterError, match="'modle_source' \\(did you mean 'model_source'\\?\\)"):
        parameters.resolve(LLAMA_COMPLETIONS, ns)


def test_cross_checks_min_max_and_scale_to_zero():
    with pytest.raises(ParameterError, match="min_chunks must be <= max_chunks"):
        LLAMA_COMPLETIONS.validate(_namespace(min_chunks=3, max_chunks=2))
    with pytest.raises(ParameterError, match="scale_to_zero"):
        LLAMA_COMPLETIONS.validate(_namespace(min_chunks=1, scale_to_zero="true"))


def test_uc_names_checked_in_parameters():
    with pytest.raises(ParameterError, match="'model_name'.*periods"):
        LLAMA_COMPLETIONS.validate(_namespace(model_name="a.b"))
    with pytest.raises(ParameterError, match="endpoint_name"):
        LLAMA_COMPLETIONS.validate(_namespace(endpoint_name="bad name!"))


def job_dbutils(job_params: dict[str, str]):
    """ptdeploy's Databricks-faithful offline dbutils, in a job run passing ``job_params``
    (they override the widgets of the same name, as on Databricks)."""
    from ptdeploy.templates.dbutils import OfflineDbutils, TaskContext

    return OfflineDbutils(TaskContext(task_key="deploy", parameters=job_params))


def test_databricks_widgets_and_job_base_parameters(monkeypatch):
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    dbutils = job_dbutils({"max_tokens": "1960", "target": "databricks"})
    p = parameters.resolve(LLAMA_COMPLETIONS, _namespace(dbutils=dbutils))
    assert p.max_tokens == 1960 and p.target == "databricks"
    assert p.surface == "databricks-widgets"
    widgets = dbutils.widgets
    # task: a dropdown (it has choices); prompt: a text widget (none)
    assert "llm/v1/chat" in widgets._choices["task"] and widgets._labels["task"] == "Task"
    assert "prompt" in widgets._defaults and "prompt" not in widgets._choices


def test_databricks_job_parameter_not_declared_is_refused(monkeypatch):
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    dbutils = job_dbutils({"max_tokns": "5"})
    with pytest.raises(ParameterError, match="'max_tokns'"):
        parameters.resolve(LLAMA_COMPLETIONS, _namespace(dbutils=dbutils))


def test_databricks_bad_widget_value(monkeypatch):
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    dbutils = job_dbutils({"max_tokens": "abc"})
    with pytest.raises(ParameterError, match="parameter 'max_tokens': invalid value 'abc'"):
        parameters.resolve(LLAMA_COMPLETIONS, _namespace(dbutils=dbutils))


def test_ipywidgets_in_local_jupyter_keep_user_edits(monkeypatch):
    """In Jupyter, widgets are seeded from the cell; an edit wins on re-run, as on
    Databricks; a changed parameters cell re-seeds the widget."""

    class ZMQInteractiveShell:  # the class name is how Jupyter kernels are recognised
        user_ns: dict = {}

    monkeypatch.delenv("PTDEPLOY_HEADLESS", raising=False)
    monkeypatch.delenv("PTDEPLOY_LAB_PARAMETERS", raising=False)
    monkeypatch.delenv("PTDEPLOY_LAB_OVERRIDES", raising=False)
    monkeypatch.setattr(parameters, "_ipython", lambda: ZMQInteractiveShell())
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    parameters._FORMS.clear()
    p = parameters.resolve(LLAMA_COMPLETIONS, _namespace())
    assert p.surface == "ipywidgets" and p.max_tokens == 4
    form = parameters._FORMS["llama_completions"]
    widget = form.controls["max_tokens"]
    assert type(form.controls["task"]).__name__ == "Dropdown"
    assert widget.description == "Smoke-test max_tokens"

    widget.value = 1960  # the user types in the widget
    assert parameters.resolve(LLAMA_COMPLETIONS, _namespace()).max_tokens == 1960

    widget.value = 0
    with pytest.raises(ParameterError, match="parameter 'max_tokens': invalid value '0'"):
        parameters.resolve(LLAMA_COMPLETIONS, _namespace())

    # the parameters cell itself changed: the new default wins and re-seeds the widget
    assert parameters.resolve(LLAMA_COMPLETIONS, _namespace(max_tokens=8)).max_tokens == 8
    parameters._FORMS.clear()

"""The papermill runner: parameters checked before a kernel starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from ptdeploy import cli, runner
from ptdeploy.errors import ParameterError

REPO = Path(__file__).resolve().parents[1]
NB = REPO / "notebooks" / "llama_completions.ipynb"
LOCAL = REPO / "parameters" / "llama_completions" / "local.yaml"


def test_unknown_parameter_refused_before_execution(tmp_path):
    with pytest.raises(ParameterError, match="'max_tokns' \\(did you mean 'max_tokens'\\?\\)"):
        runner.run_notebook(NB, LOCAL, {"max_tokns": "3"}, out_dir=tmp_path)
    assert not list(tmp_path.iterdir()), "nothing executed, nothing written"


def test_non_numeric_int_refused_with_its_name(tmp_path):
    with pytest.raises(ParameterError, match="parameter 'max_tokens': invalid value 'abc'"):
        runner.run_notebook(NB, LOCAL, {"max_tokens": "abc"}, out_dir=tmp_path)


def test_cli_exit_codes(tmp_path, capsys):
    code = cli.main(
        ["run", str(NB), "-f", str(LOCAL), "-p", "target", "staging", "--out", str(tmp_path)]
    )
    assert code == 2
    assert "parameter 'target': invalid value 'staging'" in capsys.readouterr().err


def test_missing_parameters_file(tmp_path):
    with pytest.raises(ParameterError, match="does not exist"):
        runner.run_notebook(NB, tmp_path / "nope.yaml", out_dir=tmp_path)


def test_typed_values_from_file_and_overrides():
    values = runner.resolve_parameters(NB, LOCAL, {"max_tokens": "1960", "teardown": "yes"})
    assert values["max_tokens"] == 1960 and values["teardown"] is True
    assert values["target"] == "local"


def test_table_names_the_failing_cell(tmp_path):
    ok = runner.RunResult("a", tmp_path / "a.ipynb", True, 1.0)
    bad = runner.RunResult(
        "b", tmp_path / "b.ipynb", False, 2.0, failed_cell=7, error="ValueError: x"
    )
    table = runner.format_table([ok, bad])
    assert "FAILED" in table and "cell 7: ValueError: x" in table and "1 failed" in table

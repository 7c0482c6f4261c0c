"""The papermill runner: parameters checked before a kernel starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from ptdeploy import cli
from ptdeploy.errors import ParameterError, PtdeployError
from ptdeploy.templates import runner

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
    assert "FAILED" in table and "cell In [7]: ValueError: x" in table and "1 failed" in table


# ------------------------------------------------------------------ run-all


def _notebook(path: Path, params: str, *code: str) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    cell = new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb = new_notebook(
        cells=[cell, *(new_code_cell(c) for c in code)],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    )
    nbformat.write(nb, path)


@pytest.fixture
def tiny_templates(tmp_path, monkeypatch):
    """Two throwaway templates (one fails in its third cell) with their specs and files."""
    from ptdeploy.templates import specs
    from ptdeploy.templates.parameters import Param, ParameterSpec

    notebooks, parameters = tmp_path / "notebooks", tmp_path / "parameters"
    notebooks.mkdir()
    params = 'x = 1\ntarget = "local"'
    _notebook(notebooks / "tiny_ok.ipynb", params, "print('fine', x)")
    _notebook(notebooks / "tiny_fail.ipynb", params, "y = x + 1", 'raise ValueError(f"broken {y}")')
    for name in ("tiny_ok", "tiny_fail"):
        fields = (Param("x", "int"), Param("target", "choice", choices=("local", "databricks")))
        monkeypatch.setitem(specs.SPECS, name, ParameterSpec(name, fields))
        (parameters / name).mkdir(parents=True)
        (parameters / name / "local.yaml").write_text("x: 3\ntarget: local\n")
    return notebooks, parameters


@pytest.mark.slow  # starts kernels
def test_run_all_reports_each_notebook_and_the_failing_cell(tiny_templates, tmp_path):
    notebooks, parameters = tiny_templates
    results = runner.run_all(
        "local", out_dir=tmp_path / "out", notebooks=notebooks, parameters=parameters
    )
    by_name = {r.notebook: r for r in results}
    assert [r.notebook for r in results] == ["tiny_fail", "tiny_ok"], "all run, in name order"
    assert by_name["tiny_ok"].ok
    bad = by_name["tiny_fail"]
    assert not bad.ok
    assert bad.error == "ValueError: broken 4"
    assert bad.failed_source == 'raise ValueError(f"broken {y}")'
    assert bad.failed_cell_index == 3  # parameters, injected parameters, y = ..., raise
    assert bad.output.is_file(), "the failed output notebook is kept"
    assert bad.output == tmp_path / "out" / "local" / "tiny_fail-local.ipynb"
    table = runner.format_table(results)
    assert "tiny_fail" in table and "FAILED" in table and "raise ValueError" in table
    assert "tiny_ok" in table and "1 failed" in table


@pytest.mark.slow  # starts kernels
def test_run_all_cli_exit_code_and_failing_cell(tiny_templates, tmp_path, capsys):
    notebooks, parameters = tiny_templates
    code = cli.main(
        [
            "run-all",
            "--target",
            "local",
            "--out",
            str(tmp_path / "out"),
            "--notebooks",
            str(notebooks),
            "--parameters-dir",
            str(parameters),
            "--only",
            "tiny_fail",
        ]
    )
    assert code == 1
    captured = capsys.readouterr()
    assert "tiny_fail failed in cell In [" in captured.err
    assert (
        'raise ValueError(f"broken {y}")' in captured.err and "ValueError: broken 4" in captured.err
    )
    assert "notebook" in captured.out and "seconds" in captured.out  # the summary table


def test_run_all_checks_every_parameter_set_before_running(tiny_templates, tmp_path):
    notebooks, parameters = tiny_templates
    (parameters / "tiny_ok" / "local.yaml").write_text("x: many\ntarget: local\n")
    (parameters / "tiny_fail" / "local.yaml").unlink()
    with pytest.raises(PtdeployError) as err:
        runner.run_all(
            "local", out_dir=tmp_path / "out", notebooks=notebooks, parameters=parameters
        )
    assert "tiny_fail: no parameters file" in str(err.value)
    assert "tiny_ok: parameter 'x': invalid value 'many'" in str(err.value)
    assert not (tmp_path / "out").exists(), "nothing ran"


def test_run_all_only_an_unknown_notebook(tiny_templates, tmp_path):
    notebooks, parameters = tiny_templates
    with pytest.raises(PtdeployError, match="--only nope: no such notebook"):
        runner.run_all("local", notebooks=notebooks, parameters=parameters, only=["nope"])


@pytest.mark.parametrize(
    ("running_before", "keep_running", "stopped"),
    [(False, False, True), (False, True, False), (True, False, False)],
)
def test_run_all_local_stops_the_workspace_it_started(
    tiny_templates, tmp_path, monkeypatch, running_before, keep_running, stopped
):
    """Nothing left running unless asked: a workspace run-all started is stopped at the end;
    one the user started, or --keep-running, stays."""
    from ptdeploy.workspace import control

    notebooks, parameters = tiny_templates
    calls: list[bool] = []
    monkeypatch.setattr(runner.targets, "local_workspace_running", lambda: running_before)
    monkeypatch.setattr(runner, "_run_plan", lambda *a: [])
    monkeypatch.setattr(control, "stop", lambda quiet=False: calls.append(quiet) or True)
    runner.run_all(
        "local",
        out_dir=tmp_path / "out",
        notebooks=notebooks,
        parameters=parameters,
        keep_running=keep_running,
    )
    assert bool(calls) is stopped


@pytest.mark.parametrize(
    ("target", "running_before", "keep_running", "stopped"),
    [
        ("local", False, False, True),
        ("local", False, True, False),
        ("local", True, False, False),
        ("databricks", False, False, False),
    ],
)
def test_run_stops_the_local_workspace_it_started(
    tmp_path, monkeypatch, capsys, target, running_before, keep_running, stopped
):
    """`ptdeploy run` leaves nothing running unless asked, as run-all does."""
    from ptdeploy.workspace import control

    calls: list[bool] = []
    result = runner.RunResult("nb", tmp_path / "nb.ipynb", True, 1.0, parameters={"target": target})
    monkeypatch.setattr(runner.targets, "local_workspace_running", lambda: running_before)
    monkeypatch.setattr(runner, "run_notebook", lambda *a, **k: result)
    monkeypatch.setattr(control, "stop", lambda quiet=False: calls.append(quiet) or True)
    argv = ["run", str(NB), "-f", str(LOCAL), "--out", str(tmp_path)]
    assert cli.main(argv + (["--keep-running"] if keep_running else [])) == 0
    assert bool(calls) is stopped
    assert ("stopped the local workspace" in capsys.readouterr().out) is stopped


# ------------------------------------------------------------------ kernels started ahead


def _outputs(path: Path) -> list[tuple[int | None, str]]:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return [
        (c.execution_count, "".join(o.get("text", "") for o in c.outputs))
        for c in nb.cells
        if c.cell_type == "code"
    ]


@pytest.mark.slow  # starts kernels
def test_a_kernel_started_ahead_gives_the_notebook_a_fresh_kernel_would(
    tiny_templates, tmp_path, monkeypatch
):
    from ptdeploy.templates import specs

    notebooks, _ = tiny_templates
    nb = notebooks / "probe.ipynb"
    monkeypatch.setitem(specs.SPECS, "probe", specs.SPECS["tiny_ok"])
    _notebook(
        nb,
        "x = 1",
        "import os, sys; print(os.getcwd() == os.path.dirname(os.path.abspath('probe.ipynb')))",
        "print(os.environ.get('PROBE'), os.environ.get('PTDEPLOY_HEADLESS'), os.environ.get('LATE'))",
        "print('colorsys' in sys.modules, [n for n in ('colorsys', '_') if n in dir()])",
    )
    env = {"PROBE": "from-env"}
    fresh = runner.run_notebook(nb, out_dir=tmp_path / "fresh", env=env)
    kernel = runner.WarmKernel(nb, env, imports=("colorsys",))
    # the environment is fixed when the kernel is started ahead: what this process sets
    # afterwards (run_notebook sets the running notebook's variables) does not reach it
    monkeypatch.setenv("LATE", "set after the kernel started")
    ahead = runner.run_notebook(nb, out_dir=tmp_path / "ahead", env=env, kernel=kernel)
    assert fresh.ok and ahead.ok, (fresh.error, ahead.error)
    assert kernel.error is None and kernel.km is None, "used, then shut down"
    # the same execution counts (the warm-up is not counted) and outputs; the module the
    # warm-up imported is loaded but bound to no name in the user's namespace
    expected = [(2, "True\n"), (3, "from-env 1 None\n")]
    assert _outputs(fresh.output)[1:] == [*expected, (4, "False []\n")]
    assert _outputs(ahead.output)[1:] == [*expected, (4, "True []\n")]


@pytest.mark.slow  # starts kernels
def test_a_kernel_that_failed_to_warm_up_is_replaced_by_a_fresh_one(tiny_templates, tmp_path):
    notebooks, _ = tiny_templates
    kernel = runner.WarmKernel(notebooks / "tiny_ok.ipynb", {}, imports=("no_such_module_x",))
    result = runner.run_notebook(notebooks / "tiny_ok.ipynb", out_dir=tmp_path, kernel=kernel)
    assert result.ok, result.error
    assert "no_such_module_x" in str(kernel.error)
    assert _outputs(result.output)[-1] == (2, "fine 1\n")

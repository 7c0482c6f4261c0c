"""Every notebook template: hygiene, parameters in step with specs and YAML files, and
real papermill runs against the local workspace."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml
from papermill.inspection import inspect_notebook
from ptdeploy import runner, specs

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PARAM_FILES = sorted((REPO / "parameters").glob("*/*.yaml"))


def test_there_are_notebooks_and_parameter_files():
    assert NOTEBOOKS and PARAM_FILES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_hygiene(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["kernelspec"]["language"] == "python"
    assert nb.metadata["language_info"]["name"] == "python"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"outputs not stripped in {path.name}"
            assert cell.execution_count is None, f"execution count left in {path.name}"
    assert nb.cells[0].cell_type == "markdown", "starts with a markdown introduction"
    markdown = sum(c.cell_type == "markdown" for c in nb.cells)
    assert markdown >= len(nb.cells) // 3, "each step is explained in markdown"
    assert not re.search(r"dapi[0-9a-f]{8,}", path.read_text()), "no token in the notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_spec_matches_the_parameters_cell(path):
    declared = set(inspect_notebook(str(path)))
    spec = specs.spec_for(path.stem)
    assert declared == set(spec.names)
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    namespace: dict = {}
    exec(cell.source, namespace)  # the defaults themselves must be valid
    spec.validate({k: namespace[k] for k in spec.names})


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_parameter_files_match_the_notebook(path):
    notebook = REPO / "notebooks" / f"{path.parent.name}.ipynb"
    assert notebook.is_file(), f"{path} has no notebook {notebook.name}"
    values = yaml.safe_load(path.read_text())
    declared = set(inspect_notebook(str(notebook)))
    assert set(values) == declared, f"{path}: keys differ from the notebook's parameters"
    typed = specs.spec_for(notebook.stem).validate(values)
    assert typed["target"] == path.stem


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_local_and_databricks_parameters(path):
    for target in ("local", "databricks"):
        assert (REPO / "parameters" / path.stem / f"{target}.yaml").is_file()


def test_unknown_papermill_parameter_fails_inside_the_notebook(tmp_path):
    """Plain `papermill -p` (not our runner) with a typo: the notebook stops at once."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out = tmp_path / "out.ipynb"
    with pytest.raises(PapermillExecutionError) as err:
        pm.execute_notebook(
            str(REPO / "notebooks" / "llama_completions.ipynb"),
            str(out),
            parameters={"modle_source": "tiny-llama"},
            progress_bar=False,
            kernel_name="python3",
        )
    assert err.value.ename == "ParameterError"
    assert "modle_source" in err.value.evalue and "model_source" in err.value.evalue
    assert out.is_file(), "the failed output notebook is kept for inspection"


def test_llama_notebook_on_tiny_llama_twice_updates_the_same_endpoint(tmp_path):
    """Run 1 creates the endpoint on v1; run 2 registers v2 and updates the same endpoint;
    run 3 is the job's smoke_test task alone: it finds v2 through the alias, queries the
    endpoint and tears it down."""
    nb = REPO / "notebooks" / "llama_completions.ipynb"
    params = REPO / "parameters" / "llama_completions" / "local.yaml"
    overrides = {
        "model_source": "tiny-llama",
        "model_name": "nb_tiny_llama",
        "endpoint_name": "nb-tiny-llama",
        "max_tokens": "4",
    }
    first = runner.run_notebook(nb, params, overrides, out_dir=tmp_path / "1", progress=False)
    assert first.ok, first.describe_failure()
    assert first.summary["registered_model"] == "main.default.nb_tiny_llama"
    assert first.summary["version"] == "1"
    assert first.summary["endpoint_served_versions"] == ["1"]
    assert first.summary["sample_completion"]

    second = runner.run_notebook(nb, params, overrides, out_dir=tmp_path / "2", progress=False)
    assert second.ok, second.describe_failure()
    assert second.summary["version"] == "2"
    assert second.summary["endpoint_served_versions"] == ["2"]

    third = runner.run_notebook(
        nb,
        params,
        {**overrides, "steps": "smoke_test", "teardown": "true"},
        out_dir=tmp_path / "3",
        progress=False,
    )
    assert third.ok, third.describe_failure()
    assert third.summary["version"] == "2"
    assert third.summary["registry_smoke_completion"] is None  # register step skipped
    assert third.summary["sample_completion"]
    assert third.summary["endpoint_deleted"] is True
    assert third.summary["endpoint_served_versions"] == []
    from ptdeploy.workspace import control

    token = control.read_token(create=False)
    for run in (first, second, third):
        text = run.output.read_text()
        assert token not in text, "the workspace token leaked into an output notebook"
        assert "Bearer" not in text


@pytest.mark.slow
def test_llama_notebook_on_smollm2_knows_paris(tmp_path):
    params = REPO / "parameters" / "llama_completions" / "local.yaml"
    result = runner.run_notebook(
        REPO / "notebooks" / "llama_completions.ipynb",
        params,
        {"model_name": "nb_smollm2", "endpoint_name": "nb-smollm2", "teardown": "true"},
        out_dir=tmp_path,
        progress=False,
    )
    assert result.ok, result.describe_failure()
    assert "Paris" in result.summary["registry_smoke_completion"]
    assert "Paris" in result.summary["sample_completion"]

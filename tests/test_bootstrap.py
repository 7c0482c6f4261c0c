"""The first cell of every template: on Databricks it installs ptdeploy from the repository
and restarts Python; elsewhere it does nothing."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from ptdeploy import targets
from ptdeploy.templates import dbutils, runner

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _bootstrap_cell(path: Path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "bootstrap" in c.metadata.get("tags", [])]
    return nb, cells


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_template_starts_with_the_bootstrap_cell(path):
    nb, cells = _bootstrap_cell(path)
    assert len(cells) == 1
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0] is cells[0], "the first code cell, before the parameters cell"
    source = cells[0].source
    assert "DATABRICKS_RUNTIME_VERSION" in source and 'find_spec("ptdeploy")' in source
    assert "%pip install" in source and "../requirements-databricks.txt ../" in source
    assert "dbutils.library.restartPython()" in source


@pytest.mark.slow
def test_bootstrap_installs_ptdeploy_in_a_databricks_like_kernel(tmp_path, ptdeploy_home):
    """A fresh kernel where ``ptdeploy`` is not importable, ``DATABRICKS_RUNTIME_VERSION``
    set and the offline ``dbutils`` in its namespace: the bootstrap cell installs the library
    from the repository checkout and the template runs (its register step)."""
    repo = tmp_path / "repo"  # the Git folder: what a Databricks checkout holds
    for name in ("lib", "notebooks"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("*.egg-info"))
    for name in ("pyproject.toml", "README.md", "requirements-databricks.txt"):
        shutil.copy(REPO / name, repo / name)
    # A Python without ptdeploy whose other packages stand for the ML runtime's: a venv that
    # sees this environment's site-packages (a .pth line) but not its editable ptdeploy.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    venv_site = next((venv / "lib").glob("python3*/site-packages"))
    (venv_site / "_runtime.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = venv / "bin" / "python"
    probe = "import importlib.util as u; print(u.find_spec('ptdeploy') is None)"
    env = {"PYTHONPATH": ""}
    assert (
        subprocess.run(
            [str(python), "-c", probe],
            capture_output=True,
            text=True,
            env={**env, "PATH": "/usr/bin"},
        ).stdout.strip()
        == "True"
    ), "ptdeploy must not be importable before the bootstrap"
    kernels = tmp_path / "jupyter" / "kernels" / "dbr"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Databricks-like",
                "language": "python",
            }
        )
    )
    ipython_dir = tmp_path / "ipython"
    dbutils.write_ipython_startup(ipython_dir)
    # A local workspace the notebook starts runs on that venv's Python: stop it afterwards
    # (the product's own rule), so later tests get one started by this environment.
    running_before = targets.local_workspace_running()
    try:
        result = _run_bootstrapped(repo, tmp_path, env, ipython_dir)
    finally:
        runner.stop_started_workspace("local", running_before=running_before, keep_running=False)
    assert result.ok, result.describe_failure()
    assert (venv_site / "ptdeploy" / "templates" / "flow.py").is_file(), (
        "installed by the bootstrap cell"
    )
    assert result.summary and result.summary["version"]
    executed = nbformat.read(result.output, as_version=4)
    shown = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "databricks-widgets" in shown, "parameters came through dbutils.widgets"


def _run_bootstrapped(repo: Path, tmp_path: Path, env: dict, ipython_dir: Path):
    return runner.run_notebook(
        repo / "notebooks" / "llama_completions.ipynb",
        REPO / "parameters" / "llama_completions" / "local.yaml",
        {"model_source": "tiny-llama", "steps": "register", "max_tokens": "4"},
        out_dir=tmp_path / "out",
        kernel_name="dbr",
        env={
            **env,
            "JUPYTER_PATH": str(tmp_path / "jupyter"),
            "IPYTHONDIR": str(ipython_dir),
            "DATABRICKS_RUNTIME_VERSION": "17.3",
            # offline: build the wheel with the installed setuptools, no index
            "PIP_NO_INDEX": "1",
            "PIP_NO_BUILD_ISOLATION": "0",
        },
    )

"""Every notebook template: hygiene, parameters in step with specs and YAML files, and
real papermill runs against the local workspace."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml
from papermill.inspection import inspect_notebook
from ptdeploy.templates import runner, specs

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


@pytest.mark.slow  # starts a kernel
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


@pytest.mark.slow  # starts a kernel
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
    ahead = runner.WarmKernel(nb, {})  # run 2's kernel starts while run 1 runs
    first = runner.run_notebook(nb, params, overrides, out_dir=tmp_path / "1", progress=False)
    assert first.ok, first.describe_failure()
    assert first.summary["registered_model"] == "main.default.nb_tiny_llama"
    assert first.summary["version"] == "1"
    assert first.summary["endpoint_served_versions"] == ["1"]
    assert first.summary["sample_completion"]
    assert first.summary["task"] == "llm/v1/completions"
    # registration moved the challenger; the smoke test passed, so champion moved too
    assert first.summary["alias"] == "challenger" and first.summary["champion_version"] == "1"

    after = runner.WarmKernel(nb, {})  # and run 3's while run 2 runs
    second = runner.run_notebook(
        nb, params, overrides, out_dir=tmp_path / "2", progress=False, kernel=ahead
    )
    assert second.ok, second.describe_failure()
    assert second.summary["version"] == "2"
    assert second.summary["endpoint_served_versions"] == ["2"]
    assert second.summary["champion_version"] == "2"

    third = runner.run_notebook(
        nb,
        params,
        {**overrides, "steps": "smoke_test", "teardown": "true"},
        out_dir=tmp_path / "3",
        progress=False,
        kernel=after,
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


@pytest.mark.slow  # starts kernels
def test_llama_notebook_chat_task_with_gateway_then_a_canary_promoted(tmp_path):
    """task=llm/v1/chat through the template on tiny-llama, with usage tracking and an
    inference table; then a second version as a 50% canary next to the champion, smoke-tested
    and promoted: all traffic and the champion alias move to it."""
    from ptdeploy.serving import inference_tables

    nb = REPO / "notebooks" / "llama_completions.ipynb"
    params = REPO / "parameters" / "llama_completions" / "local.yaml"
    overrides = {
        "model_source": "tiny-llama",
        "model_name": "nb_tiny_chat",
        "endpoint_name": "nb-tiny-chat",
        "task": "llm/v1/chat",
        "max_tokens": "4",
        "usage_tracking": "true",
        "inference_table_catalog": "main",
        "inference_table_schema": "default",
        "tags": "team=ml",
    }
    ahead = runner.WarmKernel(nb, {})  # run 2's kernel starts while run 1 runs
    first = runner.run_notebook(nb, params, overrides, out_dir=tmp_path / "1", progress=False)
    assert first.ok, first.describe_failure()
    assert first.summary["task"] == "llm/v1/chat" and first.summary["sample_completion"]
    assert first.summary["champion_version"] == "1"
    usage = inference_tables.read_usage("nb-tiny-chat")
    assert len(usage) == 3 and (usage["output_token_count"] <= 4).all(), "three questions"
    payload = inference_tables.read_payload("main.default.nb-tiny-chat_payload")
    assert '"messages"' in payload["request"].iloc[0], "chat requests were logged"
    assert "row(s)" in first.output.read_text(), "the notebook showed the rows"

    second = runner.run_notebook(
        nb,
        params,
        {**overrides, "canary_percent": "50"},
        out_dir=tmp_path / "2",
        progress=False,
        kernel=ahead,
    )
    assert second.ok, second.describe_failure()
    text = second.output.read_text()
    assert "canary: 50% of the traffic to version 2" in text
    assert second.summary["endpoint_served_versions"] == ["2"], "promoted: all traffic"
    assert second.summary["champion_version"] == "2"


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


# ------------------------------------------------------------------ the template library


def _readme_templates() -> set[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Templates", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|\s*`(notebooks/[a-z0-9_]+\.ipynb)`\s*\|", section, re.MULTILINE))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_step_cell_is_at_most_three_lines(path):
    """A step is a call into the library; the logic lives there, the markdown teaches."""
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or "parameters" in tags or "bootstrap" in tags:
            continue
        code = [
            ln for ln in cell.source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
        ]
        assert len(code) <= 3, f"{path.name} cell {index} has {len(code)} lines:\n{cell.source}"


def test_readme_lists_every_template():
    on_disk = {f"notebooks/{p.name}" for p in NOTEBOOKS}
    assert _readme_templates() == on_disk, "edit the Templates table of README.md"


def _code_cells(name: str) -> list[str]:
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    return [
        c.source
        for c in nb.cells
        if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])
    ]


def test_gte_and_bge_share_one_implementation():
    """The two embedding notebooks differ in parameters and prose, not in code."""
    gte, bge = _code_cells("gte_embeddings"), _code_cells("bge_embeddings")
    assert [c.replace("GTE_EMBEDDINGS", "BGE_EMBEDDINGS") for c in gte] == bge
    assert specs.GTE_EMBEDDINGS.names == specs.BGE_EMBEDDINGS.names
    for name in ("gte_embeddings", "bge_embeddings"):
        assert max(len(c.splitlines()) for c in _code_cells(name)) <= 15, "thin code cells"


def _run(name: str, tmp_path: Path, overrides: dict, subdir: str = "run") -> runner.RunResult:
    return runner.run_notebook(
        REPO / "notebooks" / f"{name}.ipynb",
        REPO / "parameters" / name / "local.yaml",
        overrides,
        out_dir=tmp_path / subdir,
        progress=False,
    )


def _similarity(summary: dict, a: str, b: str) -> float:
    sentences = summary["sentences"]
    return summary["similarity_matrix"][sentences.index(a)][sentences.index(b)]


@pytest.mark.slow
def test_gte_notebook_on_minilm_puts_paraphrases_together(tmp_path):
    """Through the local endpoint, the real all-MiniLM-L6-v2 puts a cat on a mat nearer to a
    kitten on a rug than to falling stock prices."""
    result = _run(
        "gte_embeddings",
        tmp_path,
        {"model_name": "nb_gte", "endpoint_name": "nb-gte", "teardown": "true"},
    )
    assert result.ok, result.describe_failure()
    s = result.summary
    cat, kitten, stocks = (
        "a cat sits on the mat",
        "a kitten rests on a rug",
        "stock prices fell sharply",
    )
    assert _similarity(s, cat, kitten) > _similarity(s, cat, stocks)
    assert _similarity(s, cat, kitten) > 0.5 > _similarity(s, cat, stocks)
    assert s["nearest"][cat] == kitten and s["nearest"][kitten] == cat
    assert s["nearest"][stocks] == "the stock market dropped today"
    assert s["embedding_dim"] == 384
    assert s["registry_agreement"] > 0.9999, "the endpoint serves the registered model"
    assert s["served_normalized"] is True  # MiniLM's sentence-transformers config normalizes
    assert s["model_type"] == "gte-large"
    assert s["endpoint_deleted"] is True


# ------------------------------------------------------------------ bad input, clear errors


def _registered_names() -> set[str]:
    import mlflow
    from ptdeploy import state

    client = mlflow.MlflowClient(
        tracking_uri=state.tracking_uri(), registry_uri=state.tracking_uri()
    )
    return {m.name for m in client.search_registered_models()}


def _start_with_cell_defaults(notebook: str, spec, **overrides):
    """``flow.start`` in this process on the notebook's own parameters cell (no kernel)."""
    from ptdeploy.templates import flow

    nb = nbformat.read(REPO / "notebooks" / f"{notebook}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    namespace: dict = {}
    exec(cell.source, namespace)
    namespace.update(overrides)
    return flow.start(spec, namespace)


def test_embedding_template_refuses_a_causal_lm():
    """An embedding deployment of a chat/causal model fails before anything is logged."""
    from ptdeploy.errors import ModelLoggingError
    from ptdeploy.templates import embeddings, flow

    p = _start_with_cell_defaults(
        "gte_embeddings", specs.GTE_EMBEDDINGS, model_source="tiny-llama", model_name="nb_wrong"
    )
    loaded = flow.load(p)
    with pytest.raises(ModelLoggingError) as err:
        flow.log_and_register(p, loaded, task=embeddings.TASK, model_type=p.model_type)
    message = str(err.value)
    assert "task='llm/v1/embeddings' needs an embedding (encoder) model" in message
    assert "causal language model (LlamaForCausalLM)" in message
    assert "main.default.nb_wrong" not in _registered_names(), "nothing registered"


def test_chat_template_refuses_an_embedding_model():
    """The reverse: a chat (llm/v1/chat) deployment of an encoder fails before logging."""
    from ptdeploy.errors import ModelLoggingError
    from ptdeploy.templates import flow, reasoning

    p = _start_with_cell_defaults(
        "deepseek_r1_distill_llama",
        specs.DEEPSEEK_R1_DISTILL_LLAMA,
        model_source="all-minilm-l6-v2",
        model_name="nb_reverse_task",
    )
    loaded = flow.load(p)
    with pytest.raises(ModelLoggingError) as err:
        flow.log_and_register(p, loaded, task=reasoning.TASK)
    assert "task='llm/v1/chat' needs a causal language model" in str(err.value)
    assert "encoder" in str(err.value) and "llm/v1/embeddings" in str(err.value)
    assert "main.default.nb_reverse_task" not in _registered_names()


@pytest.mark.slow  # starts a kernel
def test_unity_catalog_notebook_refuses_a_base_llama_from_system_ai(tmp_path):
    result = _run(
        "deploy_from_unity_catalog",
        tmp_path,
        {"model_name": "meta_llama_3_8b", "endpoint_name": "nb-uc-base"},
    )
    assert not result.ok
    assert result.error.startswith("NotOptimizableError: system.ai.meta_llama_3_8b is a base")
    assert "Instruct" in result.error
    assert result.failed_source == "model = uc.resolve(p, w)"

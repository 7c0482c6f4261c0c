"""Shared fixtures: every test session gets its own state directory.

PTDEPLOY_HOME is set before any ptdeploy module resolves it, so tests never touch the
developer's ``.ptdeploy`` (registry, endpoints, model cache). The converted SmolLM2 cache
is shared read-only from the developer's state dir when present, to avoid converting the
GGUF again in every session (see ``ptdeploy.models.sources``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# jsonschema (through nbformat, papermill, mlflow) imports the optional rfc3987_syntax at
# import time to check the "iri" string formats; that package builds a Lark grammar on
# import, 2-3 s of CPU in every test session. No schema the tests validate uses those
# formats: tell jsonschema the package is absent (a None entry makes the import fail).
sys.modules.setdefault("rfc3987_syntax", None)
# transformers' generation module imports scikit-learn (for assisted generation with a
# confidence threshold, which nothing here uses) as soon as a model class is imported:
# 1-2 s of CPU per test session. The worker and spare processes skip it the same way
# (ptdeploy.workspace.worker.skip_unused_imports, where the choice is argued); no test
# imports scikit-learn.
sys.modules.setdefault("sklearn", None)

REPO = Path(__file__).resolve().parents[1]
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="ptdeploy-test-"))
# Converted offline models are cached outside the per-session state so the slow GGUF
# conversion happens once per machine, not once per test session.
os.environ.setdefault("PTDEPLOY_MODEL_CACHE", str(REPO / ".ptdeploy" / "models"))
os.environ["PTDEPLOY_HOME"] = str(_SESSION_HOME)


@pytest.fixture(scope="session")
def ptdeploy_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session", autouse=True)
def _stop_local_workspace_at_end():
    yield
    try:
        from ptdeploy.workspace import control

        control.stop(quiet=True)
    except Exception:
        pass


@pytest.fixture(scope="module", autouse=True)
def _no_endpoint_outlives_its_module():
    """Delete the session workspace's endpoints after each test module.

    Endpoints live on disk in the session's state and come back, each loading its worker
    process, whenever the local workspace starts again; the notebooks and jobs of one
    module would otherwise load their models again in every later module that restarts
    the workspace, and hold gigabytes while idle. No module uses another's endpoints.
    """
    yield
    from ptdeploy import state, targets
    from ptdeploy.workspace import store as st

    if targets.local_workspace_running():  # through the API: the workers stop too
        w = targets.workspace_client("local")
        for endpoint in w.serving_endpoints.list():
            w.serving_endpoints.delete(endpoint.name)
    else:  # a module that stopped the workspace left its endpoints on disk
        endpoints = st.EndpointStore(state.workspace_dir() / "endpoints")
        for record in endpoints.load_all():
            endpoints.delete(record.name)


def _register(loaded, task: str, name: str, **kwargs) -> tuple[str, str]:
    from ptdeploy import targets
    from ptdeploy.models import model_logging, registry

    targets.configure_mlflow("local")
    logged = model_logging.log_model(loaded, task=task, **kwargs)
    version = registry.register(logged.model_uri, name)
    return version.name, version.version


@pytest.fixture(scope="session")
def registered_tiny_completions(ptdeploy_home) -> tuple[str, str]:
    """tiny-llama logged for llm/v1/completions in the session registry: (name, version)."""
    from ptdeploy.models import sources

    return _register(
        sources.build_tiny_llama(), "llm/v1/completions", "main.default.tiny_completions"
    )


@pytest.fixture(scope="session")
def registered_tiny_chat(ptdeploy_home) -> tuple[str, str]:
    """tiny-llama logged for llm/v1/chat in the session registry: (name, version)."""
    from ptdeploy.models import sources

    return _register(sources.build_tiny_llama(), "llm/v1/chat", "main.default.tiny_chat")


@pytest.fixture(scope="session")
def registered_minilm(ptdeploy_home) -> tuple[str, str]:
    """The real all-MiniLM-L6-v2 logged for llm/v1/embeddings: (name, version)."""
    from ptdeploy.models import sources

    return _register(
        sources.load_model("all-minilm-l6-v2"),
        "llm/v1/embeddings",
        "main.default.minilm",
        model_type="gte-large",
    )


@pytest.fixture(scope="session")
def spark(ptdeploy_home):
    """One local Spark session for every test that needs one (start-up costs ~10-20 s)."""
    from ptdeploy.inference import batch

    session = batch.spark_session("local")
    yield session
    session.stop()


class _AppServers:
    """Local-workspace apps served in-process on loopback ports, stopped together."""

    def __init__(self) -> None:
        self.running: list = []

    def serve(self, app) -> str:
        import threading

        import uvicorn
        from ptdeploy.workspace.server import listening_socket

        sock = listening_socket(0)  # the server's own socket: TCP_NODELAY, no 40 ms stalls
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started and thread.is_alive():
            thread.join(0.01)  # not time.sleep: a test may forbid real sleeps in its thread
        self.running.append((server, thread))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def stop(self) -> None:
        for server, thread in self.running:
            server.should_exit = True
            thread.join(timeout=10)


@pytest.fixture()
def serve_app():
    """Serve a local-workspace app in-process on a loopback port: ``serve(app) -> host``.

    Client code under test then talks to it through databricks-sdk exactly as it would to
    a workspace (``WorkspaceClient(host=host, token=..., auth_type="pat")``). Stopped (and
    the app's lifespan shut down) at the end of the test.
    """
    servers = _AppServers()
    yield servers.serve
    servers.stop()


def _local_client(serve, root: Path):
    from databricks.sdk import WorkspaceClient
    from fakes import TOKEN
    from ptdeploy.workspace import store as st
    from ptdeploy.workspace.app import create_app

    def make(worker_factory, catalog, wrap=None, **app_options) -> WorkspaceClient:
        """``wrap(app)`` (e.g. ``fakes.RequestLog``) is served instead of the app;
        ``app_options`` go to ``create_app`` (e.g. ``healing``)."""
        app = create_app(
            token=TOKEN,
            store=st.EndpointStore(root / "endpoints"),
            catalog=catalog,
            worker_factory=worker_factory,
            **{"poll_interval": 0.05, **app_options},
        )
        return WorkspaceClient(host=serve(wrap(app) if wrap else app), token=TOKEN, auth_type="pat")

    return make


@pytest.fixture()
def local_client(tmp_path, serve_app):
    """``local_client(worker_factory, catalog, wrap=None, **app_options)``: the local
    workspace's real app, served in-process with the given fakes (``tests/fakes.py``), as
    a ``WorkspaceClient``."""
    return _local_client(serve_app, tmp_path)


@pytest.fixture(scope="module")
def module_local_client(tmp_path_factory):
    """``local_client`` for a whole test module: for tests that only query endpoints
    (their state does not change), so the app starts once."""
    servers = _AppServers()
    yield _local_client(servers.serve, tmp_path_factory.mktemp("workspace"))
    servers.stop()

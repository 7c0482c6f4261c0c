"""Where ptdeploy keeps local state: registry, artifacts, model cache, local workspace.

One directory, whatever the working directory, so a notebook run from ``notebooks/``,
a test run from the repository root and ``ptdeploy workspace start`` from anywhere all
see the same registry and endpoints. MLflow's own default (``./mlflow.db`` and
``./mlruns`` in the current directory) would split them.

Resolution order: ``$PTDEPLOY_HOME`` if set, else ``<project root>/.ptdeploy`` when the
package runs from a checkout (editable install), else ``~/.ptdeploy``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

ENV_VAR = "PTDEPLOY_HOME"


def project_root() -> Path | None:
    """The checkout this package runs from, or None when installed elsewhere."""
    root = Path(__file__).resolve().parents[2]
    return (
        root
        if (root / "pyproject.toml").is_file() and (root / "lib" / "ptdeploy").is_dir()
        else None
    )


def notebooks_dir() -> Path:
    """The template notebooks: ``notebooks/`` of the checkout (or of the current directory)."""
    return (project_root() or Path.cwd()) / "notebooks"


def parameters_dir() -> Path:
    """The parameters files: ``parameters/<notebook>/<target>.yaml``."""
    return (project_root() or Path.cwd()) / "parameters"


def state_dir() -> Path:
    """The state directory (created on first use), as an absolute path."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
    else:
        root = project_root()
        path = root / ".ptdeploy" if root else Path.home() / ".ptdeploy"
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def registry_db() -> Path:
    """The SQLite file that holds the local MLflow tracking store and model registry."""
    return state_dir() / "mlflow.db"


def tracking_uri() -> str:
    """MLflow tracking (and registry) URI of the local target."""
    return f"sqlite:///{registry_db()}"


def artifacts_dir() -> Path:
    """Root of run and model artifacts of the local target."""
    path = state_dir() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_cache_dir() -> Path:
    """Cache of offline models converted once (e.g. SmolLM2 GGUF -> safetensors).

    ``$PTDEPLOY_MODEL_CACHE`` overrides it, so throwaway state directories (tests) can
    share one converted copy instead of converting again.
    """
    env = os.environ.get("PTDEPLOY_MODEL_CACHE")
    path = Path(env).expanduser().resolve() if env else state_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def workspace_dir() -> Path:
    """State of the local workspace server: endpoints, token, pid and port files."""
    path = state_dir() / "workspace"
    path.mkdir(parents=True, exist_ok=True)
    return path


def gateway_table_path(table: str, workspace: Path | None = None) -> Path:
    """The JSON-lines file of AI Gateway table ``table`` (a checked three-level name) in the
    local workspace's state: the server appends rows, ``inference_tables`` reads them."""
    return (workspace or workspace_dir()) / "tables" / f"{table}.jsonl"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader, a concurrent writer or a crash sees the
    old file or the new one, never a mix: a temporary file in the same folder, flushed to
    disk, then renamed over ``path`` (``os.replace`` is atomic on POSIX). The temporary
    file is removed if anything fails; the error is raised as it came."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

"""A Databricks-faithful ``dbutils`` for offline rehearsal: widgets, job task values, secrets.

On Databricks the notebook gets ``dbutils`` from the runtime. Offline, the job rehearsal
(``ptdeploy job run``) and the tests put this one in the kernel's namespace, so the
notebooks take exactly the code path they take on a cluster. Each rule below follows the
Databricks documentation and cites it; where the documentation is silent the behaviour of
the runtime is described and marked as such.

Standard library only, on purpose: the bootstrap rehearsal loads this file by path in a
kernel where ``ptdeploy`` itself is not importable yet (then ``errors.py``, standard
library only too, is loaded from the package folder). For the same reason the errors are the exception
types Databricks raises (``TypeError``, ``ValueError``, ``InputWidgetNotDefined``).

- Widgets: https://docs.databricks.com/notebooks/widgets.html and the dbutils reference
  https://docs.databricks.com/dev-tools/databricks-utils.html#widgets-utility-dbutilswidgets
- Task values: https://docs.databricks.com/jobs/task-values.html and
  https://docs.databricks.com/dev-tools/databricks-utils.html#taskvalues-subutility-dbutilsjobstaskvalues
- Secrets: https://docs.databricks.com/security/secrets/index.html and secret redaction
  https://docs.databricks.com/security/secrets/redaction.html
- restartPython: https://docs.databricks.com/libraries/restart-python-process.html
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from ptdeploy.errors import InputWidgetNotDefined
except ImportError:  # loaded by path in a kernel where ptdeploy is not importable yet
    _errors_spec = importlib.util.spec_from_file_location(
        "_ptdeploy_offline_errors", Path(__file__).resolve().parents[1] / "errors.py"
    )
    _errors = importlib.util.module_from_spec(_errors_spec)
    _errors_spec.loader.exec_module(_errors)
    InputWidgetNotDefined = _errors.InputWidgetNotDefined

# The environment variable the job rehearsal sets: a JSON file describing the task run.
CONTEXT_ENV = "PTDEPLOY_DBUTILS_CONTEXT"
# The local secrets file (owner-only), ``{"scope": {"key": "value"}}``.
SECRETS_ENV = "PTDEPLOY_SECRETS_FILE"
# "The size of the JSON representation of the value cannot exceed 48 KiB."
# https://docs.databricks.com/jobs/task-values.html
TASK_VALUE_MAX_BYTES = 48 * 1024
# "Retrieved secrets are redacted from notebook output"
# https://docs.databricks.com/security/secrets/redaction.html
REDACTED = "[REDACTED]"
# Secret scope names: "alphanumeric characters, dashes, underscores, @, and periods, and may
# not exceed 128 characters" (https://docs.databricks.com/security/secrets/index.html).
_SCOPE_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
# Secret keys: "alphanumeric characters, dashes, underscores, and periods" (same page).
_SECRET_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass
class TaskContext:
    """Where a notebook runs: interactively (``job_run_dir`` None) or as one job task."""

    task_key: str | None = None
    job_run_dir: str | None = None  # task values of every task of this run live here
    task_keys: list[str] = field(default_factory=list)  # every task of the job
    parameters: dict[str, str] = field(default_factory=dict)  # job + task parameters

    @property
    def in_job(self) -> bool:
        return self.job_run_dir is not None and self.task_key is not None

    @classmethod
    def from_file(cls, path: str | Path) -> TaskContext:
        data = json.loads(Path(path).read_text())
        return cls(
            task_key=data.get("task_key"),
            job_run_dir=data.get("job_run_dir"),
            task_keys=list(data.get("task_keys") or []),
            parameters={str(k): str(v) for k, v in (data.get("parameters") or {}).items()},
        )

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.__dict__, indent=1))


# ------------------------------------------------------------------ widgets


class Widgets:
    """``dbutils.widgets``: values are strings; job parameters override widget defaults."""

    def __init__(self, bound: dict[str, str] | None = None) -> None:
        # Values a job run passes ("base_parameters" and job parameters) are bound to the
        # widgets of the same name, whatever default the notebook creates them with.
        self._bound = dict(bound or {})
        self._defaults: dict[str, str] = {}
        self._choices: dict[str, list[str]] = {}
        self._labels: dict[str, str | None] = {}

    @staticmethod
    def _check_str(what: str, value: Any) -> None:
        # Widget names, defaults and choices are strings; widgets never hold typed values.
        if not isinstance(value, str):
            raise TypeError(f"widget {what} must be a str, got {type(value).__name__}: {value!r}")

    def text(self, name: str, defaultValue: str, label: str | None = None) -> None:  # noqa: N803
        self._check_str("name", name)
        self._check_str("defaultValue", defaultValue)
        self._defaults[name], self._labels[name] = defaultValue, label
        self._choices.pop(name, None)

    def dropdown(
        self,
        name: str,
        defaultValue: str,  # noqa: N803
        choices: list[str],
        label: str | None = None,
    ) -> None:
        self._check_str("name", name)
        self._check_str("defaultValue", defaultValue)
        for choice in choices:
            self._check_str("choice", choice)
        if defaultValue not in choices:
            # The runtime refuses a dropdown whose default is not one of its choices.
            raise ValueError(
                f"widget {name!r}: default value {defaultValue!r} is not one of its choices "
                f"{list(choices)!r}"
            )
        self._defaults[name], self._labels[name] = defaultValue, label
        self._choices[name] = list(choices)

    combobox = dropdown  # same contract for what the rehearsal needs

    def get(self, name: str) -> str:
        """The bound job parameter, else the widget's value; a string, always."""
        if name in self._bound:
            return self._bound[name]
        if name in self._defaults:
            return self._defaults[name]
        raise InputWidgetNotDefined(
            f"No input widget named {name} is defined (create it with dbutils.widgets.text or "
            "pass it as a job parameter)"
        )

    def getArgument(self, name: str, defaultValue: str | None = None) -> str | None:  # noqa: N802, N803
        try:
            return self.get(name)
        except InputWidgetNotDefined:
            return defaultValue

    def getAll(self) -> dict[str, str]:  # noqa: N802
        """Every widget and bound parameter, name -> string value (DBR 13.3 LTS and above)."""
        return {**self._defaults, **self._bound}

    def remove(self, name: str) -> None:
        if name not in self._defaults:
            raise InputWidgetNotDefined(f"No input widget named {name} is defined")
        for table in (self._defaults, self._choices, self._labels):
            table.pop(name, None)

    def removeAll(self) -> None:  # noqa: N802
        self._defaults.clear()
        self._choices.clear()
        self._labels.clear()


# ------------------------------------------------------------------ task values


class TaskValues:
    """``dbutils.jobs.taskValues``, stored as one JSON file per task under the job run."""

    def __init__(self, context: TaskContext) -> None:
        self._context = context
        self._local: dict[str, Any] = {}  # outside a job: kept, never shared

    def _file(self, task_key: str) -> Path:
        assert self._context.job_run_dir is not None
        return Path(self._context.job_run_dir) / "task_values" / f"{task_key}.json"

    def set(self, key: str, value: Any) -> None:
        # "Task value keys must be strings." "Only values that can be expressed as valid JSON
        # are permitted. The size of the JSON representation of the value cannot exceed
        # 48 KiB." https://docs.databricks.com/jobs/task-values.html
        if not isinstance(key, str):
            raise TypeError(f"task value key must be a str, got {type(key).__name__}")
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"task value {key!r} is not JSON-serializable ({type(value).__name__}): {exc}"
            ) from None
        size = len(text.encode())
        if size > TASK_VALUE_MAX_BYTES:
            raise ValueError(
                f"task value {key!r} is {size} bytes as JSON; the limit is "
                f"{TASK_VALUE_MAX_BYTES} bytes (48 KiB)"
            )
        if not self._context.in_job:
            self._local[key] = json.loads(text)
            return
        path = self._file(self._context.task_key or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        values = json.loads(path.read_text()) if path.is_file() else {}
        values[key] = json.loads(text)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(values))
        tmp.replace(path)

    def get(
        self,
        taskKey: str,  # noqa: N803
        key: str,
        default: Any = None,
        debugValue: Any = None,  # noqa: N803
    ) -> Any:
        """A value set by task ``taskKey`` of this job run.

        Outside a job, ``debugValue`` is returned, and a ``debugValue`` of None raises
        ``TypeError`` (the dbutils reference: "debugValue ... cannot be None", and what the
        runtime does). Inside a job: an unknown ``taskKey`` raises ``ValueError``; an unset
        key returns ``default``, and raises ``ValueError`` when there is no default.
        """
        if not self._context.in_job:
            if debugValue is None:
                raise TypeError(
                    "Must pass debugValue when calling get outside of a job context. "
                    "debugValue cannot be None."
                )
            return debugValue
        if self._context.task_keys and taskKey not in self._context.task_keys:
            raise ValueError(
                f"Could not find task {taskKey!r} in this job; its tasks are "
                f"{', '.join(self._context.task_keys)}"
            )
        path = self._file(taskKey)
        values = json.loads(path.read_text()) if path.is_file() else {}
        if key in values:
            return values[key]
        if default is not None:
            return default
        raise ValueError(
            f"task {taskKey!r} set no task value {key!r} in this run (did it run, and before "
            "this task? a task reads only the values of tasks it depends on), and no default "
            "was given"
        )


@dataclass
class Jobs:
    taskValues: TaskValues  # noqa: N815


# ------------------------------------------------------------------ secrets


def secrets_file() -> Path:
    """``$PTDEPLOY_SECRETS_FILE``, else ``<PTDEPLOY_HOME or ~/.ptdeploy>/secrets.json``."""
    explicit = os.environ.get(SECRETS_ENV)
    if explicit:
        return Path(explicit)
    home = os.environ.get("PTDEPLOY_HOME")
    return (Path(home) if home else Path.home() / ".ptdeploy") / "secrets.json"


class SecretValue(str):
    """A secret as ``dbutils.secrets.get`` returns it: a plain, usable string, whose
    ``repr`` (what a notebook shows for a cell's last expression) is ``[REDACTED]``."""

    def __repr__(self) -> str:
        return REDACTED


class _RedactingStream:
    """Wraps ``sys.stdout``/``sys.stderr``: every known secret value becomes ``[REDACTED]``
    in what the notebook prints, as Databricks redacts secrets from notebook output."""

    def __init__(self, stream: Any, values: set[str]) -> None:
        self._stream = stream
        self._values = values

    def write(self, text: str) -> int:
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_REVEALED: set[str] = set()


def _redact_output(value: str) -> None:
    _REVEALED.add(value)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, _RedactingStream):
            setattr(sys, name, _RedactingStream(stream, _REVEALED))


class Secrets:
    """``dbutils.secrets`` over a local, owner-only JSON file ``{scope: {key: value}}``."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path

    @property
    def path(self) -> Path:
        return self._path or secrets_file()

    def _load(self) -> dict[str, dict[str, str]]:
        path = self.path
        if not path.is_file():
            return {}
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(
                f"secrets file {path} is readable by others (mode {oct(mode)}); "
                f"run: chmod 600 {path}"
            )
        return json.loads(path.read_text() or "{}")

    def get(self, scope: str, key: str) -> SecretValue:
        secrets = self._load()
        if scope not in secrets:
            raise ValueError(
                f"Secret does not exist with scope: {scope} and key: {key} (no scope {scope!r}; "
                f"create it: ptdeploy secrets put {scope} {key}, or on Databricks: "
                f"databricks secrets create-scope {scope} && databricks secrets put-secret "
                f"{scope} {key})"
            )
        if key not in secrets[scope]:
            raise ValueError(
                f"Secret does not exist with scope: {scope} and key: {key} (create it: "
                f"ptdeploy secrets put {scope} {key}, or on Databricks: databricks secrets "
                f"put-secret {scope} {key})"
            )
        value = secrets[scope][key]
        _redact_output(value)
        return SecretValue(value)

    def getBytes(self, scope: str, key: str) -> bytes:  # noqa: N802
        return str.__str__(self.get(scope, key)).encode()

    def list(self, scope: str) -> list[str]:
        secrets = self._load()
        if scope not in secrets:
            raise ValueError(f"Scope {scope} does not exist")
        return sorted(secrets[scope])

    def listScopes(self) -> list[str]:  # noqa: N802
        return sorted(self._load())


def put_secret(scope: str, key: str, value: str, path: Path | None = None) -> Path:
    """Store a local secret (the file is created owner-only, 0600); return the file."""
    if not _SCOPE_NAME.match(scope):
        raise ValueError(
            f"secret scope {scope!r}: letters, digits, '-', '_', '.', '@', at most 128 characters"
        )
    if not _SECRET_KEY.match(key):
        raise ValueError(f"secret key {key!r}: letters, digits, '-', '_', '.', at most 128")
    if not value:
        raise ValueError(f"secret {scope}/{key}: the value is empty")
    secrets = Secrets(path)
    target = secrets.path
    data = secrets._load()
    data.setdefault(scope, {})[key] = value
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.chmod(tmp, 0o600)
    tmp.replace(target)
    return target


_SECRET_REF = re.compile(r"^\{\{secrets/([^/{}]+)/([^/{}]+)\}\}$")


def secret_reference(value: str) -> tuple[str, str] | None:
    """``(scope, key)`` of a ``{{secrets/<scope>/<key>}}`` reference, as Databricks reads
    them in ``spark_env_vars``; None for a plain value.
    https://docs.databricks.com/security/secrets/secrets-spark-conf-env-var.html"""
    match = _SECRET_REF.match(value.strip()) if isinstance(value, str) else None
    return (match.group(1), match.group(2)) if match else None


# ------------------------------------------------------------------ library


class Library:
    """``dbutils.library.restartPython()``: Databricks restarts the notebook's Python
    process so packages installed with ``%pip`` are imported fresh, and the notebook's
    variables are lost (https://docs.databricks.com/libraries/restart-python-process.html).

    Offline a kernel cannot restart itself and go on with the next cell, so this does the
    part that matters for the next cells: the user's variables are dropped, modules imported
    from the notebook since start are forgotten, and the import caches are refreshed, so the
    freshly installed packages import."""

    def __init__(self, namespace: dict[str, Any] | None = None) -> None:
        self._namespace = namespace
        self._modules_at_start = set(sys.modules)
        self.restarts = 0

    def restartPython(self) -> None:  # noqa: N802
        self.restarts += 1
        ns = self._namespace
        if ns is not None:
            keep = {"dbutils", "In", "Out", "get_ipython", "exit", "quit", "open"}
            for name in [n for n in ns if not n.startswith("_") and n not in keep]:
                del ns[name]
        for name in set(sys.modules) - self._modules_at_start:
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
        import site

        for directory in site.getsitepackages():
            if directory not in sys.path:
                site.addsitedir(directory)


# ------------------------------------------------------------------ dbutils


class _NoContext:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"offline dbutils: no Databricks notebook context ({name}; no JVM)")


class _NoJvm:
    """Stands for the runtime's Py4J entry point (``dbutils.entry_point``), which MLflow
    reaches for at import when ``DATABRICKS_RUNTIME_VERSION`` is set. Offline there is no
    JVM: ``getDbutils().notebook()`` exists, anything asked of it raises."""

    def getDbutils(self) -> Any:  # noqa: N802
        return self

    def notebook(self) -> _NoContext:
        return _NoContext()

    def getLogger(self) -> Any:  # noqa: N802
        raise RuntimeError("offline dbutils: no Databricks logger (no JVM)")


@dataclass
class Notebook:
    entry_point: Any


class OfflineDbutils:
    """What a notebook finds as ``dbutils`` on Databricks, for offline runs."""

    offline = True  # lets ptdeploy tell it from the runtime's own

    def __init__(
        self,
        context: TaskContext | None = None,
        namespace: dict[str, Any] | None = None,
        secrets_path: Path | None = None,
    ) -> None:
        self.context = context or TaskContext()
        self.widgets = Widgets(self.context.parameters)
        self.jobs = Jobs(TaskValues(self.context))
        self.secrets = Secrets(secrets_path)
        self.library = Library(namespace)
        self.entry_point = _NoJvm()
        self.notebook = Notebook(self.entry_point)

    @classmethod
    def from_env(cls, namespace: dict[str, Any] | None = None) -> OfflineDbutils:
        """The task context named by ``$PTDEPLOY_DBUTILS_CONTEXT``, or an interactive one."""
        path = os.environ.get(CONTEXT_ENV)
        context = TaskContext.from_file(path) if path else TaskContext()
        return cls(context, namespace)

    def __repr__(self) -> str:
        where = f"job task {self.context.task_key!r}" if self.context.in_job else "interactive"
        return f"<offline dbutils: {where}>"


# The IPython startup file the rehearsal installs: it loads this module by path (ptdeploy
# may not be importable yet: the bootstrap cell installs it) and defines ``dbutils``.
STARTUP_SCRIPT = """\
# Installed by ptdeploy's job rehearsal: a Databricks-faithful dbutils in the namespace.
import importlib.util as _ilu
import sys as _sys
_spec = _ilu.spec_from_file_location("_ptdeploy_offline_dbutils", {path!r})
_mod = _sys.modules[_spec.name] = _ilu.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
dbutils = _mod.OfflineDbutils.from_env(get_ipython().user_ns)
del _ilu, _sys, _spec, _mod
"""


def write_ipython_startup(ipython_dir: Path) -> Path:
    """An ``IPYTHONDIR`` whose default profile defines ``dbutils`` at kernel start."""
    startup = Path(ipython_dir) / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    script = startup / "00-ptdeploy-dbutils.py"
    script.write_text(STARTUP_SCRIPT.format(path=str(Path(__file__).resolve())))
    return script

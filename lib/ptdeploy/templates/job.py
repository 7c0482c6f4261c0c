"""Rehearse a bundle job offline: ``ptdeploy job run <template> --target local``.

The job is run exactly as ``resources/<template>.job.yml`` declares it, with Databricks'
semantics where the rehearsal can copy them:

- tasks in dependency order (``depends_on``), a cycle or an unknown task refused before
  anything runs (https://docs.databricks.com/jobs/run-if.html: "Databricks runs upstream
  tasks before running downstream tasks");
- each task in its own kernel, with its parameters delivered as Databricks delivers them:
  job parameters pushed down to every notebook task, taking precedence over the task's
  ``base_parameters`` (https://docs.databricks.com/jobs/job-parameters.html), read by the
  notebook through ``dbutils.widgets`` — the faithful offline ``ptdeploy.templates.dbutils``, put in
  the kernel's namespace by an IPython startup file;
- task values handed over through ``dbutils.jobs.taskValues`` (one JSON file per task of
  the run);
- ``run_if`` (default ``ALL_SUCCESS``): a task whose condition is not met is
  ``UPSTREAM_FAILED`` (``EXCLUDED`` for the failure-handling conditions), as
  https://docs.databricks.com/jobs/run-if.html describes;
- the job cluster's ``spark_env_vars`` set in each kernel, ``{{secrets/<scope>/<key>}}``
  resolved from the local secrets file
  (https://docs.databricks.com/security/secrets/secrets-spark-conf-env-var.html).

With ``--target local`` the job parameters take their values from
``parameters/<template>/local.yaml`` (offline models, the local workspace), as
``databricks bundle run --params`` would override them; ``-p NAME VALUE`` overrides more.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ptdeploy.errors import JobDefinitionError
from ptdeploy.templates import bundle
from ptdeploy.templates.dbutils import (
    CONTEXT_ENV,
    Secrets,
    TaskContext,
    secret_reference,
    write_ipython_startup,
)
from ptdeploy.templates.specs import spec_for

# Run-if conditions and what a task becomes when its condition is not met.
# https://docs.databricks.com/jobs/run-if.html
RUN_IF_DEFAULT = "ALL_SUCCESS"
_NOT_MET = {
    "ALL_SUCCESS": "UPSTREAM_FAILED",
    "AT_LEAST_ONE_SUCCESS": "UPSTREAM_FAILED",
    "NONE_FAILED": "UPSTREAM_FAILED",
    "ALL_DONE": "UPSTREAM_FAILED",
    "AT_LEAST_ONE_FAILED": "EXCLUDED",
    "ALL_FAILED": "EXCLUDED",
}
SUCCESS, FAILED, UPSTREAM_FAILED, EXCLUDED = "SUCCESS", "FAILED", "UPSTREAM_FAILED", "EXCLUDED"
_FAILED_STATES = {FAILED, UPSTREAM_FAILED}
_VAR = re.compile(r"\$\{var\.([A-Za-z0-9_-]+)\}")


@dataclass
class TaskRun:
    task_key: str
    status: str
    seconds: float = 0.0
    output: Path | None = None
    detail: str = ""
    task_values: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobRun:
    template: str
    run_dir: Path
    tasks: list[TaskRun]

    @property
    def ok(self) -> bool:
        return all(t.status not in _FAILED_STATES for t in self.tasks)

    def table(self) -> str:
        rows = [("task", "status", "seconds", "detail")]
        for t in self.tasks:
            rows.append((t.task_key, t.status, f"{t.seconds:.1f}", t.detail[:200]))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
        lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
        total = sum(t.seconds for t in self.tasks)
        failed = [t.task_key for t in self.tasks if t.status in _FAILED_STATES]
        lines.append(
            f"job {self.template}: {'SUCCESS' if self.ok else 'FAILED'} in {total:.1f}s"
            + (f" ({', '.join(failed)} not successful)" if failed else "")
            + f"; run folder {self.run_dir}"
        )
        return "\n".join(lines)


# ------------------------------------------------------------------ the job definition


def bundle_variables(root: Path, overrides: dict[str, str] | None = None) -> dict[str, str | None]:
    """The bundle's variables: defaults from databricks.yml, then ``--var`` values."""
    import yaml

    data = yaml.safe_load((root / "databricks.yml").read_text()) or {}
    variables: dict[str, str | None] = {}
    for name, spec in (data.get("variables") or {}).items():
        default = (spec or {}).get("default")
        variables[name] = None if default is None else str(default)
    for name, value in (overrides or {}).items():
        if name not in variables:
            raise JobDefinitionError(
                f"--var {name}: the bundle declares no such variable; declared: "
                f"{', '.join(variables)}"
            )
        variables[name] = value
    return variables


def substitute(value: Any, variables: dict[str, str | None], where: str) -> Any:
    """``${var.name}`` replaced in strings, lists and mappings; an empty variable refused."""
    if isinstance(value, dict):
        return {k: substitute(v, variables, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables, where) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise JobDefinitionError(f"{where}: ${{var.{name}}} is not declared in databricks.yml")
        if variables[name] in (None, ""):
            raise JobDefinitionError(
                f"{where}: bundle variable {name!r} has no value; pass --var {name}=... "
                "(or give it a default in databricks.yml)"
            )
        return str(variables[name])

    return _VAR.sub(one, value)


def load_job(template: str, root: Path) -> dict[str, Any]:
    """``resources.jobs.<template>`` of ``resources/<template>.job.yml``."""
    import yaml

    path = root / "resources" / f"{template}.job.yml"
    if not path.is_file():
        known = sorted(p.name.removesuffix(".job.yml") for p in (root / "resources").glob("*.yml"))
        raise JobDefinitionError(
            f"no job file {path}; jobs: {', '.join(known)} (write them with `ptdeploy bundle`)"
        )
    jobs = ((yaml.safe_load(path.read_text()) or {}).get("resources") or {}).get("jobs") or {}
    if template not in jobs:
        raise JobDefinitionError(f"{path} defines no job {template!r} (jobs: {', '.join(jobs)})")
    return jobs[template]


def task_order(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tasks so that each comes after its ``depends_on``; unknown or cyclic refused."""
    by_key = {t["task_key"]: t for t in tasks}
    if len(by_key) != len(tasks):
        raise JobDefinitionError("two tasks share a task_key")
    for t in tasks:
        for dep in t.get("depends_on") or []:
            if dep["task_key"] not in by_key:
                raise JobDefinitionError(
                    f"task {t['task_key']!r} depends on {dep['task_key']!r}, which is not a task "
                    f"of the job ({', '.join(by_key)})"
                )
    ordered: list[dict[str, Any]] = []
    done: set[str] = set()
    while len(ordered) < len(tasks):
        ready = [
            t
            for t in tasks
            if t["task_key"] not in done
            and all(d["task_key"] in done for d in t.get("depends_on") or [])
        ]
        if not ready:
            left = [t["task_key"] for t in tasks if t["task_key"] not in done]
            raise JobDefinitionError(f"tasks {', '.join(left)} depend on each other in a cycle")
        for t in ready:
            ordered.append(t)
            done.add(t["task_key"])
    return ordered


def run_if_status(task: dict[str, Any], states: dict[str, str]) -> str | None:
    """None when the task runs; else the status it gets (Databricks' run-if rules)."""
    deps = [states[d["task_key"]] for d in task.get("depends_on") or []]
    if not deps:
        return None
    if all(s == EXCLUDED for s in deps):
        return EXCLUDED  # "If all task dependencies are excluded, the task is also excluded"
    condition = str(task.get("run_if") or RUN_IF_DEFAULT)
    if condition not in _NOT_MET:
        raise JobDefinitionError(
            f"task {task['task_key']!r}: run_if {condition!r}; valid: {', '.join(_NOT_MET)}"
        )
    ok = [s in (SUCCESS, EXCLUDED) for s in deps]  # excluded tasks count as successful
    met = {
        "ALL_SUCCESS": all(ok),
        "AT_LEAST_ONE_SUCCESS": any(ok),
        "NONE_FAILED": not any(s in _FAILED_STATES for s in deps) and any(ok),
        "ALL_DONE": True,
        "AT_LEAST_ONE_FAILED": any(s in _FAILED_STATES for s in deps),
        "ALL_FAILED": all(s in _FAILED_STATES for s in deps),
    }[condition]
    return None if met else _NOT_MET[condition]


def local_job_parameters(
    template: str, job: dict[str, Any], root: Path, target: str, overrides: dict[str, str]
) -> dict[str, str]:
    """The job parameters for this rehearsal: the job's defaults, the target's parameters
    file (``parameters/<template>/<target>.yaml``) over them, then ``-p`` overrides; all
    checked by the notebook's spec before any task starts."""
    from ptdeploy.templates.parameters import load_parameters_file

    params = bundle.job_parameters(job)
    spec = spec_for(template)
    source = root / "parameters" / template / f"{target}.yaml"
    if target != "databricks":
        if not source.is_file():
            raise JobDefinitionError(f"no parameters file {source} for target {target!r}")
        for name, value in load_parameters_file(source).items():
            if name in params:
                params[name] = spec.get(name).widget_text(spec.get(name).convert(value))
    undeclared = set(overrides) - set(spec.names)
    if undeclared:
        raise spec.unknown(undeclared)
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise JobDefinitionError(
            f"-p {', '.join(unknown)}: not a job parameter of {template} (each task sets its "
            "own step)"
        )
    params.update({k: str(v) for k, v in overrides.items()})
    spec.validate(params, require_all=False)
    return params


# ------------------------------------------------------------------ the rehearsal


def _spark_env(cluster: dict[str, Any], secrets: Secrets) -> tuple[dict[str, str], list[str]]:
    """Environment of a task from its cluster's ``spark_env_vars``; warnings for secrets
    that do not exist locally (offline models need none; on Databricks the cluster would
    not start)."""
    env: dict[str, str] = {}
    notes = []
    for name, value in (cluster.get("spark_env_vars") or {}).items():
        ref = secret_reference(str(value))
        if ref is None:
            env[name] = str(value)
            continue
        try:
            env[name] = str.__str__(secrets.get(*ref))
        except ValueError:
            notes.append(
                f"{name}: secret {ref[0]}/{ref[1]} is not in the local secrets file "
                f"({secrets.path}); left unset. On Databricks the job cluster would not start "
                f"without it: databricks secrets put-secret {ref[0]} {ref[1]}"
            )
    return env, notes


def rehearse_job(
    template: str,
    *,
    target: str = "local",
    overrides: dict[str, str] | None = None,
    variables: dict[str, str] | None = None,
    out_dir: str | Path = "out",
    root: Path | None = None,
    progress: bool = False,
    echo: Any = print,
) -> JobRun:
    """Run every task of the template's job, in order, each in its own kernel."""
    from ptdeploy.state import project_root

    root = Path(root or project_root() or Path.cwd())
    job = load_job(template, root)
    variables_ = bundle_variables(root, variables)
    tasks = task_order(job.get("tasks") or [])
    params = local_job_parameters(template, job, root, target, overrides or {})
    clusters = {
        c["job_cluster_key"]: substitute(
            c.get("new_cluster") or {}, variables_, f"job_clusters.{c['job_cluster_key']}"
        )
        for c in job.get("job_clusters") or []
    }
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    run_dir = (Path(out_dir) / "jobs" / f"{template}-{stamp}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    ipython_dir = run_dir / "ipython"
    write_ipython_startup(ipython_dir)
    secrets = Secrets()
    task_keys = [t["task_key"] for t in tasks]
    states: dict[str, str] = {}
    results: list[TaskRun] = []
    warned: set[str] = set()
    from ptdeploy.templates.runner import WarmKernel, run_notebook

    # Every task's notebook and kernel environment, known before the first one runs: a
    # task that cannot be rehearsed fails the job before anything ran, and the next
    # task's kernel starts (WarmKernel) while the current task runs.
    prepared = []
    for task in tasks:
        key = task["task_key"]
        nb_task = task.get("notebook_task")
        if not nb_task:
            raise JobDefinitionError(f"task {key!r}: only notebook tasks can be rehearsed")
        notebook = (root / "resources" / nb_task["notebook_path"]).resolve()
        if notebook.suffix != ".ipynb":
            notebook = notebook.with_suffix(".ipynb")
        task_params = {**task_params_of(task), **params}  # job parameters take precedence
        context_file = run_dir / f"{key}.context.json"
        TaskContext(key, str(run_dir), task_keys, task_params).write(context_file)
        env, notes = _spark_env(clusters.get(task.get("job_cluster_key", ""), {}), secrets)
        for note in notes:
            if note not in warned:
                warned.add(note)
                echo(f"[job {template}] warning: {note}")
        env.update({"IPYTHONDIR": str(ipython_dir), CONTEXT_ENV: str(context_file)})
        prepared.append((task, notebook, env))

    warm: WarmKernel | None = None
    try:
        for i, (task, notebook, env) in enumerate(prepared):
            key = task["task_key"]
            kernel, warm = warm, None
            skipped = run_if_status(task, states)
            if skipped:
                if kernel is not None:
                    kernel.shut_down()
                states[key] = skipped
                results.append(TaskRun(key, skipped, detail="a dependency did not succeed"))
                echo(f"[job {template}] {key}: {skipped}")
                continue
            if i + 1 < len(prepared):
                warm = WarmKernel(prepared[i + 1][1], prepared[i + 1][2])
            echo(f"[job {template}] {key} ...")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = run_notebook(
                    notebook,
                    out_dir=run_dir,
                    env=env,
                    output_name=f"{key}.ipynb",
                    progress=progress,
                    kernel=kernel,
                )
            values_file = run_dir / "task_values" / f"{key}.json"
            values = json.loads(values_file.read_text()) if values_file.is_file() else {}
            status = SUCCESS if result.ok else FAILED
            detail = (
                str(result.output) if result.ok else f"cell {result.failing_cell()}: {result.error}"
            )
            states[key] = status
            results.append(TaskRun(key, status, result.seconds, result.output, detail, values))
            echo(f"[job {template}] {key}: {status} in {result.seconds:.1f}s")
    finally:
        if warm is not None:
            warm.shut_down()
    return JobRun(template, run_dir, results)


def task_params_of(task: dict[str, Any]) -> dict[str, str]:
    base = (task.get("notebook_task") or {}).get("base_parameters") or {}
    return {str(k): str(v) for k, v in base.items()}

"""Run template notebooks headless with papermill: one, or all of them for a target.

Parameters go through the same spec as inside the notebook, *before* a kernel starts:
an unknown name or a bad value fails in a second with the parameter named, not after
the imports. A failed run keeps its output notebook (with the traceback in the failing
cell) and names that cell.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptdeploy import targets
from ptdeploy.errors import PtdeployError
from ptdeploy.state import notebooks_dir, parameters_dir
from ptdeploy.templates.notebook import read_summary
from ptdeploy.templates.parameters import load_parameters_file
from ptdeploy.templates.specs import spec_for


@dataclass
class RunResult:
    notebook: str
    output: Path
    ok: bool
    seconds: float
    summary: dict[str, Any] | None = None
    failed_cell: int | None = None  # execution count: "In [n]" in the output notebook
    error: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    failed_cell_index: int | None = None  # position in the output notebook (0-based)
    failed_source: str | None = None  # first line of the failing cell's code

    def failing_cell(self) -> str:
        """``In [5] `model = uc.resolve(p, w)``` — how a reader finds the failing cell."""
        if self.failed_cell is None and self.failed_cell_index is None:
            return ""
        where = f"In [{self.failed_cell}]" if self.failed_cell is not None else ""
        if self.failed_cell_index is not None:
            where += f" (cell #{self.failed_cell_index})"
        if self.failed_source:
            where += f" `{self.failed_source}`"
        return where.strip()

    def describe_failure(self) -> str:
        cell = self.failing_cell()
        where = f" in cell {cell}" if cell else ""
        return f"{self.notebook} failed{where}: {self.error} (output kept: {self.output})"


def resolve_parameters(
    notebook: str | Path, params_file: str | Path | None, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """File values, then ``-p`` overrides, converted and checked by the notebook's spec."""
    spec = spec_for(str(notebook))
    values: dict[str, Any] = {}
    if params_file:
        values.update(load_parameters_file(params_file))
    values.update(overrides or {})
    return spec.validate(values, require_all=False)


def run_notebook(
    notebook: str | Path,
    params_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    out_dir: str | Path = "out",
    kernel_name: str = "python3",
    progress: bool = True,
    log_output: bool = False,
    start_timeout: int = 120,
    env: dict[str, str] | None = None,
    output_name: str | None = None,
    profile: str | None = None,
    experiment: str | None = None,
    kernel: WarmKernel | None = None,
) -> RunResult:
    """Execute ``notebook`` with papermill; never raises for a failing notebook.

    ``env`` is added to the kernel's environment (the kernel inherits this process's)
    for the run only; ``output_name`` names the executed notebook in ``out_dir``.
    ``kernel``: a kernel started ahead for this notebook (``WarmKernel``, same ``env`` and
    folder); it is used if it started, and shut down after the run.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise PtdeployError(f"notebook {notebook} does not exist")
    params = resolve_parameters(notebook, params_file, overrides)
    env = {**workspace_env(str(params.get("target", "local")), profile, experiment), **(env or {})}
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = params.get("target", "run")
    output = out_dir / (output_name or f"{notebook.stem}-{suffix}.ipynb")
    added = {"PTDEPLOY_HEADLESS": "1", **(env or {})}  # no ipywidgets in headless kernels
    saved = {name: os.environ.get(name) for name in added}
    os.environ.update(added)
    started = time.perf_counter()
    result = RunResult(notebook.stem, output, True, 0.0, parameters=params)
    km = kernel.take() if kernel is not None else None
    try:
        pm.execute_notebook(
            str(notebook),
            str(output),
            parameters=params,
            kernel_name=kernel_name,
            cwd=str(notebook.parent),
            progress_bar=progress,
            log_output=log_output,
            start_timeout=start_timeout,
            **({"km": km} if km is not None else {}),
        )
    except PapermillExecutionError as exc:
        result.ok = False
        result.failed_cell = exc.exec_count
        result.failed_cell_index = exc.cell_index
        result.failed_source = _first_code_line(exc.source)
        result.error = f"{exc.ename}: {exc.evalue}"
    finally:
        if kernel is not None:
            kernel.shut_down()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        result.seconds = time.perf_counter() - started
    if output.is_file():
        import nbformat

        result.summary = read_summary(nbformat.read(output, as_version=4))
    return result


# What every template's kernel imports in its first step (``flow.start`` configures
# MLflow): a kernel started ahead imports them while the notebook before it still runs.
# Only these: a module some tasks never import (torch, transformers: a promote task has
# no model to load) would cost those tasks CPU that two cores do not have to spare.
WARM_IMPORTS = ("ptdeploy.templates.flow", "mlflow")


class WarmKernel:
    """A kernel started ahead of its notebook, in a background thread, with
    ``WARM_IMPORTS`` done: ``run_all`` and the job rehearsal start the next notebook's
    kernel while the current one runs, so its start-up overlaps the current notebook's
    waits (an endpoint loading, a query) instead of adding to them.

    The kernel is the one papermill would start (same kernel name, folder, environment);
    the imports run as a silent execution (no execution count, no output, nothing bound
    in the user's namespace: ``exec`` in a throwaway dict), so the executed notebook is
    the same as from a fresh kernel. If anything fails here, ``take`` returns None and
    papermill starts its own kernel as before.
    """

    def __init__(
        self,
        notebook: str | Path,
        env: dict[str, str],
        kernel_name: str = "python3",
        imports: tuple[str, ...] = WARM_IMPORTS,
        timeout: float = 120,
    ) -> None:
        self.cwd = str(Path(notebook).resolve().parent)
        # The kernel's whole environment, fixed now: run_notebook sets variables in
        # os.environ for the duration of the run it is in, which must not leak into this one.
        self.env = {**os.environ, "PTDEPLOY_HEADLESS": "1", **env}
        self.kernel_name, self.imports, self.timeout = kernel_name, imports, timeout
        self.km: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._start, name="ptdeploy-warm-kernel", daemon=True
        )
        self._thread.start()

    def _start(self) -> None:
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        try:
            km = AsyncKernelManager(kernel_name=self.kernel_name)
            run_sync(km.start_kernel)(cwd=self.cwd, env=self.env)
            self.km = km
            client = km.blocking_client()
            client.start_channels()
            try:
                client.wait_for_ready(timeout=self.timeout)
                code = f"exec({'import ' + ', '.join(self.imports)!r}, {{}})"
                msg_id = client.execute(code, silent=True, store_history=False)
                reply = client.get_shell_msg(timeout=self.timeout)
                while reply["parent_header"].get("msg_id") != msg_id:
                    reply = client.get_shell_msg(timeout=self.timeout)
                if reply["content"]["status"] != "ok":
                    content = reply["content"]
                    raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}")
            finally:
                client.stop_channels()
        except BaseException as exc:  # noqa: BLE001 (a failed warm start only costs the saving)
            self.error = exc

    def take(self) -> Any:
        """The started kernel's manager (waits for the warm-up), or None if it failed."""
        self._thread.join()
        if self.error is not None:
            self.shut_down()
            return None
        return self.km

    def shut_down(self) -> None:
        """Stop the kernel (after its notebook ran, or if it will not be used)."""
        from jupyter_core.utils import run_sync

        self._thread.join()
        km, self.km = self.km, None
        if km is None:
            return
        with contextlib.suppress(Exception):
            run_sync(km.shutdown_kernel)(now=False)
        with contextlib.suppress(Exception):
            run_sync(km.cleanup_resources)()


def workspace_env(
    target: str, profile: str | None = None, experiment: str | None = None
) -> dict[str, str]:
    """Check a real workspace answers (in seconds, before any kernel starts) and return
    what the notebook's kernel needs: the profile and the MLflow experiment (default
    ``/Users/<me>/ptdeploy``). Nothing for the local target."""
    if target != targets.Target.DATABRICKS.value:
        targets.check_profile(target, profile)
        return {}
    w = targets.databricks_client(profile)
    user = targets.check_workspace(w)
    env = {targets.EXPERIMENT_ENV: experiment or targets.default_experiment(user)}
    if profile:
        env[targets.PROFILE_ENV] = profile
    print(f"workspace {w.config.host} as {user}; experiment {env[targets.EXPERIMENT_ENV]}")
    return env


def _first_code_line(source: str | None, limit: int = 80) -> str | None:
    for line in (source or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return None


def run_all(
    target: str,
    *,
    out_dir: str | Path = "out",
    overrides: dict[str, Any] | None = None,
    only: list[str] | None = None,
    progress: bool = False,
    notebooks: Path | None = None,
    parameters: Path | None = None,
    profile: str | None = None,
    experiment: str | None = None,
    keep_running: bool = False,
) -> list[RunResult]:
    """Every template with ``parameters/<notebook>/<target>.yaml``, in name order.

    All parameter sets are checked before the first notebook starts: a missing file or a
    bad value fails at once, not after the others ran. A failing notebook does not stop
    the others; its result names the failing cell.

    Target ``local``: a local workspace the run started is stopped at the end (its worker
    processes hold every endpoint's model in memory; the endpoints stay on disk and come
    back on the next start), unless ``keep_running``. One that was running before the run
    is left running.
    """
    notebooks = notebooks or notebooks_dir()
    parameters = parameters or parameters_dir()
    found = sorted(notebooks.glob("*.ipynb"))
    if only:
        unknown = sorted(set(only) - {nb.stem for nb in found})
        if unknown:
            raise PtdeployError(
                f"--only {', '.join(unknown)}: no such notebook in {notebooks}; "
                f"templates: {', '.join(nb.stem for nb in found)}"
            )
        found = [nb for nb in found if nb.stem in only]
    plan = []
    errors = []
    for nb in found:
        params_file = parameters / nb.stem / f"{target}.yaml"
        if not params_file.is_file():
            errors.append(f"{nb.stem}: no parameters file {params_file} for target {target}")
            continue
        try:
            spec = spec_for(nb.stem)
            ov = {k: v for k, v in (overrides or {}).items() if k in spec.names}
            resolve_parameters(nb, params_file, ov)
        except PtdeployError as exc:
            errors.append(f"{nb.stem}: {exc}")
            continue
        plan.append((nb, params_file, ov))
    if errors:
        raise PtdeployError("\n".join(errors))
    running_before = targets.local_workspace_running()
    try:
        return _run_plan(plan, target, out_dir, progress, profile, experiment)
    finally:
        if stop_started_workspace(target, running_before=running_before, keep_running=keep_running):
            print(
                "[run-all] stopped the local workspace it started (endpoints kept on "
                "disk; --keep-running leaves it up)",
                flush=True,
            )


def stop_started_workspace(target: str, *, running_before: bool, keep_running: bool) -> bool:
    """Nothing left running unless asked: stop the local workspace a run started (its
    endpoints stay on disk and serve again after the next start). True if it stopped one;
    a workspace running before the run, ``keep_running`` or a real target is left alone."""
    if target != targets.Target.LOCAL.value or running_before or keep_running:
        return False
    return targets.stop_local_workspace()


def _run_plan(
    plan: list[tuple[Path, Path, dict[str, Any]]],
    target: str,
    out_dir: str | Path,
    progress: bool,
    profile: str | None,
    experiment: str | None,
) -> list[RunResult]:
    env = workspace_env(target, profile, experiment)  # once, before the first kernel
    results = []
    warm: WarmKernel | None = None
    try:
        for i, (nb, params_file, ov) in enumerate(plan):
            kernel, warm = warm, None
            if i + 1 < len(plan):  # the next notebook's kernel starts while this one runs
                warm = WarmKernel(plan[i + 1][0], env)
            print(f"[run-all] {nb.stem} ...", flush=True)
            result = run_notebook(
                nb,
                params_file,
                ov,
                out_dir=Path(out_dir) / target,
                progress=progress,
                env=env,
                kernel=kernel,
            )
            print(
                f"[run-all] {nb.stem}: {'ok' if result.ok else 'FAILED'} in {result.seconds:.1f}s",
                flush=True,
            )
            results.append(result)
    finally:
        if warm is not None:
            warm.shut_down()
    return results


def format_table(results: list[RunResult]) -> str:
    rows = [("notebook", "status", "seconds", "detail")]
    for r in results:
        detail = f"cell {r.failing_cell()}: {r.error}" if not r.ok else str(r.output or "")
        rows.append((r.notebook, "ok" if r.ok else "FAILED", f"{r.seconds:.1f}", detail[:160]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3] for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    total = sum(r.seconds for r in results)
    lines.append(f"total {total:.1f}s, {sum(not r.ok for r in results)} failed")
    return "\n".join(lines)

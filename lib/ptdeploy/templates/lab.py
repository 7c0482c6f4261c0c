"""JupyterLab on the templates: ``ptdeploy lab``.

Starts JupyterLab from this environment's interpreter (so its ``python3`` kernel is the
project's) on ``127.0.0.1`` only, protected by a token as Jupyter is by default, with the
templates folder ``notebooks/`` open. The notebooks' widgets start from the ``parameters``
cell, or — with ``parameters_target`` (``ptdeploy lab --parameters local``) — from
``parameters/<notebook>/<target>.yaml`` and ``-p`` overrides, handed to the kernels
through the environment (see ``ptdeploy.templates.parameters.lab_seeds``).

The server runs in its own session, so a Ctrl-C in the terminal reaches ``ptdeploy lab``
only; it then asks the server to shut down (kernels included) through Jupyter's own
``POST /api/shutdown``, escalating to SIGTERM and SIGKILL of the server's process group,
and stops the local workspace if the lab's notebooks started it. Nothing is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptdeploy.clock import Clock, MonotonicClock
from ptdeploy.errors import LabError

# Every wait here (a process starting, stopping) reads and sleeps on this clock.
CLOCK: Clock = MonotonicClock()

HOST = "127.0.0.1"
KERNEL_NAME = "python3"  # the kernelspec scripts/setup.sh installs inside the venv
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
# Environment handed to the kernels: which parameters file seeds the widgets, and
# ``-p`` overrides as JSON (read by ptdeploy.templates.parameters.lab_seeds).
PARAMETERS_TARGET_ENV = "PTDEPLOY_LAB_PARAMETERS"
PARAMETERS_OVERRIDES_ENV = "PTDEPLOY_LAB_OVERRIDES"


@dataclass
class LabServer:
    """A running JupyterLab started by :func:`start_lab`."""

    process: subprocess.Popen[bytes]
    port: int
    token: str = field(repr=False)
    root_dir: Path
    log_file: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url(self, path: str = "lab") -> str:
        """``http://127.0.0.1:PORT/<path>?token=...`` (the link Jupyter prints)."""
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}/{path.lstrip('/')}{sep}token={self.token}"

    def notebook_url(self, notebook: str) -> str:
        return self.url(f"lab/tree/{notebook}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Shut the server and its kernels down; escalate if it does not go."""
        stop_server(self, timeout=timeout)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def lab_command(
    *,
    port: int,
    token: str,
    root_dir: Path,
    open_browser: bool,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``jupyter lab`` command line (from this interpreter, so from this venv)."""
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        f"--ServerApp.ip={HOST}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root_dir}",
        f"--IdentityProvider.token={token}",
        f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}",
        # No "Shutdown this Jupyter server (y/[n])?" prompt: ptdeploy lab stops it.
        "--ServerApp.answer_yes=True",
    ]
    if not open_browser:
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI run as root; Jupyter refuses otherwise
    return cmd + list(extra_args)


def _check_environment() -> None:
    try:
        import jupyterlab  # noqa: F401
    except ImportError as exc:
        raise LabError(
            "JupyterLab is not installed in this environment: run `bash scripts/setup.sh` "
            "(requirements.txt pins jupyterlab)."
        ) from exc


def _kernel_env(
    parameters_target: str | None, overrides: Mapping[str, Any] | None, base: Mapping[str, str]
) -> dict[str, str]:
    env = dict(base)
    env.pop("PTDEPLOY_HEADLESS", None)  # widgets wanted in the lab's kernels
    env.pop(PARAMETERS_TARGET_ENV, None)
    env.pop(PARAMETERS_OVERRIDES_ENV, None)
    if parameters_target:
        env[PARAMETERS_TARGET_ENV] = parameters_target
    if overrides:
        env[PARAMETERS_OVERRIDES_ENV] = json.dumps(dict(overrides))
    return env


def check_lab_parameters(
    notebooks: Path, parameters_target: str | None, overrides: Mapping[str, Any] | None
) -> None:
    """Fail before the server starts on a missing file, an unknown ``-p`` or a bad value."""
    from ptdeploy.state import parameters_dir
    from ptdeploy.templates.runner import resolve_parameters
    from ptdeploy.templates.specs import spec_for

    found = sorted(notebooks.glob("*.ipynb"))
    declared: set[str] = set()
    errors = []
    for nb in found:
        try:
            spec = spec_for(nb.stem)
        except Exception:  # not a template: nothing to seed
            continue
        declared.update(spec.names)
        params_file = None
        if parameters_target:
            params_file = parameters_dir() / nb.stem / f"{parameters_target}.yaml"
            if not params_file.is_file():
                continue  # that notebook keeps its parameters cell
        ov = {k: v for k, v in (overrides or {}).items() if k in spec.names}
        try:
            resolve_parameters(nb, params_file, ov)
        except Exception as exc:
            errors.append(f"{nb.stem}: {exc}")
    unknown = sorted(set(overrides or {}) - declared)
    if unknown:
        errors.append(f"-p {', '.join(unknown)}: no template declares this parameter")
    if errors:
        from ptdeploy.errors import ParameterError

        raise ParameterError("\n".join(errors))


def start_lab(
    *,
    port: int | None = None,
    notebooks: Path | None = None,
    open_browser: bool = True,
    parameters_target: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
) -> LabServer:
    """Start JupyterLab and return once it answers (``GET /api/status`` with the token)."""
    from ptdeploy import state
    from ptdeploy.state import notebooks_dir

    _check_environment()
    root = (notebooks or notebooks_dir()).resolve()
    if not root.is_dir():
        raise LabError(f"notebooks folder {root} does not exist")
    check_lab_parameters(root, parameters_target, overrides)
    port = port or free_port()
    token = secrets.token_hex(24)
    log_file = log_file or state.state_dir() / "lab.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = lab_command(
        port=port, token=token, root_dir=root, open_browser=open_browser, extra_args=extra_args
    )
    kernel_env = _kernel_env(parameters_target, overrides, env if env is not None else os.environ)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            cmd,
            cwd=root,
            env=kernel_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches ptdeploy lab, which shuts it down
        )
    server = LabServer(process, port, token, root, log_file)
    try:
        _wait_ready(server, ready_timeout)
    except BaseException:
        stop_server(server)
        raise
    return server


def _request(server: LabServer, method: str, path: str, timeout: float = 3.0) -> int:
    req = urllib.request.Request(
        f"{server.base_url}{path}",
        method=method,
        headers={"Authorization": f"token {server.token}"},
        data=b"" if method == "POST" else None,
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return int(resp.status)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(server: LabServer, timeout: float) -> None:
    deadline = CLOCK.time() + timeout
    while CLOCK.time() < deadline:
        if not server.alive():
            raise LabError(
                f"JupyterLab exited with code {server.process.returncode} before it was ready "
                f"(port {server.port} in use?). Its log, {server.log_file}:\n"
                + _tail(server.log_file)
            )
        with contextlib.suppress(OSError, urllib.error.URLError):
            if _request(server, "GET", "/api/status") == 200:
                return
        CLOCK.sleep(0.2)
    raise LabError(
        f"JupyterLab did not answer on {server.base_url} within {timeout:.0f}s; its log, "
        f"{server.log_file}:\n" + _tail(server.log_file)
    )


def stop_server(server: LabServer, timeout: float = STOP_TIMEOUT_S) -> None:
    """``POST /api/shutdown`` (kernels first), then SIGTERM, then SIGKILL the group."""
    process = server.process
    if process.poll() is None:
        with contextlib.suppress(OSError, urllib.error.URLError):
            _request(server, "POST", "/api/shutdown", timeout=5.0)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
    # Anything left in the server's session (a kernel that ignored the shutdown).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def workspace_running() -> bool:
    from ptdeploy import targets

    return targets.local_workspace_running()


def serve(
    *,
    port: int | None = None,
    open_browser: bool = True,
    parameters_target: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    out: Any = None,
) -> int:
    """``ptdeploy lab``: start, print the link, wait for Ctrl-C (or File > Shut Down)."""
    out = out or sys.stdout
    started = time.perf_counter()
    workspace_before = workspace_running()
    server = start_lab(
        port=port,
        open_browser=open_browser,
        parameters_target=parameters_target,
        overrides=overrides,
    )
    print(
        f"JupyterLab ready in {time.perf_counter() - started:.1f}s on {server.base_url} "
        f"(127.0.0.1 only, kernel {KERNEL_NAME!r}, folder {server.root_dir})\n"
        f"  open: {server.url()}\n"
        f"  log:  {server.log_file}\n"
        "Ctrl-C stops JupyterLab and its kernels.",
        file=out,
        flush=True,
    )
    code = 0

    def interrupted(signum: int, frame: object) -> None:  # kill, closed terminal: as Ctrl-C
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while server.alive():
            CLOCK.sleep(0.5)
        code = server.process.returncode or 0
        print(f"JupyterLab exited (code {code}).", file=out, flush=True)
    except KeyboardInterrupt:
        print("\nstopping JupyterLab ...", file=out, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
        if not workspace_before and workspace_running():
            from ptdeploy import targets

            targets.stop_local_workspace()
            print("stopped the local workspace the notebooks started.", file=out, flush=True)
    print("JupyterLab stopped; nothing left running.", file=out, flush=True)
    return code

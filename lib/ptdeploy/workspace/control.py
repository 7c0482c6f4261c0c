"""Start, stop and inspect the local workspace server; its token; the CLI.

The server runs as a detached background process (``python -m ptdeploy.workspace.server``)
so notebooks, tests and shells share one workspace and its endpoints outlive the
process that started it, as on Databricks. Files in ``ptdeploy.state.workspace_dir()``:

- ``token``: the bearer token, generated once with ``secrets.token_urlsafe``, readable
  by its owner only (0600, checked and repaired on every read). It is never printed
  except by ``ptdeploy workspace start``, whose output is meant for ``eval``, and never
  passed on a command line (visible in ``ps``): the server reads the file itself.
- ``server.json``: pid and port of the running server, written by the server once it
  is listening, removed when it stops.
- ``server.log``: the server's log (and its workers'); the token never appears in it.
- ``control.lock``: serializes start/stop, so two processes calling ``ensure_running()``
  at once get one server, not two.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptdeploy import state
from ptdeploy.clock import Clock, MonotonicClock
from ptdeploy.errors import WorkspaceError
from ptdeploy.workspace.files import (
    SERVER_FILE,
    clear_server_info,
    log_path,
    read_token,
)
from ptdeploy.workspace.files import server_info as _server_info
from ptdeploy.workspace.files import workspace_dir as _dir

# Every wait here (a process starting, stopping) reads and sleeps on this clock.
CLOCK: Clock = MonotonicClock()

LOCK_FILE = "control.lock"
SERVER_MODULE = "ptdeploy.workspace.server"
START_TIMEOUT_S = 120.0  # importing FastAPI + MLflow takes tens of seconds on a busy 2-core box

# Popen objects of servers started by this process, so they are reaped (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class LocalWorkspace:
    """How to reach the running local workspace (``WorkspaceClient(host=, token=)``)."""

    host: str
    token: str = field(repr=False)
    pid: int
    port: int

    def env(self) -> dict[str, str]:
        """The variables the SDK's unified auth reads."""
        return {"DATABRICKS_HOST": self.host, "DATABRICKS_TOKEN": self.token}


@dataclass(frozen=True)
class WorkspaceStatus:
    running: bool
    state_dir: Path
    log_file: Path
    pid: int | None = None
    port: int | None = None
    host: str | None = None
    endpoints: int | None = None
    detail: str = ""


def host_for(port: int) -> str:
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------------- process


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (not a zombie) and is a local workspace server."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not our server
        return False
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        return SERVER_MODULE in cmdline or ("workspace" in cmdline and "--foreground" in cmdline)
    return True


def _kill_leftovers(session: int) -> None:
    """Kill what is left of a crashed detached server's session (its worker processes).

    The server was started in a new session whose id is its pid; a process is only
    killed if both its session and its process group are that id.
    """
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, pgrp, sid = int(stat_file.parent.name), int(fields[2]), int(fields[3])
        if pgrp == session and sid == session and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _probe(port: int, token: str, timeout: float = 3.0) -> int | None:
    """Number of endpoints if the server on ``port`` answers with our token, else None."""
    import requests

    try:
        resp = requests.get(
            f"{host_for(port)}/api/2.0/serving-endpoints",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    except requests.RequestException:
        return None
    if resp.status_code != 200:
        return None
    try:
        return len(resp.json().get("endpoints", []))
    except ValueError:
        return None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(_dir() / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _running() -> LocalWorkspace | None:
    info = _server_info()
    if info is None or not _alive(int(info["pid"])):
        return None
    token = read_token(create=True)
    if _probe(int(info["port"]), token) is None:
        return None
    return LocalWorkspace(host_for(int(info["port"])), token, int(info["pid"]), int(info["port"]))


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _spawn(port: int | None, timeout: float) -> LocalWorkspace:
    token = read_token(create=True)
    logfile = log_path()
    # The server needs no credentials of a real workspace: keep them out of its environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env["PTDEPLOY_HOME"] = str(state.state_dir())
    env.setdefault("HF_HUB_OFFLINE", "1")
    lib = str(Path(__file__).resolve().parents[2])  # so `-m ptdeploy...` works uninstalled
    env["PYTHONPATH"] = os.pathsep.join(p for p in (lib, env.get("PYTHONPATH")) if p)
    # a stale server.json must not be mistaken for the new server's
    with contextlib.suppress(FileNotFoundError):
        (_dir() / SERVER_FILE).unlink()
    with open(logfile, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE, "--port", str(port or 0), "--detached"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(state.state_dir()),
            env=env,
            start_new_session=True,  # detached: survives the terminal, own process group
        )
    _children[proc.pid] = proc
    deadline = CLOCK.time() + timeout
    while CLOCK.time() < deadline:
        if proc.poll() is not None:
            raise WorkspaceError(
                f"the local workspace server exited with code {proc.returncode} while starting. "
                f"Last lines of {logfile}:\n{_tail(logfile)}"
            )
        info = _server_info()
        if (
            info is not None
            and info.get("pid") == proc.pid
            and _probe(int(info["port"]), token, timeout=2.0) is not None
        ):
            return LocalWorkspace(host_for(int(info["port"])), token, proc.pid, int(info["port"]))
        CLOCK.sleep(0.2)
    _terminate(proc.pid, detached=True, timeout=10.0)
    raise WorkspaceError(
        f"the local workspace server did not answer within {timeout:.0f}s; it was stopped. "
        f"Last lines of {logfile}:\n{_tail(logfile)}"
    )


def _terminate(pid: int, *, detached: bool, timeout: float) -> None:
    """SIGTERM (graceful: workers are stopped by the server), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = CLOCK.time() + timeout
    while _alive(pid) and CLOCK.time() < deadline:
        CLOCK.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if detached:  # leftovers of its process group (worker processes)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)


# ------------------------------------------------------------------------- API


def start(
    port: int | None = None, foreground: bool = False, timeout: float = START_TIMEOUT_S
) -> LocalWorkspace:
    """Start the server (or reuse the running one) and return how to reach it.

    ``foreground=True`` serves in this process until interrupted and returns the
    workspace it served once it has stopped.
    """
    if port is not None and not 0 < port < 65536:
        raise WorkspaceError(
            f"port={port} is not valid: use 1 to 65535, or leave it out for any free port."
        )
    if foreground:
        return serve_foreground(port)
    with _locked():
        running = _running() or _recover()
        if running is not None:
            if port is not None and port != running.port:
                raise WorkspaceError(
                    f"the local workspace already runs on port {running.port} (pid {running.pid}); "
                    "run `ptdeploy workspace stop` first to use another port."
                )
            return running
        return _spawn(port, timeout)


def serve_foreground(port: int | None, on_listening: Any = None) -> LocalWorkspace:
    from ptdeploy.workspace import server

    with _locked():
        running = _running()
        if running is not None:
            raise WorkspaceError(
                f"the local workspace already runs in the background (pid {running.pid}, "
                f"{running.host}); run `ptdeploy workspace stop` first."
            )
    bound: dict[str, int] = {}

    def listening(p: int) -> None:
        bound["port"] = p
        if on_listening is not None:
            on_listening(p)

    server.run_server(port or 0, on_listening=listening)
    p = bound.get("port", port or 0)
    return LocalWorkspace(host_for(p), read_token(), os.getpid(), p)


def _recover() -> LocalWorkspace | None:
    """After a failed quick probe: the server if it was only slow, else clear what a dead
    (or hung) previous server left so a new one can start."""
    info = _server_info()
    if info is None:
        return None
    pid, port, detached = int(info["pid"]), int(info["port"]), bool(info.get("detached"))
    if _alive(pid):
        # Give a busy machine a fair chance before declaring the server hung.
        token = read_token()
        if _probe(port, token, timeout=15.0) is not None:
            return LocalWorkspace(host_for(port), token, pid, port)
        if not detached:
            raise WorkspaceError(
                f"a foreground local workspace (pid {pid}) runs but does not answer on "
                f"{host_for(port)}; stop it (Ctrl-C or `ptdeploy workspace stop`) first."
            )
        print(f"local workspace: pid {pid} does not answer; restarting it", file=sys.stderr)
        _terminate(pid, detached=True, timeout=10.0)
    elif detached:
        _kill_leftovers(pid)
    with contextlib.suppress(FileNotFoundError):
        (_dir() / SERVER_FILE).unlink()
    return None


def ensure_running(timeout: float = START_TIMEOUT_S) -> LocalWorkspace:
    """The running workspace, started if needed (dead or missing server: start anew).

    Safe to call from several processes at once: the control lock makes one start it
    and the others reuse it.
    """
    return start(None, timeout=timeout)


def stop(quiet: bool = False, timeout: float = 30.0) -> bool:
    """Stop the server (and its workers); True if one was running."""
    with _locked():
        info = _server_info()
        if info is None or not _alive(int(info["pid"])):
            _recover()
            if not quiet:
                print("local workspace: not running", file=sys.stderr)
            return False
        pid = int(info["pid"])
        _terminate(pid, detached=bool(info.get("detached")), timeout=timeout)
        clear_server_info(pid)
        if not quiet:
            print(f"local workspace: stopped (pid {pid})", file=sys.stderr)
        return True


def status() -> WorkspaceStatus:
    info = _server_info()
    base = {"state_dir": state.state_dir(), "log_file": log_path()}
    if info is None:
        return WorkspaceStatus(running=False, detail="not started", **base)
    pid, port = int(info["pid"]), int(info["port"])
    if not _alive(pid):
        return WorkspaceStatus(
            running=False,
            pid=pid,
            port=port,
            detail=f"pid {pid} is gone (stale {SERVER_FILE})",
            **base,
        )
    endpoints = _probe(port, read_token(create=False))
    if endpoints is None:
        return WorkspaceStatus(
            running=False,
            pid=pid,
            port=port,
            host=host_for(port),
            detail="process alive but not answering",
            **base,
        )
    return WorkspaceStatus(
        running=True,
        pid=pid,
        port=port,
        host=host_for(port),
        endpoints=endpoints,
        detail="running",
        **base,
    )

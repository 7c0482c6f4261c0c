"""The local workspace's files in ``ptdeploy.state.workspace_dir()``: token, server.json, log.

Shared by the server (which writes ``server.json`` once it listens) and by ``control``
(which starts, finds and stops it), so neither imports the other.

- ``token``: the bearer token, generated once with ``secrets.token_urlsafe``, readable
  by its owner only (0600, checked and repaired on every read).
- ``server.json``: pid and port of the running server, written by the server once it
  is listening, removed when it stops.
- ``server.log``: the server's log (and its workers'); the token never appears in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from ptdeploy import state
from ptdeploy.errors import WorkspaceError

TOKEN_FILE = "token"
SERVER_FILE = "server.json"
LOG_FILE = "server.log"


def workspace_dir() -> Path:
    path = state.workspace_dir()
    # the directory holds the token: keep it private too
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o700)
    return path


def log_path() -> Path:
    return workspace_dir() / LOG_FILE


# ------------------------------------------------------------------------ token


def read_token(create: bool = True) -> str:
    """The workspace token; created once (0600). Permissions wider than owner-only are
    repaired, and a token file owned by another user is refused."""
    path = workspace_dir() / TOKEN_FILE
    if not path.exists():
        if not create:
            raise WorkspaceError(
                f"the local workspace has no token yet ({path}); run `ptdeploy workspace start`."
            )
        _create_token(path)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise WorkspaceError(
            f"{path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); remove it "
            "and start the workspace again."
        )
    if stat.S_IMODE(info.st_mode) != 0o600:
        path.chmod(0o600)
    token = path.read_text().strip()
    if not token:
        raise WorkspaceError(f"{path} is empty; remove it and start the workspace again.")
    return token


def _create_token(path: Path) -> None:
    """Write the token to a private temporary file, then link it into place: the file
    appears complete or not at all, and a concurrent creator's token wins cleanly."""
    fd, tmp = tempfile.mkstemp(prefix=".token.", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


# ------------------------------------------------------------------ server file


def write_server_info(*, pid: int, port: int, detached: bool) -> None:
    """Called by the server once it listens."""
    path = workspace_dir() / SERVER_FILE
    data = json.dumps({"pid": pid, "port": port, "detached": detached, "started": time.time()})
    state.write_atomic(path, data)


def clear_server_info(pid: int) -> None:
    """Remove server.json if it still describes ``pid``."""
    info = server_info()
    if info is not None and info.get("pid") == pid:
        with contextlib.suppress(FileNotFoundError):
            (workspace_dir() / SERVER_FILE).unlink()


def server_info() -> dict[str, Any] | None:
    try:
        info = json.loads((workspace_dir() / SERVER_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return info if isinstance(info, dict) and "pid" in info and "port" in info else None

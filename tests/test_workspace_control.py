"""Starting, reusing, restarting and stopping the local workspace server; its token; the CLI.

These run the real server process (no model is loaded: no endpoint is created here).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from ptdeploy import cli
from ptdeploy.errors import WorkspaceError
from ptdeploy.workspace import control, files

pytestmark = pytest.mark.slow  # starts real server processes


@pytest.fixture(scope="module")
def ws():
    control.stop(quiet=True)
    ws = control.ensure_running()
    yield ws
    control.stop(quiet=True)


def _listening_addresses(port: int) -> list[str]:
    """Local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp*)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append(address)
    return found


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.configure_workspace_parser(parser)
    return cli.run_workspace(parser.parse_args(list(argv)))


def test_token_file_is_owner_only_and_repaired(ws):
    path = files.workspace_dir() / files.TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.chmod(0o644)
    assert control.read_token() == ws.token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ws.token not in repr(ws)


def control_client(ws):
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient(host=ws.host, token=ws.token, auth_type="pat")


def test_reuses_the_running_server_and_reports_it(ws):
    again = control.ensure_running()
    assert (again.pid, again.port, again.token) == (ws.pid, ws.port, ws.token)
    st = control.status()
    assert st.running and st.pid == ws.pid and st.host == ws.host
    assert st.endpoints == len(list(control_client(ws).serving_endpoints.list()))
    with pytest.raises(WorkspaceError, match=f"already runs on port {ws.port}"):
        control.start(port=ws.port + 1 if ws.port < 65535 else ws.port - 1)


def test_binds_loopback_only(ws):
    addresses = _listening_addresses(ws.port)
    if not addresses:
        pytest.skip("no /proc/net/tcp to inspect listening sockets")
    assert addresses == ["0100007F"]  # 127.0.0.1, not 0.0.0.0 nor an external interface


def test_token_never_appears_in_the_log(ws):
    requests.get(
        f"{ws.host}/api/2.0/serving-endpoints",
        headers={"Authorization": f"Bearer {ws.token}"},
        timeout=10,
    )
    bad = requests.get(
        f"{ws.host}/api/2.0/serving-endpoints",
        headers={"Authorization": "Bearer wrong"},
        timeout=10,
    )
    assert bad.status_code == 403
    log = control.log_path().read_text()
    assert "GET /api/2.0/serving-endpoints" in log
    assert ws.token not in log


def test_cli_prints_what_the_sdk_needs(ws, capsys):
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.errors import PermissionDenied

    assert _cli("start") == 0
    out = capsys.readouterr().out.splitlines()
    env = dict(line.removeprefix("export ").split("=", 1) for line in out)
    assert env == {"DATABRICKS_HOST": ws.host, "DATABRICKS_TOKEN": ws.token}
    w = WorkspaceClient(host=env["DATABRICKS_HOST"], token=env["DATABRICKS_TOKEN"], auth_type="pat")
    listed = list(w.serving_endpoints.list())  # the SDK authenticates with them...
    assert all(e.name for e in listed)
    wrong = WorkspaceClient(host=env["DATABRICKS_HOST"], token="not-the-token", auth_type="pat")
    with pytest.raises(PermissionDenied):  # ...and the workspace checks the token
        list(wrong.serving_endpoints.list())
    assert _cli("status") == 0
    status_out = capsys.readouterr().out
    assert ws.host in status_out and ws.token not in status_out


def test_dead_server_is_replaced(ws):
    os.kill(ws.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while control._alive(ws.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not control.status().running
    new = control.ensure_running()
    assert new.pid != ws.pid
    assert control.status().running


def test_concurrent_ensure_running_starts_one_server(ws):
    control.stop(quiet=True)
    code = "from ptdeploy.workspace import control; print(control.ensure_running().pid)"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    pids = {p.communicate(timeout=180)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(pids) == 1
    assert control.status().pid == int(pids.pop())


def test_stop_then_status_and_port_in_use(ws, capsys):
    assert control.stop() is True
    assert control.stop(quiet=True) is False
    assert _cli("status") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(WorkspaceError, match=f"cannot listen on 127.0.0.1:{port}"):
            control.start(port=port)
    with pytest.raises(WorkspaceError, match="port=0 is not valid"):
        control.start(port=0)


def test_foreground_serves_until_stopped():
    control.stop(quiet=True)
    code = (
        "import sys; from ptdeploy import cli; "
        "sys.exit(cli.main(['workspace', 'start', '--foreground']))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        env = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        r = requests.get(
            f"{env['DATABRICKS_HOST']}/api/2.0/serving-endpoints",
            headers={"Authorization": f"Bearer {env['DATABRICKS_TOKEN']}"},
            timeout=10,
        )
        assert r.status_code == 200
        assert control.status().pid == proc.pid
        with pytest.raises(WorkspaceError, match="already runs"):
            control.start(foreground=True)
        assert control.stop() is True
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it (exit status -15)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert not control.status().running
    finally:
        if proc.poll() is None:
            proc.kill()

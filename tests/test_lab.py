"""``ptdeploy lab``: JupyterLab on 127.0.0.1 with a token and the project's kernel; bad
seeds refused before it starts; Ctrl-C leaves nothing running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from ptdeploy import cli
from ptdeploy.errors import ParameterError
from ptdeploy.templates import lab

REPO = Path(__file__).resolve().parents[1]


def test_command_binds_loopback_with_a_token_and_the_project_kernel(tmp_path):
    cmd = lab.lab_command(port=8899, token="t0k", root_dir=tmp_path, open_browser=False)
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--ServerApp.ip=127.0.0.1" in cmd and "--ServerApp.port=8899" in cmd
    assert "--IdentityProvider.token=t0k" in cmd and "--no-browser" in cmd
    assert f"--ServerApp.root_dir={tmp_path}" in cmd
    assert "--MappingKernelManager.default_kernel_name=python3" in cmd
    assert "--no-browser" not in lab.lab_command(
        port=1, token="t", root_dir=tmp_path, open_browser=True
    )


def test_cli_parses_lab_options():
    args = cli.build_parser().parse_args(
        ["lab", "--port", "9000", "--no-browser", "--parameters", "local", "-p", "x", "1"]
    )
    assert (args.port, args.no_browser, args.parameters, args.parameter) == (
        9000,
        True,
        "local",
        [["x", "1"]],
    )


@pytest.mark.parametrize(
    ("target", "overrides", "fragment"),
    [
        (None, {"max_tokns": "5"}, "-p max_tokns: no template declares this parameter"),
        ("local", {"max_tokens": "abc"}, "parameter 'max_tokens': invalid value 'abc'"),
    ],
)
def test_bad_seeds_fail_before_the_server_starts(target, overrides, fragment, capsys):
    with pytest.raises(ParameterError, match=re.escape(fragment)):
        lab.check_lab_parameters(REPO / "notebooks", target, overrides)
    argv = ["lab", "--no-browser"] + (["--parameters", target] if target else [])
    for name, value in overrides.items():
        argv += ["-p", name, value]
    assert cli.main(argv) == 2
    assert fragment in capsys.readouterr().err


def _listening(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/api/status", timeout=2)
    except requests.ConnectionError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ptdeploy_lab_serves_with_a_token_and_ctrl_c_leaves_nothing_running(tmp_path, stop):
    port = lab.free_port()
    env = {**os.environ, "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ptdeploy.cli", "lab", "--no-browser", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "open:" in line:
                break
        url = re.search(r"open: (\S+)", "".join(lines)).group(1)
        token = url.split("token=")[1]
        assert url.startswith(f"http://127.0.0.1:{port}/lab?token=")
        assert requests.get(url, timeout=10).status_code == 200
        no_token = requests.get(f"http://127.0.0.1:{port}/api/kernelspecs", timeout=10)
        assert no_token.status_code == 403
        specs = requests.get(
            f"http://127.0.0.1:{port}/api/kernelspecs",
            headers={"Authorization": f"token {token}"},
            timeout=10,
        ).json()
        assert specs["default"] == "python3"
        contents = requests.get(
            f"http://127.0.0.1:{port}/api/contents",
            headers={"Authorization": f"token {token}"},
            timeout=10,
        ).json()
        assert "llama_completions.ipynb" in {c["name"] for c in contents["content"]}

        proc.send_signal(stop)  # Ctrl-C in the terminal, or a kill
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "nothing left running" in out
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while _listening(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _listening(port)

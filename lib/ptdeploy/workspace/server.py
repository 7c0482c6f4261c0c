"""The local workspace server: Databricks' serving REST API, answered on 127.0.0.1.

It is to Databricks Model Serving what moto is to AWS: the same routes, JSON shapes,
states and error codes (rendered through the databricks-sdk dataclasses), so
``WorkspaceClient``, ``mlflow.deployments.get_deploy_client("databricks")``, the
``openai`` client and plain ``requests`` calls work against it unchanged.

This module is the process: ``python -m ptdeploy.workspace.server`` binds loopback and
serves the app. The rest lives along its seams:

- ``protocol``: bearer auth, Databricks' error shape, JSON bodies and payload limits;
- ``validation``: every request checked before anything is written (``ptdeploy.limits``);
- ``manager``: endpoints, workers and their state machine, healing of dead workers;
- ``render``: answers built from databricks-sdk's ``serving`` dataclasses;
- ``app``: the route table over the manager;
- ``files``: the token and ``server.json`` (shared with ``control``, which starts and
  stops this process).

Local differences, on purpose: one worker process per served entity whatever the
provisioned throughput (the throughput is validated and recorded, not used to add
replicas on a 2-core machine); scale-to-zero is recorded but workers stay loaded;
AI gateway rate limits on ``calls`` are enforced per endpoint, token limits, usage
tracking and inference tables are recorded only.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable

from ptdeploy.workspace import files
from ptdeploy.workspace import store as st
from ptdeploy.workspace.app import create_app, entity_worker_factory

__all__ = ["LOOPBACK", "create_app", "listening_socket", "main", "run_server"]

log = logging.getLogger("ptdeploy.workspace.server")

LOOPBACK = "127.0.0.1"


# ----------------------------------------------------------------------- main


def listening_socket(port: int) -> socket.socket:
    """A TCP socket listening on the loopback interface only.

    IPPROTO_TCP explicitly: accepted sockets inherit it, and only then does asyncio set
    TCP_NODELAY on them. Without it, a keep-alive client (urllib3, so the SDK) waits
    ~40 ms a request: the body write waits for the delayed ACK (Nagle).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"cannot listen on {LOOPBACK}:{port}: {exc.strerror}; choose another --port"
        ) from exc
    sock.listen(128)
    return sock


def run_server(
    port: int = 0, *, on_listening: Callable[[int], None] | None = None, detached: bool = False
) -> None:
    """Serve on 127.0.0.1:``port`` (0: any free port) until SIGINT/SIGTERM.

    Binds loopback only: the API has a bearer token, but the workspace is for one user on
    one machine and never needs to be reachable from elsewhere.
    """
    import uvicorn

    from ptdeploy import state
    from ptdeploy.workspace.optimization_info import RegistryCatalog

    token = files.read_token(create=True)
    sock = listening_socket(port)
    bound = sock.getsockname()[1]
    tracking_uri = state.tracking_uri()
    app = create_app(
        token=token,
        store=st.EndpointStore(state.workspace_dir() / "endpoints"),
        catalog=RegistryCatalog(tracking_uri),
        worker_factory=entity_worker_factory(tracking_uri),
    )
    config = uvicorn.Config(app, log_level="info", lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    files.write_server_info(pid=os.getpid(), port=bound, detached=detached)
    log.info(
        "local workspace listening on http://%s:%d (state: %s)", LOOPBACK, bound, state.state_dir()
    )
    if on_listening is not None:
        on_listening(bound)
    try:
        server.run(sockets=[sock])
    finally:
        files.clear_server_info(os.getpid())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ptdeploy.workspace.server", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)"
    )
    parser.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_server(args.port, detached=args.detached)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measurement helpers shared by the benchmark scripts (see ``benchmarks/README.md``).

Everything here is bounded (count and time caps, start-up timeouts), talks to loopback
only, and cleans up the processes it starts (by their own process group).

* :class:`HttpEndpoint` duck-types ``WorkspaceClient.serving_endpoints`` for
  :func:`ptdeploy.capacity.loadtest.run_load_test`: the same closed-loop driver, caps and
  percentiles as ``ptdeploy loadtest``, but requests go out through ``http.client`` with
  one keep-alive connection per client thread. The benchmark runs on the same 2 cores as
  the servers it measures, so the client must cost as little CPU as possible, and it
  must cost the *same* for every server compared (the local workspace and
  ``mlflow models serve`` get byte-identical request bodies).
* :func:`in_process_level` drives an :class:`~ptdeploy.workspace.engine.Engine` directly,
  ``concurrency`` requests per batch: the engine without HTTP, pipes or queueing.
* :class:`MlflowServe` runs ``mlflow models serve`` as a subprocess and times ``/ping``.
* :func:`bare_load_seconds` times ``Engine.from_registry`` in a fresh process.
* :func:`kernels_started_ahead` switches ``runner.WarmKernel`` off for a baseline run of
  ``run-all`` or ``job run``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ptdeploy.capacity.loadtest import LevelResult, Sample, Task, build_payload, run_load_test

# --------------------------------------------------------------------------- HTTP client


class HttpStatusError(Exception):
    """A non-200 answer; ``status_code`` is what ``ptdeploy.capacity.loadtest`` records."""

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(f"HTTP {status_code}: {body[:300].decode(errors='replace')}")
        self.status_code = status_code


class HttpEndpoint:
    """POST the query body as JSON to ``url`` and return the answer's OpenAI-shaped dict.

    ``mlflow models serve`` wraps a completion in a list and other answers in
    ``{"predictions": ...}``; both are unwrapped so ``usage`` is found the same way.
    """

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 600.0) -> None:
        parts = urlparse(url)
        if parts.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"benchmarks talk to loopback only, not {url!r}")
        self.host, self.port, self.path = parts.hostname, parts.port or 80, parts.path
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.timeout_s = timeout_s
        self._local = threading.local()
        self.serving_endpoints = self  # what run_load_test calls: w.serving_endpoints.query

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            conn.connect()
            # http.client sends the headers and the body in two writes; with Nagle's
            # algorithm on, the body then waits for the server's delayed ACK (~40 ms a
            # request). urllib3 (requests, databricks-sdk) sets TCP_NODELAY too.
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.conn = conn
        return conn

    def post(self, body: dict[str, Any]) -> Any:
        data = json.dumps(body).encode()
        for attempt in (1, 2):  # a keep-alive connection the server closed: reconnect once
            conn = self._connection()
            try:
                conn.request("POST", self.path, data, self.headers)
                response = conn.getresponse()
                payload = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError, BrokenPipeError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        if response.status != 200:
            raise HttpStatusError(response.status, payload)
        return json.loads(payload)

    def query(self, name: str, **body: Any) -> dict[str, Any]:
        answer = self.post(body)
        if isinstance(answer, dict) and "predictions" in answer:
            answer = answer["predictions"]
        if isinstance(answer, list) and len(answer) == 1:
            answer = answer[0]
        return answer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    """One benchmarked request shape and the caps of each concurrency level."""

    label: str
    task: Task
    text: str
    max_tokens: int | None
    requests_per_level: Callable[[int], int]
    max_seconds_per_level: float

    def query_kwargs(self) -> dict[str, Any]:
        if self.task is Task.EMBEDDINGS:
            return build_payload(self.task, inputs=[self.text]).body()
        return build_payload(
            self.task, prompt=self.text, max_tokens=self.max_tokens, temperature=0.0
        ).body()


def http_level(endpoint: HttpEndpoint, workload: Workload, concurrency: int) -> LevelResult:
    """One closed-loop level through ``ptdeploy.capacity.loadtest`` (no retries, no progress bar)."""
    result = run_load_test(
        endpoint,
        "bench",
        task=workload.task,
        concurrency=(concurrency,),
        requests_per_level=workload.requests_per_level(concurrency),
        max_seconds_per_level=workload.max_seconds_per_level,
        prompt=workload.text,
        max_tokens=workload.max_tokens if workload.task is not Task.EMBEDDINGS else None,
        temperature=0.0 if workload.task is not Task.EMBEDDINGS else None,
        progress=False,
    )
    level = result.levels[0]
    if level.errors:
        first = next(iter(result.errors_by_kind()))
        print(f"    {level.errors} error(s), e.g. {first}", flush=True)
    return level


def warm_up(call: Callable[[], Any], times: int = 2) -> None:
    """First requests pay for lazy initialisation (allocator, kernels): not measured."""
    for _ in range(times):
        call()


def in_process_level(engine: Any, workload: Workload, concurrency: int) -> LevelResult:
    """Batches of ``concurrency`` identical requests served by ``engine.serve``.

    A request's latency runs from the start of its batch to its own answer (the engine
    answers each as soon as its rows finish). Caps as for HTTP levels: no new batch after
    the count or the time cap.
    """
    from ptdeploy.workspace.schemas import parse_request

    request = parse_request(workload.task.value, workload.query_kwargs())

    def serve(size: int) -> list[tuple[float, Any]]:
        done: dict[int, tuple[float, Any]] = {}

        def answered(i: int, response: Any) -> None:
            done[i] = (time.perf_counter(), response)

        engine.serve([request] * size, on_response=answered)
        return [done[i] for i in range(size)]

    return batched_level(serve, workload, concurrency)


def generate_level(model: Any, tokenizer: Any, workload: Workload, concurrency: int) -> LevelResult:
    """Plain ``model.generate`` (greedy, ``max_new_tokens``) on batches of ``concurrency``
    copies of the prompt: what transformers gives without any server. Every row of a
    batch is answered when the batch ends."""
    import torch

    inputs = tokenizer([workload.text], return_tensors="pt")
    prompt_tokens = int(inputs["input_ids"].shape[1])

    def serve(size: int) -> list[tuple[float, Any]]:
        batch = {k: v.repeat(size, 1) for k, v in inputs.items()}
        with torch.inference_mode():
            out = model.generate(
                **batch,
                max_new_tokens=workload.max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        t1 = time.perf_counter()
        new = int(out.shape[1]) - prompt_tokens
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": new}
        usage["total_tokens"] = prompt_tokens + new
        return [(t1, {"usage": usage})] * size

    return batched_level(serve, workload, concurrency)


def batched_level(
    serve: Callable[[int], list[tuple[float, Any]]], workload: Workload, concurrency: int
) -> LevelResult:
    """Closed loop of batches: ``serve(size)`` answers ``size`` identical requests and
    returns (answer time, response or exception) for each; no new batch after the
    workload's count or time cap."""
    count_cap = workload.requests_per_level(concurrency)
    samples: list[Sample] = []
    start = time.perf_counter()
    stop_reason = "requests"
    while len(samples) < count_cap:
        if time.perf_counter() - start >= workload.max_seconds_per_level:
            stop_reason = "duration"
            break
        size = min(concurrency, count_cap - len(samples))
        t0 = time.perf_counter()
        offset = len(samples)
        for i, (t1, response) in enumerate(serve(size)):
            ok = not isinstance(response, Exception)
            usage = response.get("usage", {}) if ok else {}
            samples.append(
                Sample(
                    concurrency,
                    offset + i,
                    t0 - start,
                    t1 - t0,
                    ok,
                    input_tokens=usage.get("prompt_tokens"),
                    output_tokens=usage.get("completion_tokens", 0 if ok else None),
                    total_tokens=usage.get("total_tokens"),
                    error_type=None if ok else type(response).__name__,
                    error_message=None if ok else str(response)[:300],
                )
            )
    return LevelResult.from_samples(concurrency, samples, time.perf_counter() - start, stop_reason)


def run_levels(
    name: str, measure: Callable[[int], LevelResult], levels: Sequence[int]
) -> dict[int, LevelResult]:
    results: dict[int, LevelResult] = {}
    for concurrency in levels:
        t0 = time.perf_counter()
        level = measure(concurrency)
        results[concurrency] = level
        tok = level.output_tokens_per_second
        print(
            f"  {name:<28} c={concurrency:<3} {level.requests:>4} req "
            f"{level.requests_per_second or 0:8.2f} req/s "
            f"{'' if not tok else f'{tok:8.1f} out tok/s '}"
            f"p95 {1000 * (level.p95_latency_s or 0):8.0f} ms ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return results


# --------------------------------------------------------------------------- processes


class MlflowServe:
    """``mlflow models serve -m models:/NAME/VERSION --env-manager local`` on loopback.

    Started in its own process group (it spawns uvicorn), stopped by that group. The
    request timeout is raised from 60 s to ``request_timeout_s``: at concurrency 32 a
    server that answers one request at a time keeps the last one waiting for minutes,
    and a benchmark measures that wait rather than turning it into errors.
    """

    def __init__(
        self,
        model_uri: str,
        tracking_uri: str,
        log_file: Path,
        *,
        start_timeout_s: float = 240.0,
        request_timeout_s: int = 600,
    ) -> None:
        self.model_uri = model_uri
        self.tracking_uri = tracking_uri
        self.log_file = log_file
        self.start_timeout_s = start_timeout_s
        self.request_timeout_s = request_timeout_s
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ping_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/invocations"

    def __enter__(self) -> MlflowServe:
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        command = [
            str(mlflow_cli),
            "models",
            "serve",
            "-m",
            self.model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-t",
            str(self.request_timeout_s),
        ]
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.tracking_uri, "HF_HUB_OFFLINE": "1"}
        # it execs `uvicorn` by name: the venv's bin directory must be on PATH
        env["PATH"] = os.pathsep.join([str(mlflow_cli.parent), env.get("PATH", "")])
        started = time.perf_counter()
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            self._wait_for_ping(started)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_for_ping(self, started: float) -> None:
        assert self.proc is not None
        while time.perf_counter() - started < self.start_timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow models serve exited with {self.proc.returncode}; see {self.log_file}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    self.ping_seconds = time.perf_counter() - started
                    conn.close()
                    return
                conn.close()
            time.sleep(0.2)
        raise TimeoutError(
            f"mlflow models serve did not answer /ping within {self.start_timeout_s:.0f} s; "
            f"see {self.log_file}"
        )

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None and not _group_alive(proc.pid):
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            deadline = time.monotonic() + wait
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.2)
            if not _group_alive(proc.pid):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def bare_load_seconds(name: str, version: str, tracking_uri: str, threads: int) -> dict[str, float]:
    """``Engine.from_registry`` in a fresh interpreter, as a worker process loads it:
    total wall time (interpreter start, imports, load) and the ``from_registry`` call."""
    code = (
        "import json, sys, time\n"
        "t0 = time.perf_counter()\n"
        "from ptdeploy.workspace.engine import Engine\n"
        "Engine.from_registry(sys.argv[1], sys.argv[2], sys.argv[3], torch_threads=int(sys.argv[4]))\n"
        "print(json.dumps({'from_registry_s': time.perf_counter() - t0}))\n"
    )
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, name, version, tracking_uri, str(threads)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=True,
    )
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    return {"process_s": time.perf_counter() - started, **measured}


def wait_for_quiet_children(pid: int, quiet_s: float = 1.0, timeout_s: float = 180.0) -> float:
    """Wait until the worker processes of server ``pid`` (spares included) have used less
    than 5 % of a core over ``quiet_s``: a spare that finished its imports. Seconds waited."""
    started = time.perf_counter()

    def cpu_seconds() -> dict[int, float]:
        out: dict[int, float] = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and b"spawn_main" in (proc / "cmdline").read_bytes():
                    ticks = os.sysconf("SC_CLK_TCK")
                    out[int(proc.name)] = (int(fields[11]) + int(fields[12])) / ticks
        return out

    before = cpu_seconds()
    while time.perf_counter() - started < timeout_s:
        time.sleep(quiet_s)
        after = cpu_seconds()
        busy = [p for p, t in after.items() if t - before.get(p, 0.0) > 0.05 * quiet_s]
        if not busy:
            break
        before = after
    return time.perf_counter() - started


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "?"


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Measure in-process rows with the benchmark's own objects out of the collector's
    reach, as a worker process runs with its imports frozen
    (``ptdeploy.workspace.worker.prepare_worker_process``).

    Without it the in-process engine ran in a process holding ~600,000 tracked objects
    (MLflow, the load-test client, the other servers' leftovers), and measured 10-20 %
    below the same engine in the worker: SmolLM2 at batch 1 13 -> 15 tokens/s, at batch 8
    64 -> 74, frozen against not, alternating runs on the 2-core machine. ``generate``
    showed no consistent difference, and gets the same treatment so that both in-process
    rows see the same process.
    """
    import gc

    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()


# --------------------------------------------------------------------------- notebooks


@contextlib.contextmanager
def kernels_started_ahead(ahead: bool) -> Iterator[None]:
    """``run-all`` and ``job run`` as shipped (``ahead``: each next kernel started while
    the current notebook runs, ``runner.WarmKernel``), or the baseline: every kernel
    started by papermill when its notebook starts."""
    from ptdeploy.templates import runner

    class NotAhead(runner.WarmKernel):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.km, self.error = None, None

        def take(self) -> None:
            return None

        def shut_down(self) -> None:
            pass

    shipped = runner.WarmKernel
    runner.WarmKernel = shipped if ahead else NotAhead  # looked up at each run
    try:
        yield
    finally:
        runner.WarmKernel = shipped

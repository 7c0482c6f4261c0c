"""One inference worker process per served entity, with request batching.

The server (an asyncio app) must stay responsive while a model loads or generates, and a
model that crashes or leaks must not take the workspace down, so each served entity runs
in its own process (``spawn``: a fork of a server with threads and an event loop is not
safe). The parent side, ``EntityWorker``, is what the server holds:

- ``infer(body)`` validates the request *in the server process* (a malformed request
  never reaches the model: ``InvalidRequestError`` -> HTTP 400), sends it through a pipe
  with a request id and awaits an asyncio future; a reader thread resolves futures as
  answers come back, in whatever order. Safe to call concurrently from the event loop.
- An error inside the worker for one request (e.g. a prompt longer than the context)
  comes back as that request's error; the worker keeps serving.
- If the process dies (killed, out of memory, crashed while loading), the state becomes
  ``FAILED`` with the reason, and pending requests fail at once instead of hanging.

Batching (inside the process). Completions and chat are batched *continuously*: the
worker keeps one ``GenerationBatch`` running; requests that arrive while it decodes join
it at the next decode step (prefilled alone, then decoded with the others) and each
leaves as soon as its own rows finish, so a short request never waits for a long one
and a burst never waits for the previous batch to drain. Rows are admitted in arrival
order (FIFO) up to the engine's ``max_batch_rows``. Embeddings are batched per forward
pass: the first waiting request opens a batch; it waits, at most ``max_wait_ms``, for
as many requests as the last batch answered plus those queued meanwhile
(``expected_batch``), and takes what else is queued, up to ``max_batch_size``.
``batching=False`` serves one request at a time (for benchmarks).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import itertools
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ptdeploy.errors import InvalidRequestError, WorkerError, WorkerNotReadyError
from ptdeploy.llm_tasks import TASK_EMBEDDINGS
from ptdeploy.workspace.schemas import parse_request

log = logging.getLogger(__name__)

LOADING = "LOADING"
READY = "READY"
FAILED = "FAILED"
STOPPED = "STOPPED"


@dataclass(frozen=True)
class WorkerConfig:
    entity_name: str
    model_name: str
    model_version: str
    tracking_uri: str
    batching: bool
    max_batch_size: int
    max_wait_ms: float
    torch_threads: int


# The longest an embedding batch waits for the requests it expects (``expected_batch``).
# Measured on the 2-core machine with 8 closed-loop MiniLM clients, two levels each: with
# 20 ms the endpoint served 117-126 requests/s, with 10 ms 112-119, and with the old
# fixed 5 ms window (no expectation) 100-106, its batches holding 3-5 requests.
DEFAULT_MAX_WAIT_MS = 20.0


def default_torch_threads() -> int:
    """Intra-op threads of one worker: ``$PTDEPLOY_WORKER_THREADS``, else half the cores.

    Measured on the 2-core machine: with torch's default (one thread per core) and the
    server, the client or another worker busy, every parallel matmul waits for a
    descheduled thread, and all-MiniLM-L6-v2 fell from 45 to 7 sentences/s (tiny-llama
    from 300 to 12 tokens/s). One thread per worker on 2 cores leaves a core to the rest.
    """
    env = os.environ.get("PTDEPLOY_WORKER_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 2) // 2)


class _Pending:
    """A request awaiting its answer: an asyncio future or a concurrent one.

    A streamed request also gets its text deltas, in order, on ``events`` (an asyncio
    queue of ``(choice index, text)``) before its future resolves.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None, stream: bool = False) -> None:
        self.loop = loop
        self.events: asyncio.Queue[tuple[int, str] | None] | None = None
        if loop is not None:
            self.future: Any = loop.create_future()
            if stream:
                self.events = asyncio.Queue()
        else:
            self.future = concurrent.futures.Future()

    def delta(self, choice: int, text: str) -> None:
        if self.events is None or self.loop is None:
            return
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, (choice, text))

    def _set(self, result: Any, exc: BaseException | None) -> None:
        if self.events is not None:
            self.events.put_nowait(None)  # wakes a stream reader: the answer is in
        if self.future.done():
            return
        if exc is not None:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)

    def resolve(self, result: Any = None, exc: BaseException | None = None) -> None:
        if self.loop is None:
            self._set(result, exc)
            return
        with contextlib.suppress(RuntimeError):  # the loop was closed: nobody waits any more
            self.loop.call_soon_threadsafe(self._set, result, exc)


class EntityWorker:
    """The server's handle on one served entity's worker process."""

    def __init__(
        self,
        entity_name: str,
        model_name: str,
        model_version: str,
        *,
        tracking_uri: str,
        batching: bool = True,
        max_batch_size: int = 8,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        torch_threads: int | None = None,
        spares: SparePool | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= 1")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={max_wait_ms} must be >= 0")
        self.config = WorkerConfig(
            entity_name,
            model_name,
            str(model_version),
            tracking_uri,
            batching,
            max_batch_size,
            float(max_wait_ms),
            torch_threads or default_torch_threads(),
        )
        self._state = LOADING
        self._error: str | None = None
        self._task: str | None = None
        self._info: dict[str, Any] = {}
        self._process: Any = None
        self._conn: Any = None
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._settled = threading.Event()  # READY, FAILED or STOPPED reached
        self._reader: threading.Thread | None = None
        self._stats: Counter[str] = Counter()
        self._batch_sizes: Counter[int] = Counter()
        self._spares = spares

    # ------------------------------------------------------------------ properties

    @property
    def entity_name(self) -> str:
        return self.config.entity_name

    @property
    def state(self) -> str:
        """``LOADING`` (from creation until the model is loaded), ``READY``, ``FAILED``, ``STOPPED``."""
        return self._state

    @property
    def error(self) -> str | None:
        """Why the worker is ``FAILED`` (names the model), else None."""
        return self._error

    @property
    def task(self) -> str | None:
        """The served task (``llm/v1/...``), known once ``READY``."""
        return self._task

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the process; returns at once (the model loads in the background).

        With a ``SparePool``, a spare process whose imports are already done takes the
        model (SmolLM2-135M READY in about 1.7 s instead of 15-18 s); otherwise a new
        process is spawned.
        """
        import multiprocessing

        if self._process is not None:
            raise RuntimeError(f"worker {self.entity_name} was already started")
        spare = self._spares.take() if self._spares is not None else None
        if spare is not None:
            self._process, self._conn = spare
            self._conn.send(("load", self.config))
        else:
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe(duplex=True)
            self._conn = parent
            self._process = ctx.Process(
                target=_worker_main,
                args=(child, self.config),
                name=f"ptdeploy-worker-{self.entity_name}",
                daemon=True,
            )
            self._process.start()
            child.close()  # the parent keeps one end: EOF on it means the process is gone
        self._reader = threading.Thread(
            target=self._read_loop, name=f"ptdeploy-worker-reader-{self.entity_name}", daemon=True
        )
        self._reader.start()

    def wait_ready(self, timeout: float | None = None) -> str:
        """Block until the worker is READY, FAILED or STOPPED (or the timeout); the state."""
        self._settled.wait(timeout)
        return self._state

    def stop(self) -> None:
        """Terminate the process (politely, then by force); pending requests fail."""
        with self._lock:
            if self._state == STOPPED:
                return
            was_ready = self._state == READY
            self._state = STOPPED
        self._settled.set()
        proc = self._process
        if proc is not None:
            if was_ready:  # finish the batch in flight; a loading process just goes
                with contextlib.suppress(Exception), self._send_lock:
                    self._conn.send(("stop",))
                proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=3)
            if proc.is_alive():
                proc.kill()  # cannot be ignored; on a loaded machine exiting can take seconds
                proc.join(timeout=30)
        with contextlib.suppress(Exception):
            self._conn.close()
        self._fail_pending(WorkerNotReadyError(f"worker {self.entity_name} was stopped"))

    # ------------------------------------------------------------------ requests

    async def infer(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate, serve and return the OpenAI-shaped response of one request.

        Raises ``InvalidRequestError`` for a request the API refuses (HTTP 400),
        ``WorkerNotReadyError`` when the worker is not READY, ``WorkerError`` when the
        worker failed on this request.
        """
        pending, request_id = self._submit(body, asyncio.get_running_loop())
        try:
            return await pending.future
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[tuple[int, str] | dict[str, Any]]:
        """Serve a completions or chat request with ``stream=true``, as it generates.

        Yields ``(choice index, text delta)`` as text becomes final, then the whole
        response (the same object ``infer`` returns). Validation errors raise before the
        first item; ``WorkerError`` if the worker fails on the request midway.
        """
        pending, request_id = self._submit(body, asyncio.get_running_loop(), stream=True)
        assert pending.events is not None
        try:
            while True:
                event = await pending.events.get()
                if event is None:
                    break
                yield event
            yield await pending.future
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    def infer_blocking(self, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """``infer`` for callers without an event loop (benchmarks, scripts)."""
        pending, request_id = self._submit(body, None)
        try:
            return pending.future.result(timeout)
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    def _submit(
        self, body: dict[str, Any], loop: asyncio.AbstractEventLoop | None, stream: bool = False
    ) -> tuple[_Pending, int]:
        if self._state != READY:
            raise WorkerNotReadyError(self._not_ready_message())
        assert self._task is not None
        request = parse_request(self._task, body)  # InvalidRequestError: never sent
        if bool(getattr(request, "stream", False)) != stream:
            raise InvalidRequestError(
                "stream",
                "stream=true needs a streaming call (EntityWorker.stream)"
                if not stream
                else "EntityWorker.stream serves requests with stream=true only",
            )
        pending = _Pending(loop, stream)
        with self._lock:
            request_id = next(self._ids)
            self._pending[request_id] = pending
            self._stats["requests"] += 1
        try:
            with self._send_lock:
                self._conn.send(("infer", request_id, request))
        except (OSError, ValueError) as exc:
            with self._lock:
                self._pending.pop(request_id, None)
            raise WorkerNotReadyError(
                f"worker {self.entity_name} cannot take requests: {self._error or exc}"
            ) from exc
        return pending, request_id

    def _not_ready_message(self) -> str:
        what = f"worker {self.entity_name} ({self.config.model_name} version {self.config.model_version})"
        if self._state == LOADING:
            return f"{what} is still loading the model"
        if self._state == FAILED:
            return f"{what} failed: {self._error}"
        return f"{what} is {self._state}"

    def stats(self) -> dict[str, Any]:
        """Counters since start: requests, batches, batch sizes, errors, load time..."""
        with self._lock:
            sizes = dict(sorted(self._batch_sizes.items()))
            return {
                "state": self._state,
                "pid": self.pid,
                "requests": self._stats["requests"],
                "responses": self._stats["responses"],
                "errors": self._stats["errors"],
                "pending": len(self._pending),
                "batches": sum(sizes.values()),
                "batch_sizes": sizes,  # requests per batch -> how many batches
                "max_batch_size": max(sizes, default=0),
                "batching": self.config.batching,
                **self._info,
            }

    # ------------------------------------------------------------------ reader thread

    def _read_loop(self) -> None:
        conn = self._conn
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # an answer that cannot be unpickled
                log.error("worker %s sent an unreadable message: %s", self.entity_name, exc)
                continue
            self._handle(message)
        self._on_exit()

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            info = message[1]
            with self._lock:
                self._task = info["task"]
                self._info = {k: v for k, v in info.items() if k != "task"}
                if self._state == LOADING:
                    self._state = READY
            if self._spares is not None:  # the model is in: now a replacement may import
                self._spares.refill()
            self._settled.set()
        elif kind == "failed":
            with self._lock:
                self._error = message[1]
                if self._state == LOADING:
                    self._state = FAILED
            if self._spares is not None:
                self._spares.refill()
            self._settled.set()
        elif kind == "batch":
            with self._lock:
                self._batch_sizes[message[1]] += 1
        elif kind == "delta":
            _, request_id, choice, text = message
            with self._lock:
                pending = self._pending.get(request_id)
            if pending is not None:
                pending.delta(choice, text)
        elif kind == "result":
            _, request_id, response = message
            with self._lock:
                pending = self._pending.get(request_id)
                self._stats["responses"] += 1
            if pending is not None:
                pending.resolve(response)
        elif kind == "error":
            _, request_id, exc = message
            with self._lock:
                pending = self._pending.get(request_id)
                self._stats["errors"] += 1
            if pending is not None:
                pending.resolve(exc=exc)

    def _on_exit(self) -> None:
        """The pipe closed: the process exited (or was stopped)."""
        proc = self._process
        if proc is not None:
            proc.join(timeout=5)
        code = proc.exitcode if proc is not None else None
        with self._lock:
            if self._state != STOPPED:
                reason = _exit_reason(code)
                if self._state == LOADING and self._error is None:
                    self._error = f"the worker process {reason} while loading {self._model()}"
                elif self._state == READY:
                    self._error = f"the worker process serving {self._model()} {reason}"
                self._state = FAILED
        if self._spares is not None:
            self._spares.refill()
        self._settled.set()
        self._fail_pending(WorkerError(f"worker {self.entity_name} is gone: {self._error}"))

    def _model(self) -> str:
        return f"{self.config.model_name} version {self.config.model_version}"

    def _fail_pending(self, exc: WorkerError) -> None:
        with self._lock:
            pending = list(self._pending.values())
        for p in pending:
            p.resolve(exc=exc)

    def __repr__(self) -> str:
        return f"EntityWorker({self.entity_name!r}, {self._model()!r}, state={self._state})"


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


# ---------------------------------------------------------------------- spare processes

SPARES_ENV = "PTDEPLOY_SPARE_WORKERS"


def spare_workers_wanted() -> int:
    """How many spare worker processes the local workspace keeps: ``$PTDEPLOY_SPARE_WORKERS``
    (default 1; 0 turns them off)."""
    env = os.environ.get(SPARES_ENV, "").strip()
    return int(env) if env.isdigit() else 1


class SparePool:
    """Worker processes started ahead of need, their imports done, waiting for a model.

    A fresh worker spends most of its start-up importing torch, transformers and MLflow
    (seconds on 2 cores) before it reads a single weight. The local workspace keeps
    ``size`` such processes ready: ``take`` hands one over (and starts its replacement),
    so an endpoint create or a worker restart only pays for loading the model. The
    replacement of a spare that was taken starts once that worker has loaded its model
    (``refill``), not while it loads: on a small machine both would compete for the CPU.
    A spare costs the memory of those imports (about 400 MB); spares are daemon
    processes and go with the server.
    """

    def __init__(self, size: int = 1) -> None:
        self.size = max(0, int(size))
        self._lock = threading.Lock()
        self._spares: list[tuple[Any, Any]] = []
        self._fill()

    def _fill(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        while len(self._spares) < self.size:
            parent, child = ctx.Pipe(duplex=True)
            process = ctx.Process(
                target=_spare_main, args=(child,), name="ptdeploy-worker-spare", daemon=True
            )
            process.start()
            child.close()
            self._spares.append((process, parent))

    def take(self) -> tuple[Any, Any] | None:
        """A live spare (process, connection), or None (then spawn a worker as usual)."""
        with self._lock:
            while self._spares:
                process, conn = self._spares.pop(0)
                if process.is_alive():
                    return process, conn
                with contextlib.suppress(Exception):
                    conn.close()
            return None

    def refill(self) -> None:
        """Start spares up to ``size`` again (after a taken one finished loading)."""
        with self._lock:
            self._fill()

    def close(self) -> None:
        with self._lock:
            spares, self._spares, self.size = self._spares, [], 0
        for process, conn in spares:
            with contextlib.suppress(Exception):
                conn.close()
            process.terminate()
            process.join(timeout=3)


def _spare_main(conn: Any) -> None:
    """A spare worker: import what loading a model needs, then wait to be given one."""
    prepare_worker_process()
    try:
        message = conn.recv()
    except (EOFError, OSError):  # the server went away before needing this spare
        os._exit(0)
    if not (isinstance(message, tuple) and message and message[0] == "load"):
        os._exit(0)
    _worker_main(conn, message[1])


def _process_environment() -> None:
    """The environment of every worker process, before anything imports transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    skip_unused_imports()


def skip_unused_imports() -> None:
    """Keep scikit-learn out of the worker processes ptdeploy owns.

    transformers' generation module (``transformers/generation/candidate_generator.py``,
    imported by every causal LM's modeling code through ``GenerationMixin``) runs
    ``if is_sklearn_available(): from sklearn.metrics import roc_curve`` at import time,
    for one feature: assisted generation with an ``assistant_confidence_threshold``. The
    engine never calls ``generate`` with an assistant model, yet every process that loads
    a model pays for it (``AutoTokenizer`` and ``AutoModel*`` import the generation module
    too). Measured on the 2-core machine: 0.85-0.9 s of CPU and 670 modules on top of
    torch, transformers and MLflow (which already imports part of SciPy), in the spare
    before it is given a model and in a worker started without one; ``python -X
    importtime -c "import transformers.models.llama.modeling_llama"`` alone counts
    1.9-2.1 s for scikit-learn and SciPy.

    How: ``sys.modules["sklearn"] = None``, the interpreter's documented way to block an
    import. ``importlib.util.find_spec("sklearn")`` then answers None, so transformers'
    own ``is_sklearn_available()`` is False and its generation module takes the path it
    takes on a machine without scikit-learn (the threshold feature off, nothing else
    changed); any other ``import sklearn`` in the process fails loudly with ImportError
    rather than half-working. Rejected: replacing ``transformers.utils.is_sklearn_available``
    (depends on how that module binds the name, and on its ``lru_cache``), uninstalling
    scikit-learn (MLflow's sklearn flavor and users' notebooks share this environment).

    Only for the worker and spare processes: a user's process keeps scikit-learn. Does
    nothing once scikit-learn or transformers' generation module is imported (the cost
    is paid, and blocking then would break a module that holds it).
    """
    if "sklearn" in sys.modules or "transformers.generation.candidate_generator" in sys.modules:
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]
    import_utils = sys.modules.get("transformers.utils.import_utils")
    if import_utils is not None:  # an earlier answer is cached: ask again
        import_utils.is_sklearn_available.cache_clear()


_prepared = False


def prepare_worker_process() -> None:
    """What a worker process can do before it knows its model (a spare does it ahead of
    need): its environment, the imports loading a model needs, ``_warm_up_loading``, then
    ``gc.freeze()``. Once per process.

    Why freeze: the imports leave millions of long-lived objects (torch, transformers,
    MLflow), and every full collection while the model loads walked them all; loading the
    tokenizer (a 3.5 MB JSON vocabulary turned into Python objects) triggered such
    collections. Measured in the local workspace's SmolLM2 worker: the tokenizer phase took
    0.64-0.89 s, 0.36-0.50 s with the imported objects frozen (moved out of the collector's
    generations; they live as long as the process anyway). Garbage made before freezing is
    collected first.
    """
    global _prepared
    if _prepared:
        return
    _process_environment()
    import mlflow.models  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from mlflow import MlflowClient  # noqa: F401
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import ptdeploy.workspace.engine  # noqa: F401

    _warm_up_loading()
    gc.collect()
    gc.freeze()
    _prepared = True


def _warm_up_loading() -> None:
    """What a spare can do before it knows its model, measured on the 2-core machine:
    the first ``MlflowClient`` on the local registry costs about 2 s (its SQLAlchemy store
    checks the schema; later clients on the same URI reuse it: 0.03 s), and transformers
    imports a model family's modules on first use (Llama, BERT: the families served here)."""
    with contextlib.suppress(Exception):
        from mlflow import MlflowClient

        from ptdeploy import state

        uri = state.tracking_uri()
        MlflowClient(tracking_uri=uri, registry_uri=uri)
    with contextlib.suppress(Exception):
        import transformers.models.bert.modeling_bert  # noqa: F401
        import transformers.models.llama.modeling_llama  # noqa: F401


# ---------------------------------------------------------------------- the process


def _worker_main(conn: Any, config: WorkerConfig) -> None:
    """Entry point of the worker process: load the engine, then serve until told to stop."""
    logging.basicConfig(level=logging.INFO, format=f"[worker {config.entity_name}] %(message)s")
    started = time.monotonic()
    try:
        prepare_worker_process()  # the environment and imports; done already in a spare
        from ptdeploy.workspace.engine import Engine

        engine = Engine.from_registry(
            config.model_name,
            config.model_version,
            config.tracking_uri,
            torch_threads=config.torch_threads,
            served_name=config.entity_name,
            max_batch_rows=max(16, config.max_batch_size),
        )
    except BaseException as exc:
        message = f"cannot load {config.model_name} version {config.model_version}: {exc}"
        with contextlib.suppress(Exception):
            conn.send(("failed", message))
        expected = type(exc).__name__ == "ModelLoadError"  # explained; no traceback needed
        log.error("%s%s", message, "" if expected else "\n" + traceback.format_exc())
        conn.close()
        raise SystemExit(1) from None
    load_seconds = time.monotonic() - started
    conn.send(
        (
            "ready",
            {
                "task": engine.task,
                "batch_invariant": engine.batch_invariant,
                "linear_row_multiple": engine.linear_row_multiple,
                "torch_threads": config.torch_threads,
                "load_seconds": round(load_seconds, 3),
            },
        )
    )
    log.info(
        "loaded %s version %s in %.2f s: %s",
        config.model_name,
        config.model_version,
        load_seconds,
        engine.load_phases.describe(),
    )
    inbox: queue.Queue[tuple[Any, ...] | None] = queue.Queue()

    def receive() -> None:
        while True:
            try:
                inbox.put(conn.recv())
            except (EOFError, OSError):  # the server is gone
                inbox.put(None)
                return

    threading.Thread(target=receive, name="ptdeploy-worker-inbox", daemon=True).start()
    _serve_forever(engine, conn, inbox, config)
    conn.close()
    # Nothing is left to save; skipping the interpreter's teardown of torch and friends
    # turns a polite stop from ~3 s into a few milliseconds.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _next_batch(
    inbox: queue.Queue[tuple[Any, ...] | None], config: WorkerConfig, expected: int | None = None
) -> tuple[list[tuple[int, Any]], bool]:
    """The next batch of (request id, request), FIFO; and whether to stop after it.

    The batch waits (at most ``max_wait_ms``) only until it holds ``expected`` requests
    (default: ``max_batch_size``), then takes whatever else is already queued without
    waiting. ``expected`` <= 1 (a lone client) waits for nothing: no batching delay.
    """
    first = inbox.get()
    if first is None or first[0] == "stop":
        return [], True
    batch = [(first[1], first[2])]
    if not config.batching:
        return batch, False
    expected = config.max_batch_size if expected is None else expected
    deadline = time.monotonic() + config.max_wait_ms / 1000.0
    while len(batch) < config.max_batch_size:
        remaining = deadline - time.monotonic() if len(batch) < expected else 0.0
        try:
            message = inbox.get(timeout=remaining) if remaining > 0 else inbox.get_nowait()
        except queue.Empty:
            break
        if message is None or message[0] == "stop":
            return batch, True
        batch.append((message[1], message[2]))
    return batch, False


def expected_batch(answered: int, queued: int, max_batch_size: int) -> int:
    """How many requests the next embedding batch waits for (``_next_batch``).

    The clients a batch just answered tend to send their next request at once (a load
    test, a batch job, a notebook's thread pool), and the requests queued while it ran
    are already there: the next batch waits for that many, within ``max_wait_ms``. With
    8 closed-loop clients on the 2-core machine a fixed 5 ms window split them into two
    half batches (4 + 4, the answered half still on its way back), each costing more per
    request than one batch of 8; a lone client (1 + 0) waits for nothing, and two
    clients no longer wait the window out for a third that never comes.
    """
    return max(1, min(max_batch_size, answered + queued))


def _serve_forever(
    engine: Any, conn: Any, inbox: queue.Queue[tuple[Any, ...] | None], config: WorkerConfig
) -> None:
    if engine.task != TASK_EMBEDDINGS:
        _serve_continuously(engine, conn, inbox, one_at_a_time=not config.batching)
        return
    expected = 1
    while True:
        batch, stop = _next_batch(inbox, config, expected)
        if batch:
            _serve_batch(engine, conn, batch)
        if stop:
            return
        expected = expected_batch(len(batch), inbox.qsize(), config.max_batch_size)


def _serve_continuously(
    engine: Any,
    conn: Any,
    inbox: queue.Queue[tuple[Any, ...] | None],
    *,
    one_at_a_time: bool = False,
) -> None:
    """Generation with continuous batching: requests join the running batch between
    decode steps (``GenerationBatch``) instead of waiting for it to finish.

    The loop blocks on the inbox only when nothing is being generated; otherwise it takes
    whatever has arrived, then runs one step. "stop" finishes the requests in flight.
    ``one_at_a_time`` (batching off) takes the next request only when the last is done.
    A request with ``stream=true`` sends its text deltas as they settle.
    """
    from ptdeploy.workspace.engine import GenerationBatch

    batch = GenerationBatch(engine)
    unanswered: dict[int, bool] = {}
    stopping = False

    def answer(request_id: int, result: dict[str, Any] | Exception) -> None:
        unanswered.pop(request_id, None)
        if isinstance(result, Exception):
            conn.send(("error", request_id, _portable_error(result)))
        else:
            conn.send(("result", request_id, result))

    def delta(request_id: int, choice: int, text: str) -> None:
        conn.send(("delta", request_id, choice, text))

    while True:
        arrived = 0
        block = batch.idle and not stopping
        while not (one_at_a_time and (arrived or not batch.idle)):
            try:
                message = inbox.get() if block else inbox.get_nowait()
            except queue.Empty:
                break
            block = False
            if message is None or message[0] == "stop":
                stopping = True
                continue
            _, request_id, request = message
            unanswered[request_id] = True
            arrived += 1
            engine.submit(
                batch,
                request,
                functools.partial(answer, request_id),
                functools.partial(delta, request_id) if getattr(request, "stream", False) else None,
            )
        if arrived:
            conn.send(("batch", arrived))
        if not batch.idle:
            try:
                batch.step()
            except Exception as exc:  # the engine isolates requests; this is a last resort
                log.error("generation step failed: %s\n%s", exc, traceback.format_exc())
                for request_id in list(unanswered):
                    answer(request_id, exc)
                batch = GenerationBatch(engine)
        if stopping and batch.idle:
            return


def _serve_batch(engine: Any, conn: Any, batch: list[tuple[int, Any]]) -> None:
    ids = [request_id for request_id, _ in batch]
    conn.send(("batch", len(batch)))
    answered: set[int] = set()

    def answer(index: int, result: dict[str, Any] | Exception) -> None:
        answered.add(index)
        if isinstance(result, Exception):
            conn.send(("error", ids[index], _portable_error(result)))
        else:
            conn.send(("result", ids[index], result))

    try:
        engine.serve([request for _, request in batch], on_response=answer)
    except Exception as exc:  # the engine isolates requests; this is a last resort
        log.error("batch failed: %s\n%s", exc, traceback.format_exc())
        for index in range(len(batch)):
            if index not in answered:
                answer(index, exc)


def _portable_error(exc: Exception) -> Exception:
    """An exception the parent can unpickle and the server can classify."""
    if isinstance(exc, InvalidRequestError):
        return exc
    log.error("request failed: %s", "".join(traceback.format_exception(exc)))
    return WorkerError(f"{type(exc).__name__}: {exc}")

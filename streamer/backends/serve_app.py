"""The Ray Serve application: replicas that load the model file and answer chunks of windows
from every daemon, batched across daemons by ``@serve.batch``. The only module that imports Ray
(with ``streamer.cluster_cli``'s handlers, which import this one).

- **The model travels as bytes**, as the deployment's init argument: ``cluster up`` reads the
  file where it runs and each replica writes it to a private temp file and loads it. Nodes of a
  real cluster share no filesystem, so a path would have to exist, identical, on every node (and
  would silently serve a different file where it differs); 16.7 MB once per replica start is
  cheap. Replicas report the file's sha256, so a daemon knows which model answered.
- **Daemons talk HTTP to Serve's proxy** (``streamer.backends.remote``), not through a Ray
  handle: a daemon then needs no Ray (no Ray node on its machine, no Ray/Python version lock-step
  with the cluster), and a cluster that dies cannot take the daemon's process with it (a Ray
  driver whose raylet goes away exits). The proxy runs on every node, so a load balancer spreads
  daemons over nodes.
- Batching counts windows (``batch_size_fn``), not requests, so ``max_batch`` is what the
  model sees at most; a request larger than it is refused (the daemon's chunks are smaller).
  Predictions and explanations come in separate requests and separate batches, and one compute
  thread takes waiting prediction batches first, so a window's prediction waits for at most
  one Grad-CAM batch (``EXPLAIN_MAX_BATCH`` windows), as in-process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import queue
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from streamer.backends import wire

APP_NAME = "emotion-monitor"
DEPLOYMENT_NAME = "EmotionModel"
ROUTE_PREFIX = "/emotion"
DEFAULT_HTTP_PORT = 8000
#: A replica accepts this many requests beyond one full batch, so the next batch forms while
#: the current one computes; past ``max_queued`` waiting requests the proxy answers 503.
ONGOING_PER_BATCH = 2
DEFAULT_MAX_QUEUED = 64
#: Windows per Grad-CAM batch: what a prediction may wait behind (~33 ms a window on one core).
EXPLAIN_MAX_BATCH = 4
PREDICT, EXPLAIN = 0, 1  # compute priorities: lower first


class PriorityWorker:
    """One compute thread that runs waiting prediction batches before explanation batches."""

    def __init__(self) -> None:
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        threading.Thread(target=self._loop, name="compute", daemon=True).start()

    def submit(self, priority: int, fn: Any, *args: Any) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((priority, next(self._order), fn, args, fut))
        return fut

    def _loop(self) -> None:
        while True:
            _, _, fn, args, fut = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # the caller's await raises it
                fut.set_exception(exc)


@dataclass
class ReplicaSettings:
    """How each replica runs the model (``cluster up`` flags)."""

    device: str = "auto"
    precision: str = "auto"  # streamer.model.resolve_precision
    threads: int = 2
    max_batch: int = 32  # windows per forward, across daemons
    batch_wait_s: float = 0.005
    explain_drops: bool = False


class EmotionModel:
    """One replica: the model file (bytes), batched forward + Grad-CAM over HTTP."""

    def __init__(self, model_bytes: bytes, settings: dict, token_digest: str | None = None
                 ) -> None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (runtime_env too)
        self._token_digest = token_digest  # None: no token (a loopback-only proxy)
        import hashlib

        import torch

        from streamer.backends.compute import Compute
        from streamer.model import ServedModel

        self.settings = ReplicaSettings(**settings)
        torch.set_num_threads(max(1, self.settings.threads))
        fd, path = tempfile.mkstemp(prefix="emotion-model-", suffix=".pt")
        with os.fdopen(fd, "wb") as fh:
            fh.write(model_bytes)
        try:
            model = ServedModel.load(path, self.settings.device, self.settings.precision)
        finally:
            Path(path).unlink(missing_ok=True)
        self.compute = Compute(model, hashlib.sha256(model_bytes).hexdigest(),
                               self.settings.max_batch, self.settings.explain_drops)
        self.compute.warmup()
        self.card = {**model.card, "sha256": self.compute.sha256}
        self.replica = serve.get_replica_context().replica_tag \
            if hasattr(serve.get_replica_context(), "replica_tag") else str(os.getpid())
        # One compute thread: the replica's loop keeps accepting and batching meanwhile.
        self._worker = PriorityWorker()
        self.batched.set_max_batch_size(self.settings.max_batch)
        self.batched.set_batch_wait_timeout_s(self.settings.batch_wait_s)
        self.batched_explain.set_max_batch_size(min(EXPLAIN_MAX_BATCH, self.settings.max_batch))
        self.batched_explain.set_batch_wait_timeout_s(self.settings.batch_wait_s)
        self.started = time.time()

    async def __call__(self, request: Request) -> Response:
        if not wire.authorized(request.headers.get("authorization"), self._token_digest):
            return JSONResponse({"error": "wrong or missing token"}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="emotion-monitor"'})
        if request.method == "GET":  # /card: which model answers here
            return JSONResponse({"card": self.card, "replica": self.replica,
                                 "settings": asdict(self.settings)})
        try:
            chunk = wire.decode_chunk(await request.body())
        except wire.WireError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        limit = self.settings.max_batch if chunk.predict else min(EXPLAIN_MAX_BATCH,
                                                                    self.settings.max_batch)
        if chunk.n > limit:
            return JSONResponse({"error": f"{chunk.n} windows > the batch limit {limit}"},
                                status_code=413)
        body = await (self.batched(chunk) if chunk.predict else self.batched_explain(chunk))
        return Response(body, media_type="application/json")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005,
                 batch_size_fn=lambda chunks: sum(c.n for c in chunks))
    async def batched(self, chunks: list[wire.Chunk]) -> list[bytes]:
        return await asyncio.wrap_future(self._worker.submit(PREDICT, self._run, chunks))

    @serve.batch(max_batch_size=EXPLAIN_MAX_BATCH, batch_wait_timeout_s=0.005,
                 batch_size_fn=lambda chunks: sum(c.n for c in chunks))
    async def batched_explain(self, chunks: list[wire.Chunk]) -> list[bytes]:
        return await asyncio.wrap_future(self._worker.submit(EXPLAIN, self._run, chunks))

    def _run(self, chunks: list[wire.Chunk]) -> list[bytes]:
        import numpy as np

        offsets = np.cumsum([0, *[c.n for c in chunks]])
        predict = chunks[0].predict  # a batch holds one kind (its own batcher)
        merged = wire.Chunk(np.concatenate([c.waves for c in chunks]),
                            [s for c in chunks for s in c.streams],
                            [q for c in chunks for q in c.seqs],
                            [int(o) + i for c, o in zip(chunks, offsets, strict=False)
                             for i in c.explain], predict)
        probs, expls, errors = self.compute.run(merged)
        out, k = [], 0
        for c, lo in zip(chunks, offsets, strict=False):
            n_expl = len(c.explain)
            rows = probs[lo:lo + c.n] if predict else probs[:0]
            out.append(wire.encode_result(rows, expls[k:k + n_expl], self.compute.identity,
                                          errors))
            k += n_expl
        return out


def build_app(model_bytes: bytes, settings: ReplicaSettings, num_replicas: int = 1,
              autoscale: tuple[int, int] | None = None, num_cpus: float = 1.0,
              num_gpus: float = 0.0, max_queued: int = DEFAULT_MAX_QUEUED,
              token: str | None = None) -> Any:
    """The bound application. ``autoscale`` (min, max) replaces a fixed ``num_replicas``:
    Serve adds replicas when each has more than one full batch waiting. With ``token`` every
    request must carry it (``Authorization: Bearer``); replicas keep only its digest."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus,
                              "runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}},
        "max_ongoing_requests": max(2, ONGOING_PER_BATCH * settings.max_batch),
        "max_queued_requests": max_queued,
    }
    if autoscale is not None:
        options["autoscaling_config"] = {
            "min_replicas": autoscale[0], "max_replicas": autoscale[1],
            "target_ongoing_requests": max(1, settings.max_batch // 4)}
    else:
        options["num_replicas"] = num_replicas
    return serve.deployment(**options)(EmotionModel).bind(
        model_bytes, asdict(settings), wire.token_digest(token) if token else None)


def up(address: str | None, model_path: str | Path, settings: ReplicaSettings,
       http_host: str = "127.0.0.1", http_port: int = DEFAULT_HTTP_PORT,
       proxy_location: str = "EveryNode", token: str | None = None, **deploy: Any) -> str:
    """Deploy (or update) the application on a running cluster; its URL. Serve's HTTP
    options (host, port, where proxies run) are fixed by the first ``up`` on a cluster.
    ``proxy_location="HeadOnly"`` where several nodes share one machine (one port each).
    A proxy bound beyond loopback needs ``token`` (``ValueError`` otherwise): call audio
    would otherwise be open to anyone who can reach the port."""
    import ray

    from streamer.server import is_loopback

    if not token and not is_loopback(http_host):
        raise ValueError(f"refusing to serve on {http_host!r} without a token: anyone on the "
                         f"network could send windows and read the results. Set --token or "
                         f"{wire.TOKEN_ENV}, or keep --http-host 127.0.0.1.")

    model_bytes = Path(model_path).read_bytes()
    if not ray.is_initialized():
        ray.init(address=address or "auto", logging_level="ERROR", log_to_driver=False)
    serve.start(http_options={"host": http_host, "port": http_port},
                proxy_location=proxy_location)
    serve.run(build_app(model_bytes, settings, token=token, **deploy), name=APP_NAME,
              route_prefix=ROUTE_PREFIX, blocking=False)
    return f"http://{'127.0.0.1' if http_host in ('0.0.0.0', '::') else http_host}:" \
           f"{http_port}{ROUTE_PREFIX}"


def status(address: str | None) -> dict:
    """The application's state and its replicas, as Serve reports them."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or "auto", logging_level="ERROR", log_to_driver=False)
    app = serve.status().applications.get(APP_NAME)
    if app is None:
        return {"app": APP_NAME, "status": "NOT_DEPLOYED"}
    deps = {name: {"status": str(getattr(d.status, "value", d.status)),
                   "replicas": {str(getattr(k, "value", k)): v
                                for k, v in d.replica_states.items()},
                   "message": d.message}
            for name, d in app.deployments.items()}
    return {"app": APP_NAME, "status": str(getattr(app.status, "value", app.status)),
            "message": app.message, "deployments": deps}


def down(address: str | None) -> None:
    """Delete the application (the Ray cluster and Serve's proxies stay up)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or "auto", logging_level="ERROR", log_to_driver=False)
    serve.delete(APP_NAME)

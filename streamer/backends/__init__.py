"""Where a daemon's windows are inferred: in-process (``streamer.engine.Engine``, the default)
or on a Ray Serve cluster (``remote``: the daemon-side client; ``serve_app``: the replicas, the
only module that imports Ray). Both have the engine interface the daemon uses (``warmup``,
``feed``, ``process``, ``end_stream``, ``close``, ``stats``); ``open_engine`` picks one from
the daemon's config. Light on purpose (stdlib only): the daemon and the CLI import it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

LOCAL = "local"


@dataclass(frozen=True)
class RemoteOptions:
    """How the daemon talks to Serve (``stream --inference-*`` flags)."""

    fallback_local: bool = False  # infer locally (same model file) while Serve is unreachable
    timeout_s: float = 10.0  # per request; its windows are dropped (counted) past it
    request_windows: int = 8  # voiced windows per request
    max_inflight: int = 4  # concurrent requests per daemon (spread over replicas)
    retries: int = 1  # of a failed request (a replica died under it)
    check_model: bool = False  # --model given: refuse a cluster that serves another file
    token: str | None = None  # the deployment's (``cluster up --token``), sent as a Bearer


class InferenceUnavailable(Exception):
    """The configured inference backend cannot be used at start (unreachable, wrong model)."""


def open_engine(config: Any, model: Any = None) -> tuple[Any, Any]:
    """(model, engine) for ``config`` (a ``DaemonConfig``), warmed up. ``model`` is reused
    when given (local: a ``ServedModel``; remote: the ``RemoteModel`` the CLI checked)."""
    from streamer.vad import VadConfig

    vad = None if config.vad == "off" else VadConfig(
        method=config.vad, threshold=config.vad_threshold, min_voiced=config.vad_min_voiced)
    if config.inference == LOCAL:
        from streamer.engine import Engine
        from streamer.model import ServedModel

        if model is None:
            model = ServedModel.load(config.model_path, config.device, config.precision)
        engine = Engine(model, vad=vad, explain_every=config.explain_every,
                        max_batch=config.max_batch, stream_norm=config.stream_norm)
    else:
        model, engine = _open_remote(config, model, vad)
    engine.warmup()  # the TorchScript executor's first calls are slow (D2); remote: one trip
    return model, engine


def connect_remote(config: Any) -> Any:
    """The served model (``RemoteModel``) after checking the deployment answers and, with the
    local fallback, that the local model file is the one the replicas serve."""
    from streamer.backends.remote import RemoteError, Unreachable, connect

    if config.stream_norm:
        raise InferenceUnavailable("--stream-norm keeps per-stream state in the model's "
                                   "process; it is not available with remote inference")
    try:
        _, model = connect(config.inference, config.remote)
    except (RemoteError, ValueError) as exc:
        hint = (" (is the Serve application up? emotion-monitor cluster up)"
                if isinstance(exc, Unreachable) else "")
        raise InferenceUnavailable(f"remote inference unavailable: {exc}{hint}") from None
    if config.remote.fallback_local or config.remote.check_model:
        # Never let a --model silently differ from what the windows are inferred with.
        from streamer.backends.compute import file_sha256

        local = file_sha256(config.model_path)
        if local != model.card.get("sha256"):
            flag = ("--inference-fallback local" if config.remote.fallback_local
                    else "--model")
            raise InferenceUnavailable(
                f"{flag}: {config.model_path} (sha256 {local[:12]}) is not "
                f"the model the cluster serves ({str(model.card.get('sha256'))[:12]}, "
                f"{model.card.get('name')}); give the same file with --model, or leave "
                "--model out to use the cluster's")
    return model


def _open_remote(config: Any, model: Any, vad: Any) -> tuple[Any, Any]:
    from streamer.backends.remote import RemoteEngine, ServeClient

    if model is None or not hasattr(model, "url"):
        model = connect_remote(config)
    fallback = None
    if config.remote.fallback_local:  # loaded now: an outage is no time to load a model
        from streamer.backends.compute import Compute, file_sha256
        from streamer.model import ServedModel

        served = ServedModel.load(config.model_path, config.device, config.precision)
        fallback = Compute(served, file_sha256(config.model_path), config.max_batch)
        fallback.warmup()
    client = ServeClient(model.url, config.remote.timeout_s, config.remote.token)
    return model, RemoteEngine(client, model, vad, config.explain_every, config.remote,
                               fallback)

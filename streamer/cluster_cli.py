"""`emotion-monitor cluster up | status | down`: the Ray Serve application that daemons started
with ``stream --inference ray...`` send their windows to (docs/scale.md).

Ray itself is started with Ray's own commands (``ray start --head``, ``ray start
--address=HEAD:6379`` on each worker); these commands only deploy, show and delete the
application. Light on purpose: Ray is imported inside the handlers (the ``ray`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from emotion_monitor.cliutil import (
    PRECISION_HELP,
    PRECISIONS,
    add_command,
    default_model_path,
    model_help,
)

RAY_MISSING = "error: Ray Serve is not installed: pip install 'emotion-monitor[ray]'"


def register(sub: Any) -> None:
    p = add_command(sub, "cluster", help="the Ray Serve application for --inference ray",
                    description="Deploy, show or delete the model on a running Ray cluster "
                    "(started with `ray start --head`); daemons then infer there with "
                    "`stream --inference ray://HOST`. See docs/scale.md.",
                    example="emotion-monitor cluster up --replicas 2")
    ss = p.add_subparsers(dest="cluster_command", metavar="ACTION")
    up = add_command(ss, "up", help="deploy (or update) the model on the cluster",
                     description="Deploy the model file on the running Ray cluster as the "
                     "Serve application 'emotion-monitor' (HTTP route /emotion). The file's "
                     "bytes travel with the deployment, so worker nodes need no copy of it.",
                     example="emotion-monitor cluster up --model models/default.pt "
                     "--replicas 2 --max-batch 32", handler=_up)
    up.add_argument("--model", default=str(default_model_path()), help=model_help())
    rep = up.add_mutually_exclusive_group()
    rep.add_argument("--replicas", type=int, default=1, help="fixed replica count")
    rep.add_argument("--autoscale", default=None, metavar="MIN:MAX",
                     help="let Serve scale replicas between MIN and MAX by queued work")
    up.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    up.add_argument("--num-gpus", type=float, default=0.0,
                    help="GPUs per replica (fractions share a GPU; > 0 runs on CUDA)")
    up.add_argument("--threads", type=int, default=2, help="torch threads per replica")
    up.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    up.add_argument("--max-batch", type=int, default=32,
                    help="windows per forward, from every daemon (default 32)")
    up.add_argument("--batch-wait-ms", type=float, default=5.0,
                    help="how long a replica waits to fill a batch (default 5)")
    up.add_argument("--max-queued", type=int, default=64,
                    help="requests waiting for a replica before Serve answers 503 "
                    "(daemons count those windows dropped; default 64)")
    up.add_argument("--http-host", default="127.0.0.1",
                    help="Serve's HTTP proxy bind address (0.0.0.0 for daemons on other "
                    "machines; default 127.0.0.1)")
    up.add_argument("--http-port", type=int, default=8000, help="Serve's HTTP port")
    up.add_argument("--token", default=None,
                    help="every request must carry it (Authorization: Bearer); needed for an "
                    "--http-host beyond loopback; daemons give it with --inference-token "
                    "(default: $EMOTION_MONITOR_SERVE_TOKEN)")
    up.add_argument("--proxy-location", choices=["EveryNode", "HeadOnly"], default="EveryNode",
                    help="Serve's HTTP proxies: one on every node (default; put a load "
                    "balancer in front) or the head's only (nodes sharing one machine)")
    st = add_command(ss, "status", help="the application's state and replicas",
                     description="Show the Serve application's state, its replicas, and the "
                     "model that answers.", example="emotion-monitor cluster status --json",
                     handler=_status)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    add_command(ss, "down", help="delete the application (Ray keeps running)",
                description="Delete the Serve application; the Ray cluster and Serve's "
                "proxies stay up (`ray stop` stops Ray).", example="emotion-monitor cluster down",
                handler=_down)
    for q in ss.choices.values():
        q.add_argument("--address", default=None,
                       help="Ray cluster address, e.g. HEAD:6379 (default: $RAY_ADDRESS, else "
                       "the cluster started on this machine)")


def _serve_app() -> Any:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from streamer.backends import serve_app
    except ImportError:
        print(RAY_MISSING, file=sys.stderr)
        raise SystemExit(2) from None
    return serve_app


def _connect_error(exc: Exception) -> int:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"error: no Ray cluster reachable ({first}); start one with `ray start --head`",
          file=sys.stderr)
    return 1


def _up(args: argparse.Namespace) -> int:
    app = _serve_app()
    autoscale = None
    if args.autoscale:
        try:
            lo, hi = (int(x) for x in args.autoscale.split(":"))
            if not 0 <= lo <= hi or hi < 1:
                raise ValueError
        except ValueError:
            print("error: --autoscale MIN:MAX with 0 <= MIN <= MAX, MAX >= 1", file=sys.stderr)
            return 2
        autoscale = (lo, hi)
    if not os.path.isfile(args.model):
        print(f"error: model file not found: {args.model}", file=sys.stderr)
        return 2
    settings = app.ReplicaSettings(device="cuda" if args.num_gpus > 0 else "cpu",
                                   precision=args.precision, threads=args.threads,
                                   max_batch=args.max_batch,
                                   batch_wait_s=args.batch_wait_ms / 1000.0)
    token = args.token or os.environ.get(app.wire.TOKEN_ENV) or None
    try:
        url = app.up(args.address, args.model, settings, http_host=args.http_host,
                     http_port=args.http_port, proxy_location=args.proxy_location,
                     token=token, num_replicas=args.replicas, autoscale=autoscale,
                     num_cpus=args.num_cpus, num_gpus=args.num_gpus, max_queued=args.max_queued)
    except ConnectionError as exc:
        return _connect_error(exc)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"emotion-monitor: {args.model} served at {url} "
          f"(daemons: emotion-monitor stream --inference {url})")
    return 0


def _status(args: argparse.Namespace) -> int:
    app = _serve_app()
    try:
        st = app.status(args.address)
    except ConnectionError as exc:
        return _connect_error(exc)
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print(f"{st['app']}: {st['status']}{' - ' + st['message'] if st.get('message') else ''}")
        for name, d in st.get("deployments", {}).items():
            reps = ", ".join(f"{n} {k.lower()}" for k, n in d["replicas"].items()) or "none"
            print(f"  {name}: {d['status']}, replicas {reps}")
    return 0 if st["status"] == "RUNNING" else 1


def _down(args: argparse.Namespace) -> int:
    app = _serve_app()
    try:
        app.down(args.address)
    except ConnectionError as exc:
        return _connect_error(exc)
    print("emotion-monitor: Serve application deleted")
    return 0

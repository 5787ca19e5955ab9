"""``pumble-bridge``: thin subcommands over the stages.

run          receiver + worker (+ embedded Redis, + fake Pumble when no key is configured)
serve        the receiver, under gunicorn (``--dev``: Flask's development server)
worker       the delivery worker
check        validate the config (``--online``: and the key and channels); non-zero on errors
render       show what a payload file would become, route by route, without sending
routes test  the same for an event made of a few fields (--set order.total=600)
pumble       call Pumble's API with a key: channels, messages, send, reply, react, …
fake-pumble  the fake Pumble server alone
dlq          the dead letters: list, show, retry, purge
send-sample  POST a signed sample Shopify order to a running receiver
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

import httpx
import redis

from bridge import logs, metrics, samples
from bridge.cli_dlq import add_dlq_commands
from bridge.cli_pumble import add_pumble_commands
from bridge.cli_tools import add_tools_commands, check_online, command_config
from bridge.config import Config, ConfigError, data_dir
from bridge.redis_embedded import EmbeddedRedisError, redis_url

log = logging.getLogger("bridge")

DEFAULT_PORT = 8000
FAKE_PUMBLE_KEY = "fake-pumble-key"  # what run gives the worker when it posts to the built-in fake


class CommandError(Exception):
    """A clear, one-line reason to stop; printed without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup()  # JSON lines unless stderr is a terminal (BRIDGE_LOG_FORMAT), secrets masked
    try:
        return args.command(args) or 0
    except (ConfigError, CommandError, EmbeddedRedisError) as exc:
        print(f"pumble-bridge: {exc}", file=sys.stderr)
        return 2
    except redis.ConnectionError as exc:  # redis-py's message names host and port, no password
        print(f"pumble-bridge: cannot connect to Redis: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="config file (default: $BRIDGE_CONFIG, else ./config.yaml)")
    parser = argparse.ArgumentParser(prog="pumble-bridge", parents=[common],
                                     description="E-commerce webhooks to Pumble messages.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(command=handler)
        return sub

    def listen_flags(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--host", default="127.0.0.1", help="address to listen on")
        sub.add_argument("--port", type=int, default=None,
                         help=f"port to listen on (default: $PORT, else {DEFAULT_PORT})")

    run = command("run", cmd_run, "run the receiver and the worker together")
    listen_flags(run)
    run.add_argument("--fake-pumble-port", type=int, default=0,
                     help="port of the built-in fake Pumble, used when no API key is set "
                          "(default: the receiver's port + 1)")

    serve = command("serve", cmd_serve, "run the webhook receiver")
    listen_flags(serve)
    serve.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    serve.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    serve.add_argument("--dev", action="store_true",
                       help="Flask's development server instead of gunicorn")

    worker = command("worker", cmd_worker, "run the delivery worker")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.add_argument("--processes", type=int, default=1, metavar="N",
                        help="run N worker processes, restarted if one dies (default 1; "
                             "about one per core: docs/delivery.md)")
    worker.add_argument("--maintenance-interval", type=int, default=None, metavar="SECONDS",
                        help="how often this worker looks for jobs of dead workers "
                             "(default 30)")

    check = command("check", cmd_check, "validate the config and exit non-zero on any error")
    check.add_argument("--online", action="store_true",
                       help="also ask Pumble: does the key work, does every route's channel exist")

    fake = command("fake-pumble", cmd_fake_pumble, "run the fake Pumble API server")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8025)
    fake.add_argument("--key", action="append", default=[],
                      help="an accepted API key (repeatable; none: any non-empty key)")
    fake.add_argument("--channel", action="append", default=[],
                      help="a channel besides general and random (repeatable)")
    faults = fake.add_argument_group("faults (also settable at run time: POST /_fake/faults)")
    faults.add_argument("--rate-limit", type=int, metavar="PER_MINUTE",
                        help="answer 429 with Retry-After past this many requests a minute a key")
    faults.add_argument("--fail-next", type=int, default=0, metavar="N",
                        help="the next N requests fail with --fail-status")
    faults.add_argument("--fail-status", type=int, default=503)
    faults.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long before handling each request")
    faults.add_argument("--drop-next", type=int, default=0, metavar="N",
                        help="apply the next N writes, then close the connection unanswered")

    add_pumble_commands(commands, common)
    add_dlq_commands(commands, common)
    add_tools_commands(commands, common)

    sample = command("send-sample", cmd_send_sample,
                     "POST a signed sample Shopify order to a running receiver")
    sample.add_argument("--url", help="receiver base URL (default: http://127.0.0.1:$PORT)")
    sample.add_argument("--source", help="source name (default: the first shopify source)")
    return parser


# -- helpers -----------------------------------------------------------------------------------

def _port(args: argparse.Namespace) -> int:
    return getattr(args, "port", None) or int(os.environ.get("PORT") or DEFAULT_PORT)


def _redis_url(config: Config) -> contextlib.AbstractContextManager[str]:
    return redis_url(config.redis.url, data_dir())


def _stop_on_signal(stop: threading.Event) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())


# -- commands ----------------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    from bridge.pipeline import Pipeline

    config = command_config(args)
    Pipeline.from_config(config)
    print(f"{config.path}: OK ({len(config.sources)} source(s), {len(config.routes)} route(s))")
    if config.pumble.api_key is None:
        print("note: no Pumble API key (pumble.api_key / PUMBLE_API_KEY): "
              "`run` will post to the built-in fake Pumble")
    return check_online(config) if args.online else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from bridge.web import create_app

    config = command_config(args)
    port = _port(args)
    metrics.enable_multiprocess()  # before any metric: the gunicorn workers count together
    with _redis_url(config) as redis_url:
        app = create_app(config, redis_url)  # fails here, once, on a bad config
        if args.dev:
            if config.admin.listen:
                raise CommandError("--dev serves one address: admin.listen needs gunicorn "
                                   "(leave out --dev)")
            app.run(host=args.host, port=port, threaded=True)
            return 0
        from bridge.gunicorn_app import GunicornApp

        # With admin.listen, a second address for the admin page and /metrics only.
        binds = [f"{args.host}:{port}", *([config.admin.listen] if config.admin.listen else [])]
        GunicornApp(lambda: create_app(config, redis_url), {
            "bind": binds,
            "workers": args.workers,
            "threads": args.threads,
            "worker_class": "gthread",
            "accesslog": "-",
            "logger_class": logs.gunicorn_logger_class(),  # its lines formatted like ours
            "child_exit": metrics.gunicorn_child_exit,
        }).run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from bridge.worker import run_worker

    config = command_config(args)
    if config.pumble.api_key is None:
        raise CommandError("no Pumble API key: set pumble.api_key in the config or "
                           "PUMBLE_API_KEY (or use `run`, which falls back to a fake Pumble)")
    if args.processes < 1:
        raise CommandError("--processes must be 1 or more")
    metrics.enable_multiprocess()  # counted with the receiver's processes, served by /metrics
    with _redis_url(config) as redis_url:
        if args.processes > 1:
            return _supervise_workers(args, config, redis_url)
        options = {"maintenance_interval": args.maintenance_interval} \
            if args.maintenance_interval else {}
        run_worker(config, redis_url, burst=args.burst, **options)
    return 0


def _supervise_workers(args: argparse.Namespace, config: Config, redis_url: str) -> int:
    """N single worker processes; one that dies is started again (in --burst mode, each runs
    until the queue is empty). SIGTERM reaches each, which finishes its current send."""
    command = [sys.executable, "-m", "bridge", "--config", str(config.path), "worker"]
    if args.burst:
        command.append("--burst")
    if args.maintenance_interval:
        command += ["--maintenance-interval", str(args.maintenance_interval)]
    env = dict(os.environ, REDIS_URL=redis_url)
    stop = threading.Event()
    _stop_on_signal(stop)
    children = [_spawn(command, env) for _ in range(args.processes)]
    failed = 0
    while not stop.wait(0.5):
        for index, child in enumerate(children):
            code = child.poll()
            if code is None or (args.burst and code == 0):
                continue
            failed += 1
            log.error("worker process %d exited (code %s); starting it again", child.pid, code)
            children[index] = _spawn(command, env)
        if args.burst and all(child.poll() == 0 for child in children):
            return 0
    for child in children:  # all at once, and once: a second SIGTERM cuts a send short
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        _wait_or_kill("worker", child)
    return 1 if failed and args.burst else 0


def cmd_fake_pumble(args: argparse.Namespace) -> int:
    from bridge.fake_pumble import Faults, create_fake_pumble, print_message
    from bridge.local_server import LocalServer

    faults = Faults(rate_limit_per_minute=args.rate_limit, fail_next_count=args.fail_next,
                    fail_next_status=args.fail_status, delay=args.delay,
                    drop_next=args.drop_next)
    app = create_fake_pumble(keys=args.key, channels=args.channel, echo=print_message,
                             faults=faults)
    stop = threading.Event()
    _stop_on_signal(stop)
    with LocalServer(app, args.host, args.port) as server:
        print(f"fake Pumble listening on {server.url}", flush=True)
        stop.wait()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bridge.pipeline import Pipeline

    config = command_config(args)
    Pipeline.from_config(config)  # refuse a bad config before starting anything
    port = _port(args)
    metrics.enable_multiprocess()  # the children inherit the directory through the environment
    stop = threading.Event()
    _stop_on_signal(stop)
    with contextlib.ExitStack() as stack:
        env = dict(os.environ, REDIS_URL=stack.enter_context(_redis_url(config)))
        if config.pumble.api_key is None:
            env.update(_start_fake_pumble(stack, config, args.fake_pumble_port or port + 1))
        base = [sys.executable, "-m", "bridge", "--config", str(config.path)]
        children = {
            "web": _spawn([*base, "serve", "--host", args.host, "--port", str(port)], env),
            "worker": _spawn([*base, "worker"], env),
        }
        failed = ""
        while not stop.wait(0.5):
            failed = next((name for name, child in children.items()
                           if child.poll() is not None), "")
            if failed:
                log.error("the %s process exited (code %s); stopping", failed,
                          children[failed].returncode)
                break
        for name, child in children.items():  # web first: stop taking webhooks, then drain
            _terminate(name, child)
    return 1 if failed else 0


def _start_fake_pumble(stack: contextlib.ExitStack, config: Config, port: int) -> dict[str, str]:
    from bridge.fake_pumble import create_fake_pumble, print_message
    from bridge.local_server import LocalServer

    channels = [r.channel for r in config.routes if "{" not in r.channel]
    server = LocalServer(create_fake_pumble(channels=channels, echo=print_message), port=port)
    stack.enter_context(server)
    bar = "!" * 78
    print(f"{bar}\n  No Pumble API key configured (pumble.api_key / PUMBLE_API_KEY).\n"
          f"  Messages go to the BUILT-IN FAKE PUMBLE at {server.url}; they are printed here\n"
          f"  and listed at {server.url}/_fake/messages. Nothing reaches a real Pumble.\n{bar}",
          file=sys.stderr, flush=True)
    return {"PUMBLE_BASE_URL": server.url, "PUMBLE_API_KEY": FAKE_PUMBLE_KEY}


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own session: Ctrl-C reaches only us, and we stop the children in order.
    return subprocess.Popen(command, env=env, start_new_session=True)


def _terminate(name: str, child: subprocess.Popen[bytes], grace: float = 40.0) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)  # the worker finishes its current send first
    _wait_or_kill(name, child, grace)


def _wait_or_kill(name: str, child: subprocess.Popen[bytes], grace: float = 40.0) -> None:
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("the %s process did not stop in %.0fs; killing it", name, grace)
    # Its whole group: a worker forks rq's scheduler, which must not outlive it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def cmd_send_sample(args: argparse.Namespace) -> int:
    from bridge.sources.shopify import sign

    config = command_config(args)
    shopify = [name for name, s in config.sources.items() if s.type == "shopify"]
    name = args.source or (shopify[0] if shopify else "")
    if name not in config.sources or config.sources[name].type != "shopify":
        raise CommandError(f"no shopify source named {name!r} in {config.path}"
                           if name else f"no shopify source in {config.path}")
    secret = config.sources[name].secret.get_secret_value().encode()
    body = samples.body_of(samples.shopify_order())
    headers = {**samples.shopify_headers(), "X-Shopify-Hmac-Sha256": sign(secret, body)}
    url = f"{(args.url or f'http://127.0.0.1:{_port(args)}').rstrip('/')}/webhooks/{name}"
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach the receiver at {url}: {exc}") from None
    print(f"POST {url} -> {response.status_code} {response.text.strip()}")
    return 0 if response.status_code == 202 else 1

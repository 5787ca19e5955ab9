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
summary      post (or print) a summary of the events accepted (summaries: in the config)
status       the bridge at a glance; exit 1 when degraded
send-sample  POST a signed sample Shopify webhook (or one order's life) to a running receiver
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bridge import __version__, logs, metrics, samples
from bridge.cli_dlq import add_dlq_commands
from bridge.cli_events import add_events_commands
from bridge.cli_mutes import add_mutes_commands
from bridge.cli_pumble import add_pumble_commands
from bridge.cli_status import add_status_commands
from bridge.cli_tools import (
    CommandError,
    add_tools_commands,
    check_online,
    command_config,
    command_redis,
)
from bridge.config import Config, ConfigError, data_dir, load_config
from bridge.metrics import Metrics
from bridge.queue import connect
from bridge.redis_embedded import EmbeddedRedisError

log = logging.getLogger("bridge")

DEFAULT_PORT = 8000
DEFAULT_FAKE_PUMBLE_PORT = 8025
FAKE_PUMBLE_KEY = "fake-pumble-key"  # what run gives the worker when it posts to the built-in fake
RUN_LOCK = "run.lock"  # in the data dir, held by a `run` for its life
RESTART_DELAY_CAP = 30.0  # seconds between restarts of a child that keeps exiting
# The nice value `run` starts its worker at: below the receiver's priority, on the same machine
# by construction. A shop waits for the receiver's answer (Shopify counts a delivery failed
# after 5 s), while the worker's posts are paced by Pumble's limit (80 messages a minute) and
# can wait for the CPU. (`worker` alone keeps its priority unless told: it may have a machine of
# its own, or share one with busier work than a receiver.)
WORKER_NICE = 15
# `serve`'s processes. Each runs one request at a time in its event loop (`--threads 1`): on two
# cores, four keep the CPU busy through each request's wait for Redis, and handing requests to
# threads and back cost up to a fifth of a receiver's CPU (bench/receiver.py).
SERVE_WORKERS = 4
SERVE_THREADS = 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # JSON lines unless stderr is a terminal (BRIDGE_LOG_FORMAT), secrets masked. A one-shot
    # command prints its result; only the long-running ones log their INFO lines. The commands
    # find the redactor on ``args``, to add the secrets of each config they load.
    args.redactor = logs.Redactor()
    logs.setup(redactor=args.redactor, level=getattr(args, "log_level", logging.WARNING))
    try:
        return args.command(args) or 0
    except (ConfigError, CommandError, EmbeddedRedisError) as exc:
        for line in str(exc).splitlines():  # a config's problems: one a line, each marked
            print(f"pumble-bridge: {line}", file=sys.stderr)
        return 2
    except redis.ConnectionError as exc:  # redis-py's message names host and port, no password
        print(f"pumble-bridge: cannot connect to Redis: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class _DefaultsInHelp(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it already says it or has none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (not action.option_strings or "default" in text
                or action.default in (None, [], "", argparse.SUPPRESS)
                or action.default is False):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse's parser with the defaults in its help; its subcommands' parsers are too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsInHelp)
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="config file (default: $BRIDGE_CONFIG, else ./config.yaml)")
    parser = _Parser(prog="pumble-bridge", parents=[common],
                     description="E-commerce webhooks to Pumble messages.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_service_commands(commands, common)
    _add_check_command(commands, common)
    _add_fake_pumble_command(commands, common)
    add_pumble_commands(commands, common)
    add_dlq_commands(commands, common)
    add_mutes_commands(commands, common)
    add_events_commands(commands, common)
    add_tools_commands(commands, common)
    add_status_commands(commands, common)
    _add_send_sample_command(commands, common)
    return parser


def _command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser, name: str,
             handler: Callable[[argparse.Namespace], int | None], help_text: str,
             description: str = "", service: bool = False) -> argparse.ArgumentParser:
    """A subcommand; a ``service`` (long-running) one logs its INFO lines."""
    sub = commands.add_parser(name, parents=[common], help=help_text,
                              description=description or help_text)
    sub.set_defaults(command=handler, **({"log_level": logging.INFO} if service else {}))
    return sub


def _listen_flags(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sub.add_argument("--port", type=_port_number, default=None,
                     help=f"port to listen on (default: $PORT, else {DEFAULT_PORT})")


def _add_service_commands(commands: argparse._SubParsersAction,
                          common: argparse.ArgumentParser) -> None:
    run = _command(commands, common, "run", cmd_run, "run the receiver and the worker together",
                   service=True,
                   description="Start, in this order: the embedded Redis (when no Redis URL is "
                   "configured), a fake Pumble (when no Pumble API key is), the receiver "
                   "(`serve`) and the worker (`worker`). Ctrl-C stops the receiver first, then "
                   "the worker after its current send, the fake Pumble and Redis.")
    _listen_flags(run)
    run.add_argument("--fake-pumble-port", type=_port_number, default=0,
                     help="port of the built-in fake Pumble, used when no API key is set "
                          "(default: the receiver's port + 1)")
    run.add_argument("--worker-nice", type=_nice_value, default=WORKER_NICE, metavar="N",
                     help="the worker's CPU priority as a nice value, 0 to 19 (default "
                          f"{WORKER_NICE}: the receiver, which a shop waits on, comes first)")

    serve = _command(commands, common, "serve", cmd_serve, "run the webhook receiver",
                     service=True)
    _listen_flags(serve)
    serve.add_argument("--workers", type=int,
                       help=f"gunicorn worker processes (default: WEB_CONCURRENCY, as a Procfile "
                            f"platform sets it for the machine's size, else {SERVE_WORKERS})")
    serve.add_argument("--threads", type=int, default=SERVE_THREADS, metavar="N",
                       help=f"threads per gunicorn worker (default {SERVE_THREADS}: its event "
                            "loop runs each request; more when Redis is far, see "
                            "docs/deploying.md)")
    serve.add_argument("--dev", action="store_true",
                       help="Flask's development server instead of gunicorn")

    worker = _command(commands, common, "worker", cmd_worker, "run the delivery worker",
                      service=True)
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.add_argument("--processes", type=int, default=1, metavar="N",
                        help="run N worker processes, restarted if one dies (about one per "
                             "core: docs/delivery.md)")
    worker.add_argument("--maintenance-interval", type=int, default=None, metavar="SECONDS",
                        help="how often this worker looks for jobs of dead workers "
                             "(default 30)")
    worker.add_argument("--nice", type=_nice_value, default=0, metavar="N",
                        help="run at this lower CPU priority, a nice value from 0 to 19 "
                             f"(`run` uses {WORKER_NICE}: a receiver on the same machine, which "
                             "a shop waits on, comes first; default 0)")


def _nice_value(text: str) -> int:
    if not text.isdigit() or int(text) > 19:
        raise argparse.ArgumentTypeError(f"a nice value is a whole number from 0 to 19, "
                                         f"not {text!r}")
    return int(text)


def lower_priority(nice: int) -> None:
    """This process at nice value ``nice`` (never raised back if it is nicer already). Linux
    shares the CPU between sessions first (autogroups) and only then by nice value within one:
    a process with a session of its own (the worker `run` forks, a service) sets its
    session's nice value too, or the receiver, in another session, would not come first."""
    if nice <= 0:
        return
    if nice > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if os.getsid(0) == os.getpid():
        with contextlib.suppress(OSError):  # not Linux, or no autogroups
            Path("/proc/self/autogroup").write_text(str(nice))


def _add_check_command(commands: argparse._SubParsersAction,
                       common: argparse.ArgumentParser) -> None:
    check = _command(commands, common, "check", cmd_check,
                     "validate the config and exit non-zero on any error")
    check.add_argument("--online", action="store_true",
                       help="also ask Pumble: does the key work, does every route's channel exist")


def _add_fake_pumble_command(commands: argparse._SubParsersAction,
                             common: argparse.ArgumentParser) -> None:
    fake = _command(commands, common, "fake-pumble", cmd_fake_pumble,
                    "run the fake Pumble API server", service=True)
    fake.add_argument("--host", default="127.0.0.1", help="address to listen on")
    fake.add_argument("--port", type=_port_number, default=DEFAULT_FAKE_PUMBLE_PORT,
                      help="port to listen on")
    fake.add_argument("--key", action="append", default=[],
                      help="an accepted API key (repeatable; none: any non-empty key)")
    fake.add_argument("--channel", action="append", default=[],
                      help="a channel besides general and random (repeatable)")
    faults = fake.add_argument_group("faults (also settable at run time: POST /_fake/faults)")
    faults.add_argument("--rate-limit", type=int, metavar="PER_MINUTE",
                        help="answer 429 with Retry-After past this many requests a minute a key")
    faults.add_argument("--fail-next", type=int, default=0, metavar="N",
                        help="the next N requests fail with --fail-status")
    faults.add_argument("--fail-status", type=int, default=503,
                        help="the status of the --fail-next failures")
    faults.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long before handling each request")
    faults.add_argument("--drop-next", type=int, default=0, metavar="N",
                        help="apply the next N writes, then close the connection unanswered")


def _add_send_sample_command(commands: argparse._SubParsersAction,
                             common: argparse.ArgumentParser) -> None:
    sample = _command(commands, common, "send-sample", cmd_send_sample,
                      "POST a signed sample Shopify webhook to a running receiver")
    sample.add_argument("--url", help="receiver base URL (default: http://127.0.0.1:$PORT, "
                                      f"else port {DEFAULT_PORT})")
    sample.add_argument("--source", help="source name (default: the first shopify source)")
    what = sample.add_mutually_exclusive_group()
    what.add_argument("--topic", choices=samples.TOPICS, default=samples.TOPICS[0],
                      help="the Shopify topic of the sample")
    what.add_argument("--lifecycle", action="store_true",
                      help=f"one order's life, in order: {', '.join(samples.LIFECYCLE)} (the "
                           "example config threads the later ones under the order)")


# -- helpers -----------------------------------------------------------------------------------

def _port(args: argparse.Namespace) -> int:
    if getattr(args, "port", None):
        return args.port
    try:
        return _port_number(os.environ.get("PORT") or str(DEFAULT_PORT))
    except argparse.ArgumentTypeError as exc:
        raise CommandError(f"PORT: {exc}") from None


def _serve_workers(args: argparse.Namespace) -> int:
    """``--workers``, else WEB_CONCURRENCY, else SERVE_WORKERS; ``--threads`` checked too.
    A WEB_CONCURRENCY that is set is checked even under ``--workers``: gunicorn reads it as it
    is imported, and fails with a traceback on anything but a number."""
    if (args.workers is not None and args.workers < 1) or args.threads < 1:
        raise CommandError("--workers and --threads must be 1 or more")
    text = os.environ.get("WEB_CONCURRENCY")
    if text is not None and (not text.strip().isdigit() or int(text) < 1):
        raise CommandError(f"WEB_CONCURRENCY: {text!r} is not a number of processes (1 or more)")
    if args.workers is not None:
        return args.workers
    return int(text) if text is not None else SERVE_WORKERS


def _port_number(text: str) -> int:
    """A TCP port, for argparse (which prints the reason on one line) and for PORT."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _stop_on_signal(stop: threading.Event) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())


def _shared_metrics(config: Config) -> Metrics:
    """This process's metrics, counted with the machine's other processes in the directory
    beside the embedded Redis's data (unless PROMETHEUS_MULTIPROC_DIR names one)."""
    directory = metrics.directory(os.environ, data_dir(config_file=config.path))
    # prometheus_client reads its directory from the environment only: set there before it is
    # imported, where gunicorn's forked workers and the subprocesses of `run` find it too.
    os.environ[metrics.ENV] = str(directory)
    return Metrics.shared(directory)


def _port_free(host: str, port: int, flag: str) -> None:
    """Refuse, naming the flag to change, a port another program listens on (rather than let
    gunicorn or werkzeug fail with lines about a port the user never chose)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}: {exc.strerror}") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port} ({exc.strerror}): choose "
                               f"another port with {flag}") from None


def _shown(url: str) -> str:
    """A Redis URL without its credentials."""
    scheme, separator, rest = url.partition("://")
    return f"{scheme}{separator}{rest.rpartition('@')[2]}"


def _redis_problem(url: str) -> str:
    """Why Redis at ``url`` does not answer one quick try (at most a few seconds), or ""."""
    connection = connect(url)
    connection.set_retry(Retry(NoBackoff(), 0))
    try:
        connection.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # names host and port only
        return str(exc)
    finally:
        connection.close()
    return ""


def _hold_run_lock(stack: contextlib.ExitStack, directory: Path) -> None:
    """One `run` per data dir: a second would share the first's Redis and queue unnoticed. The
    lock goes with the process, however it ends."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = stack.enter_context((directory / RUN_LOCK).open("w"))
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CommandError(f"another `pumble-bridge run` is using {directory}: stop it first, "
                           "or give this one its own BRIDGE_DATA_DIR") from None


# -- commands ----------------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    from bridge.pipeline import Pipeline

    config = command_config(args)
    Pipeline.from_config(config)
    print(f"{config.path}: OK ({len(config.sources)} source(s), {len(config.routes)} route(s))")
    _warn_short_secrets(config)
    if config.pumble.api_key is None:
        print("note: no Pumble API key (pumble.api_key / PUMBLE_API_KEY): "
              "`run` will post to the built-in fake Pumble")
    return check_online(config) if args.online else 0


def _warn_short_secrets(config: Config) -> None:
    for place in logs.short_secrets(config):
        log.warning("%s: %s is shorter than %d characters: easy to guess, and masked in logs "
                    "only where it stands alone; use a longer one", config.path, place,
                    logs.SAFE_SECRET_LENGTH)


def cmd_serve(args: argparse.Namespace) -> int:
    from bridge.web import create_app

    config = command_config(args)
    workers = _serve_workers(args)
    port = _port(args)
    _port_free(args.host, port, "--port (or PORT)")
    _warn_short_secrets(config)
    shared = _shared_metrics(config)  # the gunicorn workers count together
    with command_redis(config, "serve") as redis_url:
        # Fails here, once, on a bad config.
        app = create_app(config, redis_url, redactor=args.redactor, metrics=shared)
        problem = _redis_problem(redis_url)
        if problem:
            log.warning("Redis at %s does not answer (%s): webhooks are answered 503 until it "
                        "does", _shown(redis_url), problem)
        if args.dev:
            if config.admin.listen:
                raise CommandError("--dev serves one address: admin.listen needs gunicorn "
                                   "(leave out --dev)")
            app.run(host=args.host, port=port, threaded=True)
            return 0
        from bridge.gunicorn_app import GunicornApp, WholeRequestWorker

        # With admin.listen, a second address for the admin page and /metrics only.
        binds = [f"{args.host}:{port}", *([config.admin.listen] if config.admin.listen else [])]
        GunicornApp(lambda: create_app(config, redis_url, redactor=args.redactor,
                                       metrics=shared), {
            "bind": binds,
            "workers": workers,
            "threads": args.threads,
            "worker_class": WholeRequestWorker,
            "accesslog": "-",
            "logger_class": logs.gunicorn_logger_class(),  # its lines formatted like ours
            "child_exit": shared.gunicorn_child_exit,
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
    shared = _shared_metrics(config)  # counted with the receiver's processes, served by /metrics
    with command_redis(config, "worker") as redis_url:
        problem = _redis_problem(redis_url)
        if problem:  # the worker's own connection retries for a while before it gives up
            log.warning("Redis at %s does not answer (%s): retrying (Ctrl-C to stop)",
                        _shown(redis_url), problem)
        if args.processes > 1:
            return _supervise_workers(args, config, redis_url, shared)
        lower_priority(args.nice)
        run_worker(config, redis_url, **_worker_options(args, shared))
    return 0


def _worker_options(args: argparse.Namespace, shared: Metrics) -> dict[str, Any]:
    options: dict[str, Any] = {"burst": args.burst, "metrics": shared}
    if args.maintenance_interval:
        options["maintenance_interval"] = args.maintenance_interval
    return options


def _supervise_workers(args: argparse.Namespace, config: Config, redis_url: str,
                       shared: Metrics) -> int:
    """N worker processes, forked from this one with its config; one that dies is started
    again (in --burst mode, each runs until the queue is empty). SIGTERM reaches each, which
    finishes its current send."""
    stop = threading.Event()
    _stop_on_signal(stop)
    workers = _WorkerConfig(config, os.environ, args.redactor)
    options = _worker_options(args, shared)  # forked: each child counts with this one's
    children = [_fork_worker(workers.config, redis_url, options, args.nice)
                for _ in range(args.processes)]
    failed = 0
    while not stop.wait(0.5):
        for index, child in enumerate(children):
            code = child.poll()
            if code is None or (args.burst and code == 0):
                continue
            failed += 1
            log.error("worker process %d exited (code %s); starting it again", child.pid, code)
            children[index] = _fork_worker(workers.latest(), redis_url, options, args.nice)
        if args.burst and all(child.poll() == 0 for child in children):
            return 0
    for child in children:  # all at once, and once: a second SIGTERM cuts a send short
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        _wait_or_kill("worker", child)
    return 1 if failed and args.burst else 0


class _WorkerConfig:
    """The config a (re)started worker process gets: the file as it is now if it validates,
    else the last version that did (a worker started on an invalid file would exit at once,
    and be started again, and again)."""

    def __init__(self, config: Config, environ: Mapping[str, str], redactor: logs.Redactor):
        self.config = config
        self._environ = environ
        self._redactor = redactor

    def latest(self) -> Config:
        try:
            self.config = load_config(self.config.path, self._environ)
        except ConfigError as exc:
            log.error("config %s is not valid; the worker starts on the last valid one: %s",
                      self.config.path, " | ".join(exc.problems))
            return self.config
        logs.redact_secrets(self.config, self._redactor)
        return self.config


class _Forked:
    """A worker process forked from this one (so it runs on a config already loaded, not on
    the file as it is now), with the part of subprocess.Popen's interface we use."""

    def __init__(self, process: multiprocessing.process.BaseProcess):
        self._process = process
        self.pid: int = process.pid or 0

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"worker process {self.pid}", timeout or 0)
        return self._process.exitcode


Child = subprocess.Popen[bytes] | _Forked


def _fork_worker(config: Config, redis_url: str, options: dict[str, Any],
                 nice: int) -> _Forked:
    process = multiprocessing.get_context("fork").Process(
        target=_worker_child, args=(config, redis_url, options, nice), name="worker")
    gc.freeze()  # as gunicorn's master does (bridge/gunicorn_app.py): keeps shared pages shared
    process.start()
    return _Forked(process)


def _worker_child(config: Config, redis_url: str, options: dict[str, Any], nice: int) -> None:
    from bridge.worker import run_worker

    os.setsid()  # as _spawn: Ctrl-C reaches only the parent, which stops the children in order
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # not the parent's handlers
        signal.signal(signum, signal.SIG_DFL)
    lower_priority(nice)
    run_worker(config, redis_url, **options)


def cmd_fake_pumble(args: argparse.Namespace) -> int:
    from bridge.fake_pumble import Faults, create_fake_pumble, print_message
    from bridge.local_server import LocalServer

    _port_free(args.host, args.port, "--port")
    faults = Faults(rate_limit_per_minute=args.rate_limit, fail_next_count=args.fail_next,
                    fail_next_status=args.fail_status, delay=args.delay,
                    drop_next=args.drop_next)
    app = create_fake_pumble(keys=args.key, channels=args.channel, echo=print_message,
                             faults=faults)
    stop = threading.Event()
    _stop_on_signal(stop)
    with LocalServer(app, args.host, args.port) as server:
        print(f"fake Pumble listening on {server.url} (messages as a channel: "
              f"{server.url}/_fake/)", flush=True)
        stop.wait()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bridge.pipeline import Pipeline

    config = command_config(args)
    Pipeline.from_config(config)  # refuse a bad config before starting anything
    port = _port(args)
    fake_port = args.fake_pumble_port or port + 1
    stop = threading.Event()
    _stop_on_signal(stop)
    with contextlib.ExitStack() as stack:
        if not config.redis.url:
            _hold_run_lock(stack, data_dir(config_file=config.path))
        _port_free(args.host, port, "--port")
        if config.pumble.api_key is None:
            _port_free("127.0.0.1", fake_port, "--fake-pumble-port")
        shared = _shared_metrics(config)  # the children count into its directory too
        env = dict(os.environ, REDIS_URL=stack.enter_context(command_redis(config, "run")))
        banner = ""
        if config.pumble.api_key is None:
            fake_url = _start_fake_pumble(stack, config, fake_port)
            env.update(PUMBLE_BASE_URL=fake_url, PUMBLE_API_KEY=FAKE_PUMBLE_KEY)
            banner = _fake_banner(fake_url)
        serve = [sys.executable, "-m", "bridge", "--config", str(config.path), "serve",
                 "--host", args.host, "--port", str(port)]
        redis_url = env["REDIS_URL"]
        # With the fake's key and address, if any.
        workers = _WorkerConfig(config, env, args.redactor)
        starts: dict[str, Callable[[], Child]] = {
            "web": lambda: _spawn(serve, env),
            "worker": lambda: _fork_worker(workers.latest(), redis_url, {"metrics": shared},
                                           args.worker_nice),
        }
        children = {name: start() for name, start in starts.items()}
        # A changed config is the receiver's to take (or refuse); run itself carries on.
        signal.signal(signal.SIGHUP, lambda *_: children["web"].send_signal(signal.SIGHUP))
        ready = f"{banner}ready: try `{_sample_command(args, config, port)}`"
        _watch(children, starts, stop, _local_url(args.host, port), ready)
        for name, child in children.items():  # web first: stop taking webhooks, then drain
            _terminate(name, child)
    return 0


def _watch(children: dict[str, Child], starts: dict[str, Callable[[], Child]],
           stop: threading.Event, receiver: str, ready: str) -> None:
    """Until stopped; a child that exits is started again (at once after a long run, else
    after a pause that doubles while it keeps exiting). ``ready`` is printed once the
    receiver answers /readyz (Redis answers, the config is loaded)."""
    announced = False
    started = dict.fromkeys(children, time.monotonic())
    pause = dict.fromkeys(children, 0.0)
    due: dict[str, float] = {}  # when an exited child starts again
    while not stop.wait(0.5):
        now = time.monotonic()
        for name, child in children.items():
            if child.poll() is None:
                continue
            if name not in due:
                quick = now - started[name] < RESTART_DELAY_CAP
                pause[name] = min(2 * pause[name] or 1.0, RESTART_DELAY_CAP) if quick else 0.0
                due[name] = now + pause[name]
                log.error("the %s process exited (code %s); starting it again in %.0f s",
                          name, child.returncode, pause[name])
            if now >= due[name]:
                del due[name]
                children[name], started[name] = starts[name](), now
        if not announced:
            with contextlib.suppress(httpx.HTTPError):
                announced = httpx.get(f"{receiver}/readyz", timeout=0.5).status_code == 200
            if announced:
                print(ready, file=sys.stderr, flush=True)


def _local_url(host: str, port: int) -> str:
    """The receiver's URL as seen from this machine (an any-address listens here too)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _sample_command(args: argparse.Namespace, config: Config, port: int) -> str:
    """The send-sample command line that reaches this run from another terminal."""
    command = ["pumble-bridge"]
    if getattr(args, "config", None) or os.environ.get("BRIDGE_CONFIG"):
        command += ["--config", str(config.path)]
    command.append("send-sample")
    if port != DEFAULT_PORT or args.host not in ("127.0.0.1", "0.0.0.0", "localhost"):
        command += ["--url", _local_url(args.host, port)]
    return " ".join(command)


def _start_fake_pumble(stack: contextlib.ExitStack, config: Config, port: int) -> str:
    from bridge.fake_pumble import create_fake_pumble, print_message
    from bridge.local_server import LocalServer

    channels = [r.channel for r in config.routes if "{" not in r.channel]
    server = LocalServer(create_fake_pumble(channels=channels, echo=print_message), port=port)
    stack.enter_context(server)
    return server.url


def _fake_banner(fake_url: str) -> str:
    bar = "!" * 78
    return (f"{bar}\n  No Pumble API key configured (pumble.api_key / PUMBLE_API_KEY).\n"
            f"  Messages go to the BUILT-IN FAKE PUMBLE at {fake_url}; they are printed\n"
            f"  here, and shown as a channel at {fake_url}/_fake/\n"
            f"  Nothing reaches a real Pumble.\n{bar}\n")


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
    url = f"{(args.url or f'http://127.0.0.1:{_port(args)}').rstrip('/')}/webhooks/{name}"
    number = samples.order_number()  # a new order each time, not a re-delivery
    for topic in samples.LIFECYCLE if args.lifecycle else (args.topic,):
        body = samples.body_of(samples.shopify_payload(topic, number))
        headers = {**samples.shopify_headers(topic), "X-Shopify-Hmac-Sha256": sign(secret, body)}
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=10)
        except httpx.HTTPError as exc:
            raise CommandError(f"cannot reach the receiver at {url}: {exc}") from None
        print(f"POST {url} ({topic}, order #{number}) -> {response.status_code} "
              f"{response.text.strip()}")
        if response.status_code != 202:
            return 1
    return 0

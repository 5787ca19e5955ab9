"""Load the YAML config: interpolate ``${VAR}`` from the environment, validate, say what is wrong.

Every problem is reported as ``file:line: path: what is wrong`` so a person can fix it without
reading code. Secrets are held as ``SecretStr`` so a repr or a log line never shows them.
"""

from __future__ import annotations

import difflib
import os
import re
import time
import typing
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

DEFAULT_PUMBLE_BASE_URL = "https://pumble-api-keys.addons.marketplace.cake.com"
DEFAULT_QUEUE = "pumble-bridge"
DEFAULT_DATA_DIR = ".pumble-bridge"

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# ${VAR} or ${VAR:-default}; $${...} stays literal as ${...}.
_VARIABLE = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The config cannot be used; ``str()`` lists every problem, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _empty_is_none(value: Any) -> Any:
    return None if value in ("", None) else value


def http_url(value: str | None) -> str | None:
    """A Pumble base URL: http(s), with a host (the client opens connections to it)."""
    if value is not None:
        url = urllib.parse.urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL with a host, such as "
                             f"{DEFAULT_PUMBLE_BASE_URL}")
    return value


class PumbleAccount(_Model):
    """A named key, for a route's ``account:`` (another workspace, or another sender)."""

    api_key: SecretStr
    base_url: str | None = None  # default: pumble.base_url

    @field_validator("api_key", mode="before")
    @classmethod
    def _key_given(cls, value: Any) -> Any:
        if _empty_is_none(value) is None:
            raise ValueError("is empty: every account needs a key")
        return value

    _base_url = field_validator("base_url")(http_url)


class PumbleSettings(_Model):
    base_url: str = DEFAULT_PUMBLE_BASE_URL
    api_key: SecretStr | None = None  # the "default" account's key
    accounts: dict[str, PumbleAccount] = {}
    connect_timeout: float = Field(3.0, gt=0)
    read_timeout: float = Field(10.0, gt=0)

    @field_validator("api_key", mode="before")
    @classmethod
    def _no_key_when_empty(cls, value: Any) -> Any:  # ${PUMBLE_API_KEY:-} unset: no key
        return _empty_is_none(value)

    _base_url = field_validator("base_url")(http_url)

    def account(self, name: str) -> tuple[str, str] | None:
        """(api key, base URL) of a named account; "default" is ``api_key``. None if unknown
        or keyless."""
        if name in self.accounts:
            account = self.accounts[name]
            return account.api_key.get_secret_value(), account.base_url or self.base_url
        if name == "default" and self.api_key is not None:
            return self.api_key.get_secret_value(), self.base_url
        return None


class RedisSettings(_Model):
    url: str | None = None
    queue: str = DEFAULT_QUEUE
    # A webhook is acknowledged only once its write reached this many replicas (Redis WAIT), so
    # a failover cannot lose it; unset: 1 when the master has a replica online, else 0.
    min_replicas: int | None = Field(None, ge=0)
    # How long the receiver waits for them before it answers 503: kept under its 5 s Redis
    # read timeout, and well under the platforms' webhook timeouts (Shopify's is 5 s).
    replica_timeout_ms: int = Field(1000, ge=1, le=4000)


class ReceiverSettings(_Model):
    # Larger bodies are answered 413 before anything else is done with them.
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    # A delivery id seen again within this many seconds is a re-delivery: answered 200, not
    # enqueued again. Three days covers Stripe's retries (the longest of the platforms).
    dedupe_window: int = Field(3 * 24 * 3600, ge=0)


REACTION = re.compile(r"^:[a-zA-Z0-9_+\-]+:$")  # Pumble's colon form


class DigestSettings(_Model):
    # A route whose backlog is more than the message limit can post in ``window`` seconds has its
    # waiting notifications merged into digests of at most ``max_items`` lines.
    window: int = Field(60, ge=1)
    max_items: int = Field(25, ge=2, le=200)
    # Seconds a head that must digest (its line is longer than the slots left in the message
    # limit's window can post one by one, or it heads a burst: docs/delivery.md) waits, at most,
    # for a full digest of ``max_items`` to fill rather than spend a slot on fewer: the latency a
    # shop owner pays for a burst's orders to fit in fewer messages. 0: a digest of whatever
    # waits, at once.
    fill_wait: float = Field(2.0, ge=0, le=10)


class DeliverySettings(_Model):
    """How the worker sends: retries, limits, digests, threads. Read at start by the worker,
    and by the receiver (a job's timeout, how long a webhook is kept)."""

    max_attempts: int = Field(5, ge=1)  # sends of one notification before it is dead-lettered
    max_age: int = Field(24 * 3600, ge=1)  # seconds after receipt; older ones are dead-lettered
    backoff_base: float = Field(2.0, gt=0)  # seconds; attempt n waits up to base * 2**n
    backoff_cap: float = Field(300.0, gt=0)
    job_timeout: int = Field(30, ge=2)  # seconds one attempt may take; a killed worker's job is
    #                                     picked up again about this long (+10 s) later
    # Calls a minute per Pumble account, by kind; unnamed kinds keep Pumble's published limits.
    rate_limits: dict[str, int] = {}
    digest: DigestSettings = DigestSettings()
    # Seconds a thread reply waits for its root message to appear before it is posted alone.
    thread_wait: int = Field(120, ge=0)
    # The longest message text, in characters: a longer one is cut, with a marker. Pumble
    # documents no limit; this keeps a giant order readable in a chat window, and far below the
    # 40,000 other chat APIs take.
    max_message_chars: int = Field(12_000, ge=200, le=40_000)

    @field_validator("rate_limits")
    @classmethod
    def _known_kinds(cls, limits: dict[str, int]) -> dict[str, int]:
        # The kinds are ratelimit's own; imported here, as ratelimit imports config (by metrics).
        from bridge.ratelimit import DEFAULT_LIMITS

        for kind, per_minute in limits.items():
            if kind not in DEFAULT_LIMITS:
                raise ValueError(f"unknown kind {kind!r} (known: {', '.join(DEFAULT_LIMITS)})")
            if not isinstance(per_minute, int) or per_minute < 1:
                raise ValueError(f"{kind}: calls a minute must be a whole number >= 1")
        return limits


class AdminSettings(_Model):
    # The admin page is off until a token is set (here or BRIDGE_ADMIN_TOKEN); it is the password.
    token: SecretStr | None = None
    # host:port. When set, /admin and /metrics are served only on this address (say, a private
    # interface), and the webhooks only on the public one.
    listen: str | None = None

    @field_validator("token", mode="before")
    @classmethod
    def _no_token_when_empty(cls, value: Any) -> Any:
        return _empty_is_none(value)

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("is too short: use at least 16 characters (it guards the dead "
                             "letters and the routes)")
        return value

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:9100)")
        return value


class SourceSettings(_Model):
    """One ``sources:`` entry. ``secret`` may be a list while secrets rotate: any one verifies.
    Keys beyond ``type`` and ``secret`` belong to the platform and are checked by its own
    ``Options`` model (bridge/sources)."""

    type: str
    secret: SecretStr | list[SecretStr]
    options: dict[str, Any] = Field(default_factory=dict, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _collect_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        common = {key: data[key] for key in ("type", "secret") if key in data}
        return {**common, "options": {k: v for k, v in data.items() if k not in common}}

    @field_validator("secret")
    @classmethod
    def _secret_not_empty(cls, value: SecretStr | list[SecretStr]) -> SecretStr | list[SecretStr]:
        values = value if isinstance(value, list) else [value]
        if not values or not all(v.get_secret_value() for v in values):
            raise ValueError("is empty: a webhook secret is required to verify signatures")
        return value

    @property
    def secrets(self) -> tuple[str, ...]:
        values = self.secret if isinstance(self.secret, list) else [self.secret]
        return tuple(v.get_secret_value() for v in values)


class RouteMatch(_Model):
    source: list[str] = ["*"]
    event: list[str] = ["*"]
    test: bool | None = None  # false: leave test events out; true: only them; unset: either

    @field_validator("source", "event", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class RouteSettings(_Model):
    name: str
    match: RouteMatch = RouteMatch()
    channel: str
    template: str | None = None
    text: str | None = None
    when: str | None = None  # a Jinja expression over the event, e.g. order.total >= 500
    as_bot: bool = True
    account: str = "default"
    continue_: bool = Field(False, alias="continue")
    # Later events of an order (checkout, dispute) reply in the thread of its first message.
    thread: bool = False
    # Event type globs -> a reaction added to the thread's first message, e.g.
    # {order.fulfilled: ":white_check_mark:"}.
    reactions: dict[str, str] = {}
    create_channel: bool = False  # create a missing channel (public) and send again
    digest: bool = True  # merge a backlog into digest messages rather than fall behind
    # Names under time_intervals: muted in any of the first, or outside every one of the second.
    mute_time_intervals: list[str] = []
    active_time_intervals: list[str] = []
    when_muted: typing.Literal["hold", "drop"] = "hold"  # hold: posted when the mute ends

    @field_validator("reactions")
    @classmethod
    def _colon_form(cls, reactions: dict[str, str]) -> dict[str, str]:
        for pattern, reaction in reactions.items():
            if not isinstance(reaction, str) or not REACTION.match(reaction):
                raise ValueError(f"{pattern}: reaction {reaction!r} must be in colon form, "
                                 "e.g. ':white_check_mark:'")
        return reactions

    @model_validator(mode="after")
    def _one_body(self) -> RouteSettings:
        # Neither: the shipped template for the event's type (order.paid -> order_paid.j2).
        if self.template is not None and self.text is not None:
            raise ValueError("give one of 'template' (a file) or 'text' (inline), not both")
        return self


class SummaryMatch(RouteMatch):
    """The events a summary counts: ``source``/``event`` globs as a route's; test events only
    when ``test`` asks for them (true: only them; null: either)."""

    test: bool | None = False


class SummarySettings(_Model):
    """One ``summaries:`` entry: the accepted events' totals, posted on a cron ``schedule``
    (in ``timezone``) to ``channel`` (bridge/summaries.py)."""

    name: str
    channel: str
    account: str = "default"
    schedule: str
    timezone: str = "UTC"
    match: SummaryMatch = SummaryMatch()
    template: str | None = None  # default: the shipped summary.j2

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"summary name {name!r} must be letters, digits, '-' or '_' (it "
                             "is the argument of `pumble-bridge summary NAME`)")
        return name

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str) -> str:
        if not croniter.is_valid(schedule):
            raise ValueError(f"{schedule!r} is not a cron schedule (five fields: minute hour "
                             "day-of-month month day-of-week, e.g. \"0 18 * * *\")")
        return schedule

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        return _zone_name(name)


# -- time intervals and alerts (bridge.intervals, bridge.mutes, bridge.alerts) -----------------

class TimeIntervalSettings(_Model):
    """One ``time_intervals:`` entry, in Alertmanager's shape: a name and its periods."""

    name: str
    time_intervals: list[dict[str, Any]]

    @model_validator(mode="after")
    def _periods_parse(self) -> TimeIntervalSettings:
        from bridge.intervals import parse_interval  # intervals is a leaf: no import cycle

        parse_interval(self.name, self.time_intervals)
        return self


SIGNATURE_WINDOW = 86400  # seconds: the longest signature_failures.within (the receiver's count)


class SignatureFailuresAlert(_Model):
    count: int = Field(ge=1)  # this many webhooks with a bad signature from one source ...
    within: int = Field(ge=1, le=SIGNATURE_WINDOW)  # ... within this many seconds


class QueueStalledAlert(_Model):
    older_than: int = Field(ge=1)  # seconds the oldest waiting notification has waited


class SourceSilentAlert(_Model):
    after: int = Field(ge=1)  # seconds without a webhook from a source


class AlertsSettings(_Model):
    """Alerts about the bridge itself, posted to ``channel`` with ``account``'s key."""

    channel: str
    account: str = "default"
    dead_letter: bool = False
    key_rejected: bool = False
    signature_failures: SignatureFailuresAlert | None = None
    queue_stalled: QueueStalledAlert | None = None
    source_silent: SourceSilentAlert | None = None


def _reference_problems(config: Config) -> list[str]:
    """Names that must exist elsewhere in the file: each route's time intervals, the alerts'
    account. One line each, with file:line and a 'did you mean'."""
    names = [interval.name for interval in config.time_intervals]
    problems = [f"{config.locate('time_intervals', i, 'name')}: time interval {name!r} is "
                "defined twice" for i, name in enumerate(names) if name in names[:i]]
    for r, route in enumerate(config.routes):
        for key in ("mute_time_intervals", "active_time_intervals"):
            for i, name in enumerate(getattr(route, key)):
                if name not in names:
                    problems.append(f"{config.locate('routes', r, key, i)}: unknown time "
                                    f"interval {name!r}{_did_you_mean(name, names)}")
    alerts = config.alerts
    accounts = ["default", *config.pumble.accounts]
    if alerts is not None and alerts.account not in accounts:
        problems.append(f"{config.locate('alerts', 'account')}: unknown account "
                        f"{alerts.account!r}{_did_you_mean(alerts.account, accounts)}")
    return problems


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    hint = difflib.get_close_matches(name, known, n=1)
    if hint:
        return f" (did you mean {hint[0]!r}?)"
    return f" (known: {', '.join(known)})" if known else " (none under time_intervals:)"


class Config(_Model):
    pumble: PumbleSettings = PumbleSettings()
    redis: RedisSettings = RedisSettings()
    receiver: ReceiverSettings = ReceiverSettings()
    delivery: DeliverySettings = DeliverySettings()
    admin: AdminSettings = AdminSettings()
    sources: dict[str, SourceSettings]
    routes: list[RouteSettings] = []
    summaries: list[SummarySettings] = []
    time_intervals: list[TimeIntervalSettings] = []
    alerts: AlertsSettings | None = None
    templates_dir: Path | None = None
    timezone: str = "UTC"  # for dates in messages (the `datetime` filter)
    # Where the file was read from; relative paths in it are relative to its folder.
    path: Path = Field(Path("config.yaml"), exclude=True)
    _lines: dict[tuple, int] = PrivateAttr(default_factory=dict)
    # When the file was read: a file or template changed after it makes the config stale.
    _loaded_at: float = PrivateAttr(default=float("inf"))

    @property
    def loaded_at(self) -> float:
        return self._loaded_at

    def locate(self, *at: str | int) -> str:
        """``file:line: dotted.path`` for a place in the document, for error messages."""
        return _where(self.path, self._lines, at)

    def describe(self, error: Any, at: tuple = (), known: Sequence[str] = ()) -> str:
        """One pydantic error, located in this file; ``known`` keys feed 'did you mean'."""
        return _describe(error, (*at, *error["loc"]), lambda p: self.locate(*p), known)

    @field_validator("sources")
    @classmethod
    def _source_names(cls, sources: dict[str, SourceSettings]) -> dict[str, SourceSettings]:
        for name in sources:
            if not _NAME.match(name):
                raise ValueError(f"source name {name!r} must be letters, digits, '-' or '_' "
                                 "(it is part of the URL /webhooks/<name>)")
        return sources

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        return _zone_name(name)

    @field_validator("routes")
    @classmethod
    def _route_names_unique(cls, routes: list[RouteSettings]) -> list[RouteSettings]:
        seen: set[str] = set()
        for route in routes:
            if route.name in seen:
                raise ValueError(f"route name {route.name!r} is used twice")
            seen.add(route.name)
        return routes

    @model_validator(mode="after")
    def _accounts_exist(self) -> Config:
        known = {"default", *self.pumble.accounts}
        for route in self.routes:
            if route.account not in known:
                raise ValueError(f"route {route.name!r} sends with account {route.account!r}, "
                                 f"which is not under pumble.accounts (known: "
                                 f"{', '.join(sorted(known))})")
        return self

    @field_validator("summaries")
    @classmethod
    def _summaries_valid(cls, summaries: list[SummarySettings],
                         info: ValidationInfo) -> list[SummarySettings]:
        """Names unique, accounts known (``pumble`` is validated before, when it is valid)."""
        pumble = info.data.get("pumble")
        known = {"default", *(pumble.accounts if pumble else ())}
        seen: set[str] = set()
        for summary in summaries:
            if summary.name in seen:
                raise ValueError(f"summary name {summary.name!r} is used twice")
            seen.add(summary.name)
            if pumble is not None and summary.account not in known:
                raise ValueError(f"summary {summary.name!r} sends with account "
                                 f"{summary.account!r}, which is not under pumble.accounts "
                                 f"(known: {', '.join(sorted(known))})")
        return summaries

    @property
    def template_dirs(self) -> list[Path]:
        """User templates first (so they can override), then the shipped ones."""
        dirs = []
        if self.templates_dir is not None:
            dirs.append(self.path.parent / self.templates_dir)
        dirs.append(shipped_templates_dir())
        return dirs


def _zone_name(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as "
                         "Europe/Berlin)") from None
    return name


def shipped_templates_dir() -> Path:
    package = Path(__file__).resolve().parent
    installed = package / "templates"  # a wheel install carries them inside the package
    return installed if installed.is_dir() else package.parent / "templates"


def data_dir(environ: Mapping[str, str] = os.environ, config_file: Path | None = None) -> Path:
    """Where the embedded Redis and other local state live: ``BRIDGE_DATA_DIR``, else
    ``.pumble-bridge`` beside the config file (so every command given one config finds the same
    Redis, wherever it is started from), else in the working directory."""
    beside = config_file.resolve().parent if config_file is not None else Path()
    return Path(environ.get("BRIDGE_DATA_DIR") or beside / DEFAULT_DATA_DIR).resolve()


def config_path(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """``--config`` wins over ``BRIDGE_CONFIG``; ``config.yaml`` in the working directory last."""
    return Path(cli_value or environ.get("BRIDGE_CONFIG") or "config.yaml")


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] = os.environ,
                sections: Collection[str] | None = None) -> Config:
    """Read, interpolate and validate a config file; raise ConfigError naming file and line.

    ``sections``: read only these top-level keys; the others keep their defaults (``sources``:
    none). A command that needs no webhook secret so does not require its variable to be set."""
    path = Path(path)
    loaded_at = time.time()  # before reading: an edit during the read counts as newer
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file (pass --config or set "
                           "BRIDGE_CONFIG; config.example.yaml is a working start)"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
        lines = _line_map(yaml.compose(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: not valid YAML: {problem}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the top level must be a mapping (pumble:, sources:, routes:)"])
    if sections is not None:
        raw = {"sources": {}, **{key: raw[key] for key in sections if key in raw}}

    problems: list[str] = []
    data = _interpolate(raw, (), environ, problems, lambda p: _where(path, lines, p))
    if problems:
        raise ConfigError(problems)
    _apply_environment(data, environ)
    try:
        config = Config.model_validate({**data, "path": path})
    except ValidationError as exc:
        raise ConfigError([
            _describe(err, err["loc"], lambda p: _where(path, lines, p), _known_keys(
                err["loc"][:-1])) for err in exc.errors()]) from None
    config._lines = lines
    config._loaded_at = loaded_at
    problems = _reference_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def _apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Documented overrides: PUMBLE_BASE_URL, REDIS_URL win; PUMBLE_API_KEY and
    BRIDGE_ADMIN_TOKEN fill a gap."""
    for section in ("pumble", "redis", "admin"):
        if data.get(section) is None:  # absent, or a bare `pumble:` line
            data[section] = {}
    pumble, redis = data["pumble"], data["redis"]
    if isinstance(pumble, dict):
        if environ.get("PUMBLE_BASE_URL"):
            pumble["base_url"] = environ["PUMBLE_BASE_URL"]
        if not pumble.get("api_key") and environ.get("PUMBLE_API_KEY"):
            pumble["api_key"] = environ["PUMBLE_API_KEY"]
    if isinstance(redis, dict) and environ.get("REDIS_URL"):
        redis["url"] = environ["REDIS_URL"]
    admin = data["admin"]
    if isinstance(admin, dict) and not admin.get("token") and environ.get("BRIDGE_ADMIN_TOKEN"):
        admin["token"] = environ["BRIDGE_ADMIN_TOKEN"]


def _interpolate(value: Any, at: tuple, environ: Mapping[str, str], problems: list[str],
                 where) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*at, k), environ, problems, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*at, i), environ, problems, where) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        escaped, name, default = match.groups()
        if escaped:
            return match.group(0)[1:]
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(f"{where(at)}: environment variable {name} is not set "
                        f"(set it, or write ${{{name}:-default}})")
        return ""

    return _VARIABLE.sub(substitute, value)


def _line_map(node: yaml.Node | None, at: tuple = ()) -> dict[tuple, int]:
    """Path in the document (keys and list indexes) -> 1-based line where it starts."""
    if node is None:
        return {}
    lines = {at: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, child in node.value:
            path = (*at, key.value)
            lines.update(_line_map(child, path))
            lines[path] = key.start_mark.line + 1  # the key's line, where a person looks
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            lines.update(_line_map(child, (*at, index)))
    return lines


def _where(path: Path, lines: dict[tuple, int], at: tuple) -> str:
    for cut in range(len(at), -1, -1):
        if at[:cut] in lines:
            line = lines[at[:cut]]
            break
    else:
        line = 1
    return f"{path}:{line}: {_dotted(at)}" if at else f"{path}:{line}"


def _dotted(at: tuple) -> str:
    text = ""
    for part in at:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe(error: Any, at: tuple, where: Callable[[tuple], str],
              known: Sequence[str]) -> str:
    at = tuple("continue" if part == "continue_" else part for part in at)
    kind = error["type"]
    if kind == "extra_forbidden":
        hint = difflib.get_close_matches(str(at[-1]), known, n=1)
        suffix = f" (did you mean '{hint[0]}'?)" if hint else (
            f" (known keys: {', '.join(known)})" if known else "")
        return f"{where(at)}: unknown key{suffix}"
    if kind == "missing":
        return f"{where(at)}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where(at)}: {message}"


def _known_keys(at: tuple) -> list[str]:
    """Key names accepted at a document path, for 'did you mean' hints."""
    model: type[BaseModel] = Config
    skip_container_key = False
    for part in at:
        if skip_container_key:  # a list index or a source name, not a field
            skip_container_key = False
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        if typing.get_origin(annotation) in (list, dict):
            annotation = typing.get_args(annotation)[-1]
            skip_container_key = True
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(field.alias or name for name, field in model.model_fields.items()
                  if not field.exclude and name != "options")

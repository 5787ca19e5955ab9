"""The admin page: recent events, dead letters, routes, queue depth and rate limits, in a browser.

The events list is searched and filtered (``q``, ``state``, ``source``, ``type``: see
``bridge.activity``), each event has its page (``/events/<event_id>``: the kept webhook, each
notification's posted text and attempts) with a Replay button (``bridge.replay``).

Off unless an admin token is configured (``admin.token`` or ``BRIDGE_ADMIN_TOKEN``): without one
the blueprint has no routes at all, so every ``/admin`` URL is a plain 404. With one:

- A person signs in with the token on ``/admin/login`` and gets a session cookie (HttpOnly,
  SameSite=Strict, path ``/admin``, Secure when the request came over HTTPS) that lasts
  ``SESSION_TTL``. The session lives in Redis (``Keys.admin_sessions``, bridge.store.keys), keyed
  by an HMAC of its id under the token: signing out deletes it, and a new token ends every
  session at once. A script sends ``Authorization: Bearer <token>`` instead, and may ask for
  JSON (``Accept: application/json``). Tokens are compared with ``hmac.compare_digest``; a wrong
  one gets a plain 401, with no hint. After ``LOGIN_FAILURES_PER_MINUTE`` wrong tokens (signing
  in or bearer) from one client address within a clock minute, that address gets 429 with
  ``Retry-After`` until the minute is over, the right token included; counted in Redis
  (``Keys.admin_login_failures``), so every receiver process sees them.
- ``next`` (where to go after signing in) must be a path under the admin pages, without control
  characters or dot segments; anything else is a 400.
- Every POST (the dead letters' Retry and Purge buttons, an event's Replay, sign-out) carries
  the session's CSRF token in a hidden field, checked in constant time. A request a browser
  marks as cross-site (``Sec-Fetch-Site`` other than ``same-origin``; without that header, an
  ``Origin`` naming another host) is refused with 403, login included. Bearer requests need no
  CSRF field: a browser cannot add that header to a cross-site request.
- Pages are server-rendered Jinja (autoescaped), with inline CSS allowed by a per-response CSP
  nonce and nothing else (no external assets, no framing, no inline script). The one script is
  the events list's ``live.js``, served from here; only that page's CSP lets it run (and fetch
  the page again). Bodies over ``MAX_FORM_BYTES`` are refused with 413. Responses are never
  cached.
- Nothing secret is shown: routes show names, matches, channels, conditions and flags; rate
  limits show account *names* ("default" and ``pumble.accounts``), never keys. A dead letter's
  and an event's detail views show the text and the stored webhook (kept without signature
  headers), behind the token like everything else.

Wiring (``bridge.web.create_app``)::

    from bridge.admin import install_admin, rate_limiter
    install_admin(app, config, queue, pipelines, rate_limiter(config, connection))

The blueprint (``admin``, at module level) reads its state from
``current_app.extensions[EXTENSION]`` and needs nothing else from the app (no ``secret_key``,
its own templates). With
``admin.listen`` the same app serves it, on that address only (bridge.web tells the listeners
apart by the socket a request came in on).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import jinja2
import redis
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    request,
    url_for,
)

from bridge.activity import STATES, Activity, EventActivity, EventDetail, Filters
from bridge.config import Config
from bridge.dlq import DeadLetterRecord, DeadLetters
from bridge.mutes import Mutes, intervals_of, muted_now, release_held, zone_of
from bridge.pipeline import Pipeline
from bridge.queue import NotificationQueue
from bridge.ratelimit import RateLimiter, limits_per_minute
from bridge.reload import Reloader
from bridge.render import RenderError
from bridge.replay import ReplayError, replay
from bridge.store.keys import Keys
from bridge.summaries import upcoming

log = logging.getLogger(__name__)

EXTENSION = "pumble_bridge_admin"  # the key of the admin's state in the app's extensions
URL_PREFIX = "/admin"  # where the admin pages are; their cookie is scoped to it
SESSION_COOKIE = "pumble_bridge_admin"
SESSION_TTL = 12 * 3600  # seconds a sign-in lasts
MAX_FORM_BYTES = 16 * 1024  # the admin's forms are a token and a button
LOGIN_FAILURES_PER_MINUTE = 10  # wrong tokens from one address before it waits for the next minute
MAX_NEXT_CHARS = 2048
RECENT_EVENTS = 50
MAX_QUERY_CHARS = 200  # a search is an order number, a name, an id
LIVE_SECONDS = 5  # how often the events page fetches itself again
TEMPLATES = Path(__file__).resolve().parent / "admin_templates"
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_NOTICES = {  # ?done=… after a POST: fixed texts, so nothing from the URL is echoed
    "retried": "{count} dead letter(s) back on the queue.",
    "purged": "{count} dead letter(s) deleted.",
    "gone": "That dead letter is no longer there.",
    "replayed": "Sent again: its notifications are back on the queue, marked as a replay.",
    "unmuted": "Unmuted: {count} held notification(s) sent now.",
    "not-muted": "That route was not muted (any more).",
}


def rate_limiter(config: Config, connection: redis.Redis) -> RateLimiter:
    """The limiter the workers use (same namespace and limits), to read its state."""
    return RateLimiter(connection, config.redis.queue,
                       limits_per_minute(config.delivery.rate_limits))


@dataclasses.dataclass(frozen=True)
class Admin:
    """What the admin pages read, from ``current_app.extensions[EXTENSION]``."""

    token: bytes
    queue: NotificationQueue
    pipelines: Reloader[Pipeline]  # the receiver's live config: routes, sources, accounts, zone
    limiter: RateLimiter
    sessions: _Sessions
    failures: _LoginFailures
    activity: Activity
    letters: DeadLetters
    env: jinja2.Environment
    clock: Callable[[], float]
    mutes: Mutes


def install_admin(app: Flask, config: Config, queue: NotificationQueue,
                  pipelines: Reloader[Pipeline], limiter: RateLimiter, *,
                  clock: Callable[[], float] = time.time) -> None:
    """Serve the admin pages on ``app`` under ``URL_PREFIX``, guarded by ``config.admin.token``
    (read once: a new token takes a restart); without a token, nothing (every /admin URL is a
    404). ``clock``: the time login failures are counted by, and a replay is received at."""
    if config.admin.token is None:
        return
    token = config.admin.token.get_secret_value().encode()
    app.extensions[EXTENSION] = Admin(
        token, queue, pipelines, limiter,
        _Sessions(queue.rq.connection, queue.rq.name, token),
        _LoginFailures(queue.rq.connection, queue.rq.name, clock),
        Activity(queue), DeadLetters(queue), _environment(), clock,
        Mutes(queue.rq.connection, queue.rq.name))
    app.register_blueprint(admin)


admin = Blueprint("admin", __name__, url_prefix=URL_PREFIX)


def _admin() -> Admin:
    return current_app.extensions[EXTENSION]


# -- guards ----------------------------------------------------------------------------------


@admin.before_request
def _guard() -> Response | tuple[Response, int] | None:
    request.max_content_length = MAX_FORM_BYTES
    request.max_form_memory_size = MAX_FORM_BYTES
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        return _page("message.html", 413, title="Too large",
                     text="That request is larger than the admin page accepts.")
    if request.method not in ("GET", "HEAD") and _cross_site():
        log.warning("admin: cross-site %s %s refused", request.method, request.path)
        return _page("message.html", 403, title="Refused",
                     text="This request did not come from the admin page.")
    refused = _authenticate()
    if refused is not None or request.endpoint in ("admin.login", "admin.login_form"):
        return refused
    if not g.admin_bearer and g.admin_csrf is None:
        return _unauthorized()
    if request.method == "POST" and not g.admin_bearer:
        given = request.form.get("csrf", "")
        if not _same(given.encode(), g.admin_csrf.encode()):
            log.warning("admin: POST %s without a valid CSRF token refused", request.path)
            return _page("message.html", 403, title="Refused",
                         text="This form has expired. Go back, reload the page and try again.")
    return None


def _authenticate() -> Response | tuple[Response, int] | None:
    """Sets ``g.admin_bearer`` (a right bearer token came) and ``g.admin_csrf`` (the session's
    CSRF token, None without a live session); the answer when the client is refused."""
    state = _admin()
    g.admin_bearer, g.admin_csrf = False, None
    authorization = request.headers.get("Authorization")
    if authorization is not None or request.endpoint == "admin.login":
        wait = state.failures.wait(_client())
        if wait:
            return _throttled(wait)
    if authorization is not None:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not _same(given.strip().encode(), state.token):
            log.warning("admin: wrong bearer token from %s", _client())
            state.failures.add(_client())
            return _unauthorized()
        g.admin_bearer = True
    else:
        g.admin_csrf = state.sessions.csrf(request.cookies.get(SESSION_COOKIE, ""))
    return None


@admin.after_request
def _headers(response: Response) -> Response:
    nonce = g.get("admin_nonce", "")
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; "
        + (f"style-src 'nonce-{nonce}'; " if nonce else "")
        + ("script-src 'self'; connect-src 'self'; " if g.get("admin_live") else "")
        + "img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"  # no-referrer would null Origin
    response.vary.update(("Cookie", "Authorization"))
    return response


@admin.errorhandler(redis.RedisError)
def _redis_down(exc: redis.RedisError) -> Response:
    log.error("admin: Redis error: %s", type(exc).__name__)
    return _page("message.html", 503, title="Redis unavailable",
                 text="Redis cannot be reached right now; try again in a moment.")


def _unauthorized() -> Response | tuple[Response, int]:
    if _wants_json():
        return jsonify({"error": "unauthorized"}), 401
    here = _next_target(request.full_path, URL_PREFIX) if request.method == "GET" else ""
    return _page("login.html", 401, title="Sign in", failed=False, next=here or "")


def _throttled(wait: int) -> Response:
    log.warning("admin: sign-in refused for %s: too many wrong tokens", _client())
    if _wants_json() or request.headers.get("Authorization") is not None:
        answer = jsonify({"error": "too many wrong tokens; try again later"})
    else:
        answer = _page("message.html", title="Too many attempts",
                       text="Too many wrong tokens from this address. Try again later.")
    answer.status_code = 429
    answer.headers["Retry-After"] = str(wait)
    return answer


def _client() -> str:
    return request.remote_addr or ""


def _next_or_400(target: str) -> str:
    checked = _next_target(target, URL_PREFIX)
    if checked is None:
        abort(400, "next must be a path under the admin pages")
    return checked


# -- rendering -------------------------------------------------------------------------------

def _page(template: str, status: int = 200, **data: Any) -> Response:
    g.admin_nonce = secrets.token_urlsafe(16)
    csrf = g.get("admin_csrf")
    html = _admin().env.get_template(template).render(
        **{"tab": "", "title": "Admin", **data}, nonce=g.admin_nonce, csrf=csrf,
        signed_in=csrf is not None, url_for=url_for)
    return Response(html, status, mimetype="text/html")


def _respond(template: str, data: dict[str, Any], status: int = 200,
             **extra: Any) -> Response | tuple[Response, int]:
    """JSON for a script that asks for it, else the page; the same data either way."""
    if _wants_json():
        return jsonify(data), status
    return _page(template, status, **data, **extra)


def _wants_json() -> bool:
    accept = request.accept_mimetypes
    return accept.best_match(["text/html", "application/json"]) == "application/json"


def _zone() -> tzinfo:
    return ZoneInfo(_admin().pipelines.config.timezone)


def _done(code: str, count: int = 0, status: int = 200) -> Response | tuple[Response, int]:
    if g.admin_bearer:
        return jsonify({code: count}), status
    return redirect(url_for("admin.dead_letters", done=code, count=count), 303)


def _bad_request(text: str) -> Response | tuple[Response, int]:
    if _wants_json():
        return jsonify({"error": text}), 400
    return _page("message.html", 400, title="Bad request", text=text)


# -- sign in and out -------------------------------------------------------------------------

@admin.get("/login")
def login_form() -> Response:
    if g.admin_bearer or g.admin_csrf is not None:
        return redirect(url_for("admin.events"), 303)
    return _page("login.html", title="Sign in", failed=False,
                 next=_next_or_400(request.args.get("next", "")))


@admin.post("/login")
def login() -> Response:
    state = _admin()
    given = request.form.get("token", "")
    target = _next_or_400(request.form.get("next", ""))
    if not _same(given.encode(), state.token):
        log.warning("admin: wrong token from %s", _client())
        state.failures.add(_client())
        return _page("login.html", 401, title="Sign in", failed=True, next=target)
    state.sessions.delete(request.cookies.get(SESSION_COOKIE, ""))  # signing in again: a new one
    session_id = state.sessions.create()
    response = redirect(target or url_for("admin.events"), 303)
    response.set_cookie(SESSION_COOKIE, session_id, max_age=SESSION_TTL, path=URL_PREFIX,
                        secure=request.is_secure, httponly=True, samesite="Strict")
    log.info("admin: signed in from %s", _client())
    return response


@admin.post("/logout")
def logout() -> Response:
    _admin().sessions.delete(request.cookies.get(SESSION_COOKIE, ""))
    response = redirect(url_for("admin.login_form"), 303)
    response.delete_cookie(SESSION_COOKIE, path=URL_PREFIX, httponly=True, samesite="Strict",
                           secure=request.is_secure)
    return response


# -- pages -----------------------------------------------------------------------------------

@admin.get("")
@admin.get("/")
def events() -> Response | tuple[Response, int]:
    limit = min(max(request.args.get("limit", RECENT_EVENTS, type=int) or 1, 1), 500)
    try:
        filters = _filters(request.args)
    except ValueError as exc:
        return _bad_request(str(exc))
    state = _admin()
    found = state.activity.search(filters, limit)
    data = {"filters": dataclasses.asdict(filters),
            "events": [event_json(event, _zone()) for event in found]}
    g.admin_live = True  # its script (live.js) may run, and fetch the page again
    return _respond("events.html", data, title="Recent events", tab="events",
                    states=STATES, sources=sorted(state.pipelines.config.sources),
                    live_seconds=LIVE_SECONDS)


@admin.get("/live.js")
def live_script() -> Response:
    return Response((TEMPLATES / "live.js").read_bytes(), mimetype="text/javascript")


@admin.get("/events/<event_id>")
def event_detail(event_id: str) -> Response | tuple[Response, int]:
    detail = _admin().activity.detail(event_id)
    if detail is None:
        abort(404)
    replayed = request.args.get("done") == "replayed"
    return _respond("event.html", _detail(event_id, detail, _zone()), title="Event",
                    tab="events", notice=_NOTICES["replayed"] if replayed else "")


@admin.post("/events/<event_id>/replay")
def replay_event(event_id: str) -> Response | tuple[Response, int]:
    state = _admin()
    try:
        replayed = replay(state.queue, state.pipelines.current, event_id,
                          route=request.form.get("route", ""), clock=state.clock)
    except ReplayError as exc:
        if g.admin_bearer:
            return jsonify({"error": str(exc)}), 409
        return _page("message.html", 409, title="Not replayed", text=str(exc))
    if g.admin_bearer:
        return jsonify({"replayed": replayed.delivery_id,
                        "notifications": len(replayed.notifications),
                        "failed": replayed.failures})
    return redirect(url_for("admin.event_detail", event_id=event_id, done="replayed"), 303)


def _newest_first() -> list[dict[str, Any]]:
    records = sorted(_admin().letters.list(), key=lambda r: r.failed_at or _EPOCH, reverse=True)
    return [_dead_letter(record, _zone()) for record in records]


@admin.get("/dead-letters")
def dead_letters() -> Response | tuple[Response, int]:
    data = {"dead_letters": _newest_first()}
    code = request.args.get("done", "")
    notice = _NOTICES.get(code, "").format(count=request.args.get("count", 0, type=int))
    return _respond("dead_letters.html", data, title="Dead letters", tab="dead",
                    notice=notice, error="")


@admin.get("/dead-letters/<job_id>")
def dead_letter(job_id: str) -> Response | tuple[Response, int]:
    record = _admin().letters.get(job_id) if _JOB_ID.match(job_id) else None
    if record is None:
        abort(404)
    data = {"dead_letter": _dead_letter(record, _zone(), full=True)}
    return _respond("dead_letter.html", data, title="Dead letter", tab="dead")


@admin.post("/dead-letters/<job_id>/retry")
def retry(job_id: str) -> Response | tuple[Response, int]:
    state = _admin()
    return _retried(lambda: int(_JOB_ID.match(job_id) is not None and state.letters.retry(
        job_id, state.pipelines.current)), single=True)


@admin.post("/dead-letters/retry-all")
def retry_all() -> Response | tuple[Response, int]:
    state = _admin()
    return _retried(lambda: state.letters.retry_all(state.pipelines.current))


def _retried(action: Callable[[], int], single: bool = False) -> Response | tuple[Response, int]:
    try:
        count = action()
    except RenderError as exc:  # its template still fails with the current config
        if g.admin_bearer:
            return jsonify({"error": str(exc)}), 409
        return _page("dead_letters.html", 409, title="Dead letters", tab="dead", notice="",
                     error=f"Not retried: {exc}", dead_letters=_newest_first())
    log.info("admin: %d dead letter(s) retried", count)
    return _done("gone" if single and not count else "retried", count,
                 404 if single and not count else 200)


@admin.post("/dead-letters/<job_id>/purge")
def purge(job_id: str) -> Response | tuple[Response, int]:
    count = _admin().letters.purge(job_id) if _JOB_ID.match(job_id) else 0
    log.info("admin: %d dead letter(s) purged", count)
    return _done("purged" if count else "gone", count, 200 if count else 404)


@admin.post("/dead-letters/purge-all")
def purge_all() -> Response | tuple[Response, int]:
    if request.form.get("confirm") != "yes":
        if g.admin_bearer:
            return jsonify({"error": "purge-all needs confirm=yes"}), 400
        return redirect(url_for("admin.dead_letters"), 303)
    count = _admin().letters.purge()
    log.info("admin: all %d dead letter(s) purged", count)
    return _done("purged", count)


@admin.get("/routes")
def routes() -> Response | tuple[Response, int]:
    state = _admin()
    pipelines = state.pipelines
    data = {
        "routes": [_route(route) for route in pipelines.current.router.routes],
        "sources": [{"name": name, "type": source.type}
                    for name, source in pipelines.config.sources.items()],
        "mutes": _mutes(state),
    }
    code = request.args.get("done", "")
    notice = _NOTICES.get(code, "").format(count=request.args.get("count", 0, type=int))
    return _respond("routes.html", data, title="Routes", tab="routes", notice=notice)


def _mutes(state: Admin) -> list[dict[str, Any]]:
    """The routes muted now: by hand (with an Unmute button) and by their time intervals."""
    now, config, zone = state.clock(), state.pipelines.config, _zone()
    shown = [{"route": m.route, "by": m.by, "why": m.why, "until": _when(m.until, zone),
              "by_hand": True} for m in state.mutes.all(now)]
    intervals = intervals_of(config)
    for route in config.routes:
        muted = muted_now(route, intervals, None, now)
        if muted:
            shown.append({"route": route.name, "by": "", "by_hand": False,
                          "why": muted.describe(zone_of(route, intervals, zone)), "until": ""})
    return shown


@admin.post("/mutes/unmute")
def unmute() -> Response | tuple[Response, int]:
    """End a route's mute by hand; its held notifications are sent now."""
    state, route = _admin(), request.form.get("route", "")
    if not state.mutes.unmute(route):
        code, count, status = "not-muted", 0, 404
    else:
        code, count, status = "unmuted", release_held(state.queue.rq, route), 200
        log.info("admin: route %s unmuted (%d held notification(s) released)", route, count)
    if g.admin_bearer:
        return jsonify({code: count}), status
    return redirect(url_for("admin.routes", done=code, count=count), 303)


@admin.get("/queue")
def queue_page() -> Response | tuple[Response, int]:
    state = _admin()
    rq = state.queue.rq
    depth = {"queued": rq.count, "scheduled": rq.scheduled_job_registry.count,
             "started": rq.started_job_registry.count,
             "deferred": rq.deferred_job_registry.count,
             "failed": rq.failed_job_registry.count,
             "finished": rq.finished_job_registry.count}
    accounts = ["default", *state.pipelines.config.pumble.accounts]
    data = {"queue": rq.name, "depth": depth,
            "rate_limits": {account: state.limiter.state(account) for account in accounts},
            "summaries": [{"name": coming.name, "channel": coming.channel,
                           "next": coming.at.strftime("%Y-%m-%d %H:%M %Z")}
                          for coming in upcoming(state.pipelines.config.summaries,
                                                 state.clock())]}
    return _respond("queue.html", data, title="Queue", tab="queue")


# -- sessions ----------------------------------------------------------------------------------


class _Sessions:
    """Signed-in browsers: a random id in the cookie; in Redis, under an HMAC of it keyed by the
    token (a new token orphans every session), the session's CSRF token, for SESSION_TTL."""

    def __init__(self, connection: redis.Redis, namespace: str, token: bytes):
        self.connection = connection
        self._prefix = Keys(namespace).admin_sessions()
        self._key = hmac.new(token, b"pumble-bridge admin session", hashlib.sha256).digest()

    def _redis_key(self, session_id: str) -> str:
        digest = hmac.new(self._key, session_id.encode(), hashlib.sha256).hexdigest()
        return self._prefix + digest

    def create(self) -> str:
        session_id = secrets.token_urlsafe(32)
        self.connection.set(self._redis_key(session_id), secrets.token_urlsafe(32),
                            ex=SESSION_TTL)
        return session_id

    def csrf(self, session_id: str) -> str | None:
        """The session's CSRF token, or None when there is no such (live) session."""
        if not session_id or len(session_id) > 100:
            return None
        value = self.connection.get(self._redis_key(session_id))
        return value.decode() if value else None

    def delete(self, session_id: str) -> None:
        if session_id and len(session_id) <= 100:
            self.connection.delete(self._redis_key(session_id))


class _LoginFailures:
    """Wrong tokens by client address and clock minute, in Redis (the receiver may run several
    processes): LOGIN_FAILURES_PER_MINUTE in one minute, and the address waits for the next."""

    def __init__(self, connection: redis.Redis, namespace: str, clock: Callable[[], float]):
        self.connection = connection
        self._prefix = Keys(namespace).admin_login_failures()
        self._clock = clock

    def _key(self, address: str) -> tuple[str, float]:
        """The address's key for this minute, and the seconds left in the minute."""
        minute, into = divmod(self._clock(), 60)
        return f"{self._prefix}{int(minute)}:{address}", 60 - into

    def wait(self, address: str) -> int:
        """Seconds until ``address`` may try a token again; 0 when it may now."""
        key, left = self._key(address)
        count = self.connection.get(key)
        return math.ceil(left) if count and int(count) >= LOGIN_FAILURES_PER_MINUTE else 0

    def add(self, address: str) -> None:
        key, _ = self._key(address)
        with self.connection.pipeline() as pipe:
            pipe.incr(key).expire(key, 120).execute()


# -- helpers -----------------------------------------------------------------------------------

_EPOCH = datetime.fromtimestamp(0, UTC)


def _same(given: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(given, expected)


def _cross_site() -> bool:
    """True for a request a browser says came from another site. Sec-Fetch-Site, where sent, is
    the browser's own verdict (a page cannot forge it); otherwise Origin, where sent, must name
    this host."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return False  # not a browser, or an old one: the CSRF token still has to match
    return origin == "null" or urlsplit(origin).netloc != request.host


def _next_target(target: str, prefix: str) -> str | None:
    """``target`` when it is a place under the admin pages to go back to after signing in ('' for
    none), else None: another site, another part of this one, the sign-in pages, a dot segment,
    a control character (a CR/LF would end up in the Location header)."""
    target = target.rstrip("?")
    if not target:
        return ""
    parts = urlsplit(target)
    path = unquote(parts.path)
    if (len(target) > MAX_NEXT_CHARS or parts.scheme or parts.netloc or "\\" in target
            or not (path == prefix or path.startswith(prefix + "/"))
            or path.startswith(prefix + "/log") or {".", ".."} & set(path.split("/"))
            or any(unicodedata.category(ch)[0] == "C" or ch in "\u2028\u2029"
                   for ch in unquote(target))):
        return None
    return target


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env


def _when(value: datetime | float | None, zone: tzinfo) -> str:
    if value is None:
        return ""
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def _filters(args: Any) -> Filters:
    """The events list's query parameters; ValueError for a state it does not know."""
    return Filters(**{name: args.get(name, "")[:MAX_QUERY_CHARS]
                      for name in ("q", "state", "source", "type")})


def event_json(event: EventActivity, zone: tzinfo) -> dict[str, Any]:
    return {
        "event_id": event.event_id, "source": event.source, "type": event.type,
        "received_at": event.received_at, "received": _when(event.received_at, zone),
        "duplicate": event.duplicate, "failures": list(event.failures),
        "ref": event.ref, "amount": event.amount, "currency": event.currency,
        "customer": event.customer, "email": event.email, "test": event.test,
        "replay_of": event.replay_of, "states": sorted(event.states),
        "deliveries": [{"route": d.route, "channel": d.channel, "job_id": d.job_id,
                        "state": d.state, "outcome": d.outcome, "message_id": d.message_id,
                        "in_digest_of": d.in_digest_of, "error": d.error,
                        "dropped": d.dropped}
                       for d in event.deliveries],
    }


def _detail(event_id: str, detail: EventDetail, zone: tzinfo) -> dict[str, Any]:
    def posted(job_id: str) -> dict[str, Any] | None:
        p = detail.posted.get(job_id)
        return None if p is None else {
            "text": p.text, "account": p.account, "thread": p.thread,
            "thread_root": p.thread_root, "reaction": p.reaction, "reacted": p.reacted,
            "attempts": [{"at": _when(a.at, zone), "outcome": a.outcome, "answer": a.answer}
                         for a in p.attempts]}

    lines = [event_json(line, zone) for line in detail.lines]
    for line in lines:
        for delivery in line["deliveries"]:
            delivery["posted"] = posted(delivery["job_id"])
    return {"event_id": event_id, "lines": lines, "webhook": detail.webhook}


def _dead_letter(record: DeadLetterRecord, zone: tzinfo, full: bool = False) -> dict[str, Any]:
    n = record.notification
    data: dict[str, Any] = {
        "id": record.id, "failed": _when(record.failed_at, zone),
        "failed_at": record.failed_at.isoformat() if record.failed_at else None,
        "source": n.source, "event_id": n.event_id, "event_type": n.event_type,
        "route": n.route, "channel": n.channel, "account": n.account,
        "attempts": record.attempts, "reason": record.reason,
    }
    if full:
        data.update(text=n.text, reply=n.reply, as_bot=n.as_bot,
                    webhook={"headers": record.event.get("headers", {}),
                             "body": record.webhook_body} if record.event else None)
    return data


def _route(route: Any) -> dict[str, Any]:
    return {
        "name": route.name, "source": list(route.match.source), "event": list(route.match.event),
        "channel": route.channel, "when": route.when or "",
        "template": route.template or ("inline text" if route.text is not None else "default"),
        "account": route.account, "thread": route.thread, "digest": route.digest,
        "continue": route.continue_, "create_channel": route.create_channel,
        "as_bot": route.as_bot, "reactions": dict(route.reactions),
    }

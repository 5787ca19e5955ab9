"""The receiving half of the pipeline, assembled from a config: sources, routes, templates.

Everything that can be checked before the first webhook is checked here, at load time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from bridge import sandbox
from bridge.config import Config, ConfigError, RouteSettings
from bridge.events import THREAD_STARTERS, Event, thread_key
from bridge.notification import Notification
from bridge.render import Renderer, RenderError
from bridge.routing import Router
from bridge.sources import SOURCE_TYPES, Source, WebhookRequest, build_source
from bridge.summaries import SummaryMatcher, summary_problems

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """A route whose template failed for this event: the notification (no text) and why."""

    notification: Notification
    reason: str


@dataclass(frozen=True)
class Dispatch:
    """What one event turned into: notifications to enqueue, and routes that failed to render."""

    notifications: list[Notification] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


class Pipeline:
    def __init__(self, sources: dict[str, Source], router: Router, renderer: Renderer,
                 summaries: SummaryMatcher | None = None):
        self.sources = sources
        self.router = router
        self.renderer = renderer
        self.summaries = summaries or SummaryMatcher(())  # the totals an event counts in

    @classmethod
    def from_config(cls, config: Config) -> Pipeline:
        problems = []
        sources = {}
        for name, settings in config.sources.items():
            try:
                sources[name] = build_source(name, settings)
            except ValidationError as exc:  # the platform's own keys
                known = sorted(SOURCE_TYPES[settings.type].Options.model_fields)
                problems.extend(config.describe(err, ("sources", name), known)
                                for err in exc.errors())
            except ValueError as exc:  # an unknown type, or a secret the platform cannot use
                place = ("sources", name, "type") if settings.type not in SOURCE_TYPES else (
                    "sources", name)
                problems.append(f"{config.locate(*place)}: {exc}")
        env = sandbox.environment(config.template_dirs, ZoneInfo(config.timezone),
                                  config.delivery.max_message_chars)
        index = {route.name: i for i, route in enumerate(config.routes)}

        def locate(route: RouteSettings, key: str) -> str:
            return f"{config.locate('routes', index[route.name], key)} (route {route.name!r})"

        try:
            router = Router(env, config.routes, locate)
        except ValueError as exc:
            problems.extend(str(exc).splitlines())
        try:
            renderer = Renderer(env, config.routes, locate)
        except ValueError as exc:
            problems.extend(f"{config.path}: {line}" if line.startswith("template ") else line
                            for line in str(exc).splitlines())
        for route in config.routes:
            for pattern in route.match.source:
                if not any(ch in pattern for ch in "*?[") and pattern not in config.sources:
                    problems.append(f"{locate(route, 'match')}: source {pattern!r} is not "
                                    "under sources:")
        problems.extend(summary_problems(config, env))
        if problems:
            raise ConfigError(problems)
        return cls(sources, router, renderer, SummaryMatcher(config.summaries))

    def dispatch(self, event: Event, received_at: float) -> Dispatch:
        result = Dispatch()
        rendered: dict[int, str] = {}
        for route in self.router.match(event):
            try:
                result.notifications.append(self.notification(route, event, received_at,
                                                              rendered))
            except RenderError as exc:
                log.error("event %s: %s", event.id, exc)
                unrendered = _notification(route, event, received_at, route.channel, "")
                result.failures.append(Failure(unrendered, str(exc)))
        return result

    def notification(self, route: RouteSettings, event: Event, received_at: float,
                     rendered: dict[int, str] | None = None) -> Notification:
        """One route's notification for an event; RenderError if its template fails.
        ``rendered``: texts already made for this event (see Renderer.render)."""
        message = self.renderer.render(route, event, rendered)
        return _notification(route, event, received_at, message.channel, message.text)

    def render_again(self, notification: Notification, source: str,
                     webhook: WebhookRequest) -> Notification:
        """A dead letter whose template failed, rendered by the current config from the
        webhook it came from. RenderError when it still fails, or its route or source is gone."""
        route = next((r for r in self.router.routes if r.name == notification.route), None)
        if route is None or source not in self.sources:
            raise RenderError(f"route {notification.route!r} or source {source!r} is no longer "
                              "in the config")
        event = self.sources[source].parse(webhook)
        return self.notification(route, event, notification.received_at)


def _notification(route: RouteSettings, event: Event, received_at: float, channel: str,
                  text: str) -> Notification:
    return Notification(
        source=event.source.name,
        event_id=event.id,
        event_type=event.type,
        route=route.name,
        channel=channel,
        text=text,
        as_bot=route.as_bot,
        account=route.account,
        received_at=received_at,
        occurred_at=event.occurred_at.timestamp() if event.occurred_at else 0.0,
        thread_key=thread_key(event),
        starts_thread=event.type in THREAD_STARTERS,
        reply=route.thread and event.type not in THREAD_STARTERS,
        reaction=next((reaction for pattern, reaction in route.reactions.items()
                       if fnmatchcase(event.type, pattern)), ""),
        create_channel=route.create_channel,
        digest=route.digest,
    )

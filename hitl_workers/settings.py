"""One settings object for every process (workers, beat, gateway, CLI).

Read from the environment with the prefix ``HITL_`` (a ``.env`` file may supply it) and
validated at start-up, so a typo in a URL fails loudly before any task runs.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hitl_workers.domain.webhooks import WebhookPolicy


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HITL_", env_file=".env", extra="ignore")

    broker_url: str = "redis://localhost:6379/0"
    result_backend_url: str = "redis://localhost:6379/1"
    redis_url: str = Field(
        "redis://localhost:6379/2", description="Redis for agent notifications (Streams)."
    )
    database_url: str = "sqlite:///hitl_workers.db"

    rabbitmq_queue_type: Literal["quorum", "classic"] = "quorum"
    """On RabbitMQ, the type of every queue the system declares (the hitl.* queues and the
    reply queues it publishes exits to). ``quorum`` (replicated, native delayed delivery) unless
    a flow engine's AMQP client cannot declare quorum queues: docs/contract.md §2."""

    default_reply_task: str = "flow.step_exited"
    default_reply_queue: str = "flow"

    timer_horizon_s: float = Field(60.0, gt=0)
    """ETA wake-ups are published only for deadlines this close; later ones wait in the DB
    until the reconciler arms them. A minute, because most steps end (claimed, rejected,
    cancelled) within one: a wake-up published for a deadline that never comes costs a publish,
    a message held by a timer worker and, when due, a task that finds nothing to do
    (docs/scaling.md §5 says what a longer or shorter horizon trades)."""
    reconcile_interval_s: float = Field(1.0, gt=0)
    reconcile_helpers: int = Field(2, ge=0)
    """Helper tasks a reconciler tick asks for when more deadlines are overdue than it fires
    in one batch (after a broker flush, or workers down): they drain the backlog with it."""
    outbox_retry_after_s: float = Field(5.0, gt=0)
    """An outbox row unsent for this long is re-sent by the reconciler."""
    visibility_timeout_s: float | None = None
    """Redis transport visibility timeout; default: the timer horizon plus a margin."""

    retention_days: float = Field(30.0, ge=0)
    """Ended executions (with their offers, timers, audit and outbox rows), stored answers to
    agent events, dead letters, idle conversations and stream entries older than this are
    deleted by beat's ``hitl.purge``; 0 keeps everything (docs/operations.md)."""
    retention_interval_s: float = Field(60.0, gt=0)
    """How often beat sends ``hitl.purge``."""

    revoke_timers: bool = False
    """Revoke a finished step's pending wake-up. Off by default: a revoke is a broadcast every
    worker handles and remembers, and it does not free the held ETA message; the wake-up, when
    due, finds its timer cancelled in one short transaction (docs/benchmarks.md)."""
    db_pool_size: int = Field(5, ge=1)
    notification_stream_maxlen: int = Field(10_000, ge=100)
    notify_timeout_s: float = Field(0.5, gt=0)
    """Socket timeout of the notification Redis client. A claim or a wake-up that publishes
    a notification waits at most this long for a Redis that hangs (once per worker: after
    that the notifications are skipped and re-sent from the outbox)."""

    secret: str = "dev-insecure-secret-change-me"
    token_max_age_s: int = Field(12 * 3600, gt=0)
    token_clock_leeway_s: float = Field(5.0, ge=0, le=300)
    """How far apart the clocks of the machines that make and check agent tokens may be."""
    dev_login: bool = False
    gateway_event_rate_per_s: float = Field(20.0, gt=0)
    """Claims, rejects, closes and status changes one agent may send a second, per gateway
    process (bursts up to the same number); beyond it the gateway answers 429."""
    gateway_max_streams_per_agent: int = Field(5, ge=1)
    """Open event streams one agent may hold on one gateway process; beyond it, 429."""
    gateway_agent_cache_s: float = Field(2.0, ge=0)
    """How long the gateway trusts that a token's agent is still in the directory."""
    gateway_stream_recheck_s: float = Field(30.0, gt=0)
    """How often a gateway ends the open event streams of agents removed from the directory."""
    gateway_redis_connections: int = Field(8, ge=2)
    """Redis connections a gateway process uses for commands (event-stream catch-up, health)
    besides its stream readers; every event stream shares them."""
    gateway_stream_readers: int = Field(8, ge=1, le=64)
    """Redis connections, each blocking in one XREAD over its share of the connected agents'
    streams. Each new entry costs its reader one XREAD over its share, so more readers make
    many streams cheaper (docs/gateway.md, "Scale")."""

    webhook_secret: str | None = None
    """Signs webhook exits (``Hitl-Signature``, docs/contract.md §10); at least 32
    characters. Unset: a request whose ``reply_to`` is a webhook fails validation."""
    webhook_allowed_hosts: str = ""
    """Comma-separated host names a ``reply_to.webhook`` may name (``*``: any, https only);
    checked when the request is validated. Empty: no webhook is accepted."""
    webhook_retry_base_s: float = Field(2.0, gt=0)
    """Wait after a webhook's first failed attempt; it doubles with each failure (with
    jitter), up to ``webhook_retry_max_s``."""
    webhook_retry_max_s: float = Field(3600.0, gt=0)
    webhook_give_up_s: float = Field(24 * 3600.0, gt=0)
    """A webhook exit not delivered this long after it was recorded is given up (§10: 24 h)."""

    log_json: bool = False
    """Worker and beat log lines as JSON objects, one a line (task lines carry the ids)."""
    log_level: str = "INFO"

    metrics_dir: Path | None = None
    """Where workers' processes keep their Prometheus counters (one subdirectory per worker
    node, emptied when that worker starts); the gateway's /metrics reads every node's. Default:
    a directory in the system's temp dir named after the broker, so two systems on one host
    never mix."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """When set, each worker serves its own node's metrics on this port (/metrics)."""
    metrics_address: str = "127.0.0.1"
    """The worker metrics endpoint's address; 0.0.0.0 in containers."""
    flower_basic_auth: str | None = None
    """``user:password`` (comma-separated for several) for Flower's --basic-auth."""

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("HITL_DATABASE_URL must be a sqlite:// or postgresql+psycopg2:// URL")
        return value

    @model_validator(mode="after")
    def _visibility_above_horizon(self) -> Settings:
        if self.effective_visibility_timeout_s <= self.timer_horizon_s:
            # Allowed (the fault tests use it to provoke redeliveries) and never wrong, but
            # every wake-up held longer than the visibility timeout is delivered twice.
            warnings.warn(
                f"HITL_VISIBILITY_TIMEOUT_S ({self.effective_visibility_timeout_s:g}) is not "
                f"above HITL_TIMER_HORIZON_S ({self.timer_horizon_s:g}): a Redis broker "
                f"redelivers armed wake-ups while they wait (harmless, double work). Leave it "
                f"unset to get twice the horizon plus a minute.", stacklevel=2)
        return self

    @model_validator(mode="after")
    def _classic_horizon_below_consumer_timeout(self) -> Settings:
        rabbitmq = self.broker_url.split("://", 1)[0].lower() in ("amqp", "amqps", "pyamqp")
        if rabbitmq and self.rabbitmq_queue_type == "classic" and self.timer_horizon_s >= 1800:
            # Classic queues have no native delayed delivery: a timer worker holds each armed
            # wake-up unacked until due, and RabbitMQ closes a channel that holds a delivery
            # longer than its consumer_timeout (30 min by default).
            warnings.warn(
                f"HITL_TIMER_HORIZON_S ({self.timer_horizon_s:g}) is 30 minutes or more with "
                f"classic RabbitMQ queues: wake-ups held that long exceed RabbitMQ's default "
                f"consumer_timeout (30 min), which closes the worker's channel. Lower the "
                f"horizon or raise consumer_timeout.", stacklevel=2)
        return self

    @property
    def effective_visibility_timeout_s(self) -> float:
        # A Redis broker re-delivers an unacked message after the visibility timeout. An ETA
        # task is unacked until it runs, so the timeout must outlast the horizon or every armed
        # timer comes back twice (harmless, but wasteful).
        if self.visibility_timeout_s is not None:
            return self.visibility_timeout_s
        return self.timer_horizon_s * 2 + 60

    def webhook_policy(self) -> WebhookPolicy:
        """Which ``reply_to.webhook`` URLs requests may name here (validation context)."""
        return WebhookPolicy.from_settings(self.webhook_allowed_hosts, self.webhook_secret)

    @property
    def effective_metrics_dir(self) -> Path:
        if self.metrics_dir is not None:
            return self.metrics_dir
        broker = hashlib.sha256(self.broker_url.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"hitl_workers-metrics-{broker}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

"""Test configuration: real PostgreSQL, real Redis, real Celery worker processes.

A test that needs a service fails (never skips) when it is missing. The environment below is
set before anything imports ``hitl_workers``, so this process and the workers it starts share
one configuration: the database ``hitl_test`` and Redis databases 10-12.
"""

from __future__ import annotations

import os

REDIS = os.environ.get("HITL_TEST_REDIS", "redis://127.0.0.1:6379")
# Three Redis databases from this base (broker, results, notifications): two test runs on one
# machine stay apart with different bases and HITL_TEST_DATABASE_URLs.
BASE = int(os.environ.get("HITL_TEST_REDIS_DB_BASE", "10"))
os.environ.update(
    HITL_DATABASE_URL=os.environ.get(
        "HITL_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/hitl_test"),
    HITL_BROKER_URL=os.environ.get("HITL_TEST_BROKER_URL", f"{REDIS}/{BASE}"),
    HITL_RESULT_BACKEND_URL=f"{REDIS}/{BASE + 1}",
    HITL_REDIS_URL=f"{REDIS}/{BASE + 2}",
    # Long and random-looking: the gateway refuses a short or placeholder secret (§8).
    HITL_SECRET="tests-only-Zq7mW2xK9pL4vN8rT3yB6cF1hJ5dG0sA",
    HITL_RECONCILE_INTERVAL_S="0.5",
    HITL_OUTBOX_RETRY_AFTER_S="2",
    # No retention in the shared session: its purge would delete removed agents' streams
    # while a test still reads them (tests/faults/test_retention_under_load.py tests it).
    HITL_RETENTION_DAYS="0",
    # Webhook exits (§10) to receivers the tests run on this machine.
    HITL_WEBHOOK_SECRET="tests-only-webhook-Hk3Lm9Qp2Rs7Tv4Wx8Yz1Ab6",
    HITL_WEBHOOK_ALLOWED_HOSTS="127.0.0.1,localhost",
    HITL_WEBHOOK_RETRY_BASE_S="1",
)

pytest_plugins = ["tests.support.fixtures"]

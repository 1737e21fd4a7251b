"""Webhook exits (docs/contract.md §10): which URLs a request may name, the signature, the
backoff."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from hitl_workers.domain.request import AssistanceRequest
from hitl_workers.domain.validation import FieldError, Invalid, salvage_reply_to, validate_request
from hitl_workers.domain.webhooks import WebhookPolicy, body, headers, retry_delay_s

SECRET = "s" * 16 + "0123456789abcdefXYZ"
LOCAL = WebhookPolicy.from_settings("127.0.0.1, hooks.example.com", SECRET)
ANY = WebhookPolicy.from_settings("*", SECRET)


def request(reply_to: object) -> dict[str, object]:
    return {"execution_id": "exec-1", "conversation_id": "conv-1", "reply_to": reply_to}


def errors(reply_to: object, policy: WebhookPolicy | None) -> list[FieldError]:
    checked = validate_request(request(reply_to), webhooks=policy)
    assert isinstance(checked, Invalid), checked
    return list(checked.errors)


@pytest.mark.parametrize(("url", "policy"), [
    ("https://hooks.example.com/hitl/exit?flow=1", LOCAL),
    ("http://127.0.0.1:8080/exit", LOCAL),
    ("https://HOOKS.example.com./x", LOCAL),
    ("https://anything.example.org/x", ANY),
])
def test_an_allowed_webhook_is_accepted(url: str, policy: WebhookPolicy) -> None:
    checked = validate_request(request({"webhook": url}), webhooks=policy)
    assert isinstance(checked, AssistanceRequest), checked
    assert checked.reply_to is not None and checked.reply_to.webhook == url


@pytest.mark.parametrize(("url", "policy", "says"), [
    ("https://evil.example.net/x", LOCAL, "host 'evil.example.net' is not allowed"),
    ("http://anything.example.org/x", ANY, "http:// is accepted only for a host listed"),
    ("ftp://127.0.0.1/x", LOCAL, "must be an absolute https:// URL"),
    ("/relative", LOCAL, "must be an absolute https:// URL"),
    ("https://user:pw@hooks.example.com/x", LOCAL, "must not carry credentials"),
    ("https://hooks.example.com:port/x", LOCAL, "not a valid URL"),
    ("https://hooks.example.com/" + "x" * 2000, LOCAL, "at most 2000 characters"),
    ("https://127.0.0.1/x", None, "HITL_WEBHOOK_SECRET is not set"),
    ("https://127.0.0.1/x", WebhookPolicy.from_settings("127.0.0.1", "short"),
     "HITL_WEBHOOK_SECRET is not set"),
    ("https://127.0.0.1/x", WebhookPolicy.from_settings("", SECRET), "is not allowed"),
])
def test_a_webhook_not_allowed_is_a_validation_error_on_reply_to_webhook(
        url: str, policy: WebhookPolicy | None, says: str) -> None:
    (error,) = errors({"webhook": url}, policy)
    assert error.field == "reply_to.webhook"
    assert says in error.message
    # and no exit may be sent to it: the reply target is unusable
    assert salvage_reply_to(request({"webhook": url}), webhooks=policy) is False


def test_webhook_and_a_task_together_are_refused_naming_each() -> None:
    found = errors({"webhook": "https://127.0.0.1/x", "task": "t", "queue": "q"}, LOCAL)
    assert [e.field for e in found] == ["reply_to.task", "reply_to.queue"]
    assert "not accepted together with webhook" in found[0].message


def test_an_empty_reply_to_asks_for_task_and_queue() -> None:
    assert [e.field for e in errors({}, LOCAL)] == ["reply_to.task", "reply_to.queue"]


def test_the_signature_is_the_hex_hmac_sha256_of_the_raw_body() -> None:
    kwargs = {"execution_id": "e:1", "exit": "claimed", "merge_field": {"addClaimedBy": "a"},
              "text": "é"}
    raw = body(kwargs)
    assert raw == '{"execution_id":"e:1","exit":"claimed","merge_field":{"addClaimedBy":"a"},' \
                  '"text":"é"}'.encode()
    sent = headers("e:1", raw, SECRET)
    expected = hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert sent == {"Content-Type": "application/json", "Hitl-Delivery": "exit:e:1",
                    "Hitl-Signature": f"sha256={expected}"}


def test_the_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    low = [retry_delay_s(n, base_s=2, max_s=60, rand=lambda: 0.0) for n in range(1, 8)]
    high = [retry_delay_s(n, base_s=2, max_s=60, rand=lambda: 1.0) for n in range(1, 8)]
    assert high == [2, 4, 8, 16, 32, 60, 60]
    assert low == [h / 2 for h in high]
    assert retry_delay_s(10_000, base_s=2, max_s=3600, rand=lambda: 1.0) == 3600

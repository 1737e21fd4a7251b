"""Garbage in: recorded, answered where it can be, and never a dead worker (docs/contract.md §1).

Every test ends by proving the worker still serves: a valid request sent right after gets its
normal answer.
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
from html.parser import HTMLParser

import pytest

from tests.support.steps import (
    dead_letters_for,
    eventually,
    execution,
    outbox_rows,
    protocol2_body,
    publish_raw,
    request,
    stays,
)


@pytest.fixture
def still_serves(client, flow, agents, team, system):
    """``still_serves()``: a valid request and a claim get their normal answers."""
    def check() -> None:
        for proc in system.procs.values():
            assert proc.alive, f"{proc.name} died:\n{proc.tail()}"
        alice = agents()
        step = request(team, flow.reply_to)
        assert client.call("hitl.request_assistance", **step) == {
            "execution_id": step["execution_id"], "state": "waiting", "exit": None,
            "duplicate": False}
        assert client.call("hitl.claim", execution_id=step["execution_id"],
                           agent_id=alice)["outcome"] == "claimed"
        assert flow.wait_for(step["execution_id"])["exit"] == "claimed"

    return check


def error_exit(flow, execution_id: str) -> dict:
    message = flow.wait_for(execution_id)
    assert message["exit"] == "error"
    return message["merge_field"]["error"]


# --- wrong types, unknown fields ------------------------------------------------------------

@pytest.mark.parametrize(("patch", "fields"), [
    ({"conversation_id": 42}, ["conversation_id"]),
    ({"flow_id": ["a"]}, ["flow_id"]),
    ({"conversation": "channel:sms"}, ["conversation"]),
    ({"conversation": {"tags": "team:x"}}, ["conversation.tags"]),
    ({"conversation": {"tags": [1, None]}}, ["conversation.tags.0", "conversation.tags.1"]),
    ({"settings": []}, ["settings"]),
    ({"settings": {"allow_busy": 1}}, ["settings.allow_busy"]),
    ({"settings": {"timeout": True}}, ["settings.timeout"]),
    ({"settings": {"popup": {"buttons": {"claim": {"enabled": "no"}}}}},
     ["settings.popup.buttons.claim.enabled"]),
    ({"settings": {"popup": {"additional_timers": [{"label": "a", "since": "yesterday"}]}}},
     ["settings.popup.additional_timers.0.since"]),
    ({"settings": {"reject_policy": "most"}}, ["settings.reject_policy"]),
    ({"surprise": True}, ["surprise"]),
    ({"settings": {"popup": {"txt": "typo"}}}, ["settings.popup.txt"]),
])
def test_wrong_types_and_unknown_fields_exit_error_naming_the_field(client, flow, team,
                                                                    still_serves, patch,
                                                                    fields):
    step = {**request(team, flow.reply_to), **patch}
    result = client.call("hitl.request_assistance", **step)
    assert (result["state"], result["exit"]) == ("failed", "error")
    error = error_exit(flow, step["execution_id"])
    assert (error["code"], error["fields"]) == ("invalid_request", fields)
    row = execution(step["execution_id"])
    assert (row.state, row.exit) == ("failed", "error")
    assert [e["field"] for e in row.errors] == fields
    still_serves()


def test_a_bad_reply_to_is_recorded_without_an_exit_nowhere_to_send_it(client, flow, team,
                                                                       still_serves):
    step = request(team, {"task": "flow.step_exited", "queue": "no spaces allowed"})
    result = client.call("hitl.request_assistance", **step)
    assert (result["state"], result["exit"]) == ("failed", "error")
    row = execution(step["execution_id"])
    assert row.state == "failed" and "reply_to.queue" in [e["field"] for e in row.errors]
    assert outbox_rows(step["execution_id"], "exit") == []
    still_serves()


@pytest.mark.parametrize("execution_id", [None, 42, "", "has spaces", "x" * 129, ["exec-1"]])
def test_a_request_without_a_usable_execution_id_is_a_dead_letter_without_exit(
        client, flow, team, still_serves, execution_id):
    step = request(team, flow.reply_to)
    step["execution_id"] = execution_id
    if execution_id is None:
        del step["execution_id"]
    sent = client.send("hitl.request_assistance", **step)
    result = sent.get(timeout=20)
    assert (result["execution_id"], result["state"], result["exit"]) == (None, "failed", None)
    assert result["error"]["code"] == "invalid_request"
    (letter,) = dead_letters_for(sent.id)
    assert letter.task_name == "hitl.request_assistance"
    assert "execution_id" in letter.reason
    still_serves()


# --- positional arguments -------------------------------------------------------------------

def test_positional_arguments_only_are_a_dead_letter_and_no_exit(client, flow, team,
                                                                 still_serves):
    step = request(team, flow.reply_to)
    sent = client.send("hitl.request_assistance", step)
    result = sent.get(timeout=20)
    assert (result["execution_id"], result["state"], result["exit"]) == (None, "failed", None)
    (letter,) = dead_letters_for(sent.id)
    assert "positional" in letter.reason
    assert step["execution_id"] in letter.payload  # kept for an operator
    assert execution(step["execution_id"]) is None
    assert stays(lambda: flow.count_for(step["execution_id"]) == 0, seconds=0.5)
    still_serves()


def test_positional_arguments_with_keyword_arguments_exit_error(client, flow, team,
                                                                still_serves):
    step = request(team, flow.reply_to)
    sent = client.send("hitl.request_assistance", "stray", **step)
    assert sent.get(timeout=20)["exit"] == "error"
    error = error_exit(flow, step["execution_id"])
    assert (error["code"], error["fields"]) == ("invalid_request", ["(args)"])
    assert "positional" in error["message"]
    still_serves()


@pytest.mark.parametrize("task", ["hitl.claim", "hitl.reject", "hitl.close", "hitl.cancel",
                                  "hitl.upsert_agent", "hitl.set_agent_status",
                                  "hitl.remove_agent"])
def test_positional_arguments_to_the_other_tasks_are_refused_and_kept(client, task,
                                                                      still_serves):
    sent = client.send(task, "exec-1", "agent-1")
    result = sent.get(timeout=20)
    assert result["error"]["code"] == "invalid_request"
    assert dead_letters_for(sent.id)
    still_serves()


# --- megabytes ------------------------------------------------------------------------------

MEGABYTE = 1024 * 1024


@pytest.mark.parametrize("where", ["popup_text", "contact", "tag", "flow_id"])
def test_a_request_over_256_kib_exits_error_and_does_not_crash(client, flow, team, still_serves,
                                                               where):
    step = request(team, flow.reply_to)
    huge = "A" * MEGABYTE
    if where == "popup_text":
        step["settings"] = {"popup": {"text": huge}}
    elif where == "contact":
        step["conversation"]["contact"] = {"notes": huge}
    elif where == "tag":
        step["conversation"]["tags"] = [huge]
    else:
        step["flow_id"] = huge
    result = client.call("hitl.request_assistance", **step)
    assert (result["state"], result["exit"]) == ("failed", "error")
    error = error_exit(flow, step["execution_id"])
    assert error["code"] == "invalid_request"
    assert "256 KiB" in error["message"]
    still_serves()


def test_a_megabyte_execution_id_is_a_dead_letter(client, flow, team, still_serves):
    step = request(team, flow.reply_to, execution_id="e" * MEGABYTE)
    sent = client.send("hitl.request_assistance", **step)
    assert sent.get(timeout=20)["execution_id"] is None
    (letter,) = dead_letters_for(sent.id)
    assert len(letter.payload) <= 64 * 1024
    still_serves()


def test_just_under_the_limits_is_accepted(client, flow, agents, team, still_serves):
    agents()
    step = request(team, flow.reply_to, popup={"text": "x" * 20_000})
    step["conversation"]["contact"] = {"notes": "n" * 15_000}
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    too_long = request(team, flow.reply_to, popup={"text": "x" * 20_001})
    assert client.call("hitl.request_assistance", **too_long)["exit"] == "error"
    assert error_exit(flow, too_long["execution_id"])["fields"] == ["settings.popup.text"]
    still_serves()


# --- deep nesting ---------------------------------------------------------------------------

def _nested_contact_request(team: str, reply_to: dict, depth: int) -> tuple[str, str]:
    """A request whose contact nests ``depth`` lists, as raw JSON (too deep for json.dumps)."""
    step = request(team, reply_to)
    marker = '"__NESTED__"'
    step["conversation"]["contact"] = {"deep": "__NESTED__"}
    kwargs_json = json.dumps(step).replace(marker, "[" * depth + "]" * depth)
    return step["execution_id"], kwargs_json


def test_nesting_beyond_the_contracts_limit_exits_error_naming_the_field(client, flow, team,
                                                                        system, still_serves):
    # 150 levels: the worker reads it, the validation refuses it and says where
    execution_id, kwargs_json = _nested_contact_request(team, flow.reply_to, 150)
    task_id = publish_raw(os.environ["HITL_BROKER_URL"], "hitl.requests",
                          protocol2_body(kwargs_json), task="hitl.request_assistance")
    answer = system.app.AsyncResult(task_id).get(timeout=20)
    assert (answer["execution_id"], answer["exit"]) == (execution_id, "error")
    error = error_exit(flow, execution_id)
    (field,) = error["fields"]
    assert field.startswith("conversation.contact")
    assert "nested too deeply" in error["message"]
    still_serves()


@pytest.mark.parametrize("depth", [500, 50_000])
def test_deep_nesting_in_contact_is_kept_answered_and_does_not_crash_the_worker(
        flow, team, system, still_serves, depth):
    # 500 levels used to kill the worker: its main process pickles the decoded arguments for
    # the pool child, and pickle recurses. 50,000 is too deep for the JSON decoder itself.
    execution_id, kwargs_json = _nested_contact_request(team, flow.reply_to, depth)
    task_id = publish_raw(os.environ["HITL_BROKER_URL"], "hitl.requests",
                          protocol2_body(kwargs_json), task="hitl.request_assistance")
    (letter,) = eventually(lambda: dead_letters_for(task_id), timeout=10)
    assert letter.task_name == "hitl.request_assistance"
    assert ("levels" if depth == 500 else "decoded") in letter.reason
    # its top level is readable, so the flow engine still gets its error exit
    error = error_exit(flow, execution_id)
    assert error["fields"] == ["conversation.contact"]
    assert execution(execution_id).state == "failed"
    still_serves()
    assert system.procs["worker"].alive


def test_a_deeply_nested_claim_does_not_crash_the_events_worker(system, still_serves):
    deep = "[" * 600 + "]" * 600
    task_id = publish_raw(os.environ["HITL_BROKER_URL"], "hitl.events",
                          protocol2_body(f'{{"agent_id": "a", "execution_id": "e", "x": {deep}}}'),
                          task="hitl.claim")
    assert eventually(lambda: dead_letters_for(task_id), timeout=10)
    still_serves()


# --- hostile Markdown -----------------------------------------------------------------------

HOSTILE = "\n\n".join([
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(2)">',
    "[click](javascript:alert(3))",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCg0KTwvc2NyaXB0Pg==)",
    '<a href="javascript:alert(5)" onclick="alert(6)">x</a>',
    "[spaced](  JaVaScRiPt:alert(7))",
    "<svg/onload=alert(8)>",
    '<iframe src="https://evil.example"></iframe>',
    "**bold** and [fine](https://example.com)",
])


class _Elements(HTMLParser):
    """The elements and attributes a browser would build from the HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(name, value or "") for name, value in attrs]


def _hostile_popup_html(client, flow, agents, team, streams) -> str:
    alice = agents()
    step = request(team, flow.reply_to, popup={"text": HOSTILE})
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    (event,) = streams.events(alice)
    assert event["popup"]["text"] == HOSTILE  # the raw text is passed on as it was
    return event["popup"]["html"]


def test_hostile_markdown_reaches_agents_as_inert_html(client, flow, agents, team, streams,
                                                       still_serves):
    html = _hostile_popup_html(client, flow, agents, team, streams)
    parsed = _Elements()
    parsed.feed(html)
    assert not {"script", "img", "svg", "iframe"} & set(parsed.tags), html
    for name, value in parsed.attributes:
        assert not name.lower().startswith("on"), (name, html)
        assert not value.strip().lower().startswith(("javascript:", "data:")), (value, html)
    assert [v for n, v in parsed.attributes if n == "href"] == ["https://example.com"]
    assert "<strong>bold</strong>" in html
    still_serves()


def test_hostile_markup_is_removed_not_just_escaped(client, flow, agents, team, streams):
    # Markup (tags, attributes, links) is removed, not escaped (§6). "<svg/onload=…>" is not a
    # tag to a CommonMark parser, so it stays as visible, inert text; leave it out here.
    markup = HOSTILE.replace("<svg/onload=alert(8)>", "<svg onload=alert(8)></svg>")
    alice = agents()
    step = request(team, flow.reply_to, popup={"text": markup})
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    (event,) = streams.events(alice)
    html = event["popup"]["html"].lower()
    for forbidden in ("script", "onerror", "onclick", "onload", "javascript:", "data:"):
        assert forbidden not in html, (forbidden, html)
    assert ">click</a>" in html  # a refused link keeps its text, loses its URL


# --- absurd durations -----------------------------------------------------------------------

@pytest.mark.parametrize("value", ["999999d", "-1s", "0", "1 fortnight", "", "NaN", "1e400",
                                   "5 5", "PT", 0, -1, 1e300, "31d"])
def test_absurd_timeouts_exit_error_on_the_setting(client, flow, team, still_serves, value):
    step = request(team, flow.reply_to, timeout=value)
    assert client.call("hitl.request_assistance", **step)["exit"] == "error"
    error = error_exit(flow, step["execution_id"])
    assert error["fields"] == ["settings.timeout"]
    still_serves()


@pytest.mark.parametrize(("popup", "field"), [
    ({"timer": {"auto_action_timeout": "25h"}}, "settings.popup.timer.auto_action_timeout"),
    ({"timer": {"auto_action_timeout": "0s"}}, "settings.popup.timer.auto_action_timeout"),
    ({"display_for": "-5m"}, "settings.popup.display_for"),
    ({"display_for": "1 fortnight"}, "settings.popup.display_for"),
    ({"additional_timers": [{"label": "a", "since": -1}]},
     "settings.popup.additional_timers.0.since"),
])
def test_absurd_popup_durations_exit_error_on_the_setting(client, flow, team, popup, field):
    step = request(team, flow.reply_to, popup=popup)
    assert client.call("hitl.request_assistance", **step)["exit"] == "error"
    assert error_exit(flow, step["execution_id"])["fields"] == [field]


# --- agent events ---------------------------------------------------------------------------

def test_unknown_ids_in_a_claim(client, flow, agents, team, still_serves):
    alice = agents()
    step = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **step)
    assert client.call("hitl.claim", execution_id="exec-unknown", agent_id=alice)[
        "outcome"] == "not_found"
    stranger = client.call("hitl.claim", execution_id=step["execution_id"],
                           agent_id="agent-unknown")
    assert (stranger["outcome"], stranger["state"]) == ("not_eligible", "waiting")
    assert client.call("hitl.reject", execution_id=step["execution_id"],
                       agent_id="agent-unknown")["outcome"] == "not_eligible"
    assert execution(step["execution_id"]).state == "waiting"
    still_serves()


@pytest.mark.parametrize(("kwargs", "fields"), [
    ({}, ["agent_id"]),
    ({"agent_id": "a"}, ["(request)"]),
    ({"agent_id": "a", "execution_id": "e", "conversation_id": "c"}, ["(request)"]),
    ({"agent_id": 7, "execution_id": "e"}, ["agent_id"]),
    ({"agent_id": "a", "execution_id": "e", "event_id": "has space"}, ["event_id"]),
    ({"agent_id": "a", "execution_id": "e", "extra": 1}, ["extra"]),
    ({"agent_id": "a" * 1000, "execution_id": "e"}, ["agent_id"]),
])
def test_invalid_event_payloads_answer_invalid_with_the_error(client, still_serves, kwargs,
                                                              fields):
    answer = client.call("hitl.claim", **kwargs)
    assert answer["outcome"] == "invalid"
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["fields"] == fields
    still_serves()


def test_an_invalid_cancel_answers_invalid(client, still_serves):
    answer = client.call("hitl.cancel", execution_id=["x"])
    assert (answer["outcome"], answer["error"]["fields"]) == ("invalid", ["execution_id"])
    still_serves()


# --- messages that are not even JSON --------------------------------------------------------

@pytest.mark.parametrize(("body", "content_type", "task"), [
    (b"\x00\xff not json {{{", "application/json", "hitl.request_assistance"),
    ("[[], {\"execution_id\": ", "application/json", "hitl.request_assistance"),
    ('{"not": "a protocol-2 body"}', "application/json", "hitl.request_assistance"),
    ('[[], ["kwargs", "as", "a", "list"], {}]', "application/json", "hitl.request_assistance"),
    (pickle.dumps([[], {"execution_id": "exec-pickled"}, {}]),
     "application/x-python-serialize", "hitl.request_assistance"),
    ("hello", "text/plain", "hitl.claim"),
    ('[[], {}, {}]', "application/json", None),
    ('[[], {}, {}]', "application/json", "hitl.no_such_task"),
])
def test_undecodable_messages_do_not_kill_the_worker(system, still_serves, body, content_type,
                                                     task):
    task_id = publish_raw(os.environ["HITL_BROKER_URL"],
                          "hitl.events" if task == "hitl.claim" else "hitl.requests", body,
                          task=task, content_type=content_type, task_id=f"raw-{uuid.uuid4()}")
    # Whatever the worker makes of it, the next valid request is served
    still_serves()
    if task in ("hitl.request_assistance", "hitl.claim"):
        # A message for one of our tasks is kept for an operator, with why
        (letter,) = eventually(lambda: dead_letters_for(task_id), timeout=5)
        assert letter.task_name == task and letter.reason
    assert execution("exec-pickled") is None  # pickle is never deserialized


def test_a_deeply_nested_header_is_a_dead_letter_and_does_not_kill_the_worker(still_serves):
    deep: list = []
    for _ in range(600):
        deep = [deep]
    task_id = publish_raw(os.environ["HITL_BROKER_URL"], "hitl.events",
                          protocol2_body('{"agent_id": "a", "execution_id": "e"}'),
                          task="hitl.claim", extra_headers={"x-deep": deep})
    (letter,) = eventually(lambda: dead_letters_for(task_id), timeout=5)
    assert "levels" in letter.reason
    still_serves()

"""``validate_request`` against docs/contract.md §1: defaults, ranges, strictness, and messages that
name each bad field and say what is accepted. Never an exception, whatever comes in."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from hitl_workers.domain.request import (
    MAX_JSON_DEPTH,
    AdditionalTimer,
    AssistanceRequest,
    Buttons,
    PopupSettings,
    ReplyTo,
    StepSettings,
)
from hitl_workers.domain.validation import (
    FieldError,
    Invalid,
    salvage_execution_id,
    salvage_reply_to,
    validate_request,
)

KIB = 1024


def example() -> dict[str, Any]:
    """A request that sets every field (the wire contract's §1 example; docs/contract.md §1)."""
    return {
        "execution_id": "flow-42:step-7:run-1",
        "conversation_id": "conv-9",
        "flow_id": "flow-42",
        "step_id": "step-7",
        "conversation": {
            "tags": ["channel:sms", "team:billing"],
            "contact": {"id": "contact-1", "name": "Ada Lovelace", "phone": "+15550100"},
        },
        "settings": {
            "allow_busy": False,
            "allow_offline": False,
            "specific_agent_id": None,
            "browser_notification": True,
            "popup": {
                "text": "**VIP** customer asks about a *refund*",
                "buttons": {
                    "claim": {"enabled": True, "label": "Claim"},
                    "close": {"enabled": True, "label": "Close"},
                    "reject": {"enabled": True, "label": "Reject"},
                },
                "display_for": "30s",
                "timer": {"auto_action_timeout": "10s"},
                "additional_timers": [{"label": "In queue", "since": 1764000000}],
            },
            "timeout": "5m",
            "reject_policy": "any",
        },
        "reply_to": {"task": "flow.step_exited", "queue": "flow"},
    }


def minimal(**fields: Any) -> dict[str, Any]:
    return {"execution_id": "exec-1", "conversation_id": "conv-1", **fields}


def at(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` (a minimal request) with ``value`` set at the dotted ``path``."""
    request = copy.deepcopy(base) if base is not None else minimal()
    *parents, last = path.split(".")
    node: Any = request
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return request


def valid(kwargs: dict[str, Any]) -> AssistanceRequest:
    result = validate_request(kwargs)
    assert isinstance(result, AssistanceRequest), result
    return result


def invalid(kwargs: Any) -> Invalid:
    result = validate_request(kwargs)
    assert isinstance(result, Invalid), result
    assert result.errors, "an Invalid names at least one problem"
    return result


def only_error(kwargs: Any) -> FieldError:
    result = invalid(kwargs)
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


def error_at(path: str, value: Any, base: dict[str, Any] | None = None) -> str:
    """The one message for ``value`` at ``path``, which must name that path."""
    error = only_error(at(path, value, base))
    assert error.field == path
    return error.message


# --- the example and the documented defaults ------------------------------------------------


def test_the_contract_example_validates_as_written() -> None:
    request = valid(example())
    assert (request.execution_id, request.conversation_id) == ("flow-42:step-7:run-1", "conv-9")
    assert (request.flow_id, request.step_id) == ("flow-42", "step-7")
    assert request.conversation is not None
    assert request.conversation.tags == ["channel:sms", "team:billing"]
    assert request.conversation.contact == {"id": "contact-1", "name": "Ada Lovelace",
                                            "phone": "+15550100"}
    settings = request.settings
    assert (settings.allow_busy, settings.allow_offline, settings.specific_agent_id,
            settings.browser_notification) == (False, False, None, True)
    assert (settings.timeout, settings.reject_policy) == (300.0, "any")
    popup = settings.popup
    assert popup is not None
    assert popup.text == "**VIP** customer asks about a *refund*"
    assert popup.buttons.enabled() == [("claim", "Claim"), ("close", "Close"),
                                       ("reject", "Reject")]
    assert popup.display_for == 30.0
    assert popup.timer is not None and popup.timer.auto_action_timeout == 10.0
    assert popup.additional_timers == [AdditionalTimer(label="In queue", since=1764000000)]
    assert popup.additional_timers[0].since_ms == 1_764_000_000_000
    assert request.reply_to == ReplyTo(task="flow.step_exited", queue="flow")


def test_only_the_two_ids_are_required_and_everything_else_has_its_documented_default() -> None:
    request = valid(minimal())
    assert (request.flow_id, request.step_id, request.conversation, request.reply_to) == (
        None, None, None, None)
    assert request.settings == StepSettings(
        allow_busy=False, allow_offline=False, specific_agent_id=None,
        browser_notification=False, popup=None, timeout=300.0, reject_policy="any")


def test_a_popup_given_empty_gets_every_popup_default() -> None:
    popup = valid(at("settings.popup", {})).settings.popup
    assert popup == PopupSettings(text="", buttons=Buttons(), display_for=None, timer=None,
                                  additional_timers=[])
    assert popup.buttons.enabled() == [("claim", "Claim"), ("close", "Close"),
                                       ("reject", "Reject")]


def test_a_timer_given_without_auto_action_timeout_counts_down_10_seconds() -> None:
    popup = valid(at("settings.popup", {"timer": {}})).settings.popup
    assert popup is not None and popup.timer is not None
    assert popup.timer.auto_action_timeout == 10.0


def test_explicit_nulls_mean_the_defaults_where_the_contract_allows_null() -> None:
    request = valid(minimal(flow_id=None, step_id=None, conversation=None, reply_to=None,
                            settings={"specific_agent_id": None, "popup": {
                                "display_for": None, "timer": None}}))
    assert request.settings.popup is not None
    assert (request.settings.popup.display_for, request.settings.popup.timer) == (None, None)


def test_a_button_given_in_part_keeps_the_rest_of_its_defaults() -> None:
    popup = valid(at("settings.popup.buttons", {
        "claim": {"label": "Take it"}, "close": {"enabled": False}})).settings.popup
    assert popup is not None
    assert popup.buttons.close.label == "Close"
    # Only enabled buttons are listed, in the contract's order claim, close, reject
    assert popup.buttons.enabled() == [("claim", "Take it"), ("reject", "Reject")]


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("5m", 300), ("1h 30m", 5400), ("1m30s", 90), ("PT1M30S", 90), (45, 45), (2.5, 2.5),
     ("2 hours 30 minutes", 9000), ("30d", 30 * 86400), ("720h", 30 * 86400)],
)
def test_timeout_takes_time_strings_and_numbers_of_seconds(given: Any, seconds: float) -> None:
    assert valid(at("settings.timeout", given)).settings.timeout == seconds


def test_a_conversation_given_without_tags_or_contact() -> None:
    conversation = valid(minimal(conversation={})).conversation
    assert conversation is not None
    assert (conversation.tags, conversation.contact) == ([], None)


# --- ranges ---------------------------------------------------------------------------------

COUNTDOWN = "settings.popup.timer.auto_action_timeout"
DISPLAY = "settings.popup.display_for"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("settings.timeout", "30d"),
        ("settings.timeout", "4w 2d"),
        ("settings.timeout", 30 * 86400),
        ("settings.timeout", "1ms"),
        (COUNTDOWN, "24h"),
        (COUNTDOWN, "1d"),
        (COUNTDOWN, 86400),
        (COUNTDOWN, "0.5s"),
        (DISPLAY, "24h"),
        (DISPLAY, "PT24H"),
        (DISPLAY, "1ms"),
    ],
)
def test_durations_up_to_their_maximum_are_accepted(path: str, value: Any) -> None:
    valid(at(path, value))


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        ("settings.timeout", "30d 1s", "30 days"),
        ("settings.timeout", "31d", "30 days"),
        ("settings.timeout", 30 * 86400 + 1, "30 days"),
        ("settings.timeout", "5w", "30 days"),
        (COUNTDOWN, "24h 1s", "1 day"),
        (COUNTDOWN, "25h", "1 day"),
        (DISPLAY, 86401, "1 day"),
        (DISPLAY, "P2D", "1 day"),
    ],
)
def test_durations_over_their_maximum_are_refused_naming_the_maximum(
    path: str, value: Any, says: str
) -> None:
    message = error_at(path, value)
    assert "longer than the maximum" in message and says in message


@pytest.mark.parametrize("path", ["settings.timeout", COUNTDOWN, DISPLAY])
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "greater than zero"),
        (0, "greater than zero"),
        ("0s", "greater than zero"),
        ("PT0S", "greater than zero"),
        ("-5m", "negative"),
        (-1, "negative"),
        ("", "empty"),
        ("5 parsecs", "unknown unit"),
        ("soon", "expected a number"),
        ("NaN", "not a finite number"),
        (True, "time string"),
        ([], "time string"),
        ({"seconds": 5}, "time string"),
    ],
)
def test_durations_must_be_positive_time_strings(path: str, value: Any, says: str) -> None:
    message = error_at(path, value)
    assert says in message
    # ... and each says what is accepted
    assert "1h 30m" in message


@pytest.mark.parametrize("path", ["settings.timeout", COUNTDOWN])
def test_durations_that_have_a_default_may_not_be_null(path: str) -> None:
    assert "time string" in error_at(path, None)


@pytest.mark.parametrize("since", [0, 0.0, 1764000000, 1764000000123, 1e11, 1.5])
def test_since_is_any_non_negative_number(since: float) -> None:
    valid(at("settings.popup.additional_timers", [{"label": "x", "since": since}]))


@pytest.mark.parametrize(
    ("since", "says"),
    [
        (-1, "greater than or equal to 0"),
        (-0.001, "greater than or equal to 0"),
        ("1764000000", "must be a number"),
        (True, "not a boolean"),
        (None, "must be a number"),
        (math.inf, "finite"),
        (math.nan, "finite"),
    ],
)
def test_since_must_be_a_non_negative_number(since: Any, says: str) -> None:
    path = "settings.popup.additional_timers.0.since"
    message = error_at(path, since, at("settings.popup.additional_timers",
                                       [{"label": "x", "since": 0}]))
    assert says in message


@pytest.mark.parametrize(
    ("since", "since_ms"),
    [
        pytest.param(1764000000, 1_764_000_000_000, id="seconds"),
        pytest.param(1764000000123, 1_764_000_000_123, id="milliseconds"),
        pytest.param(10**11, 10**14, id="10^11 is still seconds"),
        pytest.param(10**11 + 1, 10**11 + 1, id="above 10^11 is milliseconds"),
        pytest.param(1764000000.123, 1_764_000_000_123, id="fractional seconds"),
        pytest.param(1.001, 1001, id="round to ms, not truncate (1.001 * 1000 < 1001)"),
        pytest.param(1.005, 1005, id="1.005 * 1000 is 1004.9999..."),
        pytest.param(1764000000.5, 1_764_000_000_500, id="half a second"),
        pytest.param(0, 0, id="the epoch"),
    ],
)
def test_since_ms_reads_seconds_or_milliseconds(since: float, since_ms: int) -> None:
    assert AdditionalTimer(label="x", since=since).since_ms == since_ms


TEXT = "settings.popup.text"
CLAIM_LABEL = "settings.popup.buttons.claim.label"
TIMER_LABEL = "settings.popup.additional_timers.0.label"
ONE_TIMER = {"settings": {"popup": {"additional_timers": [{"label": "x", "since": 0}]}}}


@pytest.mark.parametrize(
    ("path", "limit", "base"),
    [
        (TEXT, 20_000, None),
        (CLAIM_LABEL, 40, None),
        ("settings.popup.buttons.close.label", 40, None),
        ("settings.popup.buttons.reject.label", 40, None),
        (TIMER_LABEL, 60, ONE_TIMER),
        ("conversation.tags.0", 128, {"conversation": {"tags": ["t"]}}),
    ],
)
def test_text_sizes_are_counted_in_characters_up_to_their_limit(
    path: str, limit: int, base: dict[str, Any] | None
) -> None:
    base = minimal(**(base or {}))
    valid(at(path, "x" * limit, base))
    valid(at(path, "é" * limit, base))  # characters, not bytes
    message = error_at(path, "x" * (limit + 1), base)
    assert message == f"String should have at most {limit} characters"


@pytest.mark.parametrize("path", [CLAIM_LABEL, TIMER_LABEL])
def test_labels_may_not_be_empty(path: str) -> None:
    assert "at least 1 character" in error_at(path, "", minimal(**ONE_TIMER))


def test_popup_text_may_be_empty() -> None:
    valid(at(TEXT, ""))


def test_at_most_two_additional_timers() -> None:
    timers = [{"label": f"t{i}", "since": i} for i in range(3)]
    valid(at("settings.popup.additional_timers", timers[:2]))
    assert error_at("settings.popup.additional_timers", timers) == (
        "at most 2 additional timers are accepted, got 3")


def test_at_most_fifty_tags() -> None:
    tags = [f"tag-{i}" for i in range(51)]
    valid(at("conversation.tags", tags[:50]))
    assert error_at("conversation.tags", tags) == "at most 50 tags are accepted, got 51"


def contact_of(size: int, char: str = "x") -> dict[str, str]:
    """A contact that is exactly ``size`` bytes as compact JSON."""
    width = len(char.encode())
    assert (size - len('{"n":""}')) % width == 0
    contact = {"n": char * ((size - len('{"n":""}')) // width)}
    assert len(json.dumps(contact, separators=(",", ":"), ensure_ascii=False).encode()) == size
    return contact


@pytest.mark.parametrize("char", ["x", "é"])
def test_contact_up_to_16_kib_as_json(char: str) -> None:
    valid(at("conversation.contact", contact_of(16 * KIB, char)))
    message = error_at("conversation.contact", contact_of(16 * KIB + 2, char))
    assert message == f"contact is {16 * KIB + 2} bytes as JSON; at most 16 KiB (16384 bytes) " \
        "is accepted"


def padded_to(size: int) -> dict[str, Any]:
    """A request that is exactly ``size`` bytes as compact JSON (padded with an unknown field)."""
    request = minimal(pad="")
    request["pad"] = "x" * (size - len(json.dumps(request, separators=(",", ":"))))
    assert len(json.dumps(request, separators=(",", ":")).encode()) == size
    return request


def test_a_request_of_256_kib_is_measured_and_parsed() -> None:
    # Exactly at the limit: not refused for its size (the padding is an unknown field)
    assert only_error(padded_to(256 * KIB)).field == "pad"


def test_a_request_over_256_kib_is_refused_before_it_is_parsed() -> None:
    # Over the limit: the size is the only error (the unknown field is never looked at)
    assert only_error(padded_to(256 * KIB + 1)) == FieldError(
        "(request)", f"the request is {256 * KIB + 1} bytes; at most 256 KiB (262144 bytes) as "
                     "compact JSON is accepted")


@pytest.mark.parametrize("where", [TEXT, "conversation.contact.notes", "conversation.tags.0",
                                   "flow_id"])
def test_a_megabyte_anywhere_is_the_size_error(where: str) -> None:
    error = only_error(at(where, "A" * (1024 * KIB), minimal(conversation={"tags": ["t"]})))
    assert error.field == "(request)" and "256 KiB" in error.message


# --- unknown fields -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "accepted"),
    [
        ("surprise", "execution_id, conversation_id, flow_id, step_id, conversation, settings, "
                     "reply_to"),
        ("settings.timout", "allow_busy, allow_offline, specific_agent_id, "
                            "browser_notification, popup, timeout, reject_policy, priority, offer"),
        ("settings.popup.txt", "text, buttons, display_for, timer, additional_timers"),
        ("settings.popup.buttons.accept", "claim, close, reject"),
        ("settings.popup.buttons.claim.colour", "enabled, label"),
        ("settings.popup.timer.auto_action", "auto_action_timeout"),
        ("settings.popup.additional_timers.0.lable", "label, since"),
        ("conversation.tag", "tags, contact"),
        ("reply_to.exchange", "task, queue, webhook"),
    ],
)
def test_an_unknown_field_anywhere_is_refused_listing_what_is_accepted(path: str,
                                                                        accepted: str) -> None:
    base = minimal(**ONE_TIMER, reply_to={"task": "t", "queue": "q"})
    # Not merely ignored: a misspelt setting must never fall back to its default
    message = error_at(path, "x", base)
    assert message == ("unknown field (a misspelt setting is refused, not ignored); "
                       f"accepted here: {accepted}")


def test_a_misspelt_setting_does_not_fall_back_to_its_default() -> None:
    result = invalid(at("settings.reject_polcy", "all"))
    assert result.fields == ["settings.reject_polcy"]


def test_contact_is_free_form_json_with_any_keys() -> None:
    contact = {"id": "c-1", "Any Key!": {"nested": [1, 2.5, None, True, {"deeper": "ok"}]},
               "": "empty key", "unicode ✓": "ünïcödé", "list": []}
    conversation = valid(at("conversation.contact", contact)).conversation
    assert conversation is not None and conversation.contact == contact


def test_several_errors_are_all_named_in_one_answer() -> None:
    kwargs = minimal(surprise=1, settings={"allow_busy": "yes", "timeout": "forever"})
    result = invalid(kwargs)
    # In the schema's order, unknown fields after the known ones of their object
    assert result.fields == ["settings.allow_busy", "settings.timeout", "surprise"]
    assert result.message.startswith("settings.allow_busy: must be true or false")
    for field in result.fields:
        assert f"{field}: " in result.message


# --- wrong types (strict: no coercion) ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("settings.allow_busy", "true", "must be true or false"),
        ("settings.allow_offline", 1, "must be true or false"),
        ("settings.browser_notification", "false", "must be true or false"),
        ("settings.popup.buttons.claim.enabled", "true", "must be true or false"),
        ("settings.popup.buttons.reject.enabled", 0, "must be true or false"),
        ("settings.allow_busy", None, "must be true or false"),
        (TEXT, True, "must be a string"),
        (TEXT, 42, "must be a string"),
        (CLAIM_LABEL, False, "must be a string"),
        ("execution_id", True, "must be a string"),
        ("conversation_id", 9, "must be a string"),
        ("settings.specific_agent_id", True, "must be a string"),
        ("settings.specific_agent_id", 7, "must be a string"),
        ("settings.reject_policy", "ANY", "Input should be 'any' or 'all'"),
        ("settings.reject_policy", "most", "Input should be 'any' or 'all'"),
        ("settings.reject_policy", None, "Input should be 'any' or 'all'"),
        ("conversation.tags", "vip", "must be a list"),
        ("conversation.contact", ["a"], "must be an object"),
        ("conversation.contact", "Ada", "must be an object"),
        ("settings.popup.additional_timers", {"label": "x", "since": 0}, "must be a list"),
        ("settings", [], "must be an object with the fields allow_busy, allow_offline"),
        ("settings.popup", "popup", "must be an object with the fields text, buttons"),
        ("settings.popup.timer", "10s", "must be an object with the fields auto_action_timeout"),
        ("settings.popup.buttons.claim", None, "must be an object with the fields enabled, label"),
        ("conversation", "channel:sms", "must be an object with the fields tags, contact"),
        ("reply_to", "flow", "must be an object with the fields task, queue"),
    ],
)
def test_wrong_types_are_refused_not_coerced(path: str, value: Any, message: str) -> None:
    assert message in error_at(path, value)


def test_a_string_where_a_bool_is_expected_says_strings_are_refused() -> None:
    assert error_at("settings.allow_busy", "true") == (
        'must be true or false (a JSON boolean; a string such as "true" is refused)')


@pytest.mark.parametrize("tags", [[1], [None], [["a"]], [True]])
def test_tags_are_strings(tags: list[Any]) -> None:
    assert error_at("conversation.tags.0", tags[0], minimal(conversation={"tags": ["t"]})) == \
        "must be a string"


def test_an_empty_tag_is_refused() -> None:
    assert "at least 1 character" in error_at("conversation.tags.0", "",
                                              minimal(conversation={"tags": ["t"]}))


def test_missing_ids_are_required() -> None:
    result = invalid({})
    assert result.errors == (FieldError("execution_id", "required"),
                             FieldError("conversation_id", "required"))
    assert result.message == "execution_id: required; conversation_id: required"


@pytest.mark.parametrize("kwargs", [None, [], "request", 42])
def test_a_request_that_is_not_an_object(kwargs: Any) -> None:
    error = only_error(kwargs)
    assert error.field == "(request)"
    assert error.message.startswith("must be an object with the fields execution_id")


# --- ids ------------------------------------------------------------------------------------

ID_FIELDS = ["execution_id", "conversation_id", "flow_id", "step_id",
             "settings.specific_agent_id"]


@pytest.mark.parametrize("path", ID_FIELDS)
@pytest.mark.parametrize("value", ["flow-42:step-7:run-1", "a", "a" * 128, "user@host.x_1",
                                   "A.b_c:d@e-F-0123456789"])
def test_ids_of_1_to_128_allowed_characters(path: str, value: str) -> None:
    valid(at(path, value))


@pytest.mark.parametrize("path", ID_FIELDS)
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "at least 1 character"),
        ("a" * 129, "at most 128 characters"),
        ("has space", "A-Z a-z 0-9 . _ : @ -"),
        ("a/b", "A-Z a-z 0-9 . _ : @ -"),
        ("café", "A-Z a-z 0-9 . _ : @ -"),
        ("abc\n", "A-Z a-z 0-9 . _ : @ -"),
        ("\nabc", "A-Z a-z 0-9 . _ : @ -"),
        ("a+b", "A-Z a-z 0-9 . _ : @ -"),
        ("٣", "A-Z a-z 0-9 . _ : @ -"),
    ],
)
def test_ids_outside_the_pattern_are_refused_saying_what_is_allowed(
    path: str, value: str, says: str
) -> None:
    assert says in error_at(path, value)


@pytest.mark.parametrize("path", ["reply_to.task", "reply_to.queue"])
def test_reply_to_names_follow_the_id_characters(path: str) -> None:
    base = minimal(reply_to={"task": "flow.step_exited", "queue": "flow"})
    assert "A-Z a-z 0-9 . _ : @ -" in error_at(path, "no spaces allowed", base)
    assert only_error(minimal(reply_to={"task": "flow.step_exited"})) == FieldError(
        "reply_to.queue", "required (or give webhook instead of task and queue)")


# --- fields: dotted paths, list indices as numbers ------------------------------------------


def test_fields_are_dotted_paths_with_list_indices_as_numbers() -> None:
    # Given three timers, the third with a label too long
    timers = [{"label": "a", "since": 0}, {"label": "b", "since": 0},
              {"label": "x" * 61, "since": 0}]
    result = invalid(at("settings.popup.additional_timers", timers))
    # Then both problems are named: the count, and the label at index 2
    assert result.fields == ["settings.popup.additional_timers",
                             "settings.popup.additional_timers.2.label"]
    assert result.message == (
        "settings.popup.additional_timers: at most 2 additional timers are accepted, got 3; "
        "settings.popup.additional_timers.2.label: String should have at most 60 characters")


def test_every_bad_list_item_is_named_by_its_index() -> None:
    result = invalid(at("conversation.tags", ["ok", 1, "ok", None]))
    assert result.fields == ["conversation.tags.1", "conversation.tags.3"]


def test_too_many_tags_and_a_bad_tag_are_both_named() -> None:
    result = invalid(at("conversation.tags", ["t"] * 50 + [""]))
    assert result.fields == ["conversation.tags", "conversation.tags.50"]


def test_fields_are_listed_once_each() -> None:
    result = Invalid((FieldError("a", "one"), FieldError("b", "two"), FieldError("a", "three")))
    assert result.fields == ["a", "b"]
    assert result.message == "a: one; b: two; a: three"


# --- not plain JSON: deep, non-finite, unstorable -------------------------------------------


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_a_100000_level_nested_list_in_contact_is_invalid_not_an_exception() -> None:
    error = only_error(at("conversation.contact", {"deep": nested(100_000)}))
    assert error.field == "conversation.contact"
    # The place is shown shortened: the first eight parts of a 100,002-part path
    assert error.message.startswith("at conversation.contact.deep.0.0.0.0.0...: ")
    assert f"nested at most {MAX_JSON_DEPTH} levels" in error.message


def test_contact_may_nest_up_to_the_depth_limit() -> None:
    # request > conversation > contact > "deep": 3 levels before the list itself
    valid(at("conversation.contact", {"deep": nested(MAX_JSON_DEPTH - 3)}))
    assert only_error(at("conversation.contact", {"deep": nested(MAX_JSON_DEPTH - 2)})
                      ).field == "conversation.contact"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (TEXT, TEXT),
        ("surprise", "surprise"),
        ("settings.popup.buttons.claim", "settings.popup.buttons.claim"),
        ("conversation.tags", "conversation.tags.0"),
    ],
)
def test_deep_nesting_anywhere_names_the_field_holding_it(path: str, field: str) -> None:
    error = only_error(at(path, nested(100_000)))
    assert error.field == field
    assert "nested too deeply" in error.message


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (math.nan, "nan is not JSON; only finite numbers are accepted"),
        (math.inf, "inf is not JSON; only finite numbers are accepted"),
        (-math.inf, "-inf is not JSON; only finite numbers are accepted"),
        ("nul\x00byte", "text contains the NUL character (U+0000), which cannot be stored"),
        ("\ud800", "text is not valid Unicode"),
        (10**5000, "integer is too large"),
        ({1, 2}, "a set is not JSON"),
        (b"bytes", "a bytes is not JSON"),
    ],
    ids=["nan", "inf", "-inf", "nul", "lone surrogate", "5000 digits", "set", "bytes"],
)
def test_values_that_are_not_plain_storable_json_are_refused_in_contact(value: Any,
                                                                        says: str) -> None:
    error = only_error(at("conversation.contact", {"name": "Ada", "bad": [value]}))
    assert error.field == "conversation.contact"
    assert error.message.startswith(f"at conversation.contact.bad.0: {says}")


def test_a_nul_in_a_setting_names_the_setting() -> None:
    assert "NUL" in error_at(TEXT, "a\x00b")
    assert "NUL" in error_at("conversation.tags.0", "a\x00", minimal(conversation={"tags": ["t"]}))


def test_a_bad_key_is_named_with_its_characters_escaped() -> None:
    error = only_error(at("conversation.contact", {"bad\x00key": 1}))
    assert error == FieldError(
        "conversation.contact",
        "at conversation.contact.bad\\u0000key: this key contains the NUL character (U+0000), "
        "which cannot be stored; remove it")
    # An unknown field's name is escaped too: field names are stored and sent back as text
    error = only_error(at("settings", {"new\nline": 1}))
    assert error.field == "settings.new\\u000aline"
    assert only_error(at("settings", {"x" * 1000: 1})).field == "settings." + "x" * 61 + "..."


def test_non_string_keys_are_refused() -> None:
    error = only_error(at("conversation.contact", {"a": {1: "one"}}))
    assert error == FieldError("conversation.contact", "at conversation.contact.a: key 1 is not a "
                                                       "string; object keys must be strings")


# --- never an exception ---------------------------------------------------------------------

ODD_VALUES: list[Any] = [None, True, False, 0, -1, 1e308, math.nan, "", "x" * 300, "\x00",
                         "\ud800", [], {}, [None], {"": None}, nested(2_000), {1: 2}, object()]


def leaf_paths(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in leaf_paths(v, f"{prefix}{k}.")]
    if isinstance(value, list) and value:
        return [p for i, v in enumerate(value) for p in leaf_paths(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")]


@pytest.mark.parametrize("path", [*leaf_paths(example()), "settings.popup", "conversation",
                                  "settings", "reply_to"])
def test_any_odd_value_anywhere_validates_or_is_invalid_never_raises(path: str) -> None:
    for value in ODD_VALUES:
        result = validate_request(at(path, value, example()))
        assert isinstance(result, AssistanceRequest | Invalid)
        if isinstance(result, Invalid):
            for error in result.errors:
                assert error.field.isprintable() and error.message
                json.dumps({"field": error.field, "message": error.message}).encode()
                assert "\x00" not in error.message and "\x00" not in error.field


# --- salvaging what can be answered ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "execution_id"),
    [
        (minimal(settings={"timeout": "forever"}, surprise=1), "exec-1"),
        ({"execution_id": "exec-1"}, "exec-1"),
        ({"execution_id": "exec-1", "conversation": nested(100_000)}, "exec-1"),
        ({}, None),
        ({"execution_id": None}, None),
        ({"execution_id": 42}, None),
        ({"execution_id": ["exec-1"]}, None),
        ({"execution_id": ""}, None),
        ({"execution_id": "has spaces"}, None),
        ({"execution_id": "x" * 129}, None),
    ],
)
def test_salvage_execution_id(kwargs: dict[str, Any], execution_id: str | None) -> None:
    assert salvage_execution_id(kwargs) == execution_id


@pytest.mark.parametrize(
    ("kwargs", "reply"),
    [
        (minimal(), None),
        (minimal(reply_to=None), None),
        (minimal(reply_to={"task": "flow.step_exited", "queue": "flow"}, surprise=1),
         ReplyTo(task="flow.step_exited", queue="flow")),
        (minimal(reply_to={"task": "flow.step_exited"}), False),
        (minimal(reply_to={"task": "t", "queue": "q", "exchange": "x"}), False),
        (minimal(reply_to={"task": "t", "queue": "no spaces allowed"}), False),
        (minimal(reply_to={"task": 1, "queue": "q"}), False),
        (minimal(reply_to="flow"), False),
    ],
)
def test_salvage_reply_to(kwargs: dict[str, Any], reply: ReplyTo | bool | None) -> None:
    # None: absent, use the default target; False: given but unusable, answer nowhere
    assert salvage_reply_to(kwargs) == reply


@pytest.mark.parametrize("priority", [-1, 10, "5", True, 2.5])
def test_a_priority_outside_0_to_9_or_not_an_integer_is_refused(priority: object) -> None:
    checked = validate_request({"execution_id": "e-1", "conversation_id": "c-1",
                                "settings": {"priority": priority}})
    assert isinstance(checked, Invalid)
    assert checked.fields == ["settings.priority"]


@pytest.mark.parametrize("priority", [0, 9, None])
def test_a_priority_0_to_9_is_accepted_and_absent_is_none(priority: object) -> None:
    settings = {} if priority is None else {"priority": priority}
    checked = validate_request({"execution_id": "e-1", "conversation_id": "c-1",
                                "settings": settings})
    assert not isinstance(checked, Invalid)
    assert checked.settings.priority == priority


# --- settings.offer (§9 "Offer strategy") -------------------------------------------------


@pytest.mark.parametrize(("offer", "field"), [
    ({"strategy": "round_robin"}, "settings.offer.strategy"),
    ({"offer_timeout": "0.5s"}, "settings.offer.offer_timeout"),
    ({"offer_timeout": "25h"}, "settings.offer.offer_timeout"),
    ({"offer_timeout": True}, "settings.offer.offer_timeout"),
    ({"order": "random"}, "settings.offer.order"),
    ({"on_missed": "away"}, "settings.offer.on_missed"),
    ({"strategy": "sequential", "timeout": "5s"}, "settings.offer.timeout"),
    ("sequential", "settings.offer"),
])
def test_a_bad_offer_setting_is_refused_naming_the_field(offer: object, field: str) -> None:
    checked = validate_request({"execution_id": "e-1", "conversation_id": "c-1",
                                "settings": {"offer": offer}})
    assert isinstance(checked, Invalid)
    assert checked.fields == [field]


def test_sequential_with_a_specific_agent_is_refused_naming_the_strategy() -> None:
    checked = validate_request({"execution_id": "e-1", "conversation_id": "c-1", "settings": {
        "offer": {"strategy": "sequential"}, "specific_agent_id": "alice"}})
    assert isinstance(checked, Invalid)
    assert checked.fields == ["settings.offer.strategy"]


def test_offer_defaults_and_bounds() -> None:
    checked = validate_request({"execution_id": "e-1", "conversation_id": "c-1",
                                "settings": {"offer": {}}})
    assert not isinstance(checked, Invalid) and checked.settings.offer is not None
    assert checked.settings.offer.model_dump() == {
        "strategy": "broadcast", "offer_timeout": 30.0, "order": "longest_idle",
        "on_missed": "keep"}
    for timeout, seconds in (("1s", 1.0), ("24h", 86400.0), ("2m", 120.0)):
        checked = validate_request({"execution_id": "e-1", "conversation_id": "c-1",
                                    "settings": {"offer": {"strategy": "sequential",
                                                           "offer_timeout": timeout}}})
        assert not isinstance(checked, Invalid) and checked.settings.offer is not None
        assert checked.settings.offer.offer_timeout == seconds

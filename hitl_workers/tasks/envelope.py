"""Redis list entries that are not a readable envelope are refused, not lost.

On Redis a message is a JSON object pushed onto the queue's list (docs/contract.md, "Writing a
message without Celery"). Kombu pops the entry, then builds its ``Message`` from it: an entry
without ``properties.delivery_tag`` (or without ``properties``, or not an object at all) raises
``KeyError``/``TypeError`` there, inside the consumer's event loop. The worker treats that as a
lost broker connection and reconnects; the entry, already popped and not yet tracked as
unacked, is gone — no dead letter, no result, no exit.

:func:`guard_channel` replaces the channel's message factory: an entry it cannot read becomes a
stand-in message with a delivery tag of our own and the problem in ``envelope_problem``; the
consumer's guard then refuses it like any bad message (dead letter with why, acked). The
stand-in's body is the whole entry as it was pushed, so the dead letter shows an operator what
arrived.

Only kombu's virtual transports (Redis) build messages from a client-written envelope; on
RabbitMQ the broker itself fills in the delivery tag, so channels there are left alone.
"""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

from kombu.transport import virtual

from hitl_workers.tasks.guard import keep_raw_dead_letter

ENVELOPE_HELP = "see docs/contract.md, 'Writing a message without Celery: the Redis envelope'"


def envelope_problem(entry: Any) -> str | None:
    """Why kombu could not build a message from the Redis list ``entry``, or None."""
    if not isinstance(entry, dict):
        return (f"the Redis envelope is not a JSON object with body, content-type, headers and "
                f"properties ({ENVELOPE_HELP})")
    properties = entry.get("properties")
    if not isinstance(properties, dict):
        return (f"the Redis envelope has no properties object; it needs at least "
                f"properties.delivery_tag and properties.delivery_info ({ENVELOPE_HELP})")
    if not isinstance(properties.get("delivery_tag"), str) or not properties["delivery_tag"]:
        return (f"the Redis envelope has no properties.delivery_tag; a producer must give each "
                f"message a unique one, a UUID say ({ENVELOPE_HELP})")
    if entry.get("headers") is not None and not isinstance(entry["headers"], dict):
        return (f"the Redis envelope's headers is not an object; it carries task and id "
                f"({ENVELOPE_HELP})")
    info = properties.get("delivery_info")
    if not (isinstance(info, dict) and isinstance(info.get("exchange"), str)
            and isinstance(info.get("routing_key"), str)):
        return (f"the Redis envelope has no properties.delivery_info with exchange and "
                f"routing_key, so a worker could not put it back on its queue ({ENVELOPE_HELP})")
    return None


def guard_channel(channel: Any) -> None:
    """Make ``channel`` (a kombu channel) turn unreadable Redis entries into refusable messages.

    Idempotent; a no-op for channels whose broker writes the envelope itself (RabbitMQ)."""
    if not isinstance(channel, virtual.Channel) or getattr(channel, "_hitl_guarded", False):
        return
    target: Any = channel
    # kombu builds each message with channel.Message(entry, channel=...) and also uses it in
    # isinstance(): it must stay a class, so the guard is a subclass of the transport's own.
    target.Message = _guarded(target.Message)
    handlers = getattr(target, "handlers", None)  # the Redis channel's readers, by command
    if isinstance(handlers, dict) and handlers.get("BRPOP") is not None:
        handlers["BRPOP"] = _reading_any_entry(handlers["BRPOP"])
    target._hitl_guarded = True


NOT_JSON = (f"the Redis entry is not JSON: a message is a JSON object with body, content-type, "
            f"headers and properties ({ENVELOPE_HELP})")


def _reading_any_entry(read: Any) -> Any:
    """``read`` (the Redis channel's BRPOP reader), keeping entries that are not JSON.

    The reader pops the entry and parses it as JSON before kombu sees a message: text that is
    not JSON raised there, in the event loop, and stopped the worker ("Unrecoverable error").
    The entry is already off the list; the exception still holds its text, so it is kept."""
    def read_any(**options: Any) -> Any:
        try:
            return read(**options)
        except json.JSONDecodeError as exc:
            keep_raw_dead_letter(exc.doc, NOT_JSON)
        except UnicodeDecodeError as exc:
            keep_raw_dead_letter(exc.object, f"the Redis entry is not UTF-8 text; {NOT_JSON}")
        except RecursionError:
            keep_raw_dead_letter("(not kept: too deep to read)",
                                 f"the Redis entry nests too deeply to be read; {NOT_JSON}")
        return True  # an entry was read (and refused): the poller issues the next BRPOP

    return read_any


@functools.cache
def _guarded(base: type) -> type:
    class GuardedMessage(base):  # type: ignore[misc]
        envelope_problem: str | None = None
        """Why the entry could not be read; the consumer's guard refuses the message for it."""

        def __init__(self, entry: Any, channel: Any = None, **kwargs: Any) -> None:
            problem = envelope_problem(entry)
            if problem is None:
                try:
                    super().__init__(entry, channel=channel, **kwargs)
                    return
                except Exception as exc:  # a body that is not valid base64, say
                    problem = f"the Redis envelope cannot be read: {exc!r}"[:2000]
            try:
                super().__init__(_stand_in(entry), channel=channel, **kwargs)
            except Exception:  # never expected; a worker must not stop on it all the same
                super().__init__(_stand_in(None), channel=channel, **kwargs)
            self.envelope_problem = problem

    GuardedMessage.__qualname__ = GuardedMessage.__name__ = f"Guarded{base.__name__}"
    return GuardedMessage


def _stand_in(entry: Any) -> dict[str, Any]:
    """An envelope kombu can track and ack, carrying ``entry`` as pushed as its body."""
    original: dict[str, Any] = entry if isinstance(entry, dict) else {}
    properties = _object(original.get("properties"))
    info = _object(properties.get("delivery_info"))
    headers = original.get("headers")
    return {
        "body": _as_text(entry),  # as pushed, for the dead letter
        "content-type": None,
        "content-encoding": "utf-8",
        "headers": headers if isinstance(headers, dict) else {},
        "properties": {
            # A tag of our own: kombu records the entry as unacked under it and the guard's ack
            # removes it. Were the worker to die first, the entry would come back with this tag
            # and be refused again (its body is then not a protocol-2 list).
            "delivery_tag": f"hitl-refused-{uuid.uuid4()}",
            "delivery_info": {"exchange": str(info.get("exchange") or ""),
                              "routing_key": str(info.get("routing_key") or "")},
        },
    }


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _as_text(entry: Any) -> str:
    try:
        return json.dumps(entry)
    except (RecursionError, ValueError, TypeError):
        return "(the entry could not be shown: nested too deeply)"

"""``hitl-workers simulate``: a flow engine and a handful of agents, against the running system.

It speaks only the wire contract (tasks by name on the broker, the reply queue, the agents'
notification streams), so what it prints is what real flow engines and agent UIs see.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import redis

from hitl_workers.notify.streams import stream_key
from hitl_workers.ops.flow_engine import ExitListener
from hitl_workers.settings import get_settings

Echo = Callable[[str], None]

BILLING, SALES, RETURNS = [["team:billing"]], [["team:sales"]], [["team:returns"]]
AGENTS: list[dict[str, Any]] = [
    {"agent_id": "alice", "name": "Alice", "status": "available", "rule_groups": BILLING},
    {"agent_id": "bob", "name": "Bob", "status": "available", "rule_groups": BILLING},
    {"agent_id": "carol", "name": "Carol", "status": "busy", "rule_groups": BILLING},
    {"agent_id": "dave", "name": "Dave", "status": "offline", "rule_groups": SALES},
    # §9: Erin handles one support conversation at a time.
    {"agent_id": "erin", "name": "Erin", "status": "available", "rule_groups": [["team:support"]],
     "capacity": 1},
    # §9 sequential offers: returns go to Frank and Grace one at a time.
    {"agent_id": "frank", "name": "Frank", "status": "available", "rule_groups": RETURNS},
    {"agent_id": "grace", "name": "Grace", "status": "available", "rule_groups": RETURNS},
]
SEQUENTIAL = {"strategy": "sequential", "offer_timeout": "2s", "order": "longest_idle",
              "on_missed": "busy"}
CONTACT = {"id": "contact-1", "name": "Ada Lovelace", "phone": "+15550100"}
POPUP = {
    "text": "**VIP** customer asks about a *refund*",
    "buttons": {"claim": {"label": "Take it"}, "reject": {"label": "Not me"}},
    "timer": {"auto_action_timeout": "2m"},
    "additional_timers": [{"label": "In queue", "since": int(time.time()) - 95}],
}


class Simulator:
    def __init__(self, app: Any, echo: Echo, timeout: float = 30.0) -> None:
        self.app = app
        self.echo = echo
        self.timeout = timeout
        self.run_id = uuid.uuid4().hex[:6]
        settings = get_settings()
        self.listener = ExitListener(settings.broker_url, f"flow-sim-{self.run_id}")
        self.streams = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.t0 = time.monotonic()
        self.last_state: str | None = None  # the state the last request's dispatch left

    def say(self, who: str, text: str) -> None:
        self.echo(f"  {time.monotonic() - self.t0:7.3f}s  {who:<12} {text}")

    def call(self, task: str, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.app.send_task(task, kwargs=kwargs).get(timeout=self.timeout)
        return result

    def request(self, name: str, tags: list[str], **settings: Any) -> str:
        execution_id = f"sim-{self.run_id}:{name}"
        body = {"execution_id": execution_id, "conversation_id": f"conv-{self.run_id}-{name}",
                "flow_id": "sim-flow", "step_id": name,
                "conversation": {"tags": tags, "contact": CONTACT},
                "settings": settings, "reply_to": self.listener.reply_to}
        self.say("flow engine", f"hitl.request_assistance {execution_id} "
                                f"tags={tags} settings={json.dumps(settings)[:90]}")
        answer = self.call("hitl.request_assistance", **body)
        self.say("worker", f"-> state={answer['state']} exit={answer['exit']}")
        self.last_state = answer["state"]
        return execution_id

    def agent(self, agent_id: str, action: str, execution_id: str) -> dict[str, Any]:
        answer = self.call(f"hitl.{action}", execution_id=execution_id, agent_id=agent_id,
                           event_id=f"{agent_id}-{action}-{uuid.uuid4().hex[:6]}")
        extra = f" (won by {answer['merge_field']['addClaimedBy']})" \
            if answer["outcome"] == "already_resolved" and answer.get("exit") == "claimed" else ""
        self.say(agent_id, f"{action} -> {answer['outcome']}{extra}")
        return answer

    def notifications(self, agent_id: str, execution_id: str) -> None:
        # decode_responses=True: ids and fields come back as str.
        entries = cast(list[tuple[str, dict[str, str]]],
                       self.streams.xrange(stream_key(agent_id)))
        for _id, fields in entries:
            event = json.loads(fields["event"])
            if event.get("execution_id") != execution_id:
                continue
            if event["type"] == "assistance.requested" and event.get("popup"):
                popup = event["popup"]
                labels = "/".join(b["label"] for b in popup["buttons"])
                self.say(agent_id, f"console shows popup [{labels}]: {popup['html'][:60]}")
            else:
                self.say(agent_id, f"console got {event['type']}")

    def exit(self, execution_id: str, wait: float | None = None) -> dict[str, Any]:
        message = self.listener.wait_for(execution_id, timeout=wait or self.timeout)
        self.say("flow engine", f"<- exit {message['exit']} {json.dumps(message['merge_field'])}")
        return message

    def capacity_limited(self, done: Callable[[dict[str, Any]], None]) -> None:
        """§9: an agent at capacity is busy at dispatch (with allow_busy the step waits), its
        claim answers at_capacity, and a release offers it the waiting step."""
        first = self.request("support-1", ["team:support"])
        self.agent("erin", "claim", first)
        self.exit(first)
        second = self.request("support-2", ["team:support"], allow_busy=True, priority=5)
        self.notifications("erin", second)
        self.say("erin", "holds 1 of 1: not offered support-2")
        self.agent("erin", "claim", second)
        answer = self.call("hitl.release", conversation_id=f"conv-{self.run_id}-support-1",
                           agent_id="erin")
        self.say("flow engine", f"hitl.release -> claimed_by={answer['claimed_by']}")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not self._offered("erin", second):
            time.sleep(0.05)
        self.notifications("erin", second)
        self.agent("erin", "claim", second)
        done(self.exit(second))

    def sequential_step(self, done: Callable[[dict[str, Any]], None]) -> None:
        """§9 sequential: one holder at a time. The first holder lets its offer time out (a
        missed offer: withdrawn, its status set to busy), the next agent is offered the step
        and claims it, and the first is set available again. Who holds first depends on the
        order (longest idle), so it is read from the notifications, not assumed."""
        eid = self.request("sequential", ["team:returns"], timeout="1m",
                           popup={"text": "A **return**, one agent at a time"},
                           offer=SEQUENTIAL)
        if self.last_state != "waiting":  # e.g. refused by a version without sequential offers
            done(self.exit(eid))
            return
        first, offer = self._holder(eid, ("frank", "grace"))
        self.say(first, f"console shows the offer alone: round {offer['round']}, "
                        f"expires {offer['expires_at']}")
        second = "grace" if first == "frank" else "frank"
        self.agent(second, "claim", eid)  # not its turn: not_eligible
        self.say(first, f"lets the offer time out ({SEQUENTIAL['offer_timeout']})")
        withdrawn = self._wait_for(first, eid, "assistance.withdrawn")
        self.say(first, f"console got assistance.withdrawn state={withdrawn.get('state')} "
                        "(missed)")
        holder, offer = self._holder(eid, (second,))
        self.say(holder, f"console shows the offer alone: round {offer['round']}, "
                         f"expires {offer['expires_at']}")
        # The claim first: the new holder has only the offer timeout to take it (on a slow
        # machine, a status change before it could let this offer lapse too).
        self.agent(holder, "claim", eid)
        done(self.exit(eid))
        status = self.call("hitl.set_agent_status", agent_id=first, status="available")
        self.say(first, f"back to {status['status']} (on_missed set it to busy)")

    def _holder(self, execution_id: str, candidates: tuple[str, ...]
                ) -> tuple[str, dict[str, Any]]:
        """The candidate whose stream got a sequential offer for ``execution_id``."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for agent_id in candidates:
                for event in self._events(agent_id, execution_id):
                    if event["type"] == "assistance.requested" and event.get("offer"):
                        return agent_id, event["offer"]
            time.sleep(0.05)
        raise TimeoutError(f"no sequential offer of {execution_id} reached {candidates}")

    def _wait_for(self, agent_id: str, execution_id: str, kind: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for event in self._events(agent_id, execution_id):
                if event["type"] == kind:
                    return event
            time.sleep(0.05)
        raise TimeoutError(f"{agent_id} got no {kind} for {execution_id}")

    def _events(self, agent_id: str, execution_id: str) -> list[dict[str, Any]]:
        entries = cast(list[tuple[str, dict[str, str]]],
                       self.streams.xrange(stream_key(agent_id)))
        events = (json.loads(fields["event"]) for _id, fields in entries)
        return [e for e in events if e.get("execution_id") == execution_id]

    def _offered(self, agent_id: str, execution_id: str) -> bool:
        return bool(self._events(agent_id, execution_id))

    def run(self, *, leave_waiting: bool = False) -> list[tuple[str, str, str]]:
        summary: list[tuple[str, str, str]] = []
        with self.listener:
            self.echo("Agents")
            for agent in AGENTS:
                self.call("hitl.upsert_agent", **agent)
                self.say(agent["agent_id"], f"{agent['status']}, sees {agent['rule_groups']}")

            def scenario(title: str, expected: str) -> Callable[[dict[str, Any]], None]:
                self.echo(f"\n{title}")

                def done(message: dict[str, Any]) -> None:
                    got = message["exit"] + (
                        f"/{message['merge_field'].get('reason')}"
                        if message["exit"] == "not_claimed" else "")
                    summary.append((title, expected, got))
                return done

            done = scenario("1. Fan-out with a popup; Alice claims, Bob is too late", "claimed")
            eid = self.request("claimed", ["team:billing"], browser_notification=True,
                               popup=POPUP)
            self.notifications("alice", eid)
            self.agent("alice", "claim", eid)
            self.agent("bob", "claim", eid)
            done(self.exit(eid))
            self.notifications("bob", eid)

            done = scenario("2. Bob rejects", "not_claimed/REJECTED")
            eid = self.request("rejected", ["team:billing"], popup={"text": "Refund?"})
            self.agent("bob", "reject", eid)
            done(self.exit(eid))

            done = scenario("3. Nobody may see a legal conversation", "not_claimed/NO_AGENTS")
            done(self.exit(self.request("no-agents", ["team:legal"])))

            done = scenario("4. Only Carol, who is busy", "not_claimed/NOT_AVAILABLE")
            done(self.exit(self.request("not-available", ["team:billing"],
                                        specific_agent_id="carol")))

            done = scenario("5. The popup countdown runs out (2 s)", "timer_action")
            eid = self.request("timer", ["team:billing"],
                               popup={"text": "Quick!", "timer": {"auto_action_timeout": "2s"}})
            done(self.exit(eid, wait=15))

            done = scenario("6. Nobody claims within the timeout (3 s)", "timeout")
            eid = self.request("timeout", ["team:billing"], timeout="3s")
            self.agent("alice", "close", eid)
            done(self.exit(eid, wait=15))

            done = scenario("7. A misspelt setting is refused, not ignored", "error")
            done(self.exit(self.request("invalid", ["team:billing"], timeuot="5m")))

            done = scenario("8. Erin, capacity 1, is offered the next step when released",
                            "claimed")
            self.capacity_limited(done)

            done = scenario("9. Sequential: Frank or Grace misses the offer, the other claims",
                            "claimed")
            self.sequential_step(done)

            if leave_waiting:
                self.echo("\nLeft waiting for a human (10 minutes, countdown 5 minutes)")
                self.request("for-you", ["team:billing"], browser_notification=True,
                             timeout="10m", popup={**POPUP,
                                                   "timer": {"auto_action_timeout": "5m"}})
        return summary

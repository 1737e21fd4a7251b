// A flow engine written in Node.js with the npm package celery-node (Redis or RabbitMQ): it knows nothing
// of hitl_workers but docs/contract.md. It manages agents (§5), starts steps (§1), acts as the
// agents' UI where a case needs a click (§3), and reads every exit (§2) from its own queue with
// a celery-node worker. tests/clients/celery_node_run.py writes the scenario and checks the
// JSON this prints; tests/clients/test_on_rabbitmq.py runs it on RabbitMQ too.
//
//   node flow_engine.js scenario.json  →  one JSON object on stdout
//
// scenario: {broker, backend, reply_queue, reply_task, agents: [{agent_id, name, status,
// rule_groups}], cases: [{name, request, events: [{task, kwargs}], repeat: bool}],
// timeout_ms, settle_ms}
"use strict";

const fs = require("fs");

// celery-node logs every task it receives with console.info; stdout is for the result only.
console.info = console.log = (...parts) => process.stderr.write(parts.join(" ") + "\n");
const celery = require("celery-node");

const scenario = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const TASK_TIMEOUT_MS = 20000;

// celery-node's client publishes to the one queue it was made for: one client per hitl queue.
const requests = celery.createClient(scenario.broker, scenario.backend, "hitl.requests");
const events = celery.createClient(scenario.broker, scenario.backend, "hitl.events");
const worker = celery.createWorker(scenario.broker, scenario.backend, scenario.reply_queue);

const exits = {}; // execution_id -> [keyword arguments of every exit message received]
worker.register(scenario.reply_task, async (kwargs) => {
  (exits[kwargs.execution_id] = exits[kwargs.execution_id] || []).push(kwargs);
  return "ok";
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function call(client, task, kwargs) {
  // A TIMEOUT or FAILURE from celery-node rejects; the test reports it with the case's name.
  return client.sendTask(task, [], kwargs).get(TASK_TIMEOUT_MS);
}

async function runCase(c) {
  const out = { request_result: await call(requests, "hitl.request_assistance", c.request),
                event_results: [] };
  for (const event of c.events || []) {
    out.event_results.push(await call(events, event.task, event.kwargs));
  }
  if (c.repeat) {
    // A flow-engine retry: same execution_id, same body. Never a second execution or exit.
    out.repeat_result = await call(requests, "hitl.request_assistance", c.request);
  }
  return out;
}

async function main() {
  worker.start();
  const output = { agents: [], cases: {}, exits, removed: [] };
  for (const agent of scenario.agents) {
    output.agents.push(await call(requests, "hitl.upsert_agent", agent));
  }
  const results = await Promise.all(scenario.cases.map((c) => runCase(c).then(
    (value) => [c.name, value],
    (error) => [c.name, { failed: String(error && error.message || error) }])));
  for (const [name, value] of results) output.cases[name] = value;

  const wanted = scenario.cases.map((c) => c.request.execution_id);
  const deadline = Date.now() + scenario.timeout_ms;
  while (Date.now() < deadline && !wanted.every((id) => exits[id])) await sleep(50);
  await sleep(scenario.settle_ms); // a second exit for any execution would arrive by now

  for (const agent of scenario.agents) {
    output.removed.push(await call(requests, "hitl.remove_agent", { agent_id: agent.agent_id }));
  }
  process.stdout.write(JSON.stringify(output) + "\n");
}

// celery-node publishes without waiting: a broker's refusal (RabbitMQ's PRECONDITION_FAILED for
// a queue declared with another type) surfaces as a rejection nobody awaits.
process.on("unhandledRejection", (error) => {
  process.stderr.write(`flow engine failed: ${error && error.stack || error}\n`);
  process.exit(1);
});

main().then(() => process.exit(0), (error) => {
  process.stderr.write(`flow engine failed: ${error && error.stack || error}\n`);
  process.exit(1);
});

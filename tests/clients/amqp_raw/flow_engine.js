// A flow engine that speaks raw AMQP 0-9-1 with amqplib: no Celery library at all, only the
// rules of docs/contract.md §1, §2 ("Reply queues") and §4. It declares its reply queue as the
// contract says for the broker's queue type, publishes protocol-2 task messages, and consumes
// the exits. tests/clients/test_on_rabbitmq.py writes the scenario, acts for the agents, and asserts
// on the JSON this prints.
//
//   node flow_engine.js scenario.json  →  one JSON object on stdout
//
// scenario: {url, queue_type: "quorum"|"classic", reply_queue, requests: [{…§1 request…}],
// expect: [execution_id, …], timeout_ms, settle_ms}
"use strict";

const fs = require("fs");
const crypto = require("crypto");
const amqp = require("amqplib");

const scenario = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// docs/contract.md §2, "Reply queues": durable, the configured type, bound to a durable topic
// exchange of the queue's own name with that name as the routing key.
async function declareReplyQueue(channel, name) {
  const args = scenario.queue_type === "quorum" ? { "x-queue-type": "quorum" } : {};
  await channel.assertExchange(name, "topic", { durable: true });
  await channel.assertQueue(name, { durable: true, exclusive: false, autoDelete: false,
                                    arguments: args });
  await channel.bindQueue(name, name, name);
}

// A Celery protocol-2 message: body [args, kwargs, embed], the task's name and id in headers.
function publishTask(channel, queue, task, kwargs) {
  const id = crypto.randomUUID();
  const body = JSON.stringify([[], kwargs,
    { callbacks: null, errbacks: null, chain: null, chord: null }]);
  const headers = { lang: "js", task, id, root_id: id, parent_id: null, group: null,
                    retries: 0, eta: null, expires: null, argsrepr: "()",
                    kwargsrepr: JSON.stringify(kwargs), origin: "amqp-raw-flow-engine" };
  channel.publish(queue, queue, Buffer.from(body, "utf8"), {
    contentType: "application/json", contentEncoding: "utf-8", correlationId: id,
    deliveryMode: 2, headers });
  return id;
}

async function main() {
  const connection = await amqp.connect(scenario.url);
  const channel = await connection.createConfirmChannel();
  await declareReplyQueue(channel, scenario.reply_queue);

  const exits = {}; // execution_id -> [{kwargs, task, id, content_type}]
  await channel.consume(scenario.reply_queue, (message) => {
    const [args, kwargs] = JSON.parse(message.content.toString("utf8"));
    const record = { kwargs, args, task: message.properties.headers.task,
                     id: message.properties.headers.id,
                     content_type: message.properties.contentType };
    (exits[kwargs.execution_id] = exits[kwargs.execution_id] || []).push(record);
    channel.ack(message);
  });

  const sent = scenario.requests.map(
    (request) => publishTask(channel, "hitl.requests", "hitl.request_assistance", request));
  await channel.waitForConfirms(); // every request is safe in the broker
  process.stderr.write(`published ${sent.length} requests\n`);

  const deadline = Date.now() + scenario.timeout_ms;
  while (Date.now() < deadline && !scenario.expect.every((id) => exits[id])) await sleep(50);
  await sleep(scenario.settle_ms); // a second exit for any execution would arrive by now

  process.stdout.write(JSON.stringify({ published: sent.length, exits }) + "\n");
  await channel.close();
  await connection.close();
}

main().then(() => process.exit(0), (error) => {
  process.stderr.write(`flow engine failed: ${error && error.stack || error}\n`);
  process.exit(1);
});

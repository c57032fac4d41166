// BullMQ's driver for bench.peers: reads one JSON request a line on stdin, answers one JSON line on stdout.
'use strict';

const readline = require('node:readline');
const { FlowProducer, Queue, QueueEvents } = require('bullmq');
const { QUEUE, connection, lastCompensationId, line, order, saga } = require('./common.cjs');

const BATCH = 200; // flows added concurrently, as by every peer's driver
const TIMEOUT_MS = 300000; // one round may take this long before the driver gives up on it

// Completions are read from the queue's event stream (QueueEvents), BullMQ's way to learn that a job finished.
// A promise per awaited job id, registered before its flow is added so that no event can be missed.
const pending = new Map();
function completion(jobId) {
  return new Promise((resolve) => pending.set(jobId, resolve));
}

function withTimeout(promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no completion within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function addAll(flows, trees) {
  for (let first = 0; first < trees.length; first += BATCH) {
    await Promise.all(trees.slice(first, first + BATCH).map((tree) => flows.add(tree)));
  }
}

async function w1(flows, n, tag) {
  const keys = Array.from({ length: n }, (_, i) => `${tag}-${i}`);
  const started = process.hrtime.bigint();
  const done = Promise.all(keys.map((key) => completion(`${key}-finalize`)));
  await addAll(flows, keys.map(order));
  await withTimeout(done);
  return { seconds: Number(process.hrtime.bigint() - started) / 1e9 };
}

async function w2(flows, n, tag) {
  const latencies = [];
  for (let i = 0; i < n; i += 1) {
    const key = `${tag}-${i}`;
    const started = process.hrtime.bigint();
    const done = completion(`${key}-d`);
    await flows.add(line(key));
    await withTimeout(done);
    latencies.push(Number(process.hrtime.bigint() - started) / 1e9);
  }
  return { latencies };
}

async function w3(flows, n, tag) {
  const keys = Array.from({ length: n }, (_, i) => `${tag}-${i}`);
  const started = process.hrtime.bigint();
  const done = Promise.all(keys.map((key) => completion(lastCompensationId(key))));
  await addAll(flows, keys.map(saga));
  const ends = (await withTimeout(done)).length;
  return { seconds: Number(process.hrtime.bigint() - started) / 1e9, ends };
}

const OPS = { w1, w2, w3 };

async function main() {
  // A longer event stream than the default 10,000, so that a round's events are never trimmed before they are read.
  const queue = new Queue(QUEUE, { connection: connection(), streams: { events: { maxLen: 200000 } } });
  await queue.waitUntilReady();
  const events = new QueueEvents(QUEUE, { connection: connection() });
  events.on('completed', ({ jobId }) => {
    const resolve = pending.get(jobId);
    if (resolve) {
      pending.delete(jobId);
      resolve();
    }
  });
  await events.waitUntilReady();
  const flows = new FlowProducer({ connection: connection() });
  for await (const text of readline.createInterface({ input: process.stdin })) {
    const request = JSON.parse(text);
    if (request.op === 'quit') break;
    let reply;
    try {
      reply = await OPS[request.op](flows, request.n, request.tag);
    } catch (error) {
      reply = { error: String(error && error.stack ? error.message : error) };
      pending.clear();
    }
    process.stdout.write(`${JSON.stringify(reply)}\n`);
  }
  await flows.close();
  await events.close();
  await queue.close();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});

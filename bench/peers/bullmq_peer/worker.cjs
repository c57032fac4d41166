// A BullMQ worker of every workload of bench.peers. On SIGTERM it finishes its jobs, writes the side effects of
// W3's processors to BENCH_EFFECTS_DIR/bullmq-<pid>.json and exits.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { FlowProducer, UnrecoverableError, Worker } = require('bullmq');
const { CONCURRENCY, QUEUE, compensations, connection, fanout } = require('./common.cjs');

const flows = new FlowProducer({ connection: connection() });

// (flow key, effect, CLOCK_MONOTONIC ns): "s1".."s5" steps starting, "c1".."c3" compensations.
const effects = [];
function record(key, effect) {
  effects.push([key, effect, process.hrtime.bigint().toString()]);
}

// BullMQ has no saga: each step catches its own failure, enqueues the compensations of the steps before it
// (a nested flow, so they run most recent first), and fails for good (UnrecoverableError: no retry).
async function sagaStep(key, index) {
  record(key, `s${index}`);
  try {
    if (index === 4) throw new Error('declined');
    return { ok: true };
  } catch (error) {
    if (index > 1) await flows.add(compensations(key, Math.min(index - 1, 3)));
    throw new UnrecoverableError(error.message);
  }
}

async function process_(job) {
  const { key } = job.data;
  switch (job.name) {
    case 'w1.validate':
      return { ok: true };
    case 'w1.charge':
      await flows.add(fanout(key));
      return { charge_id: 'ch-1' };
    case 'w1.email':
    case 'w1.sms':
      return { sent: true };
    case 'w1.finalize':
      return { done: true };
    case 'w2.a':
    case 'w2.b':
    case 'w2.c':
    case 'w2.d':
      return { n: 0 };
    case 'w3.s1':
    case 'w3.s2':
    case 'w3.s3':
    case 'w3.s4':
    case 'w3.s5':
      return sagaStep(key, Number(job.name.slice(4)));
    case 'w3.c1':
    case 'w3.c2':
    case 'w3.c3':
      record(key, job.name.slice(3));
      return null;
    default:
      throw new UnrecoverableError(`unknown job ${job.name}`);
  }
}

const worker = new Worker(QUEUE, process_, { connection: connection(), concurrency: CONCURRENCY });
worker.on('error', (error) => console.error('worker error:', error));

let stopping = false;
process.on('SIGTERM', async () => {
  if (stopping) return;
  stopping = true;
  await worker.close();
  await flows.close();
  const folder = process.env.BENCH_EFFECTS_DIR;
  if (folder && effects.length) {
    fs.writeFileSync(path.join(folder, `bullmq-${process.pid}.json`), JSON.stringify(effects));
  }
  process.exit(0);
});

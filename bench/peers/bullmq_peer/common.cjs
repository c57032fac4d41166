// BullMQ's side of bench.peers, shared by worker.cjs and driver.cjs: the connection, the queue, and the flow
// trees of every workload. Run by the benchmark with NODE_PATH pointing at .bench/node/node_modules.
'use strict';

const QUEUE = 'bench'; // one queue for every job; the processor dispatches on the job's name
const CONCURRENCY = 100; // jobs a worker runs at once, as on Plait's side

function connection() {
  const url = new URL(process.env.BENCH_REDIS_URL);
  return {
    host: url.hostname,
    port: Number(url.port),
    db: Number(url.pathname.slice(1) || 0),
    maxRetriesPerRequest: null, // what BullMQ asks of a worker's connection
  };
}

function job(name, key, extra = {}) {
  return { name, queueName: QUEUE, data: { key }, ...extra };
}

// W1, first part: validate -> charge. A parent runs once its children are done, so a chain is a nesting.
function order(key) {
  return job('w1.charge', key, { children: [job('w1.validate', key)] });
}

// W1, second part, added by charge: BullMQ's pattern for a parallel pair, a parent (finalize) of two children.
// The job id is fixed so that a retried charge would not add the pair twice.
function fanout(key) {
  return job('w1.finalize', key, {
    opts: { jobId: `${key}-finalize` },
    children: [job('w1.email', key), job('w1.sms', key)],
  });
}

// W2: a -> b -> c -> d, nested, d at the root.
function line(key) {
  let tree = job('w2.a', key);
  for (const name of ['w2.b', 'w2.c']) tree = job(name, key, { children: [tree] });
  return job('w2.d', key, { opts: { jobId: `${key}-d` }, children: [tree] });
}

// W3: s1 -> ... -> s5, nested. s4 fails its parent, so s5 is failed without running instead of waiting forever.
function saga(key) {
  let tree = job('w3.s1', key);
  for (const index of [2, 3, 4]) {
    const opts = index === 4 ? { failParentOnFailure: true } : {};
    tree = job(`w3.s${index}`, key, { opts, children: [tree] });
  }
  return job('w3.s5', key, { children: [tree] });
}

// W3's compensations of steps 1..done, most recent first: c_done is the deepest child, c1 the root.
function compensations(key, done) {
  let tree = null;
  for (let index = done; index >= 1; index -= 1) {
    const opts = index === 1 ? { jobId: lastCompensationId(key) } : {};
    tree = job(`w3.c${index}`, key, tree ? { opts, children: [tree] } : { opts });
  }
  return tree;
}

function lastCompensationId(key) {
  return `${key}-c1`;
}

module.exports = { CONCURRENCY, QUEUE, compensations, connection, fanout, lastCompensationId, line, order, saga };

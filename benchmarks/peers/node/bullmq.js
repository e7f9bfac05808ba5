// BullMQ's side of the peer benchmark (bench_peers.py runs it; `npm ci` installs package-lock.json).
// node_modules is this folder's (npm ci); bench_peers.py runs a pinned copy of this file with NODE_PATH pointing at it.
//
//   node bullmq.js worker  --port P --queue Q --concurrency C        (PEERS_PROBE_DIR set)
//   node bullmq.js produce --port P --queue Q --mode single|bulk|latency --n N [--chunk K] [--gap-ms G]
//
// The worker is `new Worker(Q, noop, {concurrency: C})` with BullMQ's defaults; its noop body is
// probe.py's, in JS: count the call, note the first and latest start, and the start latency of a
// job that carries `t` (its producer's wall clock in seconds just before `queue.add`). A timer
// writes the figures to $PEERS_PROBE_DIR/<pid>.json every 50 ms while they change.
// The producer prints one JSON line: {"rate": jobs/s, ...}. Call 0 of `single` is untimed.
'use strict';

const fs = require('fs');
const path = require('path');
const { Queue, Worker } = require('bullmq');

function args() {
  const out = { _: process.argv[2] };
  for (let i = 3; i < process.argv.length; i += 2) out[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
  return out;
}

const nowS = () => (performance.timeOrigin + performance.now()) / 1000;

function probe(directory) {
  const state = { pid: process.pid, count: 0, first: 0, last: 0, lat_ms: [] };
  let written = '';
  const file = path.join(directory, `${process.pid}.json`);
  setInterval(() => {
    const mark = `${state.count}/${state.last}/${state.lat_ms.length}`;
    if (state.count === 0 || mark === written) return;
    fs.writeFileSync(file + '.tmp', JSON.stringify(state));
    fs.renameSync(file + '.tmp', file);
    written = mark;
  }, 50);
  return (data) => {
    const now = nowS();
    state.count += 1;
    if (state.count === 1) state.first = now;
    if (now > state.last) state.last = now;
    if (data && typeof data.t === 'number') state.lat_ms.push((now - data.t) * 1000);
  };
}

function bullmqVersion() {
  // node_modules may be found through NODE_PATH (bench_peers.py runs this file from a pinned copy).
  for (let dir = path.dirname(require.resolve('bullmq')); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file)) {
      const pkg = JSON.parse(fs.readFileSync(file, 'utf8'));
      if (pkg.name === 'bullmq') return pkg.version;
    }
  }
  return 'unknown';
}

async function worker(a) {
  const hit = probe(process.env.PEERS_PROBE_DIR);
  const connection = { host: '127.0.0.1', port: Number(a.port) };
  const w = new Worker(a.queue, async (job) => { hit(job.data); }, { connection, concurrency: Number(a.concurrency) });
  w.on('error', (err) => console.error('worker error', err));
  const stop = async () => { await w.close(true); process.exit(0); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

async function produce(a) {
  const connection = { host: '127.0.0.1', port: Number(a.port) };
  const queue = new Queue(a.queue, { connection });
  const n = Number(a.n);
  let result;
  if (a.mode === 'single') {
    await queue.add('noop', {});
    const t0 = performance.now();
    for (let i = 1; i < n; i++) await queue.add('noop', {});
    result = { rate: (n - 1) / ((performance.now() - t0) / 1000), jobs: n };
  } else if (a.mode === 'bulk') {
    const chunk = Number(a.chunk || 1000);
    await queue.waitUntilReady();
    const t0 = performance.now();
    for (let done = 0; done < n; done += chunk) {
      const k = Math.min(chunk, n - done);
      await queue.addBulk(Array.from({ length: k }, () => ({ name: 'noop', data: {} })));
    }
    result = { rate: n / ((performance.now() - t0) / 1000), jobs: n, chunk };
  } else if (a.mode === 'latency') {
    const gap = Number(a['gap-ms'] || 10);
    await queue.waitUntilReady();
    for (let i = 0; i < n; i++) {
      await queue.add('noop', { t: nowS() });
      await new Promise((r) => setTimeout(r, gap));
    }
    result = { jobs: n, gap_ms: gap };
  } else {
    throw new Error(`--mode must be single, bulk or latency, got ${a.mode}`);
  }
  await queue.close();
  console.log(JSON.stringify({ ...result, version: bullmqVersion() }));
}

const a = args();
const run = { worker, produce }[a._];
if (!run) {
  console.error('usage: node bullmq.js worker|produce ...');
  process.exit(2);
}
run(a).catch((err) => { console.error(err); process.exit(1); });

// The Autobahn|Testsuite in client mode, through tether.js. kosoku (a runner of Autobahn's own
// case files) plays the fuzzing server; tether.js, on the `ws` package, walks Autobahn's client
// protocol with its own socket handling (`send()`, `message` events): getCaseCount, then
// runCase for every case, echoing each text and binary message as it came, then updateReports.
// The verdicts are kosoku's, read from the index.json it writes.
//
// Run: node test/autobahn-client.mjs [--outdir DIR] [--case ID-OR-GLOB]... [--plain-ws]
// (kosoku from $TETHER_KOSOKU or ../.venv; every case unless --case narrows it, e.g. 12.2.*;
// --plain-ws: the `ws` package with its own defaults, see defaultWebSocket).
// Exit status 0 when no case failed and none was unimplemented.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { TetherClient } from '../tether.js';
import { repo, waitFor } from './harness.mjs';

export const KOSOKU = process.env.TETHER_KOSOKU || join(repo, '.venv', 'bin', 'kosoku');
export const OUTDIR = join(repo, 'target', 'autobahn', 'client-js');
export const AGENT = 'tether.js';

/** The verdicts counted, in the summary's order. */
export const VERDICTS = ['OK', 'NON-STRICT', 'INFORMATIONAL', 'UNIMPLEMENTED', 'FAILED'];

/**
 * One case's verdict from its index.json entry. kosoku passes a case only when `behavior` is OK,
 * NON-STRICT or INFORMATIONAL and `behaviorClose` is OK or INFORMATIONAL, so a closing verdict of
 * FAILED, WRONG CODE, UNCLEAN or FAILED BY CLIENT fails the case too, as does a `behavior` of
 * FAILED, ERROR (no verdict reached) or anything unknown.
 */
export function verdict({ behavior, behaviorClose }) {
  if (!['OK', 'NON-STRICT', 'INFORMATIONAL', 'UNIMPLEMENTED'].includes(behavior)) return 'FAILED';
  if (!['OK', 'INFORMATIONAL'].includes(behaviorClose)) return 'FAILED';
  return behavior;
}

/** Numeric order of Autobahn case ids (1.2.10 after 1.2.9). */
function byCaseId(a, b) {
  const x = a.split('.').map(Number);
  const y = b.split('.').map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if ((x[i] ?? -1) !== (y[i] ?? -1)) return (x[i] ?? -1) - (y[i] ?? -1);
  }
  return 0;
}

/**
 * Count an index.json's verdicts for `agent`. `expected` cases were run; any without an entry
 * count as FAILED. Returns {total, counts, failed: [{id, behavior, behaviorClose, reportfile}],
 * unimplemented: [id], missing}.
 */
export function summarize(index, agent, expected) {
  const entries = index[agent] || {};
  const counts = Object.fromEntries(VERDICTS.map((v) => [v, 0]));
  const failed = [];
  const unimplemented = [];
  for (const id of Object.keys(entries).sort(byCaseId)) {
    const entry = entries[id];
    const v = verdict(entry);
    counts[v] += 1;
    const { behavior, behaviorClose, reportfile } = entry;
    if (v === 'FAILED') failed.push({ id, behavior, behaviorClose, reportfile });
    if (v === 'UNIMPLEMENTED') unimplemented.push(id);
  }
  const seen = Object.keys(entries).length;
  const missing = Math.max(0, expected - seen);
  counts.FAILED += missing;
  return { total: Math.max(expected, seen), counts, failed, unimplemented, missing };
}

/** `autobahn client tether.js: 517 cases: OK 500, NON-STRICT 5, …, FAILED 0`. */
export function summaryLine(agent, summary) {
  const counts = VERDICTS.map((v) => `${v} ${summary.counts[v]}`).join(', ');
  return `autobahn client ${agent}: ${summary.total} cases: ${counts}`;
}

/**
 * `ws`, configured for what Autobahn sends. `--plain-ws` runs ws as it comes instead, to see
 * each of the settings below matter.
 *
 * It offers permessage-deflate with `client_no_context_takeover` too: Autobahn's 13.2, 13.5 and
 * 13.6 cases ask the client to drop its compression context between messages, and judge a
 * client whose offer did not mention it UNIMPLEMENTED (ws keeps its context unless asked).
 *
 * `threshold: 0` compresses every message. Without it, ws sends messages under 1 KiB
 * uncompressed once the server asked for client_no_context_takeover, which RFC 7692 allows but
 * kosoku 0.1.0 cannot take: it hands an uncompressed message to the case as a `str` where a
 * compressed one is `bytes` (runner.rs, deliver), and case12_x_x.py's onMessage hashes it:
 * "Strings must be encoded before hashing", an ERROR verdict for 13.2.x, 13.5.x, 13.6.x, 13.7.x.
 *
 * `maxFragments: 65536`: ws 8.23 (installed here) refuses a message in more than 16,384
 * fragments (1008, "Too many message fragments"); 9.3.1 and 9.4.1 send 4 MiB in 65,536
 * fragments of 64 bytes.
 *
 * Node's global WebSocket (Node 22+) when `ws` is not installed.
 */
export async function defaultWebSocket({ plain = false } = {}) {
  let ws;
  try {
    ws = (await import('ws')).default;
  } catch {
    if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
    throw new Error('no WebSocket implementation: npm ci in web/ (the `ws` package), or Node 22+');
  }
  if (plain) return ws;
  return class WebSocketForAutobahn extends ws {
    constructor(url, protocols, options) {
      const perMessageDeflate = { clientNoContextTakeover: true, threshold: 0 };
      super(url, protocols, { ...options, perMessageDeflate, maxFragments: 64 * 1024 });
    }
  };
}

/**
 * One WebSocket connection made by tether.js as a plain client: raw mode, no heartbeat (nothing
 * sent unasked), no reconnect. `onMessage(client, data)` sees every message. Resolves when the
 * client stops, with its last close; or at the deadline, with {timedOut: true} (the client is
 * then closed without waiting for the handshake).
 */
function session(url, WebSocket, deadlineMs, onMessage = () => {}) {
  const client = new TetherClient(url, {
    WebSocket,
    protocol: 'raw',
    pingInterval: 0,
    maxAttempts: 0,
    closeOnPageHide: false,
    autoConnect: false,
  });
  return new Promise((resolve) => {
    let done = false;
    const finish = (result) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(result);
    };
    const timer = setTimeout(() => {
      finish({ timedOut: true, close: client.lastClose });
      client.close(1000, 'deadline passed');
    }, deadlineMs);
    client.on('message', ({ data }) => done || onMessage(client, data));
    client.on('stopped', ({ reason }) => finish({ timedOut: false, close: client.lastClose, reason }));
    client.connect();
  });
}

/** A kosoku fuzzing server (a child process, stopped by PID) on a free local port. */
class Kosoku {
  static async start(bin, outdir, include) {
    const k = new Kosoku();
    const port = await freePort();
    k.url = `ws://127.0.0.1:${port}`;
    k.log = '';
    const args = ['-m', 'fuzzingserver', `127.0.0.1:${port}`, '-o', outdir, ...include.flatMap((c) => ['-i', c])];
    k.child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (chunk) => (k.log = (k.log + chunk).slice(-20000)); // the end says what failed
    k.child.stdout.on('data', keep);
    k.child.stderr.on('data', keep);
    k.status = null;
    k.exited = new Promise((resolve) => {
      k.child.on('exit', (code, signal) => resolve((k.status = { code, signal })));
      k.child.on('error', (e) => resolve((k.status = { code: null, signal: null, error: e.message })));
    });
    // Starting the Python interpreter and loading the cases takes a few seconds.
    try {
      await waitFor('kosoku listening', async () => {
        if (k.status) throw new Error(`kosoku exited before listening (${JSON.stringify(k.status)}):\n${k.log}`);
        return canConnect(port);
      }, 60000);
    } catch (e) {
      await k.stop();
      throw e;
    }
    return k;
  }

  /** Wait up to `ms` for kosoku to exit by itself (it writes the reports, then exits). */
  async finished(ms) {
    let timer;
    const late = new Promise((resolve) => (timer = setTimeout(() => resolve(null), ms)));
    const status = await Promise.race([this.exited, late]);
    clearTimeout(timer);
    return status;
  }

  async stop() {
    if (this.status) return;
    this.#signal('SIGTERM');
    if (!(await this.finished(5000))) {
      this.#signal('SIGKILL');
      await this.exited;
    }
  }

  #signal(name) {
    try {
      process.kill(this.child.pid, name);
    } catch {
      /* it exited meanwhile */
    }
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
    probe.on('error', reject);
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

/**
 * Run every Autobahn case (or those `include` names: ids or globs such as '12.2.*') against
 * tether.js and read the verdicts. The report lands in `outdir` (emptied first). Each case has
 * `caseTimeoutMs`; the walk stops starting cases once `totalMs` has passed (the cases not run
 * count as FAILED). `progress(line)` hears how it goes.
 *
 * Returns {line, total, counts, failed: [{id, behavior, behaviorClose, reason}], unimplemented,
 * missing, ids (every case with a verdict), timedOut: [case numbers], seconds, cpuSeconds,
 * slowest: [{id, ms}], kosokuExit, kosokuLog, outdir}.
 */
export async function runAutobahnClient({
  kosoku = KOSOKU,
  outdir = OUTDIR,
  agent = AGENT,
  include = [],
  WebSocket = null,
  caseTimeoutMs = 120000,
  totalMs = 15 * 60000,
  progress = () => {},
} = {}) {
  if (!existsSync(kosoku)) throw new Error(`kosoku is missing: ${kosoku} (pip install kosoku==0.1.0, or set TETHER_KOSOKU)`);
  WebSocket = WebSocket || (await defaultWebSocket());
  rmSync(outdir, { recursive: true, force: true });
  mkdirSync(outdir, { recursive: true });
  const started = Date.now();
  const cpuBefore = process.cpuUsage();
  const giveUpAt = started + totalMs;
  const server = await Kosoku.start(kosoku, outdir, include);
  const timedOut = [];
  let count;
  try {
    let text = null;
    const counted = await session(`${server.url}/getCaseCount`, WebSocket, 30000, (_, data) => (text ??= data));
    count = Number(text);
    if (!Number.isInteger(count) || count < 1) {
      const close = JSON.stringify(counted.close);
      throw new Error(`getCaseCount answered ${JSON.stringify(text)} (close: ${close}):\n${server.log}`);
    }
    progress(`autobahn: ${count} cases on ${server.url}, report in ${outdir}`);

    // A send after the server's close goes nowhere, and Autobahn judges only what it got.
    const echo = (client, data) => client.send(data).catch(() => {});
    const query = `agent=${encodeURIComponent(agent)}`;
    for (let n = 1; n <= count; n++) {
      const left = giveUpAt - Date.now();
      if (left <= 0) {
        progress(`autobahn: out of time after ${n - 1} of ${count} cases`);
        break;
      }
      const deadline = Math.min(caseTimeoutMs, left);
      const outcome = await session(`${server.url}/runCase?case=${n}&${query}`, WebSocket, deadline, echo);
      if (outcome.timedOut) {
        timedOut.push(n);
        progress(`autobahn: case #${n} did not finish within ${deadline} ms`);
      }
      if (n % 50 === 0) progress(`autobahn: ${n}/${count} cases, ${Math.round((Date.now() - started) / 1000)} s`);
    }
    const reported = await session(`${server.url}/updateReports?${query}`, WebSocket, 60000);
    if (reported.timedOut) progress('autobahn: updateReports did not close within 60 s');
    // kosoku writes the reports (HTML too, for 500+ cases) and then exits.
    if (!(await server.finished(120000))) {
      throw new Error(`kosoku did not finish writing its report within 120 s:\n${server.log}`);
    }
  } finally {
    await server.stop();
  }

  const indexFile = join(outdir, 'index.json');
  if (!existsSync(indexFile)) {
    throw new Error(`kosoku wrote no ${indexFile} (exit ${JSON.stringify(server.status)}):\n${server.log}`);
  }
  const index = JSON.parse(readFileSync(indexFile, 'utf8'));
  const summary = summarize(index, agent, count);
  const entries = index[agent] || {};
  const failed = summary.failed.map((f) => ({ ...f, reason: reasonOf(outdir, f.reportfile) }));
  const slowest = Object.entries(entries)
    .map(([id, e]) => ({ id, ms: e.duration }))
    .sort((a, b) => b.ms - a.ms)
    .slice(0, 5);
  return {
    line: summaryLine(agent, summary),
    ...summary,
    ids: Object.keys(entries).sort(byCaseId),
    failed,
    timedOut,
    seconds: Math.round((Date.now() - started) / 1000),
    cpuSeconds: Math.round(cpuOf(process.cpuUsage(cpuBefore))),
    slowest,
    kosokuExit: server.status,
    kosokuLog: server.log,
    outdir,
  };
}

/** User + system seconds of a process.cpuUsage() difference (every thread of this process). */
function cpuOf({ user, system }) {
  return (user + system) / 1e6;
}

/** Autobahn's own explanation of a case's verdicts, from its JSON report. */
function reasonOf(outdir, reportfile) {
  try {
    const report = JSON.parse(readFileSync(join(outdir, reportfile), 'utf8'));
    return [report.result, report.resultClose].filter(Boolean).join(' / ');
  } catch {
    return '(no case report)';
  }
}

/** Lines describing a run: the summary, its time, and each failing or unimplemented case. */
export function reportLines(run) {
  const lines = [run.line];
  const slowest = run.slowest.map((s) => `${s.id} ${(s.ms / 1000).toFixed(1)} s`).join(', ');
  lines.push(`took ${run.seconds} s (${run.cpuSeconds} s of CPU in this process); slowest cases: ${slowest}`);
  for (const f of run.failed) lines.push(`  FAILED ${f.id}: behavior=${f.behavior} behaviorClose=${f.behaviorClose}: ${f.reason}`);
  if (run.missing) lines.push(`  FAILED ${run.missing} case(s) without a verdict (not run, or no report)`);
  if (run.timedOut.length) lines.push(`  case numbers past their deadline: ${run.timedOut.join(', ')}`);
  if (run.unimplemented.length) lines.push(`  UNIMPLEMENTED: ${run.unimplemented.join(', ')}`);
  // kosoku exits 1 when any case did not pass by its own rule; it should agree with the counts.
  if (run.kosokuExit?.code !== 0) lines.push(`  kosoku exited with ${JSON.stringify(run.kosokuExit)}`);
  return lines;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const values = (flag) => args.flatMap((a, i) => (a === flag && i + 1 < args.length ? [args[i + 1]] : []));
  const run = await runAutobahnClient({
    outdir: values('--outdir')[0] || OUTDIR,
    include: values('--case'),
    WebSocket: await defaultWebSocket({ plain: args.includes('--plain-ws') }),
    progress: (line) => console.error(line),
  });
  for (const line of reportLines(run)) console.log(line);
  process.exitCode = run.counts.FAILED === 0 && run.counts.UNIMPLEMENTED === 0 ? 0 : 1;
}

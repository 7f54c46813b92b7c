// Test harness for the browser tests: the real `tether` binary on a free port (started, signalled
// and stopped by PID), headless Chromium from Debian's package driven by playwright-core, and
// waits with deadlines (never fixed sleeps as synchronisation).
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import net from 'node:net';

const here = dirname(fileURLToPath(import.meta.url));
export const repo = join(here, '..', '..');
export const outputDir = join(repo, 'target', 'test-output');

export const TETHER_BIN = process.env.TETHER_BIN || join(repo, 'target', 'debug', 'tether');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/**
 * Whether the tests run under CI, where a missing piece fails a test instead of skipping it:
 * `CI` set to anything but a "no" (empty, 0, false, no, off, in any case). The Rust tests'
 * `common::ci::means_yes` is the same rule.
 */
export function underCI(value = process.env.CI) {
  const v = (value ?? '').trim().toLowerCase();
  return !['', '0', 'false', 'no', 'off'].includes(v);
}

/**
 * What the browser tests need, or why they cannot run. Under CI a missing piece fails the
 * tests; locally they are skipped, loudly.
 */
export async function requirements() {
  const missing = [];
  if (!existsSync(TETHER_BIN)) missing.push(`the tether binary (${TETHER_BIN}; run cargo build)`);
  if (!existsSync(CHROMIUM)) missing.push(`Chromium (${CHROMIUM}; apt-get install chromium)`);
  let chromium = null;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch {
    missing.push('playwright-core (npm ci in web/)');
  }
  if (missing.length === 0) return { chromium, skip: false };
  const why = `missing: ${missing.join(', ')}; run scripts/test`;
  if (underCI()) throw new Error(`browser tests cannot run under CI: ${why}`);
  console.error(`\n!!!!!!!! SKIPPED browser tests: ${why} !!!!!!!!\n`);
  return { chromium: null, skip: why };
}

/** Poll `cond` (sync or async) until true or `ms` passes. */
export async function waitFor(what, cond, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Follow a promise without awaiting it: `.settled` turns true when it settles, with `.value` or
 * `.reason`; wait for that with `waitFor`, so an unsettled promise fails the test at a deadline.
 */
export function track(promise) {
  const t = { settled: false, status: 'pending', value: undefined, reason: undefined };
  promise.then(
    (value) => Object.assign(t, { settled: true, status: 'fulfilled', value }),
    (reason) => Object.assign(t, { settled: true, status: 'rejected', reason }),
  );
  return t;
}

export const JWT_SECRET = 'browser-test-secret-0123456789';

/** A JWT from `tether token` (the binary signs it; no JWT code in the tests). */
export function token(ttl, subscribe = 'news:*', more = []) {
  const args = ['token', '--secret', JWT_SECRET, '--subscribe', subscribe, '--ttl', ttl, ...more];
  return execFileSync(TETHER_BIN, args).toString().trim();
}

/** A `tether serve` child process. */
export class Server {
  static async start(args = [], listen = '127.0.0.1:0') {
    const s = new Server();
    s.args = args;
    s.log = '';
    s.child = spawn(TETHER_BIN, ['serve', '--listen', listen, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TETHER_LOG: 'info', NO_COLOR: '1' },
    });
    s.child.stderr.on('data', (d) => (s.log += d));
    s.exited = new Promise((resolve) => s.child.on('exit', (code, signal) => resolve({ code, signal })));
    const lines = createInterface({ input: s.child.stdout });
    s.addr = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`tether serve did not start:\n${s.log}`)), 20000);
      lines.on('line', (line) => {
        const m = line.match(/^tether listening on http:\/\/(\S+)/);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      s.child.on('exit', () => reject(new Error(`tether serve exited:\n${s.log}`)));
    });
    return s;
  }

  get http() {
    return `http://${this.addr}`;
  }

  get ws() {
    return `ws://${this.addr}/ws`;
  }

  restart() {
    return Server.start(this.args, this.addr);
  }

  signal(sig) {
    process.kill(this.child.pid, sig);
  }

  async kill9() {
    this.signal('SIGKILL');
    await this.exited;
  }

  async terminate() {
    this.signal('SIGTERM');
    return this.exited;
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      try {
        this.signal('SIGCONT');
      } catch {
        /* gone */
      }
      this.signal('SIGKILL');
      await this.exited;
    }
  }

  async publish(channel, data) {
    const res = await fetch(`${this.http}/api/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ channel, data }),
    });
    const body = await res.json();
    if (!res.ok) throw new Error(`publish failed: ${res.status} ${JSON.stringify(body)}`);
    return body;
  }

  /** The sum of the samples `selector` names in /metrics (see `metricSum`). */
  async metric(selector) {
    return metricSum(await (await fetch(`${this.http}/metrics`)).text(), selector);
  }
}

/**
 * The sum of the samples `selector` names in a /metrics text (OpenMetrics), by exact name and
 * label values, PromQL-style: `name` or `name{label="value",…}`, labels not given summed over.
 * A name that is no sample of any metric throws, instead of reading as 0 or as the sum of other
 * metrics sharing its prefix. Same rules as crates/tether-cli/tests/common/metrics.rs.
 */
export function metricSum(text, selector) {
  const brace = selector.indexOf('{');
  const name = brace < 0 ? selector : selector.slice(0, brace);
  let wanted = [];
  if (brace >= 0) {
    const parsed = parseLabels(selector.slice(brace + 1));
    if (!parsed || parsed.rest !== '') throw new Error(`bad metric selector ${selector}: write name{label="value",…}`);
    wanted = parsed.labels;
  }
  checkMetricName(text, name);
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const end = line.search(/[{ ]/);
    if (end < 0 || line.slice(0, end) !== name) continue;
    let labels = [];
    let rest = line.slice(end);
    if (rest.startsWith('{')) {
      const parsed = parseLabels(rest.slice(1));
      if (!parsed) continue;
      ({ labels, rest } = parsed);
    }
    if (!wanted.every(([k, v]) => labels.some(([lk, lv]) => lk === k && lv === v))) continue;
    sum += Number(rest.trim().split(/\s+/)[0]);
  }
  return sum;
}

/** `a="x",b="y"}…` → the labels (values unescaped) and what follows the `}`; null if malformed. */
function parseLabels(s) {
  const labels = [];
  for (;;) {
    if (s.startsWith('}')) return { labels, rest: s.slice(1) };
    const eq = s.indexOf('="');
    if (eq < 0) return null;
    const key = s.slice(0, eq).trim();
    let value = '';
    let i = eq + 2;
    for (;; i++) {
      if (i >= s.length) return null;
      if (s[i] === '"') break;
      if (s[i] === '\\') {
        i++;
        value += s[i] === 'n' ? '\n' : (s[i] ?? '');
      } else value += s[i];
    }
    labels.push([key, value]);
    s = s.slice(i + 1);
    if (s.startsWith(',')) s = s.slice(1);
  }
}

/** The sample names each OpenMetrics type has, after its family's name. */
function sampleSuffixes(kind) {
  switch (kind) {
    case 'counter': return ['_total', '_created'];
    case 'histogram': case 'gaugehistogram': return ['_bucket', '_sum', '_count', '_created'];
    case 'summary': return ['', '_sum', '_count', '_created'];
    case 'info': return ['_info'];
    default: return [''];
  }
}

let registeredFamilies = null;
/** The metric families tether-server registers: the string after each `.register(` in its source. */
export function registeredMetrics() {
  if (registeredFamilies) return registeredFamilies;
  const src = join(repo, 'crates', 'tether-server', 'src');
  registeredFamilies = new Set();
  for (const file of readdirSync(src, { recursive: true })) {
    if (!String(file).endsWith('.rs')) continue;
    for (const m of readFileSync(join(src, String(file)), 'utf8').matchAll(/\.register\(\s*"([^"]+)"/g)) registeredFamilies.add(m[1]);
  }
  if (!registeredFamilies.has('tether_connections_open')) throw new Error(`no metric found in ${src}`);
  return registeredFamilies;
}

/**
 * Throw unless `name` is a sample name of a metric: of a family in the text (by its type), or,
 * for a family the text does not show (a labelled one with no series yet), of one the server
 * registers.
 */
function checkMetricName(text, name) {
  const families = text.split('\n').filter((l) => l.startsWith('# TYPE ')).map((l) => l.slice(7).split(' '));
  const sampleOf = ([family, kind]) => name.startsWith(family) && sampleSuffixes(kind).includes(name.slice(family.length));
  if (families.some(sampleOf)) return;
  const candidates = [name, ...['_total', '_bucket', '_sum', '_count'].filter((s) => name.endsWith(s)).map((s) => name.slice(0, -s.length))];
  const shown = families.filter(([family]) => candidates.includes(family))
    .flatMap(([family, kind]) => sampleSuffixes(kind).map((s) => family + s));
  if (shown.length === 0 && candidates.some((c) => registeredMetrics().has(c))) return;
  throw new Error(`no metric sample is named ${name}${shown.length ? ` (its family's samples: ${shown.join(', ')})` : ''}; `
    + 'give a sample\'s exact name (a counter\'s ends in _total; a histogram\'s in _bucket, _sum or _count)');
}

/**
 * A fresh headless Chromium profile (persistent context: a new, empty user-data-dir).
 * `bfcache: true` keeps the back/forward cache on (playwright turns it off by default).
 *
 * Pages get `/tether.js` from web/ as it is now, not the copy the binary embedded when it was
 * built: the tests are of the client in the tree, and a binary may be older than it.
 */
export async function browser(chromium, { bfcache = false } = {}) {
  const ctx = await launch(chromium, bfcache);
  for (const file of ['tether.js', 'tether-fallback.js']) {
    const name = new RegExp(`/${file.replace('.', '\\.')}$`);
    await ctx.route(name, (route) => route.fulfill({ path: join(here, '..', file), contentType: 'text/javascript; charset=utf-8' }));
  }
  return ctx;
}

async function launch(chromium, bfcache) {
  const profile = mkdtempSync(join(tmpdir(), 'tether-chr-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    ignoreDefaultArgs: bfcache ? ['--disable-back-forward-cache'] : [],
    viewport: { width: 1360, height: 1000 },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  // The profile is this test's alone: gone once the browser has exited (`close` resolves then;
  // the context's 'close' event comes earlier, while Chromium still writes to it).
  const close = ctx.close.bind(ctx);
  ctx.close = async (...args) => {
    await close(...args);
    try {
      rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
    } catch (e) {
      console.error(`# could not remove the browser profile ${profile}: ${e.message}`);
    }
  };
  return ctx;
}

/**
 * Open a same-origin page and start a tether.js client in it that records every event into
 * `window.events`. Returns the page.
 */
export async function pageWithClient(ctx, server, options, channels = [], url = server.ws) {
  const page = await ctx.newPage();
  await page.goto(`${server.http}/healthz`);
  await page.evaluate(
    async ({ url, options, channels }) => {
      const { TetherClient } = await import('/tether.js');
      window.events = [];
      const client = new TetherClient(url, options);
      for (const type of ['state', 'open', 'close', 'subscribed', 'publication', 'message', 'rtt', 'stopped', 'error']) {
        client.on(type, (detail) => window.events.push({ type, detail, at: Date.now() }));
      }
      window.client = client;
      await Promise.all(channels.map((c) => client.subscribe(c)));
    },
    { url, options, channels },
  );
  return page;
}

/** Events of `type` recorded so far in the page. */
export function events(page, type) {
  return page.evaluate((type) => window.events.filter((e) => e.type === type), type);
}

/** Wait until the page has recorded at least `count` events of `type`; returns them. */
export async function waitEvents(page, type, count = 1, ms = 10000) {
  let got = [];
  await waitFor(`${count} '${type}' event(s)`, async () => (got = await events(page, type)).length >= count, ms);
  return got;
}

export function ensureOutputDir() {
  mkdirSync(outputDir, { recursive: true });
  return outputDir;
}

/**
 * A real `redis-server` on a free loopback port, without persistence, in a temp dir; stopped by
 * PID. Missing: the test fails under CI and is skipped (loudly) otherwise, like the browser.
 */
export class Redis {
  static bin() {
    for (const dir of ['/usr/bin', '/usr/local/bin', '/usr/sbin']) {
      if (existsSync(join(dir, 'redis-server'))) return join(dir, 'redis-server');
    }
    return null;
  }

  static async start() {
    const bin = Redis.bin();
    if (!bin) {
      const why = 'redis-server is missing (apt-get install redis-server; scripts/test does)';
      if (underCI()) throw new Error(why);
      console.error(`\n!!!!!!!! SKIPPED: ${why} !!!!!!!!\n`);
      return null;
    }
    const r = new Redis();
    const probe = net.createServer();
    await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve));
    r.port = probe.address().port;
    await new Promise((resolve) => probe.close(resolve));
    r.dir = mkdtempSync(join(tmpdir(), 'tether-redis-'));
    r.child = spawn(bin, ['--port', String(r.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', r.dir], {
      stdio: 'ignore',
    });
    r.exited = new Promise((resolve) => r.child.on('exit', resolve));
    await waitFor('redis-server to accept connections', () => new Promise((resolve) => {
      const c = net.connect(r.port, '127.0.0.1', () => {
        c.end();
        resolve(true);
      });
      c.on('error', () => resolve(false));
    }));
    return r;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  async stop() {
    process.kill(this.child.pid, 'SIGKILL');
    await this.exited;
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * A TCP relay between a client and the server, to cut the client's connection while the server
 * (and its history) keeps running — a network drop without a restart. While `blocked`, new
 * connections are refused (closed at once).
 */
export class Relay {
  static async start(target) {
    const net = await import('node:net');
    const [host, port] = target.split(':');
    const r = new Relay();
    r.sockets = new Set();
    r.blocked = false;
    r.server = net.createServer((client) => {
      if (r.blocked) {
        client.destroy();
        return;
      }
      const upstream = net.connect(Number(port), host);
      for (const s of [client, upstream]) {
        r.sockets.add(s);
        s.on('close', () => r.sockets.delete(s));
        s.on('error', () => {});
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise((resolve) => r.server.listen(0, '127.0.0.1', resolve));
    r.addr = `127.0.0.1:${r.server.address().port}`;
    return r;
  }

  /** Drop every relayed connection (both legs) and refuse new ones until `unblock()`. */
  cut() {
    this.blocked = true;
    for (const s of this.sockets) s.destroy();
  }

  unblock() {
    this.blocked = false;
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

/**
 * A real nginx in the foreground (`daemon off`, its own config and temp dir, a free port)
 * proxying everything, WebSockets included, to `target` with `proxy_read_timeout`; stopped by
 * PID. `Nginx.start` returns null when nginx is missing (an error under CI).
 */
export class Nginx {
  /**
   * `refuseUpgrades`: answer every WebSocket upgrade with 403, as some corporate proxies and
   * balancers do (plain HTTP still passes); `setUpgrades(true)` lets them through again.
   */
  static async start(target, readTimeout, { refuseUpgrades = false } = {}) {
    const { existsSync, writeFileSync } = await import('node:fs');
    const bin = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p));
    if (!bin) {
      if (underCI()) throw new Error('nginx is missing (apt-get install nginx; scripts/test does)');
      console.error('\n!!!!!!!! SKIPPED: nginx is missing (apt-get install nginx) !!!!!!!!\n');
      return null;
    }
    const net = await import('node:net');
    const port = await new Promise((resolve) => {
      const probe = net.createServer().listen(0, '127.0.0.1', () => {
        const p = probe.address().port;
        probe.close(() => resolve(p));
      });
    });
    const dir = mkdtempSync(join(tmpdir(), 'tether-nginx-'));
    const n = new Nginx();
    n.conf = (refuse) => `daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events {}
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  server {
    listen 127.0.0.1:${port};
    location / {
      ${refuse ? 'if ($http_upgrade != "") { return 403; }' : ''}
      proxy_pass http://${target};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout ${readTimeout};
    }
  }
}
`;
    writeFileSync(join(dir, 'nginx.conf'), n.conf(refuseUpgrades));
    n.addr = `127.0.0.1:${port}`;
    n.dir = dir;
    n.child = spawn(bin, ['-p', dir, '-e', join(dir, 'error.log'), '-c', join(dir, 'nginx.conf')], { stdio: 'ignore' });
    n.exited = new Promise((resolve) => n.child.on('exit', resolve));
    await waitFor('nginx listening', () => new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    }));
    return n;
  }

  get ws() {
    return `ws://${this.addr}/ws`;
  }

  /** Let WebSocket upgrades through (`true`) or refuse them with 403; returns once in force. */
  async setUpgrades(allowed) {
    const { writeFileSync } = await import('node:fs');
    const { default: WebSocket } = await import('ws');
    writeFileSync(join(this.dir, 'nginx.conf'), this.conf(!allowed));
    process.kill(this.child.pid, 'SIGHUP'); // reload
    const opens = () => new Promise((resolve) => {
      const ws = new WebSocket(this.ws, ['tether.v1.json']);
      ws.on('open', () => { ws.terminate(); resolve(true); });
      ws.on('error', () => resolve(false));
    });
    await waitFor(`nginx ${allowed ? 'allowing' : 'refusing'} upgrades`, async () => (await opens()) === allowed);
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      process.kill(this.child.pid, 'SIGQUIT');
      await this.exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

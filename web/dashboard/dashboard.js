// The dashboard: a tether.js client subscribed to `_tether:dashboard`, where the server publishes
// a snapshot (figures plus server-rendered SVG charts) once a second; and a playground client.
// `?ping=MS&timeout=MS` shortens the heartbeat (tests use it).
import { TetherClient, closeCodeInfo } from '/tether.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const heartbeat = {
  pingInterval: Number(params.get('ping')) || 5000,
  pongTimeout: Number(params.get('timeout')) || 5000,
};
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;

const fmtBytes = (b) => (b >= 1 << 30 ? `${(b / (1 << 30)).toFixed(2)} GiB` : `${(b / (1 << 20)).toFixed(1)} MiB`);
const fmtMs = (ms) => (ms == null ? '–' : ms < 10 ? ms.toFixed(2) : ms.toFixed(1));

function setPill(el, state) {
  el.textContent = state;
  el.className = `pill pill-${state}`;
}

// --- live feed --------------------------------------------------------------------------------

const feed = new TetherClient(wsUrl, heartbeat);
feed.on('state', ({ state }) => setPill($('feed-state'), state));
feed.on('rtt', ({ ms }) => ($('feed-rtt').textContent = `${fmtMs(ms)} ms`));
feed.subscribe('_tether:dashboard', render).catch((e) => console.error('dashboard feed refused:', e));

let lastSnapshot = null;
function render(s) {
  lastSnapshot = s;
  $('kpi-connections').textContent = s.connections;
  $('kpi-accepted').textContent = `${s.accepted} accepted since start`;
  $('kpi-rate').textContent = s.messages_per_sec.toFixed(s.messages_per_sec < 10 ? 1 : 0);
  $('kpi-publications').textContent = `${s.publications} publications`;
  $('kpi-rtt').textContent = s.rtt_p50_ms == null ? '–' : `${fmtMs(s.rtt_p50_ms)} · ${fmtMs(s.rtt_p99_ms)} ms`;
  $('kpi-timeouts').textContent = `${s.heartbeat_timeouts} heartbeat timeouts`;
  $('kpi-rss').textContent = s.rss_bytes == null ? '–' : fmtBytes(s.rss_bytes);
  if (s.heap_bytes != null) $('kpi-heap').textContent = `heap ${fmtBytes(s.heap_bytes)} · as in /metrics`;
  $('chart-connections').innerHTML = s.charts.connections;
  $('chart-messages').innerHTML = s.charts.messages;
  $('chart-rtt').innerHTML = s.charts.rtt;
  $('chart-memory').innerHTML = s.charts.memory;
  renderCloses(s.closes);
  renderChannels(s.channels || []);
}

function renderChannels(channels) {
  const body = $('channels');
  if (!channels.length) return;
  const max = Math.max(...channels.map((c) => c.subscribers));
  // Presence: every subscription there is an entry; join/leave: subscribers hear changes.
  const kind = (c) => (c.join_leave ? 'presence, join/leave' : c.presence ? 'presence' : '–');
  body.replaceChildren(...channels.map((c) => barRow([c.name, String(c.subscribers), kind(c)], 1, c.subscribers / max)));
}

function renderCloses(closes) {
  const body = $('closes');
  if (!closes.length) return;
  const max = Math.max(...closes.map((c) => c.count));
  body.replaceChildren(
    ...closes
      .slice()
      .sort((a, b) => b.count - a.count)
      .map((c) => {
        const tr = barRow([c.code, c.name, c.initiator, String(c.count)], 3, c.count / max);
        tr.className = c.code === '1006' || c.code === '4000' ? 'abnormal' : c.code === '1000' || c.code === '1001' ? 'clean' : '';
        return tr;
      }),
  );
}

/** A table row of `cells` (the one at `numIndex` right-aligned) and a bar `share` (0–1) wide. */
function barRow(cells, numIndex, share) {
  const tr = document.createElement('tr');
  for (const [i, text] of cells.entries()) {
    const td = document.createElement('td');
    td.textContent = text;
    if (i === numIndex) td.className = 'num';
    tr.append(td);
  }
  const bar = document.createElement('td');
  bar.className = 'bar';
  const span = document.createElement('span');
  span.style.width = `${Math.max(4, 100 * share)}%`;
  bar.append(span);
  tr.append(bar);
  return tr;
}

// --- playground -------------------------------------------------------------------------------

let play = null;
const log = (cls, text) => {
  const li = document.createElement('li');
  li.className = cls;
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  const list = $('play-log');
  list.prepend(li);
  while (list.children.length > 60) list.lastChild.remove();
};

function describeClose(c) {
  return `last close: ${c.code} (${closeCodeInfo(c.code).name}) · reason "${c.reason}" · wasClean=${c.wasClean} · by ${c.initiator}`;
}

$('play-connect').onclick = () => {
  if (play && play.state !== 'closed') return;
  if (play) play.dispose(); // its window listeners go with it
  play = new TetherClient(wsUrl, heartbeat);
  play.on('state', ({ state }) => {
    setPill($('play-state'), state);
    $('play-connect').disabled = state !== 'closed';
    $('play-disconnect').disabled = state === 'closed';
  });
  play.on('open', ({ reconnected }) => log('sys', reconnected ? 'reconnected' : 'open'));
  play.on('subscribed', ({ channel, resubscribe, recovered }) => {
    const how = recovered === true ? ' (recovered every missed publication)' : recovered === false ? ' (not recovered: refetch)' : '';
    log('sys', `${resubscribe ? 'resubscribed' : 'subscribed'} to ${channel}${how}`);
  });
  play.on('close', (c) => {
    $('play-close').textContent = describeClose(c);
    log(c.wasClean ? 'sys' : 'err', `closed ${c.code} ${c.reason}${c.willReconnect ? '' : ' — not reconnecting'}`);
  });
  play.on('error', (e) => log('err', `${e.code}: ${e.message}`));
  play.on('stopped', ({ reason }) => log('sys', `stopped: ${reason}`));
};

$('play-disconnect').onclick = () => play && play.close();

$('play-subscribe').onclick = () => {
  if (!play || play.state === 'closed') $('play-connect').onclick();
  const channel = $('play-channel').value.trim();
  play.subscribe(channel, (data, p) => log('in', `[${p.channel} #${p.offset}] ${JSON.stringify(data)}`)).catch((e) => log('err', e.message));
};

$('play-publish').onclick = async () => {
  const channel = $('play-channel').value.trim();
  let data = $('play-data').value;
  try {
    data = JSON.parse(data);
  } catch {
    /* sent as a string */
  }
  const res = await fetch('/api/publish', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel, data }) });
  const body = await res.json();
  log(res.ok ? 'out' : 'err', res.ok ? `published to ${channel}: delivered to ${body.delivered}` : body.error);
};

// The reconnect countdown, from the client's own schedule.
setInterval(() => {
  const el = $('play-countdown');
  if (play && play.state === 'reconnecting' && play.nextRetryAt) {
    const left = Math.max(0, play.nextRetryAt - Date.now()) / 1000;
    el.textContent = `reconnecting in ${left.toFixed(1)} s (attempt ${play.lastClose ? play.lastClose.attempt : 1})`;
  } else if (play && play.state === 'reconnecting' && play.waitingForOnline) {
    el.textContent = 'offline: waiting for the network…';
  } else if (play && play.state === 'reconnecting') {
    el.textContent = `connecting (attempt ${play.lastClose ? play.lastClose.attempt : 1})…`;
  } else {
    el.textContent = '';
  }
}, 100);

// For tests and curious operators.
window.tetherDashboard = { feed, get play() { return play; }, get snapshot() { return lastSnapshot; } };

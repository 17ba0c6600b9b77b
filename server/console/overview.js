// The overview: a card per host with live CPU, memory, disk, network and temperature
// sparklines and a reachability dot. Rows come through one subscription per host source; the
// sparklines' first minutes through one query. Hosts with firing alerts come first.

import * as api from './api.js';
import { h, num, bytes } from './ui.js';
import { sparkline } from './charts.js';

/** How far back the sparklines reach, ms. */
const SPAN = 5 * 60 * 1000;
/** The live subscription's window: its snapshot is this much, the rest comes from the query. */
const LIVE = '15 seconds';

const METRICS = [
  { key: 'cpu', label: 'CPU', max: 100, fmt: (v) => `${num(v)}%` },
  { key: 'mem', label: 'Mem', max: 100, fmt: (v) => `${num(v)}%` },
  { key: 'disk', label: 'Disk', max: 100, fmt: (v) => `${num(v)}%` },
  { key: 'netRate', label: 'Net', fmt: (v) => `${bytes(v)}/s` },
  { key: 'temp', label: 'Temp', fmt: (v) => `${num(v)}°C` },
];

/** One row per host and sample: the card's figures, pivoted from `(host, metric, device, value, ts)`. */
export function pivot(source, where) {
  return `SELECT host, ts,
  max(CASE WHEN metric = 'cpu_percent' AND device = '' THEN value END) AS cpu,
  max(CASE WHEN metric = 'mem_used_percent' THEN value END) AS mem,
  max(CASE WHEN metric = 'disk_used_percent' THEN value END) AS disk,
  sum(CASE WHEN (metric = 'net_rx_bytes' OR metric = 'net_tx_bytes') AND device <> 'lo' THEN value END) AS net,
  max(CASE WHEN metric = 'temperature_celsius' THEN value END) AS temp
FROM ${api.ident(source)} WHERE ${where} GROUP BY host, ts`;
}

export async function mount(el, _rest, _params, { status }) {
  // What the tests and the benchmark read: rows applied, the most a sample waited from its
  // timestamp to being applied (maxLagMs) and painted (paintLagMs), draws and their time, and
  // when the first cards were painted (ms since the page's navigation began).
  const stats = { hosts: 0, rows: 0, maxLagMs: 0, paintLagMs: 0, draws: 0, drawMs: 0, firstRenderMs: null };
  window.tocsinConsole.stats = stats;
  const cat = await api.catalog();
  const sources = api.hostSources(cat);
  const grid = h('div', { class: 'cards' });
  el.append(h('h1', {}, 'Hosts ', h('span', { class: 'muted', id: 'host-count' })), grid);
  if (!sources.length) {
    el.append(h('p', {}, 'No host source yet: ', h('code', {}, "CREATE SOURCE host FROM HOST WITH (interval = '5s')"), ', and run ', h('code', {}, 'tocsin agent'), ' on other machines.'));
    return () => {};
  }
  const hosts = new Map();
  const dirty = new Set();
  const visible = new Set();
  const firing = new Map();
  // Set when a host appears or a host's firing count changes: only then are the cards sorted.
  let reorder = true;
  const seen = new IntersectionObserver((entries) => {
    for (const e of entries) {
      const name = e.target.dataset.host;
      if (e.isIntersecting) { visible.add(name); dirty.add(name); } else visible.delete(name);
    }
    schedule();
  });

  function card(name) {
    let c = hosts.get(name);
    if (c) return c;
    const rows = METRICS.map((m) => {
      const value = h('span', { class: 'v' }, '–');
      const canvas = h('canvas', { class: 'spark' });
      return { m, value, canvas, row: h('div', { class: 'm' }, h('span', { class: 'k' }, m.label), canvas, value) };
    });
    const dot = h('span', { class: 'dot', title: 'reachability' });
    const badge = h('span', { class: 'badge', hidden: true });
    const node = h('a', { class: 'card', href: `#/host/${encodeURIComponent(name)}`, 'data-host': name },
      h('div', { class: 'head' }, dot, h('b', {}, name), badge), rows.map((r) => r.row));
    c = { name, points: [], node, rows, dot, badge, last: 0, up: null };
    hosts.set(name, c);
    reorder = true;
    seen.observe(node);
    stats.hosts = hosts.size;
    return c;
  }

  /** Puts a sample into its host's points, in time order (a sample of the same time replaces). */
  function put(row) {
    const c = card(row.host);
    const t = new Date(row.ts).getTime();
    const point = { t, cpu: row.cpu, mem: row.mem, disk: row.disk, net: row.net, temp: row.temp };
    const p = c.points;
    let i = p.length;
    while (i > 0 && p[i - 1].t > t) i -= 1;
    if (i > 0 && p[i - 1].t === t) p[i - 1] = point;
    else p.splice(i, 0, point);
    while (p.length && p[0].t < t - SPAN) p.shift();
    c.last = Math.max(c.last, t);
    dirty.add(row.host);
    return t;
  }

  function series(c, key) {
    if (key !== 'netRate') return c.points.map((p) => p[key]);
    return c.points.map((p, i) => {
      if (i === 0) return null;
      const q = c.points[i - 1];
      const dt = (p.t - q.t) / 1000;
      return dt > 0 && p.net >= q.net ? (p.net - q.net) / dt : null;
    });
  }

  /** The newest figure only, as a one-element series. */
  function latest(c, key) {
    const n = c.points.length;
    if (!n) return [];
    if (key !== 'netRate') return [c.points[n - 1][key]];
    if (n < 2) return [null];
    const [q, p] = [c.points[n - 2], c.points[n - 1]];
    const dt = (p.t - q.t) / 1000;
    return [dt > 0 && p.net >= q.net ? (p.net - q.net) / dt : null];
  }

  /** Down when no sample came within 3 of the host's intervals (their median, 5 s until known). */
  function reachable(c, now) {
    const gaps = [];
    for (let i = Math.max(1, c.points.length - 8); i < c.points.length; i += 1) gaps.push(c.points[i].t - c.points[i - 1].t);
    gaps.sort((a, b) => a - b);
    const interval = Math.max(1000, gaps.length ? gaps[gaps.length >> 1] : 5000);
    return now - c.last <= 3 * interval;
  }

  function sort() {
    if (!reorder) return;
    reorder = false;
    const names = [...hosts.keys()].sort((a, b) => (firing.get(b) || 0) - (firing.get(a) || 0) || (a < b ? -1 : a > b ? 1 : 0));
    grid.replaceChildren(...names.map((n) => hosts.get(n).node));
    el.querySelector('#host-count').textContent = `(${names.length})`;
  }

  let frame = 0;
  function schedule() { if (!frame) frame = requestAnimationFrame(draw); }
  function draw() {
    frame = 0;
    const began = performance.now();
    sort();
    const now = Date.now();
    for (const name of dirty) {
      const c = hosts.get(name);
      if (!c) continue;
      const lastPoint = c.points[c.points.length - 1] || {};
      const shown = visible.has(name);
      for (const r of c.rows) {
        // A card out of view updates its figures only; its sparklines when it comes into view.
        const s = shown ? series(c, r.m.key) : latest(c, r.m.key);
        const v = s.length ? s[s.length - 1] : null;
        const text = v === null || v === undefined ? '–' : r.m.fmt(v);
        if (r.value.textContent !== text) r.value.textContent = text;
        if (shown) sparkline(r.canvas, s, r.m.max);
      }
      const n = firing.get(name) || 0;
      c.badge.hidden = n === 0;
      c.badge.textContent = `${n} firing`;
      c.node.classList.toggle('alerting', n > 0);
      if (lastPoint.t && stats.firstRenderMs !== null) stats.paintLagMs = Math.max(stats.paintLagMs, now - c.last);
    }
    dirty.clear();
    checkReach(now);
    stats.draws += 1;
    stats.drawMs += performance.now() - began;
    if (stats.firstRenderMs === null && hosts.size) stats.firstRenderMs = Math.round(performance.now());
  }

  function checkReach(now) {
    for (const c of hosts.values()) {
      const up = reachable(c, now);
      if (up !== c.up) {
        c.up = up;
        c.dot.className = `dot ${up ? 'up' : 'down'}`;
        c.dot.title = up ? 'reachable' : 'no sample within 3 intervals';
      }
    }
  }

  const subs = [];
  for (const source of sources) {
    subs.push(api.subscribe(pivot(source, `ts > now() - INTERVAL '${LIVE}'`), (changes, reset) => {
      const now = Date.now();
      for (const { row, diff } of changes) {
        if (diff <= 0) continue; // a sample leaving the live window stays on the sparkline
        const t = put(row);
        stats.rows += 1;
        if (!reset) {
          const lag = now - t;
          stats.maxLagMs = Math.max(stats.maxLagMs, lag);
        }
      }
      schedule();
    }, status));
    // The sparklines' earlier minutes, 10 s a point.
    api.query(`SELECT host, date_bin(INTERVAL '10 seconds', ts) AS ts, avg(cpu) AS cpu, avg(mem) AS mem,
  max(disk) AS disk, max(net) AS net, max(temp) AS temp
FROM (${pivot(source, "ts > now() - INTERVAL '5 minutes'")}) AS p GROUP BY host, date_bin(INTERVAL '10 seconds', ts)`)
      .then((rows) => { for (const r of rows) if (!hosts.get(r.host)?.points.some((p) => Math.abs(p.t - new Date(r.ts).getTime()) < 10000)) put(r); schedule(); })
      .catch(() => {});
  }
  subs.push(api.subscribe('SELECT rule, labels, state FROM tocsin_alerts', (changes, reset) => {
    if (reset) { firing.clear(); reorder = true; }
    for (const { row, diff } of changes) {
      if (row.state !== 'firing') continue;
      let labels = {};
      try { labels = JSON.parse(row.labels); } catch { /* not JSON */ }
      if (!labels.host) continue;
      firing.set(labels.host, (firing.get(labels.host) || 0) + diff);
      dirty.add(labels.host);
      reorder = true;
    }
    schedule();
  }));
  const timer = setInterval(() => checkReach(Date.now()), 1000);
  return () => { subs.forEach((s) => s.close()); seen.disconnect(); clearInterval(timer); if (frame) cancelAnimationFrame(frame); };
}

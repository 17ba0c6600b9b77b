// One host: a chart per metric over 5 minutes, 1 hour, 24 hours or 7 days (longer ranges read
// the rollup views `<source>_1m` and `<source>_1h` where they exist), an overlay of the same
// range yesterday, and the host's alerts. The 5-minute range follows new samples live.

import * as api from './api.js';
import { h, num, bytes, labels, ago } from './ui.js';
import { timeChart, rate, color } from './charts.js';

const RANGES = { '5m': 300, '1h': 3600, '24h': 86400, '7d': 604800 };

const CHARTS = [
  { title: 'CPU busy %', metrics: ['cpu_percent'], keep: (r) => r.device === '', label: () => 'all CPUs', fmt: (v) => num(v) },
  { title: 'Load', metrics: ['load_1m', 'load_5m', 'load_15m'], label: (r) => r.metric.replace('load_', ''), fmt: (v) => num(v, 2) },
  { title: 'Memory used %', metrics: ['mem_used_percent', 'swap_used_percent'], label: (r) => (r.metric === 'mem_used_percent' ? 'memory' : 'swap'), fmt: (v) => num(v) },
  { title: 'Disk used %', metrics: ['disk_used_percent'], label: (r) => r.device, fmt: (v) => num(v) },
  { title: 'Network, bytes/s', metrics: ['net_rx_bytes', 'net_tx_bytes'], keep: (r) => r.device !== 'lo', label: (r) => `${r.device} ${r.metric === 'net_rx_bytes' ? 'in' : 'out'}`, counter: true, fmt: (v) => bytes(v) },
  { title: 'Temperature °C', metrics: ['temperature_celsius'], label: (r) => r.device, fmt: (v) => num(v) },
];
const ALL = CHARTS.flatMap((c) => c.metrics);

/** The query for a host's samples between `from` and `to` seconds ago, from the best tier. */
export function rangeQuery(cat, source, hostName, seconds, shift = 0) {
  const views = new Set(cat.views.map((v) => v.name));
  const bounds = `ts > now() - INTERVAL '${seconds + shift} seconds'${shift ? ` AND ts <= now() - INTERVAL '${shift} seconds'` : ''}`;
  const where = `host = ${api.lit(hostName)} AND metric IN (${ALL.map(api.lit).join(', ')}) AND ${bounds}`;
  const tier = seconds > 86400 ? `${source}_1h` : `${source}_1m`;
  if (seconds > 300 && views.has(tier)) return `SELECT metric, device, avg AS value, ts FROM ${api.ident(tier)} WHERE ${where}`;
  if (seconds > 300 && views.has(`${source}_1m`)) return `SELECT metric, device, avg AS value, ts FROM ${api.ident(`${source}_1m`)} WHERE ${where}`;
  if (seconds <= 300) return `SELECT metric, device, value, ts FROM ${api.ident(source)} WHERE ${where}`;
  const bin = `date_bin(INTERVAL '${Math.max(10, seconds / 300)} seconds', ts)`;
  return `SELECT metric, device, avg(value) AS value, ${bin} AS ts FROM ${api.ident(source)} WHERE ${where} GROUP BY metric, device, ${bin}`;
}

/** Rows into the charts' series: `{chart index: [{label, points}]}`. */
function seriesOf(rows, shiftMs = 0) {
  const out = CHARTS.map(() => new Map());
  for (const r of rows) {
    const i = CHARTS.findIndex((c) => c.metrics.includes(r.metric) && (!c.keep || c.keep(r)));
    if (i < 0 || r.value === null) continue;
    const label = CHARTS[i].label(r);
    if (!out[i].has(label)) out[i].set(label, []);
    out[i].get(label).push([new Date(r.ts).getTime() + shiftMs, r.value]);
  }
  return out.map((m, i) => [...m.entries()].sort().map(([label, points]) => {
    points.sort((a, b) => a[0] - b[0]);
    return { label, points: CHARTS[i].counter ? rate(points) : points };
  }));
}

export async function mount(el, rest, params, { status }) {
  const name = rest.join('/');
  const range = RANGES[params.range] ? params.range : '5m';
  const compare = params.compare === '1';
  const cat = await api.catalog();
  const source = params.source || api.hostSources(cat)[0];
  const link = (p) => `#/host/${encodeURIComponent(name)}?${new URLSearchParams({ range, ...(compare ? { compare: '1' } : {}), ...p })}`;
  const toggle = h('input', { type: 'checkbox', id: 'compare', checked: compare, onchange: (e) => { location.hash = link({ compare: e.target.checked ? '1' : '0' }); } });
  el.append(
    h('h1', {}, h('a', { href: '#/' }, 'Hosts'), ' / ', name),
    h('div', { class: 'toolbar' },
      Object.keys(RANGES).map((r) => h('a', { class: `btn${r === range ? ' active' : ''}`, href: link({ range: r }), 'data-range': r }, r)),
      h('label', {}, toggle, ' compare with yesterday')),
  );
  const alertBox = h('div', { class: 'host-alerts' });
  el.append(h('h2', {}, 'Alerts'), alertBox);
  const procBox = h('div', { id: 'processes' });
  const procRelation = source && cat.sources.some((s) => s.name === `${source}_processes`) ? `${source}_processes` : null;
  const grid = h('div', { class: 'charts' });
  el.append(grid);
  if (procRelation) el.append(h('h2', {}, 'Processes'), procBox);
  if (!source) {
    grid.append(h('p', {}, 'No host source.'));
    return () => {};
  }
  const seconds = RANGES[range];
  const [rows, old] = await Promise.all([
    api.query(rangeQuery(cat, source, name, seconds)),
    compare ? api.query(rangeQuery(cat, source, name, seconds, 86400)) : Promise.resolve([]),
  ]);
  const charts = [];
  let live = rows;
  const build = () => {
    const today = seriesOf(live);
    const yesterday = seriesOf(old, 86400 * 1000);
    return CHARTS.map((c, i) => [
      ...today[i].map((s, j) => ({ ...s, color: color(j) })),
      ...yesterday[i].map((s, j) => ({ ...s, label: `${s.label} (yesterday)`, dash: true, color: color(j) })),
    ]);
  };
  build().forEach((series, i) => {
    if (!series.length) return;
    const box = h('div', { class: 'chart', 'data-chart': CHARTS[i].title });
    grid.append(box);
    charts.push([i, timeChart(box, CHARTS[i].title, series, CHARTS[i].fmt, RANGES[range], CHARTS[i].counter ? CHARTS[i].fmt : null)]);
  });
  if (!charts.length) grid.append(h('p', { class: 'muted' }, `No samples of ${name} in the last ${range}.`));
  window.tocsinConsole.stats = { charts: charts.length, rows: rows.length, yesterdayRows: old.length };
  const subs = [];
  subs.push(api.subscribe('SELECT rule, labels, state, summary, active_since, firing_since, updated_at FROM tocsin_alerts', (changes, reset) => {
    if (reset) alertBox.replaceChildren();
    const all = alertBox.alerts || new Map();
    if (reset) all.clear();
    for (const { row, diff } of changes) {
      const key = `${row.rule} ${row.labels}`;
      if (JSON.parse(row.labels).host !== name) continue;
      if (diff > 0) all.set(key, row); else if (all.get(key)?.updated_at === row.updated_at) all.delete(key);
    }
    alertBox.alerts = all;
    alertBox.replaceChildren(...(all.size ? [...all.values()].map((a) => h('div', { class: `alert ${a.state}` },
      h('span', { class: `state ${a.state}` }, a.state), ' ', h('b', {}, a.rule), ' ', labels(JSON.parse(a.labels)), ' ', a.summary || '', ' ',
      h('span', { class: 'muted' }, `since ${ago(a.firing_since || a.active_since)}`))) : [h('p', { class: 'muted' }, 'None.')]));
  }));
  if (procRelation) subs.push(processTable(procRelation, name, procBox));
  if (range === '5m') {
    let redraw = 0;
    subs.push(api.subscribe(`SELECT metric, device, value, ts FROM ${api.ident(source)} WHERE host = ${api.lit(name)} AND metric IN (${ALL.map(api.lit).join(', ')}) AND ts > now() - INTERVAL '10 seconds'`, (changes) => {
      const fresh = changes.filter((c) => c.diff > 0).map((c) => c.row);
      if (!fresh.length) return;
      const keep = Date.now() - 300 * 1000;
      const have = new Set(live.map((r) => `${r.metric} ${r.device} ${r.ts}`));
      live = live.concat(fresh.filter((r) => !have.has(`${r.metric} ${r.device} ${r.ts}`))).filter((r) => new Date(r.ts).getTime() > keep);
      if (!redraw) {
        redraw = setTimeout(() => {
          redraw = 0;
          const all = build();
          for (const [i, c] of charts) c.update(all[i]);
        }, 1000);
      }
    }, status));
  }
  return () => { subs.forEach((s) => s.close()); charts.forEach(([, c]) => c.destroy()); };
}

/** A live table of the host's processes at its latest sample, busiest first, like `top`. */
function processTable(relation, hostName, box) {
  const rows = new Map();
  let sortKey = 'cpu_percent';
  const render = () => {
    const latest = Math.max(0, ...[...rows.values()].map((r) => new Date(r.ts).getTime()));
    const now = [...rows.values()].filter((r) => new Date(r.ts).getTime() === latest)
      .sort((a, b) => (b[sortKey] ?? 0) - (a[sortKey] ?? 0));
    const th = (key, label) => h('th', { class: key === sortKey ? 'sorted' : '', onclick: key ? () => { sortKey = key; render(); } : undefined }, label);
    box.replaceChildren(now.length ? h('table', { class: 'grid processes' },
      h('thead', {}, h('tr', {}, th(null, 'pid'), th(null, 'name'), th('cpu_percent', 'CPU %'), th('mem_bytes', 'memory'), th(null, 'state'), th(null, 'command'))),
      h('tbody', {}, now.map((p) => h('tr', { 'data-pid': p.pid }, h('td', { class: 'n' }, p.pid), h('td', {}, p.name), h('td', { class: 'n' }, num(p.cpu_percent)),
        h('td', { class: 'n' }, bytes(p.mem_bytes)), h('td', {}, p.state), h('td', { class: 'cmd' }, p.cmd))))) : h('p', { class: 'muted' }, 'No process sample in the last 15 seconds.'));
  };
  return api.subscribe(`SELECT pid, name, cmd, cpu_percent, mem_bytes, state, ts FROM ${api.ident(relation)} WHERE host = ${api.lit(hostName)} AND ts > now() - INTERVAL '15 seconds'`, (changes, reset) => {
    if (reset) rows.clear();
    for (const { row, diff } of changes) {
      const key = `${row.pid} ${row.ts}`;
      if (diff > 0) rows.set(key, row); else rows.delete(key);
    }
    render();
  });
}

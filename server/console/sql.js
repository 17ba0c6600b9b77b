// The SQL editor: runs statements and shows the last result as a table, and as a chart when it
// has a timestamp column and numeric columns; "live" follows a query as a subscription. The
// last queries are kept in this browser's local storage.

import * as api from './api.js';
import { h, table, sqlError, offset } from './ui.js';
import { timeChart } from './charts.js';

const HISTORY = 'tocsin.history';
const TIME_TYPES = /^timestamp/;
const NUMBER_TYPES = /^(double|real|bigint|integer|smallint|numeric)/;

/** Chart series from a result: x = its first timestamp column; a series per numeric column and
 * per value of its first text column. */
export function chartSeries(columns, rows) {
  const t = columns.findIndex((c) => TIME_TYPES.test(c.type));
  const nums = columns.map((c, i) => (NUMBER_TYPES.test(c.type) ? i : -1)).filter((i) => i >= 0);
  if (t < 0 || !nums.length) return null;
  const key = columns.findIndex((c) => c.type === 'text');
  const series = new Map();
  for (const r of rows) {
    if (r[t] === null) continue;
    const x = new Date(r[t]).getTime();
    for (const i of nums) {
      const label = key >= 0 ? `${r[key]} ${columns[i].name}` : columns[i].name;
      if (!series.has(label)) series.set(label, []);
      series.get(label).push([x, r[i]]);
    }
  }
  if (series.size > 40) return null;
  return [...series.entries()].map(([label, points]) => ({ label, points: points.sort((a, b) => a[0] - b[0]) }));
}

export async function mount(el, _rest, params, { status }) {
  const history = JSON.parse(localStorage.getItem(HISTORY) || '[]');
  const editor = h('textarea', { id: 'sql', rows: 6, spellcheck: 'false' }, params.q || history[0] || 'SELECT * FROM host_latest');
  const live = h('input', { type: 'checkbox', id: 'live' });
  const out = h('div', { id: 'result' });
  const past = h('ul', { class: 'history' });
  el.append(h('h1', {}, 'SQL'), editor,
    h('div', { class: 'toolbar' }, h('button', { id: 'run', onclick: run }, 'Run'), h('label', {}, live, ' live'), h('span', { class: 'muted' }, ' Ctrl+Enter')),
    out, h('h2', {}, 'History'), past);
  editor.addEventListener('keydown', (e) => { if (e.key === 'Enter' && e.ctrlKey) run(); });
  live.addEventListener('change', () => { if (!live.checked) stop(); });
  let sub = null;
  let chart = null;
  const stop = () => { if (sub) { sub.close(); sub = null; } };
  const showHistory = () => past.replaceChildren(...history.map((q) => h('li', {}, h('a', { href: '#', onclick: (e) => { e.preventDefault(); editor.value = q; } }, q))));
  showHistory();

  function show(columns, rows, note) {
    if (chart) { chart.destroy(); chart = null; }
    const box = h('div', { class: 'chart' });
    out.replaceChildren(h('p', { class: 'muted' }, note), box, table(columns.map((c) => c.name), rows));
    const series = chartSeries(columns, rows);
    if (series && series.length) chart = timeChart(box, '', series);
  }

  async function run() {
    stop();
    const text = editor.value.trim();
    if (!text) return;
    history.splice(history.indexOf(text) >>> 0, history.includes(text) ? 1 : 0);
    history.unshift(text);
    history.length = Math.min(history.length, 50);
    localStorage.setItem(HISTORY, JSON.stringify(history));
    showHistory();
    let results;
    try {
      results = await api.sql(text);
    } catch (e) {
      out.replaceChildren(sqlError(e, text));
      if (e.line && e.column) { const o = offset(text, e.line, e.column); editor.focus(); editor.setSelectionRange(o, o + 1); }
      return;
    }
    const last = results[results.length - 1];
    if (last.kind !== 'rows') {
      out.replaceChildren(h('p', { class: 'ok' }, results.map((r) => (r.kind === 'ddl' ? `${r.statement} ${r.name}` : `${r.accepted} row(s) into ${r.source}`)).join('; ')));
      return;
    }
    show(last.columns, last.rows, `${last.rows.length} row(s)`);
    if (!live.checked) return;
    // Live: the query's contents as a multiset, updated at every complete time.
    const names = last.columns.map((c) => c.name);
    const held = new Map();
    let frame = 0;
    sub = api.subscribe(text.replace(/;\s*$/, ''), (changes, reset) => {
      if (reset) held.clear();
      for (const { row, diff } of changes) {
        const values = names.map((n) => row[n]);
        const key = JSON.stringify(values);
        const n = (held.get(key)?.n || 0) + diff;
        if (n > 0) held.set(key, { values, n }); else held.delete(key);
      }
      if (!frame) {
        frame = setTimeout(() => {
          frame = 0;
          const rows = [...held.values()].flatMap(({ values, n }) => Array(n).fill(values));
          show(last.columns, rows, `live: ${rows.length} row(s), updated ${new Date().toLocaleTimeString()}`);
        }, 250);
      }
    }, status);
  }
  return () => { stop(); if (chart) chart.destroy(); };
}

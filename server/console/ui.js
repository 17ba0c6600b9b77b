// Small DOM and formatting helpers. Text from the server is only ever set as text, never as
// markup.

/** An element: `h('a', {href, class}, child, ...)`; strings become text nodes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function num(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  return Number(v).toFixed(digits);
}

export function bytes(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  let x = Math.abs(v);
  while (x >= 1000 && i < units.length - 1) { x /= 1000; i += 1; }
  return `${(Math.sign(v) * x).toFixed(x < 10 && i ? 1 : 0)} ${units[i]}`;
}

/** How long ago a time (RFC 3339 or epoch ms) was: `42s`, `5m`, `3h`, `2d`. */
export function ago(t) {
  if (!t) return '–';
  const s = Math.max(0, (Date.now() - new Date(t).getTime()) / 1000);
  if (s < 90) return `${Math.round(s)}s`;
  if (s < 5400) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

/** A table of `columns` (names) and `rows` (arrays). */
export function table(columns, rows, limit = 1000) {
  const shown = rows.slice(0, limit);
  const t = h('table', { class: 'grid' },
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', {}, c)))),
    h('tbody', {}, shown.map((r) => h('tr', {}, r.map((v) => h('td', { class: typeof v === 'number' ? 'n' : '' }, cell(v)))))));
  if (rows.length > limit) return h('div', {}, t, h('p', { class: 'muted' }, `${rows.length - limit} more rows not shown`));
  return t;
}

export function cell(v) {
  if (v === null || v === undefined) return h('span', { class: 'null' }, 'NULL');
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : String(Math.round(v * 1000) / 1000);
  return String(v);
}

/** Labels as chips. */
export function labels(obj) {
  return h('span', { class: 'labels' }, Object.entries(obj || {}).map(([k, v]) => h('span', { class: 'chip' }, `${k}=${v}`)));
}

/** An error box; SQL errors show the line and column and the line with a caret under the fault. */
export function sqlError(e, text) {
  const box = h('div', { class: 'error', role: 'alert' }, h('b', {}, e.message));
  if (e.line && e.column && text !== undefined) {
    const line = text.split('\n')[e.line - 1] ?? '';
    box.append(h('div', { class: 'where' }, `line ${e.line}, column ${e.column}`),
      h('pre', { class: 'caret' }, `${line}\n${' '.repeat(Math.max(0, e.column - 1))}^`));
  }
  return box;
}

/** The character offset of a 1-based line and column in `text`. */
export function offset(text, line, column) {
  const lines = text.split('\n');
  let o = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i += 1) o += lines[i].length + 1;
  return o + column - 1;
}

// The API the console uses: SQL over HTTP, the catalog, and subscriptions over WebSocket, each
// with the token the operator entered (kept in sessionStorage, so it ends with the tab).

const KEY = 'tocsin.token';

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

/** An error answer: the HTTP status and the server's error object (message, kind, line, column). */
export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.kind = body.kind;
    this.line = body.line;
    this.column = body.column;
    this.statement = body.statement;
  }
}

async function request(method, path, body, type) {
  const headers = {};
  const t = token.get();
  if (t) headers.authorization = `Bearer ${t}`;
  if (type) headers['content-type'] = type;
  const r = await fetch(path, { method, headers, body, credentials: 'omit', cache: 'no-store' });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* text answers: /metrics */ }
  if (!r.ok) {
    const e = new ApiError(r.status, (json && json.error) || { message: text || r.statusText });
    if (r.status === 401) window.dispatchEvent(new CustomEvent('tocsin-unauthorized', { detail: e }));
    throw e;
  }
  return json ?? text;
}

/** Runs SQL; the results, one per statement. */
export async function sql(text) {
  return (await request('POST', '/v1/sql', JSON.stringify({ sql: text }), 'application/json')).results;
}

/** A result's rows as objects keyed by column name. */
export function objects(result) {
  const cols = result.columns.map((c) => c.name);
  return result.rows.map((r) => Object.fromEntries(cols.map((c, i) => [c, r[i]])));
}

/** Runs one query; its rows as objects. */
export async function query(text) {
  const results = await sql(text);
  return objects(results[results.length - 1]);
}

export const catalog = () => request('GET', '/v1/catalog');
export const metrics = () => request('GET', '/metrics');

/** A SQL string literal of `s`. */
export const lit = (s) => `'${String(s).replaceAll("'", "''")}'`;
/** A SQL identifier of `s`, quoted. */
export const ident = (s) => `"${String(s).replaceAll('"', '""')}"`;

function base64url(text) {
  let bin = '';
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin).replaceAll('+', '-').replaceAll('/', '_').replace(/=+$/, '');
}

/**
 * Follows `q` (a relation name or a SELECT). `onChanges(changes, reset)` is called once per
 * complete time with `[{row, diff}]`; `reset` is true for a snapshot (the first, and after a
 * resync or a reconnect), which replaces everything held before. Reconnects with backoff.
 */
export function subscribe(q, onChanges, onStatus = () => {}) {
  let ws = null;
  let closed = false;
  let backoff = 500;
  let pending = [];
  let reset = true;
  const open = () => {
    const url = new URL('/v1/subscribe', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    url.searchParams.set('q', q);
    url.searchParams.set('slow', 'snapshot');
    const protocols = ['tocsin'];
    const t = token.get();
    if (t) protocols.push(`bearer.${base64url(t)}`);
    ws = new WebSocket(url, protocols);
    ws.onopen = () => { backoff = 500; onStatus('live'); };
    ws.onmessage = (e) => {
      const f = JSON.parse(e.data);
      if (f.resync) { pending = []; reset = true; return; }
      if (f.progress) {
        if (pending.length || reset) {
          const changes = pending;
          pending = [];
          const r = reset;
          reset = false;
          onChanges(changes, r);
        }
        return;
      }
      pending.push(f);
    };
    ws.onclose = (e) => {
      if (closed) return;
      onStatus('reconnecting', e.reason);
      setTimeout(() => {
        if (closed) return;
        pending = [];
        reset = true;
        open();
      }, backoff);
      backoff = Math.min(backoff * 2, 15000);
    };
  };
  open();
  return { close() { closed = true; ws.close(); } };
}

/** Sources shaped like `FROM HOST` (host, metric, device, value, ts), from the catalog. */
export function hostSources(cat) {
  const shape = 'host,metric,device,value,ts';
  return cat.sources.filter((s) => s.columns.map((c) => c.name).join(',') === shape).map((s) => s.name);
}

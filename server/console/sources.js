// Sources: what each keeps and takes (rows/s and rejected rows from /metrics, measured between
// two reads), its history on disk, and each SNMP target's status from `<source>_status`.

import * as api from './api.js';
import { h, num, bytes, table } from './ui.js';

/** Samples of `name` by their `source` label, from Prometheus text. */
export function perSource(text, name) {
  const out = new Map();
  const re = new RegExp(`^${name}\\{source="((?:[^"\\\\]|\\\\.)*)"\\} ([0-9.eE+-]+)$`, 'gm');
  for (const m of text.matchAll(re)) out.set(m[1], Number(m[2]));
  return out;
}

export async function mount(el) {
  const box = h('div', { id: 'sources' });
  const snmp = h('div', { id: 'snmp' });
  el.append(h('h1', {}, 'Sources'), box, snmp);
  let before = null;
  const refresh = async () => {
    const [cat, text] = await Promise.all([api.catalog(), api.metrics()]);
    const now = Date.now();
    const accepted = perSource(text, 'tocsin_ingest_rows_accepted_total');
    const rejected = perSource(text, 'tocsin_ingest_rows_rejected_total');
    const retained = perSource(text, 'tocsin_source_retained_rows');
    const retainedBytes = perSource(text, 'tocsin_source_retained_bytes');
    const rate = (s) => (before && accepted.has(s) ? ((accepted.get(s) - (before.accepted.get(s) || 0)) * 1000) / (now - before.at) : null);
    const rows = cat.sources.map((s) => [s.name, s.system ? 'system' : (s.sql.match(/FROM\s+([A-Z ]+?)(\s+WITH|\s*$)/i)?.[1] || ''),
      rate(s.name) === null ? '…' : num(rate(s.name)), accepted.get(s.name) ?? 0, rejected.get(s.name) ?? 0,
      retained.get(s.name) ?? 0, bytes(retainedBytes.get(s.name)),
      s.history ? `${bytes(s.history.bytes)} in ${s.history.files} files, ${s.history.oldest || '–'} to ${s.history.newest || '–'}` : 'none']);
    const wal = (name) => Number(text.match(new RegExp(`^${name} ([0-9.eE+-]+)$`, 'm'))?.[1] ?? NaN);
    const errors = cat.sources.filter((s) => s.ingest && s.ingest.last_errors.length);
    box.replaceChildren(table(['source', 'kind', 'rows/s', 'accepted', 'rejected', 'rows kept', 'memory', 'history'], rows),
      h('p', { class: 'muted', id: 'wal' }, `Write-ahead log: ${wal('tocsin_wal_segments')} segment(s), ${bytes(wal('tocsin_wal_bytes_total'))} written since start, ${wal('tocsin_wal_syncs_total')} syncs.`),
      errors.length ? h('div', { id: 'rejections' }, h('h2', {}, 'Last rejected rows'),
        table(['source', 'at', 'why'], errors.flatMap((s) => s.ingest.last_errors.slice().reverse().map((e) => [s.name, e.at, e.message])))) : null);
    before = { at: now, accepted };
    const polled = cat.sources.filter((s) => /FROM\s+SNMP(\s+WITH|\s*$)/i.test(s.sql) && cat.sources.some((c) => c.name === `${s.name}_status`));
    const parts = [];
    for (const s of polled) {
      const result = (await api.sql(`SELECT * FROM ${api.ident(`${s.name}_status`)}`)).pop();
      parts.push(h('h2', {}, `SNMP targets of ${s.name}`), table(result.columns.map((c) => c.name), result.rows));
    }
    snmp.replaceChildren(...parts);
  };
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 5000);
  return () => clearInterval(timer);
}

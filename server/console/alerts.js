// Alerts: firing, pending and silenced alerts live from `tocsin_alerts`, the silences (one can
// be made from an alert's labels, and expired), and the recent transitions live from
// `tocsin_alert_events`.

import * as api from './api.js';
import { h, labels, ago, sqlError } from './ui.js';

const ORDER = { firing: 0, pending: 1 };

/** Alertmanager matchers for a label set: `rule="high_cpu", host="web1"`. */
export function matchers(rule, labelSet) {
  const q = (v) => `"${String(v).replaceAll('\\', '\\\\').replaceAll('"', '\\"')}"`;
  return [`rule=${q(rule)}`, ...Object.entries(labelSet).map(([k, v]) => `${k}=${q(v)}`)].join(', ');
}

export async function mount(el, _rest, _params, { status }) {
  const active = new Map();
  const events = [];
  const list = h('div', { id: 'alerts' });
  const silenceBox = h('div', { id: 'silences' });
  const form = h('div', { id: 'silence-form' });
  const eventBox = h('div', { id: 'events' });
  el.append(h('h1', {}, 'Alerts'), list, form, h('h2', {}, 'Silences'), silenceBox, h('h2', {}, 'Recent events'), eventBox);

  const renderAlerts = () => {
    const rows = [...active.values()].sort((a, b) => (ORDER[a.state] ?? 2) - (ORDER[b.state] ?? 2) || a.rule.localeCompare(b.rule));
    if (!rows.length) { list.replaceChildren(h('p', { class: 'muted' }, 'No alert is pending or firing.')); return; }
    list.replaceChildren(h('table', { class: 'grid' },
      h('thead', {}, h('tr', {}, ['state', 'rule', 'labels', 'values', 'summary', 'since', ''].map((c) => h('th', {}, c)))),
      h('tbody', {}, rows.map((a) => {
        const ls = JSON.parse(a.labels);
        const values = JSON.parse(a.values_json || '{}');
        return h('tr', { class: `alert ${a.state}`, 'data-rule': a.rule },
          h('td', {}, h('span', { class: `state ${a.state}` }, a.state), a.silenced ? h('span', { class: 'state silenced' }, 'silenced') : null, a.inhibited ? h('span', { class: 'state silenced' }, 'inhibited') : null),
          h('td', {}, a.rule), h('td', {}, labels(ls)), h('td', {}, labels(values)), h('td', {}, a.summary || ''),
          h('td', { title: a.firing_since || a.active_since }, ago(a.firing_since || a.active_since)),
          h('td', {}, h('button', { class: 'silence', onclick: () => silenceForm(a.rule, ls) }, 'Silence…')));
      }))));
  };

  const silenceForm = (rule, ls) => {
    const m = h('input', { name: 'matchers', value: matchers(rule, ls), size: 60 });
    const until = h('select', { name: 'until' }, ['1h', '4h', '1d', '7d'].map((d) => h('option', { value: d }, d)));
    const comment = h('input', { name: 'comment', placeholder: 'why', size: 30 });
    const out = h('div');
    form.replaceChildren(h('form', { class: 'box', onsubmit: async (e) => {
      e.preventDefault();
      const text = `CREATE SILENCE ${api.ident(`console_${Date.now().toString(36)}`)} WITH (matchers = ${api.lit(m.value)}, until = ${api.lit(until.value)}, comment = ${api.lit(comment.value)})`;
      try {
        await api.sql(text);
        form.replaceChildren();
        loadSilences();
      } catch (err) { out.replaceChildren(sqlError(err)); }
    } }, h('b', {}, 'New silence'), h('label', {}, ' matchers ', m), h('label', {}, ' for ', until), h('label', {}, ' comment ', comment),
    h('button', { type: 'submit' }, 'Create silence'), h('button', { type: 'button', onclick: () => form.replaceChildren() }, 'Cancel'), out));
  };

  const loadSilences = async () => {
    const rows = await api.query('SHOW SILENCES');
    silenceBox.replaceChildren(rows.length ? h('table', { class: 'grid' },
      h('thead', {}, h('tr', {}, ['name', 'matchers', 'state', 'until', 'comment', ''].map((c) => h('th', {}, c)))),
      h('tbody', {}, rows.map((s) => h('tr', { 'data-silence': s.name }, h('td', {}, s.name), h('td', {}, s.matchers), h('td', {}, s.state), h('td', {}, s.until), h('td', {}, s.comment),
        h('td', {}, h('button', { class: 'expire', onclick: async () => { await api.sql(`DROP SILENCE IF EXISTS ${api.ident(s.name)}`); loadSilences(); } }, 'Expire'))))))
      : h('p', { class: 'muted' }, 'No silences.'));
  };

  const renderEvents = () => {
    events.sort((a, b) => (a.ts < b.ts ? 1 : -1));
    events.length = Math.min(events.length, 200);
    eventBox.replaceChildren(events.length ? h('table', { class: 'grid' },
      h('thead', {}, h('tr', {}, ['time', 'state', 'rule', 'labels', 'summary'].map((c) => h('th', {}, c)))),
      h('tbody', {}, events.map((e) => h('tr', {}, h('td', {}, e.ts.replace('T', ' ').replace('Z', '')), h('td', {}, h('span', { class: `state ${e.state}` }, e.state)), h('td', {}, e.rule), h('td', {}, labels(JSON.parse(e.labels))), h('td', {}, e.summary || '')))))
      : h('p', { class: 'muted' }, 'No transitions in the last 6 hours.'));
  };

  const subs = [
    api.subscribe('tocsin_alerts', (changes, reset) => {
      if (reset) active.clear();
      for (const { row, diff } of changes) {
        const key = `${row.rule} ${row.labels}`;
        if (diff > 0) active.set(key, row);
        else if (active.get(key)?.updated_at === row.updated_at) active.delete(key);
      }
      renderAlerts();
    }, status),
    api.subscribe("SELECT rule, labels, state, summary, ts FROM tocsin_alert_events WHERE ts > now() - INTERVAL '6 hours'", (changes, reset) => {
      if (reset) events.length = 0;
      for (const { row, diff } of changes) if (diff > 0) events.push(row);
      renderEvents();
    }),
  ];
  await loadSilences();
  return () => subs.forEach((s) => s.close());
}

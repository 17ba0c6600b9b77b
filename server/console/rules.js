// Rules and views: their SQL, how far behind they are, their active alerts and their EXPLAIN;
// a rule is created from the editor (an error points at its line and column) or dropped.

import * as api from './api.js';
import { h, sqlError, offset } from './ui.js';

const TEMPLATE = `CREATE RULE my_rule AS
  SELECT host, avg(value) AS cpu_percent
  FROM host
  WHERE metric = 'cpu_percent' AND device = '' AND ts > now() - INTERVAL '1 minute'
  GROUP BY host HAVING avg(value) > 80
  WITH (for = '1m', severity = 'warning', summary = 'CPU {{cpu_percent}}% on {{host}}', sink = 'log')`;

export async function mount(el, _rest, _params, { status }) {
  const editor = h('textarea', { id: 'rule-sql', rows: 8, spellcheck: 'false' }, TEMPLATE);
  const out = h('div', { id: 'rule-result' });
  const list = h('div', { id: 'rules' });
  const counts = new Map();
  el.append(h('h1', {}, 'Rules and views'),
    h('div', { class: 'box' }, h('b', {}, 'New rule or view'), editor,
      h('div', { class: 'toolbar' }, h('button', { id: 'create', onclick: create }, 'Create'), h('span', { class: 'muted' }, ' Ctrl+Enter')), out),
    list);
  editor.addEventListener('keydown', (e) => { if (e.key === 'Enter' && e.ctrlKey) create(); });

  async function create() {
    const text = editor.value;
    try {
      await api.sql(text);
      out.replaceChildren(h('p', { class: 'ok' }, 'Created.'));
      load();
    } catch (e) {
      out.replaceChildren(sqlError(e, text));
      if (e.line && e.column) {
        const o = offset(text, e.line, e.column);
        editor.focus();
        editor.setSelectionRange(o, o + 1);
      }
    }
  }

  async function load() {
    const [rules, views] = await Promise.all([api.query('SHOW RULES'), api.query('SHOW VIEWS')]);
    const row = (kind, r) => {
      const plan = h('pre', { class: 'plan', hidden: true });
      return h('div', { class: 'rule', 'data-name': r.name },
        h('div', { class: 'head' }, h('b', {}, r.name), ' ', h('span', { class: 'muted' }, kind),
          kind === 'rule' ? h('span', { class: 'count' }, ` ${counts.get(r.name) || 0} active`) : null,
          kind === 'rule' && r.lag ? h('span', { class: 'muted' }, ` lag ${r.lag}`) : null,
          h('button', { onclick: async () => {
            if (plan.hidden) plan.textContent = (await api.query(`EXPLAIN ${kind.toUpperCase()} ${api.ident(r.name)}`)).map((p) => p.plan).join('\n');
            plan.hidden = !plan.hidden;
          } }, 'EXPLAIN'),
          h('button', { class: 'drop', onclick: async () => {
            if (!window.confirm(`Drop ${kind} ${r.name}?`)) return;
            try { await api.sql(`DROP ${kind.toUpperCase()} ${api.ident(r.name)}`); load(); } catch (e) { out.replaceChildren(sqlError(e)); }
          } }, 'Drop')),
        h('pre', { class: 'sql' }, r.sql), plan);
    };
    list.replaceChildren(h('h2', {}, `Rules (${rules.length})`), ...rules.map((r) => row('rule', r)),
      h('h2', {}, `Views (${views.length})`), ...views.map((r) => row('view', r)));
  }

  const sub = api.subscribe('SELECT rule, labels FROM tocsin_alerts', (changes, reset) => {
    if (reset) counts.clear();
    for (const { row, diff } of changes) counts.set(row.rule, (counts.get(row.rule) || 0) + diff);
    for (const node of list.querySelectorAll('.rule')) {
      const c = node.querySelector('.count');
      if (c) c.textContent = ` ${counts.get(node.dataset.name) || 0} active`;
    }
  }, status);
  await load();
  return () => sub.close();
}

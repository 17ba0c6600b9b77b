// The console's shell: the token gate, the navigation and the router. Pages are addressed by
// the URL's fragment (`#/host/web1?range=24h`), so every page can be linked and the browser's
// back button works.

import * as api from './api.js';
import { h } from './ui.js';
import * as overview from './overview.js';
import * as host from './host.js';
import * as alerts from './alerts.js';
import * as rules from './rules.js';
import * as sqlPage from './sql.js';
import * as sources from './sources.js';

const PAGES = { '': overview, host, alerts, rules, sql: sqlPage, sources };
const main = document.getElementById('main');
const conn = document.getElementById('conn');
let unmount = () => {};
let signedIn = false;

// What the tests and the benchmark read.
window.tocsinConsole = { page: null, ready: false, stats: {} };

/** The page and its parameters from the fragment: `#/host/web1?range=1h` → ['host', ['web1'], {range: '1h'}]. */
function location_() {
  const frag = decodeURIComponent(window.location.hash.replace(/^#\/?/, ''));
  const [path, search = ''] = frag.split('?');
  const [page = '', ...rest] = path.split('/');
  return [page, rest, Object.fromEntries(new URLSearchParams(search))];
}

function signIn(message) {
  unmount();
  unmount = () => {};
  signedIn = false;
  window.tocsinConsole.page = 'signin';
  const input = h('input', { type: 'password', id: 'token', autocomplete: 'current-password', placeholder: 'token' });
  const form = h('form', { class: 'signin', onsubmit: (e) => { e.preventDefault(); api.token.set(input.value.trim()); route(); } },
    h('h1', {}, 'Sign in'),
    h('p', {}, 'This tocsin needs a token (one of --read-token, --write-token or --admin-token). It is kept in this tab only.'),
    message ? h('p', { class: 'error', role: 'alert' }, message) : null,
    input, h('button', { type: 'submit' }, 'Sign in'));
  main.replaceChildren(form);
  input.focus();
}

async function route() {
  const [page, rest, params] = location_();
  const mod = PAGES[page];
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === (page === 'host' ? '' : page));
  if (!signedIn) {
    try {
      await api.catalog();
      signedIn = true;
    } catch (e) {
      if (e.status === 401) {
        signIn(api.token.get() ? `That token was refused: ${e.message}` : null);
        return;
      }
      main.replaceChildren(h('div', { class: 'error' }, e.message));
      return;
    }
  }
  document.getElementById('signout').hidden = !api.token.get();
  unmount();
  unmount = () => {};
  window.tocsinConsole.page = page || 'overview';
  window.tocsinConsole.ready = false;
  const el = h('div', { class: `page page-${page || 'overview'}` });
  main.replaceChildren(el);
  if (!mod) {
    el.append(h('p', {}, `No page ${page}.`));
    return;
  }
  try {
    unmount = (await mod.mount(el, rest, params, { status })) || (() => {});
  } catch (e) {
    el.append(h('div', { class: 'error' }, e.message));
  }
  window.tocsinConsole.ready = true;
}

/** Shows whether live data flows. */
function status(state, reason) {
  conn.textContent = state === 'live' ? '● live' : `○ ${state}${reason ? `: ${reason}` : ''}`;
  conn.className = state === 'live' ? 'live' : 'down';
}

window.addEventListener('hashchange', route);
window.addEventListener('tocsin-unauthorized', () => { if (signedIn) { signedIn = false; route(); } });
document.getElementById('signout').addEventListener('click', () => { api.token.clear(); signedIn = false; route(); });
route();

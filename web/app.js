// The dashboard: plain modules over the public HTTP API, no build step.
// The admin token lives in this browser tab only (sessionStorage).  Views are
// chosen by the hash (#/, #/devices/ID, #/flash-parts, #/rollouts, #/rollouts/ID)
// so the back button and links work and a reload keeps the place.
import { api, token, setToken, setUnauthorizedHandler, notice, h } from './lib.js';
import { fleetView } from './fleet.js';
import { deviceView } from './device.js';
import { flashView } from './flash.js';
import { rolloutsView, rolloutView } from './rollouts.js';

const $ = (sel) => document.querySelector(sel);
let current = null; // the open view: { el, stop() }

function stopView() {
  if (current && current.stop) current.stop();
  current = null;
  $('#main').replaceChildren();
}

function showSignIn(message) {
  stopView();
  setToken(null);
  $('#signin').hidden = false;
  $('#nav').hidden = true;
  $('#logout').hidden = true;
  notice($('#signin-msg'), message || '', 'error');
  $('#token').focus();
}

const routes = [
  [/^#?\/?$/, () => fleetView(), 'fleet'],
  [/^#\/devices\/([0-9a-fA-F]{16})$/, (m) => deviceView(m[1].toLowerCase()), 'fleet'],
  [/^#\/flash-parts$/, () => flashView(), 'flash'],
  [/^#\/rollouts$/, () => rolloutsView(), 'rollouts'],
  [/^#\/rollouts\/(\d+)$/, (m) => rolloutView(Number(m[1])), 'rollouts'],
];

function route() {
  if (!token()) return showSignIn('');
  stopView();
  $('#signin').hidden = true;
  $('#nav').hidden = false;
  $('#logout').hidden = false;
  const hash = location.hash;
  for (const [re, make, nav] of routes) {
    const m = hash.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll('[data-nav]'))
      if (a.dataset.nav === nav) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    current = make(m);
    $('#main').replaceChildren(current.el);
    // Move focus to the new view's heading so keyboard and screen-reader
    // users start there, as after a page load.
    const heading = current.el.querySelector('h2');
    if (heading && document.activeElement !== $('#token')) {
      heading.tabIndex = -1;
      heading.focus({ preventScroll: true });
    }
    return;
  }
  $('#main').replaceChildren(h('section', h('h2', 'Not found'),
    h('p', 'There is no such page. ', h('a', { href: '#/' }, 'Back to the fleet'), '.')));
}

$('#login').addEventListener('submit', async (e) => {
  e.preventDefault();
  const t = $('#token').value.trim();
  if (!t) return;
  setToken(t);
  notice($('#signin-msg'), 'Checking the token…', 'info');
  try {
    await api('/v1/devices?limit=1', { noAuthRedirect: true });
  } catch (err) {
    setToken(null);
    notice($('#signin-msg'), err.status === 401 ? 'That token was refused: check DATA_DIR/admin.token.'
      : `Cannot sign in: ${err.message}`, 'error');
    $('#token').select();
    return;
  }
  $('#token').value = '';
  notice($('#signin-msg'), '', 'info');
  route();
});

$('#logout').addEventListener('click', () => showSignIn('Signed out.'));
// The skip link must not touch the hash: the hash is the route.
$('.skip').addEventListener('click', (e) => {
  e.preventDefault();
  ($('#signin').hidden ? $('#main') : $('#token')).focus();
});
setUnauthorizedHandler((message) => showSignIn(message));
window.addEventListener('hashchange', route);
route();

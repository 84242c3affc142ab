// The fleet view: counts, filters and search, one page of devices at a time
// (server-side cursor paging, so 10,000 devices cost one page), and online
// state kept live from a log stream over every device that carries status
// events only ({"all":true,"types":["status"]}): connects and disconnects,
// not every line of every device.
import { api, query, token, h, ago, notice, note, table, row, flashText } from './lib.js';

const PAGE = 50;
const COLUMNS = ['Device', 'State', 'HW', 'FW', 'Flash', 'Agent', 'Last seen', 'Group'];

// Kept across visits, so coming back from a device finds the same page.
const state = { q: '', online: '', hw: '', group: '', cursors: [null] };

function agentText(d) {
  if (!('agent_state' in d)) return '-';
  return d.agent_state === null ? 'no code' : d.agent_state;
}

function stateCell(online) {
  return h(`span.badge.${online ? 'on' : 'off'}`, online ? 'online' : 'offline');
}

function deviceRow(d) {
  return row(COLUMNS, [
    h('a', { href: `#/devices/${d.id}` }, d.name || d.id, d.name ? h('span.sub', d.id) : null),
    stateCell(d.online), d.hw || '-', d.fw || '-', flashText(d.flash), agentText(d),
    d.online ? 'now' : ago(d.last_seen), d.group || '-',
  ], { dataset: { id: d.id, online: String(!!d.online) } });
}

export function fleetView() {
  const counts = h('p.counts', { 'aria-live': 'polite' }, 'Loading counts…');
  const live = h('span.live', { role: 'status' }, 'Connecting…');
  const msg = note();
  const list = h('div.list', h('p.empty', 'Loading devices…'));
  const pageInfo = h('span.page-info', { 'aria-live': 'polite' });
  const prev = h('button', { type: 'button', disabled: true, onclick: () => { state.cursors.pop(); load(); } }, 'Previous page');
  const next = h('button', { type: 'button', disabled: true, onclick: () => { state.cursors.push(nextCursor); load(); } }, 'Next page');

  const search = h('input#f-q', { type: 'search', value: state.q, placeholder: 'id or name', autocomplete: 'off' });
  const online = h('select#f-online', {},
    h('option', { value: '' }, 'All'), h('option', { value: 'true' }, 'Online'), h('option', { value: 'false' }, 'Offline'));
  online.value = state.online;
  const hw = h('input#f-hw', { list: 'hw-list', value: state.hw, autocomplete: 'off' });
  const group = h('input#f-group', { list: 'group-list', value: state.group, autocomplete: 'off' });
  const hwList = h('datalist#hw-list');
  const groupList = h('datalist#group-list');
  const form = h('form.filters', { role: 'search', 'aria-label': 'Filter devices' },
    h('div.field', h('label', { for: 'f-q' }, 'Search'), search),
    h('div.field', h('label', { for: 'f-online' }, 'State'), online),
    h('div.field', h('label', { for: 'f-hw' }, 'Hardware'), hw, hwList),
    h('div.field', h('label', { for: 'f-group' }, 'Group'), group, groupList),
    h('button', { type: 'submit' }, 'Apply'));

  const el = h('section.view', { 'aria-labelledby': 'fleet-title' },
    h('div.title', h('h2#fleet-title', 'Fleet'), live), counts, form, msg, list,
    h('nav.pager', { 'aria-label': 'Device pages' }, prev, pageInfo, next));

  let nextCursor = null;
  let loads = 0; // the latest load(): older answers are dropped
  let serverSearch = true; // false on a tenderd without ?q= (no /v1/fleet either)
  let stopped = false;
  let rows = new Map();
  let countsTimer = null;
  let reloadTimer = null;
  let es = null;
  let retry = null;

  function apply() {
    state.q = search.value.trim();
    state.online = online.value;
    state.hw = hw.value.trim();
    state.group = group.value.trim();
    state.cursors = [null];
    load();
  }
  form.addEventListener('submit', (e) => { e.preventDefault(); apply(); });
  for (const input of [online, hw, group]) input.addEventListener('change', apply);
  let typing = null;
  search.addEventListener('input', () => { clearTimeout(typing); typing = setTimeout(apply, 300); });

  async function loadCounts() {
    try {
      const f = await api('/v1/fleet');
      const n = (v) => Number(v).toLocaleString();
      counts.replaceChildren(
        h('span', h('strong#count-devices', n(f.devices)), ' devices'),
        h('span.on', h('strong#count-online', n(f.online)), ' online'),
        h('span.off', h('strong', n(f.offline)), ' offline'));
      hwList.replaceChildren(...Object.keys(f.hw || {}).map((k) => h('option', { value: k })));
      groupList.replaceChildren(...Object.keys(f.groups || {}).map((k) => h('option', { value: k })));
    } catch (e) {
      if (e.status === 404) {
        serverSearch = false;
        counts.textContent = 'Counts need a newer tenderd (GET /v1/fleet).';
      } else if (e.status !== 401) {
        counts.textContent = `Cannot count devices: ${e.message}`;
      }
    }
  }

  async function load() {
    const after = state.cursors[state.cursors.length - 1];
    const mine = ++loads;
    list.setAttribute('aria-busy', 'true');
    try {
      const params = { online: state.online, hw: state.hw, group: state.group, limit: PAGE, after };
      if (serverSearch) params.q = state.q;
      const res = await api(`/v1/devices${query(params)}`);
      if (stopped || mine !== loads) return; // a newer filter or page is on its way
      let devices = res.devices;
      if (!serverSearch && state.q) {
        const q = state.q.toLowerCase();
        devices = devices.filter((d) => d.id.includes(q) || (d.name || '').toLowerCase().includes(q));
      }
      nextCursor = res.next;
      rows = new Map();
      const trs = devices.map((d) => { const tr = deviceRow(d); rows.set(d.id, tr); return tr; });
      const filtered = state.q || state.online || state.hw || state.group;
      list.replaceChildren(devices.length ? table('Devices', COLUMNS, trs)
        : h('p.empty', filtered ? 'No device matches these filters.'
          : 'No devices yet: register one with tenderctl register or POST /v1/devices.'));
      notice(msg, !serverSearch && state.q ? 'This tenderd cannot search: only this page is searched.' : '', 'info');
      prev.disabled = state.cursors.length < 2;
      next.disabled = !nextCursor;
      pageInfo.textContent = `Page ${state.cursors.length}`;
    } catch (e) {
      if (e.status !== 401 && !stopped) {
        list.replaceChildren();
        notice(msg, `Cannot list devices: ${e.message}`, 'error');
        next.disabled = true;
      }
    } finally {
      if (mine === loads) list.removeAttribute('aria-busy');
    }
  }

  // Counts and new devices: at most one refresh a second however many
  // devices come and go.
  function soon(which) {
    if (which === 'counts' && !countsTimer)
      countsTimer = setTimeout(() => { countsTimer = null; if (!stopped) loadCounts(); }, 1000);
    if (which === 'page' && !reloadTimer)
      reloadTimer = setTimeout(() => { reloadTimer = null; if (!stopped) load(); }, 1000);
  }

  function onEvent(e) {
    const ev = JSON.parse(e.data);
    if (ev.type !== 'status') return;
    const up = ev.msg === 'Device connected';
    if (!up && ev.msg !== 'Device disconnected') return;
    soon('counts');
    const tr = rows.get(ev.device_id);
    if (!tr) {
      // A device not shown: it may belong on this page if it is the last one.
      if (!nextCursor) soon('page');
      return;
    }
    tr.dataset.online = String(up);
    tr.children[1].replaceChildren(stateCell(up));
    tr.children[6].textContent = up ? 'now' : ago(ev.ts);
    refreshRow(ev.device_id);
  }

  // A hello brings hw, fw and flash, and the agent starts: read the device
  // again (only rows on screen, so this stays one request per change).
  async function refreshRow(id) {
    try {
      const d = await api(`/v1/devices/${id}`);  // agent_state included
      const tr = rows.get(id);
      if (stopped || !tr) return;
      const fresh = deviceRow(d);
      tr.replaceWith(fresh);
      rows.set(id, fresh);
    } catch (e) { /* the row keeps what the event said */ }
  }

  // A log stream lives as long as its connection: after a drop, make a new
  // one; once it is open, reload the page and the counts, since changes may
  // have been missed meanwhile (and what could not load while tenderd was
  // away loads now, with no reload of the page).
  let missed = false;
  async function connect() {
    if (stopped) return;
    try {
      const ls = await api('/v1/logstreams', { body: { all: true, types: ['status'] } });
      if (stopped) return;
      es = new EventSource(`${ls.url}?access_token=${encodeURIComponent(token())}`);
      es.addEventListener('message', onEvent);
      es.addEventListener('open', () => {
        live.textContent = 'Live';
        live.className = 'live on';
        if (missed) { missed = false; load(); loadCounts(); }
      });
      es.addEventListener('error', () => {
        es.close();
        missed = true;
        live.textContent = 'Reconnecting…';
        live.className = 'live off';
        retry = setTimeout(connect, 2000);
      });
    } catch (e) {
      if (e.status === 401 || stopped) return;
      missed = true;
      live.textContent = `Not live: ${e.message}`;
      live.className = 'live off';
      retry = setTimeout(connect, 5000);
    }
  }

  loadCounts().then(load);
  connect();
  return {
    el,
    stop() {
      stopped = true;
      clearTimeout(retry);
      clearTimeout(countsTimer);
      clearTimeout(reloadTimer);
      clearTimeout(typing);
      if (es) es.close();
    },
  };
}

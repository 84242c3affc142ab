// The device view: details, the agent's state with restart and migrate, the
// group's agent code, and the log: the newest page of history, older pages
// on demand (scrolling to the top or the button), then live with EventSource
// resuming right after the last event of the history, so nothing is missed
// or shown twice.
import { api, query, token, h, when, ago, bytes, notice, note, eventText, flashText } from './lib.js';

const PAGE = 100;

function detail(label, value) {
  return [h('dt', label), h('dd', value === null || value === undefined || value === '' ? '-' : value)];
}

export function deviceView(id) {
  const title = h('h2#device-title', id);
  const msg = note();
  const details = h('dl.details', { 'aria-label': 'Device details' }, h('dd', 'Loading…'));
  const agentInfo = h('dl.details', { 'aria-label': 'Agent state' }, h('dd', 'Loading…'));
  const agentMsg = note();
  const codeSection = h('div');
  const logState = h('p#log-state.log-state', { role: 'status' }, 'Loading the log…');
  const log = h('ol#log.log', { role: 'log', 'aria-label': `Log of ${id}`, tabindex: '0' });
  const older = h('button', { type: 'button', disabled: true, onclick: () => loadOlder() }, 'Load older lines');

  const el = h('section.view', { 'aria-labelledby': 'device-title' },
    h('p.crumb', h('a', { href: '#/' }, '← Fleet')),
    h('div.title', title), msg,
    h('div.grid',
      h('section.panel', { 'aria-labelledby': 'details-title' }, h('h3#details-title', 'Details'), details),
      h('section.panel', { 'aria-labelledby': 'agent-title' }, h('h3#agent-title', 'Agent'), agentInfo,
        h('div.actions',
          h('button', { type: 'button', onclick: () => agentAction('restart') }, 'Restart agent'),
          h('button', { type: 'button', onclick: () => agentAction('migrate') }, 'Migrate agent'),
          h('button', { type: 'button', onclick: () => loadAgent() }, 'Refresh')),
        agentMsg)),
    h('section.panel', { 'aria-labelledby': 'log-title' },
      h('h3#log-title', 'Log'), h('div.actions', older, logState), log),
    h('section.panel', { 'aria-labelledby': 'code-title' }, h('h3#code-title', 'Agent code'), codeSection));

  let stopped = false;
  let es = null;
  let device = null;
  let oldest = null; // next_before of the history read so far; null: none older
  const seen = new Set();
  let agentTimer = null;
  let retry = null;
  let codeGroup; // the group the code box deploys to, once rendered
  let newest = 0; // the newest event id shown: where a new stream resumes

  async function loadDevice() {
    try {
      device = await api(`/v1/devices/${id}`);
    } catch (e) {
      if (e.status !== 401) notice(msg, e.status === 404 ? `There is no device ${id}.` : `Cannot load ${id}: ${e.message}`, 'error');
      return false;
    }
    if (stopped) return false;
    title.textContent = device.name ? `${device.name} (${id})` : id;
    renderDetails();
    if (codeGroup === undefined || device.group !== codeGroup) renderCode(); // keep what is being typed
    return true;
  }

  function renderDetails() {
    const d = device;
    const f = d.flash;
    details.replaceChildren(
      ...detail('State', h(`span.badge.${d.online ? 'on' : 'off'}`, d.online ? 'online' : 'offline')),
      ...detail('Name', d.name), ...detail('Group', d.group), ...detail('Hardware', d.hw),
      ...detail('Firmware', d.fw), ...detail('Flash', flashText(f)),
      ...detail('Flash size', f ? bytes(f.size) : null),
      ...detail('Uniform erase', f ? `4 KB: ${f.uniform_4k_erase ? 'yes' : 'no'}, 64 KB: ${f.uniform_64k_erase ? 'yes' : 'no'}` : null),
      ...detail('Connected', d.online ? when(d.connected_at) : null),
      ...detail('Last seen', d.online ? 'now' : d.last_seen ? `${ago(d.last_seen)} (${when(d.last_seen)})` : 'never'),
      ...detail('Registered', when(d.created)));
  }

  async function loadAgent() {
    try {
      const a = await api(`/v1/devices/${id}/agent`);
      if (stopped) return;
      agentInfo.replaceChildren(
        ...detail('State', h('span#agent-state', a.state)), ...detail('Worker', a.worker),
        ...detail('Memory', a.memory === undefined ? null : bytes(a.memory)),
        ...detail('Events', a.events), ...detail('Restarts', a.restarts),
        ...detail('Queued messages', a.queued_messages),
        ...detail('Last error', a.last_error ? h('code', a.last_error) : null),
        ...detail('Agent URL', a.agent_id ? h('code', `/agent/${a.agent_id}/`) : null));
    } catch (e) {
      if (e.status !== 401) agentInfo.replaceChildren(h('dd', `Cannot read the agent's state: ${e.message}`));
    }
  }

  async function agentAction(what) {
    notice(agentMsg, what === 'restart' ? 'Restarting…' : 'Migrating…', 'info');
    try {
      await api(`/v1/devices/${id}/agent/${what}`, { method: 'POST' });
      notice(agentMsg, what === 'restart' ? 'Restart requested: watch the log for "Agent started."'
        : 'Migration requested: the worker changes once it has moved.', 'ok');
    } catch (e) {
      if (e.status !== 401) notice(agentMsg, `Cannot ${what}: ${e.message}`, 'error');
    }
    agentSoon();
  }

  function agentSoon() {
    clearTimeout(agentTimer);
    agentTimer = setTimeout(() => { if (!stopped) loadAgent(); }, 300);
  }

  // The code editor deploys to the device's group; a device without one
  // gets a group first.
  function renderCode() {
    const group = device.group;
    codeGroup = group;
    const groupInput = h('input#group-name', { value: group || '', maxlength: 64, autocomplete: 'off' });
    const groupMsg = note();
    const groupForm = h('form.inline', {
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          device = await api(`/v1/devices/${id}`, { method: 'PATCH', body: { group: groupInput.value.trim() || null } });
          renderDetails();
          renderCode();
          agentSoon();
        } catch (err) {
          if (err.status !== 401) notice(groupMsg, `Cannot set the group: ${err.message}`, 'error');
        }
      },
    }, h('label', { for: 'group-name' }, 'Group'), groupInput, h('button', { type: 'submit' }, 'Set group'), groupMsg);
    if (!group) {
      codeSection.replaceChildren(h('p.empty', 'Agent code belongs to a group, and this device has none: set one first.'), groupForm);
      return;
    }
    const code = h('textarea#code', {
      rows: 14, spellcheck: 'false', autocomplete: 'off', 'aria-describedby': 'code-help code-result',
      placeholder: 'device.on("reading", function (data)\n  server.log(data)\nend)',
    });
    // The box starts with the code the group runs (unless typing began first).
    api(`/v1/groups/${encodeURIComponent(group)}/agent`).then((c) => {
      if (!code.value && c && typeof c.source === 'string') code.value = c.source;
    }).catch(() => { /* 404: no code yet; other errors show on deploy */ });
    const result = note('', 'info', 'div#code-result');
    const deploy = h('button', { type: 'submit' }, `Deploy to group ${group}`);
    const form = h('form.code', { onsubmit: async (e) => { e.preventDefault(); await deployCode(); } },
      h('label', { for: 'code' }, `Agent code (Lua) for group ${group}`),
      h('p#code-help.hint', 'Deploying replaces the code of every device in the group; its running agents restart with it. ' +
        'The box starts with the code the group runs now.'),
      code, h('div.actions', deploy));
    codeSection.replaceChildren(form, result, h('details', h('summary', 'Move this device to another group'), groupForm));

    async function deployCode() {
      code.removeAttribute('aria-invalid');
      notice(result, 'Deploying…', 'info');
      try {
        const r = await api(`/v1/groups/${encodeURIComponent(group)}/agent`, { method: 'PUT', body: code.value, type: 'text/plain' });
        notice(result, `Deployed ${r.bytes} bytes to group ${r.group}.`, 'ok');
        agentSoon();
      } catch (e) {
        if (e.status === 401) return;
        code.setAttribute('aria-invalid', 'true');
        notice(result, compileError(e.message, code), 'error');
      }
    }
  }

  // "agent.lua:3: unexpected symbol near '='": the line, its text, and a
  // button that puts the cursor on it (the content of an error notice).
  function compileError(message, code) {
    const m = message.match(/agent\.lua:(\d+):\s*(.*)$/s);
    if (!m) return `Not deployed: ${message}`;
    const n = Number(m[1]);
    const lines = code.value.split('\n');
    const goTo = () => {
      const start = lines.slice(0, n - 1).reduce((a, l) => a + l.length + 1, 0);
      code.focus();
      code.setSelectionRange(start, start + (lines[n - 1] || '').length);
    };
    return [
      h('p', h('strong', `Not deployed: line ${n}: `), m[2]),
      lines[n - 1] !== undefined ? h('pre.code-line', h('span.ln', String(n)), lines[n - 1]) : null,
      h('button', { type: 'button', onclick: goTo }, `Go to line ${n}`)];
  }

  function eventLine(ev) {
    seen.add(ev.id);
    return h(`li.t-${ev.type}`, { dataset: { id: String(ev.id) } }, eventText(ev));
  }

  const atBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < 40;

  async function loadOlder() {
    if (oldest === null) return;
    older.disabled = true;
    try {
      const res = await api(`/v1/devices/${id}/logs${query({ before: oldest, limit: PAGE })}`);
      if (stopped) return;
      const height = log.scrollHeight;
      log.prepend(...res.events.filter((ev) => !seen.has(ev.id)).map(eventLine));
      log.scrollTop += log.scrollHeight - height; // keep the lines being read in place
      oldest = res.next_before ?? null;
    } catch (e) {
      if (e.status !== 401) notice(msg, `Cannot read older lines: ${e.message}`, 'error');
    }
    older.disabled = oldest === null;
    older.textContent = oldest === null ? 'No older lines' : 'Load older lines';
  }

  async function startLog() {
    let last = 0;
    try {
      const res = await api(`/v1/devices/${id}/logs${query({ limit: PAGE })}`);
      if (stopped) return;
      log.replaceChildren(...res.events.map(eventLine));
      if (res.events.length) last = res.events[res.events.length - 1].id;
      newest = last;
      oldest = res.next_before ?? null;
      older.disabled = oldest === null;
      older.textContent = oldest === null ? 'No older lines' : 'Load older lines';
      log.scrollTop = log.scrollHeight;
    } catch (e) {
      if (e.status !== 401) logState.textContent = `Cannot read the log: ${e.message}`;
      return;
    }
    follow(last);
  }

  // Resume right after the last event shown: the server replays what came
  // between, then goes live.  The browser reconnects by itself after a drop
  // (with Last-Event-ID); after a refusal it gives up, so retry from here.
  function follow(last) {
    if (stopped) return;
    es = new EventSource(`/v1/devices/${id}/logs${query({ follow: 1, last_event_id: last, access_token: token() })}`);
    es.addEventListener('open', () => { logState.textContent = 'Live.'; });
    es.addEventListener('error', () => {
      logState.textContent = 'Reconnecting…';
      if (es.readyState !== EventSource.CLOSED) return;
      retry = setTimeout(() => { loadDevice().then((ok) => { if (ok) follow(newest); }); }, 3000);
    });
    es.addEventListener('state_change', (e) => { logState.textContent = e.data; });
    es.addEventListener('message', (e) => {
      const ev = JSON.parse(e.data);
      if (seen.has(ev.id)) return;
      newest = Math.max(newest, ev.id);
      const stick = atBottom();
      log.append(eventLine(ev));
      if (stick) log.scrollTop = log.scrollHeight;
      if (ev.type === 'status' && /^Agent /.test(ev.msg)) agentSoon();
      // A hello may bring new hw, fw or flash (after an update, say).
      if ((ev.type === 'status' && /^Device (connected|disconnected)$/.test(ev.msg)) ||
          /^firmware update completed/.test(ev.msg)) {
        loadDevice();
        agentSoon();
      }
    });
  }
  log.addEventListener('scroll', () => { if (log.scrollTop === 0 && oldest !== null && !older.disabled) loadOlder(); });

  loadDevice().then((ok) => { if (ok) { loadAgent(); startLog(); } else logState.textContent = ''; });
  return {
    el,
    stop() {
      stopped = true;
      clearTimeout(agentTimer);
      clearTimeout(retry);
      if (es) es.close();
    },
  };
}

// Firmware and rollouts: upload an image, create a rollout (always paused,
// so its dry-run plan is read before anything is sent), then start it and
// watch it by device state, with pause, resume and abort.
import { api, h, fill, when, bytes, notice, note, table, row } from './lib.js';

const FW_COLUMNS = ['Version', 'Hardware', 'Requirements', 'Size', 'SHA-256', 'Uploaded'];
const RO_COLUMNS = ['Rollout', 'Firmware', 'Target', 'State', 'Devices', 'Created'];
const PLAN_COLUMNS = ['Device', 'Stage', 'Decision', 'Reason', 'State', 'Attempts'];
const ENDED = ['completed', 'aborted'];

function requirementsText(r) {
  const f = r && r.flash;
  if (!f) return 'a known flash part';
  const parts = [];
  if (f.uniform_erase && f.uniform_erase.length) parts.push(`uniform ${f.uniform_erase.map(bytes).join(' + ')} erase`);
  if (f.min_size) parts.push(`at least ${bytes(f.min_size)}`);
  return parts.join(', ') || 'a known flash part';
}

function targetText(t) {
  if (!t) return '-';
  if (t.devices) return `${t.devices.length} device${t.devices.length === 1 ? '' : 's'}`;
  if (t.group) return `group ${t.group}`;
  if (t.hw) return `hardware ${t.hw}`;
  return '-';
}

function countsText(counts) {
  const c = Object.entries(counts || {}).filter(([, n]) => n);
  return c.length ? c.map(([s, n]) => `${n} ${s}`).join(', ') : '-';
}

export function rolloutsView() {
  const fwList = h('div.list', h('p.empty', 'Loading firmware…'));
  const roList = h('div.list', h('p.empty', 'Loading rollouts…'));
  const upResult = note('', 'info', 'div#up-result');
  const roResult = note('', 'info', 'div#ro-result');
  const fwSelect = h('select#ro-firmware', { required: true });
  const targetKind = h('select#ro-kind', {},
    h('option', { value: 'devices' }, 'Devices (ids)'), h('option', { value: 'group' }, 'Group'), h('option', { value: 'hw' }, 'Hardware model'));
  const targetValue = h('input#ro-target', { required: true, autocomplete: 'off', 'aria-describedby': 'ro-target-help' });

  const upload = h('form.stack', { onsubmit: (e) => { e.preventDefault(); uploadFirmware(e.target); } },
    h('div.field', h('label', { for: 'up-image' }, 'Image file'), h('input#up-image', { type: 'file', name: 'image', required: true })),
    h('div.field', h('label', { for: 'up-version' }, 'Version'), h('input#up-version', { name: 'version', required: true, autocomplete: 'off' })),
    h('div.field', h('label', { for: 'up-hw' }, 'Hardware models (comma-separated)'), h('input#up-hw', { name: 'hw', required: true, autocomplete: 'off' })),
    h('fieldset', h('legend', 'Flash requirements'),
      h('div.check', h('input#up-4k', { type: 'checkbox', name: 'u4k' }), h('label', { for: 'up-4k' }, 'Needs 4 KB erase across the whole chip')),
      h('div.check', h('input#up-64k', { type: 'checkbox', name: 'u64k' }), h('label', { for: 'up-64k' }, 'Needs 64 KB erase across the whole chip')),
      h('div.field', h('label', { for: 'up-min' }, 'Minimum flash size (bytes)'), h('input#up-min', { name: 'min', type: 'number', min: 0, step: 1 }))),
    h('div.actions', h('button', { type: 'submit' }, 'Upload firmware')));

  const create = h('form.stack', { onsubmit: (e) => { e.preventDefault(); createRollout(e.target); } },
    h('div.field', h('label', { for: 'ro-firmware' }, 'Firmware'), fwSelect),
    h('div.field', h('label', { for: 'ro-kind' }, 'Target'), targetKind),
    h('div.field', h('label', { for: 'ro-target' }, 'Devices, group or hardware'), targetValue,
      h('p#ro-target-help.hint', 'Device ids separated by spaces or commas, a group name, or a hardware model.')),
    h('div.field', h('label', { for: 'ro-stages' }, 'Stages (cumulative %)'),
      h('input#ro-stages', { name: 'stages', value: '100', autocomplete: 'off', pattern: '[0-9 ,]+' })),
    h('div.check', h('input#ro-unknown', { type: 'checkbox', name: 'unknown' }),
      h('label', { for: 'ro-unknown' }, 'Let unknown flash parts through (operator override)')),
    h('div.actions', h('button', { type: 'submit' }, 'Create rollout (paused)')));

  const el = h('section.view', { 'aria-labelledby': 'ro-title' },
    h('div.title', h('h2#ro-title', 'Firmware & rollouts')),
    h('div.grid',
      h('section.panel', { 'aria-labelledby': 'up-title' }, h('h3#up-title', 'Upload firmware'), upload, upResult),
      h('section.panel', { 'aria-labelledby': 'new-title' }, h('h3#new-title', 'New rollout'),
        h('p.hint', 'A new rollout is paused: read its plan, then start it.'), create, roResult)),
    h('section.panel', { 'aria-labelledby': 'rl-title' }, h('h3#rl-title', 'Rollouts'), roList),
    h('section.panel', { 'aria-labelledby': 'fw-title' }, h('h3#fw-title', 'Firmware'), fwList));

  let stopped = false;

  async function loadFirmware() {
    try {
      const { firmware } = await api('/v1/firmware');
      if (stopped) return;
      const chosen = fwSelect.value;
      fwSelect.replaceChildren(...(firmware.length ? firmware.map((f) => h('option', { value: String(f.id) }, `${f.version} (${(f.hw || []).join(', ')})`))
        : [h('option', { value: '' }, 'Upload firmware first')]));
      if (chosen) fwSelect.value = chosen;
      fwList.replaceChildren(firmware.length ? table('Firmware', FW_COLUMNS, firmware.map((f) => row(FW_COLUMNS, [
        f.version, (f.hw || []).join(', '), requirementsText(f.requirements), bytes(f.size),
        h('code.hash', f.sha256.slice(0, 12)), when(f.created)]))) : h('p.empty', 'No firmware yet: upload an image above.'));
    } catch (e) {
      if (e.status !== 401) fwList.replaceChildren(note(`Cannot list firmware: ${e.message}`, 'error'));
    }
  }

  async function loadRollouts() {
    try {
      const { rollouts } = await api('/v1/rollouts');
      if (stopped) return;
      roList.replaceChildren(rollouts.length ? table('Rollouts', RO_COLUMNS, rollouts.map((r) => row(RO_COLUMNS, [
        h('a', { href: `#/rollouts/${r.id}` }, `Rollout ${r.id}`), r.firmware ? r.firmware.version : '-',
        targetText(r.target), h(`span.badge.s-${r.state}`, r.state), countsText(r.counts), when(r.created)])))
        : h('p.empty', 'No rollouts yet.'));
    } catch (e) {
      if (e.status !== 401) roList.replaceChildren(note(`Cannot list rollouts: ${e.message}`, 'error'));
    }
  }

  async function uploadFirmware(form) {
    const uniform = [];
    if (form.u4k.checked) uniform.push(4096);
    if (form.u64k.checked) uniform.push(65536);
    const flash = {};
    if (uniform.length) flash.uniform_erase = uniform;
    if (form.min.value) flash.min_size = Number(form.min.value);
    const metadata = { version: form.version.value.trim(), hw: form.hw.value.split(',').map((s) => s.trim()).filter(Boolean) };
    if (Object.keys(flash).length) metadata.requirements = { flash };
    const body = new FormData();
    body.append('image', form.image.files[0]);
    body.append('metadata', new Blob([JSON.stringify(metadata)], { type: 'application/json' }));
    notice(upResult, 'Uploading…', 'info');
    try {
      const fw = await api('/v1/firmware', { body });
      notice(upResult, `Uploaded firmware ${fw.version} (${bytes(fw.size)}).`, 'ok');
      form.reset();
      await loadFirmware();
      fwSelect.value = String(fw.id);
    } catch (e) {
      if (e.status !== 401) notice(upResult, `Not uploaded: ${e.message}`, 'error');
    }
  }

  async function createRollout(form) {
    const body = { firmware: Number(fwSelect.value) };
    const v = targetValue.value.trim();
    if (targetKind.value === 'devices') body.devices = v.split(/[\s,]+/).filter(Boolean).map((s) => s.toLowerCase());
    else body[targetKind.value] = v;
    const stages = form.stages.value.split(/[\s,]+/).filter(Boolean).map(Number);
    if (stages.length) body.stages = stages;
    if (form.unknown.checked) body.allow_unknown_flash = true;
    notice(roResult, 'Creating…', 'info');
    try {
      const r = await api('/v1/rollouts', { body });
      location.hash = `#/rollouts/${r.id}`;
    } catch (e) {
      if (e.status !== 401) notice(roResult, `Not created: ${e.message}`, 'error');
    }
  }

  loadFirmware();
  loadRollouts();
  return { el, stop() { stopped = true; } };
}

// One rollout: its state and counts, polled while it runs, and the plan.
export function rolloutView(id) {
  const summary = h('dl.details', { 'aria-label': 'Rollout state' }, h('dd', 'Loading…'));
  const counts = h('div.counts', { 'aria-live': 'polite' });
  const actions = h('div.actions');
  const msg = note();
  const plan = h('div.list', h('p.empty', 'Loading the plan…'));
  const planCounts = h('p.counts');
  const el = h('section.view', { 'aria-labelledby': 'rollout-title' },
    h('p.crumb', h('a', { href: '#/rollouts' }, '← Firmware & rollouts')),
    h('div.title', h('h2#rollout-title', `Rollout ${id}`)), msg,
    h('div.grid',
      h('section.panel', { 'aria-labelledby': 'rs-title' }, h('h3#rs-title', 'State'), summary, actions),
      h('section.panel', { 'aria-labelledby': 'rc-title' }, h('h3#rc-title', 'Devices by state'), counts)),
    h('section.panel', { 'aria-labelledby': 'plan-title' }, h('h3#plan-title', 'Plan'),
      h('p.hint', 'The dry run, from what each device said in its last hello: who gets the update, who is blocked and why.'),
      planCounts, plan));

  let stopped = false;
  let timer = null;
  let state = null;

  function button(label, action) {
    return h('button', { type: 'button', onclick: () => steer(action) }, label);
  }

  async function steer(action) {
    if (action === 'abort' && !confirm(`Abort rollout ${id}? Devices not yet updated will not be.`)) return;
    try {
      await api(`/v1/rollouts/${id}/${action}`, { method: 'POST' });
      notice(msg, '', 'info');
    } catch (e) {
      if (e.status !== 401) notice(msg, `Cannot ${action}: ${e.message}`, 'error');
    }
    refresh();
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const [r, p] = await Promise.all([api(`/v1/rollouts/${id}`), api(`/v1/rollouts/${id}/plan`)]);
      if (stopped) return;
      state = r.state;
      fill(summary,
        h('dt', 'State'), h('dd', h(`span#rollout-state.badge.s-${r.state}`, r.state)),
        h('dt', 'Firmware'), h('dd', r.firmware ? r.firmware.version : '-'),
        h('dt', 'Target'), h('dd', targetText(r.target)),
        h('dt', 'Stage'), h('dd', `${r.stage} of ${r.stages}`,
          r.options && Array.isArray(r.options.stages) ? ` (${r.options.stages.join('%, ')}%)` : ''),
        h('dt', 'Devices'), h('dd', String(r.total ?? '-')),
        r.reason ? [h('dt', 'Reason'), h('dd', r.reason)] : null);
      const entries = Object.entries(r.counts || {}).filter(([, n]) => n);
      counts.replaceChildren(entries.length ? h('ul.states', entries.map(([s, n]) =>
        h('li', { dataset: { state: s } }, h('strong', String(n)), ` ${s}`))) : h('p.empty', 'No device yet.'));
      const started = entries.some(([s]) => s !== 'pending');
      fill(actions,
        r.state === 'paused' ? button(started ? 'Resume' : 'Start rollout', 'resume') : null,
        r.state === 'running' ? button('Pause', 'pause') : null,
        ENDED.includes(r.state) ? h('p', `This rollout has ${r.state === 'completed' ? 'completed' : 'been aborted'}.`) : button('Abort', 'abort'));
      const pc = p.counts || {};
      planCounts.textContent = `${pc.eligible ?? 0} eligible, ${pc.blocked ?? 0} blocked, ${pc['up-to-date'] ?? 0} up to date`;
      plan.replaceChildren(p.devices.length ? table('Plan', PLAN_COLUMNS, p.devices.map((d) => row(PLAN_COLUMNS, [
        h('a', { href: `#/devices/${d.id}` }, d.id), String(d.stage ?? '-'),
        h(`span.badge.${d.decision === 'eligible' ? 'on' : d.decision === 'blocked' ? 'off' : 'neutral'}`, d.decision),
        h('span.reason', d.reason || '-'),
        h('span', d.state || '-', d.state_reason && d.state_reason !== d.reason ? h('span.sub', d.state_reason) : null),
        String(d.attempts ?? 0),
      ], { dataset: { device: d.id, decision: d.decision } }))) : h('p.empty', 'This rollout targets no device.'));
    } catch (e) {
      if (e.status === 401 || stopped) return;
      notice(msg, e.status === 404 ? `There is no rollout ${id}.` : `Cannot read rollout ${id}: ${e.message}`, 'error');
      if (e.status === 404) return;
    }
    // Poll while it can still change; stop once it has ended.
    if (!stopped && !ENDED.includes(state)) timer = setTimeout(refresh, state === 'running' ? 1500 : 4000);
  }

  refresh();
  return { el, stop() { stopped = true; clearTimeout(timer); } };
}

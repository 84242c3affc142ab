// The flash-parts view: the table, each part's verdict against a chosen
// firmware, and a CSV import that shows every refused line.
import { api, query, h, bytes, notice, note, table, row } from './lib.js';

const COLUMNS = ['Part', 'JEDEC', 'Size', '4 KB everywhere', '64 KB everywhere', 'Erase layouts', 'Shares id with', 'Verdict'];
const yes = (v) => (v ? 'yes' : 'no');

export function flashView() {
  const fwSelect = h('select#fp-firmware', {}, h('option', { value: '' }, 'none'));
  const filter = h('input#fp-filter', { type: 'search', autocomplete: 'off', placeholder: 'part, vendor or JEDEC id' });
  const msg = note();
  const list = h('div.list', h('p.empty', 'Loading the table…'));
  const csv = h('textarea#fp-csv', { rows: 6, spellcheck: 'false', 'aria-describedby': 'fp-csv-help' });
  const file = h('input#fp-file', { type: 'file', accept: '.csv,text/csv' });
  const result = note('', 'info', 'div#fp-result');

  const el = h('section.view', { 'aria-labelledby': 'flash-title' },
    h('div.title', h('h2#flash-title', 'Flash parts')),
    h('p.hint', 'The parts Tender knows, by JEDEC id and erase layout. A firmware update goes only to a device whose part can take it.'),
    h('form.filters', { onsubmit: (e) => e.preventDefault(), 'aria-label': 'Show parts' },
      h('div.field', h('label', { for: 'fp-firmware' }, 'Verdict for firmware'), fwSelect),
      h('div.field', h('label', { for: 'fp-filter' }, 'Find'), filter)),
    msg, list,
    h('section.panel', { 'aria-labelledby': 'import-title' },
      h('h3#import-title', 'Import a CSV'),
      h('p#fp-csv-help.hint', 'Header line required (vendor, part, jedec_mfr, jedec_dev, size_bytes, …; see docs/flash-parts.md). ' +
        'All or nothing: one bad row refuses the file.'),
      h('form.code', { onsubmit: (e) => { e.preventDefault(); importCsv(); } },
        h('div.field', h('label', { for: 'fp-file' }, 'CSV file'), file),
        h('label', { for: 'fp-csv' }, 'or CSV text'), csv,
        h('div.actions', h('button', { type: 'submit' }, 'Import'))),
      result));

  let parts = [];
  let stopped = false;
  let hasVerdicts = false;

  file.addEventListener('change', async () => { if (file.files[0]) csv.value = await file.files[0].text(); });
  fwSelect.addEventListener('change', load);
  filter.addEventListener('input', render);

  function render() {
    const f = filter.value.trim().toLowerCase();
    const shown = parts.filter((p) => !f || `${p.vendor} ${p.part} ${p.jedec}`.toLowerCase().includes(f));
    const cols = hasVerdicts ? COLUMNS : COLUMNS.slice(0, -1);
    list.replaceChildren(shown.length ? table('Flash parts', cols, shown.map((p) => row(cols, [
      h('span', p.part, h('span.sub', p.vendor)), p.jedec, bytes(p.size_bytes), yes(p.uniform_4k_erase),
      yes(p.uniform_64k_erase), h('code', p.erase_layouts || '-'), p.shares_id_with || '-',
      hasVerdicts ? verdictCell(p.verdict) : null,
    ].slice(0, cols.length)))) : h('p.empty', parts.length ? 'No part matches.' : 'The table is empty: import a CSV below.'));
  }

  function verdictCell(v) {
    if (!v) return '-';
    return h('span', h(`span.badge.${v.decision === 'compatible' ? 'on' : 'off'}`, v.decision), ' ', h('span.reason', v.reason || ''));
  }

  async function loadFirmware() {
    try {
      const { firmware } = await api('/v1/firmware');
      fwSelect.append(...firmware.map((f) => h('option', { value: String(f.id) }, `${f.version} (${(f.hw || []).join(', ')})`)));
    } catch (e) {
      if (e.status !== 401) notice(msg, `Cannot list firmware: ${e.message}`, 'error');
    }
  }

  async function load() {
    list.setAttribute('aria-busy', 'true');
    try {
      const res = await api(`/v1/flash-parts${query({ firmware: fwSelect.value })}`);
      if (stopped) return;
      parts = res.parts;
      hasVerdicts = !!fwSelect.value && parts.some((p) => p.verdict);
      notice(msg, fwSelect.value && !hasVerdicts && parts.length
        ? 'This tenderd gives no verdict per part: create a rollout and read its plan.' : '', 'info');
      render();
    } catch (e) {
      if (e.status !== 401) notice(msg, `Cannot read the flash-parts table: ${e.message}`, 'error');
    } finally {
      list.removeAttribute('aria-busy');
    }
  }

  async function importCsv() {
    if (!csv.value.trim()) {
      notice(result, 'Choose a CSV file or paste CSV text first.', 'error');
      return;
    }
    notice(result, 'Importing…', 'info');
    csv.removeAttribute('aria-invalid');
    try {
      const r = await api('/v1/flash-parts/import', { body: csv.value, type: 'text/csv' });
      notice(result, `Imported ${r.imported} part${r.imported === 1 ? '' : 's'}.`, 'ok');
      load();
    } catch (e) {
      if (e.status === 401) return;
      csv.setAttribute('aria-invalid', 'true');
      notice(result, [
        h('p', h('strong', 'Nothing was imported. '), e.errors.length ? `${e.errors.length} error${e.errors.length === 1 ? '' : 's'}:` : e.message),
        e.errors.length ? h('ul.errors', e.errors.map((x) =>
          h('li', `Line ${x.line}${x.column ? `, column ${x.column}` : ''}: ${x.message}`))) : null], 'error');
    }
  }

  loadFirmware();
  load();
  return { el, stop() { stopped = true; } };
}

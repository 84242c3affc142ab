// Shared by every view: the API client, the session's token, and a small
// element builder.  No framework: views build DOM nodes and replace them.

const KEY = 'tender.token';

export const token = () => sessionStorage.getItem(KEY);
export const setToken = (t) => (t ? sessionStorage.setItem(KEY, t) : sessionStorage.removeItem(KEY));

// An API failure: the HTTP status, the stable code, the human message and,
// for imports, the per-line errors the server sends.
export class ApiError extends Error {
  constructor(status, code, message, errors) {
    super(message);
    this.status = status;
    this.code = code;
    this.errors = errors || [];
  }
}

// Set by app.js: called when the server refuses the token, so any view
// falls back to the sign-in form with a message.
let onUnauthorized = () => {};
export const setUnauthorizedHandler = (fn) => { onUnauthorized = fn; };

// fetch() with the bearer token.  body: an object (sent as JSON), a string
// (sent with opts.type) or FormData (the browser sets the multipart type).
export async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  let body = opts.body;
  if (body !== undefined && !(body instanceof FormData) && typeof body !== 'string') {
    body = JSON.stringify(body);
    headers['Content-Type'] = 'application/json';
  } else if (typeof body === 'string') {
    headers['Content-Type'] = opts.type || 'application/json';
  }
  let res;
  try {
    res = await fetch(path, { method: opts.method || (body !== undefined ? 'POST' : 'GET'), headers, body });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach tenderd (${e.message})`);
  }
  if (res.status === 204) return null;
  let json = null;
  try { json = await res.json(); } catch (e) { /* not JSON */ }
  if (!res.ok) {
    const err = json && json.error;
    const e = new ApiError(res.status, err ? err.code : 'http', err ? err.message : `HTTP ${res.status}`,
                           err && err.errors);
    if (res.status === 401 && !opts.noAuthRedirect) onUnauthorized('The server refused the admin token (401): sign in again.');
    throw e;
  }
  return json;
}

// A query string from an object, leaving out empty values.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params))
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}

// h('tag.class#id', {attrs, on*: handler}, ...children): a DOM element.
// Strings become text nodes (never HTML), null and false are skipped.
export function h(spec, attrs, ...children) {
  const [, tag, rest] = spec.match(/^([a-z0-9]+)(.*)$/i);
  const el = document.createElement(tag);
  for (const part of rest.match(/[.#][^.#]+/g) || [])
    if (part[0] === '.') el.classList.add(part.slice(1)); else el.id = part.slice(1);
  if (attrs !== undefined && attrs !== null &&
      (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

// replaceChildren() that skips null and false and flattens arrays, as h() does.
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// "3 s ago", "5 min ago", or the date: short and readable in a table cell.
export function ago(iso) {
  if (!iso) return '-';
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (s < 0) return new Date(iso).toLocaleString();
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

export const when = (iso) => (iso ? new Date(iso).toLocaleString() : '-');

export function bytes(n) {
  if (n === null || n === undefined) return '-';
  if (n >= 1 << 20 && n % (1 << 20) === 0) return `${n / (1 << 20)} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} B`;
}

// A log event in the operator's text form, as tenderctl prints it, in the
// browser's time zone: 2026-11-25 03:12:37 UTC+0 [Status] Device connected
export function eventText(ev) {
  const t = new Date(ev.ts);
  const p = (n) => String(n).padStart(2, '0');
  const off = -t.getTimezoneOffset();
  const zone = `UTC${off < 0 ? '-' : '+'}${Math.floor(Math.abs(off) / 60)}${Math.abs(off) % 60 ? `:${p(Math.abs(off) % 60)}` : ''}`;
  const label = ev.type.charAt(0).toUpperCase() + ev.type.slice(1);
  return `${t.getFullYear()}-${p(t.getMonth() + 1)}-${p(t.getDate())} ${p(t.getHours())}:${p(t.getMinutes())}:` +
    `${p(t.getSeconds())} ${zone} [${label}] ${ev.msg}`;
}

// A message in a view, in el: kind 'error' makes it role="alert", announced
// at once; 'info' and 'ok' role="status", announced when the reader is
// idle.  content: text or nodes.  An empty notice stays in the page (a live
// region must be there before its message, or screen readers miss it) and
// takes no room (app.css).
export function notice(el, content, kind = 'info') {
  fill(el, content);
  el.className = `notice ${kind}`;
  el.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  return el;
}

// A new notice element: note() is an empty one, ready for notice().
export const note = (content = '', kind = 'info', spec = 'div') => notice(h(spec), content, kind);

// A table whose rows become labelled cards at phone width (app.css).
export function table(caption, columns, rows) {
  return h('table.cards', {},
    h('caption.visually-hidden', caption),
    h('thead', h('tr', columns.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', rows));
}

export function row(columns, cells, attrs) {
  return h('tr', attrs || {}, cells.map((c, i) => h('td', { 'data-label': columns[i] }, c)));
}

export const flashText = (f) => {
  if (!f) return '-';
  const parts = f.parts && f.parts.length ? f.parts.join(' / ') : 'not in the table';
  return `${f.jedec || '?'} ${parts}${f.table ? ` (${f.table})` : ''}`;
};

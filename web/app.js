// The dashboard: plain modules over the public HTTP API, no build step.
// The admin token lives in this browser session only (sessionStorage).
const $ = (sel) => document.querySelector(sel);
const token = () => sessionStorage.getItem('tender.token');

async function api(path) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  if (!res.ok) {
    let message = `${res.status}`;
    try { message = (await res.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return res.json();
}

function showSignedIn(on) {
  $('#login').hidden = on;
  $('#who').hidden = !on;
}

async function loadDevices() {
  const body = $('#devices tbody');
  try {
    const { devices } = await api('/v1/devices?limit=1000');
    body.replaceChildren(...devices.map((d) => {
      const tr = document.createElement('tr');
      const flash = d.flash ? `${d.flash.jedec ?? '?'}${d.flash.parts?.length ? ' ' + d.flash.parts.join(' / ') : ''}` : '-';
      for (const v of [d.id, d.online ? 'online' : 'offline', d.hw ?? '-', d.fw ?? '-', flash]) {
        const td = document.createElement('td');
        td.textContent = v;
        tr.append(td);
      }
      return tr;
    }));
    $('#devices').hidden = devices.length === 0;
    $('#devices-empty').textContent = devices.length ? '' : 'No devices yet: register one with tenderctl register.';
  } catch (e) {
    $('#devices-empty').textContent = `Cannot list devices: ${e.message}`;
  }
}

let stream = null;

// EventSource cannot send headers: the token goes in the query, and the
// browser resumes with Last-Event-ID by itself after a drop.
function follow(device) {
  if (stream) stream.close();
  $('#log').replaceChildren();
  const url = `/v1/devices/${encodeURIComponent(device)}/logs?follow=1&access_token=${encodeURIComponent(token())}`;
  stream = new EventSource(url);
  $('#log-state').textContent = `Following ${device}…`;
  stream.addEventListener('open', () => { $('#log-state').textContent = `Following ${device}: live.`; });
  stream.addEventListener('message', (e) => {
    const ev = JSON.parse(e.data);
    const li = document.createElement('li');
    const label = ev.type.charAt(0).toUpperCase() + ev.type.slice(1);
    li.className = `t-${ev.type}`;
    li.dataset.id = ev.id;
    li.textContent = `${new Date(ev.ts).toLocaleString()} [${label}] ${ev.msg}`;
    $('#log').append(li);
    li.scrollIntoView({ block: 'nearest' });
  });
  stream.addEventListener('state_change', (e) => { $('#log-state').textContent = e.data; });
  stream.addEventListener('error', () => { $('#log-state').textContent = `Reconnecting to ${device}…`; });
}

$('#login').addEventListener('submit', (e) => {
  e.preventDefault();
  sessionStorage.setItem('tender.token', $('#token').value.trim());
  $('#token').value = '';
  showSignedIn(true);
  loadDevices();
});
$('#logout').addEventListener('click', () => {
  sessionStorage.removeItem('tender.token');
  if (stream) stream.close();
  showSignedIn(false);
});
$('#follow').addEventListener('submit', (e) => {
  e.preventDefault();
  follow($('#device').value.trim().toLowerCase());
});

if (token()) {
  showSignedIn(true);
  loadDevices();
}

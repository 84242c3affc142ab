#!/usr/bin/env node
// An independent device client for the integration tests: Debian's node-ws,
// nothing shared with tenderd or tender-sim.  Each argument is one step:
//   connect URL        open the WebSocket
//   send JSON          send a text frame verbatim
//   hello ID SECRET    send a hello (hw "node", fw "1.0")
//   binary             send a binary frame
//   big N              send a text frame of N bytes
//   fragmented N       send a log frame of about N bytes in 3 fragments
//   wait MS            wait
//   expect TYPE        wait (up to 10 s) for a server frame of that type
//   close              close normally (1000) and wait for the close
//   hold               keep the connection until the server closes it
//   pingpong N         send msg "ping" {seq:1..N} (at most 32 in flight) and
//                      check that "pong" replies come back with every seq
//                      once, in order; prints "pingpong ok N" or fails
//   expectmsg NAME     wait (up to 10 s) for a msg frame with that name
//   fetch OFF LEN [ID] send a fetch (ID: the last update offer's id); expect
//                      binary waits for a chunk, printed "chunk OFFSET BYTES"
//   status STATE       send an update_status for the last offer
//   waitfile PATH      wait (up to 30 s) until PATH exists: the test says go
// It prints one line per thing it sees: "frame <json>", "closed <code> <reason>".
'use strict';
let WebSocket;
try { WebSocket = require('ws'); } catch (e) { WebSocket = require('/usr/share/nodejs/ws'); }

const steps = process.argv.slice(2);
let ws = null, frames = [], waiters = [], closed = null, msgs = [], offer = null;

function out(line) { process.stdout.write(line + '\n'); }

function onFrame(data, isBinary) {
  if (isBinary) {
    out('chunk ' + (data.length >= 8 ? data.readBigUInt64BE(0) : '?') + ' ' + (data.length - 8));
    frames.push('binary');
    waiters = waiters.filter(w => !w('binary'));
    return;
  }
  const text = data.toString();
  out('frame ' + text);
  let type = null, obj = null;
  try { obj = JSON.parse(text); type = obj.type; } catch (e) { }
  if (type === 'update')
    offer = obj.id;
  if (type === 'msg') {
    msgs.push(obj);
    waiters = waiters.filter(w => !w('msg:' + obj.name));
  }
  frames.push(type);
  waiters = waiters.filter(w => !w(type));
}

function waitFor(pred, ms) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('timeout')), ms);
    const check = (type) => { if (pred(type)) { clearTimeout(t); resolve(); return true; } return false; };
    waiters.push(check);
  });
}

async function run() {
  for (let i = 0; i < steps.length; i++) {
    const s = steps[i];
    if (s === 'connect') {
      const url = steps[++i];
      ws = new WebSocket(url, { perMessageDeflate: false });
      ws.on('message', onFrame);
      ws.on('close', (code, reason) => {
        closed = code;
        out('closed ' + code + ' ' + reason.toString());
        waiters = waiters.filter(w => !w('__closed__'));
      });
      ws.on('error', (e) => out('error ' + e.message));
      await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
      out('open');
    } else if (s === 'send') {
      ws.send(steps[++i]);
    } else if (s === 'hello') {
      const id = steps[++i], secret = steps[++i];
      ws.send(JSON.stringify({ type: 'hello', id, secret, hw: 'node', fw: '1.0' }));
    } else if (s === 'binary') {
      ws.send(Buffer.from([1, 2, 3]), { binary: true });
    } else if (s === 'big') {
      const n = parseInt(steps[++i], 10);
      ws.send(JSON.stringify({ type: 'log', msg: 'x'.repeat(Math.max(0, n - 30)) }));
    } else if (s === 'fragmented') {
      const n = parseInt(steps[++i], 10);
      const text = JSON.stringify({ type: 'log', msg: 'f'.repeat(Math.max(0, n - 30)) });
      const third = Math.ceil(text.length / 3);
      ws.send(text.slice(0, third), { fin: false });
      ws.send(text.slice(third, 2 * third), { fin: false });
      ws.send(text.slice(2 * third), { fin: true });
    } else if (s === 'wait') {
      await new Promise(r => setTimeout(r, parseInt(steps[++i], 10)));
    } else if (s === 'expect') {
      const type = steps[++i];
      if (!frames.includes(type))
        await waitFor(t => t === type, 10000);
      frames.splice(frames.indexOf(type), 1);
    } else if (s === 'pingpong') {
      const n = parseInt(steps[++i], 10);
      let sent = 0, got = 0;
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('pingpong: ' + got + ' of ' + n + ' replies')), 120000);
        const pump = () => {
          while (sent < n && sent - got < 32) {
            sent++;
            ws.send(JSON.stringify({ type: 'msg', name: 'ping', data: { seq: sent } }));
          }
        };
        ws.on('message', (data, isBinary) => {
          let m;
          try { m = JSON.parse(data.toString()); } catch (e) { return; }
          if (m.type !== 'msg' || m.name !== 'pong') return;
          const seq = m.data && m.data.seq;
          if (seq !== got + 1) {
            clearTimeout(timer);
            reject(new Error('pingpong: expected seq ' + (got + 1) + ', got ' + seq));
            return;
          }
          got++;
          if (got === n) { clearTimeout(timer); resolve(); } else pump();
        });
        pump();
      });
      out('pingpong ok ' + n);
    } else if (s === 'expectmsg') {
      const name = steps[++i];
      if (!msgs.some(m => m.name === name))
        await waitFor(t => t === 'msg:' + name, 10000);
    } else if (s === 'fetch') {
      const offset = parseInt(steps[++i], 10), length = parseInt(steps[++i], 10);
      const id = (i + 1 < steps.length && /^[0-9]+\.[0-9]+$/.test(steps[i + 1])) ? steps[++i] : offer;
      ws.send(JSON.stringify({ type: 'fetch', id, offset, length }));
    } else if (s === 'status') {
      ws.send(JSON.stringify({ type: 'update_status', id: offer, state: steps[++i] }));
    } else if (s === 'waitfile') {
      const path = steps[++i], fs = require('fs');
      for (let waited = 0; !fs.existsSync(path); waited += 50) {
        if (waited > 30000) throw new Error('waitfile: ' + path + ' never appeared');
        await new Promise(r => setTimeout(r, 50));
      }
    } else if (s === 'close') {
      if (closed === null) {
        ws.close(1000, 'bye');
        await waitFor(t => t === '__closed__', 10000).catch(() => {});
      }
    } else if (s === 'hold') {
      if (closed === null)
        await waitFor(t => t === '__closed__', 600000);
    } else {
      throw new Error('unknown step ' + s);
    }
  }
}

run().then(() => process.exit(0), (e) => { out('fail ' + e.message); process.exit(1); });

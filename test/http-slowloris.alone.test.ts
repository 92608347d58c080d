/**
 * Slowloris against the HTTP link: 200 connections that each send one byte
 * a second (and come back a second after the station closes them), from
 * another process, as an attacker on the USB Ethernet would. Meanwhile four
 * serial links provision and a fifth answers PINGs: the flood must not be
 * felt there; a prompt client gets its certificate during the flood and after it.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { HttpLink } from '../src/links/http.js';
import { SerialLink } from '../src/links/index.js';
import { slowToken } from './helpers/load.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { deviceFields, ptreeJson, send, SOTA } from './helpers/http.js';
import { TestJig } from './helpers/jig.js';
import { FACTORY, testStation, uuid } from './helpers/pki.js';
import { ptyPair } from './helpers/pty.js';
import { waitFor } from './helpers/served.js';


const ATTACKERS = 200;
const FLOOD_S = 16;

/** The attacker, run with `node -e`: prints what it saw as one JSON line when time is up. */
const SLOWLORIS = `
const net = require('node:net');
const [port, seconds, count] = process.argv.slice(1).map(Number);
const request = 'POST /sign HTTP/1.1\\r\\nHost: station\\r\\nContent-Type: application/json\\r\\nContent-Length: 4000\\r\\n\\r\\n{"csr": "';
const seen = { connections: 0, cutShort: 0, timedOut: 0 };
let stopping = false;
function attack() {
  if (stopping) return;
  const socket = net.connect(port, '127.0.0.1');
  let sent = 0, answer = '', since = 0, drip = null;
  socket.on('connect', () => {
    seen.connections++;
    since = Date.now();
    drip = setInterval(() => socket.write(request[sent++ % request.length]), 1000);
  });
  socket.on('data', (d) => (answer += d));
  socket.on('error', () => undefined);
  socket.on('close', () => {
    clearInterval(drip);
    if (answer.startsWith('HTTP/1.1 408 ')) seen.timedOut++;
    else if (!answer && since && Date.now() - since < 4000) seen.cutShort++;
    setTimeout(attack, 1000);
  });
}
for (let i = 0; i < count; i++) attack();
setTimeout(() => {
  stopping = true;
  process.stdout.write(JSON.stringify(seen) + '\\n');
  process.exit(0);
}, seconds * 1000);
`;

test('200 slowloris connections while four serial links provision: PING p99 under 20 ms; a valid POST gets 201 during and after', async (t) => {
  const s = await testStation({ extra: SOTA }, { wrapSigner: slowToken(20) });
  const http = new HttpLink(s.station, { listen: '127.0.0.1:0', sota: s.config.sota });
  await http.start();
  const ptys = await Promise.all(Array.from({ length: 5 }, (_, i) => ptyPair(s.dir, `p${i}`)));
  const links = ptys.map((p) => new SerialLink(s.station, { path: p.station, baud: 115200, idleTimeoutMs: 10_000, reopenMs: 100 }));
  await Promise.all(links.map((l) => l.start()));
  await waitFor(() => links.every((l) => l.status.state === 'open'));
  const jigs = await Promise.all(ptys.map((p) => TestJig.open(p.jig)));
  t.teardown(async () => {
    await Promise.all(jigs.map((j) => j.close()));
    await Promise.all(links.map((l) => l.stop()));
    await Promise.all(ptys.map((p) => p.kill()));
    await http.stop();
    await s.close();
  });

  let provisioningOn = true;
  const provisioning = jigs.slice(1).map(async (jig, l) => {
    for (let i = 0; provisioningOn; i++) {
      const r = await jig.request('SIGN', `s${l}-${i}`, Buffer.from(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der), 30_000);
      if (r.type !== 'CERT') throw new Error(`${r.code} ${r.message}`);
    }
  });
  /** PING round trips on the fifth link, one every 20 ms, until `until` says stop; sorted. */
  const pings = async (until: () => boolean): Promise<number[]> => {
    const rtts: number[] = [];
    for (let i = 0; !until() && i < 1_000; i++) {
      const t0 = performance.now();
      const r = await jigs[0]!.request('PING', `p${i}`, null);
      rtts.push(performance.now() - t0);
      t.is(r.type, 'PONG');
      await new Promise((res) => setTimeout(res, 20));
    }
    return rtts.sort((a, b) => a - b);
  };
  const describe = (rtts: number[]): string =>
    `${rtts.length} PINGs: p50 ${rtts[rtts.length >> 1]!.toFixed(1)} ms, p99 ${rtts[Math.floor(rtts.length * 0.99)]!.toFixed(1)} ms, worst ${rtts.at(-1)!.toFixed(1)} ms`;

  // The same measure without the flood first: says how loaded the machine itself is.
  const quietEnd = Date.now() + 5_000;
  t.log(`provisioning, no flood: ${describe(await pings(() => Date.now() > quietEnd))}`);

  const attacker = spawn(process.execPath, ['-e', SLOWLORIS, String(http.port), String(FLOOD_S), String(ATTACKERS)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let report = '';
  attacker.stdout.on('data', (d) => (report += d));
  let flooding = true;
  const attackOver = new Promise<void>((resolve) => attacker.once('exit', () => resolve())).then(() => (flooding = false));
  t.teardown(() => void attacker.kill());
  await new Promise((r) => setTimeout(r, 2_000)); // the flood has filled the link's connections
  const during = await send(http.port, 'POST', ptreeJson(deviceFields().fields));
  const rtts = await pings(() => !flooding);
  await attackOver;
  provisioningOn = false;
  await Promise.all(provisioning);

  const p99 = rtts[Math.floor(rtts.length * 0.99)]!;
  t.log(`provisioning and the flood: ${describe(rtts)}`);
  t.true(rtts.length >= 200, `${rtts.length} PINGs`);
  t.true(p99 < 20, `PING p99 ${p99.toFixed(1)} ms`);

  const seen = JSON.parse(report) as { connections: number; cutShort: number; timedOut: number };
  t.log(`attacker: ${JSON.stringify(seen)}; HTTP link refused ${http.status.refused}`);
  t.true(seen.connections > 3 * ATTACKERS, 'the attacker kept coming back');
  t.true(seen.cutShort > ATTACKERS, 'past the cap, slow connections were closed to make room');
  t.is(during.status, 201, `a prompt client got in during the flood: ${during.text}`);
  t.true(links.slice(1).every((l) => l.status.issued > 3), 'the four links really were provisioning');

  const device = deviceFields();
  const res = await send(http.port, 'POST', ptreeJson(device.fields));
  t.is(res.status, 201, res.text);
  t.is(s.ledger.verifyChain(), null);
});

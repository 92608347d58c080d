/**
 * The benchmark's HTTP clients, in a process of their own as the J1 jigs
 * are (bench-jig.ts): a device is another machine, and a client sharing
 * the station's event loop would charge its own work (connections,
 * parsing replies) to the station's links thread. Each request opens a new
 * connection and sends the body the stock lmp-device-register sends, as a
 * device does. Prints JSON.
 *   node dist/scripts/bench-http.js PORT COUNT CLIENTS FACTORY
 */
import { randomUUID } from 'node:crypto';
import { request } from 'node:http';
import { makeDeviceCsr, pemEncode } from '../src/x509/index.js';
import { pool } from './bench-lib.js';

const [portText, countText, clientsText, factory] = process.argv.slice(2);
const [port, count, clients] = [Number(portText), Number(countText), Number(clientsText)];
const bodies = Array.from({ length: count }, () => {
  const id = randomUUID();
  const csr = pemEncode(makeDeviceCsr({ deviceId: id, factory: factory!, production: true }).der, 'CERTIFICATE REQUEST');
  // lmp-device-register's body: pretty-printed by boost's JSON writer, which escapes '/'.
  return JSON.stringify({ name: id, uuid: id, csr, 'hardware-id': 'intel-corei7-64', 'sota-config-dir': '/var/sota', 'use-ostree-server': 'true', overrides: { pacman: { tags: '"main"' } } }, null, 4).replace(/\//g, '\\/');
});
let next = 0;
const post = (): Promise<void> =>
  new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/sign', method: 'POST', agent: false, headers: { 'Content-type': 'application/json', 'OSF-TOKEN': 'na' } }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 201 ? resolve() : reject(new Error(`bench-http: HTTP ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end(bodies[next++]);
  });
const seconds = await pool(count, clients, post);
process.stdout.write(JSON.stringify({ seconds, requests: count }) + '\n');

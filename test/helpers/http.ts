/** A client for the HTTP link written from what lmp-device-register sends, plus raw sockets for what it never would. */
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { makeDeviceCsr, pemEncode } from '../../src/x509/index.js';
import { FACTORY, uuid } from './pki.js';

export const SOTA = '\n[sota]\ngateway = "https://ota-lite.example.com:8443"\nostree = "https://ota-lite.example.com:8443/treehub"\n';

/** The body the way lmp-device-register writes it: boost ptree's write_json. */
export function ptreeJson(fields: unknown): string {
  return JSON.stringify(fields, null, 4).replace(/\//g, '\\/') + '\n';
}

export interface DeviceBody {
  fields: Record<string, unknown>;
  deviceId: string;
  /** DER of the CSR in the body. */
  der: Uint8Array;
}

/** The fields the stock client sends for one new device. */
export function deviceFields(extra: Record<string, unknown> = {}): DeviceBody {
  const deviceId = uuid();
  const der = makeDeviceCsr({ deviceId, factory: FACTORY, production: true }).der;
  const fields: Record<string, unknown> = {
    'use-ostree-server': 'true',
    'sota-config-dir': '/var/sota',
    'hardware-id': 'intel-corei7-64',
    name: `line-7-${deviceId.slice(0, 8)}`,
    uuid: deviceId,
    csr: pemEncode(der, 'CERTIFICATE REQUEST'),
    overrides: { pacman: { tags: '"main"' } },
    ...extra,
  };
  return { fields, deviceId, der };
}

export interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

export function send(port: number, method: string, body?: string | Uint8Array, path = '/sign'): Promise<Res> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path, method, agent: false, headers: { 'Content-type': 'application/json', 'OSF-TOKEN': 'na' } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, text }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** Writes raw bytes on a new connection; resolves with all the station sent back once it closes. */
export function rawExchange(port: number, bytes: string | Buffer): Promise<{ answer: string; ms: number }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let answer = '';
    const t0 = Date.now();
    socket.on('connect', () => socket.write(bytes));
    socket.on('data', (d) => (answer += d.toString('latin1')));
    socket.on('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNRESET' ? undefined : reject(err)));
    socket.on('close', () => resolve({ answer, ms: Date.now() - t0 }));
  });
}

/** A connected socket that sends nothing yet. */
export function openSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => resolve(socket));
    socket.once('error', reject);
  });
}

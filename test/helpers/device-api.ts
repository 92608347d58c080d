/**
 * A loopback stand-in for Foundries' device API (the real one cannot be
 * reached here), as fioctl and lmp-device-register use it:
 *   PUT /ota/devices/  {"client.pem", "name", "group"?}  201, or 409 for a name it knows
 *   GET /ota/devices/<name>/   200 {"name", "uuid", "public-key", "group", ...}, or 404
 *   DELETE /ota/devices/<name>/  200, or 404
 * Every call needs the OSF-TOKEN header (401 without the right one).
 * Faults can be injected per device name, or for the next requests of any
 * name; every request is logged with whether it carried the token.
 */
import { randomUUID, X509Certificate } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export type Fault =
  | 'none' // answered as usual (a gap in a fault list)
  | 'error500'
  | 'error503' // with Retry-After (retryAfter)
  | 'throttle429' // with Retry-After (retryAfter)
  | 'stall' // never answers
  | 'drop' // closes the connection before doing anything
  | 'applyThenDrop' // does the request, then closes the connection: the answer is lost
  | 'applyThen500' // does the request, then answers 500 all the same
  | 'reject400'
  | 'echo400' // a 400 whose body repeats the request's headers, token included
  | 'redirect303' // to /login on this server, which answers 200
  | 'redirectAway' // 307 to `redirectTarget` (another origin)
  | 'huge500'; // a 500 whose body is 256 MB

export interface Registration {
  'client.pem': string;
  name: string;
  group?: string;
  uuid: string;
}

export interface LogEntry {
  method: string;
  name: string;
  outcome: number | 'stalled' | 'dropped';
  /** The OSF-TOKEN header as received (tests check where the token went). */
  token: string | undefined;
  path: string;
  /** When it arrived (ms since the epoch). */
  at: number;
  /** PUT: the client.pem sent. */
  certificate?: string;
  /** 'applyThenDrop', 'applyThen500': the status the request took effect with, though its answer was lost. */
  effect?: number;
}

export interface DeviceApi {
  url: string;
  /** name → registration */
  devices: Map<string, Registration>;
  log: LogEntry[];
  /** name (or "METHOD name": that method's requests only, first) → faults to apply to its next requests, in order. */
  faults: Map<string, Fault[]>;
  /** Faults for the next requests whatever their name, in order (before per-name faults). */
  anyFaults: Fault[];
  /** Where 'redirectAway' points. */
  redirectTarget: string;
  delayMs: number;
  /** The Retry-After of 429 and 503 faults (seconds, or an HTTP date). */
  retryAfter: string;
  /** Bytes written of 'huge500' bodies, in total. */
  hugeBytesSent: number;
  /** Called as each request arrives, before it is answered. */
  onRequest?: (count: number, entry: { method: string; name: string }) => void;
  close(): Promise<void>;
}

/** The device's public key as GET returns it: PEM of the certificate's SubjectPublicKeyInfo. */
function publicKeyPem(clientPem: string): string | null {
  try {
    return new X509Certificate(clientPem).publicKey.export({ type: 'spki', format: 'pem' }).toString();
  } catch {
    return null;
  }
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => resolve(body));
    req.on('error', () => resolve(body));
  });
}

export async function deviceApi(token: string): Promise<DeviceApi> {
  const api: Omit<DeviceApi, 'url' | 'close'> = {
    devices: new Map(),
    log: [],
    faults: new Map(),
    anyFaults: [],
    redirectTarget: 'http://127.0.0.1:9/',
    delayMs: 0,
    retryAfter: '1',
    hugeBytesSent: 0,
  };
  let count = 0;
  const server: Server = createServer(async (req, res) => {
    const at = Date.now();
    const body = await readBody(req);
    const path = req.url ?? '';
    const received = req.headers['osf-token'] as string | undefined;
    let json: { name?: unknown; 'client.pem'?: unknown; group?: unknown } = {};
    const log = (name: string, outcome: LogEntry['outcome'], effect?: number): void => {
      const certificate = typeof json['client.pem'] === 'string' ? json['client.pem'] : undefined;
      api.log.push({ method: req.method!, name, outcome, token: received, path, at, ...(certificate ? { certificate } : {}), ...(effect ? { effect } : {}) });
    };
    const answer = (status: number, payload: unknown, name: string, headers: Record<string, string> = {}): void => {
      log(name, status);
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify(payload));
    };
    if (api.delayMs) await new Promise((r) => setTimeout(r, api.delayMs));
    if (path === '/login') return answer(200, { page: 'please log in' }, '');
    if (received !== token) return answer(401, { message: 'bad token' }, '');

    let name = '';
    const one = /^\/ota\/devices\/([^/]+)\/$/.exec(path);
    if (req.method === 'PUT' && path === '/ota/devices/') {
      try {
        json = JSON.parse(body);
      } catch {
        return answer(400, { message: 'not JSON' }, '');
      }
      name = typeof json.name === 'string' ? json.name : '';
    } else if (one) name = decodeURIComponent(one[1]!);

    count++;
    api.onRequest?.(count, { method: req.method!, name });
    const fault = api.anyFaults.shift() ?? api.faults.get(`${req.method} ${name}`)?.shift() ?? api.faults.get(name)?.shift();
    switch (fault) {
      case 'stall':
        log(name, 'stalled');
        return; // never answers
      case 'drop':
        log(name, 'dropped');
        req.socket.destroy();
        return;
      case 'error500':
        return answer(500, { message: 'injected' }, name);
      case 'error503':
        return answer(503, { message: 'maintenance' }, name, { 'retry-after': api.retryAfter });
      case 'throttle429':
        return answer(429, { message: 'slow down' }, name, { 'retry-after': api.retryAfter });
      case 'reject400':
        return answer(400, { message: 'client.pem is not acceptable' }, name);
      case 'echo400':
        return answer(400, { message: 'bad request', headers: req.headers }, name);
      case 'redirect303':
        return answer(303, {}, name, { location: '/login' });
      case 'redirectAway':
        return answer(307, {}, name, { location: new URL(path, api.redirectTarget).toString() });
      case 'huge500': {
        log(name, 500);
        res.writeHead(500, { 'content-type': 'text/plain' });
        const chunk = Buffer.alloc(1 << 20, 0x61);
        let left = 256;
        const pump = (): void => {
          while (left > 0) {
            left--;
            api.hugeBytesSent += chunk.length;
            if (!res.write(chunk)) return void res.once('drain', pump);
          }
          res.end();
        };
        res.on('close', () => (left = 0));
        pump();
        return;
      }
      default:
    }
    const dropAfter = fault === 'applyThenDrop';
    const done = (status: number, payload: unknown): void => {
      if (fault === 'applyThen500') {
        log(name, 500, status);
        res.writeHead(500, { 'content-type': 'application/json' });
        return void res.end(JSON.stringify({ message: 'injected after taking effect' }));
      }
      if (!dropAfter) return answer(status, payload, name);
      log(name, 'dropped', status);
      req.socket.destroy();
    };

    if (req.method === 'PUT' && path === '/ota/devices/') {
      if (typeof json['client.pem'] !== 'string' || !name) return done(400, { message: 'client.pem and name are required' });
      if (api.devices.has(name)) return done(409, { message: 'device already exists' });
      api.devices.set(name, { 'client.pem': json['client.pem'], name, uuid: randomUUID(), ...(typeof json.group === 'string' ? { group: json.group } : {}) });
      return done(201, { name });
    }
    if (one && req.method === 'GET') {
      const d = api.devices.get(name);
      if (!d) return done(404, { message: 'no such device' });
      return done(200, { name: d.name, uuid: d.uuid, 'public-key': publicKeyPem(d['client.pem']), group: d.group ? { name: d.group } : null, 'last-seen': '', 'is-prod': true });
    }
    if (one && req.method === 'DELETE') {
      if (!api.devices.delete(name)) return done(404, { message: 'no such device' });
      return done(204, {});
    }
    return answer(404, { message: 'no such endpoint' }, name);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return Object.assign(api, {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  }) as DeviceApi;
}

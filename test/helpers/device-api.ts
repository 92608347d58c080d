/**
 * A loopback stand-in for Foundries' device API (the real one cannot be
 * reached here): PUT /ota/devices/ registers {client.pem, name, group?}
 * with 201, or 409 for a name it knows; DELETE /ota/devices/<name>/; the
 * OSF-TOKEN header is required. Faults can be injected per device name.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export type Fault = 'error500' | 'stall' | 'drop' | 'reject400';

export interface DeviceApi {
  url: string;
  /** name → registration body */
  devices: Map<string, { 'client.pem': string; name: string; group?: string }>;
  /** Every request as (method, name, status answered or 'stalled'/'dropped'). */
  log: Array<{ method: string; name: string; outcome: number | 'stalled' | 'dropped' }>;
  /** name → faults to apply to its next requests, in order. */
  faults: Map<string, Fault[]>;
  delayMs: number;
  onRequest?: (count: number) => void;
  close(): Promise<void>;
}

export async function deviceApi(token: string): Promise<DeviceApi> {
  const api: Omit<DeviceApi, 'url' | 'close'> = { devices: new Map(), log: [], faults: new Map(), delayMs: 0 };
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', async () => {
      const answer = (status: number, payload: unknown, name: string): void => {
        api.log.push({ method: req.method!, name, outcome: status });
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(payload));
      };
      if (api.delayMs) await new Promise((r) => setTimeout(r, api.delayMs));
      if (req.headers['osf-token'] !== token) return answer(401, { message: 'bad token' }, '');
      let name = '';
      if (req.method === 'PUT' && req.url === '/ota/devices/') {
        let json: { name?: string; 'client.pem'?: string; group?: string };
        try {
          json = JSON.parse(body);
        } catch {
          return answer(400, { message: 'not JSON' }, '');
        }
        name = json.name ?? '';
        const fault = api.faults.get(name)?.shift();
        api.onRequest?.(api.log.length + 1);
        if (fault === 'stall') {
          api.log.push({ method: 'PUT', name, outcome: 'stalled' });
          return; // never answers
        }
        if (fault === 'drop') {
          api.log.push({ method: 'PUT', name, outcome: 'dropped' });
          req.socket.destroy();
          return;
        }
        if (fault === 'error500') return answer(500, { message: 'injected' }, name);
        if (fault === 'reject400') return answer(400, { message: 'client.pem is not acceptable' }, name);
        if (!json['client.pem'] || !name) return answer(400, { message: 'client.pem and name are required' }, name);
        if (api.devices.has(name)) return answer(409, { message: 'device already exists' }, name);
        api.devices.set(name, json as { 'client.pem': string; name: string });
        return answer(201, { name }, name);
      }
      const del = /^\/ota\/devices\/([^/]+)\/$/.exec(req.url ?? '');
      if (req.method === 'DELETE' && del) {
        name = decodeURIComponent(del[1]!);
        if (!api.devices.delete(name)) return answer(404, { message: 'no such device' }, name);
        return answer(204, {}, name);
      }
      return answer(404, { message: 'no such endpoint' }, name);
    });
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

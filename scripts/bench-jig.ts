/**
 * The benchmark's jigs, in a process of their own so that their work and
 * memory do not land on the station's event loop (in a factory the jig is
 * another machine). One J1 client per pseudo-terminal given; prints JSON.
 *   node dist/scripts/bench-jig.js MODE COUNT FACTORY PTY...   (MODE: ping | sign)
 */
import { randomUUID } from 'node:crypto';
import { J1Client } from '../src/jig/client.js';
import { makeDeviceCsr } from '../src/x509/index.js';

const [mode, countText, factory, ...ptys] = process.argv.slice(2);
const count = Number(countText);
const clients = await Promise.all(ptys.map((p) => J1Client.open(p)));
const csrs = clients.map(() =>
  mode === 'sign' ? Array.from({ length: count }, () => makeDeviceCsr({ deviceId: randomUUID(), factory: factory!, production: true }).der) : [],
);
for (const c of clients) for (let i = 0; i < 20; i++) await c.request('PING', null);
const t0 = process.hrtime.bigint();
const cpu0 = process.cpuUsage();
await Promise.all(
  clients.map(async (c, k) => {
    for (let i = 0; i < count; i++) {
      const r = await c.request(mode === 'sign' ? 'SIGN' : 'PING', mode === 'sign' ? csrs[k]![i]! : null);
      if (r.type !== (mode === 'sign' ? 'CERT' : 'PONG')) throw new Error(`bench-jig: ${mode} answered ${r.type}`);
    }
  }),
);
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
const cpu = process.cpuUsage(cpu0);
await Promise.all(clients.map((c) => c.close()));
// Its own CPU over the run, so that a profile can say what the jigs took of the machine's cores.
process.stdout.write(JSON.stringify({ seconds, requests: count * clients.length, cpuMs: (cpu.user + cpu.system) / 1000 }) + '\n');

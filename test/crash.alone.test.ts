/**
 * kill -9 of `serve` at random moments while four serial links and the
 * HTTP link provision, 30 times in a row. After every restart the ledger
 * verifies, every certificate any client received is in it, and a client
 * that resends its unanswered CSR gets the committed certificate or a
 * fresh one, never an error.
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { X509Certificate } from 'node:crypto';
import { SqliteLedger } from '../src/ledger/index.js';
import { makeDeviceCsr, pemEncode } from '../src/x509/index.js';
import { cliAsync } from './helpers/cli.js';
import { TestJig } from './helpers/jig.js';
import { FACTORY, testStation, uuid } from './helpers/pki.js';
import { ptyPair } from './helpers/pty.js';

const BIN = fileURLToPath(new URL('../../bin/line-signer.js', import.meta.url));
const SOTA = '\n[sota]\ngateway = "https://ota-lite.example.com:8443"\nostree = "https://ota-lite.example.com:8443/treehub"\n';

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

interface Client {
  /** The CSR in flight (sent, no answer yet), to resend after a restart. */
  pending: Uint8Array | null;
  received: string[];
}

test('30 kill -9 of serve under J1 and HTTP load: nothing a client received is lost, resends get certificates', async (t) => {
  t.timeout(600_000);
  const s = await testStation({ extra: SOTA });
  await s.close();
  const ptys = await Promise.all([0, 1, 2, 3].map((i) => ptyPair(s.dir, `crash-${i}`)));
  t.teardown(() => Promise.all(ptys.map((p) => p.kill())));
  const port = await freePort();
  const jigs = await Promise.all(ptys.map((p) => TestJig.open(p.jig)));
  t.teardown(() => Promise.all(jigs.map((j) => j.close())));
  const clients: Client[] = [...jigs.map(() => ({ pending: null, received: [] })), { pending: null, received: [] }];
  let serve: ChildProcess | null = null;
  let nextId = 0;

  const start = async (): Promise<void> => {
    const args = [BIN, 'serve', '--config', s.configPath, '--json', '--http', `127.0.0.1:${port}`, ...ptys.flatMap((p) => ['--serial', p.station])];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (out += d));
    const end = Date.now() + 20_000;
    while (!out.includes('"serving"')) {
      if (Date.now() > end || child.exitCode !== null) throw new Error(`serve did not start: ${out}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    serve = child;
  };

  // One client's loop: send (or resend) a CSR, keep what comes back; stops when told.
  const jigLoop = async (jig: TestJig, c: Client, stop: () => boolean): Promise<void> => {
    while (!stop()) {
      c.pending ??= makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der;
      let r;
      try {
        r = await jig.request('SIGN', `c${nextId++}`, Buffer.from(c.pending), 1500);
      } catch {
        continue; // no answer: the station is down; resend the same CSR
      }
      if (r.type !== 'CERT') throw new Error(`a resend got ${r.type} ${r.code} ${r.message}`);
      c.received.push(r.body!.toString('utf8'));
      c.pending = null;
    }
  };
  const httpLoop = async (c: Client, stop: () => boolean): Promise<void> => {
    while (!stop()) {
      c.pending ??= makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der;
      let res: Response;
      try {
        res = await fetch(`http://127.0.0.1:${port}/sign`, {
          method: 'POST',
          body: JSON.stringify({ csr: pemEncode(c.pending, 'CERTIFICATE REQUEST'), 'hardware-id': 'imx8mm', 'sota-config-dir': '/var/sota' }),
          signal: AbortSignal.timeout(1500),
        });
      } catch {
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      const body = (await res.json().catch(() => ({}))) as Record<string, string>;
      if (res.status !== 201) throw new Error(`an HTTP resend got ${res.status} ${JSON.stringify(body)}`);
      c.received.push(body['client.pem']!);
      c.pending = null;
    }
  };

  for (let round = 0; round < 30; round++) {
    await start();
    let stopped = false;
    const loops = [...jigs.map((j, i) => jigLoop(j, clients[i]!, () => stopped)), httpLoop(clients[4]!, () => stopped)];
    await new Promise((r) => setTimeout(r, 300 + Math.random() * 900));
    serve!.kill('SIGKILL');
    await new Promise((r) => serve!.once('close', r));
    stopped = true;
    await Promise.all(loops);
    // Every certificate a client holds is in the ledger; the ledger verifies.
    const ledger = new SqliteLedger(s.config.station.ledger, s.config.station.id, { readonly: true });
    try {
      for (const c of clients) {
        for (const pem of c.received) {
          const serial = new X509Certificate(pem).serialNumber;
          t.truthy(ledger.findBySerial(serial), `round ${round}: serial ${serial} is in the ledger`);
        }
      }
    } finally {
      ledger.close();
    }
    const verify = await cliAsync(['ledger', 'verify', '--config', s.configPath]);
    t.is(verify.status, 0, `round ${round}: ${verify.stderr}`);
  }
  // The last round's unanswered CSRs, resent to a live station, get certificates.
  await start();
  let stopped = false;
  setTimeout(() => (stopped = true), 1000);
  await Promise.all([...jigs.map((j, i) => jigLoop(j, clients[i]!, () => stopped && clients[i]!.pending === null)), httpLoop(clients[4]!, () => stopped && clients[4]!.pending === null)]);
  serve!.kill('SIGTERM');
  await new Promise((r) => serve!.once('close', r));
  const total = clients.reduce((n, c) => n + c.received.length, 0);
  t.log(`${total} certificates received across 30 kills`);
  t.true(total > 30);
});

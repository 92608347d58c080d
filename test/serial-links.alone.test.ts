/**
 * Many links at once: eight pseudo-terminals provisioning 200 devices each;
 * a slow token must not stall the other links; a port that disappears
 * comes back by itself without the others noticing.
 */
import test from 'ava';
import { rmSync } from 'node:fs';
import { SerialLink } from '../src/links/index.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { TestJig } from './helpers/jig.js';
import { FACTORY, testStation, uuid, type TestStation } from './helpers/pki.js';
import { ptyPair, type PtyPair } from './helpers/pty.js';
import { waitFor } from './helpers/served.js';
import { slowToken } from './helpers/load.js';

interface Links {
  s: TestStation;
  ptys: PtyPair[];
  links: SerialLink[];
  jigs: TestJig[];
  close(): Promise<void>;
}

async function links(n: number, s: TestStation): Promise<Links> {
  const ptys = await Promise.all(Array.from({ length: n }, (_, i) => ptyPair(s.dir, `p${i}`)));
  const ls = ptys.map((p) => new SerialLink(s.station, { path: p.station, baud: 115200, idleTimeoutMs: 10_000, reopenMs: 100 }));
  await Promise.all(ls.map((l) => l.start()));
  await waitFor(() => ls.every((l) => l.status.state === 'open'));
  const jigs = await Promise.all(ptys.map((p) => TestJig.open(p.jig)));
  return {
    s,
    ptys,
    links: ls,
    jigs,
    async close() {
      await Promise.all(jigs.map((j) => j.close()));
      await Promise.all(ls.map((l) => l.stop()));
      await Promise.all(ptys.map((p) => p.kill()));
      await s.close();
    },
  };
}

test('eight links at once, 200 devices each: 1,600 distinct certificates, all in the ledger, no errors', async (t) => {
  const x = await links(8, await testStation());
  t.teardown(() => x.close());
  const serials = new Set<string>();
  let errors = 0;
  await Promise.all(
    x.jigs.map(async (jig, l) => {
      for (let i = 0; i < 200; i++) {
        const r = await jig.request('SIGN', `l${l}d${i}`, Buffer.from(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der), 20_000);
        if (r.type !== 'CERT') errors++;
        else serials.add(r.body!.toString().slice(0, 200));
      }
    }),
  );
  t.is(errors, 0);
  t.is(serials.size, 1600);
  t.is(x.s.ledger.issuedCount(), 1600);
  t.is(x.s.ledger.verifyChain(), null);
  t.deepEqual(
    x.links.map((l) => l.status.issued),
    Array(8).fill(200),
  );
});

/**
 * Every jig but one provisions devices, one after another, until stopped.
 * The CSRs are made first: a key pair and a signature cost a millisecond or
 * two of this process's one thread, which the station shares with the jigs
 * here, and the PINGs measure the station, not the jigs.
 */
function signOnAllBut(jigs: TestJig[], idle: number, csrsPerLink = 60): { stop(): Promise<void> } {
  let on = true;
  const csr = (): Buffer => Buffer.from(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der);
  const made = jigs.map((_, l) => (l === idle ? [] : Array.from({ length: csrsPerLink }, csr)));
  const loops = jigs.map(async (jig, l) => {
    for (let i = 0; on && l !== idle; i++) {
      const r = await jig.request('SIGN', `s${l}-${i}`, made[l]![i] ?? csr(), 30_000);
      if (r.type !== 'CERT') throw new Error(`${r.code} ${r.message}`);
    }
  });
  return {
    async stop() {
      on = false;
      await Promise.all(loops);
    },
  };
}

test('with a token made slow (50 ms a signature), PINGs on the other links are answered within 20 ms', async (t) => {
  // A real HSM signs one at a time: the slow signer queues, as a token session does.
  const x = await links(4, await testStation({}, { wrapSigner: slowToken(50) }));
  t.teardown(() => x.close());
  const signing = signOnAllBut(x.jigs, 0);
  await new Promise((r) => setTimeout(r, 300)); // signing under way on three links
  const rtts: number[] = [];
  for (let i = 0; i < 50; i++) {
    const t0 = performance.now();
    const r = await x.jigs[0]!.request('PING', `p${i}`, null);
    rtts.push(performance.now() - t0);
    t.is(r.type, 'PONG');
    await new Promise((res) => setTimeout(res, 10));
  }
  await signing.stop();
  t.true(x.links.slice(1).some((l) => l.status.issued > 3), 'the other links really were signing');
  const worst = Math.max(...rtts);
  t.log(`PING round trips while signing: worst ${worst.toFixed(1)} ms, median ${rtts.sort((a, b) => a - b)[25]!.toFixed(1)} ms`);
  t.true(worst < 20, `worst PING ${worst.toFixed(1)} ms`);
});

test('four token sessions, each held 50 ms a signature as a real HSM session is: PINGs on another link stay under 20 ms', async (t) => {
  const x = await links(5, await testStation({ token: 'sessions = 4' }, { slowSessionMs: 50 }));
  t.teardown(() => x.close());
  const signing = signOnAllBut(x.jigs, 0);
  await new Promise((r) => setTimeout(r, 300));
  const rtts: number[] = [];
  const t0 = Date.now();
  for (let i = 0; i < 100; i++) {
    const s0 = performance.now();
    t.is((await x.jigs[0]!.request('PING', `p${i}`, null)).type, 'PONG');
    rtts.push(performance.now() - s0);
    await new Promise((res) => setTimeout(res, 10));
  }
  const seconds = (Date.now() - t0) / 1000;
  await signing.stop();
  const issued = x.links.slice(1).reduce((n, l) => n + l.status.issued, 0);
  rtts.sort((a, b) => a - b);
  const p99 = rtts[98]!;
  t.log(`${issued} certificates on four links in about ${seconds.toFixed(1)} s (one session would allow ${Math.round(seconds * 20)}); PING p50 ${rtts[50]!.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms`);
  t.true(issued > seconds * 20 * 1.5, 'the sessions signed in parallel');
  t.true(p99 < 20, `PING p99 ${p99.toFixed(1)} ms`);
});

test('a pseudo-terminal removed and created again: that link comes back by itself; the others never notice', async (t) => {
  const x = await links(3, await testStation());
  t.teardown(() => x.close());
  const ping = async (i: number, id: string): Promise<string> => (await x.jigs[i]!.request('PING', id, null)).type;
  t.is(await ping(1, 'a'), 'PONG');
  // Pull the "USB adapter": socat and its device nodes go away.
  await x.jigs[1]!.close();
  await x.ptys[1]!.kill();
  rmSync(x.ptys[1]!.station, { force: true });
  await waitFor(() => x.links[1]!.status.state === 'waiting');
  t.is(await ping(0, 'b'), 'PONG');
  t.is(await ping(2, 'c'), 'PONG');
  // Plug it back in under the same name.
  const again = await ptyPair(x.s.dir, 'p1');
  x.ptys[1] = again;
  await waitFor(() => x.links[1]!.status.state === 'open');
  x.jigs[1] = await TestJig.open(again.jig);
  t.is(await ping(1, 'd'), 'PONG');
  const r = await x.jigs[1]!.request('SIGN', 'e', Buffer.from(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der));
  t.is(r.type, 'CERT');
  t.is(await ping(0, 'f'), 'PONG');
  t.is(x.links[0]!.status.state, 'open');
  t.is(x.links[2]!.status.state, 'open');
});

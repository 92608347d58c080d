import test from 'ava';
import { randomUUID } from 'node:crypto';
import { makeDeviceCsr } from '../src/x509/index.js';
import { WorkerRpc } from '../src/worker-rpc.js';
import { LineSignerError } from '../src/errors.js';
import { FACTORY, testStation } from './helpers/pki.js';

test.serial('with a slow token, calls sent together are answered one by one as each signature is made, not all after the last', async (t) => {
  const station = await testStation({}, { slowSessionMs: 50 });
  t.teardown(() => station.close());
  const t0 = performance.now();
  const done: number[] = [];
  // Eight at once: one message to the one signing session; each answer must leave when its signature is made.
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      const r = await station.station.handle({ csr: makeDeviceCsr({ deviceId: randomUUID(), factory: FACTORY, production: true }).der, link: 'test' });
      t.true(r.ok);
      done.push(performance.now() - t0);
    }),
  );
  done.sort((a, b) => a - b);
  t.log(`answered at ${done.map((d) => Math.round(d)).join(', ')} ms`);
  // Eight 50 ms signatures in series: the first certificate is out long before the last signature.
  t.true(done[0]! < done[7]! - 200, `first answer at ${Math.round(done[0]!)} ms, last at ${Math.round(done[7]!)} ms`);
});

test('a call made in the same turn as stop() fails instead of hanging', async (t) => {
  const rpc = new WorkerRpc(new URL('../src/station/check-worker.js', import.meta.url), {}, (why) => new LineSignerError('INTERNAL', `stopped: ${why}`), false);
  const call = rpc.call({ op: 'prove', csr: new Uint8Array(0) });
  const stopped = rpc.stop();
  const outcome = await Promise.race([call.then(() => 'answered', (e: Error) => e.message), new Promise((r) => setTimeout(() => r('pending'), 3000))]);
  await stopped;
  t.regex(String(outcome), /stopped/);
});

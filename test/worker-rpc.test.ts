import test from 'ava';
import { randomUUID } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
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
  const call = rpc.call({ op: 'ready' });
  const stopped = rpc.stop();
  const outcome = await Promise.race([call.then(() => 'answered', (e: Error) => e.message), new Promise((r) => setTimeout(() => r('pending'), 3000))]);
  await stopped;
  t.regex(String(outcome), /stopped/);
});

const ECHO = new URL('./helpers/echo-worker.js', import.meta.url);
const died = (why: string): LineSignerError => new LineSignerError('INTERNAL', `echo worker stopped (${why})`);
const threadCount = (): number => readdirSync('/proc/self/task').length;
type Echo = { threadId: number; value: number; loadedAt: number };

test.serial('a worker replaced after N calls: every call answered by the worker it went to, at most N to a worker, and the replaced ones end', async (t) => {
  const rpc = new WorkerRpc(ECHO, {}, died, true, 5);
  t.teardown(() => rpc.stop());
  const before = threadCount();
  const first = await rpc.call<Echo>({ op: 'echo', value: 0 });
  const withOne = threadCount();
  const answers: Echo[] = [first];
  // In turns of different sizes, some calls slow: a replaced worker still owes answers when the next one starts.
  for (const size of [3, 7, 1, 6, 5]) {
    const base = answers.length;
    answers.push(...(await Promise.all(Array.from({ length: size }, (_, i) => rpc.call<Echo>({ op: 'echo', value: base + i, afterMs: i % 3 === 0 ? 30 : 0 })))));
  }
  t.deepEqual(answers.map((a) => a.value), Array.from({ length: 23 }, (_, i) => i));
  const perWorker = new Map<number, number>();
  for (const a of answers) perWorker.set(a.threadId, (perWorker.get(a.threadId) ?? 0) + 1);
  // At most N each (a successor that has loaded takes over before the Nth: see the test below), every call counted once.
  const counts = [...perWorker.values()];
  t.true(counts.every((n) => n >= 1 && n <= 5), counts.join());
  t.true(counts.length >= 5, counts.join());
  t.is(counts.reduce((a, b) => a + b, 0), 23);
  // The four replaced workers end once they have answered; only the current one is left.
  const t0 = Date.now();
  while (threadCount() > withOne && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 50));
  t.true(threadCount() <= withOne, `threads: ${before} before, ${withOne} with one worker, ${threadCount()} now`);
});

test.serial('a replaced worker that dies fails only the calls it owed; the current one answers its own', async (t) => {
  const rpc = new WorkerRpc(ECHO, {}, died, true, 2);
  t.teardown(() => rpc.stop());
  // Two calls to the first worker: it dies 100 ms into the first, owing both; the third goes to a fresh worker.
  const owed = [rpc.call<Echo>({ op: 'exit', afterMs: 100 }), rpc.call<Echo>({ op: 'echo', value: 1 })];
  const own = rpc.call<Echo>({ op: 'echo', value: 2, afterMs: 300 });
  for (const p of owed) await t.throwsAsync(p, { message: /echo worker stopped \(exit 3\)/ });
  t.is((await own).value, 2);
  t.is((await rpc.call<Echo>({ op: 'echo', value: 3 })).value, 3);
});

test.serial('stop() ends every worker before it resolves, replaced ones still owing answers included', async (t) => {
  const before = threadCount();
  const rpc = new WorkerRpc(ECHO, {}, died, true, 1);
  // Three workers, each owing a slow answer when stop() comes.
  const calls = [0, 1, 2].map((value) => rpc.call<Echo>({ op: 'echo', value, afterMs: 2000 }));
  await new Promise((r) => setTimeout(r, 300));
  t.true(threadCount() >= before + 3, 'three workers running');
  await rpc.stop();
  t.is(threadCount(), before, 'no worker thread left once stop() resolved');
  for (const c of calls) await t.throwsAsync(c, { message: /stopped/ });
});

test.serial('the worker that takes over after N calls is started a tenth of the way before, and takes over at the first call after it has loaded: no call waits for it, and the two run side by side only while it loads', async (t) => {
  const rpc = new WorkerRpc(ECHO, {}, died, true, 40);
  t.teardown(() => rpc.stop());
  const before = threadCount();
  const answers: Echo[] = [];
  for (let i = 0; i < 36; i++) answers.push(await rpc.call<Echo>({ op: 'echo', value: i }));
  t.is(threadCount(), before + 1, 'one worker for the first 36 calls');
  answers.push(await rpc.call<Echo>({ op: 'echo', value: 36 })); // the 37th: its successor starts now
  // Still loading: the next call goes to the current worker rather than wait for it.
  answers.push(await rpc.call<Echo>({ op: 'echo', value: 37 }));
  t.true(answers.every((a) => a.threadId === answers[0]!.threadId), 'the first 38 calls to the first worker');
  await new Promise((r) => setTimeout(r, 500)); // the successor loads meanwhile
  t.is(threadCount(), before + 2, 'the successor runs beside the current worker while it loads');
  const switchedAt = performance.timeOrigin + performance.now();
  const next = await rpc.call<Echo>({ op: 'echo', value: 38 });
  t.not(next.threadId, answers[0]!.threadId, 'the 39th, before 40 were given, to the successor: it had loaded');
  t.true(next.loadedAt < switchedAt, `the successor loaded before the calls switched to it (${Math.round(switchedAt - next.loadedAt)} ms)`);
  const t0 = Date.now();
  while (threadCount() > before + 1 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 50));
  t.is(threadCount(), before + 1, 'the replaced worker ended');
});

test.serial('a station has every token session open and every checking worker loaded before it serves, so that none loads under the first requests', async (t) => {
  const before = threadCount();
  const s = await testStation({ token: 'sessions = 3' });
  t.teardown(() => s.close());
  const started = threadCount() - before;
  const expected = 1 + 3 + Math.min(4, availableParallelism()); // the ledger writer, three sessions, a checking worker a core
  t.true(started >= expected, `${started} threads started by openStation, ${expected} expected`);
  const r = await s.station.handle({ csr: makeDeviceCsr({ deviceId: randomUUID(), factory: FACTORY, production: true }).der, link: 'test' });
  t.true(r.ok);
});

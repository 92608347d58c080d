/**
 * The reference jig (`line-signer jig`) as a technician runs it: progress
 * as n/N, a quick failure when no station answers, and on any failure the
 * count of devices it finished.
 */
import test from 'ava';
import { SerialLink } from '../src/links/index.js';
import { cliAsync } from './helpers/cli.js';
import { testStation } from './helpers/pki.js';
import { ptyPair } from './helpers/pty.js';
import { waitFor } from './helpers/served.js';

test('no station at the other end: the jig fails within 3 s, saying it did 0 devices', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const pty = await ptyPair(s.dir, 'nobody'); // nothing opens the station side
  t.teardown(() => pty.kill());
  const t0 = performance.now();
  const r = await cliAsync(['jig', '--serial', pty.jig, '--count', '5']);
  const seconds = (performance.now() - t0) / 1000;
  t.log(`failed after ${seconds.toFixed(2)} s`);
  t.is(r.status, 1, r.stderr);
  const m = /^jig: stopped after 0 of 5 devices \(no station answered HELLO\) in ([\d.]+) s: no reply to HELLO/m.exec(r.stdout);
  t.truthy(m, r.stdout);
  t.regex(r.stderr, /^ERROR INTERNAL /m);
  // The jig's own wait; the process's start-up on this shared machine comes on top.
  t.true(Number(m![1]) < 3, `the jig gave up after ${m![1]} s`);
  t.true(seconds < 15);
});

test('the station goes away mid-run: the jig stops at once and says how many devices it finished', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const pty = await ptyPair(s.dir, 'gone');
  const link = new SerialLink(s.station, { path: pty.station, baud: 115200, idleTimeoutMs: 10_000, reopenMs: 100 });
  t.teardown(() => link.stop());
  await link.start();
  await waitFor(() => link.status.state === 'open');
  const run = cliAsync(['jig', '--serial', pty.jig, '--count', '500']);
  await waitFor(() => link.status.issued >= 3, 30_000);
  const t0 = performance.now();
  await pty.kill(); // the cable is pulled
  const r = await run;
  const seconds = (performance.now() - t0) / 1000;
  t.is(r.status, 1, r.stderr);
  const m = /^jig: stopped after (\d+) of 500 devices \((\d+) provisioned, 0 failed\) in [\d.]+ s: the link is gone/m.exec(r.stdout);
  t.truthy(m, r.stdout);
  const done = Number(m![1]);
  t.is(Number(m![2]), done);
  // The cable went after the station had issued at least 3; the reply to the last of them may be the one it lost.
  t.true(done >= 2 && done < 500, `the jig finished ${done}`);
  // A certificate issued whose reply the cable lost is one the jig did not count.
  t.true(link.status.issued === done || link.status.issued === done + 1, `issued ${link.status.issued}, jig counted ${done}`);
  t.regex(r.stderr, new RegExp(`^${done}/500 ok [0-9a-f-]{36}$`, 'm'), 'progress as n/N');
  // "the link is gone", not "no reply to SIGN": it did not sit out its SIGN time-outs (3 x 10 s).
  t.true(seconds < 20, `the jig noticed after ${seconds.toFixed(2)} s`);
  t.log(`the jig finished ${done}, the station issued ${link.status.issued}, noticed after ${seconds.toFixed(2)} s`);
});

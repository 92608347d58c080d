/**
 * Faults the station must ride out without losing anything: the ledger's
 * disk fills up, and the token goes away and comes back. Serial: each test
 * here breaks something this test process shares (its token folder).
 */
import test from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig } from '../src/config/index.js';
import { verifyLedger } from '../src/station/index.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { served, waitFor } from './helpers/served.js';
import { BIN } from './helpers/cli.js';
import { deviceFields, ptreeJson, send, SOTA } from './helpers/http.js';
import { serveControl } from '../src/cli/owner.js';
import { operate } from '../src/operator/index.js';
import Database from 'better-sqlite3';
import { FACTORY, stationConfig, testPki, testStation, uuid } from './helpers/pki.js';

const csr = (): Uint8Array => makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der;

test.serial('the ledger disk fills up: refused with a clear code, nothing lost, service resumes when space returns', async (t) => {
  const s0 = stationConfig();
  const mnt = join(s0.dir, 'small-disk');
  mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', mnt]);
  t.teardown(() => {
    try {
      execFileSync('umount', ['-l', mnt]);
    } catch {
      /* already gone */
    }
  });
  const s = await testStation({ ledger: join(mnt, 'ledger.db') });
  let closed = false;
  t.teardown(async () => {
    if (!closed) await s.close().catch(() => undefined);
  });
  const issued: string[] = [];
  for (let i = 0; i < 5; i++) {
    const r = await s.station.handle({ csr: csr(), link: 't' });
    t.true(r.ok);
    if (r.ok) issued.push(r.serial);
  }
  // Fill the disk.
  const filler = join(mnt, 'filler');
  try {
    execFileSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=64k'], { stdio: 'ignore' });
  } catch {
    /* dd stops at ENOSPC, as intended */
  }
  let refused = 0;
  for (let i = 0; i < 20; i++) {
    const r = await s.station.handle({ csr: csr(), link: 't' });
    if (r.ok) issued.push(r.serial); // a few may still fit in pages SQLite already had
    else {
      refused++;
      t.is(r.code, 'INTERNAL');
      t.regex(r.message, /disk is full|nothing issued/);
    }
  }
  t.true(refused > 0, 'requests are refused while the disk is full');
  rmSync(filler);
  let back = false;
  for (let i = 0; i < 20 && !back; i++) {
    const r = await s.station.handle({ csr: csr(), link: 't' });
    if (r.ok) {
      issued.push(r.serial);
      back = true;
    } else await new Promise((res) => setTimeout(res, 100));
  }
  t.true(back, 'service resumes by itself');
  await s.close();
  closed = true;
  const report = verifyLedger(loadConfig(s.configPath));
  t.deepEqual(report.problems, []);
  t.is(report.checked, issued.length, 'every certificate released is in the ledger, and only those');
});

test.serial('the token goes away: TOKEN_UNAVAILABLE, PING still answered, signing resumes by itself when it returns', async (t) => {
  const p = testPki();
  const sv = await served();
  t.teardown(() => sv.close());
  const ok = await sv.jig.request('SIGN', 's1', Buffer.from(csr()));
  t.is(ok.type, 'CERT');
  const tokens = join(p.dir, 'tokens');
  // The thread that serves the links must not wait on the token while it is gone: its longest pause is measured.
  let longestPause = 0;
  let last = performance.now();
  const meter = setInterval(() => {
    const now = performance.now();
    longestPause = Math.max(longestPause, now - last);
    last = now;
  }, 2);
  t.teardown(() => clearInterval(meter));
  renameSync(tokens, `${tokens}.away`);
  let restored = false;
  t.teardown(() => {
    if (!restored) renameSync(`${tokens}.away`, tokens);
  });
  const down = await sv.jig.request('SIGN', 's2', Buffer.from(csr()));
  t.is(down.type, 'ERR');
  t.is(down.code, 'TOKEN_UNAVAILABLE');
  t.true(longestPause < 150, `the links' thread paused ${longestPause.toFixed(0)} ms when the token went away`);
  const ping = await sv.jig.request('PING', 'p1', null);
  t.is(ping.type, 'PONG');
  t.is(sv.s.station.health()?.code, 'TOKEN_UNAVAILABLE');
  // Keep asking for 3 s while it is gone: the station's attempts to start the token afresh fail meanwhile.
  for (let i = 0; i < 12; i++) {
    const r = await sv.jig.request('SIGN', `w${i}`, Buffer.from(csr()));
    t.is(r.code, 'TOKEN_UNAVAILABLE');
    await new Promise((res) => setTimeout(res, 250));
  }
  renameSync(`${tokens}.away`, tokens);
  restored = true;
  let back = null;
  for (let i = 0; i < 40 && !back; i++) {
    const r = await sv.jig.request('SIGN', `r${i}`, Buffer.from(csr()));
    if (r.type === 'CERT') back = r;
    else await new Promise((res) => setTimeout(res, 250));
  }
  t.truthy(back, 'signing resumed without a restart');
  t.is(sv.s.station.health(), null);
});

test.serial('serve over HTTP: the token goes away and comes back; the module started afresh for one key voids every other key handle, and signing resumes', async (t) => {
  // A process of its own, as a station runs: which key's handles the module hands out first after
  // it starts afresh depends on the order the process looked its objects up in.
  const p = testPki();
  const s = await testStation({ extra: SOTA });
  await s.close();
  const child = spawn(process.execPath, [BIN, 'serve', '--config', s.configPath, '--http', '127.0.0.1:0', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  t.teardown(() => child.kill('SIGKILL'));
  await waitFor(() => out.includes('"msg":"serving"') || child.exitCode !== null, 15_000);
  t.is(child.exitCode, null, out);
  const listening = out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => String(l.link).startsWith('http:') && l.state === 'listening');
  const port = Number(String(listening!.detail).split(':').pop());
  const post = async (): Promise<string> => {
    const r = await send(port, 'POST', ptreeJson(deviceFields().fields));
    return `${r.status} ${r.status === 201 ? '' : r.text.slice(0, 120)}`;
  };
  t.regex(await post(), /^201/);
  const tokens = join(p.dir, 'tokens');
  renameSync(tokens, `${tokens}.away`);
  let restored = false;
  t.teardown(() => {
    if (!restored) renameSync(`${tokens}.away`, tokens);
  });
  for (let i = 0; i < 3; i++) {
    t.regex(await post(), /^503 .*TOKEN_UNAVAILABLE/);
    await new Promise((res) => setTimeout(res, 700));
  }
  renameSync(`${tokens}.away`, tokens);
  restored = true;
  // The once-a-second checkpoint (the refusals are events) meets the returned token first.
  const answers: string[] = [];
  for (let i = 0; i < 6; i++) {
    await new Promise((res) => setTimeout(res, 1500));
    answers.push(await post());
  }
  t.true(answers.slice(1).every((a) => a.startsWith('201')), `signing resumed without a restart, and stayed so; answers after the token came back: ${answers.join(' | ')}`);
  child.kill('SIGTERM');
});

test.serial('an operator action while the token is away records nothing and says so; once it is back the action is recorded and checkpointed', async (t) => {
  const p = testPki();
  const sv = await served();
  t.teardown(() => sv.close());
  const control = await serveControl(sv.s.config, sv.s);
  t.teardown(() => control.close());
  const id = uuid();
  t.is((await sv.jig.request('SIGN', 's1', Buffer.from(makeDeviceCsr({ deviceId: id, factory: FACTORY, production: true }).der))).type, 'CERT');
  const tokens = join(p.dir, 'tokens');
  renameSync(tokens, `${tokens}.away`);
  let restored = false;
  t.teardown(() => {
    if (!restored) renameSync(`${tokens}.away`, tokens);
  });
  const revoke = { op: 'revoke', target: id, reason: 'scrapped', operator: 'ana' } as const;
  const err = await t.throwsAsync(operate(sv.s.config, revoke));
  t.regex(err!.message, /nothing recorded/);
  t.is(countEvents(sv.s.config.station.ledger, 'revocation'), 0, 'no revocation written');
  renameSync(`${tokens}.away`, tokens);
  restored = true;
  let done = false;
  for (let i = 0; i < 20 && !done; i++) {
    done = await operate(sv.s.config, revoke).then(() => true, () => false);
    if (!done) await new Promise((r) => setTimeout(r, 250));
  }
  t.true(done, 'the action went through once the token was back');
  t.is(countEvents(sv.s.config.station.ledger, 'revocation'), 1);
});

function countEvents(ledger: string, kind: string): number {
  const db = new Database(ledger, { readonly: true });
  try {
    return (db.prepare('SELECT count(*) AS n FROM events WHERE kind = ?').get(kind) as { n: number }).n;
  } finally {
    db.close();
  }
}

/**
 * What the technician and the PKI owner see: status with the open order,
 * today's issuances per link, refusals per code (a coalesced flood counted
 * whole) and warnings; HEAD /sign's health from the real station.
 */
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { caImport, caInit, openStation } from '../src/station/index.js';
import { HttpLink } from '../src/links/http.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { BIN, cli } from './helpers/cli.js';
import { served } from './helpers/served.js';
import { FACTORY, signCaCsrWithOpenssl, stationConfig, testPki, testStation, uuid } from './helpers/pki.js';
import { frame } from './helpers/jig.js';
import Database from 'better-sqlite3';

const csr = (): Uint8Array => makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der;

/**
 * The rejection rows once their counts add up to `total`, or as they are
 * after 10 s. A window's count is written when its second is over, by a
 * timer: a loaded machine runs it late, and a fixed wait read too early.
 */
async function rowsOnceCounted<T extends { count: number }>(ledger: string, sql: string, total: number): Promise<T[]> {
  const end = Date.now() + 10_000;
  for (;;) {
    const db = new Database(ledger, { readonly: true });
    const rows = db.prepare(sql).all() as T[];
    db.close();
    if (rows.reduce((n, r) => n + r.count, 0) >= total || Date.now() > end) return rows;
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('status: the open order and its progress, today per link, refusals per code, and the clock warning', async (t) => {
  const s = await testStation();
  for (let i = 0; i < 3; i++) await s.station.handle({ csr: csr(), link: i ? 'serial:/dev/ttyACM0' : 'http' });
  await s.station.handle({ csr: new Uint8Array([1, 2, 3]), link: 'http' });
  await s.close();
  t.is(cli(['order', 'open', 'WO-9', '--quantity', '10', '--config', s.configPath, '--operator', 'zoe']).status, 0);
  const out = cli(['status', '--config', s.configPath]);
  t.is(out.status, 0, out.stderr);
  t.regex(out.stdout, /order: +WO-9 0 of 10 \(10 left\), opened by zoe/);
  t.regex(out.stdout, /today: http 1, serial:\/dev\/ttyACM0 2/);
  t.regex(out.stdout, /rejected: +BAD_CSR 1/);
  t.regex(out.stdout, /not serving/);
  t.notRegex(out.stdout, /WARNING CLOCK/);
  const later = spawnSync('faketime', ['+45 days', process.execPath, BIN, 'status', '--config', s.configPath, '--json'], { encoding: 'utf8' });
  const json = JSON.parse(later.stdout) as { warnings: string[]; order: { id: string } };
  t.is(json.order.id, 'WO-9');
  t.true(json.warnings.some((w) => /^CLOCK: .*more than 30 days ahead/.test(w)), JSON.stringify(json.warnings));
});

test('status warns of a local-ca expiring within 90 days and of a ledger disk short of space', async (t) => {
  const p = testPki();
  const s0 = stationConfig();
  const mnt = join(s0.dir, 'tiny');
  mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt]);
  t.teardown(() => execFileSync('umount', ['-l', mnt]));
  const s = stationConfig({ ledger: join(mnt, 'ledger.db') });
  const csrPem = await caInit(s.config);
  caImport(s.config, signCaCsrWithOpenssl(csrPem, s.dir, { key: p.rootKey, pem: p.rootPem }, undefined, 30));
  const open = await openStation(s.config);
  await open.close();
  const out = cli(['status', '--config', s.configPath]);
  t.regex(out.stdout, /WARNING the local-ca expires in \d+ days/);
  t.regex(out.stdout, /WARNING the ledger's disk has 0\.\d+ GiB free/);
});

test('a flood of identical bad frames costs a couple of ledger writes, and the count is in the chain', async (t) => {
  const sv = await served();
  t.teardown(() => sv.close());
  const bad = frame('PING', 'x', null).replace(/[0-9a-f]{8}\n$/, '00000000\n');
  const t0 = Date.now();
  await sv.jig.send(bad.repeat(300));
  for (let i = 0; i < 300; i++) t.is((await sv.jig.reply()).code, 'BAD_CRC');
  const seconds = Math.ceil((Date.now() - t0) / 1000);
  // The window closes a second after its first refusal and its count is written then.
  const rows = await rowsOnceCounted<{ count: number; message: string }>(
    sv.s.config.station.ledger,
    "SELECT count, message FROM events WHERE kind = 'rejection' AND code = 'BAD_CRC'",
    300,
  );
  // At most the first refusal and one count per second of flood: not one write per frame.
  t.true(rows.length <= 2 * seconds, `${rows.length} events for 300 refusals in ${seconds} s`);
  t.is(rows.reduce((n, r) => n + r.count, 0), 300);
  // The count is a row of its own; not always the last: a flood that outlasts its window opens a
  // second one, whose first refusal is recorded at once.
  t.true(rows.some((r) => /repeated \d+ more times within 1 s/.test(r.message)), JSON.stringify(rows));
  const status = cli(['status', '--config', sv.s.configPath, '--json']);
  t.is((JSON.parse(status.stdout) as { rejected: Record<string, number> }).rejected.BAD_CRC, 300);
});

test('HEAD /sign is 503 while a POST would be refused for a station-wide reason, 200 otherwise', async (t) => {
  const s = await testStation({ policy: 'require_order = true', extra: '\n[sota]\ngateway = "https://gw.example.com:8443"\nostree = "https://gw.example.com:8443/treehub"\n' });
  const link = new HttpLink(s.station, { listen: '127.0.0.1:0', sota: s.config.sota });
  await link.start();
  t.teardown(async () => {
    await link.stop();
    await s.close();
  });
  const head = async (): Promise<{ status: number; body: string }> => {
    const r = await fetch(`http://127.0.0.1:${link.port}/sign`, { method: 'HEAD' });
    return { status: r.status, body: r.headers.get('content-length') ?? '' };
  };
  t.is((await head()).status, 503, 'no open order under require_order');
  const { SqliteLedger } = await import('../src/ledger/index.js');
  const l = new SqliteLedger(s.config.station.ledger, s.config.station.id);
  l.openOrder({ id: 'WO-1', quantity: 1, hardwareId: null, operator: 'test' });
  l.close();
  t.is((await head()).status, 200);
  t.true((await s.station.handle({ csr: csr(), link: 't' })).ok);
  t.is((await head()).status, 503, 'the order is used up');
});

test('a flood of different garbage that all gets one refusal is a bounded number of events; another link keeps its own', async (t) => {
  const sv = await served();
  t.teardown(() => sv.close());
  const t0 = Date.now();
  for (let i = 0; i < 400; i++) {
    const r = await sv.jig.request('SIGN', `g${i}`, Buffer.from(`garbage ${i} ${Math.random()}`));
    t.is(r.code, 'BAD_CSR');
  }
  await sv.s.station.recordRefusal('http:elsewhere', 'BAD_FRAME', 'a refusal of its own');
  const seconds = Math.ceil((Date.now() - t0) / 1000);
  const rows = await rowsOnceCounted<{ link: string; count: number; message: string }>(
    sv.s.config.station.ledger,
    "SELECT link, count, message FROM events WHERE kind = 'rejection'",
    401,
  );
  const flood = rows.filter((r) => r.link !== 'http:elsewhere');
  t.is(flood.reduce((n, r) => n + r.count, 0), 400);
  t.true(flood.length <= 10 * seconds, `${flood.length} events for 400 refusals in ${seconds} s`);
  t.true(rows.some((r) => r.link === 'http:elsewhere' && r.message === 'a refusal of its own'));
});

/**
 * Integrity: one owner per ledger, a history no file edit can forge,
 * serials as OpenSSL writes them, keys that cannot leave the token, and a
 * PIN that is tried once.
 */
import test from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { createHash, generateKeyPairSync, sign as signWith } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { loadConfig } from '../src/config/index.js';
import { checkpointStatement, encodeTokenCheckpoint, issuanceHash, SqliteLedger, type Issuance } from '../src/ledger/index.js';
import { LedgerLock, lockPath } from '../src/ledger/lock.js';
import { tmpdir } from 'node:os';
import { openStation, stationKeyInit, verifyLedger } from '../src/station/index.js';
import { makeCaCsr, makeDeviceCsr, pemEncode } from '../src/x509/index.js';
import { cli, cliAsync } from './helpers/cli.js';
import { FACTORY, openssl, reserveStationTokens, signCaCsrWithOpenssl, stationConfig, testPki, testStation, uuid } from './helpers/pki.js';
import { waitFor } from './helpers/served.js';

reserveStationTokens(24);

const RACER = fileURLToPath(new URL('./helpers/racer.js', import.meta.url));

function runRacer(configPath: string, dir: string): Promise<{ signed: number; refused: Record<string, number> }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [RACER, configPath, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`racer exited ${code}`))));
  });
}

test('two processes racing 200 CSRs for 100 device ids (two keys each) commit exactly 100 certificates', async (t) => {
  const s = await testStation();
  await s.close(); // the racers share the ledger without its owner lock, on purpose
  const a = join(s.dir, 'race-a');
  const b = join(s.dir, 'race-b');
  mkdirSync(a);
  mkdirSync(b);
  for (let i = 0; i < 100; i++) {
    const id = uuid();
    const n = String(i).padStart(3, '0');
    writeFileSync(join(a, `${n}.der`), makeDeviceCsr({ deviceId: id, factory: FACTORY, production: true }).der);
    writeFileSync(join(b, `${n}.der`), makeDeviceCsr({ deviceId: id, factory: FACTORY, production: true }).der);
  }
  const [ra, rb] = await Promise.all([runRacer(s.configPath, a), runRacer(s.configPath, b)]);
  t.is(ra.signed + rb.signed, 100, JSON.stringify({ ra, rb }));
  t.is((ra.refused.DUPLICATE_DEVICE ?? 0) + (rb.refused.DUPLICATE_DEVICE ?? 0), 100);
  const ledger = new SqliteLedger(s.config.station.ledger, s.config.station.id);
  try {
    t.is(ledger.issuedCount(), 100);
    const devices = new Set([...ledger.since(0)].map((r) => r.deviceId));
    t.is(devices.size, 100, 'one certificate per device id');
  } finally {
    ledger.close();
  }
});

/** A station with `n` issuances, stopped cleanly (its final checkpoint signed), and a copy of its folder to tamper with. */
async function stoppedStation(n: number): Promise<{ configPath: string; dir: string; ledger: string }> {
  const s = await testStation();
  for (let i = 0; i < n; i++) {
    const r = await s.station.handle({ csr: makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, link: `link-${i % 3}` });
    if (!r.ok) throw new Error(r.message);
  }
  await s.close();
  return { configPath: s.configPath, dir: s.dir, ledger: s.config.station.ledger };
}

function tamper(ledger: string, work: (db: Database.Database) => void): void {
  const db = new Database(ledger);
  try {
    work(db);
  } finally {
    db.close();
  }
}

test('a tool that edits a middle row and re-hashes every later row makes ledger verify fail naming that row', async (t) => {
  const s = await stoppedStation(10);
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 0);
  tamper(s.ledger, (db) => {
    // The attacker knows the chain's algorithm and recomputes it from row 5 on.
    db.exec("UPDATE issuances SET link = 'forged' WHERE seq = 5");
    const rows = db.prepare('SELECT * FROM issuances ORDER BY seq').all() as Array<Record<string, unknown>>;
    let prev = (rows[3] as { entry_hash: string }).entry_hash;
    for (const r of rows.slice(4)) {
      const fields = {
        v: r.v, seq: r.seq, serial: r.serial, deviceId: r.device_id, subject: r.subject, publicKeySha256: r.public_key_sha256,
        csrSha256: r.csr_sha256, certificate: new Uint8Array(r.certificate as Buffer), notBefore: r.not_before, notAfter: r.not_after,
        issuedAt: r.issued_at, stationId: r.station_id, link: r.link, hardwareId: r.hardware_id, workOrder: r.work_order,
        name: r.name, supersedes: r.supersedes,
      } as unknown as Issuance;
      prev = issuanceHash(prev, fields);
      db.prepare('UPDATE issuances SET entry_hash = ? WHERE seq = ?').run(prev, r.seq);
    }
  });
  const r = verifyLedger(loadConfig(s.configPath));
  const named = r.problems.filter((p) => p.table === 'issuances' && /changed after a checkpoint/.test(p.reason));
  t.deepEqual(named.map((p) => p.seq), [5], JSON.stringify(r.problems));
  t.true(r.problems.some((p) => p.seq === 6 && /rewritten/.test(p.reason)), 'the recomputed rows are reported as such');
  const out = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(out.status, 1);
  t.regex(out.stderr, /ERROR LEDGER issuances seq 5: the row was changed after a checkpoint signed it/);
});

test('deleting the newest 5 rows fails ledger verify, and serve refuses such a ledger', async (t) => {
  const s = await stoppedStation(12);
  tamper(s.ledger, (db) => {
    db.exec('DELETE FROM issuances WHERE seq > 7');
    db.exec('DELETE FROM checkpoints WHERE issuance_seq > 7');
  });
  const out = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(out.status, 1);
  t.regex(out.stderr, /token/);
  t.regex(out.stderr, /deleted|not in this ledger/);
  const serve = cli(['serve', '--config', s.configPath, '--spool', join(s.dir, 'stick'), '--json']);
  t.not(serve.status, 0);
  t.regex(serve.stderr, /ERROR LEDGER .*not serving/);
});

test('an older copy of the ledger put back is caught; a backup verifies as a copy', async (t) => {
  const s = await stoppedStation(3);
  const backup = join(s.dir, 'backup.db');
  const b = cli(['ledger', 'backup', backup, '--config', s.configPath, '--operator', 'alice']);
  t.is(b.status, 0, b.stderr);
  // The station goes on issuing after the backup.
  const open = await openStation(loadConfig(s.configPath));
  await open.station.handle({ csr: makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, link: 't' });
  await open.close();
  const copy = cli(['ledger', 'verify', '--config', s.configPath, '--ledger', backup]);
  t.is(copy.status, 0, copy.stderr);
  t.regex(copy.stdout, /ledger intact: 3 issuances/);
  t.regex(copy.stdout, /note: this copy ends at checkpoint/);
  // Putting the backup back in place of the live ledger is a rollback.
  for (const suffix of ['-wal', '-shm']) copyFileSync(backup, `${s.ledger}${suffix}`);
  copyFileSync(backup, s.ledger);
  writeFileSync(`${s.ledger}-wal`, '');
  const live = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(live.status, 1);
  t.regex(live.stderr, /the token's newest checkpoint .* is not in this ledger/);
});

test('one owner: a second serve stops with LEDGER_BUSY naming the holder; sign, revoke and orders go through the owner', async (t) => {
  const s = await stoppedStation(1);
  const stick = join(s.dir, 'stick');
  mkdirSync(stick);
  const serve = spawn(process.execPath, [join(fileURLToPath(new URL('../../bin/line-signer.js', import.meta.url))), 'serve', '--config', s.configPath, '--spool', stick, '--json', '--operator', 'op-serve'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  serve.stdout.on('data', (d) => (log += d));
  serve.stderr.on('data', (d) => (log += d));
  t.teardown(() => serve.kill('SIGKILL'));
  await waitFor(() => log.includes('"serving"'), 15_000);

  const second = await cliAsync(['serve', '--config', s.configPath, '--spool', stick, '--json']);
  t.not(second.status, 0);
  t.regex(second.stderr, new RegExp(`ERROR LEDGER_BUSY .*held by \`line-signer serve\` \\(pid ${serve.pid}`));
  // An operator who deletes the lock file of a station that looks stuck does not get a second owner.
  for (const f of [`${s.ledger}.lock`, `${s.ledger}.lock-journal`]) rmSync(f, { force: true });
  const third = await cliAsync(['serve', '--config', s.configPath, '--spool', stick, '--json']);
  t.not(third.status, 0);
  // Refused either way: by the socket check, or because the serving station's 2 s ownership check took its lock again first.
  t.regex(third.stderr, new RegExp(`ERROR LEDGER_BUSY (another process serves .* lock file was deleted or replaced|ledger .* is held by \`line-signer serve\` \\(pid ${serve.pid})`));
  t.is((JSON.parse(readFileSync(`${s.ledger}.owner`, 'utf8')) as { pid: number }).pid, serve.pid!, 'the refused process left the holder named');
  // Both deleted (a cleanup of ledger.db.*): the serving station takes its lock again and listens again.
  for (const f of [`${s.ledger}.lock`, `${s.ledger}.lock-journal`, `${s.ledger}.sock`]) rmSync(f, { force: true });
  await waitFor(() => existsSync(`${s.ledger}.lock`) && existsSync(`${s.ledger}.sock`), 10_000);
  const fourth = await cliAsync(['serve', '--config', s.configPath, '--spool', stick, '--json']);
  t.not(fourth.status, 0);
  t.regex(fourth.stderr, /ERROR LEDGER_BUSY .*held by `line-signer serve` \(pid/);

  const csrPath = join(s.dir, 'one.csr');
  const deviceId = uuid();
  writeFileSync(csrPath, makeDeviceCsr({ deviceId, factory: FACTORY, production: true }).der);
  const signed = await cliAsync(['sign', csrPath, '--config', s.configPath]);
  t.is(signed.status, 0, signed.stderr);
  t.regex(signed.stdout, /BEGIN CERTIFICATE/);
  const order = await cliAsync(['order', 'open', 'WO-1', '--quantity', '5', '--config', s.configPath, '--operator', 'bob']);
  t.is(order.status, 0, order.stderr);
  const revoke = await cliAsync(['ledger', 'revoke', deviceId, '--reason', 'scrapped', '--config', s.configPath, '--operator', 'carol']);
  t.is(revoke.status, 0, revoke.stderr);
  const unknown = await cliAsync(['ledger', 'revoke', uuid(), '--reason', 'typo', '--config', s.configPath]);
  t.is(unknown.status, 64);
  t.regex(unknown.stderr, /ERROR USAGE no device id or serial/);

  serve.kill('SIGTERM');
  await new Promise((r) => serve.once('close', r));
  const logOut = cli(['log', '--config', s.configPath, '--json']);
  const rows = logOut.stdout.trim().split('\n').map((l) => JSON.parse(l) as { kind: string | null; operator: string | null; type: string; device: string | null });
  t.true(rows.some((r) => r.kind === 'start' && r.operator === 'op-serve'), 'serve records who started it');
  t.true(rows.some((r) => r.kind === 'order_open' && r.operator === 'bob'));
  t.true(rows.some((r) => r.kind === 'revocation' && r.operator === 'carol' && r.device === deviceId));
  t.true(rows.some((r) => r.type === 'issuance' && r.device === deviceId));
  const verify = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(verify.status, 0, verify.stderr);
});

test('ownership check: a lock file replaced and held for a moment (a refused serve asking the socket) is taken again; held at two checks in a row (the second within a second), the owner is told to stop', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'line-signer-lock-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ledger = join(dir, 'ledger.db');
  const owner = LedgerLock.acquire(ledger, 'serve');
  t.teardown(() => owner.release());
  const replaceAndHold = (): LedgerLock => {
    for (const f of [lockPath(ledger), `${lockPath(ledger)}-journal`]) rmSync(f, { force: true });
    const other = LedgerLock.tryAcquire(ledger, 'serve', false);
    t.truthy(other, 'the replaced file is free for a moment');
    return other!;
  };
  // Held for one check, then let go: the owner keeps serving and holds the new file.
  const passing = replaceAndHold();
  t.is(owner.stillOwned(), null);
  t.true(owner.contested, 'the serving station looks again within a second');
  passing.release(false);
  t.is(owner.stillOwned(), null);
  t.false(owner.contested);
  t.is(LedgerLock.tryAcquire(ledger, 'sign'), null, 'the owner holds the file now there');
  t.is(JSON.parse(readFileSync(`${ledger}.owner`, 'utf8')).pid, process.pid, 'the owner file still names the owner');
  // Held across two checks: another writer.
  const staying = replaceAndHold();
  t.teardown(() => staying.release(false));
  t.is(owner.stillOwned(), null);
  t.regex(owner.stillOwned() ?? '', /deleted or replaced.*two processes may be writing/);
});

test('an owner whose lock file was taken over leaves the new holder\'s owner file when it lets go', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'line-signer-lock-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ledger = join(dir, 'ledger.db');
  const old = LedgerLock.acquire(ledger, 'serve');
  for (const f of [lockPath(ledger), `${lockPath(ledger)}-journal`, `${ledger}.owner`]) rmSync(f, { force: true });
  const taker = LedgerLock.acquire(ledger, 'sign');
  t.teardown(() => taker.release());
  const written = readFileSync(`${ledger}.owner`, 'utf8');
  old.release();
  t.true(existsSync(`${ledger}.owner`), 'still there');
  t.is(readFileSync(`${ledger}.owner`, 'utf8'), written, 'and still naming the process that holds the lock');
  taker.release();
  t.false(existsSync(`${ledger}.owner`), 'its own owner file is removed by the holder');
});

test('serials are written as openssl x509 -serial prints them and found in any form', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  let found: { serial: string; certificatePem: string } | null = null;
  for (let i = 0; i < 400 && !found; i++) {
    const r = await s.station.handle({ csr: makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, link: 't' });
    if (r.ok && r.serial.startsWith('0')) found = r;
  }
  t.truthy(found, 'a serial whose first byte is below 0x10');
  const printed = openssl(['x509', '-noout', '-serial'], found!.certificatePem).toString().trim().replace(/^serial=/, '');
  t.is(found!.serial, printed.toLowerCase());
  t.is(found!.serial.length % 2, 0);
  const ledger = new SqliteLedger(s.config.station.ledger, s.config.station.id);
  try {
    for (const form of [printed, printed.toLowerCase(), printed.replace(/^0+/, ''), printed.match(/../g)!.join(':')]) {
      t.is(ledger.findBySerial(form)?.serial, found!.serial, form);
    }
  } finally {
    ledger.close();
  }
});

test('a wrong PIN: one login attempt, its own exit status (77), and a message without the PIN', async (t) => {
  const p = testPki();
  const s = await stoppedStation(0);
  const pinFile = join(s.dir, 'wrong-pin');
  writeFileSync(pinFile, '999999', { mode: 0o600 });
  writeFileSync(s.configPath, readFileSync(s.configPath, 'utf8').replace(p.pinFile, pinFile));
  const serve = cli(['serve', '--config', s.configPath, '--spool', join(s.dir, 'stick'), '--json']);
  t.is(serve.status, 77, serve.stderr);
  t.regex(serve.stderr, /^ERROR TOKEN_PIN .*not retried/m);
  t.notRegex(serve.stderr, /999999/);
});

test('a local-ca key that could leave the token is refused by a production station', async (t) => {
  const { Pkcs11Token } = await import('../src/token/index.js');
  const pkcs11js = (await import('pkcs11js')).default;
  const p = testPki();
  const s = stationConfig();
  // The station key as `station-key init` makes it: only the local-ca key is the one at fault here.
  await stationKeyInit(s.config);
  // As pkcs11-tool would put a software key in: extractable, not sensitive.
  const token = Pkcs11Token.open({ module: s.config.token.module, tokenLabel: s.config.token.token_label, pin: readFileSync(p.pinFile, 'utf8') });
  const p11 = (token as unknown as { p11: InstanceType<typeof pkcs11js.PKCS11> }).p11;
  const session = (token as unknown as { s: Buffer }).s;
  p11.C_GenerateKeyPair(
    session,
    { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
    [
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_LABEL, value: s.config.token.key_label },
      { type: pkcs11js.CKA_EC_PARAMS, value: Buffer.from('06082a8648ce3d030107', 'hex') },
      { type: pkcs11js.CKA_VERIFY, value: true },
    ],
    [
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_LABEL, value: s.config.token.key_label },
      { type: pkcs11js.CKA_SIGN, value: true },
      { type: pkcs11js.CKA_SENSITIVE, value: false },
      { type: pkcs11js.CKA_EXTRACTABLE, value: true },
    ],
  );
  t.regex(token.keyLeakRisk(s.config.token.key_label) ?? '', /not sensitive|extractable/);
  const csr = await makeCaCsr(token.signer(s.config.token.key_label), s.config.ca.owner, FACTORY);
  token.close();
  const caPem = signCaCsrWithOpenssl(pemEncode(csr, 'CERTIFICATE REQUEST'), s.dir, { key: p.rootKey, pem: p.rootPem });
  copyFileSync(caPem, s.config.ca.certificate);
  const err = await t.throwsAsync(openStation(s.config));
  t.regex(err!.message, /not sensitive|extractable/);
  t.regex(err!.message, /production station/);
});

/**
 * What a process on the station can do to the token without the PIN: a
 * session that is not logged in may make and remove public objects. The
 * attacker uses pkcs11-tool as anyone would, never with --login.
 */
function pkcs11ToolNoLogin(configPath: string, args: string[]): void {
  const c = loadConfig(configPath);
  execFileSync('pkcs11-tool', ['--module', c.token.module, '--token-label', c.token.token_label, ...args], {
    env: c.token.softhsm2_conf ? { ...process.env, SOFTHSM2_CONF: c.token.softhsm2_conf } : process.env,
    stdio: 'pipe',
  });
}

function attackerKey(dir: string): { der: string; privateKey: ReturnType<typeof generateKeyPairSync>['privateKey'] } {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const der = join(dir, `attacker-${uuid()}.der`);
  writeFileSync(der, publicKey.export({ type: 'spki', format: 'der' }));
  return { der, privateKey };
}

test("a station key's public half swapped without the PIN (checkpoints re-signed with the attacker's key): ledger verify and serve refuse it", async (t) => {
  const s = await stoppedStation(3);
  const c = loadConfig(s.configPath);
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 0);
  const attacker = attackerKey(s.dir);
  // Every checkpoint signed again by the attacker (the statement does not cover the signature).
  tamper(s.ledger, (db) => {
    const ledgerId = (db.prepare("SELECT value FROM settings WHERE key = 'ledger_id'").get() as { value: string }).value;
    const l = new SqliteLedger(s.ledger, c.station.id, { readonly: true });
    try {
      for (const cp of l.checkpoints()) {
        const sig = signWith('sha256', checkpointStatement(ledgerId, cp), attacker.privateKey);
        db.prepare('UPDATE checkpoints SET signature = ? WHERE n = ?').run(sig, cp.n);
      }
    } finally {
      l.close();
    }
  });
  pkcs11ToolNoLogin(s.configPath, ['--delete-object', '--type', 'pubkey', '--label', c.token.station_key_label]);
  pkcs11ToolNoLogin(s.configPath, ['--write-object', attacker.der, '--type', 'pubkey', '--label', c.token.station_key_label]);
  const verify = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(verify.status, 1, verify.stdout);
  t.regex(verify.stderr, /no public key labelled "station-key" is the public half of the private key/);
  const serve = cli(['serve', '--config', s.configPath, '--spool', join(s.dir, 'stick'), '--json']);
  t.not(serve.status, 0);
  t.regex(serve.stderr, /ERROR TOKEN_UNAVAILABLE .*public half/);
});

test('public objects made without the PIN beside the real ones (more public keys with each key\'s label, an RSA one among them, a data object posing as the newest checkpoint) stop nothing, ca show included', async (t) => {
  const s = await stoppedStation(2);
  const c = loadConfig(s.configPath);
  for (const label of [c.token.key_label, c.token.station_key_label]) {
    // More EC keys than one look at the token once took in, and an RSA key, whose EC attributes cannot be read.
    for (let i = 0; i < 10; i++) pkcs11ToolNoLogin(s.configPath, ['--write-object', attackerKey(s.dir).der, '--type', 'pubkey', '--label', label]);
    const rsa = join(s.dir, `rsa-${uuid()}.der`);
    writeFileSync(rsa, generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'der' }));
    pkcs11ToolNoLogin(s.configPath, ['--write-object', rsa, '--type', 'pubkey', '--label', label]);
  }
  const junk = join(s.dir, 'junk-checkpoint.json');
  writeFileSync(junk, `{"n":1e400,"ledgerId":"x","stationId":"${c.station.id}"}`);
  pkcs11ToolNoLogin(s.configPath, ['--write-object', junk, '--type', 'data', '--label', `line-signer checkpoint ${c.station.id}`]);
  const verify = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(verify.status, 0, verify.stderr);
  const csrPath = join(s.dir, 'next.der');
  writeFileSync(csrPath, makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der);
  const signed = cli(['sign', csrPath, '--config', s.configPath]);
  t.is(signed.status, 0, signed.stderr);
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 0);
  // Without login the certificates tell which public key is the key's; with it, the signature does.
  for (const args of [[], ['--check-pin']]) {
    const show = cli(['ca', 'show', '--config', s.configPath, ...args]);
    t.is(show.status, 0, `ca show ${args.join(' ')}: ${show.stdout}${show.stderr}`);
  }
});

test('the newest rows deleted and checkpoints forged past the token\'s, with a public token object vouching for them: sign refuses the file', async (t) => {
  const s = await stoppedStation(12);
  const c = loadConfig(s.configPath);
  const revokedCsr = join(s.dir, 'late.der');
  writeFileSync(revokedCsr, makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der);
  let forged = '';
  tamper(s.ledger, (db) => {
    db.exec('DELETE FROM issuances WHERE seq > 7');
    db.exec('DELETE FROM checkpoints WHERE issuance_seq > 7');
  });
  // Checkpoints made with the project's own code, signed with garbage, numbered past the token's.
  const l = new SqliteLedger(s.ledger, c.station.id);
  try {
    for (let i = 0; i < 40; i++) {
      const p = l.prepareCheckpoint('stop', true)!;
      forged = encodeTokenCheckpoint(l.recordCheckpoint({ ...p.unsigned, signature: createHash('sha256').update('x').digest() })).toString();
    }
  } finally {
    l.close();
  }
  const object = join(s.dir, 'forged-checkpoint.json');
  writeFileSync(object, forged);
  pkcs11ToolNoLogin(s.configPath, ['--write-object', object, '--type', 'data', '--label', `line-signer checkpoint ${c.station.id}`]);
  const signed = cli(['sign', revokedCsr, '--config', s.configPath]);
  t.not(signed.status, 0, signed.stdout);
  t.regex(signed.stderr, /ERROR LEDGER .*checkpoint/);
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 1);
});

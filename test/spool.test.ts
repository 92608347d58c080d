import test from 'ava';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { SpoolLink } from '../src/links/spool.js';
import { makeDeviceCsr, pemDecodeAll, pemEncode } from '../src/x509/index.js';
import { FACTORY, testStation, uuid } from './helpers/pki.js';
import { waitFor } from './helpers/served.js';

/** Drops a file the way a careful writer does: a temporary name, then rename. */
function drop(inbox: string, name: string, data: string | Uint8Array): void {
  const tmp = join(inbox, `.${name}.part`);
  writeFileSync(tmp, data);
  renameSync(tmp, join(inbox, name));
}

test('100 CSRs dropped give 100 certificates; a bad one gives .error; nothing half-written is ever visible under its final name', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const dir = join(s.dir, 'stick');
  const inbox = join(dir, 'inbox');
  mkdirSync(inbox, { recursive: true });
  const ids: string[] = [];
  for (let i = 0; i < 100; i++) {
    const id = uuid();
    ids.push(id);
    const der = makeDeviceCsr({ deviceId: id, factory: FACTORY, production: true }).der;
    drop(inbox, `dev-${i}.csr`, i % 2 ? der : pemEncode(der, 'CERTIFICATE REQUEST'));
  }
  drop(inbox, 'broken.csr', 'this is not a CSR');
  // Age the files past the quiet period.
  const old = new Date(Date.now() - 10_000);
  for (const n of readdirSync(inbox)) utimesSync(join(inbox, n), old, old);

  const link = new SpoolLink(s.station, { dir, pollMs: 50 });
  // Watch the outbox the whole time: every file under a final name must be whole.
  const outbox = join(dir, 'outbox');
  let partial = 0;
  let looked = 0;
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      if (existsSync(outbox)) {
        for (const n of readdirSync(outbox)) {
          if (!n.endsWith('.pem')) continue;
          looked++;
          let text = '';
          try {
            text = readFileSync(join(outbox, n), 'utf8');
          } catch {
            continue;
          }
          if (pemDecodeAll(text, 'CERTIFICATE').length !== 2) partial++;
        }
      }
      await new Promise((r) => setImmediate(r));
    }
  })();
  await link.start();
  await waitFor(() => readdirSync(inbox).filter((n) => n.endsWith('.csr')).length === 0, 30_000);
  watching = false;
  await watcher;
  await link.stop();

  t.is(partial, 0);
  t.true(looked > 0);
  const out = readdirSync(outbox);
  t.is(out.filter((n) => n.endsWith('.pem')).length, 100);
  t.true(out.includes('root.crt'));
  t.is(readFileSync(join(outbox, 'root.crt'), 'utf8'), s.station.rootPem);
  t.regex(readFileSync(join(outbox, 'broken.error'), 'utf8'), /^BAD_CSR .+\n$/);
  t.false(out.some((n) => n.startsWith('.')), 'no temporary files left');
  const x = new X509Certificate(readFileSync(join(outbox, 'dev-7.pem'), 'utf8'));
  t.true(x.subject.includes(`CN=${ids[7]}`));
  t.is(readdirSync(join(dir, 'done')).filter((n) => n.endsWith('.csr')).length, 101);
  t.is(s.ledger.issuedCount(), 100);
  t.is(link.status.issued, 100);
  t.is(link.status.refused, 1);
});

test('a file still being written is not read half-way, and re-dropping a signed CSR gives the same certificate', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const dir = join(s.dir, 'stick');
  const inbox = join(dir, 'inbox');
  mkdirSync(inbox, { recursive: true });
  const link = new SpoolLink(s.station, { dir, pollMs: 50, quietMs: 400 });
  const pem = pemEncode(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, 'CERTIFICATE REQUEST');
  // A writer that does not rename: half now, the rest a little later.
  writeFileSync(join(inbox, 'slow.csr'), pem.slice(0, 100));
  await link.scan();
  await new Promise((r) => setTimeout(r, 150));
  await link.scan();
  t.false(existsSync(join(dir, 'outbox', 'slow.error')), 'not read while it was still growing');
  writeFileSync(join(inbox, 'slow.csr'), pem);
  await link.scan();
  await new Promise((r) => setTimeout(r, 450));
  await link.scan();
  t.false(existsSync(join(dir, 'outbox', 'slow.pem')), 'one stable poll is not enough');
  await link.scan();
  const first = readFileSync(join(dir, 'outbox', 'slow.pem'), 'utf8');
  t.is(pemDecodeAll(first, 'CERTIFICATE').length, 2);

  drop(inbox, 'slow.csr', pem);
  const old = new Date(Date.now() - 10_000);
  utimesSync(join(inbox, 'slow.csr'), old, old);
  // Read only after two stable polls and the quiet period, whatever the mtime says.
  await link.scan();
  await new Promise((r) => setTimeout(r, 450));
  await link.scan();
  await link.scan();
  t.is(readFileSync(join(dir, 'outbox', 'slow.pem'), 'utf8'), first);
  t.is(s.ledger.issuedCount(), 1);
  // The stick pulled: no inbox, the link waits and says so.
  renameSync(dir, `${dir}-away`);
  await link.scan();
  t.is(link.status.state, 'waiting');
  renameSync(`${dir}-away`, dir);
  await link.scan();
  t.is(link.status.state, 'polling');
  await link.stop();
});

test('a file too large to be a CSR gets TOO_LARGE, and the spool keeps serving', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const dir = join(s.dir, 'stick');
  const inbox = join(dir, 'inbox');
  mkdirSync(inbox, { recursive: true });
  drop(inbox, 'huge.csr', Buffer.alloc(100_000, 0x41));
  drop(inbox, 'fine.csr', pemEncode(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, 'CERTIFICATE REQUEST'));
  const old = new Date(Date.now() - 10_000);
  for (const n of readdirSync(inbox)) utimesSync(join(inbox, n), old, old);
  const link = new SpoolLink(s.station, { dir, pollMs: 50, quietMs: 0 });
  for (let i = 0; i < 3; i++) await link.scan(); // seen, then still twice
  await link.stop();
  t.regex(readFileSync(join(dir, 'outbox', 'huge.error'), 'utf8'), /^TOO_LARGE /);
  t.is(pemDecodeAll(readFileSync(join(dir, 'outbox', 'fine.pem'), 'utf8'), 'CERTIFICATE').length, 2);
});

/**
 * The spool link's waits on the stick (answers are written and flushed on
 * libuv's pool, src/links/spool.ts): what a jig or a wedged stick does
 * while one is pending. This file hooks node:fs before the link is loaded,
 * so it runs in a process of its own.
 */
import test from 'ava';
import fs, { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { makeDeviceCsr, pemDecodeAll } from '../src/x509/index.js';
import { FACTORY, testStation, uuid } from './helpers/pki.js';

/** Runs before the spool link's folder flush (fs.fsync on a folder descriptor); may hold it. */
let beforeFolderSync: ((fd: number) => Promise<void> | void) | null = null;
const realFsync = fs.fsync;
(fs as { fsync: unknown }).fsync = (fd: number, cb: (err: NodeJS.ErrnoException | null) => void): void => {
  const hook = beforeFolderSync;
  if (!hook) return realFsync(fd, cb);
  Promise.resolve(hook(fd)).then(() => realFsync(fd, cb), cb);
};
syncBuiltinESMExports();
const { SpoolLink } = await import('../src/links/spool.js');

function stick(dir: string): { inbox: string; outbox: string; done: string } {
  const paths = { inbox: join(dir, 'inbox'), outbox: join(dir, 'outbox'), done: join(dir, 'done') };
  for (const p of Object.values(paths)) mkdirSync(p, { recursive: true });
  return paths;
}

const subjectOf = (pem: string): string => new X509Certificate(Buffer.from(pemDecodeAll(pem, 'CERTIFICATE')[0]!)).subject;

test.serial('a next request dropped under the same name while the answer is being flushed is not filed as answered: it gets its own certificate', async (t) => {
  const s = await testStation();
  t.teardown(async () => {
    beforeFolderSync = null;
    await s.close();
  });
  const { inbox, outbox, done } = stick(join(s.dir, 'stick'));
  const [first, second] = [uuid(), uuid()];
  const [firstCsr, secondCsr] = [first, second].map((deviceId) => makeDeviceCsr({ deviceId, factory: FACTORY, production: true }).der);
  writeFileSync(join(inbox, 'e.csr'), firstCsr!);
  const link = new SpoolLink(s.station, { dir: join(s.dir, 'stick'), pollMs: 20, quietMs: 0 });
  await link.scan();
  await link.scan(); // stable for two polls
  // The jig sees e.pem and drops its next request under the same name, before the link moved the first to done/.
  let swapped = false;
  beforeFolderSync = () => {
    if (swapped || !readdirSync(outbox).includes('e.pem')) return;
    swapped = true;
    writeFileSync(join(inbox, '.e.part'), secondCsr!);
    renameSync(join(inbox, '.e.part'), join(inbox, 'e.csr'));
  };
  await link.scan();
  t.true(swapped, 'the next request went in during the flush');
  beforeFolderSync = null;
  t.deepEqual(readdirSync(inbox), ['e.csr'], 'the next request is still waiting in the inbox');
  t.regex(subjectOf(readFileSync(join(outbox, 'e.pem'), 'utf8')), new RegExp(first));
  for (let i = 0; i < 4; i++) await link.scan();
  t.deepEqual(readdirSync(inbox), [], 'then it was answered');
  t.regex(subjectOf(readFileSync(join(outbox, 'e.pem'), 'utf8')), new RegExp(second), 'its own certificate');
  // The jig's rename replaced the first request's file; what reaches done/ is the second, once.
  t.deepEqual(readdirSync(done), ['e.csr']);
  t.deepEqual(new Uint8Array(readFileSync(join(done, 'e.csr'))), secondCsr, 'the request filed is the one answered last');
  await link.stop();
});

test.serial('a stick whose flush never returns does not keep the link from stopping', async (t) => {
  const s = await testStation();
  t.teardown(async () => {
    beforeFolderSync = null;
    await s.close();
  });
  const { inbox } = stick(join(s.dir, 'stick'));
  writeFileSync(join(inbox, 'junk.csr'), 'not a CSR');
  let wedged = false;
  beforeFolderSync = () => {
    wedged = true;
    return new Promise<void>(() => undefined); // never
  };
  const link = new SpoolLink(s.station, { dir: join(s.dir, 'stick'), pollMs: 20, quietMs: 0 });
  await link.start();
  const t0 = Date.now();
  while (!wedged && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 10));
  t.true(wedged, 'the link reached the flush');
  const s0 = performance.now();
  await link.stop();
  const ms = performance.now() - s0;
  t.true(ms < 2000, `stop took ${ms.toFixed(0)} ms`);
  t.is(link.status.state, 'stopped');
});

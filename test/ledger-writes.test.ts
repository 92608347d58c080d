/**
 * Where a serving station's commit flushes: a lone request's on the links'
 * thread (no hand-over), except while a large file is written beside the
 * ledger (a backup, an export) and for a while after, when a flush there
 * would hold every link (README, "The ledger writer").
 */
import test, { type ExecutionContext } from 'ava';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type { NewEvent } from '../src/ledger/index.js';
import { testStation } from './helpers/pki.js';

const event = (message: string): NewEvent => ({ kind: 'rejection', code: 'BAD_CSR', message, link: 'test' });

type Station = Awaited<ReturnType<typeof testStation>>;

/**
 * Probes where a station's lone commits flush. `here(m)`: whether the event was in the file when
 * recordEvent returned, before its promise settled (committed on this thread). `settle()`: waits
 * until a lone commit is made here again (a checkpoint may have the writer busy just after start).
 */
function commitProbe(t: ExecutionContext, s: Station): { here(message: string): Promise<boolean>; settle(): Promise<boolean> } {
  const seq = (): number => s.ledger.heads().eventSeq;
  const here = async (message: string): Promise<boolean> => {
    const before = seq();
    const done = s.ledger.recordEvent(event(message), { alone: true });
    const inline = seq() === before + 1;
    await done;
    t.is(seq(), before + 1, 'committed either way');
    return inline;
  };
  const settle = async (): Promise<boolean> => {
    for (let i = 0; i < 40; i++) {
      if (await here(`control ${i}`)) return true;
      await new Promise((r) => setTimeout(r, 50));
    }
    return false;
  };
  return { here, settle };
}

test('a lone commit flushes on the links\' thread, but through the writer while a large file is written beside the ledger and right after', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const { here: committedHere, settle } = commitProbe(t, s);
  t.true(await settle(), 'a lone commit is made on this thread when nothing else is going on');

  let release!: () => void;
  const copying = s.ledger.whileDiskBusy(() => new Promise<void>((r) => (release = r)));
  for (let i = 0; i < 5; i++) t.false(await committedHere(`during ${i}`), 'not here while the disk is busy');
  release();
  await copying;
  t.false(await committedHere('after'), 'nor right after: the kernel still flushes the copy');
});

/**
 * Another connection (a thread of its own, so that it can let go while this one waits) holds the
 * ledger's write lock for `ms`: the next commit here waits on SQLite's busy handler, as it would
 * behind a disk that is slow to flush. `exited` is made here, before anything awaits: the worker can
 * be gone by the time the caller looks (a commit that went through the writer awaits past its exit).
 */
async function holdWriteLock(path: string, ms: number): Promise<{ exited: Promise<void> }> {
  const worker = new Worker(
    `const Database = require(require('node:worker_threads').workerData.sqlite);
     const { parentPort, workerData } = require('node:worker_threads');
     const db = new Database(workerData.path);
     db.exec('BEGIN IMMEDIATE');
     parentPort.postMessage('locked');
     Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, workerData.ms);
     db.exec('ROLLBACK');
     db.close();`,
    { eval: true, workerData: { path, ms, sqlite: createRequire(import.meta.url).resolve('better-sqlite3') } },
  );
  const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    worker.once('message', () => resolve());
    worker.once('error', reject);
  });
  return { exited };
}

test('a lone commit that was slow on the links\' thread sends the next ones through the writer', async (t) => {
  // A threshold no commit reaches on a loaded machine (a loaded CI box flushed in over 15 ms, the
  // station's own threshold, and so sent the control commits through the writer), and a hold well past it.
  const s = await testStation({}, { slowCommitHereMs: 150 });
  t.teardown(() => s.close());
  const { here: committedHere, settle } = commitProbe(t, s);
  t.true(await settle(), 'a lone commit is made on this thread when nothing else is going on');

  // The station's checkpoint may have the writer busy at that moment (the commit then goes there): try again.
  let slowHere = false;
  let took = 0;
  for (let i = 0; i < 5 && !slowHere; i++) {
    const holder = await holdWriteLock(s.config.station.ledger, 400);
    const t0 = performance.now();
    slowHere = await committedHere(`slow ${i}`);
    took = performance.now() - t0;
    await holder.exited;
  }
  t.true(slowHere, 'the commit that found the disk slow was made here, waiting');
  t.true(took > 150, 'and it took longer than a slow commit');
  for (let i = 0; i < 3; i++) t.false(await committedHere(`after ${i}`), 'the ones after it go through the writer');
});

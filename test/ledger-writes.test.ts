/**
 * Where a serving station's commit flushes: a lone request's on the links'
 * thread (no hand-over), except while a large file is written beside the
 * ledger (a backup, an export) and for a while after, when a flush there
 * would hold every link (README, "The ledger writer").
 */
import test from 'ava';
import type { NewEvent } from '../src/ledger/index.js';
import { testStation } from './helpers/pki.js';

test('a lone commit flushes on the links\' thread, but through the writer while a large file is written beside the ledger and right after', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const event = (message: string): NewEvent => ({ kind: 'rejection', code: 'BAD_CSR', message, link: 'test' });
  const seq = (): number => s.ledger.heads().eventSeq;
  /** Whether the row was in the file when recordEvent returned, before its promise settled: committed here. */
  const committedHere = async (message: string): Promise<boolean> => {
    const before = seq();
    const done = s.ledger.recordEvent(event(message), { alone: true });
    const here = seq() === before + 1;
    await done;
    t.is(seq(), before + 1, 'committed either way');
    return here;
  };
  // Control: with the writer idle (a checkpoint may be on its way just after the start), a lone commit is made here.
  let here = false;
  for (let i = 0; i < 40 && !here; i++) {
    here = await committedHere(`control ${i}`);
    if (!here) await new Promise((r) => setTimeout(r, 50));
  }
  t.true(here, 'a lone commit is made on this thread when nothing else is going on');

  let release!: () => void;
  const copying = s.ledger.whileDiskBusy(() => new Promise<void>((r) => (release = r)));
  for (let i = 0; i < 5; i++) t.false(await committedHere(`during ${i}`), 'not here while the disk is busy');
  release();
  await copying;
  t.false(await committedHere('after'), 'nor right after: the kernel still flushes the copy');
});

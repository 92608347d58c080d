/**
 * Runs in a worker thread: the ledger's only writing connection while a
 * station serves. A durable commit (WAL, synchronous FULL) waits on the
 * disk; here that wait does not hold up the thread that parses, checks
 * and answers requests. Writes that arrive while one group is being
 * committed go into the next group together: one transaction, one flush
 * (SqliteLedger.commitGroup), and each reply leaves only after the commit
 * that holds its row is durable.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { RpcReply } from '../worker-rpc.js';
import { SqliteLedger, type Checkpoint, type CommitGuard, type GroupWrite, type NewEvent, type NewIssuance } from './index.js';

export type WriterRequest =
  | { id: number; op: 'issuance'; entry: NewIssuance; guard?: CommitGuard }
  | { id: number; op: 'event'; event: NewEvent }
  | { id: number; op: 'checkpoint'; checkpoint: Checkpoint }
  | { id: number; op: 'close' };

const { path, stationId } = workerData as { path: string; stationId: string };
const ledger = new SqliteLedger(path, stationId, { walLooked: true });
let queue: Array<WriterRequest & GroupWrite> = [];
let scheduled = false;
let closing: WriterRequest | null = null;

function flush(): void {
  scheduled = false;
  const group = queue;
  queue = [];
  const replies: RpcReply[] = [];
  if (group.length) {
    const results = ledger.commitGroup(group);
    group.forEach((req, i) => {
      const r = results[i]!;
      replies.push(r.ok ? { id: req.id, result: r.result } : { id: req.id, error: { code: r.error.code, message: r.error.message } });
    });
  }
  if (closing && queue.length === 0) {
    ledger.close();
    replies.push({ id: closing.id, result: undefined });
  }
  // The whole group's answers in one message (see worker-rpc.ts).
  if (replies.length) parentPort!.postMessage(replies);
  if (closing && queue.length === 0) parentPort!.close();
}

parentPort!.on('message', (batch: WriterRequest[]) => {
  for (const req of batch) {
    if (req.op === 'close') closing = req;
    else queue.push(req);
  }
  // Messages already waiting are delivered before this runs: they join the group.
  if (!scheduled) {
    scheduled = true;
    setImmediate(flush);
  }
});

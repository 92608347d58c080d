/**
 * Runs in a worker thread: the ledger's only writing connection while a
 * station serves. A durable commit (WAL, synchronous FULL) waits on the
 * disk for about half a millisecond; here that wait does not hold up the
 * thread that parses, checks and answers requests.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { asLineSignerError } from '../errors.js';
import type { RpcReply } from '../worker-rpc.js';
import { SqliteLedger, type Checkpoint, type CommitGuard, type NewEvent, type NewIssuance } from './index.js';

export type WriterRequest =
  | { id: number; op: 'issuance'; entry: NewIssuance; guard?: CommitGuard }
  | { id: number; op: 'event'; event: NewEvent }
  | { id: number; op: 'checkpoint'; checkpoint: Checkpoint }
  | { id: number; op: 'close' };


const { path, stationId } = workerData as { path: string; stationId: string };
const ledger = new SqliteLedger(path, stationId);

parentPort!.on('message', (req: WriterRequest) => {
  try {
    let result: unknown;
    if (req.op === 'issuance') result = ledger.appendIssuance(req.entry, req.guard);
    else if (req.op === 'event') ledger.appendEvent(req.event);
    else if (req.op === 'checkpoint') result = ledger.recordCheckpoint(req.checkpoint);
    else ledger.close();
    parentPort!.postMessage({ id: req.id, result } satisfies RpcReply);
    if (req.op === 'close') parentPort!.close();
  } catch (err) {
    const e = asLineSignerError(err);
    parentPort!.postMessage({ id: req.id, error: { code: e.code, message: e.message } } satisfies RpcReply);
  }
});

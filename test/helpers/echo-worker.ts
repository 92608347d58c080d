/** A worker for WorkerRpc's tests: answers with its thread id and when it loaded, after a delay if asked; `exit` ends the thread. */
import { threadId } from 'node:worker_threads';
import { serveRpc } from '../../src/worker-rpc.js';

const loadedAt = performance.timeOrigin + performance.now();

serveRpc<{ id: number; op: 'echo' | 'exit'; value?: unknown; afterMs?: number }>(async (req) => {
  if (req.afterMs) await new Promise((r) => setTimeout(r, req.afterMs));
  if (req.op === 'exit') process.exit(3);
  return { threadId, value: req.value, loadedAt };
});

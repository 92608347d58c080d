/**
 * The local control channel: how an operator command reaches the process
 * that owns a ledger (a serving station), so that the owner stays the
 * ledger's one writer. A Unix socket next to the ledger, `<ledger>.sock`,
 * mode 0600 in the ledger's folder: only the service user (and root) can
 * connect. One JSON request per connection, one JSON reply.
 */
import { chmodSync, rmSync, statSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { asLineSignerError, LineSignerError, type ErrorCode } from '../errors.js';
import { realLedgerPath, socketAnswers } from '../ledger/lock.js';

export const socketPath = (ledger: string): string => `${realLedgerPath(ledger)}.sock`;

const MAX_REQUEST = 256 * 1024;
/** A request line must arrive whole within this (its answer may take longer: a backup). */
const REQUEST_DEADLINE_MS = 30_000;
/** Connections open at once: operator commands come one at a time; past this the rest are refused at once. */
const MAX_CONNECTIONS = 32;
/** How long an answered connection may stay open for its client to read the answer and close. */
const ANSWERED_GRACE_MS = 5_000;

export type ControlReply = { ok: true; result: unknown } | { ok: false; code: ErrorCode; message: string };

export class ControlServer {
  private constructor(
    private server: Server,
    /** Every connection open now, on this server and any left listening on an unlinked name. */
    private readonly sockets: Set<Socket>,
    private readonly path: string,
    /** The socket file's inode: close() removes only its own, not one a later owner made. */
    private inode: number,
    private readonly handle: (request: unknown) => Promise<unknown>,
  ) {}

  /**
   * Listens again when the socket file was deleted (a cleanup of
   * `ledger.db.*`): operator commands would otherwise find no owner and
   * wait on its lock. A file another process answers on is left alone.
   */
  async ensure(): Promise<void> {
    try {
      if (statSync(this.path).ino === this.inode) return;
    } catch {
      // deleted: listen again
    }
    if (await socketAnswers(this.path)) return;
    rmSync(this.path, { force: true });
    const { server, inode } = await bind(this.path, this.handle, this.sockets);
    // The old server is left listening on its unlinked name (unreferenced: it ends with the
    // process): closing it would make libuv unlink the path, which is the new socket now.
    this.server = server;
    this.inode = inode;
  }

  /**
   * Listens on the ledger's socket. Only the ledger's lock holder calls
   * this, so a leftover socket file is stale, unless a process still
   * answers on it: then the lock file was deleted under a serving owner,
   * and this process must not become a second one.
   */
  static async listen(ledger: string, handle: (request: unknown) => Promise<unknown>): Promise<ControlServer> {
    const path = socketPath(ledger);
    if (await socketAnswers(path)) {
      throw new LineSignerError('LEDGER_BUSY', `another process serves ${ledger} on ${path}, though this one holds the lock: its lock file was deleted or replaced; stop that process first`);
    }
    rmSync(path, { force: true });
    const sockets = new Set<Socket>();
    const { server, inode } = await bind(path, handle, sockets);
    return new ControlServer(server, sockets, path, inode, handle);
  }

  async close(): Promise<void> {
    let ours = false;
    try {
      ours = statSync(this.path).ino === this.inode;
    } catch {
      // gone already
    }
    // A stopping station does not wait for its control clients (server.close() would: a client that
    // never reads or closes once held a SIGTERM for as long as it lived): their connections are cut.
    for (const socket of this.sockets) socket.destroy();
    // libuv unlinks a Unix socket's path when its server closes: only when the file there is still
    // ours, not one a later owner made (the server is unreferenced and ends with the process).
    if (ours) await new Promise<void>((resolve) => this.server.close(() => resolve()));
    if (ours) rmSync(this.path, { force: true });
  }
}

async function bind(path: string, handle: (request: unknown) => Promise<unknown>, sockets: Set<Socket>): Promise<{ server: Server; inode: number }> {
  // Counted here rather than with server.maxConnections, which closes a connection past it unanswered:
  // the command on the other end then cannot tell that from a station that died mid-request.
  let open = 0;
  // Half-open: a client that ends its side after the request (`socat -t`, shutdown(SHUT_WR)) still gets the answer.
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    if (open >= MAX_CONNECTIONS) {
      socket.on('error', () => undefined);
      // Read and dropped, so that the client's end is seen and the socket closes; gone within 2 s regardless.
      socket.resume();
      socket.setTimeout(2000, () => socket.destroy());
      socket.end(JSON.stringify({ ok: false, code: 'LEDGER_BUSY', message: `the serving station has ${MAX_CONNECTIONS} control connections open at once (other commands hanging, or someone holding them open); nothing done, try again` }) + '\n');
      return;
    }
    open++;
    socket.once('close', () => open--);
    serveOne(socket, handle);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  chmodSync(path, 0o600);
  server.unref();
  return { server, inode: statSync(path).ino };
}

function serveOne(socket: Socket, handle: (request: unknown) => Promise<unknown>): void {
  // Bytes, not characters: the limit is the wire's (a line of 3-byte characters once passed at 768 KiB).
  let data = Buffer.alloc(0);
  socket.setTimeout(30_000, () => socket.destroy());
  socket.on('error', () => undefined);
  // The whole request within the deadline, not only each byte within the idle timeout: a byte
  // every 29 s once held a connection for ever, and 20,000 of them used up the station's files.
  const reading = setTimeout(() => socket.destroy(), REQUEST_DEADLINE_MS);
  socket.once('close', () => clearTimeout(reading));
  socket.on('data', (chunk: Buffer) => {
    data = Buffer.concat([data, chunk]);
    const nl = data.indexOf(0x0a);
    if ((nl === -1 ? data.length : nl) > MAX_REQUEST) {
      // Never carried out (it once was, after the connection had been cut, with no reply).
      socket.removeAllListeners('data');
      clearTimeout(reading);
      socket.end(JSON.stringify({ ok: false, code: 'TOO_LARGE', message: `control request over ${MAX_REQUEST} bytes; nothing done` }) + '\n');
      return;
    }
    if (nl === -1) return;
    socket.removeAllListeners('data');
    clearTimeout(reading);
    // The request is in: its answer may take longer than the idle timeout (a backup of a large ledger).
    socket.setTimeout(0);
    let reply: Promise<ControlReply>;
    try {
      const request = JSON.parse(data.subarray(0, nl).toString('utf8')) as unknown;
      reply = handle(request).then(
        (result): ControlReply => ({ ok: true, result }),
        (err): ControlReply => {
          const e = asLineSignerError(err);
          return { ok: false, code: e.code, message: e.message };
        },
      );
    } catch {
      reply = Promise.resolve({ ok: false, code: 'USAGE', message: 'control request is not JSON' });
    }
    void reply.then((r) => {
      socket.end(JSON.stringify(r) + '\n');
      // Answered: a client that neither reads nor closes is cut soon after, not held for ever.
      socket.setTimeout(ANSWERED_GRACE_MS, () => socket.destroy());
    });
  });
  // The client ended its side: without a whole request line there is nothing to answer.
  socket.once('end', () => {
    if (data.indexOf(0x0a) === -1) socket.end();
  });
}

/**
 * A backup or an export takes as long as its file does (a large ledger to a slow stick): the command
 * waits for it (Ctrl-C stops waiting), rather than report a failure the station then completes.
 */
function defaultTimeout(request: unknown): number {
  const op = (request as { op?: unknown } | null)?.op;
  return op === 'backup' || op === 'export' ? 0 : 120_000;
}

/** "the revoke", for a message about a request whose fate is unknown. */
function describe(request: unknown): string {
  const op = (request as { op?: unknown } | null)?.op;
  return typeof op === 'string' && /^[a-z-]{1,32}$/.test(op) ? `the ${op}` : 'the request';
}

/**
 * Sends one request to the ledger's owner. Resolves to the owner's result,
 * rejects with its error, or resolves `undefined` when no owner listens.
 */
export function callOwner(ledger: string, request: unknown, timeoutMs = defaultTimeout(request)): Promise<{ result: unknown } | undefined> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath(ledger));
    let data = '';
    let connected = false;
    socket.setEncoding('utf8');
    socket.setTimeout(timeoutMs, () => {
      socket.destroy();
      reject(new LineSignerError('LEDGER_BUSY', `the serving station did not answer within ${timeoutMs / 1000} s`));
    });
    socket.on('connect', () => {
      connected = true;
      socket.write(JSON.stringify(request) + '\n');
    });
    socket.on('data', (chunk: string) => (data += chunk));
    // Whether the request was carried out is not known: say so, rather than guess why.
    const unanswered = (): LineSignerError =>
      new LineSignerError('LEDGER', `the serving station closed the control connection without an answer (it stopped, or was stopped, meanwhile?): whether ${describe(request)} was done is not known; \`line-signer status\` and \`line-signer log\` tell`);
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (!connected && (err.code === 'ENOENT' || err.code === 'ECONNREFUSED')) resolve(undefined);
      else if (connected && data === '' && (err.code === 'EPIPE' || err.code === 'ECONNRESET')) reject(unanswered());
      else if (!connected && err.code === 'EACCES') {
        reject(new LineSignerError('LEDGER', `cannot reach the serving station at ${socketPath(ledger)}: permission denied; run this as the station's service user (or root)`));
      } else reject(new LineSignerError('LEDGER', `control channel ${socketPath(ledger)}: ${err.message}`));
    });
    socket.on('end', () => {
      if (data === '') return reject(unanswered());
      let reply: ControlReply;
      try {
        reply = JSON.parse(data) as ControlReply;
      } catch {
        return reject(new LineSignerError('LEDGER', 'the serving station sent no readable answer'));
      }
      if (reply.ok) resolve({ result: reply.result });
      else reject(new LineSignerError(reply.code, reply.message));
    });
  });
}

/**
 * A drop-in for the stock lmp-device-register pointed at the station over
 * USB Ethernet (`DEVICE_API=http://<station>/sign`). What that client does:
 * HEAD to the URL first (any status below 500 passes), then one POST of
 * pretty-printed JSON whose values are all strings; 201 with a flat JSON
 * object of strings is success, and each key becomes a file.
 *
 * Whatever a client sends, the link holds its ground: a cap on connections,
 * timeouts on headers, body and idle sockets, a cap on the body, and a
 * body parser that keeps client names out of every object's prototype and
 * lets only plain text (src/text.ts) through.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { isEveryInterface } from '../addresses.js';
import { LineSignerError, type ProtocolCode } from '../errors.js';
import { quote, textProblem, TEXT_LIMITS } from '../text.js';
import { checkOverrideName, sotaToml, type Overrides } from './sota-toml.js';
import { LinkReporter, within, type Link, type LinkObserver, type StationPort } from './types.js';

/** The link's limits; README "Hostile input" lists them with what a client gets past each. */
export const HTTP_LIMITS = {
  /** Request body, bytes (413 TOO_LARGE). */
  maxBody: 64 * 1024,
  /** Request line and headers, bytes (431 TOO_LARGE). */
  maxHeaderBytes: 8 * 1024,
  /** Open connections; past it the oldest one still sending its request is closed, or the new one when none is. */
  maxConnections: 64,
  /** From connecting to the end of the headers (408). */
  headersTimeoutMs: 5_000,
  /** From connecting to the end of the body (408). */
  requestTimeoutMs: 10_000,
  /** A socket with no traffic and no request being answered is closed. */
  idleTimeoutMs: 30_000,
  /** Every answer says `connection: close`; this bounds a client that keeps it open anyway. */
  keepAliveTimeoutMs: 1_000,
  /** Retrying a listen address that is not there yet: first wait, doubling up to the last. */
  listenRetryMs: [500, 10_000],
  /**
   * At stop, how long requests in flight get to be answered before every
   * connection is cut: a request being signed needs milliseconds, and a
   * client trickling its body must not hold the station's stop (after
   * server.close() Node no longer times out requests).
   */
  stopMs: 2_000,
} as const;

export const MAX_BODY = HTTP_LIMITS.maxBody;

export interface HttpLinkOptions {
  /** HOST:PORT, [v6]:PORT, or PORT alone for 127.0.0.1. */
  listen: string;
  sota?: { gateway: string; ostree: string } | undefined;
  /**
   * When given, a bind to every interface is refused with this text: a
   * host name can resolve to 0.0.0.0 or ::, which no check of the text
   * catches, so a production station looks at the address actually bound.
   */
  everyInterfaceRefusal?: string | undefined;
  /**
   * Called when a later try (after 'waiting') is refused that way: the
   * first try's refusal rejects start(), a later one has no caller, and a
   * station must not go on serving its other links as if nothing happened.
   */
  onRefused?: ((err: LineSignerError) => void) | undefined;
}

const STATUS: Partial<Record<ProtocolCode, number>> = {
  TOO_LARGE: 413,
  DUPLICATE_DEVICE: 409,
  QUOTA_EXCEEDED: 403,
  CLOCK: 503,
  TOKEN_UNAVAILABLE: 503,
  INTERNAL: 500,
};

export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:(?:\[([0-9a-fA-F:]+)\]|([^:\s[\]]+))?:)?(\d{1,5})$/.exec(listen);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new LineSignerError('USAGE', `--http ${listen}: expected HOST:PORT`);
  return { host: m[1] ?? m[2] ?? '127.0.0.1', port };
}

export class HttpLink implements Link {
  private readonly reporter: LinkReporter;
  private server: Server | null = null;
  private readonly inFlight = new Set<Promise<void>>();
  /** The request each socket is being answered for: the idle timeout spares these sockets. */
  private readonly answering = new WeakMap<Socket, IncomingMessage>();
  /** Connections already refused by clientError: a second error on one records nothing. */
  private readonly refusedSockets = new WeakSet<Duplex>();
  /** Connections whose request reached serve(): a reset after that is serve()'s to record, or no refusal at all. */
  private readonly requested = new WeakSet<Duplex>();
  /** Open connections, oldest first. */
  private readonly open = new Set<Socket>();
  private retry: NodeJS.Timeout | null = null;
  private attempt: Promise<void> | null = null;
  private stopping = false;

  constructor(
    private readonly station: StationPort,
    private readonly opts: HttpLinkOptions,
    observer?: LinkObserver,
  ) {
    this.reporter = new LinkReporter(`http:${opts.listen}`, 'http', observer);
  }

  get status() {
    return this.reporter.status;
  }

  /** The port actually bound (for listen on port 0). */
  get port(): number {
    return (this.server?.address() as AddressInfo | null)?.port ?? 0;
  }

  /**
   * Listens, or, when the address cannot be had yet (the USB Ethernet
   * address not up, the port held by another program), reports 'waiting'
   * and tries again with back-off: a link that cannot start never ends the station.
   */
  async start(): Promise<void> {
    if (!this.opts.sota) {
      throw new LineSignerError('CONFIG', 'sota: the HTTP link needs a [sota] table (gateway, ostree) for the sota.toml it hands out');
    }
    const { host, port } = parseListen(this.opts.listen);
    this.stopping = false;
    await this.tryListen(host, port, HTTP_LIMITS.listenRetryMs[0]);
  }

  private tryListen(host: string, port: number, waitMs: number): Promise<void> {
    const server = this.makeServer();
    const attempt = new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    }).then(
      () => {
        if (this.stopping) return void server.close();
        const bound = (server.address() as AddressInfo).address;
        if (this.opts.everyInterfaceRefusal !== undefined && isEveryInterface(bound)) {
          server.close();
          const refusal = new LineSignerError('CONFIG', `links.http ${this.opts.listen}: ${host} is ${bound}, which ${this.opts.everyInterfaceRefusal}`);
          this.reporter.state('error', refusal.message);
          throw refusal;
        }
        server.on('error', (err) => this.reporter.state('error', err.message));
        this.server = server;
        this.reporter.state('listening', `${host}:${this.port}`);
      },
      (err: NodeJS.ErrnoException) => {
        if (this.stopping) return;
        this.reporter.state('waiting', listenProblem(err, host, port));
        this.retry = setTimeout(() => {
          this.retry = null;
          this.tryListen(host, port, Math.min(waitMs * 2, HTTP_LIMITS.listenRetryMs[1])).catch((err: unknown) => {
            if (err instanceof LineSignerError) this.opts.onRefused?.(err);
          });
        }, waitMs);
      },
    );
    this.attempt = attempt;
    return attempt;
  }

  private makeServer(): Server {
    const server = createServer(
      {
        requestTimeout: HTTP_LIMITS.requestTimeoutMs,
        headersTimeout: HTTP_LIMITS.headersTimeoutMs,
        keepAliveTimeout: HTTP_LIMITS.keepAliveTimeoutMs,
        maxHeaderSize: HTTP_LIMITS.maxHeaderBytes,
        connectionsCheckingInterval: 500,
        // A request without Host still gets the link's own JSON answer.
        requireHostHeader: false,
      },
      (req, res) => {
        const socket = req.socket;
        // One request a connection, as the stock client sends: every answer says `connection: close`, so a
        // request pipelined behind the first would be signed and never answered (a certificate nobody holds).
        if (this.requested.has(socket)) {
          // Not answered either: the first one's answer closes the connection. Recorded once a connection.
          req.resume();
          if (!this.refusedSockets.has(socket)) {
            this.refusedSockets.add(socket);
            this.recordRaw('BAD_FRAME', 'a second request on one connection (HTTP pipelining) is not served: one request a connection');
          }
          return;
        }
        this.answering.set(socket, req);
        this.requested.add(socket);
        const work = this.serve(req, res)
          .catch(() => {
            if (!res.headersSent) this.reply(res, 500, { code: 'INTERNAL', message: 'internal error' });
          })
          .finally(() => {
            this.answering.delete(socket);
            this.inFlight.delete(work);
          });
        this.inFlight.add(work);
      },
    );
    // A client that half-closes after its body (shutdown(SHUT_WR)) still reads its answer; by
    // default Node aborts the request at the FIN, and a certificate was issued that nobody received.
    (server as unknown as { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
    server.on('connection', (socket: Socket) => this.admit(socket));
    // Requests Node answers by itself unless asked: each gets the link's JSON and an event.
    server.on('connect', (_req: IncomingMessage, socket: Duplex) => this.refuseRaw(socket, 405, 'Method Not Allowed', 'BAD_FRAME', 'CONNECT is not served; POST /sign'));
    server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
      void this.refuse(res, 417, 'BAD_FRAME', `Expect: ${quote(String(req.headers.expect ?? ''))} is not served`);
    });
    server.setTimeout(HTTP_LIMITS.idleTimeoutMs, (socket: Socket) => {
      if (!this.answering.has(socket)) socket.destroy();
    });
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.clientError(err, socket));
    return server;
  }

  /**
   * Holds open connections to the cap. When full, the oldest connection that
   * has not yet sent a whole request (headers and body) makes room: a slow
   * client loses to a prompt one. When every connection is a whole request
   * being answered, the new one is closed at once.
   */
  private admit(socket: Socket): void {
    this.open.add(socket);
    socket.once('close', () => this.open.delete(socket));
    if (this.open.size <= HTTP_LIMITS.maxConnections) return;
    for (const old of this.open) {
      if (old !== socket && !this.answering.get(old)?.complete) {
        this.open.delete(old);
        old.destroy();
        this.recordRaw('BAD_FRAME', `connection closed to make room: ${HTTP_LIMITS.maxConnections} open, and it had not sent a whole request`);
        return;
      }
    }
    this.open.delete(socket);
    socket.destroy();
    this.recordRaw('BAD_FRAME', `connection refused: ${HTTP_LIMITS.maxConnections} open, each a whole request being answered`);
  }

  /** A refusal made where there is no request to answer (a connection cut, a raw reply). */
  private recordRaw(code: ProtocolCode, message: string): void {
    this.reporter.refused(code, message);
    void this.station.recordRefusal(this.reporter.status.name, code, message).catch(() => undefined);
  }

  /** A request whose client went away before it was whole: nobody reads an answer; recorded once a connection. */
  private refuseGone(socket: Duplex, message: string): void {
    socket.destroy();
    if (this.refusedSockets.has(socket)) return;
    this.refusedSockets.add(socket);
    this.recordRaw('BAD_FRAME', message);
  }

  /** Answers on the bare socket with the link's JSON and records it. */
  private refuseRaw(socket: Duplex, status: number, reason: string, code: ProtocolCode, message: string): void {
    const text = JSON.stringify({ code, message });
    if (socket.writable) socket.end(`HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`);
    else socket.destroy();
    this.recordRaw(code, message);
  }

  /** What Node's HTTP parser refused before a request existed: too slow, too big, not HTTP. */
  private clientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    if (err.code === 'ECONNRESET') {
      // Reset in the middle of its headers: a request refused, and recorded. Reset before any byte, or
      // once its request reached serve() (which records a body cut short), is not one more.
      if ((socket as Socket).bytesRead > 0 && !this.requested.has(socket)) this.refuseGone(socket, 'the connection was reset before the request was complete');
      return void socket.destroy();
    }
    // One refusal a connection: a timed-out request whose client then hangs up is one event, not two.
    if (this.refusedSockets.has(socket)) return void socket.destroy();
    this.refusedSockets.add(socket);
    const [status, code, message]: [number, ProtocolCode, string] =
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'BAD_FRAME', `the request did not arrive in time (headers ${HTTP_LIMITS.headersTimeoutMs / 1000} s, whole request ${HTTP_LIMITS.requestTimeoutMs / 1000} s)`]
        : err.code === 'HPE_HEADER_OVERFLOW'
          ? [431, 'TOO_LARGE', `headers over ${HTTP_LIMITS.maxHeaderBytes} bytes`]
          : err.code === 'HPE_INVALID_EOF_STATE'
            ? [400, 'BAD_FRAME', 'the request ended before it was complete']
            : [400, 'BAD_FRAME', 'not an HTTP/1.1 request'];
    // A client that hung up mid-request reads no answer.
    if (err.code === 'HPE_INVALID_EOF_STATE') {
      socket.destroy();
      this.recordRaw(code, message);
    } else this.refuseRaw(socket, status, status === 408 ? 'Request Timeout' : status === 431 ? 'Request Header Fields Too Large' : 'Bad Request', code, message);
  }

  private reply(res: ServerResponse, status: number, body?: unknown): void {
    const text = body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), connection: 'close' });
    res.end(text);
  }

  private async refuse(res: ServerResponse, status: number | undefined, code: ProtocolCode, message: string): Promise<void> {
    this.reporter.refused(code, message);
    await this.station.recordRefusal(this.reporter.status.name, code, message);
    this.reply(res, status ?? STATUS[code] ?? 400, { code, message });
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/sign') return this.refuse(res, 404, 'BAD_FRAME', 'no such endpoint; POST /sign');
    // lmp-device-register checks the endpoint with a bare HEAD before it posts.
    if (req.method === 'HEAD') {
      const unhealthy = await this.station.checkHealth();
      if (unhealthy) return this.reply(res, 503, { code: unhealthy.code, message: unhealthy.message });
      return this.reply(res, 200);
    }
    if (req.method !== 'POST') return this.refuse(res, 405, 'BAD_FRAME', 'POST /sign');

    const tooLarge = `body over ${MAX_BODY} bytes`;
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > MAX_BODY) {
      req.resume();
      return this.refuse(res, undefined, 'TOO_LARGE', tooLarge);
    }
    let bytes: Buffer | null;
    try {
      bytes = await readBody(req);
    } catch {
      return this.refuseGone(req.socket, 'the request ended before its body was complete');
    }
    if (bytes === null) return this.refuse(res, undefined, 'TOO_LARGE', tooLarge);

    let body: SignBody;
    let toml: string;
    try {
      body = parseSignBody(bytes);
      // sota.toml is built before signing, so a hostile override costs no certificate.
      const sota = this.opts.sota!; // start() refuses to listen without it
      toml = sotaToml({ ...sota, hardwareId: body.hardwareId ?? '', sotaConfigDir: body.sotaConfigDir, overrides: body.overrides });
    } catch (err) {
      if (!(err instanceof LineSignerError) || err.code === 'INTERNAL') throw err;
      return this.refuse(res, undefined, err.code as ProtocolCode, err.message);
    }

    const r = await this.station.handle({ csr: Buffer.from(body.csr, 'utf8'), link: this.reporter.status.name, hardwareId: body.hardwareId, name: body.name });
    this.reporter.result(r);
    if (!r.ok) return this.reply(res, STATUS[r.code] ?? 400, { code: r.code, message: r.message });
    this.reply(res, 201, {
      'root.crt': this.station.rootPem,
      'sota.toml': toml,
      'client.pem': r.certificatePem,
      'client.chained': r.chain,
    });
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.retry) clearTimeout(this.retry);
    this.retry = null;
    await this.attempt?.catch(() => {}); // a refused bind is already in the link's state
    const server = this.server;
    this.server = null;
    if (server) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      await within(Promise.all([...this.inFlight]), HTTP_LIMITS.stopMs);
      server.closeAllConnections();
      await closed;
    }
    this.reporter.state('stopped');
  }
}

function listenProblem(err: NodeJS.ErrnoException, host: string, port: number): string {
  switch (err.code) {
    case 'EADDRNOTAVAIL':
      return `address not available (${host})`;
    case 'EADDRINUSE':
      return `address in use (${host}:${port})`;
    case 'EACCES':
      return `permission denied (${host}:${port})`;
    default:
      return `${err.code ?? err.message} (${host}:${port})`;
  }
}

/** What the link takes from a request body: each field checked, nothing read through inheritance. */
interface SignBody {
  csr: string;
  hardwareId: string | undefined;
  name: string | undefined;
  sotaConfigDir: string;
  overrides: Overrides;
}

/** Caps for the fields the stock client sends; any other string field gets TEXT_LIMITS.field. */
const FIELD_LIMITS: ReadonlyMap<string, number> = new Map([
  ['hardware-id', TEXT_LIMITS.hardwareId],
  ['name', TEXT_LIMITS.name],
  ['sota-config-dir', TEXT_LIMITS.sotaConfigDir],
]);

/** PEM is printable ASCII in lines. */
const PEM_TEXT = /^[\x20-\x7e\r\n\t]*$/;

function badFrame(message: string): never {
  throw new LineSignerError('BAD_FRAME', message);
}

/**
 * The body lmp-device-register sends: a JSON object whose values are
 * strings, plus `overrides` (section → key → TOML literal). Every JSON
 * object becomes a null-prototype one as it is parsed, and fields are read
 * with Object.entries into Maps, so no name a client picks reaches a prototype.
 */
function parseSignBody(bytes: Buffer): SignBody {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    badFrame('the body is not UTF-8 text');
  }
  let parsed: unknown;
  try {
    // No reviver: JSON.parse makes `__proto__` an own data property, and fields are read only with
    // Object.entries into Maps. A reviver copying each object cost 9 ms for 20,000 `{}` in an unused field.
    parsed = JSON.parse(text);
  } catch {
    badFrame('the body is not a JSON object');
  }
  if (!isJsonObject(parsed)) badFrame('the body is not a JSON object');

  const fields = new Map<string, string>();
  let overrides: Overrides = new Map();
  for (const [key, value] of Object.entries(parsed)) {
    const keyProblem = textProblem(key, TEXT_LIMITS.field);
    if (keyProblem) badFrame(`a field name ${keyProblem}: ${quote(key)}`);
    if (key === 'overrides') {
      overrides = parseOverrides(value);
      continue;
    }
    if (typeof value !== 'string') badFrame(`${quote(key)} must be a string`);
    if (key === 'csr') {
      if (!PEM_TEXT.test(value)) badFrame('"csr" is not PEM text (printable ASCII lines)');
    } else {
      const why = textProblem(value, FIELD_LIMITS.get(key) ?? TEXT_LIMITS.field);
      if (why) badFrame(`${quote(key)} ${why}`);
    }
    fields.set(key, value);
  }
  const group = fields.get('group');
  if (group) throw new LineSignerError('POLICY_EXTENSION', 'the station does not assign device groups (this link has no authentication)');
  const csr = fields.get('csr');
  if (!csr) throw new LineSignerError('BAD_CSR', 'csr is missing');
  return {
    csr,
    hardwareId: fields.get('hardware-id') || undefined,
    name: fields.get('name') || undefined,
    sotaConfigDir: fields.get('sota-config-dir') || '/var/sota',
    overrides,
  };
}

function isJsonObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Override keys a request may carry in all, and sections. The stock client sends a handful;
 * each is parsed as TOML and written out again on the thread that serves
 * every link, and 3,500 of them in a 60 KB body cost that thread 20 ms a
 * request (PING on a serial link at p99 45-69 ms under eight such clients).
 */
export const MAX_OVERRIDES = 64;
export const MAX_OVERRIDE_SECTIONS = 16;

function parseOverrides(value: unknown): Overrides {
  const shape = 'overrides must map sections to objects of strings';
  if (!isJsonObject(value)) badFrame(shape);
  const out = new Map<string, Map<string, string>>();
  let count = 0;
  for (const [section, values] of Object.entries(value)) {
    // Sections too: 5,000 empty ones, each checked and written out, cost 11.5 ms a request.
    if (out.size >= MAX_OVERRIDE_SECTIONS) throw new LineSignerError('TOO_LARGE', `overrides: more than ${MAX_OVERRIDE_SECTIONS} sections`);
    checkOverrideName('overrides: section', section);
    if (!isJsonObject(values)) badFrame(shape);
    const table = new Map<string, string>();
    for (const [key, literal] of Object.entries(values)) {
      if (++count > MAX_OVERRIDES) throw new LineSignerError('TOO_LARGE', `overrides: more than ${MAX_OVERRIDES} keys in all`);
      checkOverrideName(`overrides.${section}: key`, key);
      if (typeof literal !== 'string') badFrame(shape);
      const why = textProblem(literal, TEXT_LIMITS.override);
      if (why) badFrame(`overrides.${section}.${key} ${why}`);
      table.set(key, literal);
    }
    out.set(section, table);
  }
  return out;
}

/** The whole body, or null as soon as it grows past MAX_BODY (the rest is drained while the answer goes out). */
function readBody(req: IncomingMessage): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    let parts: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY) return void parts.push(chunk);
      parts = [];
      resolve(null);
    });
    req.on('end', () => resolve(size > MAX_BODY ? null : Buffer.concat(parts)));
    req.on('error', reject);
    // A client that stalls is cut off by the server's request timeout; settle then.
    req.on('close', () => {
      if (!req.complete) reject(new Error('request not completed'));
    });
  });
}

/**
 * A drop-in for the stock lmp-device-register pointed at the station over
 * USB Ethernet (`DEVICE_API=http://<station>/sign`). What that client does:
 * HEAD to the URL first (any status below 500 passes), then one POST of
 * pretty-printed JSON whose values are all strings; 201 with a flat JSON
 * object of strings is success, and each key becomes a file.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { asLineSignerError, LineSignerError, type ProtocolCode } from '../errors.js';
import { sotaToml } from './sota-toml.js';
import { LinkReporter, type Link, type LinkObserver, type StationPort } from './types.js';

export const MAX_BODY = 64 * 1024;
const REQUEST_TIMEOUT_MS = 10_000;

export interface HttpLinkOptions {
  /** HOST:PORT, [v6]:PORT, or PORT alone for 127.0.0.1. */
  listen: string;
  sota?: { gateway: string; ostree: string } | undefined;
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
  private inFlight = new Set<Promise<void>>();

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

  async start(): Promise<void> {
    if (!this.opts.sota) {
      throw new LineSignerError('CONFIG', 'sota: the HTTP link needs a [sota] table (gateway, ostree) for the sota.toml it hands out');
    }
    const { host, port } = parseListen(this.opts.listen);
    const server = createServer(
      { requestTimeout: REQUEST_TIMEOUT_MS, headersTimeout: REQUEST_TIMEOUT_MS, connectionsCheckingInterval: 500 },
      (req, res) => {
        const work = this.serve(req, res).catch(() => {
          if (!res.headersSent) this.reply(res, 500, { code: 'INTERNAL', message: 'internal error' });
        });
        this.inFlight.add(work);
        void work.finally(() => this.inFlight.delete(work));
      },
    );
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    server.on('error', (err) => this.reporter.state('error', err.message));
    this.server = server;
    this.reporter.state('listening', `${host}:${this.port}`);
  }

  private reply(res: ServerResponse, status: number, body?: unknown): void {
    const text = body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), connection: 'close' });
    res.end(text);
  }

  private async refuse(res: ServerResponse, code: ProtocolCode, message: string, record = true): Promise<void> {
    this.reporter.refused(code, message);
    if (record) await this.station.recordRefusal(this.reporter.status.name, code, message);
    this.reply(res, STATUS[code] ?? 400, { code, message });
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/sign') return this.reply(res, 404, { code: 'BAD_FRAME', message: 'no such endpoint; POST /sign' });
    // lmp-device-register checks the endpoint with a bare HEAD before it posts.
    if (req.method === 'HEAD') return this.reply(res, 200);
    if (req.method !== 'POST') return this.reply(res, 405, { code: 'BAD_FRAME', message: 'POST /sign' });

    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > MAX_BODY) {
      req.resume();
      return this.refuse(res, 'TOO_LARGE', `body over ${MAX_BODY} bytes`);
    }
    const body = await readBody(req);
    if (body === null) return this.refuse(res, 'TOO_LARGE', `body over ${MAX_BODY} bytes`);

    let fields: Record<string, unknown>;
    try {
      const parsed = JSON.parse(body.toString('utf8')) as unknown;
      if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
      fields = parsed as Record<string, unknown>;
    } catch {
      return this.refuse(res, 'BAD_FRAME', 'the body is not a JSON object');
    }
    const str = (k: string): string | undefined => (typeof fields[k] === 'string' ? (fields[k] as string) : undefined);
    for (const [k, v] of Object.entries(fields)) {
      if (k !== 'overrides' && typeof v !== 'string') return this.refuse(res, 'BAD_FRAME', `${k} must be a string`);
    }
    if (fields.group !== undefined && fields.group !== '') {
      return this.refuse(res, 'POLICY_EXTENSION', 'the station does not assign device groups (this link has no authentication)');
    }
    const csr = str('csr');
    if (!csr) return this.refuse(res, 'BAD_CSR', 'csr is missing');
    const overrides = fields.overrides ?? {};
    if (!isOverrides(overrides)) return this.refuse(res, 'BAD_FRAME', 'overrides must map sections to objects of strings');
    const hardwareId = str('hardware-id') ?? '';

    // sota.toml is built before signing, so a hostile override costs no certificate.
    let toml: string;
    try {
      const sota = this.opts.sota!; // start() refuses to listen without it
      toml = sotaToml({ ...sota, hardwareId, sotaConfigDir: str('sota-config-dir') || '/var/sota', overrides });
    } catch (err) {
      return this.refuse(res, 'BAD_FRAME', asLineSignerError(err).message);
    }

    const r = await this.station.handle({ csr: Buffer.from(csr, 'utf8'), link: this.reporter.status.name, hardwareId });
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
    const server = this.server;
    if (!server) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    await Promise.all([...this.inFlight]);
    server.closeAllConnections();
    await closed;
    this.reporter.state('stopped');
  }
}

function isOverrides(v: unknown): v is Record<string, Record<string, string>> {
  if (!v || typeof v !== 'object' || Array.isArray(v)) return false;
  return Object.values(v).every(
    (section) => section && typeof section === 'object' && !Array.isArray(section) && Object.values(section).every((x) => typeof x === 'string'),
  );
}

/** The whole body, or null when it grows past MAX_BODY (the rest is drained). */
function readBody(req: IncomingMessage): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY) over = true;
      else parts.push(chunk);
    });
    req.on('end', () => resolve(over ? null : Buffer.concat(parts)));
    req.on('error', reject);
    // A client that stalls is cut off by the server's request timeout; settle then.
    req.on('close', () => {
      if (!req.complete) reject(new Error('request not completed'));
    });
  });
}

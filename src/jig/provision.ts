/**
 * The reference jig: for each device a fresh key and CSR, SIGN over J1, and
 * a check of the chain against the factory root before anything is kept.
 * A station that does not answer HELLO is reported within seconds; SIGN
 * waits long (a token may be slow). Whatever stops a run, the caller learns
 * how many devices were done.
 */
import { X509Certificate } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { makeDeviceCsr, pemDecodeAll } from '../x509/index.js';
import { LineSignerError } from '../errors.js';
import { J1Client, errOf } from './client.js';

/** HELLO: short, so no station at the other end is known in under 3 s. */
export const HELLO_TIMEOUT_MS = 1000;
export const HELLO_TRIES = 2;
/** SIGN: generous, a token may queue signatures. */
export const SIGN_TIMEOUT_MS = 10_000;
export const SIGN_TRIES = 3;

export interface JigOptions {
  serial: string;
  baud?: number;
  count: number;
  /** Keep each device's client.pem, client.chained, pkey.pem and root.crt here. */
  out?: string | undefined;
  onDevice?: (n: number, deviceId: string, ok: boolean, detail: string) => void;
}

export interface JigSummary {
  station: string;
  factory: string;
  provisioned: number;
  failed: number;
  failures: Record<string, number>;
  seconds: number;
}

/** A run that ended before its count: the station went away, stopped answering, or said no to HELLO. */
export class JigStopped extends LineSignerError {
  constructor(
    readonly summary: JigSummary | null,
    cause: Error,
  ) {
    super('INTERNAL', cause.message, { cause });
  }
}

/** The chain must be: device cert signed by the local-ca, local-ca signed by the root, for this device. */
export function checkChain(chainPem: string, rootPem: string, deviceId: string): string | null {
  const blocks = pemDecodeAll(chainPem, 'CERTIFICATE');
  if (blocks.length !== 2) return `expected 2 certificates, got ${blocks.length}`;
  const [device, ca] = blocks.map((b) => new X509Certificate(Buffer.from(b))) as [X509Certificate, X509Certificate];
  const root = new X509Certificate(rootPem);
  if (!device.checkIssued(ca) || !device.verify(ca.publicKey)) return 'device certificate is not signed by the local-ca';
  if (!ca.checkIssued(root) || !ca.verify(root.publicKey)) return 'local-ca does not chain to the factory root';
  if (!device.subject.split('\n').includes(`CN=${deviceId}`)) return 'certificate is for another device';
  return null;
}

export async function runJig(opts: JigOptions): Promise<JigSummary> {
  const client = await J1Client.open(opts.serial, opts.baud);
  const t0 = Date.now();
  let summary: JigSummary | null = null;
  try {
    const hello = await client.request('HELLO', null, HELLO_TIMEOUT_MS, HELLO_TRIES);
    if (hello.type !== 'HELLO') throw new Error(`HELLO answered ${hello.type} ${errOf(hello).code}`);
    const info = JSON.parse(Buffer.from(hello.body!).toString('utf8')) as { station: string; factory: string; production: boolean };
    const ca = await client.request('CA', null, HELLO_TIMEOUT_MS, HELLO_TRIES);
    if (ca.type !== 'CA') throw new Error(`CA answered ${ca.type}`);
    const rootPem = Buffer.from(ca.body!).toString('utf8');
    summary = { station: info.station, factory: info.factory, provisioned: 0, failed: 0, failures: {}, seconds: 0 };
    for (let n = 1; n <= opts.count; n++) {
      const deviceId = randomUUID();
      const csr = makeDeviceCsr({ deviceId, factory: info.factory, production: info.production });
      const reply = await client.request('SIGN', csr.der, SIGN_TIMEOUT_MS, SIGN_TRIES);
      let problem: string | null;
      let chain = '';
      if (reply.type === 'CERT') {
        chain = Buffer.from(reply.body!).toString('utf8');
        problem = checkChain(chain, rootPem, deviceId);
      } else {
        const e = errOf(reply);
        problem = `${e.code} ${e.message}`;
      }
      if (problem) {
        summary.failed++;
        const code = problem.split(' ')[0]!;
        summary.failures[code] = (summary.failures[code] ?? 0) + 1;
      } else {
        summary.provisioned++;
        if (opts.out) {
          const dir = join(opts.out, deviceId);
          mkdirSync(dir, { recursive: true });
          writeFileSync(join(dir, 'client.chained'), chain);
          writeFileSync(join(dir, 'client.pem'), chain.slice(0, chain.indexOf('-----END CERTIFICATE-----') + 26));
          writeFileSync(join(dir, 'root.crt'), rootPem);
          writeFileSync(join(dir, 'pkey.pem'), csr.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
        }
      }
      opts.onDevice?.(n, deviceId, !problem, problem ?? 'ok');
    }
    summary.seconds = (Date.now() - t0) / 1000;
    return summary;
  } catch (err) {
    if (summary) summary.seconds = (Date.now() - t0) / 1000;
    throw new JigStopped(summary, err instanceof Error ? err : new Error(String(err)));
  } finally {
    await client.close();
  }
}

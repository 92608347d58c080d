/**
 * `line-signer export`: the next batch of what the ledger gained since the
 * last one, signed in the token by the station key; or batch N again, byte
 * for byte, for a lost stick.
 */
import { createHash } from 'node:crypto';
import { accessSync, closeSync, constants, fsyncSync, lstatSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { createTempFile, renameIntoPlace } from '../files.js';
import { dirname, join } from 'node:path';
import { readPin, type StationConfig } from '../config/index.js';
import { LineSignerError } from '../errors.js';
import { eventHash, GENESIS_HASH, issuanceHash, SqliteLedger, type Batch, type LedgerEvent } from '../ledger/index.js';
import { Pkcs11Token } from '../token/index.js';
import { certificateDer, certificateKeyMismatch, pemEncode } from '../x509/index.js';
import { signDetached, verifyDetached } from './cms.js';
import { batchFileName, FORMAT, type CertificatesLine, type IssuanceLine, type Manifest, type RevocationLine } from './format.js';

export interface ExportOptions {
  outDir: string;
  /** Write this earlier batch again instead of a new one. */
  batch?: number | undefined;
  onProgress?: ((done: number, total: number) => void) | undefined;
  /** Who exports, recorded on the export event. */
  operator?: string | undefined;
  /** A serving station's export: no row past these seqs (what it has vouched for). */
  upTo?: { issuanceSeq: number; eventSeq: number } | undefined;
  /** Runs before the batch is recorded and named; throwing leaves nothing written. */
  beforeRecord?: (() => void) | undefined;
}

export interface ExportResult {
  path: string;
  number: number;
  issuances: number;
  revocations: number;
  sha256: string;
  rewritten: boolean;
}

/** Buffered, hashed writes to a file descriptor. */
class Sink {
  private parts: Buffer[] = [];
  private size = 0;
  readonly hash = createHash('sha256');
  /** `fd` null: the lines are only hashed (a batch checked, not written). */
  constructor(private readonly fd: number | null) {}
  line(value: unknown): void {
    const b = Buffer.from(JSON.stringify(value) + '\n');
    this.hash.update(b);
    this.parts.push(b);
    this.size += b.length;
    if (this.size >= 1 << 20) this.flush();
  }
  flush(): void {
    if (this.size === 0) return;
    if (this.fd !== null) writeSync(this.fd, Buffer.concat(this.parts));
    this.parts = [];
    this.size = 0;
  }
}

function readPem(path: string, what: string): string {
  try {
    return pemEncode(certificateDer(new Uint8Array(readFileSync(path)), what), 'CERTIFICATE');
  } catch (err) {
    throw new LineSignerError('EXPORT', `${what}: cannot read ${path}: ${(err as Error).message}`);
  }
}

/**
 * The newest issuance of the device that the mark revokes, never past the
 * batch. Sync applies a device's issuances and marks in this order. By
 * seq, not time (a clock may have been ahead when the device was issued):
 * the first certificate the device got after the revocation recorded the
 * grant it used in a `reissue_used` event naming its seq, and everything
 * before that is revoked. Ledgers from before that event (no replay base
 * ahead of the mark) keep the time rule their batches were written with.
 */
function revokedUpTo(ledger: SqliteLedger, revocation: LedgerEvent, lastSeq: number): number {
  const deviceId = revocation.deviceId ?? '';
  let upTo = 0;
  if (ledger.hasEventsOfKind('replay_base', 0, revocation.seq)) {
    let bound = lastSeq;
    for (const u of ledger.eventsOfKind('reissue_used', revocation.seq + 1, Number.MAX_SAFE_INTEGER)) {
      if (u.deviceId !== deviceId) continue;
      const seq = /^seq (\d+):/.exec(u.message ?? '')?.[1];
      if (seq) bound = Math.min(bound, Number(seq) - 1);
      break;
    }
    for (const r of ledger.issuancesOf(deviceId)) if (r.seq <= bound && r.seq > upTo) upTo = r.seq;
    return upTo;
  }
  for (const r of ledger.issuancesOf(deviceId)) if (r.issuedAt <= revocation.at && r.seq <= lastSeq && r.seq > upTo) upTo = r.seq;
  return upTo;
}

/** Writes manifest, certificates, issuances and revocations; returns the content's SHA-256. */
function changedRow(what: 'issuance' | 'event', seq: number): LineSignerError {
  return new LineSignerError('EXPORT', `${what} seq ${seq} does not match the ledger's hash chain: the file was changed outside line-signer; nothing exported (\`line-signer ledger verify\` lists what differs)`);
}

function writeContent(sink: Sink, ledger: SqliteLedger, config: StationConfig, b: Omit<Batch, 'signature' | 'fileSha256'>, onProgress?: ExportOptions['onProgress']): { issuances: number; revocations: number; digest: Buffer; certificatesSha256: string } {
  const revocations = [...ledger.eventsOfKind('revocation', b.firstEventSeq, b.lastEventSeq)];
  // The station key signs what it exports: each event row of the range must still be what its chain says.
  let prevEvent = b.firstEventSeq <= 1 ? GENESIS_HASH : null;
  for (const e of ledger.eventsSince(Math.max(0, b.firstEventSeq - 2))) {
    if (e.seq > b.lastEventSeq) break;
    if (e.seq >= b.firstEventSeq && prevEvent !== null && eventHash(prevEvent, e) !== e.entryHash) throw changedRow('event', e.seq);
    prevEvent = e.entryHash;
  }
  const count = Math.max(0, b.lastSeq - b.firstSeq + 1);
  const manifest: Manifest = {
    type: 'manifest',
    format: FORMAT,
    station: config.station.id,
    factory: config.station.factory,
    batch: b.number,
    first_seq: b.firstSeq,
    last_seq: b.lastSeq,
    count,
    first_event_seq: b.firstEventSeq,
    last_event_seq: b.lastEventSeq,
    revocations: revocations.length,
    chain_before: ledger.entryHashAt(b.firstSeq - 1),
    chain_after: count > 0 ? ledger.entryHashAt(b.lastSeq) : ledger.entryHashAt(b.firstSeq - 1),
    previous_batch_sha256: b.previousSha256,
    created_at: b.createdAt,
  };
  sink.line(manifest);
  const certificates = {
    type: 'certificates',
    local_ca: readPem(config.ca.certificate, 'local-ca certificate'),
    root: readPem(config.ca.root, 'factory root'),
    station: readPem(config.ca.station_certificate, 'station key certificate'),
  } satisfies CertificatesLine;
  sink.line(certificates);
  const certificatesSha256 = createHash('sha256').update(JSON.stringify(certificates) + '\n').digest('hex');
  let done = 0;
  let prev = ledger.entryHashAt(b.firstSeq - 1);
  for (const r of ledger.range(b.firstSeq, b.lastSeq)) {
    if (issuanceHash(prev, r) !== r.entryHash) throw changedRow('issuance', r.seq);
    prev = r.entryHash;
    sink.line({
      type: 'issuance',
      ...(r.v === 1 ? {} : { v: r.v }),
      seq: r.seq,
      entry_hash: r.entryHash,
      device_id: r.deviceId,
      serial: r.serial,
      client_pem: pemEncode(r.certificate, 'CERTIFICATE'),
      not_before: r.notBefore,
      not_after: r.notAfter,
      issued_at: r.issuedAt,
      hardware_id: r.hardwareId,
      work_order: r.workOrder,
      subject: r.subject,
      public_key_sha256: r.publicKeySha256,
      csr_sha256: r.csrSha256,
      link: r.link,
      station_id: r.stationId,
      ...(r.v === 1 ? {} : { name: r.name, supersedes: r.supersedes }),
    } satisfies IssuanceLine);
    if (++done % 1000 === 0) onProgress?.(done, count);
  }
  for (const e of revocations) {
    const line: RevocationLine = { type: 'revocation', event_seq: e.seq, entry_hash: e.entryHash, device_id: e.deviceId ?? '', reason: e.message ?? '', at: e.at };
    // Format-1 marks stay as they were written, so an old batch is written again byte for byte.
    if (e.v !== 1) Object.assign(line, { v: e.v, after_seq: revokedUpTo(ledger, e, b.lastSeq) });
    sink.line(line);
  }
  onProgress?.(done, count);
  return { issuances: done, revocations: revocations.length, digest: sink.hash.copy().digest(), certificatesSha256 };
}

/** A failure of the destination's file system (an errno) as an EXPORT error that names its code; anything else as it is. */
function fileProblem(err: unknown, what: string, then = 'nothing exported'): unknown {
  const e = err as NodeJS.ErrnoException;
  if (err instanceof LineSignerError || typeof e?.code !== 'string') return err;
  return new LineSignerError('EXPORT', `${what} (${e.message.startsWith(e.code) ? e.message : `${e.code}: ${e.message}`}); ${then}`);
}

/**
 * Refuses a batch name its file cannot take (a folder there), before
 * anything is recorded. Anything else at the name (a file, a symlink, a
 * FIFO) is replaced by the rename, never opened or written through.
 */
function checkBatchName(path: string): void {
  let folder: boolean;
  try {
    folder = lstatSync(path).isDirectory();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw fileProblem(err, `cannot look at ${path}`);
  }
  if (folder) throw new LineSignerError('EXPORT', `${path} is a folder (EISDIR): the batch file cannot take its name; move the folder away; nothing exported`);
}

/**
 * Writes `path` through a temporary name: a stick pulled mid-write never
 * holds half a batch. The temporary name is random and made exclusively
 * (see createTempFile): a stick's planted symlink or FIFO is never written
 * through nor waited on. `commit` runs after the file is complete and
 * flushed and before it takes its name: if it throws (another export
 * recorded this batch number first), the temporary file goes and nothing is
 * renamed. `afterCommit` says what a rename that fails then leaves behind.
 */
async function writeBatchFile(path: string, fill: (sink: Sink) => Promise<void>, commit: (sha256: string) => void, afterCommit: string): Promise<string> {
  let made: { tmp: string; fd: number };
  try {
    made = createTempFile(path);
  } catch (err) {
    throw fileProblem(err, `cannot make a file in ${dirname(path)}`);
  }
  const { tmp, fd } = made;
  let sha: string;
  try {
    try {
      const sink = new Sink(fd);
      await fill(sink);
      sink.flush();
      fsyncSync(fd);
      sha = sink.hash.digest('hex');
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    rmSync(tmp, { force: true });
    throw fileProblem(err, `cannot write ${tmp}`);
  }
  try {
    checkBatchName(path);
    commit(sha);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
  try {
    renameIntoPlace(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw fileProblem(err, `cannot give the batch file its name ${path}`, afterCommit);
  }
  return sha;
}

export interface BatchProblem {
  batch: number;
  reason: string;
}

/**
 * Every batch the ledger records, written again in memory from its rows:
 * the file must hash to the recorded SHA-256 and the recorded signature must
 * be the station certificate's over that content. What `ledger verify`
 * adds for the batches table; a problem per batch, never a throw.
 */
export function checkRecordedBatches(config: StationConfig, ledgerPath = config.station.ledger): { problems: BatchProblem[]; notes: string[] } {
  const problems: BatchProblem[] = [];
  const notes: string[] = [];
  const ledger = new SqliteLedger(ledgerPath, config.station.id, { readonly: true });
  try {
    // A batch carries the certificates in force when it was made; a recorded `ca import` since
    // replaced one, and then the batch cannot be made again byte for byte (nor by export --batch).
    const imports = [...ledger.eventsOfKind('ca_import', 0, Number.MAX_SAFE_INTEGER)].map((e) => e.seq);
    // What each batch's export event says its certificates line was (batches from this version on).
    const certificatesThen = new Map<number, string>();
    for (const e of ledger.eventsOfKind('export', 0, Number.MAX_SAFE_INTEGER)) {
      const m = /^batch (\d+): .*, certificates sha256 ([0-9a-f]{64})$/.exec(e.message ?? '');
      if (m) certificatesThen.set(Number(m[1]), m[2]!);
    }
    let stationCert: Uint8Array | null = null;
    try {
      stationCert = certificateDer(new Uint8Array(readFileSync(config.ca.station_certificate)), 'station key certificate');
    } catch {
      // said below, per batch
    }
    for (const b of ledger.allBatches()) {
      const before = problems.length;
      const sink = new Sink(null);
      let digest: Buffer;
      let certificatesNow = '';
      try {
        ({ digest, certificatesSha256: certificatesNow } = writeContent(sink, ledger, config, b));
      } catch (err) {
        problems.push({ batch: b.number, reason: `cannot be written again from the ledger: ${(err as Error).message}` });
        continue;
      }
      const check = verifyDetached(b.signature, digest);
      if (check.problem) problems.push({ batch: b.number, reason: `its recorded signature does not hold: ${check.problem}` });
      else if (!stationCert || !check.signerCertificate || Buffer.compare(Buffer.from(check.signerCertificate), Buffer.from(stationCert)) !== 0) {
        problems.push({ batch: b.number, reason: `its recorded signature is not by the station certificate ${config.ca.station_certificate}` });
      }
      sink.line({ type: 'signature', cms: Buffer.from(b.signature).toString('base64') });
      if (sink.hash.digest('hex') !== b.fileSha256) {
        problems.push({ batch: b.number, reason: 'its rows, signature or certificates no longer make the file whose SHA-256 was recorded' });
      }
      // A batch carries the certificates in force then: one renewed since (a root, a station certificate,
      // a recorded ca import) explains a difference; its rows are checked by the chain all the same.
      const then = certificatesThen.get(b.number);
      const replacedBy = imports.find((seq) => seq > b.lastEventSeq);
      const changed = then !== undefined ? then !== certificatesNow : replacedBy !== undefined;
      if (problems.length > before && changed) {
        problems.length = before;
        notes.push(`batch ${b.number} cannot be made again byte for byte: a certificate it carries (local-ca, root or station) was replaced since${replacedBy !== undefined ? ` (ca import, event seq ${replacedBy})` : ''}; its rows are checked by the chain, and the file exported then still verifies with verify-export`);
      }
    }
  } finally {
    ledger.close();
  }
  return { problems, notes };
}

export async function exportBatch(config: StationConfig, opts: ExportOptions): Promise<ExportResult | null> {
  // The folder must be there: a stick that is not mounted would otherwise get its batch written onto the
  // station's own disk under the mount point, hidden once the stick is mounted over it.
  let folder = false;
  try {
    folder = statSync(opts.outDir).isDirectory();
  } catch {
    // said below
  }
  if (!folder) throw new LineSignerError('USAGE', `${opts.outDir} is not a folder (is the stick mounted?); nothing exported`);
  try {
    accessSync(opts.outDir, constants.W_OK);
  } catch {
    throw new LineSignerError('USAGE', `${opts.outDir} is not writable by the process that writes the ledger (uid ${process.getuid?.() ?? '?'}); nothing exported`);
  }
  const ledger = new SqliteLedger(config.station.ledger, config.station.id);
  try {
    if (opts.batch !== undefined) return await rewrite(config, ledger, opts.batch, opts);
    const last = ledger.lastBatch();
    const b = {
      number: (last?.number ?? 0) + 1,
      firstSeq: (last?.lastSeq ?? 0) + 1,
      lastSeq: Math.min(ledger.issuedCount(), opts.upTo?.issuanceSeq ?? Infinity),
      firstEventSeq: (last?.lastEventSeq ?? 0) + 1,
      lastEventSeq: Math.min(ledger.maxEventSeq(), opts.upTo?.eventSeq ?? Infinity),
      createdAt: new Date().toISOString(),
      previousSha256: last?.fileSha256 ?? GENESIS_HASH,
    };
    if (b.lastSeq < b.firstSeq && !ledger.hasEventsOfKind('revocation', b.firstEventSeq, b.lastEventSeq)) return null;
    if (b.lastSeq < b.firstSeq) b.lastSeq = b.firstSeq - 1;

    const path = join(opts.outDir, batchFileName(config.station.id, b.number));
    checkBatchName(path);
    const stationCert = certificateDer(new Uint8Array(readFileSync(config.ca.station_certificate)), 'station key certificate');
    const token = Pkcs11Token.open({
      module: config.token.module,
      tokenLabel: config.token.token_label,
      pin: readPin(config.token),
      softhsm2Conf: config.token.softhsm2_conf,
    });
    let counts = { issuances: 0, revocations: 0 };
    let signature: Uint8Array = new Uint8Array();
    let certificatesSha256 = '';
    try {
      const signer = token.signer(config.token.station_key_label);
      const mismatch = certificateKeyMismatch(stationCert, signer.publicKeySpki(), `the station certificate ${config.ca.station_certificate}`);
      if (mismatch) throw new LineSignerError('EXPORT', `${mismatch}: a batch signed now would verify against no pin; restore the file (or run \`line-signer station-key init\` on a station without one)`);
      const sha = await writeBatchFile(path, async (sink) => {
        const c = writeContent(sink, ledger, config, b, opts.onProgress);
        counts = c;
        certificatesSha256 = c.certificatesSha256;
        signature = await signDetached(signer, stationCert, c.digest, new Date(b.createdAt));
        sink.line({ type: 'signature', cms: Buffer.from(signature).toString('base64') });
      }, (fileSha256) => {
        // The ledger first, then the name: batches.number is the primary key,
        // so of two exports at once exactly one records batch N and only its
        // file ever appears; disk and ledger agree.
        opts.beforeRecord?.();
        try {
          ledger.recordBatch({ ...b, signature, fileSha256 }, opts.operator, certificatesSha256);
        } catch (err) {
          const taken = /UNIQUE|PRIMARY KEY/i.test((err as Error).message);
          throw new LineSignerError('EXPORT', taken
            ? `batch ${b.number} was recorded by another export running at the same time; nothing written, run export again`
            : `cannot record batch ${b.number} in the ledger: ${(err as Error).message}; nothing written`);
        }
      }, `batch ${b.number} is recorded in the ledger but its file is not there: \`line-signer export --batch ${b.number} --out ${opts.outDir}\` writes it again`);
      return { path, number: b.number, ...counts, sha256: sha, rewritten: false };
    } finally {
      token.close();
    }
  } finally {
    ledger.close();
  }
}

async function rewrite(config: StationConfig, ledger: SqliteLedger, n: number, opts: ExportOptions): Promise<ExportResult> {
  const b = ledger.batch(n);
  if (!b) throw new LineSignerError('EXPORT', `there is no batch ${n} (last is ${ledger.lastBatch()?.number ?? 'none'})`);
  const path = join(opts.outDir, batchFileName(config.station.id, n));
  checkBatchName(path);
  let counts = { issuances: 0, revocations: 0 };
  const sha = await writeBatchFile(path, async (sink) => {
    counts = writeContent(sink, ledger, config, b, opts.onProgress);
    sink.line({ type: 'signature', cms: Buffer.from(b.signature).toString('base64') });
  }, (sha256) => {
    if (sha256 !== b.fileSha256) {
      throw new LineSignerError('EXPORT', `batch ${n} cannot be written again byte for byte (the local-ca, root or station certificate changed since it was made)`);
    }
  }, `batch ${n} not written again`);
  return { path, number: n, ...counts, sha256: sha, rewritten: true };
}

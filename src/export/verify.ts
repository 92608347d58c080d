/**
 * `line-signer verify-export`: for each batch, the signature (and the
 * pinned station key), every certificate against the local-ca, every
 * record against the hash chain the batch carries; across batches, that
 * they follow each other with no gap or overlap. Streams: one record in
 * memory at a time. Needs neither the token nor the ledger.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { LineSignerError } from '../errors.js';
import { basename } from 'node:path';
import { GENESIS_HASH, issuanceHash } from '../ledger/chain.js';
import { pemDecodeAll } from '../x509/index.js';
import { verifyDetached } from './cms.js';
import { FORMAT, type BatchLine, type Manifest } from './format.js';

export interface BatchSummary {
  file: string;
  manifest: Manifest | null;
  sha256: string;
  issuances: number;
  revocations: number;
  stationKeySha256: string | null;
  /** SHA-256 of the station key's SubjectPublicKeyInfo: the key, whatever certificate carries it. */
  stationSpkiSha256: string | null;
  problems: string[];
}

export interface VerifyOptions {
  /** SHA-256 of the station key's certificate or of its public key (hex, colons allowed). */
  stationKey?: string | undefined;
  /** SHA-256 of the factory root's certificate or public key. */
  factoryRoot?: string | undefined;
  /** Called for each issuance and revocation record, after it checked out (sync uses it). */
  /** `stationKey`: SHA-256 of the signing station key's SubjectPublicKeyInfo, as the batch carries it. */
  onRecord?: (line: BatchLine & { type: 'issuance' | 'revocation' }, batch: Manifest, stationKey: string | null) => void;
  onProgress?: (records: number) => void;
}

/** A batch line is at most this long (a record holds one certificate). */
export const MAX_LINE_BYTES = 1 << 20;

/** The one form of the last line: anything else (spaces, key order, escapes, no newline) is a changed batch. */
const SIGNATURE_LINE = /^\{"type":"signature","cms":"([A-Za-z0-9+/]+={0,2})"\}\n$/;

/** A pin: the SHA-256 of the station key's certificate or public key, 64 hex digits (colons allowed). */
export function normalizePin(pin: string, what = '--station-key'): string {
  const hex = pin.replace(/:/g, '').toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) {
    throw new LineSignerError('USAGE', `${what}: expected a SHA-256 (64 hex digits, colons allowed)${pin.trim() === '' ? ', got an empty pin' : ''}`);
  }
  return hex;
}

/**
 * Splits a regular file into lines of raw bytes, without holding the file:
 * each byte is looked at once and copied at most once (no re-joining of
 * what is held per chunk), and a line longer than MAX_LINE_BYTES ends the
 * read. A FIFO, a device or a folder is refused before a byte is read.
 */
export async function* lines(path: string): AsyncGenerator<Buffer> {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
  const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new Error('not a regular file');
    const buf = Buffer.alloc(1 << 20);
    let held: Buffer[] = [];
    let heldBytes = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      const chunk = buf.subarray(0, bytesRead);
      let at = 0;
      for (;;) {
        const lf = chunk.indexOf(0x0a, at);
        if (lf === -1) break;
        if (heldBytes + lf + 1 - at > MAX_LINE_BYTES) throw new Error(`a line is longer than ${MAX_LINE_BYTES} bytes`);
        const piece = chunk.subarray(at, lf + 1);
        yield held.length ? Buffer.concat([...held, piece]) : Buffer.from(piece);
        held = [];
        heldBytes = 0;
        at = lf + 1;
      }
      if (at < chunk.length) {
        heldBytes += chunk.length - at;
        if (heldBytes > MAX_LINE_BYTES) throw new Error(`a line is longer than ${MAX_LINE_BYTES} bytes`);
        held.push(Buffer.from(chunk.subarray(at)));
      }
    }
    if (heldBytes) yield Buffer.concat(held);
  } finally {
    await fh.close();
  }
}

export async function verifyBatch(file: string, opts: VerifyOptions = {}): Promise<BatchSummary> {
  const pin = opts.stationKey !== undefined ? normalizePin(opts.stationKey) : null;
  const rootPin = opts.factoryRoot !== undefined ? normalizePin(opts.factoryRoot, 'factory root pin') : null;
  const s: BatchSummary = { file, manifest: null, sha256: '', issuances: 0, revocations: 0, stationKeySha256: null, stationSpkiSha256: null, problems: [] };
  const problem = (p: string): void => {
    if (s.problems.length < 20) s.problems.push(p);
  };
  const whole = createHash('sha256');
  const content = createHash('sha256');
  let localCa: X509Certificate | null = null;
  let stationCertDer: Uint8Array | null = null;
  let prevHash = GENESIS_HASH;
  let expectSeq = 0;
  let signature: string | null = null;
  let n = 0;
  try {
    for await (const raw of lines(file)) {
      // Refused already, and the list is full: 200,000 copies of one genuine record behind the pinned
      // certificates line were otherwise each verified, 60 s and 130 MB for 300 MB.
      if (s.problems.length >= 20) return s;
      whole.update(raw);
      n++;
      if (signature !== null) {
        problem(`line ${n}: data after the signature`);
        continue;
      }
      // The signature line in its one form; a line that reads as one in any other form is a changed batch.
      if (raw.includes('"signature"')) {
        const exact = SIGNATURE_LINE.exec(raw.toString('latin1'));
        if (exact) {
          signature = exact[1]!;
          continue;
        }
        let parsed: unknown;
        try {
          parsed = JSON.parse(raw.toString('utf8'));
        } catch {
          parsed = null;
        }
        if ((parsed as { type?: unknown } | null)?.type === 'signature') {
          problem(`line ${n}: the signature line is not exactly {"type":"signature","cms":"<base64>"} and a newline: the batch was changed`);
          signature = '';
          continue;
        }
      }
      let line: BatchLine;
      try {
        line = JSON.parse(raw.toString('utf8')) as BatchLine;
      } catch {
        problem(`line ${n}: not JSON`);
        // A file whose first line is not even JSON is not a batch: no reason to read the rest of it.
        if (n === 1) return s;
        content.update(raw);
        continue;
      }
      if (line === null || typeof line !== 'object') {
        problem(`line ${n}: not a record`);
        content.update(raw);
        continue;
      }
      content.update(raw);
      if (n === 1) {
        if (line.type !== 'manifest' || line.format !== FORMAT) {
          problem(`not a ${FORMAT} batch (line 1 is not its manifest)`);
          return s;
        }
        s.manifest = line;
        prevHash = line.chain_before;
        expectSeq = line.first_seq;
        continue;
      }
      const m = s.manifest!;
      try {
      switch (line.type) {
        case 'certificates': {
          try {
            localCa = new X509Certificate(line.local_ca);
            const root = new X509Certificate(line.root);
            if (!localCa.checkIssued(root) || !localCa.verify(root.publicKey)) problem('the local-ca does not chain to the factory root in the batch');
            if (rootPin !== null) {
              const certSha = createHash('sha256').update(root.raw).digest('hex');
              const spkiSha = createHash('sha256').update(root.publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
              if (rootPin !== certSha && rootPin !== spkiSha) {
                problem(`the factory root is not the pinned one (batch has ${certSha})`);
                // Refused whatever follows: reading a 300 MB batch of another factory's records to the end once took 76 s.
                return s;
              }
            }
            const [der] = pemDecodeAll(line.station, 'CERTIFICATE');
            stationCertDer = der ?? null;
            if (der) {
              const station = new X509Certificate(Buffer.from(der));
              s.stationKeySha256 = createHash('sha256').update(der).digest('hex');
              const spkiSha = createHash('sha256').update(station.publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
              s.stationSpkiSha256 = spkiSha;
              if (pin !== null && pin !== s.stationKeySha256 && pin !== spkiSha) {
                problem(`the station key is not the pinned one (batch has ${s.stationKeySha256})`);
                return s; // refused whatever follows, as above
              }
            }
          } catch (err) {
            problem(`the certificates line is unreadable (${(err as Error).message})`);
          }
          break;
        }
        case 'issuance': {
          s.issuances++;
          const where = `seq ${line.seq}`;
          if (line.seq !== expectSeq) problem(`${where}: expected seq ${expectSeq} (a record is missing or out of order)`);
          expectSeq = line.seq + 1;
          const [der] = pemDecodeAll(line.client_pem ?? '', 'CERTIFICATE');
          const hash = issuanceHash(prevHash, {
            v: line.v ?? 1,
            seq: line.seq,
            serial: line.serial,
            deviceId: line.device_id,
            subject: line.subject,
            publicKeySha256: line.public_key_sha256,
            csrSha256: line.csr_sha256,
            certificate: der ?? new Uint8Array(),
            notBefore: line.not_before,
            notAfter: line.not_after,
            issuedAt: line.issued_at,
            stationId: line.station_id,
            link: line.link,
            hardwareId: line.hardware_id,
            workOrder: line.work_order,
            name: line.name ?? null,
            supersedes: line.supersedes ?? null,
          });
          if (hash !== line.entry_hash) problem(`${where}: the record does not match the ledger hash chain`);
          prevHash = line.entry_hash;
          if (!der || !localCa) problem(`${where}: no certificate, or no local-ca to check it with`);
          else {
            try {
              const cert = new X509Certificate(Buffer.from(der));
              if (!cert.verify(localCa.publicKey)) problem(`${where}: the certificate is not signed by the local-ca`);
              if (!cert.subject.split('\n').includes(`CN=${line.device_id}`)) problem(`${where}: the certificate is not for device ${line.device_id}`);
              if (BigInt('0x' + cert.serialNumber) !== BigInt('0x' + line.serial)) problem(`${where}: the serial does not match the certificate`);
            } catch {
              problem(`${where}: the certificate is unreadable`);
            }
          }
          opts.onRecord?.(line, m, s.stationSpkiSha256);
          if (s.issuances % 1000 === 0) opts.onProgress?.(s.issuances);
          break;
        }
        case 'revocation':
          s.revocations++;
          if (line.event_seq < m.first_event_seq || line.event_seq > m.last_event_seq) problem(`revocation ${line.event_seq}: outside the batch's event range`);
          if (typeof line.device_id !== 'string' || line.device_id === '') problem(`revocation ${line.event_seq}: no device id`);
          if (line.after_seq !== undefined && !(Number.isSafeInteger(line.after_seq) && line.after_seq >= 0 && line.after_seq <= Math.max(m.last_seq, m.first_seq - 1))) {
            problem(`revocation ${line.event_seq}: after_seq ${String(line.after_seq)} is not an issuance the ledger had`);
          }
          opts.onRecord?.(line, m, s.stationSpkiSha256);
          break;
        default:
          problem(`line ${n}: unknown record type`);
      }
      } catch (err) {
        // A field of the wrong type in a changed file: a problem to report, never a crash.
        problem(`line ${n}: malformed ${String((line as { type?: unknown }).type)} record (${(err as Error).message})`);
      }
    }
  } catch (err) {
    problem(`cannot read: ${(err as Error).message}`);
    return s;
  }
  s.sha256 = whole.digest('hex');
  const m = s.manifest;
  if (!m) {
    if (!s.problems.length) problem('empty file');
    return s;
  }
  if (s.issuances !== m.count) problem(`the manifest says ${m.count} issuances, the batch has ${s.issuances}`);
  if (s.revocations !== m.revocations) problem(`the manifest says ${m.revocations} revocation marks, the batch has ${s.revocations}`);
  if (m.count > 0 && expectSeq - 1 !== m.last_seq) problem(`the records end at seq ${expectSeq - 1}, the manifest says ${m.last_seq}`);
  if (prevHash !== m.chain_after) problem('the chain hash after the last record is not the manifest\'s');
  if (signature === null) problem('no signature: the batch is truncated');
  else if (signature === '') {
    // already reported: the signature line is not in its one form
  } else if (!stationCertDer) problem('no station certificate to check the signature with');
  else {
    const cms = Buffer.from(signature, 'base64');
    // Node's base64 decoder skips what it cannot read: only the canonical text counts.
    const check = cms.toString('base64') !== signature
      ? { problem: 'the signature is not canonical base64', signerCertificate: null }
      : verifyDetached(new Uint8Array(cms), content.digest());
    if (check.problem) problem(check.problem);
    else if (!check.signerCertificate || Buffer.compare(Buffer.from(check.signerCertificate), Buffer.from(stationCertDer)) !== 0) {
      problem('the signature is by another key than the station certificate in the batch');
    }
  }
  return s;
}

/** Several batches: each on its own, then that they follow each other. */
export async function verifyBatches(files: string[], opts: VerifyOptions = {}): Promise<{ batches: BatchSummary[]; problems: string[] }> {
  const batches: BatchSummary[] = [];
  for (const f of files) batches.push(await verifyBatch(f, opts));
  const problems = batches.flatMap((b) => b.problems.map((p) => `${basename(b.file)}: ${p}`));
  const good = batches.filter((b) => b.manifest).sort((a, b) => a.manifest!.batch - b.manifest!.batch);
  for (let i = 1; i < good.length; i++) {
    const prev = good[i - 1]!;
    const cur = good[i]!;
    const p = prev.manifest!;
    const c = cur.manifest!;
    const name = basename(cur.file);
    if (c.station !== p.station) problems.push(`${name}: from station ${c.station}, the others from ${p.station}`);
    else if (c.batch === p.batch) problems.push(`${name}: batch ${c.batch} given twice`);
    else if (c.batch !== p.batch + 1) {
      problems.push(`${name}: gap: batch${c.batch - p.batch > 2 ? 'es' : ''} ${p.batch + 1}${c.batch - p.batch > 2 ? `-${c.batch - 1}` : ''} missing between ${p.batch} and ${c.batch}`);
    } else {
      if (c.previous_batch_sha256 !== prev.sha256) problems.push(`${name}: does not follow batch ${p.batch} (previous batch hash differs)`);
      if (c.first_seq !== p.last_seq + 1) {
        problems.push(`${name}: seq ${c.first_seq} follows ${p.last_seq} in batch ${p.batch}: ${c.first_seq > p.last_seq + 1 ? 'gap' : 'overlap'}`);
      }
      if (c.chain_before !== p.chain_after) problems.push(`${name}: its chain does not continue batch ${p.batch}'s`);
    }
  }
  return { batches, problems };
}

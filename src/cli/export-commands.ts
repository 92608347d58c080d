import cliProgress from 'cli-progress';
import { configPath, loadConfig } from '../config/index.js';
import { resolve } from 'node:path';
import { existsSync } from 'node:fs';
import { LineSignerError } from '../errors.js';
import { exportBatch, sync, verifyBatches, type ExportResult } from '../export/index.js';
import { callOwner } from '../operator/control.js';
import { LedgerLock } from '../ledger/index.js';
import { operatorName, refuseMissingLedger, withOwnedLedger } from '../operator/index.js';
import { printable } from '../text.js';

function bar(label: string): cliProgress.SingleBar | null {
  if (!process.stderr.isTTY) return null;
  return new cliProgress.SingleBar(
    { format: `${label} [{bar}] {value}/{total} {percentage}% {eta_formatted} left`, stream: process.stderr, hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
}

export async function exportCommand(args: { config?: string; out: string; batch?: number; operator?: string }): Promise<void> {
  const config = loadConfig(configPath(args.config));
  const outDir = resolve(args.out);
  const operator = operatorName(config, args.operator);
  // A serving station owns the ledger: it exports (the batch is recorded by the ledger's one writer).
  // A station that is starting holds the lock before its socket listens: it is asked again while this waits.
  const waiting = (holder: string): void => void process.stderr.write(`waiting for the ledger: it is held by ${holder}\n`);
  refuseMissingLedger(config, 'nothing exported');
  let remote: { result: unknown } | undefined;
  const lock = await LedgerLock.wait(config.station.ledger, 'export', 60_000, waiting, async () => (remote = await callOwner(config.station.ledger, { op: 'export', outDir, batch: args.batch, operator })) !== undefined);
  let result: ExportResult | null;
  if (!lock) result = remote!.result as ExportResult | null;
  else {
    const progress = bar('export');
    let started = false;
    result = await withOwnedLedger(config, 'export', waiting, async (ctx) => {
      const r = await exportBatch(config, {
        outDir,
        batch: args.batch,
        operator,
        onProgress: (done, total) => {
          if (!progress || total < 2000) return;
          if (!started) progress.start(total, 0);
          started = true;
          progress.update(done);
        },
      });
      await ctx.checkpoint('export');
      return r;
    }, lock);
    progress?.stop();
  }
  // The serving station wrote it; under the unit, /tmp and /var/tmp are its own (PrivateTmp).
  if (result && !existsSync(result.path)) {
    throw new LineSignerError('EXPORT', `the serving station wrote batch ${result.number} to ${printable(result.path)}, but this shell does not see it there: a folder private to the service (the unit's PrivateTmp hides /tmp and /var/tmp); \`export --batch ${result.number} --out\` a stick under /media or a folder under /var/lib/line-signer writes it again`);
  }
  if (!result) {
    process.stdout.write('nothing to export: no issuance or revocation mark since the last batch; no file written\n');
    return;
  }
  process.stdout.write(
    `${result.rewritten ? 'wrote batch again' : 'exported batch'} ${result.number}: ${result.issuances} issuances, ${result.revocations} revocation marks\n` +
      `  ${result.path}\n  sha256 ${result.sha256}\n`,
  );
}

export async function verifyExportCommand(args: { files: string[]; stationKey?: string; json?: boolean }): Promise<void> {
  if (args.stationKey === undefined) {
    process.stderr.write('WARNING no --station-key: each batch is checked against the certificate it carries, which anyone can make; pin the station key (ca show prints it) before trusting the result\n');
  }
  const progress = bar('verify');
  if (progress) progress.start(0, 0);
  let seen = 0;
  const { batches, problems } = await verifyBatches(args.files, {
    stationKey: args.stationKey,
    onProgress: () => {
      seen += 1000;
      progress?.setTotal(Math.max(seen, 1));
      progress?.update(seen);
    },
  });
  progress?.stop();
  const setOk = problems.length === 0;
  if (args.json) {
    process.stdout.write(JSON.stringify({
      ok: setOk,
      batches: batches.map((b) => ({ file: b.file, ok: setOk, own_problems: b.problems.length, batch: b.manifest?.batch, issuances: b.issuances, revocations: b.revocations, sha256: b.sha256, station_key_sha256: b.stationKeySha256 })),
      problems,
    }, null, 2) + '\n');
  } else {
    for (const p of problems) process.stderr.write(`ERROR EXPORT ${printable(p)}\n`);
    // `ok` only for a file of a set that passes as a whole: a file fine on its own in a broken set is not fine.
    for (const b of batches) {
      const name = printable(b.file);
      if (setOk && b.manifest) {
        process.stdout.write(`ok ${name}: batch ${b.manifest.batch} of ${printable(b.manifest.station)}, seq ${b.manifest.first_seq}-${b.manifest.last_seq}, ${b.issuances} issuances, ${b.revocations} revocation marks; station key ${b.stationKeySha256}\n`);
      } else if (b.problems.length) process.stdout.write(`FAILED ${name}: ${b.problems.length} problem${b.problems.length === 1 ? '' : 's'} (above)\n`);
      else process.stdout.write(`FAILED ${name}: passes on its own, but the set it was given with does not (above)\n`);
    }
    process.stdout.write(setOk ? `set ok: ${batches.length} batch${batches.length === 1 ? '' : 'es'}\n` : `set FAILED: ${problems.length} problem${problems.length === 1 ? '' : 's'}\n`);
  }
  if (problems.length) process.exit(1);
}

export async function syncCommand(args: {
  files: string[];
  api: string;
  tokenFile: string;
  group?: string;
  dryRun?: boolean;
  state: string;
  stationKey?: string;
  pins?: string;
  allowGap?: boolean;
  insecureHttp?: boolean;
  concurrency: number;
  timeout: number;
  tries: number;
  retryBaseMs: number;
}): Promise<void> {
  const progress = bar('sync');
  let started = false;
  const summary = await sync({
    files: args.files,
    api: args.api,
    tokenFile: args.tokenFile,
    group: args.group,
    dryRun: args.dryRun,
    statePath: args.state,
    stationKey: args.stationKey,
    pinsFile: args.pins,
    allowGap: args.allowGap,
    insecureHttp: args.insecureHttp,
    concurrency: args.concurrency,
    timeoutMs: args.timeout,
    tries: args.tries,
    retryBaseMs: args.retryBaseMs,
    onProgress: (done, total) => {
      if (!progress) return;
      if (!started) progress.start(total, 0);
      started = true;
      progress.update(done);
    },
    onStep: (step) => {
      const who = `${printable(step.name)}${step.name === step.device ? '' : ` (device ${printable(step.device)})`}`;
      if (step.outcome === 'failed') process.stderr.write(`${progress ? '\n' : ''}failed: ${step.action} ${who}: ${step.detail}\n`);
      else if (step.outcome === 'planned') process.stdout.write(`${step.detail} ${who}\n`);
    },
  });
  progress?.stop();
  process.stdout.write(
    `sync${summary.dryRun ? ' (dry run)' : ''}: ${summary.devices} devices, ${summary.pending} needing a step: ${summary.registered} registered, ${summary.alreadyThere} already there, ` +
      `${summary.deleted} deleted, ${summary.failed} failed; ${summary.upToDate} already as the ledger says\n`,
  );
  if (summary.failed > 0) process.exit(1);
}

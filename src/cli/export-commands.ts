import cliProgress from 'cli-progress';
import { configPath, loadConfig } from '../config/index.js';
import { exportBatch, sync, verifyBatches } from '../export/index.js';

function bar(label: string): cliProgress.SingleBar | null {
  if (!process.stderr.isTTY) return null;
  return new cliProgress.SingleBar(
    { format: `${label} [{bar}] {value}/{total} {percentage}% {eta_formatted} left`, stream: process.stderr, hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
}

export async function exportCommand(args: { config?: string; out: string; batch?: number }): Promise<void> {
  const config = loadConfig(configPath(args.config));
  const progress = bar('export');
  let started = false;
  const result = await exportBatch(config, {
    outDir: args.out,
    batch: args.batch,
    onProgress: (done, total) => {
      if (!progress || total < 2000) return;
      if (!started) progress.start(total, 0);
      started = true;
      progress.update(done);
    },
  });
  progress?.stop();
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
  if (args.json) process.stdout.write(JSON.stringify({ batches: batches.map((b) => ({ file: b.file, batch: b.manifest?.batch, issuances: b.issuances, revocations: b.revocations, sha256: b.sha256, station_key_sha256: b.stationKeySha256 })), problems }, null, 2) + '\n');
  else {
    for (const p of problems) process.stderr.write(`ERROR EXPORT ${p}\n`);
    for (const b of batches) {
      if (b.manifest && b.problems.length === 0) {
        process.stdout.write(`ok ${b.file}: batch ${b.manifest.batch} of ${b.manifest.station}, seq ${b.manifest.first_seq}-${b.manifest.last_seq}, ${b.issuances} issuances, ${b.revocations} revocation marks; station key ${b.stationKeySha256}\n`);
      }
    }
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
    onItem: (i) => {
      if (i.outcome === 'failed') process.stderr.write(`${progress ? '\n' : ''}failed: ${i.kind === 'issuance' ? 'register' : 'delete'} ${i.device}: ${i.detail}\n`);
      else if (args.dryRun) process.stdout.write(`${i.detail} ${i.device}\n`);
    },
  });
  progress?.stop();
  process.stdout.write(
    `sync${summary.dryRun ? ' (dry run)' : ''}: ${summary.total} records: ${summary.done} registered, ${summary.alreadyThere} already there, ` +
      `${summary.deleted} deleted, ${summary.failed} failed, ${summary.skipped} done in an earlier run\n`,
  );
  if (summary.failed > 0) process.exit(1);
}

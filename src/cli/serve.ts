import { configPath, EVERY_INTERFACE, httpExposureProblem, loadConfig } from '../config/index.js';
import { LinkRunner, parseSerialFlag, planLinks, serialLinks, type Link, type LinkEvent } from '../links/index.js';
import { JigStopped, runJig, type JigSummary } from '../jig/provision.js';
import { openStation } from '../station/index.js';
import { jsonView, liveView, type Banner, type View } from './live-view.js';
import { SqliteLedger } from '../ledger/index.js';
import { localCaValidity, stationWarnings } from '../station/audit.js';
import type { StationConfig } from '../config/index.js';
import type { OpenStation } from '../station/index.js';
import { asLineSignerError, LineSignerError } from '../errors.js';
import { operatorName } from '../operator/index.js';
import { serveControl } from './owner.js';
import { printable } from '../text.js';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';

export interface ServeArgs {
  config?: string | undefined;
  serial?: string[] | undefined;
  http?: string | undefined;
  spool?: string[] | undefined;
  json?: boolean | undefined;
  operator?: string | undefined;
}

export async function serveCommand(args: ServeArgs): Promise<void> {
  const config = loadConfig(configPath(args.config));
  const plan = planLinks(config, { serial: args.serial ?? [], ...(args.http ? { http: args.http } : {}), spool: args.spool ?? [] });
  const exposure = args.http && config.station.production ? httpExposureProblem(args.http) : null;
  if (exposure) throw new LineSignerError('USAGE', `--http ${args.http} ${exposure}`);
  // Nothing to serve is a usage error, said once the token took the PIN (a refused PIN is what a unit must
  // not retry) and before the ledger gets a start and a stop row for a station that never served.
  const nothingToServe = plan.serial.length === 0 && !plan.http && plan.spool.length === 0;
  const open = await openStation(config, {
    command: 'serve',
    operator: operatorName(config, args.operator),
    ...(nothingToServe ? { afterLogin: () => { throw new LineSignerError('USAGE', 'no links: give --serial, --http or --spool, or a [links] table in the config'); } } : {}),
  });
  let view: View | undefined;
  const observer = (e: LinkEvent): void => view?.event(e);
  // A link refused for good after it started (the HTTP link's host name found to bind every
  // interface on a later try) stops the station as the same refusal at start does.
  let refused: LineSignerError | null = null;
  let stopForRefusal = (): void => undefined;
  const onRefused = (err: LineSignerError): void => {
    refused ??= err;
    stopForRefusal();
  };
  const links: Link[] = [...serialLinks(open.station, plan, config, observer), ...(await extraLinks(open.station, plan, config, observer, onRefused))];
  const runner = new LinkRunner(links);
  view =
    process.stdout.isTTY && !args.json
      ? liveView(`line-signer serve: station ${config.station.id}, factory ${config.station.factory}`, () => links.map((l) => l.status), stationBanner(config, open))
      : jsonView();
  const control = await serveControl(config, open, (line, fields) => view?.info(line, fields));
  try {
    await runner.start();
  } catch (err) {
    // Closed as at any stop: the stop row, the socket and the owner file (they were left behind).
    await runner.stop();
    await control.close();
    await open.close();
    view.stop();
    throw err;
  }
  for (const w of open.warnings) view.info(`warning: ${w}`);
  view.info('serving', { links: links.map((l) => l.status.name) });
  let lostOwnership: string | null = null;
  let lostFile: ReturnType<OpenStation['ledgerFileProblem']> = null;
  let guard: NodeJS.Timeout | undefined;
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      view?.info(`${signal}: finishing requests in flight`);
      resolve();
    };
    stopForRefusal = () => {
      view?.info(`ERROR ${refused!.code} ${refused!.message}; this station stops`);
      resolve();
    };
    if (refused) stopForRefusal();
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
    // Every 2 s: still the ledger's one owner? A deleted lock file is taken again, a deleted socket
    // listened on again; a lock another process took meanwhile (still held 0.7 s later) stops this
    // station, leaving one owner.
    const check = (): void => {
      // The file first: its connections would go on writing a file no path names (lost at the stop), or
      // beside another; a folder deleted with it also takes the lock file, which cannot be made again there.
      lostFile = open.ledgerFileProblem();
      if (lostFile) {
        view?.info(`${lostFile.text}; this station stops`);
        resolve();
        return;
      }
      try {
        lostOwnership = open.stillOwned();
      } catch (err) {
        lostOwnership = asLineSignerError(err).message;
      }
      if (lostOwnership) {
        view?.info(`ERROR LEDGER_BUSY ${lostOwnership}; this station stops`);
        resolve();
        return;
      }
      void control.ensure().catch((err: Error) => view?.info(`warning: control socket: ${err.message}`));
      guard = setTimeout(check, open.ownershipContested() ? 700 : 2000);
      guard.unref();
    };
    guard = setTimeout(check, 2000);
    guard.unref();
  });
  clearTimeout(guard);
  await runner.stop();
  await control.close();
  // A stop (SIGTERM) within 2 s of the file's loss still saves it.
  if (!lostOwnership) lostFile ??= open.ledgerFileProblem();
  // Deleted or moved away: the file the connections hold is whole, and the only copy. Overwritten: the
  // file is another's now, and nothing more goes into it (a copy of the mix would be no ledger).
  // Rows this station did not write: it signs nothing more (no stop row or checkpoint over them).
  const overwritten = lostFile?.kind === 'overwritten';
  const foreign = lostFile?.kind === 'foreign';
  const lost = lostFile && !overwritten && !foreign;
  if (lost) view.info(`ERROR LEDGER ${lostFile!.text}; the station saves the ledger it wrote`);
  if (foreign) view.info(`ERROR LEDGER ${lostFile!.text}; nothing more is written or signed: run \`line-signer ledger verify\`, which names the rows`);
  try {
    const notLeft = await open.close({
      write: lostOwnership === null && !overwritten && !foreign,
      // After the stop's checkpoint, before the connections close: the only copy is the file they hold open.
      ...(lost ? { beforeClose: () => saveLedger(config.station.ledger, open, view!) } : {}),
      leaveAsFound: overwritten,
    });
    if (overwritten) {
      view.info(
        `ERROR LEDGER ${lostFile!.text}; what this station wrote was in it and is lost with it. ` +
          `${notLeft ? `The file: ${notLeft}` : 'The file is left as it was found: nothing of this station\'s was written into it'}. ` +
          `Restore the newest backup to ${config.station.ledger} (\`line-signer ledger accept --reason R\`, with --forget-newer when it ends before the token's checkpoint)`,
      );
    }
  } catch (err) {
    view.info(`ERROR ${asLineSignerError(err).code} at the stop: ${asLineSignerError(err).message}`);
  }
  view.info('stopped', { issued: links.reduce((n, l) => n + l.status.issued, 0) });
  view.stop();
  if (refused) throw refused;
  // Everything is answered, closed and flushed: a port's close or a timer left in a library must not hold the exit past the promised 2 s.
  setImmediate(() => process.exit(lostOwnership || lostFile ? 1 : 0));
}

/**
 * The ledger this station wrote, which no path names any more, copied out
 * while its connections still hold it: beside the ledger's path (the
 * folder made again if it was deleted), else in the temporary folder; on
 * failure (a full disk) tried again every 5 s until a second SIGINT or
 * SIGTERM, saying each time that the process holds the only copy.
 */
async function saveLedger(ledger: string, open: OpenStation, view: View): Promise<void> {
  let giveUp = false;
  const stop = (): void => void (giveUp = true);
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    for (;;) {
      const name = `${basename(ledger)}.saved-${new Date().toISOString().replace(/[:.]/g, '-')}`;
      const failures: string[] = [];
      for (const folder of [dirname(ledger), tmpdir()]) {
        const dest = join(folder, name);
        if (existsSync(dest)) {
          failures.push(`${dest}: exists`);
          continue;
        }
        try {
          mkdirSync(folder, { recursive: true, mode: 0o700 });
          const left = await open.ledger.saveTo(dest);
          view.info(
            `the ledger this station wrote, up to its stop, is saved as ${dest}; the token's checkpoint vouches for it. ` +
              `Check it (\`line-signer ledger verify --ledger ${dest}\`) and move it to ${ledger} to serve again${left ? `; ${left}` : ''}`,
            { saved: dest },
          );
          return;
        } catch (err) {
          failures.push(`${dest}: ${asLineSignerError(err).message}`);
          // A copy cut short (a full disk) would be mistaken for the ledger, and fill the disk again at each try.
          rmSync(dest, { force: true });
        }
      }
      view.info(
        `ERROR LEDGER the ledger this station wrote could not be saved (${failures.join('; ')}). This process holds the only copy: ` +
          'free space (or make a folder writable) and it tries again in 5 s; a second SIGTERM gives up, and the certificates issued since the last backup are lost',
      );
      if (giveUp) return;
      await new Promise((r) => setTimeout(r, 5000));
      if (giveUp) return;
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

/** HTTP and spool links, loaded only when asked for. */
async function extraLinks(...a: [...Parameters<typeof serialLinks>, (err: LineSignerError) => void]): Promise<Link[]> {
  const [station, plan, config, observer, onRefused] = a;
  const out: Link[] = [];
  if (plan.http) {
    const { HttpLink } = await import('../links/http.js');
    const everyInterfaceRefusal = config.station.production ? EVERY_INTERFACE : undefined;
    out.push(new HttpLink(station, { listen: plan.http, sota: config.sota, everyInterfaceRefusal, onRefused }, observer));
  }
  if (plan.spool.length) {
    const { SpoolLink } = await import('../links/spool.js');
    for (const dir of plan.spool) out.push(new SpoolLink(station, { dir, pollMs: config.links.spool_poll_ms }, observer));
  }
  return out;
}

/**
 * The reference jig on the command line: progress as `n/N` on stderr, the
 * summary on stdout; a run cut short still says how many devices it did.
 */
export async function jigCommand(args: { serial: string; count: number; out?: string | undefined; json?: boolean | undefined }): Promise<void> {
  const { path, baud } = parseSerialFlag(args.serial);
  const tty = process.stderr.isTTY && !args.json;
  let done = 0;
  let summary: JigSummary;
  const t0 = Date.now();
  try {
    summary = await runJig({
      serial: path,
      baud,
      count: args.count,
      out: args.out,
      onDevice: (n, deviceId, ok, detail) => {
        done = n;
        const row = `${n}/${args.count} ${ok ? 'ok' : 'FAIL'} ${deviceId}${ok ? '' : ` ${printable(detail)}`}`;
        process.stderr.write(tty ? `\r${row.padEnd(100)}` : `${row}\n`);
      },
    });
  } catch (err) {
    if (tty && done > 0) process.stderr.write('\n');
    if (!(err instanceof JigStopped)) throw err;
    const s = err.summary;
    const tally = s ? `${s.provisioned} provisioned, ${s.failed} failed` : 'no station answered HELLO';
    const seconds = ((Date.now() - t0) / 1000).toFixed(1);
    if (args.json) process.stdout.write(JSON.stringify({ ...s, stopped: err.message, done, count: args.count, seconds: Number(seconds) }) + '\n');
    else process.stdout.write(`jig: stopped after ${done} of ${args.count} devices (${tally}) in ${seconds} s: ${printable(err.message)}\n`);
    throw err;
  }
  if (tty) process.stderr.write('\n');
  if (args.json) process.stdout.write(JSON.stringify(summary) + '\n');
  else {
    const failures = Object.entries(summary.failures).map(([c, n]) => `${c} ${n}`).join(', ');
    process.stdout.write(
      `jig: station ${printable(summary.station)} (${printable(summary.factory)}): ${summary.provisioned} provisioned, ${summary.failed} failed` +
        `${failures ? ` (${failures})` : ''} in ${summary.seconds.toFixed(1)} s; every certificate checked against the factory root\n`,
    );
  }
  if (summary.failed > 0) process.exit(1);
}

/**
 * The live view's banner: the open work order's progress, and what needs a
 * look (the clock, the token, the local-ca's expiry, the ledger's disk).
 * Read at most every 2 s: the screen redraws twice a second.
 */
function stationBanner(config: StationConfig, open: OpenStation): () => Banner {
  const ledger = new SqliteLedger(config.station.ledger, config.station.id, { readonly: true });
  const ca = localCaValidity(config);
  let cached: { at: number; banner: Banner } | null = null;
  return () => {
    if (cached && Date.now() - cached.at < 2000) return cached.banner;
    const now = new Date();
    const warnings = stationWarnings(config, ledger, now, ca?.notBefore ?? null, ca?.notAfter ?? null);
    const health = open.station.health();
    if (health && health.code !== 'CLOCK') warnings.unshift(`${health.code}: ${health.message}`);
    if (open.checkpointer.failure) warnings.push(`checkpoints are failing: ${open.checkpointer.failure}`);
    const order = ledger.stationContext(now).order;
    cached = { at: Date.now(), banner: { warnings, order: order ? { id: order.id, issued: order.issued, quantity: order.quantity } : null } };
    return cached.banner;
  };
}

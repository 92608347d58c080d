/**
 * The commands: parse, load config, call one module, print. Their logic
 * lives in station/ (and later links/ and export/).
 */
import { readFileSync } from 'node:fs';
import type { Argv } from 'yargs';
import { configPath, loadConfig, type StationConfig } from '../config/index.js';
import { asLineSignerError, EXIT_TOKEN_PIN, LineSignerError } from '../errors.js';
import { writeFileAtomic } from '../files.js';
import { LedgerLock } from '../ledger/index.js';
import { checkRecordedBatches } from '../export/index.js';
import { callOwner } from '../operator/control.js';
import type { SignResult } from '../station/index.js';
import { caCsr, caDemo, caImport, caInit, caInitToken, caShow, openStation, stationKeyInit, stationStatus, verifyLedger } from '../station/index.js';
import { printJson } from './output.js';
import { checkClientText, printable, TEXT_LIMITS } from '../text.js';
import { cliLink, operatorName, refuseMissingLedger } from '../operator/index.js';
import { acceptCommand, allowReissueCommand, backupCommand, revokeCommand } from './operator-commands.js';

export interface GlobalArgs {
  config?: string | undefined;
}

export function config(args: GlobalArgs): StationConfig {
  return loadConfig(configPath(args.config));
}

function readInput(path: string): Uint8Array {
  // yargs hands a lone "-" over as an empty string.
  const stdin = path === '-' || path === '';
  try {
    return new Uint8Array(readFileSync(stdin ? 0 : path));
  } catch (err) {
    throw new LineSignerError('USAGE', `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

export function caCommands(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y
    .command(
      'init-token',
      'make the token (SoftHSM2, or any module with a free slot) with the user PIN from the config; no PIN on a command line',
      (a) => a.option('so-pin-file', { type: 'string', describe: 'read the SO PIN from this private file (default: a random one, printed once)' }),
      (args) => {
        const cfg = config(args);
        const r = caInitToken(cfg, args['so-pin-file']);
        process.stdout.write(`token "${cfg.token.token_label}" made in ${cfg.token.module}; its user PIN is the one from the config\n`);
        if (r.generated) {
          process.stdout.write(`SO PIN (resets the user PIN; shown this once, keep it offline): ${r.soPin}\n`);
        }
        process.stdout.write('next: line-signer ca init --csr-out FILE\n');
      },
    )
    .command(
      'init',
      'make the local-ca key inside the token and write its CSR',
      (a) => a.option('csr-out', { type: 'string', describe: 'write the CSR here (default: stdout)' }),
      async (args) => {
        const pem = await caInit(config(args));
        writeCsr(pem, args['csr-out'], 'local-ca key made in the token');
      },
    )
    .command(
      'csr',
      "write the local-ca CSR again from the key in the token, with the config's current owner and factory",
      (a) => a.option('csr-out', { type: 'string', describe: 'write the CSR here (default: stdout)' }),
      async (args) => {
        const pem = await caCsr(config(args));
        writeCsr(pem, args['csr-out'], 'CSR made again from the local-ca key in the token');
      },
    )
    .command(
      'import <file>',
      'check a signed local-ca certificate against the profile and install it',
      (a) =>
        a
          .positional('file', { type: 'string', demandOption: true })
          .option('replace', { type: 'boolean', default: false, describe: 'replace an installed local-ca (recorded in the ledger)' })
          .option('operator', { type: 'string', describe: 'who, for the audit trail (default: [station] operator, else the login name)' }),
      (args) => {
        const cfg = config(args);
        const cert = caImport(cfg, args.file, {
          replace: args.replace,
          operator: operatorName(cfg, args.operator),
          warn: (m) => process.stderr.write(`WARNING ${m}\n`),
        });
        process.stdout.write(`installed local-ca ${cert.subject.replace(/\n/g, ', ')} (valid to ${cert.validTo}) at ${cfg.ca.certificate}\n`);
        process.stdout.write('next: line-signer ca show, then start the service (systemctl enable --now line-signer)\n');
      },
    )
    .command(
      'demo',
      'DEVELOPMENT ONLY: create a SoftHSM2 token, a throwaway factory root and a local-ca',
      (a) => a,
      async (args) => {
        const report = await caDemo(config(args));
        for (const c of report.created) process.stdout.write(`created ${c}\n`);
        if (report.created.length === 0) process.stdout.write('development PKI already in place\n');
        process.stdout.write(
          `\n*** ${report.rootPath} is a THROWAWAY factory root made for development. ***\n` +
            '*** Devices signed under it are not trusted by any real gateway. Never use it in production. ***\n',
        );
      },
    )
    .command(
      'show',
      'show the local-ca and whether the token, the PIN and the keys are there and match; exits 1 (77 for the PIN alone) when not',
      (a) =>
        a
          .option('json', { type: 'boolean', default: false })
          .option('check-pin', { type: 'boolean', default: false, describe: 'log in once to tell an accepted PIN from a refused one (a wrong PIN spends a try)' }),
      (args) => {
        const s = caShow(config(args), { checkPin: args['check-pin'] });
        if (args.json) printJson(s);
        else process.stdout.write(showText(s));
        if (!s.ready) {
          const pinOnly = s.problems.every((p) => p.startsWith('PIN '));
          process.exitCode = pinOnly ? EXIT_TOKEN_PIN : 1;
        }
      },
    )
    .demandCommand(1, 'ca needs a command: init-token, init, csr, import, demo or show');
}

function writeCsr(pem: string, out: string | undefined, what: string): void {
  if (out) {
    writeFileAtomic(out, pem);
    process.stderr.write(`${what}; CSR written to ${out}\nnext: the factory root's holder signs it (fioctl keys ca sign, or the OpenSSL recipe in the README), then line-signer ca import FILE\n`);
  } else process.stdout.write(pem);
}

function showText(s: ReturnType<typeof caShow>): string {
  const pin =
    s.pin.state === 'not tried' ? `from ${s.pin.source}, ${s.pin.error ?? 'not tried (--check-pin logs in once)'}` : `${s.pin.state.toUpperCase()}${s.pin.error ? ` (${s.pin.error})` : ''}`;
  const lines = [
    `config:      ${s.config}`,
    `token:       "${s.token.label}" ${s.token.found ? 'found' : `${s.token.ambiguous ? 'NOT USED' : 'NOT FOUND'}${s.token.error ? ` (${s.token.error})` : ''}`}`,
    `PIN:         ${s.pin.state === 'accepted' ? `accepted (from ${s.pin.source})` : pin}`,
    `key:         "${s.token.key_label}" ${s.token.found ? (s.token.key_found ? 'found' : 'MISSING') : 'unknown (no token)'}`,
    `station key: "${s.station_key.label}" ${s.token.found ? (s.station_key.key_found ? 'found' : 'MISSING') : 'unknown (no token)'}; certificate sha256 ${s.station_key.sha256 ?? '(none: run station-key init)'}`,
  ];
  if ('error' in s.local_ca) lines.push(`local-ca:    MISSING (${s.local_ca.error})`);
  else {
    lines.push(
      `local-ca:    ${s.local_ca.subject}`,
      `issuer:      ${s.local_ca.issuer}`,
      `sha256:      ${s.local_ca.sha256}`,
      `valid:       ${s.local_ca.not_before} to ${s.local_ca.not_after}`,
      `token key:   ${s.local_ca.matches_token_key === null ? 'unknown' : s.local_ca.matches_token_key ? 'matches' : 'DOES NOT MATCH'}`,
    );
  }
  // Without a login the private keys' protection cannot be read, and serve refuses a key that can leave the token.
  const unseen = s.pin.state === 'accepted' ? '' : ", as far as can be seen without the PIN (`ca show --check-pin` also reads whether the keys can leave the token, which serve checks)";
  lines.push(s.ready ? `ready:       yes${unseen}` : `ready:       NO`);
  for (const p of s.problems) lines.push(`  problem: ${p}`);
  return lines.join('\n') + '\n';
}

export async function signCommand(args: GlobalArgs & { csr: string; out?: string | undefined; 'hardware-id'?: string; name?: string; operator?: string }): Promise<void> {
  const cfg = config(args);
  const csr = readInput(args.csr);
  const hardwareId = args['hardware-id'] === undefined ? undefined : checkClientText('--hardware-id', args['hardware-id'], TEXT_LIMITS.hardwareId);
  const name = args.name === undefined ? undefined : checkClientText('--name', args.name, TEXT_LIMITS.name);
  // A certificate signed by hand names who signed it: its link is cli:NAME.
  const operator = operatorName(cfg, args.operator);
  // A serving station owns the ledger: it signs. Else this process takes the ledger for the one CSR.
  // A station that is starting holds the lock before its socket listens: it is asked again while this waits.
  refuseMissingLedger(cfg, 'not signed');
  let remote: { result: unknown } | undefined;
  const lock = await LedgerLock.wait(
    cfg.station.ledger,
    'sign',
    60_000,
    (holder) => process.stderr.write(`waiting for the ledger: it is held by ${holder}\n`),
    async () => (remote = await callOwner(cfg.station.ledger, { op: 'sign', csr: Buffer.from(csr).toString('base64'), hardwareId, name, operator })) !== undefined,
  );
  let result: SignResult;
  if (!lock) result = remote!.result as SignResult;
  else {
    try {
      const open = await openStation(cfg, { lock: 'held', command: 'sign', oneShot: true });
      try {
        result = await open.station.handle({ csr, link: cliLink(operator), hardwareId, name });
      } finally {
        await open.close();
      }
    } finally {
      lock.release();
    }
  }
  if (!result.ok) {
    process.stderr.write(`ERROR ${result.code} ${printable(result.message)}\n`);
    process.exit(2);
  }
  if (args.out) writeFileAtomic(args.out, result.chain);
  else process.stdout.write(result.chain);
  process.stderr.write(`${result.replayed ? 'already signed' : 'signed'} ${result.deviceId} serial ${result.serial}\n`);
}

export function ledgerCommands(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y
    .command(
      'verify',
      'check the hash chains, every certificate, the signed checkpoints, the token\'s newest checkpoint and the batches; list every problem',
      (a) =>
        a
          .option('ledger', { type: 'string', describe: 'check this copy (a backup) instead of the configured ledger' })
          .option('without-token', { type: 'boolean', describe: 'check without the token (no PIN here): weaker, and says so' }),
      (args) => {
        const cfg = config(args);
        const r = verifyLedger(cfg, { file: args.ledger, noToken: args['without-token'] });
        // The batches table's files: rows, signature and certificates must make each one again, byte for byte.
        try {
          const batches = checkRecordedBatches(cfg, args.ledger);
          for (const b of batches.problems) r.problems.push({ table: 'batches', seq: b.batch, reason: b.reason });
          r.notes.push(...batches.notes);
        } catch (err) {
          // A file changed so far that its batches cannot be read is already a problem above; say this part was not checked.
          if (!r.problems.some((p) => p.table === 'file')) throw err;
          r.problems.push({ table: 'file', seq: 0, reason: `cannot check the batches' files: ${(err as Error).message}` });
        }
        for (const n of r.notes) process.stdout.write(`note: ${n}\n`);
        for (const p of r.problems) process.stderr.write(`ERROR LEDGER ${p.table === 'state' ? 'policy state' : p.table === 'file' ? 'file' : `${p.table} ${p.table === 'checkpoints' ? 'n' : 'seq'} ${p.seq}`}: ${printable(p.reason)}\n`);
        if (r.problems.length) {
          process.stderr.write(`ledger NOT intact: ${r.problems.length}${r.problems.length >= 200 ? '+' : ''} problem${r.problems.length === 1 ? '' : 's'}\n`);
          process.exit(1);
        }
        process.stdout.write(`ledger intact: ${r.checked} issuances, ${r.events} events, ${r.checkpoints} signed checkpoints verified\n`);
      },
    )
    .command(
      'allow-reissue <device>',
      'let this device id get one certificate for a new key (a reworked board), or come back after a revocation',
      (a) =>
        a
          .positional('device', { type: 'string', demandOption: true })
          .option('reason', { type: 'string', demandOption: true, describe: 'why, for the audit trail' })
          .option('operator', { type: 'string', describe: 'who (default: [station] operator, else the login name)' }),
      (args) => allowReissueCommand(args),
    )
    .command(
      'revoke <device>',
      'revoke a device (by its id or a serial): no certificate for it until a re-issue, and sync deletes it',
      (a) =>
        a
          .positional('device', { type: 'string', demandOption: true, describe: 'device id, or the serial of one of its certificates' })
          .option('reason', { type: 'string', demandOption: true, describe: 'why, for the audit trail' })
          .option('operator', { type: 'string', describe: 'who (default: [station] operator, else the login name)' }),
      (args) => revokeCommand(args),
    )
    .command(
      'accept',
      "make this ledger file the station's, when ledger verify says the token checkpointed another (a restored backup, a replaced disk): recorded and signed",
      (a) =>
        a
          .option('reason', { type: 'string', demandOption: true, describe: 'why, for the audit trail' })
          .option('forget-newer', { type: 'boolean', default: false, describe: 'accept a file that lacks rows the token vouched for (an older backup): what they recorded is forgotten' })
          .option('operator', { type: 'string', describe: 'who (default: [station] operator, else the login name)' }),
      (args) => acceptCommand(args),
    )
    .command(
      'backup <dest>',
      'a consistent copy of the ledger, taken while the station serves',
      (a) => a.positional('dest', { type: 'string', demandOption: true }).option('operator', { type: 'string', describe: 'who' }),
      (args) => backupCommand(args),
    )
    .demandCommand(1, 'ledger needs a command: verify, allow-reissue, revoke, backup or accept');
}

export function stationKeyCommands(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y
    .command(
      'init',
      'make the station key in the token (it signs exports) and its self-signed certificate',
      (a) => a,
      async (args) => {
        const r = await stationKeyInit(config(args));
        for (const m of r.made) process.stdout.write(`made ${m}\n`);
        process.stdout.write(`station key certificate sha256 ${r.sha256} (pin it on the connected side)\n`);
      },
    )
    .demandCommand(1, 'station-key needs a command: init');
}

export async function statusCommand(args: GlobalArgs & { json: boolean }): Promise<void> {
  const cfg = config(args);
  const s = stationStatus(cfg);
  // The serving station knows what the file cannot say: is the token working right now?
  // No owner listening is "not serving"; an owner that would not answer is not that.
  let unreachable = null as string | null;
  const live = (
    await callOwner(cfg.station.ledger, { op: 'health' }, 5000).catch((e: unknown) => {
      unreachable = asLineSignerError(e).message;
      return undefined;
    })
  )?.result as
    | { health: { code: string; message: string } | null; checkpoint: string | null; pid: number }
    | undefined;
  // Whatever the serving station refuses every request for (the token, a used-up station limit, the rate cap), unless the file already says it.
  if (live?.health && !s.warnings.some((w) => w.startsWith(`${live.health!.code}:`))) s.warnings.push(`${live.health.code}: ${live.health.message}`);
  if (live?.checkpoint) s.warnings.push(`checkpoints are failing: ${live.checkpoint}`);
  const serving = live ? `serving (pid ${live.pid})` : unreachable ? `serving unknown: ${unreachable}` : 'not serving';
  // null means no station serves: one that would not answer is not that.
  if (args.json) return printJson({ ...s, serving: live ? { pid: live.pid, health: live.health } : unreachable ? { pid: null, health: null, unreachable } : null });
  const rejected = Object.entries(s.rejected).map(([c, n]) => `${c} ${n}`).join(', ') || 'none';
  const today = Object.entries(s.today).map(([l, n]) => `${l} ${n}`).join(', ') || 'none';
  const o = s.order;
  process.stdout.write(
    [
        `station:   ${s.station}, ${serving}`,
        `order:     ${o ? `${o.id} ${o.issued} of ${o.quantity} (${o.left} left)${o.hardwareId ? `, hardware id ${o.hardwareId}` : ''}, opened by ${o.operator}` : 'none open'}`,
        `issued:    ${s.issued}; today: ${today}`,
        `rejected:  ${rejected}`,
        `replays:   ${s.replays}`,
        `last:      ${s.last_issuance ? `${s.last_issuance.device_id} serial ${s.last_issuance.serial} at ${s.last_issuance.issued_at} via ${s.last_issuance.link}` : 'none'}`,
        `local-ca:  ${s.local_ca_expires ? `expires ${s.local_ca_expires} (${s.local_ca_days_left} days)` : 'not installed'}`,
    ]
      .map(printable)
      .join('\n') + '\n',
  );
  for (const w of s.warnings) process.stdout.write(`WARNING ${printable(w)}\n`);
}

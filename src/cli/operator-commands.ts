/**
 * The operator's commands: work orders, the clock, re-issue grants,
 * revocations, backups and the audit log. Each parses its flags and calls
 * src/operator, which reaches the serving station or takes the ledger's
 * lock; none writes a table itself.
 */
import type { Argv } from 'yargs';
import { statSync } from 'node:fs';
import { LineSignerError } from '../errors.js';
import { SqliteLedger, type Order } from '../ledger/index.js';
import { operate, operatorName, orderSummary } from '../operator/index.js';
import { serialText } from '../serial.js';
import { checkClientText, printable, quote } from '../text.js';
import { config, type GlobalArgs } from './commands.js';
import { printJson } from './output.js';

type WithOperator = GlobalArgs & { operator?: string | undefined };

const operatorOption = { type: 'string', describe: 'who does this, for the audit trail (default: [station] operator, else the login name)' } as const;
const reasonOption = { type: 'string', demandOption: true, describe: 'why, for the audit trail' } as const;

const waiting = (holder: string): void => {
  process.stderr.write(`waiting for the ledger: it is held by ${holder}\n`);
};

export function orderCommands(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y
    .command(
      'open <order>',
      'open a work order: every issuance is attributed to it until its quantity is reached',
      (a) =>
        a
          .positional('order', { type: 'string', demandOption: true })
          .option('quantity', { type: 'string', demandOption: true, describe: 'how many certificates it may yield (decimal digits)' })
          .option('hardware-id', { type: 'string', describe: 'refuse requests that report another hardware id' })
          .option('operator', operatorOption),
      async (args) => {
        const cfg = config(args);
        // Decimal digits only: yargs would read 0x10 as 16 and 1e3 as 1000.
        if (!/^[0-9]{1,8}$/.test(args.quantity) || Number(args.quantity) < 1) throw new LineSignerError('USAGE', `--quantity: a whole number of certificates in decimal digits, at least 1 (not ${quote(args.quantity)})`);
        const quantity = Number(args.quantity);
        const id = checkClientText('ORDER', args.order, 64);
        if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(id)) throw new LineSignerError('USAGE', 'ORDER: letters, digits, ".", "_" and "-" only');
        const hardwareId = args['hardware-id'] === undefined ? null : checkClientText('--hardware-id', args['hardware-id'], 128);
        const o = await operate<Order>(cfg, { op: 'order-open', id, quantity, hardwareId, operator: operatorName(cfg, args.operator) }, waiting);
        process.stdout.write(`opened work order ${printable(orderSummary(o))}\n`);
      },
    )
    .command(
      'close <order>',
      'close a work order: nothing more is attributed to it',
      (a) => a.positional('order', { type: 'string', demandOption: true }).option('operator', operatorOption),
      async (args) => {
        const cfg = config(args);
        const o = await operate<Order>(cfg, { op: 'order-close', id: args.order, operator: operatorName(cfg, args.operator) }, waiting);
        process.stdout.write(`closed work order ${printable(orderSummary(o))}\n`);
      },
    )
    .command(
      'list',
      'every work order with its progress',
      (a) => a.option('json', { type: 'boolean', default: false }),
      (args) => {
        const cfg = config(args);
        const ledger = new SqliteLedger(cfg.station.ledger, cfg.station.id, { readonly: true });
        try {
          const orders = ledger.orders();
          if (args.json) return printJson(orders);
          if (orders.length === 0) process.stdout.write('no work orders\n');
          for (const o of orders) process.stdout.write(`${printable(orderSummary(o))}\n`);
        } finally {
          ledger.close();
        }
      },
    )
    .demandCommand(1, 'order needs a command: open, close or list');
}

export function clockCommands(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y
    .command(
      'confirm',
      "record the operator's word that the station's clock is right now: the clock checks measure from it",
      (a) => a.option('reason', reasonOption).option('operator', operatorOption),
      async (args) => {
        const cfg = config(args);
        await operate(cfg, { op: 'clock-confirm', reason: checkClientText('--reason', args.reason), operator: operatorName(cfg, args.operator) }, waiting);
        process.stdout.write(`clock confirmed as ${new Date().toISOString()}\n`);
      },
    )
    .demandCommand(1, 'clock needs a command: confirm');
}

export async function allowReissueCommand(args: WithOperator & { device: string; reason: string }): Promise<void> {
  const cfg = config(args);
  await operate(cfg, { op: 'allow-reissue', device: args.device, reason: checkClientText('--reason', args.reason), operator: operatorName(cfg, args.operator) }, waiting);
  process.stdout.write(`device ${printable(args.device)} may get one certificate for a new key; its old key is refused from then on\n`);
}

export async function revokeCommand(args: WithOperator & { device: string; reason: string }): Promise<void> {
  const cfg = config(args);
  const r = await operate<{ device: string }>(cfg, { op: 'revoke', target: args.device, reason: checkClientText('--reason', args.reason), operator: operatorName(cfg, args.operator) }, waiting);
  process.stdout.write(`device ${printable(r.device)} revoked: it gets no certificate until a re-issue is allowed; the next export carries the mark\n`);
}

export async function acceptCommand(args: WithOperator & { reason: string; forgetNewer?: boolean }): Promise<void> {
  const cfg = config(args);
  const r = await operate<{ ledgerId: string; issuanceSeq: number; eventSeq: number; forgotten: string | null }>(
    cfg,
    { op: 'accept', reason: checkClientText('--reason', args.reason), operator: operatorName(cfg, args.operator), forgetNewer: args.forgetNewer === true },
    waiting,
  );
  if (r.forgotten) process.stdout.write(`WARNING forgotten, as --forget-newer asked: ${r.forgotten}\n`);
  process.stdout.write(`ledger ${r.ledgerId} (issuance seq ${r.issuanceSeq}, event seq ${r.eventSeq}) is now station ${cfg.station.id}'s ledger; the token's checkpoint says so\n`);
}

export async function backupCommand(args: WithOperator & { dest: string }): Promise<void> {
  const cfg = config(args);
  const startedAt = Date.now();
  const r = await operate<{ dest: string; bytes: number; ms: number }>(cfg, { op: 'backup', dest: args.dest, operator: operatorName(cfg, args.operator) }, waiting);
  // The serving station wrote it; under the unit, /tmp and /var/tmp are its own (PrivateTmp). What this
  // shell sees there must be this copy: its size, written since the command began (not an older copy of the same name).
  let seen: { size: number; mtimeMs: number } | null = null;
  try {
    seen = statSync(r.dest);
  } catch {
    // not there for this shell
  }
  if (!seen || seen.size !== r.bytes || seen.mtimeMs < startedAt - 2000) {
    throw new LineSignerError('LEDGER', `the serving station wrote ${printable(r.dest)}, but this shell does not see it there: a folder private to the service (the unit's PrivateTmp hides /tmp and /var/tmp); back up under /var/lib/line-signer or to a stick under /media`);
  }
  process.stdout.write(`ledger copied to ${printable(r.dest)} (${r.bytes} bytes in ${Math.round(r.ms)} ms); check it with: line-signer ledger verify --ledger ${r.dest}\n`);
}

/** A time flag: an ISO date or date-time, or a relative "2h"/"3d" before now. */
function timeFlag(v: string | undefined, name: string): string | undefined {
  if (v === undefined) return undefined;
  const rel = /^(\d+)([smhd])$/.exec(v);
  if (rel) return new Date(Date.now() - Number(rel[1]) * { s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7 }[rel[2] as 's']).toISOString();
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new LineSignerError('USAGE', `${name} ${v}: expected an ISO date (2026-11-30, 2026-11-30T08:00:00Z) or an age (90m, 2h, 7d)`);
  return new Date(t).toISOString();
}

export function logCommand(args: GlobalArgs & { since?: string; until?: string; device?: string; order?: string; link?: string; json?: boolean }): void {
  const cfg = config(args);
  const ledger = new SqliteLedger(cfg.station.ledger, cfg.station.id, { readonly: true });
  try {
    let n = 0;
    for (const r of ledger.log({ since: timeFlag(args.since, '--since'), until: timeFlag(args.until, '--until'), device: args.device, order: args.order, link: args.link })) {
      n++;
      const row = r.serial ? { ...r, serial: serialText(r.serial) } : r;
      if (args.json) {
        process.stdout.write(JSON.stringify(row) + '\n');
        continue;
      }
      // An issuance's operator is its order's: the one who opened it, not who was at the line (a hand signing names its signer in its link).
      const who = row.operator ? (row.type === 'issuance' ? ` (order opened by ${row.operator})` : ` by ${row.operator}`) : '';
      const line =
        row.type === 'issuance'
          ? `${row.at} issued  seq ${row.seq} ${row.device}${row.name && row.name !== row.device ? ` name ${quote(row.name)}` : ''} serial ${row.serial} via ${row.link}${row.work_order ? ` order ${row.work_order}` : ''}${row.supersedes ? ` supersedes seq ${row.supersedes}` : ''}${who}`
          : `${row.at} ${row.kind}${row.code ? ` ${row.code}` : ''}${row.count > 1 ? ` x${row.count}` : ''}${row.device ? ` ${row.device}` : ''}${row.link ? ` via ${row.link}` : ''}${who}${row.message ? `: ${row.message}` : ''}`;
      process.stdout.write(printable(line) + '\n');
    }
    if (!args.json && n === 0) process.stderr.write('nothing in the ledger matches\n');
  } finally {
    ledger.close();
  }
}

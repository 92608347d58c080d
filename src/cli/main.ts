import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { caCommands, ledgerCommands, signCommand, statusCommand, type GlobalArgs } from './commands.js';
import { fail } from './output.js';
import { printable } from '../text.js';
import { actAsStationUser, STATION_COMMANDS } from './privileges.js';
import { jigCommand, serveCommand } from './serve.js';
import { exportCommand, syncCommand, verifyExportCommand } from './export-commands.js';
import { stationKeyCommands } from './commands.js';
import { clockCommands, logCommand, orderCommands } from './operator-commands.js';

const cli = yargs(hideBin(process.argv))
  .scriptName('line-signer')
  .option('config', {
    type: 'string',
    global: true,
    describe: 'station config (default: $LINE_SIGNER_CONFIG, else station-config/station.toml)',
  })
  .middleware((argv) => {
    if (STATION_COMMANDS.has(String(argv._[0]))) actAsStationUser(argv.config, (line) => process.stderr.write(`${line}\n`));
  })
  .command('ca', 'the local-ca: init-token, init, csr, import, demo, show', (y) => caCommands(y as never))
  .command(
    'sign <csr>',
    'sign one device CSR (PEM or DER; - for stdin) and print the chain',
    (y) =>
      y
        .positional('csr', { type: 'string', demandOption: true })
        .option('out', { type: 'string', describe: 'write the chain here' })
        .option('hardware-id', { type: 'string', describe: "the board's hardware id (checked against the open work order's)" })
        .option('name', { type: 'string', describe: "the device's name for the device cloud (default: its id)" })
        .option('operator', { type: 'string', describe: 'who signs it by hand (default: [station] operator, or the login name); the ledger records the link as cli:NAME' }),
    (args) => signCommand(args as never),
  )
  .command('ledger', 'the ledger: verify, allow-reissue, revoke, backup, accept', (y) => ledgerCommands(y as never))
  .command('order', 'work orders: open, close, list', (y) => orderCommands(y as never))
  .command('clock', "the station's clock: confirm", (y) => clockCommands(y as never))
  .command(
    'log',
    'the audit trail: issuances and events in order, with operators',
    (y) =>
      y
        .option('since', { type: 'string', describe: 'from this time (ISO date or time, or an age like 2h, 7d)' })
        .option('until', { type: 'string', describe: 'up to this time' })
        .option('device', { type: 'string', describe: 'one device id' })
        .option('order', { type: 'string', describe: 'one work order' })
        .option('link', { type: 'string', describe: 'one link, e.g. http:192.168.7.1:8080 or serial:/dev/ttyACM0' })
        .option('json', { type: 'boolean', describe: 'one JSON object per line' }),
    (args) => logCommand(args as never),
  )
  .command('station-key', 'the export-signing key: init', (y) => stationKeyCommands(y as never))
  .command(
    'export',
    'write the next signed batch of issuances for sync (or batch N again)',
    (y) =>
      y
        .option('out', { type: 'string', default: '.', describe: 'folder to write the batch into (the USB stick)' })
        .option('batch', { type: 'number', describe: 'write this earlier batch again, byte for byte' })
        .option('operator', { type: 'string', describe: 'who exports, for the audit trail (default: [station] operator, else the login name)' }),
    (args) => exportCommand(args as never),
  )
  .command(
    'verify-export <files..>',
    'check batches: signature, certificates, hash chain, and that they follow each other',
    (y) =>
      y
        .positional('files', { type: 'string', array: true, demandOption: true })
        .option('station-key', { type: 'string', describe: 'pin: SHA-256 of the station key certificate (or its public key)' })
        .option('json', { type: 'boolean' }),
    (args) => verifyExportCommand(args as never),
  )
  .command(
    'sync <files..>',
    'on a connected machine: verify batches, then register the devices with the device API',
    (y) =>
      y
        .positional('files', { type: 'string', array: true, demandOption: true })
        .option('api', { type: 'string', demandOption: true, describe: 'the device API, e.g. https://api.foundries.io' })
        .option('token-file', { type: 'string', demandOption: true, describe: 'file holding the API token (OSF-TOKEN); never given on the command line' })
        .option('group', { type: 'string', describe: 'device group for every device registered' })
        .option('dry-run', { type: 'boolean', describe: 'verify and list the steps; send and record nothing' })
        .option('state', { type: 'string', default: 'line-signer-sync.db', describe: 'sync state (SQLite): per device, what the API holds' })
        .option('station-key', { type: 'string', describe: 'pin: SHA-256 of the station key certificate (or its public key); this or --pins is required' })
        .option('pins', { type: 'string', describe: 'pins file (TOML): station_key = "SHA-256", optionally factory_root = "SHA-256"' })
        .option('allow-gap', { type: 'boolean', describe: 'accept a batch whose predecessor was never synced' })
        .option('insecure-http', { type: 'boolean', describe: 'allow plain http:// to a host other than loopback (the token travels in the clear)' })
        .option('concurrency', { type: 'number', default: 4, describe: 'devices at once (one device\'s steps never overlap)' })
        .option('timeout', { type: 'number', default: 15000, describe: 'ms per request' })
        .option('tries', { type: 'number', default: 6, describe: 'tries per step on 5xx, 429, time-outs and connection errors' })
        .option('retry-base-ms', { type: 'number', default: 500, describe: 'first back-off; doubles each try' }),
    (args) => syncCommand(args as never),
  )
  .command(
    'serve',
    'serve every configured link (and those given here) until SIGINT or SIGTERM',
    (y) =>
      y
        .option('serial', { type: 'string', array: true, describe: 'PATH[:BAUD], repeatable (115200 by default)' })
        .option('http', { type: 'string', describe: 'HOST:PORT for the lmp-device-register API' })
        .option('spool', { type: 'string', array: true, describe: 'a USB-stick spool folder, repeatable' })
        .option('json', { type: 'boolean', describe: 'JSON log lines even on a terminal' })
        .option('operator', { type: 'string', describe: 'who starts the station, for the audit trail (default: [station] operator, else the login name)' }),
    (args) => serveCommand(args as never),
  )
  .command(
    'jig',
    'the reference jig: provision devices over J1 and check every certificate',
    (y) =>
      y
        .option('serial', { type: 'string', demandOption: true, describe: 'PATH[:BAUD] of the jig side of the link' })
        .option('count', { type: 'number', default: 1, describe: 'devices to provision' })
        .option('out', { type: 'string', describe: "keep each device's client.pem, client.chained, pkey.pem, root.crt here" })
        .option('json', { type: 'boolean', describe: 'print the summary as JSON' }),
    (args) => jigCommand(args as never),
  )
  .command(
    'status',
    'issued, rejected by code, replays, last issuance, local-ca expiry',
    (y) => y.option('json', { type: 'boolean', default: false }),
    (args) => statusCommand(args as GlobalArgs & { json: boolean }),
  )
  .demandCommand(1, 'give a command; --help lists them')
  .strict()
  .help()
  .fail((msg, err) => {
    if (err) fail(err);
    process.stderr.write(`ERROR USAGE ${printable(msg)}\n`);
    process.exit(64);
  });

// `line-signer log | head`: a reader that goes away is not an error.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

try {
  await cli.parseAsync();
} catch (err) {
  fail(err);
}

import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { caCommands, ledgerCommands, signCommand, statusCommand, type GlobalArgs } from './commands.js';
import { fail } from './output.js';
import { jigCommand, serveCommand } from './serve.js';

const cli = yargs(hideBin(process.argv))
  .scriptName('line-signer')
  .option('config', {
    type: 'string',
    global: true,
    describe: 'station config (default: $LINE_SIGNER_CONFIG, else station-config/station.toml)',
  })
  .command('ca', 'the local-ca: init, import, demo, show', (y) => caCommands(y as never))
  .command(
    'sign <csr>',
    'sign one device CSR (PEM or DER; - for stdin) and print the chain',
    (y) => y.positional('csr', { type: 'string', demandOption: true }).option('out', { type: 'string', describe: 'write the chain here' }),
    (args) => signCommand(args as GlobalArgs & { csr: string; out?: string }),
  )
  .command('ledger', 'the ledger: verify, allow-reissue', (y) => ledgerCommands(y as never))
  .command(
    'serve',
    'serve every configured link (and those given here) until SIGINT or SIGTERM',
    (y) =>
      y
        .option('serial', { type: 'string', array: true, describe: 'PATH[:BAUD], repeatable (115200 by default)' })
        .option('http', { type: 'string', describe: 'HOST:PORT for the lmp-device-register API' })
        .option('spool', { type: 'string', array: true, describe: 'a USB-stick spool folder, repeatable' })
        .option('json', { type: 'boolean', describe: 'JSON log lines even on a terminal' }),
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
    process.stderr.write(`ERROR USAGE ${msg}\n`);
    process.exit(64);
  });

try {
  await cli.parseAsync();
} catch (err) {
  fail(err);
}

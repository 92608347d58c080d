import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { caCommands, ledgerCommands, signCommand, statusCommand, type GlobalArgs } from './commands.js';
import { fail } from './output.js';

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

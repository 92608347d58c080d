import { asLineSignerError, EXIT_TOKEN_PIN } from '../errors.js';
import { printable } from '../text.js';

/** One clear line for any failure, printable whatever it quotes (an operator's argument, a file name); a stack trace only with LINE_SIGNER_DEBUG=1. */
export function fail(err: unknown): never {
  const e = asLineSignerError(err);
  process.stderr.write(`ERROR ${e.code} ${printable(e.message.replace(/\s*\n\s*/g, ' '))}\n`);
  if (process.env.LINE_SIGNER_DEBUG === '1' && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  process.exit(e.code === 'USAGE' || e.code === 'CONFIG' ? 64 : e.code === 'TOKEN_PIN' ? EXIT_TOKEN_PIN : 1);
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

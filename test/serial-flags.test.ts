/** `--serial PATH[:BAUD]`: a bad baud is a usage error at once, paths with colons still work. */
import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LineSignerError } from '../src/errors.js';
import { parseSerialFlag } from '../src/links/runner.js';
import { cli } from './helpers/cli.js';
import { testStation } from './helpers/pki.js';

const usage = (flag: string, exists: (p: string) => boolean = () => false): string => {
  try {
    parseSerialFlag(flag, exists);
  } catch (e) {
    if (e instanceof LineSignerError && e.code === 'USAGE') return e.message;
    throw e;
  }
  throw new Error(`accepted: ${flag}`);
};

test('PATH and PATH:BAUD', (t) => {
  t.deepEqual(parseSerialFlag('/dev/ttyACM0', () => false), { path: '/dev/ttyACM0', baud: 115200 });
  t.deepEqual(parseSerialFlag('/dev/ttyUSB1:9600', () => false), { path: '/dev/ttyUSB1', baud: 9600 });
  t.deepEqual(parseSerialFlag('st0:4000000', () => false), { path: 'st0', baud: 4_000_000 });
  const byPath = '/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0';
  t.deepEqual(parseSerialFlag(`${byPath}:57600`, () => false), { path: byPath, baud: 57600 });
  // A suffix that does not start with a digit is part of the path.
  t.deepEqual(parseSerialFlag('/dev/serial/by-id/usb-FTDI:port-a', () => false), { path: '/dev/serial/by-id/usb-FTDI:port-a', baud: 115200 });
  // A plugged-in by-path port is a path as given.
  t.deepEqual(parseSerialFlag(byPath, (p) => p === byPath), { path: byPath, baud: 115200 });
});

test('a final :suffix starting with a digit that is not a baud rate is a usage error', (t) => {
  t.regex(usage('st0:9600x'), /9600x.* is not a baud rate/);
  t.regex(usage('st0:0'), /not a baud rate/);
  t.regex(usage('st0:49'), /not a baud rate/);
  t.regex(usage('st0:4000001'), /not a baud rate/);
  t.regex(usage('st0:115200.5'), /not a baud rate/);
  // A by-path name of a port not plugged in yet: say so now, rather than wait for it forever.
  t.regex(usage('/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0'), /expected PATH or PATH:BAUD/);
  t.regex(usage(':9600'), /no path/);
  t.regex(usage('st0:'), /no path/);
  t.regex(usage(''), /no path/);
  t.notRegex(usage('st0:96\u001b[2J'), /\u001b/, 'shown printable');
});

test('line-signer serve and jig refuse a bad baud at once with USAGE (exit 64)', async (t) => {
  const s = await testStation();
  await s.close();
  const serve = cli(['serve', '--config', s.configPath, '--serial', 'st0:9600x']);
  t.is(serve.status, 64, serve.stderr);
  t.regex(serve.stderr, /^ERROR USAGE --serial st0:9600x: /m);
  const jig = cli(['jig', '--serial', `${mkdtempSync(join(tmpdir(), 'flag-'))}/tty:96k`]);
  t.is(jig.status, 64, jig.stderr);
  t.regex(jig.stderr, /^ERROR USAGE /m);
});

/** The real `line-signer serve` in a real 80-column terminal (tmux): what the technician's screen shows. */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BIN } from './helpers/cli.js';
import { testStation } from './helpers/pki.js';
import { waitFor } from './helpers/served.js';

const shellQuote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

test('serve on an 80-column terminal: every row fits, states carry reasons, a refusal shows its detail, a hostile file name stays escaped', async (t) => {
  const s = await testStation();
  await s.close(); // the serve process opens the station itself
  const stick = join(s.dir, 'stick');
  mkdirSync(join(stick, 'inbox'), { recursive: true });
  // A name that would clear the screen and turn it red if it reached the terminal raw.
  writeFileSync(join(stick, 'inbox', '\x1b[2J\x1b[41mevil.csr'), 'not a CSR');
  const missing = join(s.dir, 'no-stick-here');

  const socket = `ls-test-${process.pid}-${Date.now()}`;
  const tmux = (...args: string[]): string => execFileSync('tmux', ['-L', socket, '-f', '/dev/null', ...args], { encoding: 'utf8' });
  const command = [process.execPath, BIN, 'serve', '--config', s.configPath, '--spool', stick, '--spool', missing].map(shellQuote).join(' ');
  tmux('new-session', '-d', '-s', 'serve', '-x', '80', '-y', '40', `${command} 2>${shellQuote(join(s.dir, 'serve.err'))}; sleep 60`);
  t.teardown(() => {
    try {
      tmux('kill-server');
    } catch {
      // already gone
    }
  });
  // -J joins a row the terminal wrapped, so a row wider than the screen shows as a long line.
  const screen = (): string[] => tmux('capture-pane', '-p', '-J', '-t', 'serve').split('\n');
  await waitFor(() => screen().some((l) => l.includes('refused ') && l.includes('BAD_FRAME')), 30_000).catch(() => undefined);
  const lines = screen();
  t.log(lines.join('\n'));

  t.is(Number(tmux('display-message', '-p', '-t', 'serve', '#{pane_width}').trim()), 80);
  for (const l of lines) t.true(l.length <= 80, `fits: ${l}`);
  t.true(lines[0]!.startsWith('line-signer serve: station '), 'the screen was never cleared from outside');
  t.true(lines.some((l) => /^LINK +STATE +ISSUED +REFUSED +NOISE +LAST ISSUED$/.test(l)));
  const row = lines.find((l) => l.startsWith(`spool:`) && /polling/.test(l));
  t.truthy(row, 'the stick is polled');
  t.regex(row!, / polling +0 +1 +0 +-$/);
  t.true(lines.some((l) => l.trim() === 'waiting: no inbox (stick not mounted?)'), 'the missing stick says why');
  const text = lines.map((l) => l.trim()).join(' ');
  t.regex(text, /refused \d\d:\d\d:\d\d BAD_FRAME no device id: /);
  t.true(text.includes('file name "\\u001b[2J\\u001b[41mevil.csr" contains a control character'), 'the name shows escaped');

  tmux('send-keys', '-t', 'serve', 'C-c');
  await waitFor(() => screen().some((l) => l.includes('SIGINT: finishing requests in flight')), 15_000);
});

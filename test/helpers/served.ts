/** A test station served on a pseudo-terminal by the project's SerialLink. */
import { SerialLink } from '../../src/links/index.js';
import type { OpenOptions } from '../../src/station/index.js';
import { ptyPair, type PtyPair } from './pty.js';
import { TestJig } from './jig.js';
import { testStation, type StationOptions, type TestStation } from './pki.js';

export interface Served {
  s: TestStation;
  pty: PtyPair;
  link: SerialLink;
  jig: TestJig;
  close(): Promise<void>;
}

export async function served(opts: StationOptions = {}, open: OpenOptions = {}, idleTimeoutMs = 10_000): Promise<Served> {
  const s = await testStation(opts, open);
  const pty = await ptyPair(s.dir, 'tty');
  const link = new SerialLink(s.station, { path: pty.station, baud: 115200, idleTimeoutMs, reopenMs: 100 });
  await link.start();
  await waitFor(() => link.status.state === 'open');
  const jig = await TestJig.open(pty.jig);
  return {
    s,
    pty,
    link,
    jig,
    async close() {
      await jig.close();
      await link.stop();
      await pty.kill();
      await s.close();
    },
  };
}

export async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 10));
  }
}

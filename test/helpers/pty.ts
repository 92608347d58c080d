/** A pair of pseudo-terminals joined by socat: a virtual serial cable. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export interface PtyPair {
  station: string;
  jig: string;
  process: ChildProcess;
  kill(): Promise<void>;
}

export async function ptyPair(dir: string, name: string): Promise<PtyPair> {
  const station = join(dir, `${name}-station`);
  const jig = join(dir, `${name}-jig`);
  const p = spawn('socat', [`pty,raw,echo=0,link=${station}`, `pty,raw,echo=0,link=${jig}`], { stdio: 'ignore' });
  const deadline = Date.now() + 5000;
  while (!(existsSync(station) && existsSync(jig))) {
    if (Date.now() > deadline) throw new Error('socat did not make its pseudo-terminals');
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    station,
    jig,
    process: p,
    kill: () =>
      new Promise<void>((resolve) => {
        if (p.exitCode !== null || p.signalCode !== null) return resolve();
        p.once('exit', () => resolve());
        p.kill('SIGTERM');
      }),
  };
}

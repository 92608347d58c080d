/**
 * Foundries' reference registration server (factory-registration-ref),
 * started as its own docker_run.sh starts it (gunicorn, 4 worker
 * processes), on a throwaway local-ca that signs with a PEM key on disk,
 * so that `scripts/bench --reference DIR` can measure it beside the
 * station's HTTP link with the same client in the same run. DIR is a
 * checkout the user made; nothing of it is part of this project.
 * Debian's gunicorn, python3-flask, python3-requests and
 * python3-cryptography run it (scripts/bench installs them when asked):
 * Debian 12 has gunicorn 20.1, Flask 2.2 and cryptography 38, where the
 * project's own image pins newer ones. Its log goes to a file, as a
 * container's would, in a temporary folder removed when it stops.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cpuSample } from './bench-lib.js';

export interface ReferenceServer {
  port: number;
  /** CPU time its processes (gunicorn's master and workers) have used, ms. */
  cpuMs(): number;
  /** Ends it and removes its temporary folder (keys, log, a file per device). */
  stop(): Promise<void>;
}

/** The checkout's problem, or null when it looks like factory-registration-ref: checked before the bench's long sections. */
export function referenceProblem(checkout: string): string | null {
  return existsSync(join(checkout, 'registration_ref', 'app.py')) ? null : `--reference ${checkout}: not a factory-registration-ref checkout (no registration_ref/app.py)`;
}

/** Debian's gunicorn (python3-flask and friends beside it), not whatever else is on PATH. */
const GUNICORN = '/usr/bin/gunicorn';

export async function startReference(checkout: string, factory: string): Promise<ReferenceServer> {
  const problem = referenceProblem(checkout);
  if (problem) throw new Error(problem);
  if (!existsSync(GUNICORN)) throw new Error(`${GUNICORN} is missing: scripts/bench --reference installs Debian's gunicorn`);
  const dir = mkdtempSync(join(tmpdir(), 'line-signer-reference-'));
  const ca = throwawayCa(dir, factory);
  mkdirSync(join(dir, 'devices'));
  const port = await freePort();
  const log = join(dir, 'gunicorn.log');
  const out = openSync(log, 'a');
  // As docker_run.sh does: `gunicorn -n intel-esh -w4`, the local-ca and its key in the environment.
  const child = spawn(GUNICORN, ['-n', 'intel-esh', '-w4', '-b', `127.0.0.1:${port}`, 'registration_ref.app:app'], {
    cwd: checkout,
    env: {
      PATH: process.env.PATH,
      PYTHONPATH: checkout,
      // No __pycache__ left in the user's checkout.
      PYTHONDONTWRITEBYTECODE: '1',
      DEVICE_GATEWAY_SERVER: 'https://ota-lite.example:8443',
      OSTREE_SERVER: 'https://ota-lite.example:8443',
      ROOT_CRT: ca.root,
      CA_CRT: ca.cert,
      CA_KEY: ca.key,
      DEVICES_DIR: join(dir, 'devices'),
      DEVICE_GROUP: '',
    },
    stdio: ['ignore', out, out],
  });
  closeSync(out); // the child has its own
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let spawnError: Error | null = null;
  child.once('error', (err) => (spawnError = err));
  // Whatever ends the bench (an error, Ctrl-C, SIGTERM) ends gunicorn and its workers too.
  const kill = (): void => void child.kill('SIGTERM');
  const abandon = (): void => {
    kill();
    rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    abandon();
    process.exit(signal === 'SIGINT' ? 130 : 143);
  };
  process.once('exit', abandon);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const stop = async (): Promise<void> => {
    process.off('exit', abandon);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (child.exitCode === null && child.signalCode === null && !spawnError) {
      kill();
      await exited;
    }
    rmSync(dir, { recursive: true, force: true }); // its keys, log and one file per device
  };
  try {
    await answering(port, child, log, () => spawnError);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    port,
    cpuMs: () => [child.pid!, ...childrenOf(child.pid!)].reduce((ms, pid) => ms + (cpuSample(`/proc/${pid}`)?.cpuTicks ?? 0) * 10, 0),
    stop,
  };
}

/** A factory root and a local-ca under it (OU = the factory, CA:TRUE), the local-ca key as a PEM file's text. */
function throwawayCa(dir: string, factory: string): { root: string; cert: string; key: string } {
  const f = (name: string): string => join(dir, name);
  const openssl = (...args: string[]): void => void execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('root.key'), '-out', f('root.pem'), '-subj', '/CN=bench reference root', '-days', '30');
  openssl('req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('local-ca.key'), '-out', f('local-ca.csr'), '-subj', `/CN=fio-bench/OU=${factory}`);
  writeFileSync(f('ext.cnf'), 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign\n');
  openssl('x509', '-req', '-in', f('local-ca.csr'), '-CA', f('root.pem'), '-CAkey', f('root.key'), '-CAcreateserial', '-days', '30', '-extfile', f('ext.cnf'), '-out', f('local-ca.pem'));
  return { root: readFileSync(f('root.pem'), 'utf8'), cert: readFileSync(f('local-ca.pem'), 'utf8'), key: readFileSync(f('local-ca.key'), 'utf8') };
}

function childrenOf(pid: number): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).trim().split('\n').map(Number);
  } catch {
    return []; // pgrep exits 1 when there are none
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Waits until a gunicorn worker answers HTTP (the master binds the port
 * before its workers have imported the app), or says why none does: a
 * checkout whose app cannot load makes the master exit, and its log says why.
 */
async function answering(port: number, child: ChildProcess, log: string, spawnError: () => Error | null): Promise<void> {
  const end = Date.now() + 30_000;
  const tail = (): string => (existsSync(log) ? readFileSync(log, 'utf8').slice(-800) : '');
  for (;;) {
    const failed = spawnError();
    if (failed) throw new Error(`reference server: ${failed.message}`);
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`reference server exited (${child.exitCode ?? child.signalCode}): ${tail()}`);
    const up = await new Promise<boolean>((resolve) => {
      const req = request({ host: '127.0.0.1', port, path: '/', method: 'HEAD', agent: false, timeout: 1000 }, (res) => {
        res.resume();
        resolve(true);
      });
      req.on('timeout', () => req.destroy());
      req.on('error', () => resolve(false));
      req.end();
    });
    if (up) return;
    if (Date.now() > end) throw new Error(`reference server not answering after 30 s: ${tail()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

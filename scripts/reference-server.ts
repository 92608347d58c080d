/**
 * Foundries' reference registration server (factory-registration-ref),
 * started as its own docker_run.sh starts it (gunicorn, 4 worker
 * processes), on a throwaway local-ca that signs with a PEM key on disk,
 * so that `scripts/bench --reference DIR` can measure it beside the
 * station's HTTP link with the same client in the same run. DIR is a
 * checkout the user made; nothing of it is part of this project.
 * Debian's gunicorn, python3-flask, python3-requests and
 * python3-cryptography run it (scripts/bench installs them when asked).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface ReferenceServer {
  port: number;
  /** Where its own log went (its requests' log lines, as shipped). */
  log: string;
  /** CPU time its processes (gunicorn's master and workers) have used, ms. */
  cpuMs(): number;
  stop(): Promise<void>;
}

export async function startReference(checkout: string, factory: string): Promise<ReferenceServer> {
  if (!existsSync(join(checkout, 'registration_ref', 'app.py'))) {
    throw new Error(`--reference ${checkout}: not a factory-registration-ref checkout (no registration_ref/app.py)`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'line-signer-reference-'));
  const ca = throwawayCa(dir, factory);
  mkdirSync(join(dir, 'devices'));
  const port = await freePort();
  const log = join(dir, 'gunicorn.log');
  const out = openSync(log, 'a');
  // As docker_run.sh does: `gunicorn -n intel-esh -w4`, the local-ca and its key in the environment.
  const child = spawn('gunicorn', ['-n', 'intel-esh', '-w4', '-b', `127.0.0.1:${port}`, 'registration_ref.app:app'], {
    cwd: checkout,
    env: {
      PATH: process.env.PATH,
      PYTHONPATH: checkout,
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
  await listening(port, child, log);
  return {
    port,
    log,
    cpuMs: () => [child.pid!, ...childrenOf(child.pid!)].reduce((ms, pid) => ms + processCpuMs(pid), 0),
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
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

/** utime + stime from /proc/PID/stat, in ms (clock ticks of 10 ms, as Linux reports them to user space). */
function processCpuMs(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return 0;
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

/** Waits until gunicorn accepts connections (its 4 workers load Flask first), or says why it did not. */
async function listening(port: number, child: ChildProcess, log: string): Promise<void> {
  const end = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`reference server exited ${child.exitCode}: ${readFileSync(log, 'utf8').slice(-800)}`);
    const up = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (up) return;
    if (Date.now() > end) throw new Error(`reference server not listening after 30 s: ${readFileSync(log, 'utf8').slice(-800)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

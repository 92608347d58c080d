/**
 * README, "Production station", run as written on this machine: the
 * commands are taken from the section's code blocks, with the installed
 * folders moved under a temporary one. A throwaway OpenSSL root plays the
 * factory, and the unit's ExecStart runs as the service user through
 * setpriv, since systemd does not run here. Needs root (useradd); it
 * leaves the system user `line-signer` behind and removes everything else.
 */
import test from 'ava';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeOpensslRoot, openssl } from './helpers/pki.js';

const CHECKOUT = fileURLToPath(new URL('../..', import.meta.url));
const README = readFileSync(join(CHECKOUT, 'README.md'), 'utf8');
const asRoot = process.getuid?.() === 0 ? test.serial : test.serial.skip;

/** The README section, from its heading to the next one. */
export function readmeSection(title: string): string {
  const start = README.indexOf(`## ${title}\n`);
  if (start < 0) throw new Error(`README has no section "${title}"`);
  const end = README.indexOf('\n## ', start + 1);
  return README.slice(start, end < 0 ? undefined : end);
}

/** The fenced code blocks of one language in `text`, in order. */
export function codeBlocks(text: string, lang: string): string[] {
  return [...text.matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))].map((m) => m[1]!);
}

/** One command a line, without its trailing comment. */
function commands(block: string): string[] {
  return block
    .split('\n')
    .map((l) => l.replace(/\s+#.*$/, '').trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
}

function idOf(name: string): number {
  return Number(spawnSync('id', ['-u', name], { encoding: 'utf8' }).stdout.trim());
}

/** Every file and folder under `dir`. */
function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    return e.isDirectory() ? [p, ...walk(p)] : [p];
  });
}

asRoot('README "Production station": install, token, ca init, the factory signs, ca import, the service serves a jig', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'line-signer-prod-'));
  chmodSync(root, 0o755); // the service user walks through it, as through / on a station
  const dirs = {
    prefix: join(root, 'opt'),
    bin: join(root, 'bin'),
    etc: join(root, 'etc'),
    state: join(root, 'state'),
    units: join(root, 'systemd'),
    factory: join(root, 'factory'),
    tmp: join(root, 'tmp'),
    tokens: join(root, 'softhsm', 'tokens'),
  };
  mkdirSync(dirs.factory);
  mkdirSync(dirs.tmp);
  // SoftHSM2's token folder as Debian ships it: root:softhsm 2770.
  mkdirSync(dirs.tokens, { recursive: true });
  spawnSync('chgrp', ['softhsm', dirs.tokens]);
  chmodSync(dirs.tokens, 0o2770);
  chmodSync(join(root, 'softhsm'), 0o755);
  const softhsmConf = join(root, 'softhsm', 'softhsm2.conf');
  writeFileSync(softhsmConf, `directories.tokendir = ${dirs.tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`, { mode: 0o644 });

  let serve: ChildProcess | undefined;
  let socat: ChildProcess | undefined;
  t.teardown(() => {
    serve?.kill('SIGKILL');
    socat?.kill('SIGTERM');
    rmSync(root, { recursive: true, force: true });
  });

  // A virtual serial cable; the station's end belongs to group dialout, as a USB serial port does.
  const ttyStation = join(root, 'tty-station');
  const ttyJig = join(root, 'tty-jig');
  socat = spawn('socat', [`pty,raw,echo=0,link=${ttyStation},group=dialout,perm=0660`, `pty,raw,echo=0,link=${ttyJig}`], { stdio: 'ignore' });
  for (let i = 0; i < 100 && !(existsSync(ttyStation) && existsSync(ttyJig)); i++) await new Promise((r) => setTimeout(r, 50));

  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: `${dirs.bin}:${process.env.PATH}`,
    SOFTHSM2_CONF: softhsmConf,
    LINE_SIGNER_PREFIX: dirs.prefix,
    LINE_SIGNER_BINDIR: dirs.bin,
    LINE_SIGNER_ETC: dirs.etc,
    LINE_SIGNER_STATE: dirs.state,
    LINE_SIGNER_UNITDIR: dirs.units,
  };
  delete env.LINE_SIGNER_CONFIG; // the installed wrapper must find the station's config by itself
  const local = (cmd: string): string =>
    cmd
      .replace(/(^|\s)\/tmp\//g, `$1${dirs.tmp}/`) // first: the folders below are under /tmp themselves
      .replaceAll('/etc/systemd/system', dirs.units)
      .replaceAll('/etc/line-signer', dirs.etc)
      .replaceAll('/var/lib/line-signer', dirs.state)
      .replaceAll('/opt/line-signer', dirs.prefix)
      .replaceAll('/usr/local/bin', dirs.bin)
      .replaceAll('/dev/ttyUSB0', ttyJig);
  const run = (cmd: string, cwd = dirs.factory): { status: number | null; stdout: string; stderr: string } => {
    const started = Date.now();
    const r = spawnSync('bash', ['-c', local(cmd)], { cwd, env, encoding: 'utf8', timeout: 120_000 });
    t.log(`$ ${cmd} (${Date.now() - started} ms)\n${r.stdout}${r.stderr}`);
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  const ok = (cmd: string, cwd?: string): string => {
    const r = run(cmd, cwd);
    t.is(r.status, 0, `${cmd}: ${r.stderr}`);
    return r.stdout + r.stderr;
  };

  const section = readmeSection('Production station');
  const extfile = codeBlocks(section, 'ini')[0];
  t.truthy(extfile, 'the README shows the extfile');
  const steps = codeBlocks(section, 'sh').flatMap(commands);
  const factoryRoot = makeOpensslRoot(dirs.factory, 'factory_ca');
  const seen: string[] = [];
  for (const step of steps) {
    if (step === 'scripts/setup') {
      seen.push('setup'); // packages, npm ci and the build: this checkout is built already
    } else if (step === 'scripts/install') {
      ok(step, CHECKOUT);
      const pin = readFileSync(join(dirs.etc, 'pin'), 'utf8');
      t.regex(pin, /^[0-9a-f]{16}\n$/);
      ok(step, CHECKOUT); // idempotent: what exists is kept
      t.is(readFileSync(join(dirs.etc, 'pin'), 'utf8'), pin);
      seen.push('install');
      const service = idOf('line-signer');
      t.regex(spawnSync('id', ['-nG', 'line-signer'], { encoding: 'utf8' }).stdout, /\bsofthsm\b.*\bdialout\b|\bdialout\b.*\bsofthsm\b/);
      const mode = (p: string): string => (statSync(p).mode & 0o7777).toString(8);
      t.is(mode(dirs.etc), '750');
      t.is(statSync(dirs.etc).uid, 0);
      t.is(mode(join(dirs.etc, 'pin')), '640');
      t.is(statSync(join(dirs.etc, 'pin')).uid, 0);
      t.is(statSync(join(dirs.etc, 'pin')).gid, statSync(dirs.state).gid);
      t.is(mode(dirs.state), '750');
      t.is(statSync(dirs.state).uid, service);
      // Step 2, the config: the factory root, and a serial link on the station's end of the cable.
      copyFileSync(factoryRoot.pem, join(dirs.etc, 'factory_ca.pem'));
      const configPath = join(dirs.etc, 'station.toml');
      const config = readFileSync(configPath, 'utf8');
      t.regex(config, /^# serial = /m);
      writeFileSync(configPath, config.replace(/^# serial = .*$/m, `serial = [{ path = "${ttyStation}" }]`));
    } else if (step.startsWith('line-signer ca init-token')) {
      const out = ok(step);
      t.regex(out, /running as line-signer/);
      t.regex(out, /SO PIN/);
      seen.push('token');
      // The token's files belong to the service user, inside the group-shared folder.
      const tokenDirs = readdirSync(dirs.tokens);
      t.is(tokenDirs.length, 1);
      t.is(statSync(join(dirs.tokens, tokenDirs[0]!)).uid, idOf('line-signer'));
    } else if (step.startsWith('line-signer ca init ')) {
      ok(step);
      seen.push('init');
      // The factory's holder gets the CSR.
      copyFileSync(join(dirs.state, 'local-ca.csr'), join(dirs.factory, 'local-ca.csr'));
    } else if (step.startsWith('fioctl keys ca sign')) {
      seen.push('fioctl'); // needs a factory on Foundries.io; the OpenSSL recipe below does the same here
    } else if (step.startsWith('openssl x509 -req')) {
      writeFileSync(join(dirs.factory, 'local-ca.ext'), extfile!);
      // Without the extfile, the CA extensions are lost and the import says why.
      ok('openssl x509 -req -in local-ca.csr -CA factory_ca.pem -CAkey factory_ca.key -days 365 -out plain.pem');
      ok(step);
      seen.push('openssl');
      copyFileSync(join(dirs.factory, 'plain.pem'), join(dirs.tmp, 'plain.pem'));
      const plain = run('line-signer ca import /tmp/plain.pem');
      t.is(plain.status, 1);
      t.regex(plain.stderr, /not a CA certificate.*-extfile/);
      // "Copy local-ca.pem where line-signer can read it."
      copyFileSync(join(dirs.factory, 'local-ca.pem'), join(dirs.tmp, 'local-ca.pem'));
    } else if (step.startsWith('line-signer ca import')) {
      const out = ok(step);
      t.notRegex(out, /WARNING/); // the recipe's lifetime ends before the root's
      seen.push('import');
    } else if (step.startsWith('line-signer ca show')) {
      t.regex(ok(step), /ready:\s+yes/);
      seen.push('show');
    } else if (step === 'systemctl enable --now line-signer') {
      // What systemd would do: the unit's environment and ExecStart, as its user.
      const unit = readFileSync(join(dirs.units, 'line-signer.service'), 'utf8');
      const verify = spawnSync('systemd-analyze', ['verify', join(dirs.units, 'line-signer.service')], { encoding: 'utf8' });
      t.is(verify.status, 0, verify.stderr);
      t.is(verify.stderr, '');
      const user = /^User=(.+)$/m.exec(unit)![1]!;
      const exec = /^ExecStart=(.+)$/m.exec(unit)![1]!.split(' ');
      const unitEnv = [...unit.matchAll(/^Environment=(.+)$/gm)].map((m) => m[1]!);
      // setpriv execs the command itself (runuser would stay in between and take the SIGTERM meant for serve).
      serve = spawn('setpriv', [`--reuid=${user}`, `--regid=${user}`, '--init-groups', '--', 'env', '-i', 'PATH=/usr/bin:/bin', `SOFTHSM2_CONF=${softhsmConf}`, ...unitEnv, ...exec], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let log = '';
      serve.stdout!.on('data', (d) => (log += d));
      serve.stderr!.on('data', (d) => (log += d));
      for (let i = 0; i < 200 && !log.includes('"serving"'); i++) await new Promise((r) => setTimeout(r, 50));
      t.regex(log, /"serving"/, log);
      seen.push('service');
    } else if (step.startsWith('journalctl')) {
      seen.push('journal');
    } else if (step.startsWith('line-signer order open')) {
      // As root, through the serving service's control channel, as the service user.
      t.regex(ok(step), /opened work order WO-0001: 0 of 500/);
      seen.push('order');
    } else if (step.startsWith('line-signer jig')) {
      ok(step);
      seen.push('jig');
      const devices = readdirSync(join(dirs.factory, 'devices'));
      t.is(devices.length, 1);
      const dev = join(dirs.factory, 'devices', devices[0]!);
      // The device's certificate chains to the factory root through the local-ca the station holds.
      openssl(['verify', '-CAfile', factoryRoot.pem, '-untrusted', join(dirs.state, 'local-ca.pem'), '-purpose', 'sslclient', join(dev, 'client.pem')]);
    } else if (step === 'line-signer status') {
      t.regex(ok(step), /issued:\s+1\b/);
      seen.push('status');
    } else {
      t.fail(`a README step this test does not know: ${step}`);
    }
  }
  t.deepEqual(seen, ['setup', 'install', 'token', 'init', 'fioctl', 'openssl', 'import', 'show', 'service', 'journal', 'order', 'jig', 'status']);

  // The service stops cleanly, and nothing the commands made as root belongs to root.
  const stopped = new Promise<number | null>((resolve) => serve!.once('exit', resolve));
  serve!.kill('SIGTERM');
  t.is(await stopped, 0);
  serve = undefined;
  const service = idOf('line-signer');
  for (const p of [dirs.state, ...walk(dirs.state), ...walk(dirs.tokens)]) t.is(statSync(p).uid, service, p);
  t.regex(ok('line-signer ledger verify'), /ledger intact: 1 issuances/);
  t.is(realpathSync(join(dirs.bin, 'line-signer')), join(dirs.bin, 'line-signer')); // a wrapper, not a link into a checkout
});

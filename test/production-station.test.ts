/**
 * An installed station's parts on their own: root acting as the service
 * user, the PIN file as that user reads it, the unit, the spool drop-in and
 * the config-path message. The commands run as a technician would run
 * them: the real CLI in its own process, as root or through setpriv as the
 * service user. Needs root; it may leave the system user `line-signer`.
 */
import test from 'ava';
import fc from 'fast-check';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EXIT_TOKEN_PIN } from '../src/errors.js';
import { readPrivateFile } from '../src/files.js';
import { BIN } from './helpers/cli.js';
import { FACTORY, makeOpensslRoot, PIN, signCaCsrWithOpenssl, testStation } from './helpers/pki.js';

const CHECKOUT = fileURLToPath(new URL('../..', import.meta.url));
const UNIT = join(CHECKOUT, 'station-config', 'line-signer.service');
const asRoot = process.getuid?.() === 0 ? test : test.skip;
const SERVICE = 'line-signer';

interface Ids {
  uid: number;
  gid: number;
}

/** The service user as scripts/install makes it (made here when this test runs first). */
function serviceUser(): Ids {
  const has = (): boolean => spawnSync('getent', ['passwd', SERVICE]).status === 0;
  if (!has()) {
    const r = spawnSync('useradd', ['--system', '--user-group', '--no-create-home', '--shell', '/usr/sbin/nologin', SERVICE], { encoding: 'utf8' });
    if (r.status !== 0 && !has()) throw new Error(`useradd: ${r.stderr}`);
  }
  spawnSync('usermod', ['--append', '--groups', 'softhsm,dialout', SERVICE]);
  const id = (flag: string): number => Number(spawnSync('id', [flag, SERVICE], { encoding: 'utf8' }).stdout.trim());
  return { uid: id('-u'), gid: id('-g') };
}

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** The CLI with exactly this environment (SOFTHSM2_CONF included), as root or, with `as`, as the service user. */
function lineSigner(args: string[], env: NodeJS.ProcessEnv, as?: string): Run {
  const base = { PATH: process.env.PATH, ...env };
  const command = as ? ['setpriv', `--reuid=${as}`, `--regid=${as}`, '--init-groups', '--', process.execPath, BIN, ...args] : [process.execPath, BIN, ...args];
  const r = spawnSync(command[0]!, command.slice(1), { env: base, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface ServiceStation {
  root: string;
  config: string;
  state: string;
  tokens: string;
  pin: string;
  env: NodeJS.ProcessEnv;
  factoryRoot: { key: string; pem: string };
}

/** The layout scripts/install makes, in a temporary folder, with a SoftHSM2 token folder as Debian ships it. */
function serviceStation(ids: Ids): ServiceStation {
  const root = mkdtempSync(join(tmpdir(), 'line-signer-svc-'));
  chmodSync(root, 0o755);
  const etc = join(root, 'etc');
  const state = join(root, 'state');
  const tokens = join(root, 'tokens');
  mkdirSync(etc, { mode: 0o750 });
  chownSync(etc, 0, ids.gid);
  mkdirSync(state, { mode: 0o750 });
  chownSync(state, ids.uid, ids.gid);
  mkdirSync(tokens);
  spawnSync('chgrp', ['softhsm', tokens]);
  chmodSync(tokens, 0o2770);
  const conf = join(root, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`, { mode: 0o644 });
  const pin = join(etc, 'pin');
  writeFileSync(pin, PIN, { mode: 0o640 });
  chownSync(pin, 0, ids.gid);
  const factoryRoot = makeOpensslRoot(root, 'factory_ca');
  const config = join(etc, 'station.toml');
  writeFileSync(
    config,
    `[station]
id = "svc-1"
factory = "${FACTORY}"
production = true
ledger = "${state}/ledger.db"

[token]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "svc-token"
pin_file = "${pin}"

[ca]
certificate = "${state}/local-ca.pem"
root = "${factoryRoot.pem}"
station_certificate = "${state}/station-key.pem"
owner = "fio-svc"
`,
    { mode: 0o640 },
  );
  chownSync(config, 0, ids.gid);
  return { root, config, state, tokens, pin, env: { SOFTHSM2_CONF: conf, LINE_SIGNER_CONFIG: config }, factoryRoot };
}

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    return e.isDirectory() ? [p, ...walk(p)] : [p];
  });
}

const ACTING = /^line-signer: running as line-signer, the owner of .*$/gm;

asRoot('root on an installed station acts as the service user for ca, ledger, export and status, so every file stays the service\'s', (t) => {
  const ids = serviceUser();
  const s = serviceStation(ids);
  t.teardown(() => rmSync(s.root, { recursive: true, force: true }));
  const ok = (args: string[]): Run => {
    const r = lineSigner(args, s.env);
    t.is(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
    t.is(r.stderr.match(ACTING)?.length, 1, `${args.join(' ')} says once that it acts as the service user: ${r.stderr}`);
    return r;
  };
  ok(['ca', 'init-token']);
  const csrPath = join(s.state, 'local-ca.csr');
  ok(['ca', 'init', '--csr-out', csrPath]);
  const signed = signCaCsrWithOpenssl(readFileSync(csrPath, 'utf8'), s.root, s.factoryRoot);
  // A certificate only root can read (in /root, say): the message says who could not read it.
  chmodSync(signed, 0o600);
  const unreadable = lineSigner(['ca', 'import', signed], s.env);
  t.is(unreadable.status, 1);
  t.regex(unreadable.stderr, /ERROR CA cannot read .*: EACCES as line-signer; put it where that user can read it/);
  chmodSync(signed, 0o644);
  ok(['ca', 'import', signed]);
  ok(['ledger', 'verify']);
  ok(['status']);
  // A folder made for the batches, as for a stick: export no longer makes a missing one.
  mkdirSync(join(s.state, 'batches'));
  chownSync(join(s.state, 'batches'), ids.uid, ids.gid);
  ok(['export', '--out', join(s.state, 'batches')]);
  const show = ok(['ca', 'show', '--check-pin']);
  t.regex(show.stdout, /ready:\s+yes/);
  // Nothing root-owned where the service writes: the ledger (and its WAL files), certificates, token objects.
  const made = [...walk(s.state), ...walk(s.tokens)];
  t.true(made.some((p) => p.endsWith('ledger.db')));
  t.true(made.some((p) => p.endsWith('local-ca.pem')));
  for (const p of made) t.is(statSync(p).uid, ids.uid, p);
  // And the service user itself can serve from them: its own check passes without root.
  const asService = lineSigner(['ca', 'show', '--check-pin'], s.env, SERVICE);
  t.is(asService.status, 0, asService.stdout + asService.stderr);
  t.notRegex(asService.stderr, ACTING);
});

asRoot('root stays root, and says nothing, where the ledger folder is root\'s', (t) => {
  const root = mkdtempSync(join(tmpdir(), 'line-signer-rootonly-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const factoryRoot = makeOpensslRoot(root, 'factory_ca');
  const config = join(root, 'station.toml');
  writeFileSync(
    config,
    `[station]\nid = "r"\nfactory = "${FACTORY}"\nproduction = true\nledger = "ledger.db"\n\n[token]\nmodule = "/usr/lib/softhsm/libsofthsm2.so"\ntoken_label = "none"\npin_file = "pin"\n\n[ca]\ncertificate = "local-ca.pem"\nroot = "${factoryRoot.pem}"\nowner = "fio-r"\n`,
  );
  const r = lineSigner(['status', '--config', config], {});
  t.is(r.status, 0, r.stderr);
  t.notRegex(r.stderr, /running as/);
  // status reads; it makes no ledger (a new station's is made by its first serve or sign) and says so.
  t.false(existsSync(join(root, 'ledger.db')));
  t.regex(r.stdout, /NO LEDGER at /);
});

asRoot('the PIN file: root:line-signer 0640 is read by the service user; world-readable, a shared group and a root-only file are refused with what to do', (t) => {
  const ids = serviceUser();
  const s = serviceStation(ids);
  t.teardown(() => rmSync(s.root, { recursive: true, force: true }));
  const pinAsService = (): { state: string; error?: string } => {
    const r = lineSigner(['ca', 'show', '--json'], s.env, SERVICE);
    return JSON.parse(r.stdout).pin;
  };
  t.deepEqual(pinAsService(), { source: `file ${s.pin}`, state: 'not tried' } as never);

  chmodSync(s.pin, 0o644);
  const world = pinAsService();
  t.is(world.state, 'missing');
  t.regex(world.error!, /is readable by group or others \(mode 644\).*chmod 600 it, or make it 0640 in the own group/);

  // dialout: line-signer is a member, and so may be anyone who uses serial ports.
  chmodSync(s.pin, 0o640);
  chownSync(s.pin, 0, Number(spawnSync('getent', ['group', 'dialout'], { encoding: 'utf8' }).stdout.split(':')[2]));
  const shared = pinAsService();
  t.is(shared.state, 'missing');
  t.regex(shared.error!, /the group is not the reading user's own/);

  chmodSync(s.pin, 0o600);
  chownSync(s.pin, 0, 0);
  const rootOnly = pinAsService();
  t.is(rootOnly.state, 'missing');
  t.regex(rootOnly.error!, /cannot read .*pin \(EACCES as line-signer\)/);

  // The service user's own file, 0600, is fine too.
  chownSync(s.pin, ids.uid, ids.gid);
  t.is(pinAsService().state, 'not tried');
});

/** The unit's values for `key`, every occurrence, split on spaces. */
function unitValues(unit: string, key: string): string[] {
  return [...unit.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].flatMap((m) => m[1]!.split(/\s+/).filter(Boolean));
}

test('the unit passes systemd-analyze verify and keeps its hardening while letting the station work', (t) => {
  const unit = readFileSync(UNIT, 'utf8');
  const dir = mkdtempSync(join(tmpdir(), 'line-signer-unit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // verify checks that ExecStart exists: point it at this checkout's program.
  const verify = (text: string): { status: number | null; stderr: string } => {
    const path = join(dir, 'line-signer.service');
    writeFileSync(path, text.replace('/usr/local/bin/line-signer', BIN));
    const r = spawnSync('systemd-analyze', ['verify', path], { encoding: 'utf8' });
    return { status: r.status, stderr: r.stderr };
  };
  const r = verify(unit);
  t.is(r.status, 0, r.stderr);
  t.is(r.stderr, '');
  // The check sees mistakes: a misspelt key and a bad exit status come back as warnings.
  t.not(verify(unit.replace('ProtectSystem=', 'ProtectSystm=').replace('RestartPreventExitStatus=77', 'RestartPreventExitStatus=seventy-seven')).stderr, '');

  t.deepEqual(unitValues(unit, 'User'), ['line-signer']);
  t.true(unitValues(unit, 'SupplementaryGroups').includes('softhsm'));
  t.true(unitValues(unit, 'SupplementaryGroups').includes('dialout'));
  t.true(unitValues(unit, 'RestartPreventExitStatus').includes(String(EXIT_TOKEN_PIN)));
  t.deepEqual(unitValues(unit, 'Restart'), ['on-failure']);
  t.true(unitValues(unit, 'After').includes('network-online.target'));
  t.true(unitValues(unit, 'Wants').includes('network-online.target'));
  t.deepEqual(unitValues(unit, 'ProtectSystem'), ['strict']);
  t.deepEqual(unitValues(unit, 'ProtectHome'), ['yes']);
  t.deepEqual(unitValues(unit, 'NoNewPrivileges'), ['yes']);
  t.deepEqual(unitValues(unit, 'LimitCORE'), ['0'], 'no core file holds the PIN');
  t.regex(unit, /^CapabilityBoundingSet=$/m, 'no capabilities at all');
  for (const key of ['ProtectKernelTunables', 'ProtectKernelModules', 'ProtectControlGroups', 'RestrictNamespaces', 'RestrictSUIDSGID', 'LockPersonality']) t.deepEqual(unitValues(unit, key), ['yes'], key);
  const writable = unitValues(unit, 'ReadWritePaths').map((p) => p.replace(/^-/, ''));
  for (const p of ['/var/lib/line-signer', '/var/lib/softhsm/tokens', '/media', '/run/media']) t.true(writable.includes(p), p);
  const exec = unitValues(unit, 'ExecStart')[0]!;
  t.notRegex(exec, /^\/(root|home)\//);
  t.deepEqual(unitValues(unit, 'Environment'), ['LINE_SIGNER_CONFIG=/etc/line-signer/station.toml']);
});

test('a refused PIN makes serve exit with a status the unit never restarts on', async (t) => {
  const s = await testStation();
  await s.close();
  const wrongPin = join(s.dir, 'wrong-pin');
  writeFileSync(wrongPin, '99999999', { mode: 0o600 });
  const cfg = join(s.dir, 'wrong.toml');
  writeFileSync(cfg, readFileSync(s.configPath, 'utf8').replace(/pin_file = .*\n/, `pin_file = "${wrongPin}"\n`));
  const r = lineSigner(['serve', '--config', cfg, '--json'], { SOFTHSM2_CONF: process.env.SOFTHSM2_CONF });
  t.regex(r.stderr, /TOKEN_PIN/);
  t.is(r.status, EXIT_TOKEN_PIN);
  t.true(unitValues(readFileSync(UNIT, 'utf8'), 'RestartPreventExitStatus').includes(String(r.status)));
});

asRoot('scripts/install lets the unit write spool folders outside /media through a drop-in', (t) => {
  const root = mkdtempSync(join(tmpdir(), 'line-signer-spool-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const etc = join(root, 'etc');
  mkdirSync(etc);
  const example = readFileSync(join(CHECKOUT, 'station-config', 'station.example.toml'), 'utf8');
  writeFileSync(join(etc, 'station.toml'), example.replace(/^# spool = .*$/m, 'spool = ["/srv/line-3-spool", "/media/usb", "/run/media/stick", "/tmp/stick"]'));
  const env = {
    ...process.env,
    LINE_SIGNER_PREFIX: join(root, 'opt'),
    LINE_SIGNER_BINDIR: join(root, 'bin'),
    LINE_SIGNER_ETC: etc,
    LINE_SIGNER_STATE: join(root, 'state'),
    LINE_SIGNER_UNITDIR: join(root, 'systemd'),
  };
  const r = spawnSync('bash', [join(CHECKOUT, 'scripts', 'install')], { env, encoding: 'utf8', timeout: 120_000 });
  t.is(r.status, 0, r.stderr);
  const dropIn = readFileSync(join(root, 'systemd', 'line-signer.service.d', 'spool.conf'), 'utf8');
  t.deepEqual(unitValues(dropIn, 'ReadWritePaths'), ['-/srv/line-3-spool']);
  t.regex(dropIn, /^\[Service\]$/m);
  // PrivateTmp gives the service a /tmp of its own: a spool there is never seen, and install says so.
  t.regex(r.stdout, /WARNING: the service cannot see spool folders under \/tmp.*: \/tmp\/stick/);
  // The config install found was kept, not replaced by the example.
  t.regex(readFileSync(join(etc, 'station.toml'), 'utf8'), /^spool = \["\/srv\/line-3-spool"/m);
  // A config left broken mid-edit: install says so and leaves the drop-in as it was.
  writeFileSync(join(etc, 'station.toml'), readFileSync(join(etc, 'station.toml'), 'utf8').replace('[station]', '[station]\nidd = 1'));
  const broken = spawnSync('bash', [join(CHECKOUT, 'scripts', 'install')], { env, encoding: 'utf8', timeout: 120_000 });
  t.is(broken.status, 0, broken.stderr);
  t.regex(broken.stdout, /spool folders not looked at \(.*station\.idd: unknown key\)/);
  t.is(readFileSync(join(root, 'systemd', 'line-signer.service.d', 'spool.conf'), 'utf8'), dropIn);
});

test('a config that cannot be read names the path tried and how to choose another', (t) => {
  const cwd = mkdtempSync(join(tmpdir(), 'line-signer-nocfg-'));
  t.teardown(() => rmSync(cwd, { recursive: true, force: true }));
  const run = (env: NodeJS.ProcessEnv): Run => {
    const r = spawnSync(process.execPath, [BIN, 'status'], { cwd, env: { PATH: process.env.PATH, ...env }, encoding: 'utf8' });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  const byDefault = run({});
  t.is(byDefault.status, 64);
  t.regex(byDefault.stderr, new RegExp(`^ERROR CONFIG cannot read config ${cwd}/station-config/station\\.toml \\(ENOENT; the default, relative to the current folder ${cwd}\\)`));
  t.regex(byDefault.stderr, /--config PATH or LINE_SIGNER_CONFIG=PATH/);
  const fromEnv = run({ LINE_SIGNER_CONFIG: '/nowhere/station.toml' });
  t.regex(fromEnv.stderr, /cannot read config \/nowhere\/station\.toml \(ENOENT; the path in LINE_SIGNER_CONFIG\).*--config PATH/);
});

asRoot('property: a secret file is read exactly when no one but its owner and the own group of the one reading user can read it', (t) => {
  // As root here: group root (gid 0) has no other member, dialout is shared.
  const dir = mkdtempSync(join(tmpdir(), 'line-signer-modes-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'secret');
  writeFileSync(file, 'secret');
  const dialout = Number(spawnSync('getent', ['group', 'dialout'], { encoding: 'utf8' }).stdout.split(':')[2]);
  fc.assert(
    fc.property(fc.integer({ min: 0o400, max: 0o777 }), fc.boolean(), (mode, ownGroup) => {
      chownSync(file, 0, ownGroup ? 0 : dialout);
      chmodSync(file, mode);
      const groupBits = mode & 0o070;
      const expected = (mode & 0o007) === 0 && (groupBits === 0 || (ownGroup && (mode & 0o030) === 0));
      let read: boolean;
      try {
        read = readPrivateFile(file, 'test.file', 'TOKEN_PIN') === 'secret';
      } catch (err) {
        if (!/is readable by group or others/.test((err as Error).message)) throw err;
        read = false;
      }
      return read === expected;
    }),
    { numRuns: 300 },
  );
  t.pass();
});

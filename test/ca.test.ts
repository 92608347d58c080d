import test from 'ava';
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import Database from 'better-sqlite3';
import { loadConfig } from '../src/config/index.js';
import { join } from 'node:path';
import { caCsr, caImport, caInit, caInitToken, caShow, openToken } from '../src/station/index.js';
import { EXIT_TOKEN_PIN, LineSignerError } from '../src/errors.js';
import { BIN, cli } from './helpers/cli.js';
import { FACTORY, makeOpensslRoot, openssl, reserveStationTokens, signCaCsrWithOpenssl, stationConfig, testPki } from './helpers/pki.js';

reserveStationTokens(24);

const CA_EXT = 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n';

test('ca init makes a sensitive, non-extractable P-256 key in the token and a CSR as the profile says', async (t) => {
  const s = stationConfig();
  const pem = await caInit(s.config);
  const text = openssl(['req', '-noout', '-text', '-verify'], pem).toString();
  t.regex(text, new RegExp(`Subject: CN = ${s.config.ca.owner}, OU = ${FACTORY}`));
  t.regex(text, /ASN1 OID: prime256v1/);
  t.regex(text, /X509v3 Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
  t.regex(text, /X509v3 Key Usage: critical\s+Certificate Sign\s/);
  t.regex(text, /Signature Algorithm: ecdsa-with-SHA256/);
  // UTF8String subject values
  const parsed = openssl(['asn1parse'], pem).toString();
  t.regex(parsed, /UTF8STRING\s+:fio-test/);
  t.regex(parsed, new RegExp(`UTF8STRING\\s+:${FACTORY}`));
  const token = openToken(s.config);
  t.teardown(() => token.close());
  const key = token.findKey(s.config.token.key_label)!;
  t.deepEqual(token.keyFlags(key), { sensitive: true, extractable: false });
  // The CSR carries the token's key.
  const pub = openssl(['req', '-noout', '-pubkey'], pem).toString();
  t.is(pub.replace(/\s/g, ''), `-----BEGINPUBLICKEY-----${Buffer.from(key.spki).toString('base64')}-----ENDPUBLICKEY-----`);
});

test('ca init refuses when the key already exists', async (t) => {
  const s = stationConfig();
  await caInit(s.config);
  const err = await t.throwsAsync(caInit(s.config), { instanceOf: LineSignerError });
  t.regex(err!.message, /already holds a key labelled/);
});

test('the ca init CSR signed by openssl x509 -req imports, and ca show reports it', async (t) => {
  const p = testPki();
  const s = stationConfig();
  const csr = await caInit(s.config);
  const cert = signCaCsrWithOpenssl(csr, s.dir, { key: p.rootKey, pem: p.rootPem }, CA_EXT);
  const x = caImport(s.config, cert);
  t.regex(x.subject, /CN=fio-test/);
  const show = caShow(s.config);
  t.true(show.token.found && show.token.key_found);
  t.true('sha256' in show.local_ca && show.local_ca.matches_token_key === true);
});

test('import refuses a certificate for another key, a non-CA, one without keyCertSign, one from another root, another factory', async (t) => {
  const p = testPki();
  const s = stationConfig();
  const csr = await caInit(s.config);
  const root = { key: p.rootKey, pem: p.rootPem };
  const refuse = (file: string, why: RegExp): void => {
    const err = t.throws(() => caImport(s.config, file), { instanceOf: LineSignerError });
    t.is(err!.code, 'CA');
    t.regex(err!.message, why);
  };
  // Another key: a CSR made by openssl with its own key, same subject.
  const otherCsr = openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(s.dir, 'o.key'), '-subj', `/CN=${s.config.ca.owner}/OU=${FACTORY}`]).toString();
  refuse(signCaCsrWithOpenssl(otherCsr, s.dir, root, CA_EXT), /another key/);
  refuse(signCaCsrWithOpenssl(csr, s.dir, root, 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n'), /not a CA certificate/);
  refuse(signCaCsrWithOpenssl(csr, s.dir, root, 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,cRLSign\n'), /keyCertSign/);
  const otherRoot = makeOpensslRoot(s.dir, 'other-root', 'Other-CA');
  refuse(signCaCsrWithOpenssl(csr, s.dir, otherRoot, CA_EXT), /does not chain to the factory root/);
  const notAFile = join(s.dir, 'nothing.pem');
  writeFileSync(notAFile, 'hello');
  refuse(notAFile, /not an X.509 certificate/);
  // A local-ca whose OU is not this station's factory: same key, config says another factory.
  const good = signCaCsrWithOpenssl(csr, s.dir, root, CA_EXT);
  const renamed = join(s.dir, 'other-factory.toml');
  writeFileSync(renamed, readFileSync(s.configPath, 'utf8').replace(`factory = "${FACTORY}"`, 'factory = "other-factory"'));
  const err = t.throws(() => caImport(loadConfig(renamed), good), { instanceOf: LineSignerError });
  t.regex(err!.message, /OU is "acme-factory", but station.factory is "other-factory"/);
  // And the right one imports.
  t.notThrows(() => caImport(s.config, good));
});

/** A station config file with some lines changed. */
function variant(configPath: string, name: string, edit: (text: string) => string): string {
  const path = join(configPath, '..', name);
  writeFileSync(path, edit(readFileSync(configPath, 'utf8')));
  return path;
}

/** A station whose local-ca is made, signed by the test root and imported. */
async function installedStation(): Promise<ReturnType<typeof stationConfig> & { caPem: string }> {
  const p = testPki();
  const s = stationConfig();
  const csr = await caInit(s.config);
  const caPem = signCaCsrWithOpenssl(csr, s.dir, { key: p.rootKey, pem: p.rootPem });
  caImport(s.config, caPem);
  return { ...s, caPem };
}

const SPY = '/usr/lib/x86_64-linux-gnu/pkcs11-spy.so';

test('ca show finds the token and the keys without logging in, so a wrong PIN spends no try; --check-pin spends exactly one', async (t) => {
  const s = await installedStation();
  const wrongPin = join(s.dir, 'wrong-pin');
  writeFileSync(wrongPin, '99999999', { mode: 0o600 });
  // OpenSC's pkcs11-spy sits between line-signer and SoftHSM2 and logs every PKCS#11 call.
  const cfg = variant(s.configPath, 'spy.toml', (x) =>
    x.replace(/module = .*\n/, `module = "${SPY}"\n`).replace(/pin_file = .*\n/, `pin_file = "${wrongPin}"\n`),
  );
  const show = (args: string[]): { status: number | null; json: ReturnType<typeof caShow>; calls: string } => {
    const log = join(s.dir, `spy-${randomUUID()}.log`);
    const r = cli(['ca', 'show', '--json', '--config', cfg, ...args], {
      env: { PKCS11SPY: '/usr/lib/softhsm/libsofthsm2.so', PKCS11SPY_OUTPUT: log },
    });
    return { status: r.status, json: JSON.parse(r.stdout), calls: readFileSync(log, 'utf8') };
  };
  const quiet = show([]);
  t.true(quiet.json.token.found);
  t.true(quiet.json.token.key_found);
  t.true(quiet.json.station_key.key_found);
  t.true('sha256' in quiet.json.local_ca && quiet.json.local_ca.matches_token_key === true);
  t.is(quiet.json.pin.state, 'not tried');
  t.is(quiet.status, 0);
  t.regex(quiet.calls, /C_FindObjects/);
  t.notRegex(quiet.calls, /C_Login/);

  const checked = show(['--check-pin']);
  t.is(checked.json.pin.state, 'refused');
  t.regex(checked.json.problems.join('\n'), /PIN refused: the token refused the PIN \(CKR_PIN_INCORRECT\)/);
  t.is(checked.status, EXIT_TOKEN_PIN);
  t.is(checked.calls.match(/C_Login/g)?.length, 1);
  t.false(JSON.stringify(checked.json).includes('99999999'));
});

test('ca show tells a missing PIN from a missing token, and exits non-zero when the token, a key or the local-ca is missing or does not match', async (t) => {
  const s = await installedStation();
  const run = (configPath: string, args: string[] = []): { status: number | null; json: ReturnType<typeof caShow>; text: string } => {
    const j = cli(['ca', 'show', '--json', '--config', configPath, ...args]);
    const text = cli(['ca', 'show', '--config', configPath, ...args]).stdout;
    return { status: j.status, json: JSON.parse(j.stdout), text };
  };
  const ready = run(s.configPath, ['--check-pin']);
  t.is(ready.status, 0, ready.text);
  t.true(ready.json.ready);
  t.is(ready.json.pin.state, 'accepted');
  t.regex(ready.text, /^ready:\s+yes$/m, 'logged in: the keys\' protection was read too');
  // Without a login it says how far it could see: an extractable key once showed "ready: yes" here while serve refused it.
  t.regex(run(s.configPath).text, /^ready:\s+yes, as far as can be seen without the PIN \(`ca show --check-pin` also reads whether the keys can leave the token/m);

  const noPin = run(variant(s.configPath, 'nopin.toml', (x) => x.replace(/pin_file = .*\n/, `pin_file = "${join(s.dir, 'absent-pin')}"\n`)));
  t.is(noPin.status, EXIT_TOKEN_PIN);
  t.is(noPin.json.pin.state, 'missing');
  t.true(noPin.json.token.found && noPin.json.token.key_found, 'the token and its key are still found');
  t.regex(noPin.text, /PIN:\s+MISSING \(token\.pin_file: cannot read .*absent-pin \(ENOENT\)\)/);
  t.regex(noPin.text, new RegExp(`token:\\s+"${s.config.token.token_label}" found`));

  const noToken = run(variant(s.configPath, 'notoken.toml', (x) => x.replace(/token_label = .*\n/, 'token_label = "no-such-token"\n')));
  t.is(noToken.status, 1);
  t.false(noToken.json.token.found);
  t.regex(noToken.json.problems.join('\n'), /token not found: no token labelled "no-such-token".*ca init-token/);

  const noKey = run(variant(s.configPath, 'nokey.toml', (x) => x.replace(/key_label = .*\n/, 'key_label = "no-such-key"\n')));
  t.is(noKey.status, 1);
  t.false(noKey.json.token.key_found);
  t.regex(noKey.json.problems.join('\n'), /key "no-such-key" not in the token; run `line-signer ca init`/);

  const noCa = run(variant(s.configPath, 'noca.toml', (x) => x.replace(/certificate = "local-ca.pem"/, 'certificate = "absent.pem"')));
  t.is(noCa.status, 1);
  t.regex(noCa.json.problems.join('\n'), /local-ca missing: no local-ca certificate at .*absent\.pem/);

  // Another station's local-ca: for another key.
  const other = await installedStation();
  const foreign = join(s.dir, 'foreign-ca.pem');
  copyFileSync(other.caPem, foreign);
  const mismatch = run(variant(s.configPath, 'mismatch.toml', (x) => x.replace(/certificate = "local-ca.pem"/, `certificate = "${foreign}"`)));
  t.is(mismatch.status, 1);
  t.true('sha256' in mismatch.json.local_ca && mismatch.json.local_ca.matches_token_key === false);
  t.regex(mismatch.text, /token key:\s+DOES NOT MATCH/);
  t.regex(mismatch.json.problems.join('\n'), /local-ca: local-ca certificate is for another key/);
});

test('ca csr writes the CSR again from the key in the token, with the owner as now configured; ca init points to it', async (t) => {
  const s = stationConfig();
  const first = await caInit(s.config);
  const again = await t.throwsAsync(caInit(s.config), { instanceOf: LineSignerError });
  t.regex(again!.message, /run `line-signer ca csr`/);
  const fixed = loadConfig(variant(s.configPath, 'fixed.toml', (x) => x.replace(/owner = .*\n/, 'owner = "fio-corrected"\n')));
  const csr = await caCsr(fixed);
  const text = openssl(['req', '-noout', '-text', '-verify'], csr).toString();
  t.regex(text, new RegExp(`Subject: CN = fio-corrected, OU = ${FACTORY}`));
  t.regex(text, /CA:TRUE, pathlen:0/);
  const pub = (pem: string): string => openssl(['req', '-noout', '-pubkey'], pem).toString();
  t.is(pub(csr), pub(first));
  // And the new CSR, signed, imports.
  const p = testPki();
  t.notThrows(() => caImport(fixed, signCaCsrWithOpenssl(csr, s.dir, { key: p.rootKey, pem: p.rootPem })));

  const fresh = stationConfig();
  const none = await t.throwsAsync(caCsr(fresh.config), { instanceOf: LineSignerError });
  t.regex(none!.message, /has no key .*run `line-signer ca init`/);
});

test('ca import refuses to replace an installed local-ca without --replace, and records the replacement', async (t) => {
  const p = testPki();
  const s = stationConfig();
  const csr = await caInit(s.config);
  const root = { key: p.rootKey, pem: p.rootPem };
  const first = signCaCsrWithOpenssl(csr, s.dir, root);
  const second = signCaCsrWithOpenssl(csr, s.dir, root);
  caImport(s.config, first);
  t.notThrows(() => caImport(s.config, first), 'the same certificate again is no replacement');
  const err = t.throws(() => caImport(s.config, second), { instanceOf: LineSignerError });
  t.regex(err!.message, /a local-ca is installed already at .*local-ca\.pem .*Give --replace/);
  t.is(readFileSync(s.config.ca.certificate, 'utf8'), readFileSync(first, 'utf8').replace(/\r?\n?$/, '\n'));
  const cliRefusal = cli(['ca', 'import', second, '--config', s.configPath]);
  t.is(cliRefusal.status, 1);
  t.regex(cliRefusal.stderr, /^ERROR CA a local-ca is installed already/);
  const replaced = cli(['ca', 'import', second, '--replace', '--config', s.configPath]);
  t.is(replaced.status, 0, replaced.stderr);
  const firstSha = openssl(['x509', '-noout', '-fingerprint', '-sha256', '-in', first]).toString().split('=')[1]!.trim().replace(/:/g, '').toLowerCase();
  const db = new Database(s.config.station.ledger, { readonly: true });
  t.teardown(() => db.close());
  const messages = db.prepare<[], { message: string }>("SELECT message FROM events WHERE kind = 'ca_import' ORDER BY seq").all().map((r) => r.message);
  t.is(messages.length, 3);
  t.regex(messages[2]!, new RegExp(`replaces local-ca ${firstSha}`));
});

test('ca import warns when the local-ca outlives its root', async (t) => {
  const s = stationConfig();
  const csr = await caInit(s.config);
  const key = join(s.dir, 'short-root.key');
  const pem = join(s.dir, 'short-root.pem');
  openssl([
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', pem,
    '-days', '30', '-subj', `/CN=Short-CA/OU=${FACTORY}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  const cfg = loadConfig(variant(s.configPath, 'short.toml', (x) => x.replace(/^root = .*$/m, `root = "${pem}"`)));
  const sign = (days: number): string => {
    const csrPath = join(s.dir, `short-${days}.csr`);
    const ext = join(s.dir, 'short.ext');
    const out = join(s.dir, `short-${days}.pem`);
    writeFileSync(csrPath, csr);
    writeFileSync(ext, 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n');
    openssl(['x509', '-req', '-in', csrPath, '-CA', pem, '-CAkey', key, '-set_serial', `0x${randomUUID().replace(/-/g, '')}`, '-days', String(days), '-extfile', ext, '-out', out]);
    return out;
  };
  const inside: string[] = [];
  caImport(cfg, sign(10), { warn: (m) => inside.push(m) });
  t.deepEqual(inside, []);
  const warnings: string[] = [];
  caImport(cfg, sign(365), { replace: true, warn: (m) => warnings.push(m) });
  t.is(warnings.length, 1);
  t.regex(warnings[0]!, /the local-ca is valid to .* after its factory root \(valid to .*\); devices will stop chaining when the root expires/);
});

test('ca init-token makes a token in-process: the user PIN works, and a second one with the label is refused', (t) => {
  const s = stationConfig();
  const cfg = loadConfig(variant(s.configPath, 'newtoken.toml', (x) => x.replace(/token_label = .*\n/, `token_label = "fresh-${process.pid}"\n`)));
  const made = caInitToken(cfg);
  t.true(made.generated);
  t.regex(made.soPin, /^[0-9a-f]{16}$/);
  const token = openToken(cfg); // logs in with the config's PIN
  t.teardown(() => token.close());
  t.truthy(token.generateKey('k'));
  const again = t.throws(() => caInitToken(cfg), { instanceOf: LineSignerError });
  t.regex(again!.message, /a token labelled "fresh-\d+" exists already/);
  // An SO PIN file must be private, as the PIN file is.
  const soPin = join(s.dir, 'so-pin');
  writeFileSync(soPin, '1234567890', { mode: 0o644 });
  const cfg2 = loadConfig(variant(s.configPath, 'newtoken2.toml', (x) => x.replace(/token_label = .*\n/, `token_label = "fresh2-${process.pid}"\n`)));
  t.throws(() => caInitToken(cfg2, soPin), { message: /--so-pin-file: .* is readable by group or others/ });
  chmodSync(soPin, 0o600);
  t.deepEqual(caInitToken(cfg2, soPin), { soPin: '1234567890', generated: false });
});

test('ca demo puts no PIN on any command line', (t) => {
  const s = stationConfig();
  const dev = join(s.dir, 'demo');
  mkdirSync(join(dev, 'station-config'), { recursive: true });
  copyFileSync(new URL('../../station-config/station.toml', import.meta.url), join(dev, 'station-config', 'station.toml'));
  // A softhsm2-util in front of the real one that writes down how it was called.
  const shims = join(dev, 'shims');
  mkdirSync(shims);
  const calls = join(dev, 'calls.log');
  writeFileSync(join(shims, 'softhsm2-util'), `#!/bin/sh\necho "$@" >> ${calls}\nexec /usr/bin/softhsm2-util "$@"\n`, { mode: 0o755 });
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${shims}:${process.env.PATH}` };
  delete env.SOFTHSM2_CONF; // the demo's own token folder
  const r = spawnSync(process.execPath, [BIN, 'ca', 'demo', '--config', join(dev, 'station-config', 'station.toml')], { env, encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /created SoftHSM2 token "line-signer"/);
  const pin = readFileSync(join(dev, '.station-dev', 'pin'), 'utf8').trim();
  t.false(existsSync(calls) && readFileSync(calls, 'utf8').includes(pin), 'the PIN went to softhsm2-util on its command line');
  t.false(r.stdout.includes(pin) || r.stderr.includes(pin));
  // The token it made takes that PIN.
  const show = spawnSync(process.execPath, [BIN, 'ca', 'show', '--check-pin', '--config', join(dev, 'station-config', 'station.toml')], { env, encoding: 'utf8' });
  t.is(show.status, 0, show.stdout + show.stderr);
});

test('a second token with the station\'s label (anyone in SoftHSM2\'s group can make one): no command picks either or logs in; ca show names both serials', (t) => {
  // A token folder of its own: the shared one serves the other tests.
  const dir = mkdtempSync(join(tmpdir(), 'line-signer-duptoken-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'tokens'));
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  const env = { SOFTHSM2_CONF: conf };
  const makeToken = (): void => {
    const r = spawnSync('softhsm2-util', ['--init-token', '--free', '--label', 'line-7', '--so-pin', '13579', '--pin', '246810'], { env: { ...process.env, ...env }, encoding: 'utf8' });
    t.is(r.status, 0, r.stderr);
  };
  makeToken();
  writeFileSync(join(dir, 'pin'), '246810', { mode: 0o600 });
  const root = makeOpensslRoot(dir, 'factory_ca');
  const config = join(dir, 'station.toml');
  writeFileSync(
    config,
    `[station]\nid = "dup"\nfactory = "${FACTORY}"\nproduction = true\nledger = "ledger.db"\n\n[token]\nmodule = "/usr/lib/softhsm/libsofthsm2.so"\ntoken_label = "line-7"\npin_file = "pin"\n\n[ca]\ncertificate = "local-ca.pem"\nroot = "${root.pem}"\nowner = "fio-dup"\n`,
  );
  const first = cli(['ca', 'init', '--csr-out', join(dir, 'ca.csr'), '--config', config], { env });
  t.is(first.status, 0, first.stderr);
  makeToken();
  const again = cli(['station-key', 'init', '--config', config], { env });
  t.not(again.status, 0);
  t.regex(again.stderr, /^ERROR TOKEN_UNAVAILABLE 2 tokens are labelled "line-7" in \S+ \(serials "[0-9a-f]+", "[0-9a-f]+"\): the station cannot tell which one holds its keys and logs in to none/m);
  const show = cli(['ca', 'show', '--config', config], { env });
  t.regex(show.stdout, /^token: +"line-7" NOT USED \(2 tokens are labelled/m);
  t.regex(show.stdout, /problem: token not used: 2 tokens/);
  t.notRegex(show.stdout, /ca init-token/, 'making a token is not the way out');
});

test('a softhsm2_conf that cannot be read is named, not only SoftHSM2\'s CKR_GENERAL_ERROR', (t) => {
  const s = stationConfig({ token: 'softhsm2_conf = "missing-softhsm2.conf"' });
  const env = { ...process.env };
  delete env.SOFTHSM2_CONF; // the config's file is the one SoftHSM2 reads
  const r = spawnSync(process.execPath, [BIN, 'ca', 'init', '--csr-out', join(s.dir, 'ca.csr'), '--config', s.configPath], { env, encoding: 'utf8' });
  t.not(r.status, 0);
  t.regex(r.stderr, new RegExp(`^ERROR TOKEN_UNAVAILABLE token: C_Initialize failed: CKR_GENERAL_ERROR: SoftHSM2's config ${s.dir}/missing-softhsm2\\.conf \\(token\\.softhsm2_conf or SOFTHSM2_CONF\\) cannot be read \\(ENOENT\\)`, 'm'));
});

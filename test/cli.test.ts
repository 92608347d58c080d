import test from 'ava';
import { chmodSync, symlinkSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { cli } from './helpers/cli.js';
import { FACTORY, PIN, opensslCsr, stationConfig, testStation, uuid } from './helpers/pki.js';
import { pemEncode } from '../src/x509/index.js';

test('sign prints the chain; a refusal prints one ERROR line with its code and exits non-zero', async (t) => {
  const s = await testStation();
  await s.close();
  const { csr } = opensslCsr(s.dir);
  const csrPath = join(s.dir, 'device.csr');
  writeFileSync(csrPath, pemEncode(csr, 'CERTIFICATE REQUEST'));
  const ok = cli(['sign', csrPath, '--config', s.configPath]);
  t.is(ok.status, 0, ok.stderr);
  t.is((ok.stdout.match(/-----BEGIN CERTIFICATE-----/g) ?? []).length, 2);
  const out = join(s.dir, 'chain.pem');
  const again = cli(['sign', csrPath, '--out', out, '--config', s.configPath]);
  t.is(again.status, 0);
  t.is(readFileSync(out, 'utf8'), ok.stdout, 'a retry gives the same chain');
  t.regex(again.stderr, /already signed/);

  const bad = opensslCsr(s.dir, { subject: `/CN=${uuid()}/OU=${FACTORY}/O=Evil/businessCategory=production` });
  const badPath = join(s.dir, 'bad.der');
  writeFileSync(badPath, bad.csr);
  const refused = cli(['sign', badPath, '--config', s.configPath]);
  t.not(refused.status, 0);
  t.regex(refused.stderr, /^ERROR POLICY_SUBJECT subject attribute O is not allowed/);
  t.is(refused.stderr.trim().split('\n').length, 1, 'one line, no stack trace');
  t.is(refused.stdout, '');

  const status = cli(['status', '--json', '--config', s.configPath]);
  const st = JSON.parse(status.stdout);
  t.is(st.issued, 1);
  t.is(st.rejected.POLICY_SUBJECT, 1);
  t.is(st.replays, 1);
  t.true(st.local_ca_days_left > 3000);
});

test('a development station may listen on every interface, and --http is held to the config\'s rule on a production one', (t) => {
  const dev = stationConfig({ production: false, extra: '[links]\nhttp = "0.0.0.0:8080"' });
  t.is(dev.config.links.http, '0.0.0.0:8080');
  const prod = stationConfig();
  const r = cli(['serve', '--config', prod.configPath, '--http', '0.0.0.0:8443']);
  t.is(r.status, 64);
  t.regex(r.stderr, /^ERROR USAGE --http 0\.0\.0\.0:8443 listens on every interface/);
});

test('a bad config gets one line naming the key', (t) => {
  const s = stationConfig();
  const text = readFileSync(s.configPath, 'utf8');
  const check = (mutated: string, why: RegExp): void => {
    const p = join(s.dir, `bad-${Math.random().toString(16).slice(2)}.toml`);
    writeFileSync(p, mutated);
    const r = cli(['status', '--config', p]);
    t.is(r.status, 64);
    t.regex(r.stderr, why);
    t.is(r.stderr.trim().split('\n').length, 1);
  };
  check(text.replace('[station]', '[station]\nidd = "x"'), /station\.idd: unknown key/);
  check(text.replace(/factory = .*\n/, ''), /station\.factory: /);
  check(text.replace('production = true', 'production = "yes"'), /station\.production: .*boolean/);
  check(text.replace('validity_days = 7300', 'validity_days = -1'), /ca\.validity_days: /);
  check(text.replace(/owner = .*\n/, 'owner = "bob"\n'), /ca\.owner: /);
  check(text.replace('[policy]', '[policy]\nallow_p384 = 1'), /policy\.allow_p384/);
  check(text + '\n[station]\n', /not valid TOML \(line \d+/);
  check(text.replace(/pin_file = .*\n/, ''), /token\.pin_env: give exactly one of pin_env or pin_file/);
  // Values that once loaded and then failed later, in a message that named no key or the wrong one.
  check(text.replace('device_id = "uuid"', 'device_id = "\\\\-[0-9]+"'), /policy\.device_id: not "uuid" nor a valid regular expression/);
  check(text.replace('[station]', '[station]\noperator = "ana\\u001b[31m"'), /station\.operator: contains a control character/);
  check(`${text}\n[links]\nhttp = "127.0.0.1:99999"\n`, /links\.http: HOST:PORT with a port from 1 to 65535/);
  check(`${text}\n[links]\nhttp = "127.0.0.1:0"\n`, /links\.http: HOST:PORT with a port from 1 to 65535/);
  // Short, octal and hex forms the resolver reads as 0.0.0.0 too, and IPv4-mapped IPv6 (every IPv4 interface on Linux).
  for (const everywhere of ['0.0.0.0:8080', '[::]:8080', '0:8080', '0.0:8080', '0.0.0:8080', '000.000.000.000:8080', '0x0:8080', '[::ffff:0:0]:8080', '[0:0:0:0:0:ffff:0:0]:8080']) {
    check(`${text}\n[links]\nhttp = "${everywhere}"\n`, /links\.http: listens on every interface, the LAN included, and the HTTP link has no authentication/);
  }
  // Other short forms are refused for what they are, not as every interface.
  for (const wide of ['０.０.０.０:8080', '0。0。0。0:8080', '１２７.１:8080']) {
    check(`${text}\n[links]\nhttp = "${wide}"\n`, /links\.http: is ".*", not plain ASCII/);
  }
  for (const odd of ['127.1:8080', '0177.0.0.1:8080', '2130706433:8080']) {
    check(`${text}\n[links]\nhttp = "${odd}"\n`, /links\.http: is [0-9.]+, an IPv4 address in a short, octal or hex form: write it as a plain dotted quad/);
  }
  // A value without its port once crashed every command (INTERNAL) before it could be named.
  for (const portless of ['8080', '192.168.7.1', '192.168.7.1:', 'localhost:http']) {
    check(`${text}\n[links]\nhttp = "${portless}"\n`, /^ERROR CONFIG .*links\.http: HOST:PORT/);
  }
  for (const [i, wide] of [['0', '/'], ['0', '/etc/line-signer'], ['1', '../../../../../../../../..']] as const) {
    const spool = i === '0' ? `["${wide}"]` : `["/media/usb", "${wide}"]`;
    check(`${text}\n[links]\nspool = ${spool}\n`, new RegExp(`links\\.spool\\.${i}: a spool folder must be a folder of its own, at least two levels deep`));
  }
  check(text.replace(/ledger = .*\n/, `ledger = "/tmp/${'l'.repeat(110)}.db"\n`), /station\.ledger: the path is too long for the control socket beside it/);
  // A spool folder that is a symlink to a system folder: the unit's ReadWritePaths= would follow it.
  symlinkSync('/etc', join(s.dir, 'etc-link'));
  check(`${text}\n[links]\nspool = ["${join(s.dir, 'etc-link')}"]\n`, /links\.spool\.0: a spool folder must be .* is \/etc\)/);
  const missing = cli(['status', '--config', join(s.dir, 'nope.toml')]);
  t.regex(missing.stderr, /^ERROR CONFIG cannot read config/);
});

test('a wrong PIN is one clear message; the PIN appears nowhere; a readable PIN file is refused', async (t) => {
  const s = await testStation();
  await s.close();
  const text = readFileSync(s.configPath, 'utf8');
  const wrongPin = join(s.dir, 'wrong-pin');
  writeFileSync(wrongPin, '99999999', { mode: 0o600 });
  const cfg = join(s.dir, 'wrong.toml');
  writeFileSync(cfg, text.replace(/pin_file = .*\n/, `pin_file = "${wrongPin}"\n`));
  const { csr } = opensslCsr(s.dir);
  const csrPath = join(s.dir, 'd.der');
  writeFileSync(csrPath, csr);
  const r = cli(['sign', csrPath, '--config', cfg]);
  t.not(r.status, 0);
  t.regex(r.stderr, /^ERROR TOKEN_PIN the token refused the PIN \(CKR_PIN_INCORRECT\); not retried/);
  t.false(r.stderr.includes('99999999'));
  t.false(r.stdout.includes('99999999'));
  t.false(readFileSync(s.config.station.ledger).includes('99999999'));
  t.false(readFileSync(s.config.station.ledger).includes(PIN));

  chmodSync(wrongPin, 0o644);
  const open = cli(['sign', csrPath, '--config', cfg]);
  t.regex(open.stderr, /^ERROR TOKEN_PIN token\.pin_file: .* is readable by group or others/);

  const envCfg = join(s.dir, 'env.toml');
  writeFileSync(envCfg, text.replace(/pin_file = .*\n/, 'pin_env = "LS_TEST_PIN"\n'));
  const noEnv = cli(['sign', csrPath, '--config', envCfg], { env: { LS_TEST_PIN: '' } });
  t.regex(noEnv.stderr, /^ERROR TOKEN_PIN token\.pin_env: environment variable LS_TEST_PIN is not set/);
  const withEnv = cli(['sign', csrPath, '--config', envCfg], { env: { LS_TEST_PIN: PIN } });
  t.is(withEnv.status, 0, withEnv.stderr);
});

test('unknown commands and missing arguments are usage errors, not stack traces', (t) => {
  const r = cli(['frobnicate']);
  t.is(r.status, 64);
  t.regex(r.stderr, /^ERROR USAGE /);
  t.notRegex(r.stderr, /at .*\.js:\d+/);
});

test('operator commands: what the operator typed is checked as client text and every error line is printable; an order quantity stays in range', async (t) => {
  const s = await testStation();
  await s.close();
  const revoke = cli(['ledger', 'revoke', '\x1b[31mRED\u202e', '--reason', 'x', '--config', s.configPath]);
  t.is(revoke.status, 64);
  // Named as the command line names it (DEVICE), not by the request's field name.
  t.regex(revoke.stderr, /^ERROR USAGE DEVICE contains a control character/);
  t.regex(revoke.stderr, /^[\x20-\x7e\n]*$/, 'printable');
  const unknown = cli(['ledger', 'revoke', 'no-such-d\u00e9vice', '--reason', 'x', '--config', s.configPath]);
  t.is(unknown.status, 64);
  t.regex(unknown.stderr, /^ERROR USAGE no device id or serial no-such-d\\u00e9vice in this ledger/);
  for (const q of ['1e21', '0', '10000001']) {
    const big = cli(['order', 'open', 'BIG', '--quantity', q, '--config', s.configPath]);
    t.is(big.status, 64, q);
    t.regex(big.stderr, /--quantity: a whole number/);
  }
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 0, 'nothing was written');
});

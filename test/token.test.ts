import test from 'ava';
import { createHash, verify } from 'node:crypto';
import { spawn } from 'node:child_process';
import pkcs11js from 'pkcs11js';
import { Pkcs11Token } from '../src/token/index.js';
import { LineSignerError } from '../src/errors.js';
import { PIN, SOFTHSM_MODULE, TOKEN_LABEL, testPki } from './helpers/pki.js';

function open(pin = PIN): Pkcs11Token {
  testPki();
  return Pkcs11Token.open({ module: SOFTHSM_MODULE, tokenLabel: TOKEN_LABEL, pin });
}

test('signatures verify with the key the token reports, and signing is asynchronous', async (t) => {
  const token = open();
  t.teardown(() => token.close());
  token.generateKey('sign-test');
  const signer = token.signer('sign-test');
  const digest = createHash('sha256').update('hello').digest();
  let ticked = false;
  setImmediate(() => (ticked = true));
  const pending = signer.sign(digest);
  t.true(pending instanceof Promise);
  const sig = await pending;
  t.true(ticked, 'the event loop ran while the token signed');
  t.true(verify('sha256', Buffer.from('hello'), signer.publicKey(), sig));
  // Many at once on one session are queued, never CKR_OPERATION_ACTIVE.
  const many = await Promise.all(Array.from({ length: 50 }, () => signer.sign(digest)));
  t.true(many.every((s) => verify('sha256', Buffer.from('hello'), signer.publicKey(), s)));
});

test('a session that dies underneath is reopened and the sign goes through', async (t) => {
  const token = open();
  t.teardown(() => token.close());
  token.generateKey('reopen-test');
  const signer = token.signer('reopen-test');
  const digest = createHash('sha256').update('x').digest();
  // What a token reset or a pulled USB token does to an open session.
  const inner = token as unknown as { p11: pkcs11js.PKCS11; session: Buffer };
  inner.p11.C_CloseSession(inner.session);
  const sig = await signer.sign(digest);
  t.true(verify('sha256', Buffer.from('x'), signer.publicKey(), sig));
});

// PKCS#11 login state belongs to the process, not the session: once any
// session has logged in, C_Login answers CKR_USER_ALREADY_LOGGED_IN. So this
// runs first (ava runs serial tests before the others).
test.serial('a wrong PIN is TOKEN_PIN, says it is not retried, and does not contain the PIN', (t) => {
  const err = t.throws(() => open('00000000'), { instanceOf: LineSignerError });
  t.is(err!.code, 'TOKEN_PIN');
  t.regex(err!.message, /not retried/);
  t.false(err!.message.includes('00000000'));
});

test('a missing token or key is TOKEN_UNAVAILABLE with a clear message', (t) => {
  testPki();
  const err = t.throws(() => Pkcs11Token.open({ module: SOFTHSM_MODULE, tokenLabel: 'no-such-token', pin: PIN }), { instanceOf: LineSignerError });
  t.is(err!.code, 'TOKEN_UNAVAILABLE');
  t.regex(err!.message, /no token labelled "no-such-token"/);
  const token = open();
  t.teardown(() => token.close());
  const e2 = t.throws(() => token.signer('no-such-key'), { instanceOf: LineSignerError });
  t.regex(e2!.message, /no key labelled "no-such-key"/);
});

test('a data object another process keeps replacing is always read: found, then gone before its value is read, is looked for again', async (t) => {
  const token = open();
  t.teardown(() => token.close());
  const label = `shared-${process.pid}`;
  token.writeData(label, Buffer.from('first'));
  // Another process (as the serving station is to `ledger verify`) replaces it over and over.
  const writer = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `const { Pkcs11Token } = await import(${JSON.stringify(new URL('../src/token/index.js', import.meta.url).href)});
       const t = Pkcs11Token.open({ module: ${JSON.stringify(SOFTHSM_MODULE)}, tokenLabel: ${JSON.stringify(TOKEN_LABEL)}, pin: ${JSON.stringify(PIN)} });
       for (let i = 0; i < 600; i++) t.writeData(${JSON.stringify(label)}, Buffer.from('value ' + i));
       t.close();`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  writer.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => writer.on('exit', resolve));
  let reads = 0;
  let done = false;
  void exited.then(() => (done = true));
  while (!done) {
    const values = token.readData(label);
    t.true(values.length >= 1, 'some value is always there');
    t.true(values.every((v) => /^(first|value \d+)$/.test(v.toString())));
    reads++;
    await new Promise((r) => setImmediate(r));
  }
  t.is(await exited, 0, stderr);
  t.true(reads > 50, `only ${reads} reads overlapped the writer`);
});

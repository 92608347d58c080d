import test, { type ExecutionContext } from 'ava';
import { createHash, verify } from 'node:crypto';
import { spawn } from 'node:child_process';
import pkcs11js from 'pkcs11js';
import { HoldGate, Pkcs11Token, WorkerSigner } from '../src/token/index.js';
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

/** A held signature by a fresh key, and whether the event loop ran while it was made. */
async function heldSignature(t: ExecutionContext, label: string, beforeSigning: (token: Pkcs11Token) => void = () => undefined): Promise<{ verifies: boolean; loopRan: boolean }> {
  const token = open();
  t.teardown(() => token.close());
  token.generateKey(label);
  const signer = token.signer(label);
  beforeSigning(token);
  let loopRan = false;
  setImmediate(() => (loopRan = true));
  const sig = await signer.sign(createHash('sha256').update(label).digest(), { hold: true });
  return { verifies: verify('sha256', Buffer.from(label), signer.publicKey(), sig), loopRan };
}

test('a signature made holding the thread is made before the event loop runs again, and verifies', async (t) => {
  t.deepEqual(await heldSignature(t, 'held-test'), { verifies: true, loopRan: false });
});

test('a held signature whose session died is retried on the pool, not held again: a token timing out holds the thread once', async (t) => {
  // What a token reset or a pulled USB token does to an open session.
  const closeSession = (token: Pkcs11Token): void => {
    const inner = token as unknown as { p11: pkcs11js.PKCS11; session: Buffer };
    inner.p11.C_CloseSession(inner.session);
  };
  t.deepEqual(await heldSignature(t, 'held-retry-test', closeSession), { verifies: true, loopRan: true }, 'the event loop ran while the retry signed');
});

test('HoldGate: sixteen lone signatures in a row under the limit let the next hold the thread; one at or over it sends them back to the pool until sixteen more', (t) => {
  const gate = new HoldGate(5, 16);
  for (let i = 0; i < 15; i++) gate.record(0.3);
  t.false(gate.allows);
  gate.record(4.9);
  t.true(gate.allows);
  gate.record(5);
  t.false(gate.allows, 'at the limit is slow');
  for (let i = 0; i < 15; i++) gate.record(1);
  t.false(gate.allows);
  gate.record(1);
  t.true(gate.allows);
  gate.record(80);
  t.false(gate.allows);
});

test('a lone signature holds the links thread only once the token has shown it signs fast, a token that turns slow holds it once at most, and a signature with others in flight never holds it', async (t) => {
  const token = open();
  t.teardown(() => token.close());
  token.generateKey('hold-test');
  const inner = token.signer('hold-test');
  // The token's own signature, then as much time as `slowMs` says: held (the thread busy) or awaited.
  let slowMs = 0;
  const holds: boolean[] = [];
  const nearby = {
    async sign(digest: Uint8Array, hint?: { hold?: boolean }): Promise<Uint8Array> {
      holds.push(hint?.hold === true);
      const sig = await inner.sign(digest, hint);
      if (slowMs > 0 && hint?.hold) for (const until = performance.now() + slowMs; performance.now() < until; );
      else if (slowMs > 0) await new Promise((r) => setTimeout(r, slowMs));
      return sig;
    },
  };
  // A 200 ms limit, so that a loaded test machine does not make SoftHSM2 look slow.
  const signer = new WorkerSigner({ module: SOFTHSM_MODULE, tokenLabel: TOKEN_LABEL, pin: PIN, keyLabel: 'hold-test' }, { spki: inner.publicKeySpki(), curve: 'P-256' }, nearby, 1, new HoldGate(200, 16));
  t.teardown(() => signer.close());
  const digest = createHash('sha256').update('hold').digest();
  const lone = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) t.true(verify('sha256', Buffer.from('hold'), inner.publicKey(), await signer.sign(digest, { alone: true })));
  };
  await lone(16);
  t.deepEqual(holds, Array(16).fill(false), 'the first sixteen on the pool');
  await lone(2);
  t.deepEqual(holds.slice(16), [true, true], 'then holding the thread');
  slowMs = 250;
  await lone(3);
  t.deepEqual(holds.slice(18), [true, false, false], 'the token turned slow: held once, then on the pool');
  slowMs = 0;
  await lone(16);
  t.true(holds.slice(21).every((h) => !h), 'sixteen fast ones again before the next holds');
  await lone(1);
  t.true(holds[37]);
  // Two at once: the second is not alone, and goes to the signing worker, never through here.
  const before = holds.length;
  const both = await Promise.all([signer.sign(digest, { alone: true }), signer.sign(digest, { alone: true })]);
  t.true(both.every((s) => verify('sha256', Buffer.from('hold'), inner.publicKey(), s)));
  t.is(holds.length, before + 1, 'one of the two through this thread, the other through the worker');
});

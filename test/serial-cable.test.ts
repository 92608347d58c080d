/**
 * Serial links survive their cable: a port that vanishes in the middle of
 * a reply, a jig that stops reading, a port held by another program, a
 * port that does not exist. Real pseudo-terminals (socat); a "jig that
 * never reads" is the jig side opened with a plain file descriptor that
 * nobody reads, so the station's replies pile up until the pty is full.
 */
import test from 'ava';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants, openSync, readSync, realpathSync, rmSync, writeSync } from 'node:fs';
import { open as fsOpen, stat as fsStat } from 'node:fs/promises';
import { SerialLink } from '../src/links/index.js';
import { openProblem } from '../src/links/serial.js';
import type { LinkEvent } from '../src/links/types.js';
import { MAX_QUEUED } from '../src/links/j1/session.js';
import type { Signer } from '../src/token/signer.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { BIN } from './helpers/cli.js';
import { frame, parseReply, TestJig } from './helpers/jig.js';
import { FACTORY, testStation, uuid, type TestStation } from './helpers/pki.js';
import { ptyPair, type PtyPair } from './helpers/pty.js';
import { waitFor } from './helpers/served.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Resolves to how long `p` took, or rejects when it takes longer than `ms`. */
async function finishesWithin(p: Promise<unknown>, ms: number): Promise<number> {
  const t0 = performance.now();
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`not done within ${ms} ms`)), ms)))]);
  clearTimeout(timer);
  return performance.now() - t0;
}

/**
 * A jig that sends requests and never reads a reply: `count` CA requests
 * (each answered with about 1 KB) written without blocking this process;
 * returns the descriptor, to be closed by the caller.
 */
async function neverReadingJig(path: string, count: number): Promise<number> {
  const fd = openSync(path, constants.O_RDWR | constants.O_NOCTTY | constants.O_NONBLOCK);
  let pending = Buffer.from(Array.from({ length: count }, (_, i) => frame('CA', `f${i}`, null)).join(''), 'latin1');
  for (let tries = 0; pending.length > 0 && tries < 200; tries++) {
    try {
      pending = pending.subarray(writeSync(fd, pending));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
      await sleep(10);
    }
  }
  return fd;
}

interface Rig {
  s: TestStation;
  ptys: PtyPair[];
  links: SerialLink[];
  events: LinkEvent[];
  close(): Promise<void>;
}

async function rig(n: number): Promise<Rig> {
  const s = await testStation();
  const ptys = await Promise.all(Array.from({ length: n }, (_, i) => ptyPair(s.dir, `c${i}`)));
  const events: LinkEvent[] = [];
  const links = ptys.map((p) => new SerialLink(s.station, { path: p.station, baud: 115200, idleTimeoutMs: 10_000, reopenMs: 100 }, (e) => events.push(e)));
  await Promise.all(links.map((l) => l.start()));
  await waitFor(() => links.every((l) => l.status.state === 'open'));
  return {
    s,
    ptys,
    links,
    events,
    async close() {
      await Promise.all(links.map((l) => l.stop()));
      await Promise.all(ptys.map((p) => p.kill()));
      await s.close();
    },
  };
}

test('a port that vanishes in the middle of a reply: the link reopens when it returns and answers again; stop() is prompt', async (t) => {
  const x = await rig(2);
  t.teardown(() => x.close());
  const fd = await neverReadingJig(x.ptys[0]!.jig, 400);
  await sleep(500); // replies are stuck half-way in the pty now
  t.true(x.links[0]!.pending > 0, 'the link is in the middle of replying');
  // Pull the cable: socat and its device nodes go away while the reply is being written.
  await x.ptys[0]!.kill();
  closeSync(fd);
  rmSync(x.ptys[0]!.station, { force: true });
  await waitFor(() => x.links[0]!.status.state === 'waiting');
  // Plug it back in under the same name.
  x.ptys[0] = await ptyPair(x.s.dir, 'c0');
  await waitFor(() => x.links[0]!.status.state === 'open');
  const jig = await TestJig.open(x.ptys[0]!.jig);
  t.teardown(() => jig.close());
  const r = await jig.request('PING', 'back', null);
  t.deepEqual([r.type, r.id], ['PONG', 'back']);
  const other = await TestJig.open(x.ptys[1]!.jig);
  t.teardown(() => other.close());
  t.is((await other.request('PING', 'other', null)).type, 'PONG');
  const took = await finishesWithin(Promise.all(x.links.map((l) => l.stop())), 2000);
  t.log(`stop() took ${took.toFixed(0)} ms`);
});

test('a jig that stops reading blocks only its own link: the others answer, its reply is given up at the deadline, stop() within 2 s', async (t) => {
  const x = await rig(3);
  t.teardown(() => x.close());
  const fd = await neverReadingJig(x.ptys[0]!.jig, 400);
  t.teardown(() => closeSync(fd));
  const jigs = await Promise.all([1, 2].map((i) => TestJig.open(x.ptys[i]!.jig)));
  t.teardown(() => Promise.all(jigs.map((j) => j.close())));
  // While link 0 is wedged, links 1 and 2 keep answering (and file I/O keeps working: the station signs).
  for (let i = 0; i < 20; i++) {
    for (const jig of jigs) t.is((await jig.request('PING', `p${i}`, null, 2000)).type, 'PONG');
    await sleep(50);
  }
  // The wedged reply is given up at its deadline: the link says why and reopens the port.
  await waitFor(() => x.events.some((e) => e.kind === 'state' && e.link === x.links[0]!.status.name && e.state === 'waiting' && /jig not reading/.test(e.detail ?? '')), 8000);
  await waitFor(() => x.links[0]!.status.state === 'open');
  // The jig reads at last: what was stuck ends in half a reply. Its next request's reply is a line of its own.
  const buf = Buffer.alloc(65536);
  let seen = '';
  const readAll = async (ms: number): Promise<void> => {
    const until = performance.now() + ms;
    while (performance.now() < until) {
      try {
        seen += buf.toString('latin1', 0, readSync(fd, buf));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
        await sleep(10);
      }
    }
  };
  await readAll(300);
  writeSync(fd, frame('PING', 'after', null));
  await readAll(500);
  t.true(seen.split('\n').some((l) => l.startsWith('J1 PONG after ')), `the PONG on a line of its own: ${JSON.stringify(seen.slice(-120))}`);
  const took = await finishesWithin(Promise.all(x.links.map((l) => l.stop())), 2000);
  t.log(`stop() with a wedged port took ${took.toFixed(0)} ms`);
  t.deepEqual(
    x.links.map((l) => l.status.state),
    ['stopped', 'stopped', 'stopped'],
  );
});

test('a jig that pipelines requests and reads its replies slowly gets every one: a reply waiting for room is not forgotten while the port also waits for input', async (t) => {
  const x = await rig(1);
  t.teardown(() => x.close());
  const csr = makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der;
  t.true((await x.s.station.handle({ csr, link: 'first' })).ok);
  const fd = openSync(x.ptys[0]!.jig, constants.O_RDWR | constants.O_NOCTTY | constants.O_NONBLOCK);
  t.teardown(() => closeSync(fd));
  // Batches of 8 SIGNs of that CSR (each answered with its certificate, about 1.7 KB), read as a slow
  // UART would (256 bytes every 10 ms) while nothing more is sent: the port fills again and again.
  // A batch whose replies stop coming for 2.5 s was left half-written (the link gives it up at 5 s).
  const buf = Buffer.alloc(256);
  const batches = 10;
  const PER_BATCH = 8;
  let answered = 0;
  for (let b = 0; b < batches; b++) {
    writeSync(fd, Buffer.from(Array.from({ length: PER_BATCH }, (_, i) => frame('SIGN', `b${b}r${i}`, Buffer.from(csr))).join(''), 'latin1'));
    let got = 0;
    let rest = '';
    let lastByte = performance.now();
    while (got < PER_BATCH && performance.now() - lastByte < 2500) {
      try {
        rest += buf.toString('latin1', 0, readSync(fd, buf));
        lastByte = performance.now();
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
      }
      const parts = rest.split('\n');
      rest = parts.pop()!;
      for (const line of parts) {
        const r = parseReply(line);
        t.deepEqual([r.type, r.id], ['CERT', `b${b}r${got}`]);
        got++;
      }
      await sleep(10);
    }
    answered += got;
    if (got < PER_BATCH) return t.fail(`batch ${b}: ${got} of ${PER_BATCH} replies, then nothing for 2.5 s (${rest.length} bytes of a reply)`);
  }
  t.is(answered, batches * PER_BATCH);
  t.false(x.events.some((e) => e.kind === 'state' && e.state === 'waiting'), 'no reply given up, no port reopened');
});

test('stop() while a reply is stuck in a port nobody reads: done within 2 s, the stuck reply abandoned', async (t) => {
  const x = await rig(1);
  t.teardown(() => x.close());
  const fd = await neverReadingJig(x.ptys[0]!.jig, 400);
  t.teardown(() => closeSync(fd));
  await sleep(700);
  t.true(x.links[0]!.pending > 0, 'a reply is stuck');
  t.is(x.links[0]!.status.state, 'open', 'before the write deadline');
  const took = await finishesWithin(x.links[0]!.stop(), 2000);
  t.log(`stop() with a reply stuck took ${took.toFixed(0)} ms`);
  t.is(x.links[0]!.status.state, 'stopped');
});

test('serve stops on SIGTERM even while a jig on one of its links has stopped reading', async (t) => {
  const s = await testStation();
  await s.close(); // the serve process opens the station itself
  const pty = await ptyPair(s.dir, 'term');
  t.teardown(() => pty.kill());
  const child = spawn(process.execPath, [BIN, 'serve', '--config', s.configPath, '--json', '--serial', pty.station], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => void child.kill('SIGKILL'));
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  await waitFor(() => out.includes('"state":"open"'), 15_000);
  const fd = await neverReadingJig(pty.jig, 400);
  t.teardown(() => closeSync(fd));
  await sleep(500);
  child.kill('SIGTERM');
  const code = await Promise.race([exited, sleep(4000).then(() => 'still running')]);
  t.is(code, 0, out);
});

test('a jig flooding SIGN faster than the station answers: at most MAX_QUEUED + 1 requests held, the rest left in the port; then all answered once, in order', async (t) => {
  // The token is stuck until the gate opens; every request is the same CSR, so all but the first are replays.
  let open: () => void = () => undefined;
  const gate = new Promise<void>((r) => (open = r));
  const gated = (inner: Signer): Signer => ({ ...inner, publicKeySpki: () => inner.publicKeySpki(), publicKey: () => inner.publicKey(), hash: inner.hash, signatureAlgorithm: inner.signatureAlgorithm, sign: (d) => gate.then(() => inner.sign(d)) });
  const s = await testStation({}, { wrapSigner: gated });
  t.teardown(() => s.close());
  const pty = await ptyPair(s.dir, 'flood');
  t.teardown(() => pty.kill());
  const link = new SerialLink(s.station, { path: pty.station, baud: 115200, idleTimeoutMs: 10_000, reopenMs: 100 });
  t.teardown(() => link.stop());
  await link.start();
  await waitFor(() => link.status.state === 'open');
  const jig = await TestJig.open(pty.jig);
  t.teardown(() => jig.close());
  const csr = Buffer.from(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der);
  // 200 requests, about 80 KiB: what socat's relay can hold while the station reads none of it.
  // (socat relays both ways in one thread, so a larger flood into a station that has stopped
  // reading would also hold up the replies: the write deadline then resets the link.)
  const n = 200;
  await jig.send(Array.from({ length: n }, (_, i) => frame('SIGN', `f${i}`, csr)).join(''));
  await sleep(500);
  t.log(`with the token stuck: ${link.pending} requests held by the session`);
  t.true(link.pending >= 1 && link.pending <= MAX_QUEUED + 1, `pending ${link.pending}`);
  open();
  let first: string | null = null;
  for (let i = 0; i < n; i++) {
    const r = await jig.reply(20_000);
    t.is(r.id, `f${i}`);
    if (r.type !== 'CERT') t.fail(`${r.id}: ${r.type} ${r.code ?? ''} ${r.message ?? ''}`);
    first ??= r.body!.toString();
    if (r.body!.toString() !== first) t.fail(`${r.id}: another certificate`);
  }
  t.is(s.ledger.issuedCount(), 1);
  t.is(await jig.nextLine(200), null, 'one reply each');
  t.is(link.status.state, 'open', 'no reset on the way');
});

/** A process holding the port with an exclusive flock, as a second serialport user (or minicom) would. */
function holdWithFlock(path: string): Promise<ChildProcess> {
  const child = spawn('flock', ['--exclusive', '--close', path, 'sleep', '60'], { stdio: 'ignore' });
  return new Promise((resolve) => setTimeout(() => resolve(child), 200));
}

test('open failures have reasons: no such device, held by pid N; the link retries and opens when free; other links unaffected', async (t) => {
  const x = await rig(1);
  t.teardown(() => x.close());
  const missing = new SerialLink(x.s.station, { path: `${x.s.dir}/no-such-tty`, baud: 115200, idleTimeoutMs: 10_000, reopenMs: 50 });
  t.teardown(() => missing.stop());
  await missing.start();
  await waitFor(() => missing.status.state === 'waiting');
  t.is(missing.status.reason, 'no such device');

  const held = await ptyPair(x.s.dir, 'held');
  t.teardown(() => held.kill());
  const holder = await holdWithFlock(held.station);
  t.teardown(() => void holder.kill());
  const busy = new SerialLink(x.s.station, { path: held.station, baud: 115200, idleTimeoutMs: 10_000, reopenMs: 50 });
  t.teardown(() => busy.stop());
  await busy.start();
  await waitFor(() => busy.status.state === 'waiting');
  t.is(busy.status.reason, `held by pid ${holder.pid}`);

  const jig = await TestJig.open(x.ptys[0]!.jig);
  t.teardown(() => jig.close());
  t.is((await jig.request('PING', 'fine', null)).type, 'PONG', 'the other link serves meanwhile');

  holder.kill();
  await waitFor(() => busy.status.state === 'open', 8000);
  const freed = await TestJig.open(held.jig);
  t.teardown(() => freed.close());
  t.is((await freed.request('PING', 'freed', null)).type, 'PONG');
});

test('open failures have reasons: permission denied, for a station not running as root', async (t) => {
  if (process.getuid?.() === 0) {
    // root opens anything: run the link as nobody, on a pty only root may open.
    const s = await testStation();
    t.teardown(() => s.close());
    const pty = await ptyPair(s.dir, 'perm');
    t.teardown(() => pty.kill());
    // The probe runs from -e: the test folders are private to root. The pty's real node is /dev/pts/N, root's alone.
    const script = `import { SerialLink } from ${JSON.stringify(new URL('../src/links/serial.js', import.meta.url).href)};
       const link = new SerialLink({}, { path: ${JSON.stringify(realpathSync(pty.station))}, baud: 115200, idleTimeoutMs: 1000, reopenMs: 50 });
       await link.start();
       const end = Date.now() + 3000;
       while (link.status.state !== 'waiting' && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
       process.stdout.write(JSON.stringify(link.status));
       await link.stop();`;
    const r = await new Promise<string>((resolve) => {
      const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.on('close', () => resolve(out));
    });
    const status = JSON.parse(r) as { state: string; reason: string };
    t.deepEqual([status.state, status.reason], ['waiting', 'permission denied']);
  }
  // The messages node-serialport gives, as the live view shows them.
  t.is(await openProblem(new Error('Error: Permission denied, cannot open /dev/ttyS7'), '/dev/ttyS7'), 'permission denied');
  t.is(await openProblem(new Error('Error: No such file or directory, cannot open /dev/ttyACM3'), '/dev/ttyACM3'), 'no such device');
  t.is(await openProblem(new Error('Error Resource temporarily unavailable Cannot lock port'), '/nonexistent'), 'held by another program');
  t.is(await openProblem(new Error('Error: odd \u001b[31m thing'), '/dev/null'), 'Error: odd \\u001b[31m thing', 'shown printable');
});


test("libuv's four pool threads all held (a dying USB stick's reads, a slow signature on the pool): serial links still answer", async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const pty = await ptyPair(s.dir, 'pool');
  t.teardown(() => pty.kill());
  const link = new SerialLink(s.station, { path: pty.station, baud: 115200, idleTimeoutMs: 10_000 });
  await link.start();
  t.teardown(() => link.stop());
  await waitFor(() => link.status.state === 'open');
  // Opening a FIFO for reading waits, on a pool thread, for a writer: eight such opens hold every pool thread.
  const fifos = Array.from({ length: 8 }, (_, i) => `${s.dir}/held-${i}`);
  for (const f of fifos) execFileSync('mkfifo', [f]);
  const opens = fifos.map((f) => fsOpen(f, 'r'));
  const stat = fsStat(s.dir).then(() => 'answered');
  t.is(await Promise.race([stat, sleep(300).then(() => 'held')]), 'held', "the pool is held: a stat of the test's folder waits");
  try {
    // The jig in a process of its own, with a pool of its own.
    const script = `import { J1Client } from ${JSON.stringify(new URL('../src/jig/client.js', import.meta.url).href)};
       const jig = await J1Client.open(${JSON.stringify(pty.jig)});
       const types = [];
       for (let i = 0; i < 3; i++) types.push((await jig.request('PING', null, 2000, 1)).type);
       process.stdout.write(JSON.stringify(types));
       await jig.close();`;
    const out = await new Promise<string>((resolve) => {
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      let text = '';
      child.stdout.on('data', (d) => (text += d));
      child.on('close', () => resolve(text));
    });
    t.deepEqual(out ? JSON.parse(out) : out, ['PONG', 'PONG', 'PONG'], 'three PINGs answered while the pool is held');
  } finally {
    // A FIFO opened for reading and writing never waits, and lets the held opens through.
    const writers = fifos.map((f) => openSync(f, constants.O_RDWR | constants.O_NONBLOCK));
    for (const h of await Promise.all(opens)) await h.close();
    for (const fd of writers) closeSync(fd);
  }
  t.is(await stat, 'answered');
});

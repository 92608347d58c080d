import test from 'ava';
import { spawn, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import { pemEncode } from '../src/x509/index.js';
import { certFields, chainBlocks, csrSpki } from './helpers/cert.js';
import { FACTORY, openssl, opensslCsr, testPki, testStation, uuid } from './helpers/pki.js';

const OID = {
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  eku: '2.5.29.37',
  ski: '2.5.29.14',
  aki: '2.5.29.35',
};

test('an openssl-made CSR is signed; the chain passes openssl verify -purpose sslclient and matches every row of the profile', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const deviceId = uuid();
  const { csr } = opensslCsr(s.dir, { subject: `/CN=${deviceId}/OU=${FACTORY}/businessCategory=production` });
  const before = Date.now();
  const r = await s.station.handle({ csr, link: 'test' });
  if (!r.ok) return t.fail(`${r.code} ${r.message}`);

  // The chain: device certificate, then the local-ca.
  const [deviceDer, caDer, ...rest] = chainBlocks(r.chain);
  t.is(rest.length, 0);
  t.deepEqual(caDer, chainBlocks(readFileSync(s.config.ca.certificate, 'utf8'))[0]);
  const chainPath = join(s.dir, 'chain.pem');
  writeFileSync(chainPath, r.chain);
  const out = openssl(['verify', '-purpose', 'sslclient', '-CAfile', testPki().rootPem, '-untrusted', chainPath, chainPath]).toString();
  t.regex(out, /: OK/);

  const c = certFields(deviceDer!);
  const ca = certFields(caDer!);
  t.is(c.pkijs.version, 2, 'version 3');
  // serial: 16 random bytes, top bit cleared, never zero; DER drops leading zero bytes
  const serialBytes = c.pkijs.serialNumber.valueBlock.valueHexView;
  t.true(serialBytes.length <= 16 && serialBytes.length >= 14);
  t.is(serialBytes[0]! & 0x80, 0);
  // As `openssl x509 -serial` prints it (an even count of hex digits), here in lowercase.
  t.is(c.x509.serialNumber.toLowerCase(), r.serial);
  t.is(c.pkijs.signatureAlgorithm.algorithmId, '1.2.840.10045.4.3.2', 'ecdsa-with-SHA256');
  t.is(c.pkijs.signature.algorithmId, '1.2.840.10045.4.3.2');
  t.deepEqual(c.raw.issuer, ca.raw.subject, 'issuer is the local-ca subject byte for byte');
  const nb = Date.parse(c.x509.validFrom);
  t.true(nb >= Math.floor(before / 1000) * 1000 - 1000 && nb <= Date.now());
  t.is(Date.parse(c.x509.validTo) - nb, 7300 * 86_400_000);
  t.is(c.raw.notBefore[0], 0x17, 'UTCTime before 2050');
  t.is(c.raw.notAfter[0], 0x17);
  t.is(c.x509.subject, `CN=${deviceId}\nOU=${FACTORY}\nbusinessCategory=production`);
  t.deepEqual(c.subjectTags, [12, 12, 12], 'UTF8String values');
  t.deepEqual(c.raw.spki, csrSpki(csr), 'public key byte for byte');

  const exts = new Map(c.pkijs.extensions!.map((e) => [e.extnID, e]));
  t.deepEqual([...exts.keys()].sort(), Object.values(OID).sort(), 'no other extensions');
  const bc = exts.get(OID.basicConstraints)!;
  t.true(bc.critical);
  t.false((bc.parsedValue as pkijs.BasicConstraints).cA);
  t.deepEqual([...bc.extnValue.valueBlock.valueHexView], [0x30, 0x00]);
  const ku = exts.get(OID.keyUsage)!;
  t.true(ku.critical);
  t.deepEqual([...ku.extnValue.valueBlock.valueHexView], [0x03, 0x02, 0x07, 0x80], 'digitalSignature only');
  const eku = exts.get(OID.eku)!;
  t.true(eku.critical);
  t.deepEqual((eku.parsedValue as pkijs.ExtKeyUsage).keyPurposes, ['1.3.6.1.5.5.7.3.2']);
  const ski = exts.get(OID.ski)!.parsedValue as asn1js.OctetString;
  const keyBits = c.pkijs.subjectPublicKeyInfo.subjectPublicKey.valueBlock.valueHexView;
  t.is(Buffer.from(ski.valueBlock.valueHexView).toString('hex'), createHash('sha1').update(keyBits).digest('hex'));
  const aki = exts.get(OID.aki)!.parsedValue as pkijs.AuthorityKeyIdentifier;
  const caSki = ca.pkijs.extensions!.find((e) => e.extnID === OID.ski)!.parsedValue as asn1js.OctetString;
  t.deepEqual(aki.keyIdentifier!.valueBlock.valueHexView, caSki.valueBlock.valueHexView);
  t.true(c.x509.verify(ca.x509.publicKey), 'signed by the local-ca');

  // Recorded before it was returned.
  const row = s.ledger.findByCsrHash(createHash('sha256').update(csr).digest('hex'));
  t.truthy(row);
  t.is(row!.serial, r.serial);
  t.is(row!.deviceId, deviceId);
  t.deepEqual(Buffer.from(row!.certificate), Buffer.from(deviceDer!));
});

test('the issued chain completes a mutual-TLS handshake with openssl s_server -Verify trusting the root and the local-ca', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const p = testPki();
  const deviceId = uuid();
  const { csr, keyPath } = opensslCsr(s.dir, { subject: `/CN=${deviceId}/OU=${FACTORY}/businessCategory=production` });
  const r = await s.station.handle({ csr, link: 'test' });
  if (!r.ok) return t.fail(r.message);
  const chainPath = join(s.dir, 'client.chained');
  writeFileSync(chainPath, r.chain);
  // A gateway certificate from the factory root, and a trust file with the root and the local-ca.
  const gwKey = join(s.dir, 'gw.key');
  const gwCsr = join(s.dir, 'gw.csr');
  const gwPem = join(s.dir, 'gw.pem');
  openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', gwKey, '-subj', '/CN=localhost', '-out', gwCsr]);
  openssl(['x509', '-req', '-in', gwCsr, '-CA', p.rootPem, '-CAkey', p.rootKey, '-set_serial', '7', '-days', '30', '-out', gwPem]);
  const trust = join(s.dir, 'trust.pem');
  writeFileSync(trust, readFileSync(p.rootPem, 'utf8') + readFileSync(s.config.ca.certificate, 'utf8'));
  const port = await freePort();
  const server = spawn('openssl', ['s_server', '-accept', String(port), '-cert', gwPem, '-key', gwKey, '-CAfile', trust, '-Verify', '2', '-verify_return_error', '-naccept', '1', '-www'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let serverOut = '';
  server.stdout.on('data', (d) => (serverOut += d));
  server.stderr.on('data', (d) => (serverOut += d));
  t.teardown(() => server.kill());
  await waitFor(() => serverOut.includes('ACCEPT'), 5000);
  const client = execFileSync('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-cert', chainPath, '-key', keyPath, '-CAfile', p.rootPem, '-verify_return_error', '-quiet'], { input: 'GET / HTTP/1.0\r\n\r\n', timeout: 10_000 }).toString();
  // -www answers with the session, including the client certificate it verified.
  t.regex(client, /HTTP\/1\.0 200 ok/);
  t.regex(client, new RegExp(`CN\\s*=\\s*${deviceId}`));
  await waitFor(() => server.exitCode !== null, 5000);
  t.notRegex(serverOut, /verify error|alert/i);
});

test('GeneralizedTime from 2050 on', async (t) => {
  const s = await testStation({ validityDays: 10000 });
  t.teardown(() => s.close());
  const { csr } = opensslCsr(s.dir);
  const r = await s.station.handle({ csr, link: 'test' });
  if (!r.ok) return t.fail(r.message);
  const c = certFields(chainBlocks(r.chain)[0]!);
  t.is(c.raw.notBefore[0], 0x17);
  t.is(c.raw.notAfter[0], 0x18, 'GeneralizedTime');
  t.notRegex(Buffer.from(c.raw.notAfter).toString('latin1'), /\./, 'no fractional seconds');
  t.true(new Date(c.x509.validTo).getUTCFullYear() >= 2050);
  const text = openssl(['x509', '-noout', '-enddate'], r.chain).toString();
  t.regex(text, /notAfter=.*20[5-9]\d GMT/);
});

test('a retried CSR (PEM or DER, byte for byte the same request) gets the very same certificate and no second row', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const { csr } = opensslCsr(s.dir);
  const first = await s.station.handle({ csr, link: 'a' });
  const again = await s.station.handle({ csr, link: 'b' });
  const asPem = await s.station.handle({ csr: Buffer.from(pemEncode(csr, 'CERTIFICATE REQUEST')), link: 'c' });
  if (!first.ok || !again.ok || !asPem.ok) return t.fail();
  t.false(first.replayed);
  t.true(again.replayed);
  t.is(again.chain, first.chain);
  t.is(asPem.chain, first.chain);
  t.is(again.serial, first.serial);
  t.is(s.ledger.issuedCount(), 1);
  t.is(s.ledger.stats().replays, 2);
});

test('a new CSR for the same device and the same key is signed again (a device that lost its certificate)', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const id = uuid();
  const first = opensslCsr(s.dir, { subject: `/CN=${id}/OU=${FACTORY}/businessCategory=production` });
  const again = execFileSync('openssl', ['req', '-new', '-key', first.keyPath, '-subj', `/CN=${id}/OU=${FACTORY}/businessCategory=production`, '-outform', 'DER']);
  const a = await s.station.handle({ csr: first.csr, link: 't' });
  const b = await s.station.handle({ csr: new Uint8Array(again), link: 't' });
  t.true(a.ok && b.ok);
  if (a.ok && b.ok) t.not(a.serial, b.serial);
  t.is(s.ledger.issuedCount(), 2);
});

test('many concurrent requests: every one is signed once, serials are unique, the chain holds', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const { makeDeviceCsr } = await import('../src/x509/index.js');
  const csrs = Array.from({ length: 200 }, () => makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der);
  const results = await Promise.all(csrs.map((csr, i) => s.station.handle({ csr, link: `l${i % 8}` })));
  t.true(results.every((r) => r.ok));
  t.is(new Set(results.map((r) => (r.ok ? r.serial : ''))).size, 200);
  t.is(s.ledger.issuedCount(), 200);
  t.is(s.ledger.verifyChain(), null);
});

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

async function waitFor(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}

import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { loadConfig } from '../src/config/index.js';
import { join } from 'node:path';
import { caImport, caInit, caShow, openToken } from '../src/station/index.js';
import { LineSignerError } from '../src/errors.js';
import { FACTORY, makeOpensslRoot, openssl, signCaCsrWithOpenssl, stationConfig, testPki } from './helpers/pki.js';

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

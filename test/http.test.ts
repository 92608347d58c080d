import test from 'ava';
import { request } from 'node:http';
import { connect, createServer, type AddressInfo } from 'node:net';
import { parse as parseToml } from 'smol-toml';
import { HttpLink } from '../src/links/http.js';
import { makeDeviceCsr, pemEncode } from '../src/x509/index.js';
import { FACTORY, testStation, uuid, type TestStation } from './helpers/pki.js';

const SOTA = '\n[sota]\ngateway = "https://ota-lite.example.com:8443"\nostree = "https://ota-lite.example.com:8443/treehub"\n';

/** The body the way lmp-device-register writes it: boost ptree's write_json. */
function ptreeJson(fields: Record<string, unknown>): string {
  return JSON.stringify(fields, null, 4).replace(/\//g, '\\/') + '\n';
}

function deviceBody(overrides: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): { body: string; deviceId: string } {
  const deviceId = uuid();
  const csr = pemEncode(makeDeviceCsr({ deviceId, factory: FACTORY, production: true }).der, 'CERTIFICATE REQUEST');
  const body = ptreeJson({
    name: deviceId,
    uuid: deviceId,
    csr,
    'hardware-id': 'intel-corei7-64',
    'sota-config-dir': '/var/sota',
    'use-ostree-server': 'true',
    overrides: { pacman: { tags: '"main"' }, ...overrides },
    ...extra,
  });
  return { body, deviceId };
}

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

function send(port: number, method: string, body?: string, headers: Record<string, string> = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path: '/sign', method, agent: false, headers: { 'Content-type': 'application/json', 'OSF-TOKEN': 'na', ...headers } },
      (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, text }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

let station: Promise<{ s: TestStation; link: HttpLink }>;
test.before(() => {
  station = (async () => {
    const s = await testStation({ extra: SOTA });
    const link = new HttpLink(s.station, { listen: '127.0.0.1:0', sota: s.config.sota });
    await link.start();
    return { s, link };
  })();
});
test.after.always(async () => {
  const { s, link } = await station;
  await link.stop();
  await s.close();
});

test('HEAD then the POST lmp-device-register sends: 201 with exactly the four files, and a sota.toml with tags = "main"', async (t) => {
  const { s, link } = await station;
  const head = await send(link.port, 'HEAD');
  t.true(head.status < 500);
  const { body, deviceId } = deviceBody();
  t.true(body.includes('"sota-config-dir": "\\/var\\/sota"'), 'the escaped slashes really are in the body');
  const res = await send(link.port, 'POST', body);
  t.is(res.status, 201, res.text);
  const files = JSON.parse(res.text) as Record<string, string>;
  t.deepEqual(Object.keys(files).sort(), ['client.chained', 'client.pem', 'root.crt', 'sota.toml']);
  for (const [k, v] of Object.entries(files)) {
    t.is(typeof v, 'string');
    t.false(k.includes('/'));
  }
  t.is(files['root.crt'], s.station.rootPem);
  t.true(files['client.chained']!.startsWith(files['client.pem']!));
  t.true(files['client.pem']!.length > 0 && files['client.pem']!.split('-----BEGIN').length === 2);
  const toml = parseToml(files['sota.toml']!) as Record<string, Record<string, unknown>>;
  t.is(toml.pacman!.tags, 'main');
  t.is(toml.pacman!.type, 'ostree+compose_apps');
  t.is(toml.provision!.primary_ecu_hardware_id, 'intel-corei7-64');
  t.is(toml.tls!.server, 'https://ota-lite.example.com:8443');
  t.is(toml.import!.tls_clientcert_path, '/var/sota/client.pem');
  t.deepEqual(Object.keys(toml).sort(), ['import', 'pacman', 'provision', 'storage', 'tls', 'uptane']);
  const row = s.ledger.since(0);
  const rows = [...row].filter((r) => r.deviceId === deviceId);
  t.is(rows.length, 1);
  t.is(rows[0]!.hardwareId, 'intel-corei7-64');
  t.regex(rows[0]!.link, /^http:/);
});

test('a retry of a signed CSR gets its certificate again only with the hardware id and name recorded with it: another would set the device up for what was never checked', async (t) => {
  const { s, link } = await station;
  const deviceId = uuid();
  const csr = pemEncode(makeDeviceCsr({ deviceId, factory: FACTORY, production: true }).der, 'CERTIFICATE REQUEST');
  const body = (hardwareId: string, name?: string): string => ptreeJson({ ...(name ? { name } : {}), uuid: deviceId, csr, 'hardware-id': hardwareId, 'sota-config-dir': '/var/sota' });
  const first = await send(link.port, 'POST', body('imx8mm-a', `ord-${deviceId.slice(0, 8)}`));
  t.is(first.status, 201, first.text);
  const otherHardware = await send(link.port, 'POST', body('imx8mm-b', `ord-${deviceId.slice(0, 8)}`));
  t.is(otherHardware.status, 400, otherHardware.text);
  t.is((JSON.parse(otherHardware.text) as { code: string }).code, 'POLICY_SUBJECT');
  t.regex(otherHardware.text, /signed before \(seq \d+\) for hardware id \\?"imx8mm-a\\?"/);
  const otherName = await send(link.port, 'POST', body('imx8mm-a', `other-${deviceId.slice(0, 8)}`));
  t.is(otherName.status, 400, otherName.text);
  t.is((JSON.parse(otherName.text) as { code: string }).code, 'POLICY_SUBJECT');
  const same = await send(link.port, 'POST', body('imx8mm-a', `ord-${deviceId.slice(0, 8)}`));
  t.is(same.status, 201, same.text);
  const files = (r: { text: string }) => JSON.parse(r.text) as Record<string, string>;
  t.is(files(same)['client.pem'], files(first)['client.pem']);
  t.is((parseToml(files(same)['sota.toml']!) as Record<string, Record<string, unknown>>).provision!.primary_ecu_hardware_id, 'imx8mm-a');
  t.is([...s.ledger.since(0)].filter((r) => r.deviceId === deviceId).length, 1);
  // Signed first with no hardware id (as a J1 jig or the CLI sends it), then sent again with one: the station never checked that one.
  const bare = makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der;
  t.true((await s.station.handle({ csr: bare, link: 'test' })).ok);
  const added = await s.station.handle({ csr: bare, link: 'test', hardwareId: 'imx8mm-z' });
  t.is(!added.ok && added.code, 'POLICY_SUBJECT');
  t.regex(!added.ok ? added.message : '', /signed before \(seq \d+\) with no hardware id; sent again with hardware id "imx8mm-z"/);
  t.true((await s.station.handle({ csr: bare, link: 'test' })).ok, 'sent again as it was first: its certificate');
});

test('override literals: quoted strings, a string of one space, "" to unset, and the HSM-mode overrides', async (t) => {
  const { link } = await station;
  const { body } = deviceBody({
    pacman: { tags: '"main"', compose_apps: '" "' },
    tls: { pkey_source: '"pkcs11"', cert_source: '"pkcs11"' },
    import: { tls_pkey_path: '', tls_clientcert_path: '' },
  });
  const res = await send(link.port, 'POST', body);
  t.is(res.status, 201, res.text);
  const toml = parseToml(JSON.parse(res.text)['sota.toml']) as Record<string, Record<string, unknown>>;
  t.is(toml.pacman!.compose_apps, ' ');
  t.is(toml.tls!.pkey_source, 'pkcs11');
  t.false('tls_pkey_path' in toml.import!);
  t.false('tls_clientcert_path' in toml.import!);
  t.is(toml.import!.tls_cacert_path, '/var/sota/root.crt');
});

test('a hostile hardware-id goes in as a plain string (or is refused when it holds a line break); a hostile override is refused 400: neither adds a section', async (t) => {
  const { link } = await station;
  const hostile = 'x" [evil] owned = "yes';
  const { body } = deviceBody({}, { 'hardware-id': hostile });
  const res = await send(link.port, 'POST', body);
  t.is(res.status, 201, res.text);
  const toml = parseToml(JSON.parse(res.text)['sota.toml']) as Record<string, Record<string, unknown>>;
  t.false('evil' in toml);
  t.is(toml.provision!.primary_ecu_hardware_id, hostile);
  // A line break is a control character: not text a station takes (src/text.ts).
  const broken = await send(link.port, 'POST', deviceBody({}, { 'hardware-id': 'x"\n[evil]\nowned = "yes' }).body);
  t.is(broken.status, 400, broken.text);
  t.is(JSON.parse(broken.text).code, 'BAD_FRAME');
  t.regex(JSON.parse(broken.text).message, /hardware-id.*control character/);

  for (const value of ['"main"\n[evil]\nowned = true', '"main" extra = 1', 'not toml', '"a"\nb = 1']) {
    const bad = await send(link.port, 'POST', deviceBody({ pacman: { tags: value } }).body);
    t.is(bad.status, 400, value);
    t.is(JSON.parse(bad.text).code, 'BAD_FRAME');
  }
  const badKey = await send(link.port, 'POST', deviceBody({ 'pacman]\n[evil': { x: '1' } }).body);
  t.is(badKey.status, 400);
});

test('refusals are 4xx JSON with the protocol code, never a stack trace', async (t) => {
  const { s, link } = await station;
  const before = s.ledger.issuedCount();
  const check = async (res: Res, status: number, code: string): Promise<void> => {
    t.is(res.status, status, res.text);
    const j = JSON.parse(res.text);
    t.is(j.code, code);
    t.is(typeof j.message, 'string');
    t.notRegex(res.text, /at .+\.js:\d+|Error:/);
  };
  const csrOnly = (csr: string): string => ptreeJson({ csr, 'hardware-id': 'hw', 'sota-config-dir': '/var/sota' });
  await check(await send(link.port, 'POST', csrOnly('-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n')), 400, 'BAD_CSR');
  const noCn = pemEncode(makeDeviceCsr([{ type: '2.5.4.11', value: FACTORY }, { type: '2.5.4.15', value: 'production' }]).der, 'CERTIFICATE REQUEST');
  await check(await send(link.port, 'POST', csrOnly(noCn)), 400, 'POLICY_SUBJECT');
  await check(await send(link.port, 'POST', ptreeJson({ 'hardware-id': 'hw' })), 400, 'BAD_CSR');
  await check(await send(link.port, 'POST', '{"csr": '), 400, 'BAD_FRAME');
  await check(await send(link.port, 'POST', deviceBody({}, { group: 'prod-lab' }).body), 400, 'POLICY_EXTENSION');
  await check(await send(link.port, 'POST', ptreeJson({ csr: 'x'.repeat(70_000) })), 413, 'TOO_LARGE');
  const dup = deviceBody();
  t.is((await send(link.port, 'POST', dup.body)).status, 201);
  const sameId = JSON.parse(dup.body);
  sameId.csr = pemEncode(makeDeviceCsr({ deviceId: dup.deviceId, factory: FACTORY, production: true }).der, 'CERTIFICATE REQUEST');
  await check(await send(link.port, 'POST', ptreeJson(sameId)), 409, 'DUPLICATE_DEVICE');
  t.is([...s.ledger.since(before)].filter((r) => r.deviceId === dup.deviceId).length, 1, 'one certificate for that device');
  const other = await new Promise<Res>((resolve) => {
    request({ host: '127.0.0.1', port: link.port, path: '/admin', method: 'GET', agent: false }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, text }));
    }).end();
  });
  t.is(other.status, 404);
});

test('a request whose headers and body do not arrive within 10 s is dropped', async (t) => {
  const { link } = await station;
  const socket = connect(link.port, '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  socket.write('POST /sign HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"csr":');
  let answer = '';
  socket.on('data', (d) => (answer += d)); // a paused socket would never see its 'close'
  const t0 = Date.now();
  const closed = await new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now() - t0)));
  t.true(closed >= 9_000 && closed < 15_000, `closed after ${closed} ms`);
  t.regex(answer, /^HTTP\/1\.1 408 /);
});

test('listens only where configured: 127.0.0.1 when no host is given', async (t) => {
  const { s } = await station;
  const link = new HttpLink(s.station, { listen: '0', sota: s.config.sota });
  await link.start();
  t.teardown(() => link.stop());
  t.regex(link.status.state, /listening/);
  const { parseListen } = await import('../src/links/http.js');
  t.deepEqual(parseListen('8080'), { host: '127.0.0.1', port: 8080 });
  t.deepEqual(parseListen('192.168.7.1:80'), { host: '192.168.7.1', port: 80 });
  t.deepEqual(parseListen('[::1]:80'), { host: '::1', port: 80 });
});

test('a production link looks at the address it bound: every interface, in any spelling a host name can resolve to, is refused and the link stays down', async (t) => {
  const { s } = await station;
  // A host name that resolves to 0.0.0.0 binds where these do; the config's text check cannot see it.
  for (const listen of ['[::]:0', '0.0.0.0:0', '[::ffff:0:0]:0']) {
    const link = new HttpLink(s.station, { listen, sota: s.config.sota, everyInterfaceRefusal: 'is refused here' });
    const err = await t.throwsAsync(link.start());
    t.is((err as { code?: string }).code, 'CONFIG');
    t.regex(err!.message, /^links\.http .*: .* is (::|0\.0\.0\.0|::ffff:0\.0\.0\.0), which is refused here$/);
    t.is(link.status.state, 'error');
    t.is(link.port, 0);
    await link.stop();
  }
  // A named interface is served as before.
  const local = new HttpLink(s.station, { listen: '127.0.0.1:0', sota: s.config.sota, everyInterfaceRefusal: 'is refused here' });
  await local.start();
  t.teardown(() => local.stop());
  t.is(local.status.state, 'listening');
  t.is((await send(local.port, 'HEAD')).status, 200);
});

test('a production link whose address was busy at start and is refused on a later try says so to the station (onRefused), and nothing listens', async (t) => {
  const { s } = await station;
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(0, '0.0.0.0', () => r()));
  const port = (blocker.address() as AddressInfo).port;
  let refused = null as { code?: string; message: string } | null;
  const link = new HttpLink(s.station, { listen: `0.0.0.0:${port}`, sota: s.config.sota, everyInterfaceRefusal: 'is refused here', onRefused: (e) => (refused = e) });
  t.teardown(() => link.stop());
  await link.start();
  t.is(link.status.state, 'waiting', 'the port is busy: the link waits for it');
  await new Promise<void>((r) => blocker.close(() => r()));
  for (let i = 0; i < 60 && !refused; i++) await new Promise((r) => setTimeout(r, 50));
  t.is(refused?.code, 'CONFIG');
  t.regex(refused!.message, /is 0\.0\.0\.0, which is refused here$/);
  t.is(link.status.state, 'error');
  const reached = await new Promise<boolean>((r) => {
    const c = connect(port, '127.0.0.1', () => (c.destroy(), r(true)));
    c.once('error', () => r(false));
  });
  t.false(reached, 'nothing listens there');
});

test('malformed bodies: a value that is not a string, overrides that are not objects of strings; the link keeps serving', async (t) => {
  const { link } = await station;
  for (const bad of [
    ptreeJson({ csr: 'x', 'hardware-id': 5 }),
    ptreeJson({ csr: 'x', overrides: { pacman: { tags: 1 } } }),
    ptreeJson({ csr: 'x', overrides: ['pacman'] }),
    '[1, 2, 3]',
    'null',
  ]) {
    const res = await send(link.port, 'POST', bad);
    t.is(res.status, 400, bad);
    t.is(JSON.parse(res.text).code, 'BAD_FRAME');
  }
  t.is((await send(link.port, 'POST', deviceBody().body)).status, 201, 'still serving');
});

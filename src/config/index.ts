/**
 * Station configuration: one TOML file, validated on load. Every message
 * names the key at fault (`token.pin_file: ...`), and relative paths are
 * resolved against the folder of the config file, so a station folder can
 * be moved as a whole.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { readPrivateFile } from '../files.js';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { z } from 'zod';
import { isEveryInterface } from '../addresses.js';
import { LineSignerError } from '../errors.js';
import { textProblem } from '../text.js';

/** sockaddr_un's sun_path: 108 bytes with its terminating NUL. */
const MAX_SOCKET_PATH = 107;

export const DEFAULT_CONFIG_PATH = 'station-config/station.toml';

/**
 * The HTTP link has no authentication: whoever reaches it gets device
 * certificates. A production station listens only on an address of its
 * own (the USB Ethernet gadget's), never on every interface, the LAN's included.
 */
export const EVERY_INTERFACE =
  'listens on every interface, the LAN included, and the HTTP link has no authentication: anyone who reaches it gets production device certificates; give the USB Ethernet gadget\'s own address (for example 192.168.7.1:8080)';

/**
 * Why a production station will not listen at HOST:PORT (or PORT alone,
 * which is 127.0.0.1), or null: the wildcard address (every interface) in
 * any spelling. The resolver reads a host of digits, dots and hex (`0.0`,
 * `0x0`, `000.000.000.000`) as an IPv4 address in a short or octal form:
 * one that is zero is the wildcard, and any other is refused too, with a
 * request for the plain dotted quad, so that what is checked is what binds.
 */
export function httpExposureProblem(listen: string): string | null {
  if (/^\d{1,5}$/.test(listen)) return null;
  const host = listen.replace(/:\d*$/, '').replace(/^\[(.*)\]$/, '$1');
  // The resolver maps full-width digits and ideographic full stops to ASCII ("０.０.０.０" binds 0.0.0.0).
  if (/[^\x21-\x7e]/.test(host)) return `is ${JSON.stringify(host)}, not plain ASCII, which the resolver may read as another address: write the address in ASCII digits and dots`;
  if (host === '' || host === '*' || /^[0:]+$/.test(host) || isEveryInterface(host)) return EVERY_INTERFACE;
  const canonicalQuad = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/.test(host);
  if (canonicalQuad) return host === '0.0.0.0' ? EVERY_INTERFACE : null;
  if (!(/^[0-9a-fA-FxX.]+$/.test(host) && /^[0-9.]|^0[xX]/.test(host))) return null;
  if (host.split('.').every((part) => /^(0[xX])?0*$/.test(part))) return EVERY_INTERFACE;
  return `is ${host}, an IPv4 address in a short, octal or hex form: write it as a plain dotted quad (a.b.c.d), which is what a production station checks before it listens`;
}

/**
 * A spool folder becomes a path the installed service may write
 * (ReadWritePaths= in its unit): the root, a top-level folder or a system
 * folder would undo the unit's read-only system.
 */
const SPOOL_TOO_WIDE = 'a spool folder must be a folder of its own, at least two levels deep (such as /media/usb or /srv/line-3-spool), not the root, a top-level folder or a system folder (/etc, /usr, /boot, /dev, /proc, /sys, /bin, /sbin, /lib)';
/** `dir` absolute (parseConfig resolves it against the config's folder, and through symlinks). */
function spoolTooWide(dir: string): boolean {
  const parts = resolve(dir).split('/').filter(Boolean);
  return parts.length < 2 || ['etc', 'usr', 'boot', 'dev', 'proc', 'sys', 'bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32'].includes(parts[0]!);
}

const label = z.string().min(1).max(32);

const stationSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'a station id: letters, digits, ".", "_" or "-", at most 64'),
  factory: z.string().min(1).max(64),
  production: z.boolean(),
  ledger: z.string().min(1),
  /** Who runs this station, recorded on operator actions when --operator is not given (default: the login name). */
  operator: z
    .string()
    .min(1)
    .max(64)
    .superRefine((v, ctx) => {
      // The same rule as --operator: refused here, not by every operator command later.
      const why = textProblem(v, 64);
      if (why) ctx.addIssue({ code: 'custom', message: why });
    })
    .optional(),
});

const tokenSchema = z
  .strictObject({
    module: z.string().min(1),
    token_label: label,
    key_label: label.default('local-ca'),
    station_key_label: label.default('station-key'),
    pin_env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name').optional(),
    pin_file: z.string().min(1).optional(),
    /** Sessions that sign in parallel (a real HSM signs 10 to 40 times a second per session). */
    sessions: z.number().int().min(1).max(16).default(1),
    /** Development only: SOFTHSM2_CONF for SoftHSM2, set before C_Initialize. */
    softhsm2_conf: z.string().min(1).optional(),
  })
  .refine((t) => (t.pin_env === undefined) !== (t.pin_file === undefined), {
    message: 'give exactly one of pin_env or pin_file',
    path: ['pin_env'],
  });

const caSchema = z.strictObject({
  certificate: z.string().min(1),
  root: z.string().min(1),
  owner: z.string().regex(/^fio-[A-Za-z0-9_-]{1,60}$/, 'the local-ca CN: "fio-" then the owner id'),
  /** The station key's self-signed certificate (signs exports); written by ca init / station-key init. */
  station_certificate: z.string().min(1).default('station-key.pem'),
  validity_days: z.number().int().min(1).max(36500).default(7300),
});

const policySchema = z.strictObject({
  /** "uuid" (lowercase 8-4-4-4-12) or a regular expression matched against the whole CN. */
  device_id: z
    .string()
    .min(1)
    .default('uuid')
    .refine((p) => p === 'uuid' || isRegExp(p), 'not "uuid" nor a valid regular expression'),
  allow_p384: z.boolean().default(false),
  /** The station's own limit on certificates issued, all links together; absent = no limit. */
  max_certificates: z.number().int().min(1).optional(),
  /** Certificates per minute, all links together; absent = no limit. Stops a runaway jig. */
  max_per_minute: z.number().int().min(1).optional(),
  /** Issue only while a work order is open (line-signer order open). */
  require_order: z.boolean().default(false),
  /** How far the clock may step back behind the last issuance before CLOCK is answered. */
  clock_skew_seconds: z.number().int().min(0).max(365 * 86400).default(300),
  /** CLOCK when the clock is this far ahead of the newest issuance: an idle station's clock deserves a look. */
  clock_gap_days: z.number().int().min(1).max(36500).default(30),
});

const serialLinkSchema = z.strictObject({
  path: z.string().min(1),
  baud: z.number().int().min(50).max(4_000_000).default(115200),
});

const linksSchema = z.strictObject({
  serial: z.array(serialLinkSchema).default([]),
  http: z
    .string()
    .regex(/^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, 'HOST:PORT')
    .refine((v) => {
      // Runs even when the pattern above failed (that one says so): a value without a port is not this one's.
      const port = /:(\d+)$/.exec(v);
      return port === null || (Number(port[1]) >= 1 && Number(port[1]) <= 65535);
    }, 'HOST:PORT with a port from 1 to 65535')
    .optional(),
  spool: z.array(z.string().min(1)).default([]),
  idle_timeout_ms: z.number().int().min(100).max(600_000).default(10_000),
  spool_poll_ms: z.number().int().min(50).max(60_000).default(1000),
});

const sotaSchema = z.strictObject({
  gateway: z.string().url(),
  ostree: z.string().url(),
});

const configSchema = z
  .strictObject({
    station: stationSchema,
    token: tokenSchema,
    ca: caSchema,
    policy: policySchema.default({ device_id: 'uuid', allow_p384: false, require_order: false, clock_skew_seconds: 300, clock_gap_days: 30 }),
    links: linksSchema.default({ serial: [], spool: [], idle_timeout_ms: 10_000, spool_poll_ms: 1000 }),
    sota: sotaSchema.optional(),
  })
  .superRefine((c, ctx) => {
    const exposure = c.station.production && c.links.http !== undefined ? httpExposureProblem(c.links.http) : null;
    if (exposure) ctx.addIssue({ code: 'custom', path: ['links', 'http'], message: exposure });
  });


export type StationConfig = z.infer<typeof configSchema> & {
  /** Absolute path of the file this came from. */
  readonly path: string;
};

function isRegExp(p: string): boolean {
  try {
    // As the policy compiles it (the u flag refuses escapes such as \\- that plain mode lets by).
    new RegExp(`^(?:${p})$`, 'u');
    return true;
  } catch {
    return false;
  }
}

/** Where the config comes from: the flag, else LINE_SIGNER_CONFIG, else the default. */
export function configPath(flag?: string): string {
  return resolve(flag ?? process.env.LINE_SIGNER_CONFIG ?? DEFAULT_CONFIG_PATH);
}

export function loadConfig(path: string): StationConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    const env = process.env.LINE_SIGNER_CONFIG;
    const from =
      env !== undefined && resolve(env) === resolve(path)
        ? 'the path in LINE_SIGNER_CONFIG'
        : resolve(path) === resolve(DEFAULT_CONFIG_PATH)
          ? `the default, relative to the current folder ${process.cwd()}`
          : 'the path given';
    throw new LineSignerError(
      'CONFIG',
      `cannot read config ${path} (${code}; ${from}); choose the station's config with --config PATH or LINE_SIGNER_CONFIG=PATH (an installed station's is /etc/line-signer/station.toml)`,
    );
  }
  return parseConfig(text, path);
}

export function parseConfig(text: string, path: string): StationConfig {
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (err) {
    const where = err instanceof TomlError ? ` (line ${err.line}, column ${err.column})` : '';
    throw new LineSignerError('CONFIG', `${path}: not valid TOML${where}: ${firstLine((err as Error).message)}`);
  }
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    let key = issue.path.join('.');
    // zod names unknown keys in the message, not the path; name them as keys too.
    if (issue.code === 'unrecognized_keys') key = [...issue.path, ...issue.keys].join('.');
    const what = issue.code === 'unrecognized_keys' ? 'unknown key' : issue.message;
    throw new LineSignerError('CONFIG', `${path}: ${key || '(top level)'}: ${what}`);
  }
  const base = dirname(resolve(path));
  const at = (p: string): string => (isAbsolute(p) ? p : resolve(base, p));
  const c = parsed.data;
  const socket = `${at(c.station.ledger)}.sock`;
  if (Buffer.byteLength(socket) > MAX_SOCKET_PATH) {
    throw new LineSignerError('CONFIG', `${path}: station.ledger: the path is too long for the control socket beside it (${socket} is ${Buffer.byteLength(socket)} bytes; a Unix socket's path holds ${MAX_SOCKET_PATH}); choose a shorter one`);
  }
  c.links.spool.forEach((d, i) => {
    // Through symlinks too: the unit's ReadWritePaths= follows them (a stick not mounted yet has none to follow).
    let real = at(d);
    try {
      real = realpathSync(real);
    } catch {
      // not there yet
    }
    if (spoolTooWide(at(d)) || spoolTooWide(real)) throw new LineSignerError('CONFIG', `${path}: links.spool.${i}: ${SPOOL_TOO_WIDE}${real !== at(d) ? ` (${at(d)} is ${real})` : ''}`);
  });
  return {
    ...c,
    path: resolve(path),
    station: { ...c.station, ledger: at(c.station.ledger) },
    token: {
      ...c.token,
      module: at(c.token.module),
      ...(c.token.pin_file !== undefined ? { pin_file: at(c.token.pin_file) } : {}),
      ...(c.token.softhsm2_conf !== undefined ? { softhsm2_conf: at(c.token.softhsm2_conf) } : {}),
    },
    ca: { ...c.ca, certificate: at(c.ca.certificate), root: at(c.ca.root), station_certificate: at(c.ca.station_certificate) },
    links: { ...c.links, spool: c.links.spool.map(at), serial: c.links.serial.map((s) => ({ ...s, path: at(s.path) })) },
  };
}

/**
 * The PIN, from the environment or a file. A file readable by group or
 * others is refused: a PIN there is a PIN anyone on the station can read.
 * The PIN itself never enters a message.
 */
export function readPin(token: StationConfig['token']): string {
  if (token.pin_env !== undefined) {
    const pin = process.env[token.pin_env];
    if (pin === undefined || pin === '') {
      throw new LineSignerError('TOKEN_PIN', `token.pin_env: environment variable ${token.pin_env} is not set`);
    }
    return pin;
  }
  const file = token.pin_file!;
  const pin = readPrivateFile(file, 'token.pin_file', 'TOKEN_PIN').replace(/\r?\n$/, '');
  if (pin === '') throw new LineSignerError('TOKEN_PIN', `token.pin_file: ${file} is empty`);
  return pin;
}

function firstLine(s: string): string {
  return s.split('\n')[0] ?? s;
}

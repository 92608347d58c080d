/**
 * The sota.toml a device gets from the HTTP link, made the way Foundries'
 * registration reference makes it, but through a TOML serializer: every
 * value a device sends is parsed as exactly one TOML value and written back,
 * so no hardware-id, name or override can add a section or a key of its own.
 *
 * Client names never become paths into built-in objects: overrides arrive
 * as Maps, tables are null-prototype objects, and `__proto__`,
 * `constructor` and `prototype` are refused as section or key names.
 */
import { parse, stringify } from 'smol-toml';
import { LineSignerError } from '../errors.js';
import { quote, textProblem, TEXT_LIMITS } from '../text.js';

/** A TOML table as smol-toml reads and writes it; never with a prototype. */
type Table = Record<string, unknown>;

/** section → key → TOML literal as text ("" = leave unset). */
export type Overrides = ReadonlyMap<string, ReadonlyMap<string, string>>;

const BARE = /^[A-Za-z0-9_-]{1,64}$/;
/** Plain TOML keys that name built-ins in JavaScript: no sota.toml uses them. */
const RESERVED = new Set(['__proto__', 'constructor', 'prototype']);

function badOverride(message: string): never {
  throw new LineSignerError('BAD_FRAME', message);
}

function table(entries: Record<string, unknown>): Table {
  return Object.assign(Object.create(null) as Table, entries);
}

/** A section or key name an override may use, or a refusal naming it. */
export function checkOverrideName(what: string, name: string): string {
  if (!BARE.test(name)) badOverride(`${what} ${quote(name)} is not a plain TOML key`);
  if (RESERVED.has(name)) badOverride(`${what} ${quote(name)} is reserved`);
  return name;
}

/** Strings, numbers, booleans, dates and arrays of them: a value, never a table. */
function valueProblem(v: unknown): string | null {
  if (typeof v === 'string') {
    const why = textProblem(v, TEXT_LIMITS.override);
    return why && `holds a string that ${why}`;
  }
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean' || v instanceof Date) return null;
  if (Array.isArray(v)) {
    for (const item of v) {
      const why = valueProblem(item);
      if (why) return why;
    }
    return null;
  }
  return 'is a table, not a value';
}

/** How deep arrays and inline tables may nest in one override value: 64 values nested 500 deep cost 15 ms to parse. */
export const MAX_OVERRIDE_DEPTH = 4;

/** The deepest nesting of [ and { in a TOML value's text, outside its strings. */
function nestingDepth(text: string): number {
  let depth = 0;
  let deepest = 0;
  let quote: string | null = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quote) {
      if (c === '\\' && quote === '"') i++;
      else if (c === quote) quote = null;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === '[' || c === '{') deepest = Math.max(deepest, ++depth);
    else if (c === ']' || c === '}') depth--;
  }
  return deepest;
}

/** One TOML value from its text, or a refusal: `"main"` → main, `7` → 7. */
export function parseTomlValue(text: string, where: string): unknown {
  if (nestingDepth(text) > MAX_OVERRIDE_DEPTH) badOverride(`${where}: ${quote(text)} nests arrays deeper than ${MAX_OVERRIDE_DEPTH}`);
  let doc: Table;
  try {
    doc = parse(`v = ${text}`) as Table;
  } catch {
    badOverride(`${where}: ${quote(text)} is not a TOML value`);
  }
  const keys = Object.keys(doc);
  if (keys.length !== 1 || keys[0] !== 'v') badOverride(`${where}: ${quote(text)} is more than one TOML value`);
  const why = valueProblem(doc.v);
  if (why) badOverride(`${where}: ${quote(text)} ${why}`);
  return doc.v;
}

export interface SotaRequest {
  gateway: string;
  ostree: string;
  hardwareId: string;
  sotaConfigDir: string;
  overrides: Overrides;
}

export function sotaToml(r: SotaRequest): string {
  const dir = r.sotaConfigDir.replace(/\/+$/, '');
  const doc = new Map<string, Table>([
    ['tls', table({ server: r.gateway, ca_source: 'file', pkey_source: 'file', cert_source: 'file' })],
    ['provision', table({ server: r.gateway, primary_ecu_hardware_id: r.hardwareId })],
    ['uptane', table({ repo_server: `${r.gateway}/repo`, key_source: 'file' })],
    ['pacman', table({ type: 'ostree+compose_apps', ostree_server: r.ostree, compose_apps_root: `${dir}/compose-apps` })],
    ['storage', table({ type: 'sqlite', path: `${dir}/` })],
    ['import', table({ tls_cacert_path: `${dir}/root.crt`, tls_pkey_path: `${dir}/pkey.pem`, tls_clientcert_path: `${dir}/client.pem` })],
  ]);
  for (const [section, values] of r.overrides) {
    checkOverrideName('overrides: section', section);
    let target = doc.get(section);
    if (!target) doc.set(section, (target = table({})));
    for (const [key, text] of values) {
      checkOverrideName(`overrides.${section}: key`, key);
      if (text === '') delete target[key];
      else target[key] = parseTomlValue(text, `overrides.${section}.${key}`);
    }
  }
  const root = table({});
  for (const [section, values] of doc) root[section] = values;
  return stringify(root) + '\n';
}

/**
 * The sota.toml a device gets from the HTTP link, made the way Foundries'
 * registration reference makes it, but through a TOML serializer: every
 * value a device sends is parsed as exactly one TOML value and written back,
 * so no hardware-id, name or override can add a section or a key of its own.
 */
import { parse, stringify } from 'smol-toml';
import { LineSignerError } from '../errors.js';

type Table = Record<string, unknown>;

const BARE = /^[A-Za-z0-9_-]{1,64}$/;

function badOverride(message: string): never {
  throw new LineSignerError('BAD_FRAME', message);
}

/** One TOML value from its text, or a refusal: `"main"` → main, `7` → 7. */
export function parseTomlValue(text: string, where: string): unknown {
  let doc: Table;
  try {
    doc = parse(`v = ${text}`) as Table;
  } catch {
    badOverride(`${where}: ${JSON.stringify(text)} is not a TOML value`);
  }
  const keys = Object.keys(doc);
  if (keys.length !== 1 || keys[0] !== 'v') badOverride(`${where}: ${JSON.stringify(text)} is more than one TOML value`);
  return doc.v;
}

export interface SotaRequest {
  gateway: string;
  ostree: string;
  hardwareId: string;
  sotaConfigDir: string;
  /** section → key → TOML literal as text ("" = leave unset). */
  overrides: Record<string, Record<string, string>>;
}

export function sotaToml(r: SotaRequest): string {
  const dir = r.sotaConfigDir.replace(/\/+$/, '');
  const doc: Record<string, Table> = {
    tls: { server: r.gateway, ca_source: 'file', pkey_source: 'file', cert_source: 'file' },
    provision: { server: r.gateway, primary_ecu_hardware_id: r.hardwareId },
    uptane: { repo_server: `${r.gateway}/repo`, key_source: 'file' },
    pacman: { type: 'ostree+compose_apps', ostree_server: r.ostree, compose_apps_root: `${dir}/compose-apps` },
    storage: { type: 'sqlite', path: `${dir}/` },
    import: { tls_cacert_path: `${dir}/root.crt`, tls_pkey_path: `${dir}/pkey.pem`, tls_clientcert_path: `${dir}/client.pem` },
  };
  for (const [section, values] of Object.entries(r.overrides)) {
    if (!BARE.test(section)) badOverride(`overrides: section name ${JSON.stringify(section)} is not a plain TOML key`);
    const table = (doc[section] ??= {});
    for (const [key, text] of Object.entries(values)) {
      if (!BARE.test(key)) badOverride(`overrides.${section}: key ${JSON.stringify(key)} is not a plain TOML key`);
      if (text === '') delete table[key];
      else table[key] = parseTomlValue(text, `overrides.${section}.${key}`);
    }
  }
  return stringify(doc) + '\n';
}

/**
 * On an installed station every file (ledger, local-ca, token objects)
 * belongs to the service user. A command run as root would leave files the
 * service cannot write ("attempt to write a readonly database") or read (a
 * 0700 SoftHSM2 token), so root acts as that user: whoever owns the
 * configured ledger's folder.
 */
import { statSync } from 'node:fs';
import { dirname } from 'node:path';
import { configPath, loadConfig } from '../config/index.js';
import { passwdEntryByUid } from '../files.js';
import { LineSignerError } from '../errors.js';

/** The commands that open the station's token, ledger or files. */
export const STATION_COMMANDS: ReadonlySet<string> = new Set(['ca', 'ledger', 'order', 'clock', 'log', 'export', 'station-key', 'sign', 'status', 'serve']);

/**
 * Switches this process to the owner of the ledger's folder when it runs
 * as root and that folder belongs to someone else; says so on stderr.
 * Returns the user's name, or null when nothing changed. A config that
 * cannot be loaded changes nothing: the command itself reports it.
 */
export function actAsStationUser(configFlag: string | undefined, say: (line: string) => void): string | null {
  if (process.getuid?.() !== 0) return null;
  let ledgerDir: string;
  try {
    ledgerDir = dirname(loadConfig(configPath(configFlag)).station.ledger);
  } catch {
    return null;
  }
  let uid: number;
  try {
    uid = statSync(ledgerDir).uid;
  } catch {
    return null;
  }
  if (uid === 0) return null;
  const user = passwdEntryByUid(uid);
  if (!user) {
    throw new LineSignerError('CONFIG', `${ledgerDir} belongs to uid ${uid}, which has no entry in /etc/passwd; chown it to the service user (scripts/install does)`);
  }
  // The audit trail names who ran the command, not the user it acts as.
  process.env.LINE_SIGNER_INVOKED_BY ??= process.env.SUDO_USER ?? process.env.LOGNAME ?? process.env.USER ?? 'root';
  // Groups first, while still allowed to set them: softhsm (the token folder) and dialout (serial ports) come from initgroups.
  (process as NodeJS.Process & { initgroups(user: string, extraGroup: number): void }).initgroups(user.name, user.gid);
  process.setgid!(user.gid);
  process.setuid!(user.uid);
  process.env.HOME = user.home;
  process.env.USER = user.name;
  process.env.LOGNAME = user.name;
  say(`line-signer: running as ${user.name}, the owner of ${ledgerDir}, so that the service can use every file this command makes`);
  return user.name;
}

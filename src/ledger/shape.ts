/**
 * The ledger file's shape: the schema line-signer made, and rows the hash
 * chains can see. SQL lets whoever can write the file change more than
 * rows: a trigger runs inside the station's own transactions (undo a
 * revocation when the station starts, put it back after an issuance), a
 * table rebuilt without its UNIQUE constraint takes duplicates, a row at
 * seq 0 or below sits outside every chain walk and checkpoint, and a
 * BLOB where text belongs breaks the readers. None of that is in a hash,
 * so it is checked here: `ledger verify` lists each, and a station does
 * not start on them.
 */
import Database from 'better-sqlite3';
import { MIGRATIONS } from './schema.js';

export interface ShapeProblem {
  what: string;
  reason: string;
}

interface SchemaObject {
  type: string;
  name: string;
  sql: string | null;
}

// Every object but ANALYZE's statistics tables, compared by exact name (LIKE's "_" matches any
// character and ignores case: a trigger named "sqliteXunrevoke" once hid behind it). The automatic
// indexes of UNIQUE columns are compared too.
const OBJECTS = "SELECT type, name, sql FROM sqlite_master WHERE substr(name, 1, 11) <> 'sqlite_stat' ORDER BY type, name";

/** The schema objects a ledger at `version` has when line-signer made it: its migrations, run on an empty database. */
function expectedSchema(version: number): { objects: Map<string, SchemaObject>; columns: Map<string, Array<{ name: string; type: string }>> } {
  const db = new Database(':memory:');
  try {
    for (const m of MIGRATIONS.slice(0, version)) db.exec(m);
    const objects = new Map(db.prepare<[], SchemaObject>(OBJECTS).all().map((o) => [`${o.type} ${o.name}`, o]));
    const columns = new Map<string, Array<{ name: string; type: string }>>();
    for (const o of objects.values()) {
      if (o.type === 'table') columns.set(o.name, db.prepare<[], { name: string; type: string }>(`SELECT name, type FROM pragma_table_info('${o.name}')`).all());
    }
    return { objects, columns };
  } finally {
    db.close();
  }
}

/** What a column's declared type lets its values be (NULL is NOT NULL's business, which the table definition keeps). */
const STORAGE: Record<string, string> = { TEXT: 'text', INTEGER: 'integer', BLOB: 'blob' };

/** The policy tables, small enough to check in full at every start: their indexes are what the station's lookups read. */
const SMALL_TABLES = ['revoked', 'reissue_grants', 'orders', 'settings', 'batches'];

/**
 * Everything about the file's shape that line-signer did not make; empty
 * for a ledger it made. `values` also reads every row for values of the
 * wrong type and runs SQLite's integrity check over the whole file (an
 * index rewired through `PRAGMA writable_schema` to an empty b-tree hides
 * rows from every lookup while the table holds them): a full read, which
 * `ledger verify` makes and a start does not (1.3 s per 100,000
 * issuances); a start checks the small policy tables that way.
 */
export function shapeProblems(db: Database.Database, { values = true } = {}): ShapeProblem[] {
  const problems: ShapeProblem[] = [];
  const version = db.pragma('user_version', { simple: true }) as number;
  const want = expectedSchema(Math.min(version, MIGRATIONS.length));
  const have = new Map(db.prepare<[], SchemaObject>(OBJECTS).all().map((o) => [`${o.type} ${o.name}`, o]));
  for (const [key, o] of have) {
    const w = want.objects.get(key);
    if (!w) {
      // Triggers and views run or stand in for SQL the station never wrote; a table or index of
      // someone else's is harmless to the station but is not its file's.
      problems.push({ what: `${o.type} ${o.name}`, reason: o.type === 'trigger' ? 'a trigger line-signer never makes: it runs SQL inside the station\'s own writes' : `a ${o.type} line-signer never makes` });
    } else if (w.sql !== o.sql) {
      problems.push({ what: `${o.type} ${o.name}`, reason: 'is not defined as line-signer defines it (a constraint or column changed)' });
    }
  }
  for (const key of want.objects.keys()) if (!have.has(key)) problems.push({ what: key, reason: 'is missing' });

  // Values of the type their column declares; rows inside the chains' numbering.
  for (const [table, columns] of values ? want.columns : []) {
    if (!have.has(`table ${table}`)) continue;
    const checks = columns.filter((c) => STORAGE[c.type]).map((c) => `sum(typeof("${c.name}") NOT IN ('${STORAGE[c.type]}', 'null')) AS "${c.name}"`);
    if (checks.length === 0) continue;
    let counts: Record<string, number | null> | undefined;
    try {
      counts = db.prepare<[], Record<string, number | null>>(`SELECT ${checks.join(', ')} FROM "${table}"`).get();
    } catch (err) {
      problems.push({ what: `table ${table}`, reason: `cannot be read: ${(err as Error).message}` });
      continue;
    }
    for (const [column, n] of Object.entries(counts ?? {})) {
      if (n) problems.push({ what: `${table}.${column}`, reason: `${n} value${n === 1 ? '' : 's'} not of its declared type ${want.columns.get(table)!.find((c) => c.name === column)!.type}` });
    }
  }
  for (const target of values ? [null] : SMALL_TABLES) {
    if (target !== null && !have.has(`table ${target}`)) continue;
    try {
      const said = db.prepare<[], Record<string, string>>(target === null ? 'PRAGMA integrity_check(20)' : `PRAGMA integrity_check('${target}')`).all().map((r) => Object.values(r)[0]!);
      if (!(said.length === 1 && said[0] === 'ok')) problems.push({ what: target === null ? 'the file' : `table ${target}`, reason: `SQLite's integrity check: ${said.slice(0, 5).join('; ')}${said.length > 5 ? '; ...' : ''}` });
    } catch (err) {
      problems.push({ what: target === null ? 'the file' : `table ${target}`, reason: `SQLite's integrity check failed: ${(err as Error).message}` });
    }
  }
  for (const [table, key] of [['issuances', 'seq'], ['events', 'seq'], ['checkpoints', 'n'], ['batches', 'number']] as const) {
    if (!have.has(`table ${table}`)) continue;
    const r = db.prepare<[], { n: number; lowest: number | null }>(`SELECT count(*) AS n, min(${key}) AS lowest FROM ${table} WHERE ${key} < 1`).get();
    if (r && r.n > 0) problems.push({ what: `${table}.${key}`, reason: `${r.n} row${r.n === 1 ? '' : 's'} numbered below 1 (lowest ${r.lowest}): outside the chain every check walks, yet read by lookups` });
  }
  return problems;
}

/** The shape problems of a ledger file opened on its own, read-only: for a file whose tables the ledger's queries cannot even be prepared on. */
export function shapeProblemsOfFile(path: string): ShapeProblem[] {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    return shapeProblems(db);
  } finally {
    db.close();
  }
}

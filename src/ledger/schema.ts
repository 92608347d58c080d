/**
 * Versioned migrations, applied in order inside one transaction each and
 * recorded in PRAGMA user_version. A migration is never edited once
 * shipped: a change is a new entry at the end.
 */
export const MIGRATIONS: readonly string[] = [
  // 1: issuances (hash-chained) and events (hash-chained too: a deleted
  // rejection is as much a tampering as a deleted issuance).
  `
  CREATE TABLE issuances (
    seq               INTEGER PRIMARY KEY,
    serial            TEXT    NOT NULL UNIQUE,
    device_id         TEXT    NOT NULL,
    subject           TEXT    NOT NULL,
    public_key_sha256 TEXT    NOT NULL,
    csr_sha256        TEXT    NOT NULL UNIQUE,
    certificate       BLOB    NOT NULL,
    not_before        TEXT    NOT NULL,
    not_after         TEXT    NOT NULL,
    issued_at         TEXT    NOT NULL,
    station_id        TEXT    NOT NULL,
    link              TEXT    NOT NULL,
    hardware_id       TEXT,
    work_order        TEXT,
    entry_hash        TEXT    NOT NULL
  );
  CREATE INDEX issuances_device ON issuances(device_id);
  CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    at         TEXT NOT NULL,
    kind       TEXT NOT NULL,
    code       TEXT,
    message    TEXT,
    csr_sha256 TEXT,
    device_id  TEXT,
    link       TEXT,
    station_id TEXT NOT NULL,
    entry_hash TEXT NOT NULL
  );
  CREATE INDEX events_kind ON events(kind, code);
  CREATE TABLE reissue_grants (
    device_id  TEXT PRIMARY KEY,
    granted_at TEXT NOT NULL,
    reason     TEXT NOT NULL
  );
  `,
  // 2: export batches. What `export --batch N` needs to write batch N again
  // byte for byte: its ranges, its time, and its CMS signature (ECDSA
  // signatures are randomised, so a new one would change the file).
  `
  CREATE TABLE batches (
    number          INTEGER PRIMARY KEY,
    first_seq       INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    first_event_seq INTEGER NOT NULL,
    last_event_seq  INTEGER NOT NULL,
    created_at      TEXT    NOT NULL,
    previous_sha256 TEXT    NOT NULL,
    signature       BLOB    NOT NULL,
    file_sha256     TEXT    NOT NULL
  );
  `,
  // 3: row format 2 (see chain.ts): the device's name and the issuance a
  // re-issue replaces; events that stand for several identical refusals and
  // the operator who caused them. Serials are looked up whatever their form.
  `
  ALTER TABLE issuances ADD COLUMN v INTEGER NOT NULL DEFAULT 1;
  ALTER TABLE issuances ADD COLUMN name TEXT;
  ALTER TABLE issuances ADD COLUMN supersedes INTEGER;
  ALTER TABLE events ADD COLUMN v INTEGER NOT NULL DEFAULT 1;
  ALTER TABLE events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
  ALTER TABLE events ADD COLUMN operator TEXT;
  CREATE INDEX issuances_serial ON issuances(ltrim(serial, '0'));
  CREATE INDEX issuances_issued_at ON issuances(issued_at);
  CREATE INDEX issuances_order ON issuances(work_order);
  CREATE INDEX issuances_name ON issuances(name);
  CREATE INDEX events_device ON events(device_id);
  CREATE INDEX events_at ON events(at);
  -- Production control. Each table is a projection of hash-chained events
  -- (order_open, order_close, revocation, clock_confirm) that the station
  -- reads in one query per request; the events are the record.
  CREATE TABLE orders (
    id          TEXT PRIMARY KEY,
    quantity    INTEGER NOT NULL,
    hardware_id TEXT,
    operator    TEXT NOT NULL,
    opened_at   TEXT NOT NULL,
    issued      INTEGER NOT NULL DEFAULT 0,
    closed_at   TEXT,
    closed_by   TEXT
  );
  CREATE UNIQUE INDEX orders_one_open ON orders((closed_at IS NULL)) WHERE closed_at IS NULL;
  CREATE TABLE revoked (
    device_id TEXT PRIMARY KEY,
    event_seq INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    at        TEXT NOT NULL
  );
  CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
  -- Signed checkpoints of both chains' heads (ledger/checkpoint.ts).
  CREATE TABLE checkpoints (
    n               INTEGER PRIMARY KEY,
    at              TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    issuance_seq    INTEGER NOT NULL,
    issuance_hash   TEXT    NOT NULL,
    event_seq       INTEGER NOT NULL,
    event_hash      TEXT    NOT NULL,
    issuance_hashes BLOB    NOT NULL,
    event_hashes    BLOB    NOT NULL,
    previous        TEXT    NOT NULL,
    signature       BLOB    NOT NULL
  );
  -- A name for this ledger file, so the token's checkpoint names the ledger it belongs to.
  INSERT INTO settings (key, value) VALUES ('ledger_id', lower(hex(randomblob(16))));
  `,
  // 4: what each device's name looks like (text.ts nameSkeleton), so that a name that passes for
  // another is refused with one indexed lookup. Derived from the name, not hashed: the ledger fills
  // it in for older rows (index.ts migrate) and verify recomputes it.
  `
  ALTER TABLE issuances ADD COLUMN name_skeleton TEXT;
  CREATE INDEX issuances_name_skeleton ON issuances(name_skeleton);
  `,
  // 5: the skeletons computed again: from this version on ASCII is not folded (index.ts migrate fills
  // them in; a ledger that ran 4 before kept skeletons that no lookup would match).
  `
  UPDATE issuances SET name_skeleton = NULL WHERE 0;
  `,
  // 6: a device's policy events (revocation, grants, their use) found without reading its refusals:
  // the check made on every decision for a known device (index.ts checkDevicePolicy) read all of
  // them through events_device, 75 ms a decision with 300,000 refusals naming one device.
  `
  CREATE INDEX events_device_kind ON events(device_id, kind, seq);
  `,
];

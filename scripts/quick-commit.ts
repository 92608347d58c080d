import { randomUUID, randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { SqliteLedger } from '../src/ledger/index.js';
for (const variant of ['default', 'ckpt-off']) {
  const f = `/tmp/qc-${variant}.db`;
  for (const x of ['', '-wal', '-shm']) rmSync(f + x, { force: true });
  const l = new SqliteLedger(f, 's');
  if (variant === 'ckpt-off') (l as any).db.pragma('wal_autocheckpoint = 0');
  const N = 6000; const t0 = performance.now(); let worst = 0;
  for (let i = 0; i < N; i++) {
    const a = performance.now();
    l.recordIssuance({ serial: randomBytes(16).toString('hex'), deviceId: randomUUID(), subject: 'CN=x,OU=y,businessCategory=production', publicKeySha256: randomBytes(32).toString('hex'), csrSha256: randomBytes(32).toString('hex'), certificate: randomBytes(560), notBefore: new Date().toISOString(), notAfter: new Date().toISOString(), issuedAt: new Date().toISOString(), link: 'bench' });
    worst = Math.max(worst, performance.now() - a);
  }
  console.log(variant, ((performance.now() - t0) / N * 1000).toFixed(0), 'µs/commit, worst', worst.toFixed(1), 'ms', 'wal pages', (l as any).db.pragma('wal_checkpoint(PASSIVE)'));
  l.close();
}

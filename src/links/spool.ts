/**
 * A USB stick carried between a jig and the station: `DIR/inbox/*.csr`
 * (PEM or DER) in; `DIR/outbox/<name>.pem` (the chain) or
 * `DIR/outbox/<name>.error` (one line `<CODE> <message>`) out, plus
 * `DIR/outbox/root.crt`; each request is moved to `DIR/done/` once
 * answered. The folder is polled: vfat sticks give no reliable change
 * events, and fs.watch sees nothing after a remount. A file is read only
 * after its size and mtime have stood still for a quiet period, so a
 * writer that does not rename into place is not read half-way.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { writeFileAtomic } from '../files.js';
import { LinkReporter, type Link, type LinkObserver, type StationPort } from './types.js';

export interface SpoolLinkOptions {
  dir: string;
  pollMs: number;
  /** How long a file must stand still before it is read (default: 2 polls, at least 1 s). */
  quietMs?: number;
}

const MAX_CSR_FILE = 64 * 1024;

export class SpoolLink implements Link {
  private readonly reporter: LinkReporter;
  private timer: NodeJS.Timeout | null = null;
  private scanning: Promise<void> | null = null;
  private stopping = false;
  private readonly seen = new Map<string, { size: number; mtimeMs: number; since: number }>();

  constructor(
    private readonly station: StationPort,
    private readonly opts: SpoolLinkOptions,
    observer?: LinkObserver,
  ) {
    this.reporter = new LinkReporter(`spool:${opts.dir}`, 'spool', observer);
  }

  get status() {
    return this.reporter.status;
  }

  private get quietMs(): number {
    return this.opts.quietMs ?? Math.max(1000, 2 * this.opts.pollMs);
  }

  async start(): Promise<void> {
    this.schedule(0);
  }

  private schedule(ms: number): void {
    if (this.stopping) return;
    this.timer = setTimeout(() => {
      this.scanning = this.scan()
        .catch((err) => this.reporter.state('waiting', (err as Error).message))
        .finally(() => {
          this.scanning = null;
          this.schedule(this.opts.pollMs);
        });
    }, ms);
  }

  /** One pass over the inbox; also what a test calls to avoid waiting. */
  async scan(): Promise<void> {
    const inbox = join(this.opts.dir, 'inbox');
    if (!existsSync(inbox)) {
      this.reporter.state('waiting', 'no inbox (stick not mounted?)');
      return;
    }
    const outbox = join(this.opts.dir, 'outbox');
    const done = join(this.opts.dir, 'done');
    mkdirSync(outbox, { recursive: true });
    mkdirSync(done, { recursive: true });
    const rootPath = join(outbox, 'root.crt');
    if (!existsSync(rootPath) || readFileSync(rootPath, 'utf8') !== this.station.rootPem) writeFileAtomic(rootPath, this.station.rootPem);
    this.reporter.state('polling');

    const now = Date.now();
    const names = readdirSync(inbox).filter((n) => n.endsWith('.csr') && !n.startsWith('.')).sort();
    for (const key of this.seen.keys()) if (!names.includes(key)) this.seen.delete(key);
    for (const name of names) {
      if (this.stopping) return;
      const path = join(inbox, name);
      let st;
      try {
        st = statSync(path);
      } catch {
        continue; // gone since the listing
      }
      if (!st.isFile()) continue;
      const prev = this.seen.get(name);
      if (!prev || prev.size !== st.size || prev.mtimeMs !== st.mtimeMs) {
        this.seen.set(name, { size: st.size, mtimeMs: st.mtimeMs, since: now });
        if (now - st.mtimeMs < this.quietMs) continue;
      } else if (now - prev.since < this.quietMs && now - st.mtimeMs < this.quietMs) continue;
      await this.answer(path, name, outbox, done, st.size);
      this.seen.delete(name);
    }
  }

  private async answer(path: string, name: string, outbox: string, done: string, size: number): Promise<void> {
    const stem = basename(name, '.csr');
    if (size > MAX_CSR_FILE) {
      const message = `file over ${MAX_CSR_FILE} bytes`;
      this.reporter.refused('TOO_LARGE', message);
      await this.station.recordRefusal(this.reporter.status.name, 'TOO_LARGE', message);
      writeFileAtomic(join(outbox, `${stem}.error`), `TOO_LARGE ${message}\n`);
    } else {
      const r = await this.station.handle({ csr: new Uint8Array(readFileSync(path)), link: this.reporter.status.name });
      this.reporter.result(r);
      if (r.ok) writeFileAtomic(join(outbox, `${stem}.pem`), r.chain);
      else writeFileAtomic(join(outbox, `${stem}.error`), `${r.code} ${r.message.replace(/[\r\n]+/g, ' ')}\n`);
      // A stale answer from an earlier drop of the same name must not stand beside the new one.
      const stale = join(outbox, `${stem}.${r.ok ? 'error' : 'pem'}`);
      if (existsSync(stale)) renameSync(stale, join(done, `${stem}.${r.ok ? 'error' : 'pem'}.old-${Date.now()}`));
    }
    renameSync(path, join(done, existsSync(join(done, name)) ? `${name}.${Date.now()}` : name));
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.scanning) await this.scanning;
    this.reporter.state('stopped');
  }
}

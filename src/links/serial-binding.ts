/**
 * node-serialport's Linux binding with its reads and writes made where the
 * port's readiness is known, not on libuv's pool. The stock binding reads
 * and writes with fs.read/fs.write, each a trip to a pool thread and back
 * (two thread wake-ups) although its poller has just said the descriptor is
 * ready; with four J1 links signing, those trips were 5.6 of the links'
 * thread's 7 context switches a certificate. The descriptor is
 * non-blocking (the binding opens it O_NONBLOCK), so readSync and writeSync
 * never wait: they move what the kernel has or takes now, and on EAGAIN
 * the port waits for its poller, as the stock binding does. A jig that
 * stops reading therefore holds nothing but its own reply (the link's write
 * deadline), never this thread.
 */
import { readSync, writeSync } from 'node:fs';
import {
  BindingsError,
  LinuxBinding,
  type BindingInterface,
  type BindingPortInterface,
  type LinuxOpenOptions,
  type LinuxPortBinding,
  type LinuxSetOptions,
  type UpdateOptions,
} from '@serialport/bindings-cpp';

// The poller's event bits (bindings-cpp's EVENTS, not exported from its index).
const UV_READABLE = 0b0001;
const UV_WRITABLE = 0b0010;
const UV_DISCONNECT = 0b0100;

const WOULD_BLOCK = new Set(['EAGAIN', 'EWOULDBLOCK', 'EINTR']);
// What the stock binding takes for a cable pulled out (the stream then closes the port); any other error is the port's 'error'.
const DISCONNECTED = new Set(['EBADF', 'ENXIO', 'UNKNOWN']);

function portError(err: unknown): Error {
  const e = err as NodeJS.ErrnoException & { disconnect?: boolean };
  if (DISCONNECTED.has(e.code ?? '') || e.errno === -1) e.disconnect = true;
  return e;
}

class ReadyPort implements BindingPortInterface {
  constructor(private readonly inner: LinuxPortBinding) {}

  get openOptions(): Required<LinuxOpenOptions> {
    return this.inner.openOptions;
  }

  get isOpen(): boolean {
    return this.inner.isOpen;
  }

  /**
   * Resolves when the poller says `event`; rejects (canceled) when the port closes meanwhile.
   *
   * The binding's poller (bindings-cpp 13, poller.cpp) restarts its libuv poll with only the event
   * asked for last: a read waiting for input dropped a write's wait for room, and a reply stopped
   * half-written while the jig read it, until the jig sent a byte or the write deadline gave it up
   * (an attack review: 3 to 5 of 10 batches of 8 pipelined SIGNs). So the poll is asked again for
   * every event someone waits on.
   */
  private ready(event: 'readable' | 'writable'): Promise<void> {
    const poller = this.inner.poller;
    const promise = new Promise<void>((resolve, reject) => poller.once(event, (err: Error | null) => (err ? reject(err) : resolve())));
    let wanted = 0;
    if (poller.listenerCount('readable') > 0) wanted |= UV_READABLE;
    if (poller.listenerCount('writable') > 0) wanted |= UV_WRITABLE;
    if (poller.listenerCount('disconnect') > 0) wanted |= UV_DISCONNECT;
    poller.poll(wanted);
    return promise;
  }

  async read(buffer: Buffer, offset: number, length: number): Promise<{ buffer: Buffer; bytesRead: number }> {
    for (;;) {
      const fd = this.inner.fd;
      if (fd === null) throw new BindingsError('Port is not open', { canceled: true });
      let bytesRead: number;
      try {
        bytesRead = readSync(fd, buffer, offset, length, null);
      } catch (err) {
        if (!WOULD_BLOCK.has((err as NodeJS.ErrnoException).code ?? '')) throw portError(err);
        // Nothing now: wait for the poller.
        await this.ready('readable');
        continue;
      }
      if (bytesRead > 0) return { buffer, bytesRead };
      // End of file: a tty that hung up (a USB device pulled) reads 0 for ever, and its poller says
      // readable for ever. Asking again would spin this thread; the port is gone, as for ENXIO.
      throw Object.assign(new Error('the port hung up (end of file)'), { disconnect: true });
    }
  }

  async write(buffer: Buffer): Promise<void> {
    let offset = 0;
    while (offset < buffer.length) {
      const fd = this.inner.fd;
      if (fd === null) throw new BindingsError('Port is not open', { canceled: true });
      try {
        offset += writeSync(fd, buffer, offset, buffer.length - offset);
        continue;
      } catch (err) {
        if (!WOULD_BLOCK.has((err as NodeJS.ErrnoException).code ?? '')) throw portError(err);
      }
      await this.ready('writable');
    }
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  update(options: UpdateOptions): Promise<void> {
    return this.inner.update(options);
  }

  set(options: LinuxSetOptions): Promise<void> {
    return this.inner.set(options);
  }

  get(): ReturnType<LinuxPortBinding['get']> {
    return this.inner.get();
  }

  getBaudRate(): Promise<{ baudRate: number }> {
    return this.inner.getBaudRate();
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  drain(): Promise<void> {
    return this.inner.drain();
  }
}

/** The Linux binding with ReadyPort's reads and writes; listing and opening are the stock binding's. */
export const ReadyBinding: BindingInterface<ReadyPort, LinuxOpenOptions> = {
  list: () => LinuxBinding.list(),
  open: async (options) => new ReadyPort(await LinuxBinding.open(options)),
};

/**
 * What a serving station answers on its control channel: the operator
 * actions (src/operator), plus a CSR to sign (`line-signer sign`), an
 * export, and its live health. Requests are checked field by field: the
 * socket is private to the service user, but a request is still input.
 */
import type { StationConfig } from '../config/index.js';
import { asLineSignerError, LineSignerError } from '../errors.js';
import { exportBatch } from '../export/index.js';
import { SqliteLedger, type NewEvent } from '../ledger/index.js';
import { ControlServer } from '../operator/control.js';
import { actionSummary, cliLink, perform, type OperatorRequest } from '../operator/index.js';
import type { OpenStation } from '../station/index.js';
import { checkClientText, TEXT_LIMITS } from '../text.js';

export type OwnerRequest =
  | OperatorRequest
  | { op: 'sign'; csr: string; hardwareId?: string | undefined; name?: string | undefined; operator?: string | undefined }
  | { op: 'export'; outDir: string; batch?: number | undefined; operator?: string | undefined }
  | { op: 'health' };

const str = (v: unknown, what: string): string => {
  if (typeof v !== 'string') throw new LineSignerError('USAGE', `control request: ${what} must be text`);
  return v;
};

/** The request, checked: each op with exactly the fields it takes. */
export function ownerRequest(raw: unknown): OwnerRequest {
  if (!raw || typeof raw !== 'object') throw new LineSignerError('USAGE', 'control request: not an object');
  const r = raw as Record<string, unknown>;
  const op = str(r.op, 'op');
  switch (op) {
    case 'sign':
      return {
        op,
        csr: str(r.csr, 'csr'),
        hardwareId: r.hardwareId === undefined ? undefined : checkClientText('hardwareId', str(r.hardwareId, 'hardwareId'), TEXT_LIMITS.hardwareId),
        name: r.name === undefined ? undefined : checkClientText('name', str(r.name, 'name'), TEXT_LIMITS.name),
        operator: r.operator === undefined ? undefined : checkClientText('operator', str(r.operator, 'operator'), 64),
      };
    case 'export':
      return { op, outDir: str(r.outDir, 'outDir'), batch: typeof r.batch === 'number' ? r.batch : undefined, operator: r.operator === undefined ? undefined : checkClientText('operator', str(r.operator, 'operator'), 64) };
    case 'health':
      return { op };
    case 'allow-reissue':
      return { op, device: str(r.device, 'device'), reason: str(r.reason, 'reason'), operator: str(r.operator, 'operator') };
    case 'revoke':
      return { op, target: str(r.target, 'target'), reason: str(r.reason, 'reason'), operator: str(r.operator, 'operator') };
    case 'order-open': {
      if (typeof r.quantity !== 'number') throw new LineSignerError('USAGE', 'control request: quantity must be a number');
      return { op, id: str(r.id, 'id'), quantity: r.quantity, hardwareId: r.hardwareId === null ? null : str(r.hardwareId, 'hardwareId'), operator: str(r.operator, 'operator') };
    }
    case 'order-close':
      return { op, id: str(r.id, 'id'), operator: str(r.operator, 'operator') };
    case 'clock-confirm':
      return { op, reason: str(r.reason, 'reason'), operator: str(r.operator, 'operator') };
    case 'backup':
      return { op, dest: str(r.dest, 'dest'), operator: str(r.operator, 'operator') };
    case 'accept':
      throw new LineSignerError('USAGE', 'ledger accept is for a stopped station: a serving station has accepted its ledger at start');
    default:
      throw new LineSignerError('USAGE', `control request: unknown op ${JSON.stringify(op.slice(0, 32))}`);
  }
}

/**
 * What the serving station shows of a request that came through its
 * control channel: an operator's action or a certificate signed by hand,
 * done or refused. `fields` are for the JSON log.
 */
export type ControlNotice = (line: string, fields: Record<string, unknown>) => void;

/** Serves the control channel for a station that owns its ledger; returns the server to close at stop. */
export function serveControl(config: StationConfig, open: OpenStation, notice: ControlNotice = () => undefined): Promise<ControlServer> {
  const ledger = new SqliteLedger(config.station.ledger, config.station.id);
  const ctx = {
    config,
    ledger,
    checkpoint: (reason: string) => open.checkpointer.take(reason),
    recordEvent: (e: NewEvent) => open.ledger.recordEvent(e),
    whileDiskBusy: <T>(work: () => Promise<T>) => open.ledger.whileDiskBusy(work),
    // A checkpoint first: what the one after the action needs (a signature and a token write) works now.
    async tokenReady(): Promise<void> {
      try {
        await open.checkpointer.take('operator');
      } catch (err) {
        throw new LineSignerError('TOKEN_UNAVAILABLE', `${(err as Error).message}; nothing recorded: an operator action is checkpointed by the token as it is made`);
      }
    },
  };
  const handle = async (req: ReturnType<typeof ownerRequest>): Promise<unknown> => {
    switch (req.op) {
      case 'sign': {
        const who = req.operator ?? 'someone';
        const r = await open.station.handle({ csr: new Uint8Array(Buffer.from(req.csr, 'base64')), link: cliLink(req.operator), hardwareId: req.hardwareId, name: req.name });
        if (r.ok) notice(`${who} signed device ${r.deviceId} by hand${r.replayed ? ' (its certificate again)' : ''}`, { op: 'sign', operator: who, deviceId: r.deviceId });
        else notice(`${who} signing by hand refused: ${r.code} ${r.message}`, { op: 'sign', operator: who, code: r.code });
        return r;
      }
      case 'export': {
        // Edits made while it serves must not reach a signed batch (and sync) before the next start refuses them.
        await open.ledger.checkBeforeExport();
        const bound = open.ledger.exportBound();
        const r = await open.ledger.whileDiskBusy(() => exportBatch(config, { outDir: req.outDir, batch: req.batch, operator: req.operator, upTo: bound.upTo, beforeRecord: bound.stillOwn }));
        await open.checkpointer.take('export');
        const who = req.operator ?? 'someone';
        if (r) notice(`${who} exported batch ${r.number} (${r.issuances} issuances, ${r.revocations} revocations${r.rewritten ? ', written again' : ''}) to ${r.path}`, { op: 'export', operator: who, batch: r.number });
        else notice(`${who} exported nothing: no issuance or revocation since the last batch`, { op: 'export', operator: who });
        return r;
      }
      case 'health':
        return { health: await open.station.checkHealth(), checkpoint: open.checkpointer.failure, pid: process.pid };
      default: {
        const result = await perform(ctx, req);
        open.station.invalidate();
        notice(actionSummary(req, result), { op: req.op, operator: req.operator });
        return result;
      }
    }
  };
  return ControlServer.listen(config.station.ledger, async (raw) => {
    const req = ownerRequest(raw);
    try {
      // A command that opens the path (an export, a backup) would read and write another file than the station's.
      const lost = req.op === 'health' ? null : open.ledgerFileProblem();
      if (lost) throw new LineSignerError('LEDGER', `${lost.text}; nothing done: the station stops`);
      return await handle(req);
    } catch (err) {
      // A refused action is shown too: who tried what, and why not (the ledger records only what was done).
      if (req.op !== 'health') {
        const e = asLineSignerError(err);
        const who = req.operator ?? 'someone';
        notice(`${who}: ${req.op} refused: ${e.code} ${e.message}`, { op: req.op, operator: who, code: e.code });
      }
      throw err;
    }
  }).then((server) => {
    const close = server.close.bind(server);
    server.close = async () => {
      await close();
      ledger.close();
    };
    return server;
  });
}

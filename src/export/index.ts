export { checkRecordedBatches, exportBatch, type BatchProblem, type ExportOptions, type ExportResult } from './export.js';
export { verifyBatch, verifyBatches, type BatchSummary, type VerifyOptions } from './verify.js';
export { sync, readApiToken, type SyncOptions, type SyncSummary } from './sync.js';
export { batchFileName, FORMAT, EXTENSION } from './format.js';
export { signDetached, verifyDetached } from './cms.js';

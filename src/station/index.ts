export { Station, MAX_FRAME, type LocalCa, type StationParts } from './station.js';
export type { SignRequest, SignResult, Issued, Refused, StationHello } from './types.js';
export { openStation, openToken, localCaFrom, rulesFrom, readCertificateFile, type OpenStation, type OpenOptions } from './open.js';
export { caInit, caInitToken, caCsr, caImport, caShow, caDemo, stationKeyInit, type CaShow, type DemoReport, type ImportOptions } from './ca-admin.js';
export { stationStatus, type StationStatus } from './audit.js';
export { verifyLedger, type LedgerReport, type LedgerProblem, type VerifyLedgerOptions } from './verify.js';

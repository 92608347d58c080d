export type { Signer } from './signer.js';
export { OID_ECDSA_SHA256, OID_ECDSA_SHA384 } from './signer.js';
export { AmbiguousTokenError, Pkcs11Token, TokenSigner, type KeyInfo, type TokenOptions } from './pkcs11.js';
export { WorkerSigner } from './worker-signer.js';
export { HoldGate } from './hold-gate.js';

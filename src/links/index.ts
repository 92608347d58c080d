export { SerialLink, type SerialLinkOptions } from './serial.js';
export { LinkRunner, planLinks, parseSerialFlag, serialLinks, type LinkPlan, type LinkFactory } from './runner.js';
export type { Link, LinkEvent, LinkObserver, LinkStatus, StationPort } from './types.js';
export { J1Session } from './j1/session.js';
export { J1LineSplitter, type LineEvent } from './j1/line-splitter.js';
export { decodeFrame, decodeReply, encodeFrame, errorFrame, crcHex, MAX_LINE } from './j1/frame.js';

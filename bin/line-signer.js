#!/usr/bin/env -S node --single-threaded-gc --min-semi-space-size=16
// GC on the thread that allocates: on a two-core station V8's GC helper
// threads competed with the checking workers (5-12% more certificates/s
// without them). No --max-semi-space-size: a larger young generation gave
// no more certificates/s in paired runs and let a serving station's RSS
// grow by 200 MB over 100,000 issuances, and the flag would override the
// workers' own small young generation (worker-rpc.ts). The links' thread's
// young generation starts at the size V8 grows it to under load (16 MB
// semi-spaces), so a station's memory is its working size from the first
// minutes instead of creeping up over its first 10,000 issuances; the
// workers' own limit (4 MB) caps the flag for them.
import '../dist/src/cli/main.js';

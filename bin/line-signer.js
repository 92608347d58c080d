#!/usr/bin/env -S node --single-threaded-gc
// GC on the thread that allocates: on a two-core station V8's GC helper
// threads competed with the checking workers (5-12% more certificates/s
// without them). No --max-semi-space-size: a larger young generation gave
// no more certificates/s in paired runs and let a serving station's RSS
// grow by 200 MB over 100,000 issuances, and the flag would override the
// workers' own small young generation (worker-rpc.ts).
import '../dist/src/cli/main.js';

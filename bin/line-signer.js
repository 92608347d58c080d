#!/usr/bin/env -S node --max-semi-space-size=16 --single-threaded-gc
// A young generation of 16 MB semi-spaces: 64 MB gave no more certificates/s
// in paired runs and let a serving station's RSS grow by 200 MB over 100,000
// issuances (see README, figures). GC on the thread that allocates: on a
// two-core station V8's GC helper threads competed with the checking
// workers (5-12% more certificates/s without them).
import '../dist/src/cli/main.js';

#!/usr/bin/env -S node --max-semi-space-size=64
// A larger young generation: fewer scavenges on the signing path, measured
// to cut the station's p99 time per request (see README, figures).
import '../dist/src/cli/main.js';

/**
 * A station that dies the way a SIGKILL or a power cut during its start
 * would: after the start's rows are committed, before the checkpoint that
 * covers them. `node die-starting.js CONFIG`, with the caller's
 * environment (SOFTHSM2_CONF).
 */
import { loadConfig } from '../../src/config/index.js';
import { openStation } from '../../src/station/index.js';

const config = loadConfig(process.argv[2]!);
await openStation(config, { operator: 'dies-starting', afterStartRows: () => process.kill(process.pid, 'SIGKILL') });
// Not reached: the process is gone.
process.exit(3);

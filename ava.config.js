// The main suite. Files named *.alone.test.js measure responsiveness and run
// afterwards on their own (ava.alone.config.js), so that no other test
// process competes with them for this machine's two cores.
export default {
  files: ['dist/test/**/*.test.js', '!dist/test/**/*.alone.test.js'],
  // SoftHSM reads SOFTHSM2_CONF from the process environment: worker threads would not see it.
  workerThreads: false,
  timeout: '120s',
  concurrency: 2,
};

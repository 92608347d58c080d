// Tests that assert responsiveness (a PING answered within 20 ms while a
// slow token signs): one file at a time, one test at a time, nothing else running.
export default {
  files: ['dist/test/**/*.alone.test.js'],
  workerThreads: false,
  timeout: '120s',
  concurrency: 1,
  serial: true,
};

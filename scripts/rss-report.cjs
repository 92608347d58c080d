// Preloaded by scripts/bench into a child process: reports its peak memory at exit.
process.on('exit', () => {
  require('node:fs').writeSync(2, `\nmaxrss_kb=${process.resourceUsage().maxRSS}\n`);
});

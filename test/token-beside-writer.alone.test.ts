/**
 * A command run beside a process that keeps writing the token (as
 * `ledger verify` or `status` beside a serving station, which stores its
 * checkpoint object every second) opens it every time. SoftHSM2 can catch
 * the token mid-rewrite: C_GetTokenInfo or C_Login fail with
 * CKR_GENERAL_ERROR, or the token is left out of the process's view
 * (src/token/pkcs11.ts lookAgain). Before, about 1 open in 70 failed here.
 */
import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { PIN, SOFTHSM_MODULE, TOKEN_LABEL, testPki } from './helpers/pki.js';

const run = promisify(execFile);
const tokenModule = JSON.stringify(new URL('../src/token/index.js', import.meta.url).href);
const opts = JSON.stringify({ module: SOFTHSM_MODULE, tokenLabel: TOKEN_LABEL, pin: PIN });

test('opens made while another process rewrites the token all succeed', async (t) => {
  testPki(); // SOFTHSM2_CONF for the children
  const writer = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `const { Pkcs11Token } = await import(${tokenModule});
       const t = Pkcs11Token.open(${opts});
       for (let i = 0; i < 8000; i++) t.writeData('rewritten', Buffer.from('value ' + i));
       t.close();`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  writer.stderr.on('data', (d) => (stderr += d));
  let writing = true;
  const exited = new Promise<number | null>((resolve) => writer.on('exit', (code) => ((writing = false), resolve(code))));
  const failures: string[] = [];
  let opens = 0;
  const opener = async (): Promise<void> => {
    while (writing) {
      const { stdout } = await run(process.execPath, [
        '--input-type=module',
        '-e',
        `const { Pkcs11Token } = await import(${tokenModule});
         try { Pkcs11Token.open(${opts}).close(); console.log('ok'); } catch (e) { console.log(e.message); }`,
      ]);
      if (!writing) break; // only opens that overlapped the writer count
      opens++;
      if (stdout.trim() !== 'ok') failures.push(stdout.trim());
    }
  };
  await Promise.all([opener(), opener(), opener()]);
  t.is(await exited, 0, stderr);
  t.log(`${opens} opens beside the writer`);
  t.true(opens >= 100, `only ${opens} opens overlapped the writer`);
  t.deepEqual(failures, []);
});

// tether.js against the Autobahn|Testsuite in client mode (every case, sections 1-13), through
// kosoku's fuzzing server: web/test/autobahn-client.mjs does the walk, this asserts that no case
// failed and none was unimplemented. The report stays in target/autobahn/client-js/.
// Takes minutes: the 12.x/13.x compression cases echo thousands of messages each.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { KOSOKU, reportLines, runAutobahnClient, summarize, summaryLine } from './autobahn-client.mjs';
import { underCI } from './harness.mjs';

const CASE_TIMEOUT_MS = 120000;
const TOTAL_MS = 20 * 60000;

function requirement() {
  if (existsSync(KOSOKU)) return false;
  const why = `missing: kosoku (${KOSOKU}; .venv/bin/pip install kosoku==0.1.0, or set TETHER_KOSOKU)`;
  if (underCI()) throw new Error(`the Autobahn test cannot run under CI: ${why}`);
  console.error(`\n!!!!!!!! SKIPPED Autobahn client test: ${why} !!!!!!!!\n`);
  return why;
}

const skip = requirement();

test('verdicts: a closing verdict other than OK or INFORMATIONAL fails the case; a case without one fails', () => {
  const entry = (behavior, behaviorClose) => ({ behavior, behaviorClose, reportfile: 'r.json' });
  const index = {
    'tether.js': {
      '1.1.1': entry('OK', 'OK'),
      '6.4.1': entry('NON-STRICT', 'OK'),
      '7.1.6': entry('INFORMATIONAL', 'INFORMATIONAL'),
      '13.2.1': entry('UNIMPLEMENTED', 'OK'),
      '7.3.1': entry('OK', 'WRONG CODE'),
      '7.3.2': entry('OK', 'UNCLEAN'),
      '7.3.3': entry('OK', 'FAILED BY CLIENT'),
      '9.3.1': entry('FAILED', 'OK'),
      '13.7.1': entry('ERROR', 'FAILED'),
    },
  };
  const summary = summarize(index, 'tether.js', 10);
  assert.equal(
    summaryLine('tether.js', summary),
    'autobahn client tether.js: 10 cases: OK 1, NON-STRICT 1, INFORMATIONAL 1, UNIMPLEMENTED 1, FAILED 6',
  );
  assert.deepEqual(summary.failed.map((f) => f.id), ['7.3.1', '7.3.2', '7.3.3', '9.3.1', '13.7.1']);
  assert.equal(summary.missing, 1);
  assert.deepEqual(summary.unimplemented, ['13.2.1']);
});

test('tether.js passes every Autobahn client case: none failed, none unimplemented', { skip, timeout: TOTAL_MS + 5 * 60000 }, async () => {
  const run = await runAutobahnClient({
    caseTimeoutMs: CASE_TIMEOUT_MS,
    totalMs: TOTAL_MS,
    progress: (line) => console.log(line),
  });
  const lines = reportLines(run);
  for (const line of lines) console.log(line);
  const why = `${lines.join('\n')}\nreport: ${run.outdir}/index.html`;
  // Autobahn numbers its sections 1-13 without an 8 or an 11.
  const sections = [...new Set(run.ids.map((id) => Number(id.split('.')[0])))].sort((a, b) => a - b);
  assert.deepEqual(sections, [1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13], `sections run\n${why}`);
  assert.equal(run.counts.FAILED, 0, why);
  assert.equal(run.counts.UNIMPLEMENTED, 0, why);
  assert.deepEqual(run.kosokuExit, { code: 0, signal: null }, `kosoku counts a case as failed:\n${why}\n${run.kosokuLog}`);
});

// The test harness's own rules, checked without a server: when `CI` counts as CI, and how a
// metric is looked up in /metrics. Run: cd web && node --test test/harness.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { underCI } from './harness.mjs';

test('CI counts only when set to a yes', () => {
  for (const value of ['true', 'TRUE', '1', 'yes', 'on', 'woodpecker']) assert.equal(underCI(value), true, `CI=${value}`);
  for (const value of [undefined, '', ' ', 'false', 'FALSE', '0', 'no', 'off']) {
    assert.equal(underCI(value), false, `CI=${JSON.stringify(value)}`);
  }
});

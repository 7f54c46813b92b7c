// The test harness's own rules, checked without a server: when `CI` counts as CI, and how a
// metric is looked up in /metrics. Run: cd web && node --test test/harness.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { metricSum, underCI } from './harness.mjs';

test('CI counts only when set to a yes', () => {
  for (const value of ['true', 'TRUE', '1', 'yes', 'on', 'woodpecker']) assert.equal(underCI(value), true, `CI=${value}`);
  // null stands for unset: an explicit `undefined` would make underCI read process.env.CI instead,
  // which is 'true' when this very suite runs under CI.
  for (const value of [null, '', ' ', 'false', 'FALSE', '0', 'no', 'off']) {
    assert.equal(underCI(value), false, `CI=${JSON.stringify(value)}`);
  }
});

// A /metrics text as the server writes it (OpenMetrics), with one extra gauge whose name starts
// with another's. The same cases as crates/tether-cli/tests/harness.rs.
const EXPOSITION = `# HELP tether_connections_open Open WebSocket connections.
# TYPE tether_connections_open gauge
tether_connections_open 7
# TYPE tether_connections_open_max gauge
tether_connections_open_max 9
# TYPE tether_deliveries counter
tether_deliveries_total 5
# TYPE tether_deliveries_dropped counter
tether_deliveries_dropped_total 2
# TYPE tether_heartbeat_timeouts counter
tether_heartbeat_timeouts_total 1
# TYPE tether_heartbeat_rtt_seconds histogram
tether_heartbeat_rtt_seconds_sum 0.5
tether_heartbeat_rtt_seconds_count 4
tether_heartbeat_rtt_seconds_bucket{le="0.1"} 3
tether_heartbeat_rtt_seconds_bucket{le="+Inf"} 4
# TYPE tether_connections_closed counter
tether_connections_closed_total{code="1000",initiator="client"} 3
tether_connections_closed_total{code="1006",initiator="network"} 2
tether_connections_closed_total{code="1006",initiator="client"} 1
# EOF
`;

test('a metric is its exact name and labels, never a prefix', () => {
  const sum = (selector) => metricSum(EXPOSITION, selector);
  assert.equal(sum('tether_connections_open'), 7, 'the exact name, not every name that starts with it');
  assert.equal(sum('tether_deliveries_total'), 5);
  assert.equal(sum('tether_connections_closed_total{code="1000",initiator="client"}'), 3);
  assert.equal(sum('tether_connections_closed_total{initiator="client",code="1000"}'), 3, 'labels in any order');
  assert.equal(sum('tether_connections_closed_total{code="1006"}'), 3, 'labels not given are summed over');
  assert.equal(sum('tether_connections_closed_total'), 6);
  assert.equal(sum('tether_heartbeat_rtt_seconds_bucket{le="+Inf"}'), 4);
  assert.equal(sum('tether_recoveries_total{outcome="recovered"}'), 0, 'a registered family with no series yet');
  for (const wrong of ['tether_deliveries', 'tether_heartbeat_timeouts', 'tether_heartbeat_rtt_seconds', 'tether_recoverys_total']) {
    assert.throws(() => sum(wrong), new RegExp(wrong), `${wrong} is no metric's sample`);
  }
  assert.throws(() => sum('tether_connections_closed_total{code="1006"'), /selector/, 'an unclosed label set');
});

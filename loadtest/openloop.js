// Open-loop load for POST /prerank (or /retrieve): k6's constant-arrival-rate executor starts requests at a fixed
// rate whether or not earlier ones have answered, so queueing shows in the latency (no coordinated
// omission). Arrivals that find no free VU are counted as dropped_iterations.
// Run by loadtest/openloop.py: k6 run -e URL=http://host:port/prerank -e BODIES=file.json -e RATE=100 -e SECONDS=20 openloop.js
import http from 'k6/http';
import { check } from 'k6';
import { openLoopOptions } from './openloop_scenario.js';
import { Counter } from 'k6/metrics';

const shed = new Counter('shed');  // 503 answers: load shed by admission control

const bodies = JSON.parse(open(__ENV.BODIES));
const headers = { 'Content-Type': 'application/json' };

export const options = openLoopOptions({
  // a threshold that always holds, so the summary carries the accepted (2xx) requests' latency apart
  thresholds: { 'http_req_duration{expected_response:true}': ['max>=0'] },
});

export default function () {
  const body = bodies[(__ITER + __VU * 7919) % bodies.length];
  const res = http.post(__ENV.URL, body, { headers: headers });
  check(res, { 'status 200': (r) => r.status === 200 });
  if (res.status === 503) shed.add(1);
}

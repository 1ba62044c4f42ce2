// Open-loop load for prerank.v1.Prerank/Rank (gRPC): the same constant-arrival-rate scenario and
// request bodies as openloop.js, over one HTTP/2 connection per VU.
// Run by loadtest/openloop.py --protocol grpc: k6 run -e ADDR=host:port -e PROTO_DIR=... -e BODIES=... \
//   -e RATE=100 -e SECONDS=20 openloop_grpc.js
import grpc from 'k6/net/grpc';
import exec from 'k6/execution';
import { check } from 'k6';
import { openLoopOptions } from './openloop_scenario.js';
import { Counter } from 'k6/metrics';

// Bodies as openloop.py writes them for gRPC: ad ids as base64 little-endian int64 (ad_ids_le) and
// binary_response set, so neither side converts 10k candidates element by element.
const bodies = JSON.parse(open(__ENV.BODIES));
const shed = new Counter('shed');  // RESOURCE_EXHAUSTED: load shed by admission control
const client = new grpc.Client();
client.load([__ENV.PROTO_DIR], 'prerank.proto');

export const options = openLoopOptions();

export default function () {
  if (exec.vu.iterationInScenario === 0) {
    client.connect(__ENV.ADDR, { plaintext: true });
  }
  const body = bodies[(__ITER + __VU * 7919) % bodies.length];
  const res = client.invoke('prerank.v1.Prerank/Rank', body);
  check(res, { 'status OK': (r) => r && r.status === grpc.StatusOK });
  if (res && res.status === grpc.StatusResourceExhausted) shed.add(1);
}

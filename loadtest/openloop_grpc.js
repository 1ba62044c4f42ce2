// Open-loop load for prerank.v1.Prerank/Rank (gRPC): the same constant-arrival-rate scenario and
// request bodies as openloop.js, over one HTTP/2 connection per VU.
// Run by loadtest/openloop.py --protocol grpc: k6 run -e ADDR=host:port -e PROTO_DIR=... -e BODIES=... \
//   -e RATE=100 -e SECONDS=20 openloop_grpc.js
import grpc from 'k6/net/grpc';
import exec from 'k6/execution';
import { check } from 'k6';

const bodies = JSON.parse(open(__ENV.BODIES)).map((b) => {
  const r = JSON.parse(b);
  return { user: { id: String(r.user.id) }, ad_ids: r.candidates.ad_ids, top_k: r.top_k || 0 };
});
const rate = parseInt(__ENV.RATE);
const client = new grpc.Client();
client.load([__ENV.PROTO_DIR], 'prerank.proto');

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['min', 'med', 'p(99)', 'p(99.9)', 'max', 'count'],
  scenarios: {
    open: {
      executor: 'constant-arrival-rate',
      rate: rate,
      timeUnit: '1s',
      duration: `${__ENV.SECONDS}s`,
      preAllocatedVUs: Math.max(4, Math.ceil(rate / 10)),
      maxVUs: Math.max(8, rate),
    },
  },
};

export default function () {
  if (exec.vu.iterationInScenario === 0) {
    client.connect(__ENV.ADDR, { plaintext: true });
  }
  const body = bodies[(__ITER + __VU * 7919) % bodies.length];
  const res = client.invoke('prerank.v1.Prerank/Rank', body);
  check(res, { 'status OK': (r) => r && r.status === grpc.StatusOK });
}

// The open-loop scenario both load scripts run (openloop.js: HTTP, openloop_grpc.js: gRPC): k6's
// constant-arrival-rate executor at RATE requests/s for SECONDS, VUs sized to the rate.
export function openLoopOptions(extra) {
  const rate = parseInt(__ENV.RATE);
  return Object.assign(
    {
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
    },
    extra || {},
  );
}

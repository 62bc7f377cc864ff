// Subscriber load for tests/bench_events.py: `count` Subscribe streams on one notify (or baseline) server,
// recording each response's receipt time. Node's gRPC client costs a fraction of a Python one per message,
// so the measurement is of the servers, not of the clients competing with them for the same two cores.
//
//   node tests/bench/bench_client.mjs HOST:PORT COUNT OUT TOKEN
//
// Writes OUT.ready once every stream is subscribed; on SIGTERM writes OUT: [[stream, ms, base64 response], ...].
import fs from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(process.env.BENCH_NODE_MODULES + '/');
const grpc = require('@grpc/grpc-js');

const [target, countText, out, token] = process.argv.slice(2);
const count = Number(countText);
const identity = (b) => b;
const Client = grpc.makeGenericClientConstructor({
  Subscribe: {
    path: '/notify.v1.NotifyService/Subscribe',
    requestStream: false,
    responseStream: true,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
});

const records = [];
const calls = [];
let ready = 0;
let client;
for (let i = 0; i < count; i++) {
  if (i % 50 === 0) {  // 50 streams per connection
    client = new Client(target, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
  }
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  const call = client.Subscribe(Buffer.alloc(0), metadata);
  call.on('metadata', () => {
    ready += 1;
    if (ready === count) fs.writeFileSync(`${out}.ready`, '');
  });
  call.on('data', (data) => records.push([i, performance.timeOrigin + performance.now(), data]));
  call.on('error', () => {});
  calls.push(call);
}

process.on('SIGTERM', () => {
  for (const call of calls) call.cancel();
  fs.writeFileSync(out, JSON.stringify(records.map(([i, t, data]) => [i, t, data.toString('base64')])));
  process.exit(0);
});

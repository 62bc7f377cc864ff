// The subscriber load of tests/bench/bench_events.py, the same program for both systems: COUNT subscribers on
// one server, each event's receipt time recorded under its change ("<booking id>/<event type>").
//
//   node tests/bench/bench_client.mjs grpc HOST:PORT COUNT OUT TOKEN   # notify.v1.NotifyService/Subscribe
//   node tests/bench/bench_client.mjs grpc-decode HOST:PORT COUNT OUT TOKEN  # the same, every message decoded
//   node tests/bench/bench_client.mjs sio  HOST:PORT COUNT OUT         # Socket.IO, event "booking"
//
// A gRPC subscriber whose stream ends resumes from the last event it got (what a client of this project does);
// a Socket.IO client reconnects by itself (socket.io-client's default), which is all that system offers.
// Writes OUT.ready once every subscriber is connected; on SIGTERM writes OUT:
//   {"changes": {key: [receipt ms, ...]}, "streams": {key: distinct subscribers}, "resumes": n}
// Node's clients cost a fraction of a Python one per message, so the servers are measured, not the clients.
// `grpc` reads only what it needs from each message's bytes (the floor of a client); `grpc-decode` decodes every
// message into objects with @grpc/proto-loader from protos/, as a grpc-js client of this API does (Socket.IO's
// client always parses each event's JSON).
import fs from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(process.env.BENCH_NODE_MODULES + '/');
const [mode, target, countText, out, token] = process.argv.slice(2);
const perConnection = Number(process.env.BENCH_STREAMS_PER_CONNECTION || 50);
const count = Number(countText);
// CLOCK_MONOTONIC in ms, the clock the Python writer stamps its sends with (time.monotonic()): the wall clock can
// step between a send and its receipt, and performance.timeOrigin + performance.now() drifts from it when it does.
const now = () => Number(process.hrtime.bigint()) / 1e6;

const times = new Map(); // key -> receipt times
const seen = new Map(); // key -> Set of subscribers that got it
let resumes = 0;
let ready = 0;

function received(subscriber, key, at) {
  let list = times.get(key);
  if (list === undefined) {
    list = [];
    times.set(key, list);
    seen.set(key, new Set());
  }
  list.push(at);
  seen.get(key).add(subscriber);
}

function connected() {
  ready += 1;
  if (ready === count) fs.writeFileSync(`${out}.ready`, '');
}

// --- protobuf, just what a subscriber needs ------------------------------------------------------------------

function varint(buf, pos) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const byte = buf[pos++];
    value += (byte & 0x7f) * 2 ** shift;
    if (byte < 0x80) return [value, pos];
    shift += 7;
  }
}

// Calls visit(field, wireType, value, start, end) for each field of the message in buf[start:end].
function fields(buf, start, end, visit) {
  let pos = start;
  while (pos < end) {
    let tag;
    [tag, pos] = varint(buf, pos);
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === 0) {
      let value;
      [value, pos] = varint(buf, pos);
      visit(field, wire, value, 0, 0);
    } else if (wire === 2) {
      let length;
      [length, pos] = varint(buf, pos);
      visit(field, wire, 0, pos, pos + length);
      pos += length;
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else throw new Error(`wire type ${wire}`);
  }
}

// SubscribeResponse { repeated BookingEvent events = 2 } -> [[event_id, "<booking id>/<type>"], ...]
function events(buf) {
  const found = [];
  fields(buf, 0, buf.length, (field, _wire, _value, start, end) => {
    if (field !== 2) return;
    let eventId = '';
    let type = 0;
    let bookingId = '';
    fields(buf, start, end, (f, w, value, s, e) => {
      if (f === 1) eventId = buf.toString('utf8', s, e);
      else if (f === 2 && w === 0) type = value;
      else if (f === 3) {
        fields(buf, s, e, (bf, _bw, _bv, bs, be) => {
          if (bf === 1) bookingId = buf.toString('utf8', bs, be);
        });
      }
    });
    found.push([eventId, `${bookingId}/${type}`]);
  });
  return found;
}

function subscribeRequest(resumeAfter) {
  if (!resumeAfter) return Buffer.alloc(0);
  const text = Buffer.from(resumeAfter);
  return Buffer.concat([Buffer.from([0x0a, text.length]), text]); // field 1 (resume_after), length < 128
}

// --- the two systems ---------------------------------------------------------------------------------------

const closers = [];

// The decoding client's (response -> [[event_id, key], ...]) with proto-loader's deserializer.
function decodingClient(grpc) {
  const protoLoader = require('@grpc/proto-loader');
  const protos = new URL('../../protos', import.meta.url).pathname;
  const definition = protoLoader.loadSync('notify/v1/notify.proto', { includeDirs: [protos] }); // its defaults
  const service = grpc.loadPackageDefinition(definition).notify.v1.NotifyService;
  const eventsOf = (response) => response.events.map((e) => [e.eventId, `${e.booking.id}/${e.type}`]);
  const request = (resumeAfter) => (resumeAfter ? { resumeAfter } : {});
  return [service, eventsOf, request];
}

function grpcSubscribers(decode) {
  const grpc = require('@grpc/grpc-js');
  const identity = (b) => b;
  let Client = grpc.makeGenericClientConstructor({
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
  let eventsOf = events;
  let request = subscribeRequest;
  if (decode) [Client, eventsOf, request] = decodingClient(grpc);
  let client;
  for (let i = 0; i < count; i++) {
    if (i % perConnection === 0) {
      // BENCH_STREAMS_PER_CONNECTION streams per connection (50 unless told)
      client = new Client(target, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
    }
    const own = client;
    let last = '';
    let first = true;
    let call;
    const subscribe = () => {
      const metadata = new grpc.Metadata();
      metadata.set('authorization', `Bearer ${token}`);
      call = own.Subscribe(request(last), metadata);
      call.on('metadata', () => {
        if (first) connected();
        first = false;
      });
      call.on('data', (data) => {
        const at = now();
        for (const [eventId, key] of eventsOf(data)) {
          last = eventId;
          received(i, key, at);
        }
      });
      call.on('error', (error) => {
        if (error.code === grpc.status.CANCELLED) return;
        resumes += 1;
        setTimeout(subscribe, 50 + Math.random() * 200); // jittered, as a client of ours does
      });
    };
    subscribe();
    closers.push(() => call.cancel());
  }
}

function socketIoSubscribers() {
  const { io } = require('socket.io-client');
  for (let i = 0; i < count; i++) {
    const socket = io(`http://${target}`, { transports: ['websocket'], forceNew: true });
    let first = true;
    socket.on('connect', () => {
      if (first) connected();
      else resumes += 1;
      first = false;
    });
    socket.on('booking', (event) => received(i, `${event.booking.id}/${event.type}`, now()));
    closers.push(() => socket.close());
  }
}

if (mode === 'grpc' || mode === 'grpc-decode') grpcSubscribers(mode === 'grpc-decode');
else if (mode === 'sio') socketIoSubscribers();
else throw new Error(`mode ${mode}: grpc, grpc-decode or sio`);

process.on('SIGTERM', () => {
  for (const close of closers) close();
  const changes = {};
  const streams = {};
  for (const [key, list] of times) {
    changes[key] = list;
    streams[key] = seen.get(key).size;
  }
  fs.writeFileSync(out, JSON.stringify({ changes, streams, resumes }));
  process.exit(0);
});

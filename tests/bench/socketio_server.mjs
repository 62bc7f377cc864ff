// The reference for tests/bench/bench_events.py: the realtime path of the Node/Express backend this project
// replaces, built the way it was: Socket.IO 4 with the official Redis adapter (@socket.io/redis-adapter), so a
// change emitted on one server reaches the clients of every server through Redis pub/sub.
//
//   node tests/bench/socketio_server.mjs PORT REDIS_URL [DATABASE_URL]
//
// With DATABASE_URL it also takes writes, as the old backend did: POST /bookings inserts a row in PostgreSQL,
// then io.emit('booking', event) the booking event (the fields of booking.v1.BookingEvent, as JSON), then
// answers. Every server accepts Socket.IO clients.
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';

const require = createRequire(process.env.BENCH_NODE_MODULES + '/');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

const [portText, redisUrl, databaseUrl] = process.argv.slice(2);

// A Redis restart rejects the adapter's pending publishes; unhandled, Node would exit (as it did in this
// benchmark's first runs). A production server logs them and carries on, as this one does.
process.on('unhandledRejection', (error) => console.error('unhandled rejection:', error?.message ?? error));

const pubClient = createClient({ url: redisUrl });
const subClient = pubClient.duplicate();
for (const client of [pubClient, subClient]) client.on('error', () => {}); // reconnects by itself
await Promise.all([pubClient.connect(), subClient.connect()]);

const SCHEMA = `CREATE TABLE IF NOT EXISTS reference_bookings (
  id uuid PRIMARY KEY, customer_id text NOT NULL, provider_id text NOT NULL, service_id text NOT NULL,
  start_time timestamptz NOT NULL, end_time timestamptz NOT NULL, notes text NOT NULL DEFAULT '',
  create_time timestamptz NOT NULL DEFAULT now(), update_time timestamptz NOT NULL DEFAULT now(),
  delete_time timestamptz, deletion_reason text NOT NULL DEFAULT '')`;

let pool = null;
if (databaseUrl) {
  const pg = require('pg');
  pool = new pg.Pool({ connectionString: databaseUrl, max: 10 });
  await pool.query(SCHEMA);
}

function body(request) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => resolve(chunks.length ? JSON.parse(Buffer.concat(chunks)) : {}));
    request.on('error', reject);
  });
}

function asBooking(row) {
  return {
    id: row.id,
    customer_id: row.customer_id,
    provider_id: row.provider_id,
    service_id: row.service_id,
    start_time: row.start_time.toISOString(),
    end_time: row.end_time.toISOString(),
    notes: row.notes,
    create_time: row.create_time.toISOString(),
    update_time: row.update_time.toISOString(),
    delete_time: row.delete_time ? row.delete_time.toISOString() : null,
    deletion_reason: row.deletion_reason,
  };
}

let io;
async function write(request) {
  if (request.method === 'POST' && request.url === '/bookings') {
    const b = await body(request);
    const { rows } = await pool.query(
      `INSERT INTO reference_bookings (id, customer_id, provider_id, service_id, start_time, end_time)
       VALUES ($1, $2, $3, $4, $5, $6) RETURNING *`,
      [randomUUID(), b.customer_id, b.provider_id, b.service_id, b.start_time, b.end_time],
    );
    return [201, 1, rows[0]];
  }
  return [404, 0, null];
}

const server = http.createServer(async (request, response) => {
  if (!pool) {
    response.writeHead(404).end();
    return;
  }
  try {
    const [status, type, row] = await write(request);
    if (row) {
      const booking = asBooking(row);
      io.emit('booking', { type, booking, actor: { id: 'bench-writer', role: 'admin' }, occur_time: booking.update_time });
    }
    response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(row ? asBooking(row) : {}));
  } catch (error) {
    response.writeHead(500).end(String(error));
  }
});

io = new Server(server, { adapter: createAdapter(pubClient, subClient), transports: ['websocket'] });
server.listen(Number(portText), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));

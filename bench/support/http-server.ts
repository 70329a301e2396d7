/**
 * One server of bench/http.bench.ts, in a process of its own: `framework mode issuer audience`. It sends
 * its URL to the parent over IPC, serves `GET /` (`{ ok: true }`) until the parent disconnects, and answers
 * `'cpu'` with its CPU time so far (µs).
 */
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import express, { type RequestHandler } from 'express';
import Fastify from 'fastify';
import { Hono, type MiddlewareHandler } from 'hono';
import { bearerAuth as expressAuth } from '../../dist/server/adapters/express.js';
import { bearerAuth as fastifyAuth } from '../../dist/server/adapters/fastify.js';
import { bearerAuth as honoAuth, withBearerAuth } from '../../dist/server/adapters/hono.js';

const [framework, mode, issuer, audience] = process.argv.slice(2) as [string, string, string, string];
const options = { issuer, audience, allowInsecureRequests: true };
// The Map-lookup middleware knows the one bench token once it has seen it (the parent's first request).
const known = new Map<string, { uid: string }>();
const lookUp = (value: string | undefined): { uid: string } | undefined => {
  if (value === undefined) return undefined;
  if (known.size === 0) known.set(value, { uid: 'bench' });
  return known.get(value);
};

let server: Server;
if (framework === 'fastify') {
  const app = Fastify();
  await app.register(async (api) => {
    if (mode === 'tokenwarden') await api.register(fastifyAuth, options);
    if (mode === 'map') {
      api.decorateRequest('auth', null);
      api.addHook('onRequest', (request, reply, done) => {
        const auth = lookUp(request.headers.authorization);
        if (auth === undefined) return void reply.code(401).send({ error: 'invalid_token' });
        (request as unknown as { auth: unknown }).auth = auth;
        done();
      });
    }
    api.get('/', async () => ({ ok: true }));
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  server = app.server;
} else if (framework === 'hono') {
  const app = new Hono<{ Variables: { auth: unknown } }>();
  const map: MiddlewareHandler = async (c, next) => {
    const auth = lookUp(c.req.header('authorization'));
    if (auth === undefined) return c.json({ error: 'invalid_token' }, 401);
    c.set('auth', auth);
    return next();
  };
  if (mode === 'tokenwarden') app.use('/*', honoAuth(options) as unknown as MiddlewareHandler);
  if (mode === 'map') app.use('/*', map);
  if (mode === 'noop') app.use('/*', (_c, next) => next());
  // withBearerAuth: the same checks around the route's only handler (Hono calls it directly, no compose).
  if (mode === 'wrapped')
    app.get(
      '/',
      withBearerAuth(options, (c) => c.json({ ok: true })),
    );
  else app.get('/', (c) => c.json({ ok: true }));
  server = await new Promise<Server>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s as Server));
  });
} else {
  const app = express();
  const map: RequestHandler = (req, res, next) => {
    const auth = lookUp(req.headers.authorization);
    if (auth === undefined) return void res.status(401).json({ error: 'invalid_token' });
    (req as unknown as { auth: unknown }).auth = auth;
    next();
  };
  const handler: RequestHandler = (_req, res) => void res.json({ ok: true });
  if (mode === 'tokenwarden') app.get('/', expressAuth(options) as unknown as RequestHandler, handler);
  else if (mode === 'map') app.get('/', map, handler);
  else app.get('/', handler);
  server = createServer(app);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
}
process.send?.({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/` });
process.on('disconnect', () => process.exit(0));
// The parent asks for this process's CPU time around each measurement: µs of CPU per request served.
process.on('message', (message) => {
  if (message === 'cpu') {
    const { user, system } = process.cpuUsage();
    process.send?.({ cpu: user + system });
  }
});

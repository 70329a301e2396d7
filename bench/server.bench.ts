/**
 * Issue: the resource server. Repeated-token verify() vs raw jose jwtVerify (same token, same JWKS);
 * unique tokens (every call a cache miss); Express req/s with no auth, tokenwarden and
 * express-oauth2-jwt-bearer (same token and keys, autocannon); introspection calls per token.
 */
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import autocannon from 'autocannon';
import express, { type RequestHandler } from 'express';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { bearerAuth } from '../dist/server/adapters/express.js';
import { createVerifier } from '../dist/server/index.js';
import { API_RESOURCE, OPAQUE_RESOURCE, startAuthorizationServer } from '../test/support/authorization-server.js';
import { forge, issueToken } from '../test/server/support.js';
import type { BenchRow } from './run.js';
import { alternate, ratio, si } from './util.js';

/** Loaded by name so that its global `Express.Request.auth` typing does not meet ours. */
const PEER = 'express-oauth2-jwt-bearer';

export async function run(): Promise<BenchRow[]> {
  const as = await startAuthorizationServer({ accessTokenTtl: 3600 });
  const options = { issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true };
  const token = (await issueToken(as, { scope: 'read' })).accessToken;
  const rows: BenchRow[] = [];

  // Repeated token: the validation cache against a full jose verification (warm JWKS) each call.
  // The two alternate in short slices, so that load from other processes falls on both alike.
  const verify = createVerifier(options);
  const jwks = createRemoteJWKSet(new URL('/jwks', as.issuer));
  const joseOptions = { issuer: as.issuer, audience: API_RESOURCE, algorithms: ['RS256'] };
  const header = `Bearer ${token}`;
  await jwtVerify(token, jwks, joseOptions);
  if (!(await verify(header)).ok) throw new Error('bench token did not verify');
  const [jose, ours] = (await alternate([() => jwtVerify(token, jwks, joseOptions), () => verify(header)], {
    rounds: 10,
    sliceMs: 200,
  })) as [number, number];
  rows.push({
    case: 'verify() repeated token (RS256)',
    ours: `${si(ours)} ops/s`,
    baseline: `jose jwtVerify: ${si(jose)} ops/s`,
    ratio: ratio(ours, jose),
  });

  // Unique tokens: every call misses the cache (hash, single flight, jose, auth building, cache insert).
  // 2000 tokens cycle through a 500-entry cache, so each comes back only after it was evicted.
  const unique = await Promise.all(Array.from({ length: 2000 }, () => forge(as, { scope: 'read' })));
  const fresh = createVerifier({ ...options, cache: { maxEntries: 500 } });
  await fresh(await forge(as));
  let a = 0;
  let b = 0;
  const [joseUnique, oursUnique] = (await alternate(
    [
      () => jwtVerify(unique[a++ % unique.length] as string, jwks, joseOptions),
      () => fresh(`Bearer ${unique[b++ % unique.length] as string}`),
    ],
    { rounds: 10, sliceMs: 150 },
  )) as [number, number];
  rows.push({
    case: 'verify() unique tokens (all cache misses)',
    ours: `${si(oursUnique)} ops/s`,
    baseline: `jose jwtVerify: ${si(joseUnique)} ops/s`,
    ratio: ratio(oursUnique, joseUnique),
  });

  // Express, the same route three ways, one token. autocannon runs in a worker thread so the servers keep
  // the main one; the three take turns (3 rounds of 1.5 s each) so that load from elsewhere falls on all alike.
  const { auth: peerAuth } = (await import(PEER)) as {
    auth: (o: { issuerBaseURL: string; audience: string }) => RequestHandler;
  };
  const mount = async (middleware: RequestHandler | undefined): Promise<{ url: string; server: Server }> => {
    const app = express();
    const handler: RequestHandler = (_req, res) => void res.json({ ok: true });
    if (middleware) app.get('/', middleware, handler);
    else app.get('/', handler);
    const server = createServer(app);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    const check = await fetch(url, { headers: { authorization: header } });
    if (check.status !== 200) throw new Error(`bench route answered ${check.status}`);
    return { url, server };
  };
  const apps = [
    await mount(undefined),
    await mount(bearerAuth(options) as unknown as RequestHandler),
    await mount(peerAuth({ issuerBaseURL: as.issuer, audience: API_RESOURCE })),
  ];
  const total = apps.map(() => ({ requests: 0, seconds: 0 }));
  for (let round = -1; round < 3; round++) {
    // The order turns each round, so that none of the three always follows the same one.
    for (let k = 0; k < apps.length; k++) {
      const i = (k + Math.max(0, round)) % apps.length;
      const { url } = apps[i]!;
      const result = await autocannon({
        url,
        connections: 20,
        duration: round < 0 ? 0.5 : 1.5, // round -1 warms up each server's JIT
        headers: { authorization: header },
        workers: 1,
      });
      if (result.non2xx > 0 || result.errors > 0) throw new Error(`${result.non2xx} non-2xx, ${result.errors} errors`);
      if (round < 0) continue;
      total[i]!.requests += result.requests.total;
      total[i]!.seconds += result.duration;
    }
  }
  for (const { server } of apps) {
    server.closeAllConnections();
    server.close();
  }
  const [none, tw, peer] = total.map((t) => t.requests / t.seconds) as [number, number, number];
  rows.push({
    case: 'Express 5 req/s, tokenwarden bearerAuth',
    ours: `${si(tw)} req/s`,
    baseline: `no auth: ${si(none)} req/s`,
    ratio: ratio(tw, none),
  });
  rows.push({
    case: 'Express 5 req/s, tokenwarden vs express-oauth2-jwt-bearer',
    ours: `${si(tw)} req/s`,
    baseline: `express-oauth2-jwt-bearer: ${si(peer)} req/s`,
    ratio: ratio(tw, peer),
  });

  // Introspection: 10 opaque tokens, each checked 100 times in concurrent bursts.
  const opaque = await Promise.all(Array.from({ length: 10 }, () => issueToken(as, { resource: OPAQUE_RESOURCE })));
  const introspect = createVerifier({ issuer: as.issuer, introspection: as.clients.rs, allowInsecureRequests: true });
  as.resetCounts();
  for (let burst = 0; burst < 10; burst++) {
    await Promise.all(opaque.flatMap((t) => Array.from({ length: 10 }, () => introspect(t.accessToken))));
  }
  rows.push({
    case: 'introspection: 10 tokens × 100 checks (bursts of 10)',
    ours: `${as.counts.introspection} calls (${(as.counts.introspection / 10).toFixed(1)} per token)`,
    baseline: 'uncached: 1000 calls',
    ratio: `${(1000 / Math.max(1, as.counts.introspection)).toFixed(0)}× fewer`,
  });

  await as.close();
  return rows;
}

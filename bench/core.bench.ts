/**
 * Issue 2: the client core. Hot-path getToken() vs a bare awaited Map lookup; a cold stampede of
 * 10 000 callers vs the token requests it costs; authenticated fetch vs plain fetch to a local server.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { TokenManager, clientCredentials } from '../dist/index.js';
import { startAuthorizationServer } from '../test/support/authorization-server.js';
import type { BenchRow } from './run.js';
import { compare, ratio, si } from './util.js';

export async function run(): Promise<BenchRow[]> {
  const as = await startAuthorizationServer({ accessTokenTtl: 3600 });
  const options = {
    issuer: as.issuer,
    clientId: as.clients.svc.clientId,
    clientSecret: as.clients.svc.clientSecret,
    scope: 'read',
    allowInsecureRequests: true,
  };
  const rows: BenchRow[] = [];

  // Hot path.
  const manager = new TokenManager({ source: clientCredentials(options) });
  const token = await manager.getToken();
  const map = new Map([['k', token]]);
  const [baseline, ours] = await compare(
    () => map.get('k'),
    () => manager.getToken(),
    { ms: 3000 },
  );
  rows.push({
    case: 'getToken() hot path (fresh token)',
    ours: `${si(ours)} ops/s`,
    baseline: `awaited Map.get: ${si(baseline)} ops/s`,
    ratio: ratio(ours, baseline),
  });

  // Cold stampede.
  as.resetCounts();
  const cold = new TokenManager({ source: clientCredentials({ ...options, scope: 'read write' }) });
  const start = performance.now();
  await Promise.all(Array.from({ length: 10_000 }, () => cold.getToken()));
  const ms = performance.now() - start;
  rows.push({
    case: 'cold stampede: 10 000 concurrent getToken()',
    ours: `${as.counts.token} token request(s), ${ms.toFixed(0)} ms`,
    baseline: 'naive per-call fetch: 10 000 requests',
    ratio: `${(10_000 / Math.max(1, as.counts.token)).toFixed(0)}× fewer`,
  });
  await cold.close();

  // Authenticated fetch vs plain fetch.
  const api = createServer((_req, res) => res.end('ok'));
  await new Promise<void>((r) => api.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(api.address() as AddressInfo).port}/`;
  const [plain, authed] = await compare(
    async () => (await fetch(url, { headers: { authorization: `Bearer ${token.accessToken}` } })).text(),
    async () => (await manager.fetch(url)).text(),
    { ms: 4000, batch: 50, rounds: 4 },
  );
  rows.push({
    case: 'manager.fetch() vs fetch() with a fixed header, local server',
    ours: `${si(authed)} req/s`,
    baseline: `fetch: ${si(plain)} req/s`,
    ratio: ratio(authed, plain),
  });

  api.close();
  await manager.close();
  await as.close();
  return rows;
}

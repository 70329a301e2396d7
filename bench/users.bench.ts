/**
 * Per-user tokens: 50 000 signed-in users in a MemoryStore. Memory per user (heap delta ÷ users) against
 * a bare Map of the same access tokens; `getAccessToken()` hit latency against an awaited Map lookup; the
 * in-process layer bounded by its LRU.
 *
 * Token sizes are realistic: a ~600-character JWT access token, an HS256 ID token with a few profile
 * claims, a 43-character refresh token; and, for one row, what oidc-provider issues by default — opaque
 * 43-character access and refresh tokens, an ID token with at_hash, sid, nonce and auth_time. No network:
 * refreshes never happen (one-hour tokens).
 */
import { createHmac, randomBytes } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { MemoryStore, UserTokens } from '../dist/index.js';
import type { BenchRow } from './run.js';
import { opsPerSecond, ratio, si } from './util.js';

const USERS = Number(process.env['BENCH_USERS'] ?? 50_000);
const ISSUER = 'https://login.example.test';
const CLIENT_ID = 'web';
const CLIENT_SECRET = randomBytes(32).toString('base64url');

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function heapUsed(): number {
  for (let i = 0; i < 2; i++) gc();
  return process.memoryUsage().heapUsed;
}

const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

/** As parsed from a response body: flat strings owned by this object alone. */
function fresh(json: Record<string, unknown>): Record<string, unknown> {
  return JSON.parse(JSON.stringify(json)) as Record<string, unknown>;
}

/**
 * A token endpoint response as a real login returns it: with a JWT-shaped access token (not verified), or
 * (`opaque`) as oidc-provider answers by default.
 */
function loginResponse(sub: string, now: number, shape: 'jwt' | 'opaque' = 'jwt'): Record<string, unknown> {
  const iat = Math.floor(now / 1000);
  if (shape === 'opaque') {
    const sid = randomBytes(16).toString('base64url');
    const signed = `${b64({ alg: 'HS256' })}.${b64({
      sub,
      email: `${sub}@example.test`,
      email_verified: true,
      name: `User ${sub}`,
      at_hash: randomBytes(16).toString('base64url'),
      sid,
      auth_time: iat,
      nonce: randomBytes(16).toString('base64url'),
      iss: ISSUER,
      aud: CLIENT_ID,
      iat,
      exp: iat + 3600,
    })}`;
    return {
      access_token: randomBytes(32).toString('base64url'),
      token_type: 'Bearer',
      expires_in: 3600,
      refresh_token: randomBytes(32).toString('base64url'),
      id_token: `${signed}.${createHmac('sha256', CLIENT_SECRET).update(signed).digest('base64url')}`,
      scope: 'openid profile email read write',
    };
  }
  const accessToken = [
    b64({ alg: 'RS256', typ: 'at+jwt', kid: 'k1' }),
    b64({
      jti: randomBytes(16).toString('base64url'),
      sub,
      iat,
      exp: iat + 3600,
      scope: 'openid profile email read write',
      client_id: CLIENT_ID,
      iss: ISSUER,
      aud: 'https://api.example.test',
    }),
    randomBytes(256).toString('base64url'),
  ].join('.');
  const signed = `${b64({ alg: 'HS256' })}.${b64({
    email: `${sub}@example.test`,
    email_verified: true,
    name: `User ${sub}`,
    iss: ISSUER,
    aud: CLIENT_ID,
    sub,
    iat,
    exp: iat + 3600,
  })}`;
  const idToken = `${signed}.${createHmac('sha256', CLIENT_SECRET).update(signed).digest('base64url')}`;
  return {
    access_token: accessToken,
    token_type: 'Bearer',
    expires_in: 3600,
    refresh_token: randomBytes(32).toString('base64url'),
    id_token: idToken,
    scope: 'openid profile email read write',
  };
}

export async function run(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const subjects = Array.from({ length: USERS }, (_, i) => `user-${String(i).padStart(6, '0')}`);
  const now = Date.now();
  const kib = (bytes: number): string => `${(bytes / 1024).toFixed(2)} KiB`;
  // Memory is what stays reachable once the responses (as parsed from each login's response body) are
  // garbage: heap after − heap before, with a full GC, divided by the number of users.

  // Baseline: the naive store — each user's login response JSON in a Map.
  let base = heapUsed();
  const naive = new Map<string, string>();
  for (const s of subjects) naive.set(s, JSON.stringify(fresh(loginResponse(s, now))));
  const naiveBytes = (heapUsed() - base) / USERS;
  const naiveSize = naive.size;
  naive.clear();

  // Ours, part 1: the store's records (saved through an instance with a tiny in-process layer).
  base = heapUsed();
  const store = new MemoryStore({ max: USERS * 2 });
  const writer = new UserTokens({
    issuer: ISSUER,
    clientId: CLIENT_ID,
    clientSecret: CLIENT_SECRET,
    store,
    cache: { max: 1 },
  });
  let saveMs = 0;
  for (const s of subjects) {
    const response = fresh(loginResponse(s, now));
    const started = performance.now();
    await writer.save(s, response);
    saveMs += performance.now() - started;
  }
  await writer.close();
  const storeBytes = (heapUsed() - base) / USERS;

  // Ours, part 2: an instance holding every user in its in-process layer. `revalidate` is set long so
  // that this measures memory hits; the cost of a revalidation is measured below.
  base = heapUsed();
  const users = new UserTokens({
    issuer: ISSUER,
    clientId: CLIENT_ID,
    clientSecret: CLIENT_SECRET,
    store,
    cache: { max: USERS, revalidate: '1h' },
  });
  for (const s of subjects) await users.getAccessToken(s);
  const cacheBytes = (heapUsed() - base) / USERS;
  rows.push({
    case: `memory per user, ${si(USERS)} users: store record + in-process layer`,
    ours: `${kib(storeBytes + cacheBytes)} (${kib(storeBytes)} + ${kib(cacheBytes)})`,
    baseline: `Map<subject, login JSON>: ${kib(naiveBytes)} (${si(naiveSize)} users)`,
    ratio: `${((storeBytes + cacheBytes) / naiveBytes).toFixed(2)}× the memory`,
  });
  // As the issue measures it: everything by default (the private MemoryStore, the default in-process layer),
  // every user signed in and served once.
  base = heapUsed();
  const defaults = new UserTokens({ issuer: ISSUER, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET });
  for (const s of subjects) await defaults.save(s, fresh(loginResponse(s, now)));
  for (const s of subjects) await defaults.getAccessToken(s);
  const defaultBytes = (heapUsed() - base) / USERS;
  await defaults.close();
  rows.push({
    case: `memory per user, ${si(USERS)} users, UserTokens with every default (MemoryStore, cache.max 10 000)`,
    ours: kib(defaultBytes),
    baseline: `Map<subject, login JSON>: ${kib(naiveBytes)}`,
    ratio: `${(defaultBytes / naiveBytes).toFixed(2)}× the memory`,
  });
  // The same with oidc-provider's default tokens (opaque access and refresh tokens).
  base = heapUsed();
  const naiveOpaque = new Map<string, string>();
  for (const s of subjects) naiveOpaque.set(s, JSON.stringify(fresh(loginResponse(s, now, 'opaque'))));
  const naiveOpaqueBytes = (heapUsed() - base) / USERS;
  naiveOpaque.clear();
  base = heapUsed();
  const opaque = new UserTokens({ issuer: ISSUER, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET });
  for (const s of subjects) await opaque.save(s, fresh(loginResponse(s, now, 'opaque')));
  for (const s of subjects) await opaque.getAccessToken(s);
  const opaqueBytes = (heapUsed() - base) / USERS;
  await opaque.close();
  rows.push({
    case: `memory per user, ${si(USERS)} users, every default, oidc-provider's default tokens (opaque access token)`,
    ours: kib(opaqueBytes),
    baseline: `Map<subject, login JSON>: ${kib(naiveOpaqueBytes)}`,
    ratio: `${(opaqueBytes / naiveOpaqueBytes).toFixed(2)}× the memory`,
  });
  rows.push({
    case: 'save() a login response (HS256 ID token checked, one store read and write)',
    ours: `${si((USERS * 1000) / saveMs)} saves/s (${((saveMs * 1000) / USERS).toFixed(0)} µs)`,
    baseline: '—',
    ratio: '—',
  });

  // Hit latency: random users among 100 000, every token fresh, against the same lookup in a Map.
  const lookups = new Map(subjects.map((s) => [s, s]));
  const order = Array.from({ length: 1 << 16 }, () => subjects[Math.floor(Math.random() * USERS)]!);
  let j = 0;
  let k = 0;
  const baseline = await opsPerSecond(() => lookups.get(order[j++ & 0xffff]!), { ms: 1500 });
  const ours = await opsPerSecond(() => users.getAccessToken(order[k++ & 0xffff]!), { ms: 1500 });
  const hot = await opsPerSecond(() => users.getAccessToken('user-000042'), { ms: 1000 });
  const hotBaseline = await opsPerSecond(() => lookups.get('user-000042'), { ms: 1000 });
  const ns = (opsPerS: number): string => `${si(opsPerS)} ops/s (${(1e9 / opsPerS).toFixed(0)} ns)`;
  rows.push({
    case: `getAccessToken(subject) hit, random of ${si(USERS)} users`,
    ours: ns(ours),
    baseline: `awaited Map.get: ${ns(baseline)}`,
    ratio: ratio(ours, baseline),
  });
  rows.push({
    case: 'getAccessToken(subject) hit, the same user',
    ours: ns(hot),
    baseline: `awaited Map.get: ${ns(hotBaseline)}`,
    ratio: ratio(hot, hotBaseline),
  });
  await users.close();

  // A revalidation (by default at most once a second per subject): one store read, the record unchanged.
  const revalidating = new UserTokens({
    issuer: ISSUER,
    clientId: CLIENT_ID,
    clientSecret: CLIENT_SECRET,
    store,
    cache: { max: 1024, revalidate: 0 },
  });
  const few = subjects.slice(0, 1024);
  for (const s of few) await revalidating.getAccessToken(s);
  let r = 0;
  const revalidated = await opsPerSecond(() => revalidating.getAccessToken(few[r++ & 1023]!), { ms: 1000 });
  rows.push({
    case: 'getAccessToken(subject) revalidating (store read, record unchanged), MemoryStore',
    ours: ns(revalidated),
    baseline: `awaited Map.get: ${ns(baseline)}`,
    ratio: ratio(revalidated, baseline),
  });
  await revalidating.close();

  // Bounded: the default in-process layer (10 000 subjects) over the same 100 000 users.
  base = heapUsed();
  const bounded = new UserTokens({ issuer: ISSUER, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, store });
  for (const s of subjects) await bounded.getAccessToken(s);
  rows.push({
    case: `in-process layer after serving all ${si(USERS)} users (default cache.max)`,
    ours: `${bounded.cachedSubjects} subjects, ${((heapUsed() - base) / 1024 / 1024).toFixed(1)} MiB`,
    baseline: `store: ${store.size} records`,
    ratio: '—',
  });
  await bounded.close();
  await store.close();
  return rows;
}

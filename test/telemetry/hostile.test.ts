/**
 * What telemetry exports under attack, through the real OpenTelemetry SDK: an authorization server that
 * echoes every credential it received (in its error description, its error code, `WWW-Authenticate`, a
 * content type, field names, a token type, a redirect to a URL carrying them) and hostile requests to a
 * resource server (random tokens, huge ones, unicode, near-valid JWTs, several schemes). No secret, token,
 * assertion or server text reaches a span (name, attributes, status, events, links), a metric attribute or an
 * event payload, in any encoding; and the number of series stays where it was whatever the number of
 * distinct secrets, tokens, subjects or server texts (an operator's metrics backend must not pay per token).
 */
import { type IncomingMessage, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { inspect } from 'node:util';
import { exportPKCS8, generateKeyPair } from 'jose';
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { MemoryStore, TokenManager, TokenwardenError, UserTokens } from '../../src/index.js';
import type { StoreRecord } from '../../src/stores/store.js';
import { FailingStore } from '../support/failing-store.js';
import { bearerAuth } from '../../src/server/adapters/node.js';
import { createVerifier } from '../../src/server/index.js';
import { ATTRIBUTES, INSTRUMENTS, type InstrumentSpec, SPANS } from '../../src/telemetry/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { type FaultServer, startFaultServer } from '../support/fault-server.js';
import { type MetricsHarness, type Point, type TracesHarness, installMetrics, installTraces } from '../support/otel.js';
import { seeded } from '../support/seeded.js';
import { forge, issueToken, segment } from '../server/support.js';
import {
  CLIENT_ID,
  CLIENT_SECRET,
  ECHO_MODES,
  type EchoMode,
  credentialSenders,
  echo,
  leaksIn,
  sentCredentials,
} from '../security/support.js';

let otel: MetricsHarness;
let traces: TracesHarness;
beforeEach(() => {
  otel = installMetrics();
  traces = installTraces();
});
afterEach(async () => {
  await Promise.all([otel.close(), traces.close()]);
});

/** A span as an exporter sends it: everything but ids and times. */
function rendered(span: ReadableSpan): string {
  return JSON.stringify([span.name, span.attributes, span.status, span.events, span.links, span.kind]);
}

/** Every point's attributes and every span, as text: what a leak scan reads. */
function exported(points: Point[], spans: ReadableSpan[]): string {
  return [...points.map((p) => JSON.stringify([p.name, p.attributes])), ...spans.map(rendered)].join('\n');
}

/** The distinct attribute sets of each instrument: its series. */
function series(points: Point[]): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const p of points) {
    const set = out.get(p.name) ?? new Set<string>();
    set.add(JSON.stringify(Object.entries(p.attributes).sort()));
    out.set(p.name, set);
  }
  return out;
}

/** Every attribute key a point carries is one the catalogue lists for its instrument. */
function expectCatalogued(points: Point[]): void {
  const specs = new Map<string, InstrumentSpec>(Object.values(INSTRUMENTS).map((s) => [s.name, s]));
  for (const p of points) {
    const spec = specs.get(p.name);
    expect(spec, p.name).toBeDefined();
    for (const key of Object.keys(p.attributes)) expect(spec?.attributes, `${p.name} ${key}`).toContain(key);
  }
}

describe('an authorization server echoing the credentials it received', () => {
  type Mode = EchoMode | 'redirect';
  let server: FaultServer;
  let mode: Mode = 'description';
  let pem: string;

  beforeAll(async () => {
    server = await startFaultServer((req: IncomingMessage, res: ServerResponse, body: string) => {
      if (mode !== 'redirect') return echo(mode, req, res, body);
      // A redirect to a URL carrying what was sent: in its user info, its query and its fragment.
      const params = new URLSearchParams(body);
      const sent = [...params.values()].join(',');
      const location = new URL(`http://127.0.0.1:9/token?${params.toString()}#${encodeURIComponent(sent)}`);
      location.username = encodeURIComponent(CLIENT_ID);
      location.password = encodeURIComponent(CLIENT_SECRET);
      res.writeHead(307, { location: location.href, 'x-echo': encodeURIComponent(sent) });
      res.end(sent);
    });
    const { privateKey } = await generateKeyPair('RS256', { extractable: true });
    pem = await exportPKCS8(privateKey);
  });
  afterAll(() => server.close());

  const grants = credentialSenders(
    () => server,
    () => pem,
  );
  const sent = () => sentCredentials(server);

  it('no credential in any span, metric attribute or manager event, for every grant and every echo', async () => {
    const events: unknown[] = [];
    const modes: Mode[] = [...ECHO_MODES, 'redirect'];
    for (const make of Object.values(grants)) {
      for (const m of modes) {
        mode = m;
        const manager = new TokenManager({ source: make(), refresh: { background: false } });
        for (const name of ['refreshFailed', 'token', 'expired', 'storeError'] as const) {
          manager.on(name, (e: unknown) => events.push(e));
        }
        // Refused, or (field names, token type) accepted or refused: either way, telemetry says no more.
        await manager.getToken().catch(() => undefined);
        await manager.close();
      }
    }
    const spans = traces.exporter.getFinishedSpans();
    const points = await otel.collect();
    expect(spans.filter((s) => s.name === SPANS.tokenRequest).length).toBe(Object.keys(grants).length * modes.length);
    expect(leaksIn(exported(points, spans), sent())).toEqual([]);
    const payloads = events.map((e) => `${inspect(e, { depth: 10, showHidden: true })}\n${JSON.stringify(e)}`);
    expect(leaksIn(payloads.join('\n'), sent())).toEqual([]);
    // Nothing the server wrote: its description text, its header, its redirect target.
    expect(exported(points, spans)).not.toMatch(/you sent|127\.0\.0\.1:9|redacted/);
    // A span's status message is an error code, nothing else.
    for (const s of spans.filter((x) => x.name === SPANS.tokenRequest)) {
      expect(s.status.message ?? 'ERR_').toMatch(/^ERR_[A-Z_]+$/);
      expect(s.events).toEqual([]);
    }
    expectCatalogued(points);
    // Bounded: per grant type, outcome and error code, not per server text (9 kinds of echo, 4 codes at most).
    const requests = series(points).get(INSTRUMENTS.tokenRequests.name) as Set<string>;
    expect(requests.size).toBeLessThanOrEqual(4 * 4);
  });
});

describe('hostile requests to a resource server', () => {
  let as: TestAuthorizationServer;
  beforeAll(async () => {
    as = await startAuthorizationServer({ accessTokenTtl: 600 });
  });
  afterAll(() => as?.close());

  it('no presented token in any span, metric attribute or verify event; the series do not grow with tokens', async () => {
    const verify = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
    const events: unknown[] = [];
    verify.on('verify', (e) => events.push(e));
    const authenticate = bearerAuth({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
    const http = createServer(async (req, res) => {
      if ((await authenticate(req, res)) === false) return;
      res.end('ok');
    });
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/`;
    try {
      const valid = (await issueToken(as, { scope: 'read' })).accessToken;
      const now = Math.floor(Date.now() / 1000);
      const expired = await forge(as, { iat: now - 120, exp: now - 60 });
      const pick = seeded(9068);
      const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
      const random = (n: number) => Array.from({ length: n }, () => B64URL[pick(64)]).join('');
      const presented: string[] = [];
      const headers: string[][] = [];
      for (let n = 0; n < 60; n++) {
        const secret = random(16 + pick(48));
        presented.push(secret);
        const [h, p] = valid.split('.') as [string, string, string];
        const cases = [
          [`Bearer ${secret}`],
          [`Bearer ${h}.${p}.${secret}`], // a near-valid JWT, a forged signature
          [`Bearer ${segment({ alg: 'none', kid: secret })}.${segment({ sub: secret, iss: as.issuer })}.`],
          [`DPoP ${secret}`],
          [`Basic ${Buffer.from(`${secret}:${secret}`).toString('base64')}`],
          [`Bearer ${secret}`, `Bearer ${valid}`], // two headers
          [`Bearer ${secret}${'x'.repeat(9000)}`],
          [`Bearer ${secret}\u00e9\u2603`],
        ];
        headers.push(...cases);
      }
      for (const values of headers) {
        const value = values.join(', ');
        await verify(value);
        const response = await fetch(url, {
          headers: /^[\t\x20-\x7e\x80-\xff]*$/.test(value) ? { authorization: value } : {},
        }).catch(() => undefined);
        await response?.text();
      }
      // The same numbers of kinds, first with few tokens, then with many: the series stay.
      const before = series(await otel.collect());
      await verify(`Bearer ${valid}`);
      await verify(`Bearer ${expired}`);
      for (const t of presented) await verify(`Bearer ${t}${t}`);
      const points = await otel.collect();
      const after = series(points);
      const spans = traces.exporter.getFinishedSpans();

      const sensitive = [...presented, valid, expired];
      const text = exported(points, spans);
      for (const s of sensitive) expect(text).not.toContain(s);
      const payloads = JSON.stringify(events);
      for (const s of sensitive) expect(payloads).not.toContain(s);
      expectCatalogued(points);
      const outcomes = new Set(points.map((p) => p.attributes[ATTRIBUTES.outcome]).filter((o) => o !== undefined));
      for (const o of outcomes) {
        expect([
          'ok',
          'missing_token',
          'invalid_request',
          'invalid_token',
          'invalid_dpop_proof',
          'use_dpop_nonce',
          'insufficient_scope',
          'unavailable',
          'success',
          'error',
        ]).toContain(o);
      }
      const verifies = after.get(INSTRUMENTS.verifyRequests.name) as Set<string>;
      // outcome × cache (hit | miss | none): a dozen at most, however many distinct tokens came.
      expect(verifies.size).toBeLessThanOrEqual(12);
      expect(verifies.size).toBeLessThanOrEqual((before.get(INSTRUMENTS.verifyRequests.name)?.size ?? 0) + 2);
      for (const s of spans.filter((x) => x.name === SPANS.verify)) expect(s.events).toEqual([]);
    } finally {
      http.close();
    }
  });

  it('UserTokens: many subjects, one series', async () => {
    const users = new UserTokens({
      issuer: as.issuer,
      clientId: as.clients.app.clientId,
      clientSecret: as.clients.app.clientSecret,
      allowInsecureRequests: true,
    });
    const subjects = ['ann@example.test', 'bob@example.test', 'cy@example.test', 'dee@example.test'];
    const sensitive = [...subjects];
    try {
      for (const subject of subjects) {
        const login = await as.login(subject);
        sensitive.push(login['refresh_token'] as string, login['access_token'] as string, users.keyFor(subject));
        const held = await users.save(subject, login);
        await users.invalidate(subject, held.accessToken);
        sensitive.push((await users.getAccessToken(subject)).accessToken); // a refresh per subject
      }
      const points = await otel.collect();
      const spans = traces.exporter.getFinishedSpans();
      const text = exported(points, spans);
      for (const s of sensitive) expect(text).not.toContain(s);
      expect(text).not.toMatch(/example\.test/);
      expect(series(points).get(INSTRUMENTS.tokenRequests.name)?.size).toBe(1);
      expect(spans.filter((s) => s.name === SPANS.tokenRequest)).toHaveLength(subjects.length);
    } finally {
      await users.close();
    }
  });
});

describe('codes from code of your own', () => {
  it('a TokenwardenError with a code of its own (a custom store) is error.type _OTHER: one series, not one per code', async () => {
    /** A store whose reads fail with a per-tenant code: what JavaScript can build from the public class. */
    class TenantStore extends FailingStore {
      calls = 0;
      override get(): Promise<StoreRecord | undefined> {
        this.calls++;
        return Promise.reject(new TokenwardenError(`ERR_TENANT_${this.calls}_acme-corp` as never, 'tenant store down'));
      }
    }
    const store = new TenantStore(new MemoryStore());
    const source = {
      key: 'tenant-source',
      fetchToken: () => Promise.resolve(syntheticToken()),
    };
    const managers = Array.from({ length: 3 }, () => new TokenManager({ source, store, storeTimeout: '1s' }));
    try {
      for (const manager of managers) await manager.getToken();
      expect(store.calls).toBeGreaterThanOrEqual(3);
      const points = (await otel.collect()).filter((p) => p.name === INSTRUMENTS.storeErrors.name);
      expect(points.map((p) => p.attributes)).toEqual([
        { [ATTRIBUTES.operation]: 'get', [ATTRIBUTES.errorType]: '_OTHER' },
      ]);
      expect(JSON.stringify(points)).not.toContain('acme');
    } finally {
      await Promise.all(managers.map((m) => m.close()));
    }
  });
});

/** A valid token for a source of our own. */
function syntheticToken() {
  const now = Date.now();
  return {
    accessToken: 'synthetic-access-token',
    tokenType: 'Bearer',
    issuedAt: now,
    expiresAt: now + 60_000,
    raw: {},
  };
}

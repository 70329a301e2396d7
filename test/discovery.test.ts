/**
 * Discovery's one retry: the OpenID Connect document at the address with a trailing slash, as Django OAuth
 * Toolkit before 2.0 serves it (a 404 without the slash, or Django's redirect to it). Any other redirect is
 * not followed, and the document found that way is checked like any other (its issuer must be ours).
 */
import { getEventListeners } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { discover } from '../src/sources/discovery.js';
import { type FaultServer, json, startFaultServer } from './support/fault-server.js';

let server: FaultServer;
let issuer: string;
const WELL_KNOWN = '/o/.well-known/openid-configuration';

beforeAll(async () => {
  server = await startFaultServer();
  issuer = `${server.url}/o`;
});
afterAll(() => server.close());

const metadata = (iss = issuer) => ({ issuer: iss, token_endpoint: `${iss}/token/` });
const options = { timeoutMs: 2000, maxResponseBytes: 1 << 20, allowInsecureRequests: true, force: true } as const;
const paths = (from: number) => server.requests.slice(from).map((r) => r.path);

describe('discovery of a document served only with a trailing slash', () => {
  for (const [what, answer] of [
    ['a 404 without the slash', 404],
    ["a redirect to it (Django's APPEND_SLASH, 301)", 301],
    ['a 308 redirect to it, relative', 308],
  ] as const) {
    it(`${what}: found at the address with the slash`, async () => {
      const from = server.requests.length;
      server.handle((req, res) => {
        if (req.url === `${WELL_KNOWN}/`) return json(res, 200, metadata());
        if (answer === 404) return json(res, 404, {});
        const location = answer === 308 ? 'openid-configuration/' : `${server.url}${WELL_KNOWN}/`;
        res.writeHead(answer, { location });
        res.end();
      });
      for (const algorithm of ['auto', 'oidc'] as const) {
        const as = await discover(issuer, { ...options, algorithm });
        expect(as.token_endpoint).toBe(`${issuer}/token/`);
      }
      expect(paths(from)).toEqual([WELL_KNOWN, `${WELL_KNOWN}/`, WELL_KNOWN, `${WELL_KNOWN}/`]);
    });
  }

  it('a redirect anywhere else is not followed: ERR_HTTP_STATUS 302', async () => {
    for (const location of [
      `${WELL_KNOWN}/../evil/`,
      'https://elsewhere.example/o/.well-known/openid-configuration/',
      `${WELL_KNOWN}x`,
    ]) {
      const from = server.requests.length;
      server.handle((req, res) => {
        res.writeHead(302, { location });
        res.end();
      });
      const err = await discover(issuer, { ...options, algorithm: 'oidc' }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_HTTP_STATUS', status: 302 });
      expect(paths(from)).toEqual([WELL_KNOWN]);
    }
  });

  it('the document with the slash must still name this issuer; the RFC 8414 document is asked for when neither exists', async () => {
    server.handle((req, res) => json(res, req.url === `${WELL_KNOWN}/` ? 200 : 404, metadata(`${server.url}/other`)));
    await expect(discover(issuer, { ...options, algorithm: 'oidc' })).rejects.toMatchObject({ code: 'ERR_DISCOVERY' });
    const from = server.requests.length;
    server.handle((req, res) =>
      req.url === '/.well-known/oauth-authorization-server/o' ? json(res, 200, metadata()) : json(res, 404, {}),
    );
    expect((await discover(issuer, { ...options, algorithm: 'auto' })).issuer).toBe(issuer);
    expect(paths(from)).toEqual([WELL_KNOWN, `${WELL_KNOWN}/`, '/.well-known/oauth-authorization-server/o']);
  });

  it('no document at any of the addresses: ERR_HTTP_STATUS 404 (a status, as the README table says), after each was asked', async () => {
    server.handle((_req, res) => json(res, 404, { detail: 'Not found.' }));
    const from = server.requests.length;
    await expect(discover(issuer, { ...options, algorithm: 'auto', force: true })).rejects.toMatchObject({
      code: 'ERR_HTTP_STATUS',
      status: 404,
    });
    expect(paths(from)).toEqual([WELL_KNOWN, `${WELL_KNOWN}/`, '/.well-known/oauth-authorization-server/o']);
  });
});

describe('discover() without time or size limits given', () => {
  it('uses the defaults: a document is found, and one larger than 1 MiB is refused (ERR_RESPONSE_TOO_LARGE)', async () => {
    server.handle((req, res) => json(res, req.url === WELL_KNOWN ? 200 : 404, metadata()));
    expect((await discover(issuer, { allowInsecureRequests: true, force: true })).issuer).toBe(issuer);
    server.handle((_req, res) => json(res, 200, { ...metadata(), padding: 'x'.repeat(1 << 20) }));
    await expect(discover(issuer, { allowInsecureRequests: true, force: true })).rejects.toMatchObject({
      code: 'ERR_RESPONSE_TOO_LARGE',
    });
  });
});

describe("discover() with a caller's signal that outlives the call", () => {
  it('leaves no listener on it once answered (from the cache or not): a process-wide signal passed on every call does not grow', async () => {
    server.handle((req, res) => json(res, req.url === WELL_KNOWN ? 200 : 404, metadata()));
    const { signal } = new AbortController();
    for (let i = 0; i < 20; i++) {
      expect((await discover(issuer, { ...options, force: i % 2 === 0, signal })).issuer).toBe(issuer);
    }
    expect(getEventListeners(signal, 'abort')).toHaveLength(0);
    // And the signal still stops a call that waits.
    const controller = new AbortController();
    server.handle(() => undefined); // never answers
    const waiting = discover(issuer, { ...options, signal: controller.signal });
    controller.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });
});

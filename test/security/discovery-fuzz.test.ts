/**
 * 600 authorization server metadata documents made at random (a fixed seed) from hostile parts — an issuer
 * that is another, almost ours (trailing slash, case, a query) or not a string; a token endpoint that is
 * relative, `javascript:`, `file:`, on a host that does not exist, not a string; members of the wrong type,
 * documents that are not objects or not JSON — each for an issuer of its own, then a token request. The
 * promise: a token or a coded `TokenwardenError` without the secret; and a token request only when the
 * metadata's `issuer` is exactly the configured one, only to the `token_endpoint` it names.
 */
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenwardenError } from '../../src/errors.js';
import { clientCredentials } from '../../src/sources/client-credentials.js';
import { type FaultServer, json, startFaultServer } from '../support/fault-server.js';
import { seeded } from '../support/seeded.js';

const CASES = 600;
const SECRET = 'discovery-fuzz-secret-0f1e2d3c';
let server: FaultServer;
let metadata = '';
const tokenRequests: string[] = [];

beforeAll(async () => {
  server = await startFaultServer((req, res) => {
    if (req.url?.includes('/.well-known/')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(metadata);
      return;
    }
    tokenRequests.push(req.url ?? '');
    json(res, 200, { access_token: 'from-the-fuzz', token_type: 'bearer', expires_in: 60 });
  });
});
afterAll(() => server.close());

describe('authorization server metadata made at random from hostile parts', () => {
  it(`${CASES} documents: a token or a coded error, and a token request only where a matching issuer's metadata says`, async () => {
    const pick = seeded(8414);
    const choose = <T>(list: readonly T[]): T => list[pick(list.length)] as T;
    const problems: string[] = [];
    const outcomes = new Map<string, number>();
    for (let n = 0; n < CASES; n++) {
      const issuer = `${server.url}/tenant-${n}`;
      const doc: Record<string, unknown> = {
        issuer: choose([
          issuer,
          issuer,
          issuer,
          `${issuer}/`,
          issuer.toUpperCase(),
          `${issuer}?x=1`,
          'https://as.evil.example',
          `${server.url}/tenant-${n + 1}`,
          42,
          null,
          undefined,
        ]),
        token_endpoint: choose([
          `${issuer}/token`,
          `${issuer}/token`,
          `${server.url}/elsewhere/token`,
          '/token',
          'token',
          'javascript:alert(1)',
          'file:///etc/passwd',
          'https://no-such-host.invalid/token',
          `${issuer}/token#fragment`,
          42,
          [],
          null,
          undefined,
        ]),
      };
      for (const name of [
        'jwks_uri',
        'token_endpoint_auth_methods_supported',
        'grant_types_supported',
        'mtls_endpoint_aliases',
      ]) {
        if (pick(4) === 0)
          doc[name] = choose([
            42,
            'x',
            [],
            {},
            null,
            ['client_secret_basic'],
            { token_endpoint: 'https://evil.example/t' },
          ]);
      }
      const shape = pick(15);
      metadata = shape === 0 ? choose(['null', '[]', '"x"', '{', '']) : JSON.stringify(doc);
      const before = tokenRequests.length;
      const described = `case ${n}: ${metadata.slice(0, 200)}`;
      let outcome: string;
      try {
        await clientCredentials({
          issuer,
          clientId: 'svc',
          clientSecret: SECRET,
          allowInsecureRequests: true,
          timeout: '2s',
        }).fetchToken({});
        outcome = 'token';
      } catch (err) {
        if (!(err instanceof TokenwardenError) || typeof err.code !== 'string') {
          problems.push(`not a coded TokenwardenError (${String(err)}): ${described}`);
          continue;
        }
        outcome = err.code;
        const seen = [err.message, JSON.stringify(err), inspect(err, { depth: 10 }), String(err.stack)].join('\n');
        if (seen.includes(SECRET)) problems.push(`the secret shown: ${described}`);
      }
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      const sent = tokenRequests.slice(before);
      if (sent.length > 0) {
        if (shape === 0 || doc['issuer'] !== issuer)
          problems.push(`token request after a foreign issuer: ${described}`);
        const named = typeof doc['token_endpoint'] === 'string' ? doc['token_endpoint'] : '';
        for (const path of sent) {
          if (!named.startsWith(server.url) || new URL(named).pathname !== path.split('?')[0]) {
            problems.push(`token request to ${path}, not where the metadata said: ${described}`);
          }
        }
      } else if (outcome === 'token') {
        problems.push(`a token without a token request: ${described}`);
      }
    }
    expect(problems).toEqual([]);
    expect(outcomes.get('token') ?? 0).toBeGreaterThan(30);
    expect(outcomes.get('ERR_DISCOVERY') ?? 0).toBeGreaterThan(100);
  }, 120_000);
});

/**
 * The resource server under attack (issue 10): one test per attack class — forged and malformed JWTs,
 * introspection answers, DPoP proofs. Every hostile input must be refused with an RFC 6750 answer (or, when
 * the authorization server's answer cannot be trusted, 503), never accepted, never a throw or a hang; and
 * no token or secret may reach a failure, an HTTP answer, an `onError` error or an event — including text
 * the server echoes back.
 */
import { createHmac, createPrivateKey, randomBytes, sign as rsaSign } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { inspect } from 'node:util';
import { type JWK, SignJWT, exportJWK, exportSPKI, generateKeyPair, importJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenwardenError } from '../../src/errors.js';
import {
  type Verifier,
  type VerifierEvents,
  type VerifierOptions,
  type VerifyResult,
  createVerifier,
  failureResponse,
} from '../../src/server/index.js';
import {
  API_RESOURCE,
  OPAQUE_RESOURCE,
  type TestAuthorizationServer,
  newSigningKey,
  publicJwk,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { type FaultServer, json, startFaultServer } from '../support/fault-server.js';
import { dpopProof, forge, issueDPoPToken, issueToken, segment } from '../server/support.js';

let as: TestAuthorizationServer;

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 600 });
});
afterAll(() => as.close());

/** Everything a verifier said: failures, HTTP answers, errors given to onError, events. Scanned for secrets. */
interface Observed {
  said: unknown[];
  errors: TokenwardenError[];
}

const EVENTS: (keyof VerifierEvents)[] = ['verify', 'request', 'unavailable', 'recovered', 'staleKeys', 'keysExpired'];

/** A verifier whose every output is recorded. */
function observed(options: VerifierOptions): { verify: Verifier; seen: Observed } {
  const seen: Observed = { said: [], errors: [] };
  const verify = createVerifier({ ...options, onError: (e) => seen.errors.push(e) });
  for (const name of EVENTS) verify.on(name, (event: unknown) => seen.said.push(event));
  return { verify, seen };
}

/** Settles within 15 s (more than any time limit in play), or fails the test: a hostile input must never hang a request. */
async function within<T>(promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('hung for 15 s')), 15_000);
  });
  try {
    return await Promise.race([promise, hang]);
  } finally {
    clearTimeout(timer);
  }
}

/** Every rendering of what was observed, as one string (JSON, messages, causes, inspect). */
function rendered(seen: Observed, extra: unknown[] = []): string {
  const parts: string[] = [];
  for (const value of [...seen.said, ...seen.errors, ...extra]) {
    parts.push(inspect(value, { depth: 30, showHidden: true, breakLength: Infinity }));
    try {
      parts.push(JSON.stringify(value));
    } catch {
      // circular: inspect covers it
    }
  }
  for (const error of seen.errors) {
    for (let e: unknown = error; e instanceof Error; e = (e as { cause?: unknown }).cause) {
      parts.push(e.message, String((e as { error_description?: unknown }).error_description ?? ''));
    }
  }
  return parts.join('\n');
}

/** No secret (nor a 16-character piece of one) in anything observed. */
function expectNoLeak(seen: Observed, secrets: readonly string[], extra: unknown[] = []): void {
  const text = rendered(seen, extra);
  for (const secret of secrets) {
    expect(text).not.toContain(secret);
    if (secret.length > 32) expect(text).not.toContain(secret.slice(8, 24));
  }
}

/** The input is refused (never accepted, never thrown): returns the failure and its HTTP answer. */
async function refused(verify: Verifier, input: Parameters<Verifier>[0], seen: Observed, statuses = [401]) {
  const result: VerifyResult = await within(verify(input));
  expect(result.ok, `accepted: ${typeof input === 'string' ? input.slice(0, 80) : 'request'}`).toBe(false);
  if (result.ok) throw new Error('accepted');
  expect(statuses).toContain(result.failure.status);
  const response = failureResponse(result.failure);
  seen.said.push(result, response);
  return result.failure;
}

/** `header.payload.signature` with the payload given as JSON text (so it may say `1e400`), RS256 by `key`. */
function signText(header: Record<string, unknown>, payload: string, key: JWK): string {
  const input = `${segment(header)}.${Buffer.from(payload).toString('base64url')}`;
  const signature = rsaSign('sha256', Buffer.from(input), createPrivateKey({ key: key as never, format: 'jwk' }));
  return `${input}.${signature.toString('base64url')}`;
}

const jwtOptions = (): VerifierOptions => ({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });

describe('forged and malformed JWTs: 401 invalid_token, no network call for what cannot be a token', () => {
  it('alg none, in every spelling, signed or not', async () => {
    const { verify, seen } = observed(jwtOptions());
    const claims = JSON.parse(Buffer.from((await forge(as)).split('.')[1]!, 'base64url').toString());
    const tokens: string[] = [];
    for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
      for (const signature of ['', segment('x')]) {
        const token = `${segment({ alg, typ: 'at+jwt' })}.${segment(claims)}.${signature}`;
        tokens.push(token);
        await refused(verify, token, seen);
      }
    }
    expectNoLeak(seen, tokens);
  });

  it('HMAC signed with the public key (PEM, JWK JSON, modulus), HS256/384/512', async () => {
    const { verify, seen } = observed(jwtOptions());
    const pub = publicJwk(as.signingKeys[0]!);
    const pem = await exportSPKI((await importJWK(pub, 'RS256', { extractable: true })) as CryptoKey);
    const claims = JSON.parse(Buffer.from((await forge(as)).split('.')[1]!, 'base64url').toString());
    for (const [alg, hash] of [
      ['HS256', 'sha256'],
      ['HS384', 'sha384'],
      ['HS512', 'sha512'],
    ] as const) {
      for (const secret of [pem, JSON.stringify(pub), pub.n as string]) {
        const input = `${segment({ alg, typ: 'at+jwt', kid: pub.kid })}.${segment(claims)}`;
        const failure = await refused(
          verify,
          `${input}.${createHmac(hash, secret).update(input).digest('base64url')}`,
          seen,
        );
        expect(failure.description).toBe('algorithm not allowed');
      }
    }
  });

  it('unknown, empty or mistyped algorithms', async () => {
    const { verify, seen } = observed(jwtOptions());
    const key = as.signingKeys[0]!;
    const claims = JSON.parse(Buffer.from((await forge(as)).split('.')[1]!, 'base64url').toString());
    for (const alg of ['RS1', 'ES256K', 'RSA-OAEP', 'foo', '', 123, null, ['RS256'], { alg: 'RS256' }]) {
      await refused(verify, signText({ alg, kid: key.kid }, JSON.stringify(claims), key), seen);
    }
  });

  it('crit: unknown extensions, malformed lists, b64: false', async () => {
    const { verify, seen } = observed(jwtOptions());
    const key = as.signingKeys[0]!;
    const claims = JSON.stringify(JSON.parse(Buffer.from((await forge(as)).split('.')[1]!, 'base64url').toString()));
    const base = { alg: 'RS256', typ: 'at+jwt', kid: key.kid };
    for (const extra of [
      { crit: ['urn:example:ext'], 'urn:example:ext': true },
      { crit: ['b64'], b64: false },
      { crit: [] },
      { crit: 'exp' },
      { crit: ['alg'] },
      { crit: [1] },
    ]) {
      await refused(verify, signText({ ...base, ...extra }, claims, key), seen);
    }
    expect((await verify(signText(base, claims, key))).ok).toBe(true); // the same token without them passes
  });

  it('embedded keys (jwk, x5c) and key URLs (jku, x5u) are never used: no request goes to them', async () => {
    const trap = await startFaultServer((_req, res) => json(res, 200, { keys: [] }));
    try {
      const { verify, seen } = observed(jwtOptions());
      const attacker = await newSigningKey();
      const real = as.signingKeys[0]!;
      const claims = JSON.stringify(JSON.parse(Buffer.from((await forge(as)).split('.')[1]!, 'base64url').toString()));
      for (const kid of [attacker.kid, real.kid]) {
        for (const extra of [
          { jwk: publicJwk(attacker) },
          { jku: `${trap.url}/jwks` },
          { x5u: `${trap.url}/cert.pem` },
          { x5c: ['MIIB'] },
          { jwk: publicJwk(attacker), jku: `${trap.url}/jwks` },
        ]) {
          await refused(verify, signText({ alg: 'RS256', typ: 'at+jwt', kid, ...extra }, claims, attacker), seen);
        }
      }
      expect(trap.requests).toHaveLength(0);
    } finally {
      await trap.close();
    }
  });

  it('oversized tokens are refused before parsing; many segments, empty parts and stray characters too', async () => {
    const offline = observed({ ...jwtOptions(), fetch: () => Promise.reject(new Error('no network')) });
    const huge = `eyJ${'A'.repeat(2 * 1024 * 1024)}`;
    const failure = await refused(offline.verify, huge, offline.seen);
    expect(failure.description).toBe('token too large');
    expect(offline.seen.errors).toEqual([]); // refused before any key was needed
    const { verify, seen } = observed(jwtOptions());
    for (const token of [
      'eyJ.eyJ.',
      '..',
      'a.b.c.d',
      `${segment({ alg: 'RS256' })}..`,
      `${segment({ alg: 'RS256' })}.${segment({})}.`,
      'eyJhbGciOiJSUzI1NiJ9.e30.x y',
      `${'eyJ.'.repeat(1000)}x`,
    ]) {
      await refused(verify, token, seen, [400, 401]);
    }
  });

  it('deep nesting in the header or the claims: no stack overflow, no crash', async () => {
    const depth = 100_000;
    const nested = `${'['.repeat(depth)}${']'.repeat(depth)}`;
    const { verify, seen } = observed({ ...jwtOptions(), maxTokenLength: 2 * 1024 * 1024 });
    const attacker = await newSigningKey();
    const real = as.signingKeys[0]!;
    const now = Math.floor(Date.now() / 1000);
    const payload = `{"iss":"${as.issuer}","aud":"${API_RESOURCE}","sub":"x","exp":${now + 300},"deep":${nested}}`;
    await refused(verify, signText({ alg: 'RS256', kid: real.kid }, payload, attacker), seen); // forged
    await refused(verify, `${Buffer.from(`{"alg":"RS256","x":${nested}}`).toString('base64url')}.e30.sig`, seen);
    // Signed by the issuer itself: deep claims are accepted and frozen without recursion.
    const signed = await within(verify(signText({ alg: 'RS256', typ: 'at+jwt', kid: real.kid }, payload, real)));
    expect(signed.ok).toBe(true);
  });

  it('non-finite, negative, out-of-range and string dates (exp, nbf, iat), signed with the real key', async () => {
    const { verify, seen } = observed(jwtOptions());
    const key = as.signingKeys[0]!;
    const now = Math.floor(Date.now() / 1000);
    const header = { alg: 'RS256', typ: 'at+jwt', kid: key.kid };
    const claims = (dates: string) =>
      `{"iss":"${as.issuer}","aud":"${API_RESOURCE}","sub":"x","jti":"${randomBytes(4).toString('hex')}",${dates}}`;
    const hostile = [
      `"exp":1e400`,
      `"exp":-1e400`,
      `"exp":1e300`,
      `"exp":253402300800`,
      `"exp":-5`,
      `"exp":"${now + 300}"`,
      `"exp":null`,
      `"exp":[${now + 300}]`,
      `"exp":true`,
      `"exp":${now + 300},"nbf":1e400`,
      `"exp":${now + 300},"nbf":-1e400`,
      `"exp":${now + 300},"nbf":-1`,
      `"exp":${now + 300},"nbf":"0"`,
      `"exp":${now + 300},"iat":1e400`,
      `"exp":${now + 300},"iat":-1e400`,
      `"exp":${now + 300},"iat":1e20`,
      `"exp":${now + 300},"iat":-100`,
      `"exp":${now + 300},"iat":"${now}"`,
    ];
    const tokens = hostile.map((dates) => signText(header, claims(dates), key));
    for (const [i, token] of tokens.entries()) {
      const result = await within(verify(token));
      expect(result.ok, hostile[i]).toBe(false);
      if (!result.ok) expect(result.failure.status, hostile[i]).toBe(401);
      seen.said.push(result, result.ok ? undefined : failureResponse(result.failure));
    }
    // The same claims with sane dates pass: only the dates were wrong.
    expect((await verify(signText(header, claims(`"exp":${now + 300},"nbf":${now - 5},"iat":${now}`), key))).ok).toBe(
      true,
    );
    expectNoLeak(seen, tokens);
  });

  it("a provider's claims with non-finite dates are not valid by default (an exp of 1e400 is not 'no expiry')", async () => {
    const payloads = ['{"sub":"a","exp":1e400}', '{"sub":"a","nbf":-1e400}', '{"sub":"a","exp":"soon"}'];
    const verify = createVerifier({
      provider: { getPayload: async (token) => ({ ok: true, payload: JSON.parse(payloads[Number(token)]!) }) },
    });
    for (const [i] of payloads.entries())
      expect(await verify(String(i))).toMatchObject({ ok: false, failure: { status: 401 } });
  });

  it('JWE (encrypted JWTs) and other non-JWS shapes', async () => {
    const { verify, seen } = observed(jwtOptions());
    const jweHeader = segment({ alg: 'RSA-OAEP-256', enc: 'A256GCM', kid: as.signingKeys[0]!.kid });
    for (const token of [
      `${jweHeader}.${segment('key')}.${segment('iv')}.${segment('ciphertext')}.${segment('tag')}`,
      `${segment({ alg: 'dir', enc: 'A128GCM' })}..${segment('iv')}.${segment('ct')}.${segment('tag')}`,
      `${segment({ alg: 'RS256', typ: 'at+jwt' })}.${segment([1, 2, 3])}.${segment('sig')}`,
      `${segment({ alg: 'RS256' })}.${segment('"a string"')}.${segment('sig')}`,
      `${segment([{ alg: 'RS256' }])}.${segment({})}.${segment('sig')}`,
    ]) {
      await refused(verify, token, seen);
    }
  });

  it('header and claim types an attacker controls: typ, kid, iss, aud, cnf of the wrong type', async () => {
    const { verify, seen } = observed(jwtOptions());
    const key = as.signingKeys[0]!;
    const now = Math.floor(Date.now() / 1000);
    const good = { iss: as.issuer, aud: API_RESOURCE, sub: 'x', exp: now + 300 };
    const cases: [Record<string, unknown>, Record<string, unknown>][] = [
      [{ typ: 123 }, {}],
      [{ typ: ['at+jwt'] }, {}],
      [{ kid: 123 }, {}],
      [{ kid: 'k'.repeat(10_000) }, {}],
      [{}, { iss: 123 }],
      [{}, { iss: [as.issuer] }],
      [{}, { aud: { aud: API_RESOURCE } }],
      [{}, { aud: [] }],
      [{}, { cnf: 'x' }],
      [{}, { cnf: { 'x5t#S256': 'abc' } }],
    ];
    for (const [header, claims] of cases) {
      const token = signText({ alg: 'RS256', kid: key.kid, ...header }, JSON.stringify({ ...good, ...claims }), key);
      await refused(verify, token, seen);
    }
    expect(seen.errors).toEqual([]); // each was judged (401), none was "could not be verified" (503)
  });
});

/** An authorization server (a fault server) whose introspection answers are scripted per test. */
async function introspectionServer(answer: (res: ServerResponse, body: string) => void | Promise<void>, key: JWK) {
  const server = await startFaultServer();
  server.handle(async (req, res, body) => {
    if (req.url?.startsWith('/.well-known/')) {
      return json(res, 200, {
        issuer: server.url,
        jwks_uri: `${server.url}/jwks`,
        introspection_endpoint: `${server.url}/introspect`,
      });
    }
    if (req.url === '/jwks') return json(res, 200, { keys: [publicJwk(key)] });
    return answer(res, body);
  });
  return server;
}

/** A signed introspection response (RFC 9701) with these claims and header, signed by `key`. */
async function signedAnswer(
  key: JWK | CryptoKey,
  claims: Record<string, unknown>,
  header: Record<string, unknown> = {},
): Promise<string> {
  const privateKey = 'kty' in key ? await importJWK(key, 'RS256') : key;
  return new SignJWT(claims)
    .setProtectedHeader({
      alg: 'RS256',
      typ: 'token-introspection+jwt',
      ...('kid' in key && { kid: key.kid }),
      ...header,
    } as never)
    .sign(privateKey);
}

describe('introspection answers', () => {
  const SECRET = `rs-secret-${randomBytes(12).toString('hex')}`;
  const TOKEN = `opaque-${randomBytes(24).toString('hex')}`;
  let key: JWK;
  beforeAll(async () => {
    key = await newSigningKey();
  });

  /** A fresh verifier against a fresh server answering `answer`: each case starts without backoff. */
  async function against(
    answer: (res: ServerResponse, body: string) => void | Promise<void>,
    extra: Partial<VerifierOptions> | ((url: string) => Partial<VerifierOptions>) = {},
  ): Promise<{ result: VerifyResult; seen: Observed; server: FaultServer }> {
    const server = await introspectionServer(answer, key);
    try {
      const { verify, seen } = observed({
        issuer: server.url,
        introspection: { clientId: 'rs', clientSecret: SECRET },
        allowInsecureRequests: true,
        timeout: '5s', // generous on a loaded machine; the slow-answer case sets its own
        maxResponseBytes: 64 * 1024,
        ...(typeof extra === 'function' ? extra(server.url) : extra),
      });
      const result = await within(verify(`Bearer ${TOKEN}`));
      if (!result.ok) seen.said.push(result, failureResponse(result.failure));
      expectNoLeak(seen, [TOKEN, SECRET, Buffer.from(`rs:${SECRET}`).toString('base64')]);
      return { result, seen, server };
    } finally {
      await server.close();
    }
  }

  it('wrong types: a malformed answer is 503 (not judged), a well-formed one with bad fields 401, none accepted', async () => {
    const exp = Math.floor(Date.now() / 1000) + 300;
    const notJudged = [{ active: 'true' }, { active: 1 }, { active: null }, [{ active: true }], 'active', null];
    for (const body of notJudged) {
      const { result } = await against((res) => json(res, 200, JSON.stringify(body)));
      expect(result, JSON.stringify(body)).toMatchObject({ ok: false, failure: { status: 503 } });
    }
    const bad: string[] = [
      `{"active":true,"exp":1e400}`,
      `{"active":true,"exp":"${exp}"}`,
      `{"active":true,"exp":-1}`,
      `{"active":true,"exp":${exp},"nbf":1e400}`,
      `{"active":true,"exp":${exp},"iat":"now"}`,
      `{"active":true,"exp":${exp},"iss":123}`,
      `{"active":true,"exp":${exp},"token_type":5}`,
      `{"active":true,"exp":${exp},"token_type":"refresh_token"}`,
      `{"active":true,"exp":${exp},"cnf":"x"}`,
      `{"active":false,"sub":"alice","scope":"admin"}`,
    ];
    for (const body of bad) {
      const { result } = await against((res) => json(res, 200, body));
      expect(result, body).toMatchObject({ ok: false, failure: { status: 401, error: 'invalid_token' } });
    }
    // A sane answer passes: only the fields were wrong.
    const { result } = await against((res) => json(res, 200, { active: true, sub: 'alice', exp }));
    expect(result.ok).toBe(true);
  });

  it('a refresh or ID token the server introspects as active is not an access token (Ory Hydra, Authelia, Keycloak)', async () => {
    const exp = Math.floor(Date.now() / 1000) + 300;
    const base = { active: true, sub: 'alice', client_id: 'app', scope: 'read', exp };
    const refused: Record<string, unknown>[] = [
      { ...base, token_type: 'Bearer', token_use: 'refresh_token' }, // Ory Hydra 2, Authelia
      { ...base, token_use: 'id' },
      { ...base, token_use: 5 },
      { ...base, typ: 'Refresh' }, // Keycloak
      { ...base, typ: 'Offline' },
      { ...base, typ: 'ID' },
    ];
    for (const body of refused) {
      const { result } = await against((res) => json(res, 200, body));
      expect(result, JSON.stringify(body)).toMatchObject({
        ok: false,
        failure: { status: 401, error: 'invalid_token', description: 'not an access token' },
      });
    }
    const accepted: Record<string, unknown>[] = [
      { ...base, token_type: 'Bearer', token_use: 'access_token' }, // Ory Hydra 2, Authelia
      { ...base, token_type: 'access_token' }, // Ory Hydra 1
      { ...base, typ: 'Bearer', azp: 'app' }, // Keycloak
      { ...base, token_type: 'bearer', username: 'alice@example.test', aud: ['rs', 'other'] }, // Okta, Spring
    ];
    for (const body of accepted) {
      const { result } = await against((res) => json(res, 200, body));
      expect(result.ok && result.auth, JSON.stringify(body)).toMatchObject({
        uid: 'alice',
        credentials: { scopes: ['read'] },
      });
    }
  });

  it('a JWT answer (RFC 9701) is believed only when signed by the issuer for this client: unsigned, foreign-signed, wrong iss/aud/typ are 503', async () => {
    const now = Math.floor(Date.now() / 1000);
    const stranger = await newSigningKey();
    const attacker = await generateKeyPair('RS256');
    const content = { 'content-type': 'application/token-introspection+jwt' };
    const inner = { active: true, sub: 'mallory', scope: 'admin', exp: now + 300 };
    const good = (issuer: string) => ({ iss: issuer, aud: 'rs', iat: now, token_introspection: inner });
    const send = (make: (issuer: string) => Promise<string> | string) => async (res: ServerResponse) => {
      const issuer = `http://${res.req.headers.host}`;
      res.writeHead(200, content).end(await make(issuer));
    };
    const hostile: [string, (issuer: string) => Promise<string> | string][] = [
      [
        'unsigned (alg none)',
        (i) => `${segment({ alg: 'none', typ: 'token-introspection+jwt' })}.${segment(good(i))}.`,
      ],
      ['signed by a key the issuer does not publish', (i) => signedAnswer(stranger, good(i))],
      ['signed with a published kid but another key', (i) => signedAnswer(stranger, good(i), { kid: key.kid })],
      ['no kid, another key', (i) => signedAnswer(attacker.privateKey, good(i))],
      [
        'HMAC with the public key',
        (i) => {
          const input = `${segment({ alg: 'HS256', typ: 'token-introspection+jwt', kid: key.kid })}.${segment(good(i))}`;
          return `${input}.${createHmac('sha256', JSON.stringify(publicJwk(key)))
            .update(input)
            .digest('base64url')}`;
        },
      ],
      ['another issuer', (i) => signedAnswer(key, { ...good(i), iss: 'https://evil.example.test' })],
      ['another audience', (i) => signedAnswer(key, { ...good(i), aud: 'someone-else' })],
      ['another typ', (i) => signedAnswer(key, good(i), { typ: 'JWT' })],
      ['no iat', (i) => signedAnswer(key, { ...good(i), iat: undefined })],
      [
        'iat 1e400',
        async (i) =>
          signText(
            { alg: 'RS256', typ: 'token-introspection+jwt', kid: key.kid },
            JSON.stringify(good(i)).replace(`"iat":${now}`, '"iat":1e400'),
            key,
          ),
      ],
      ['no token_introspection', (i) => signedAnswer(key, { ...good(i), token_introspection: undefined })],
      ['token_introspection not an object', (i) => signedAnswer(key, { ...good(i), token_introspection: 'active' })],
      [
        'active not a boolean',
        (i) => signedAnswer(key, { ...good(i), token_introspection: { ...inner, active: 'true' } }),
      ],
      ['garbage', () => 'not.a.jwt'],
    ];
    for (const [name, make] of hostile) {
      const { result, seen } = await against(send(make));
      expect(result, name).toMatchObject({ ok: false, failure: { status: 503, error: 'temporarily_unavailable' } });
      expect(seen.errors[0]?.code, name).toBe('ERR_INVALID_RESPONSE');
    }
    // Without an issuer, a signed answer cannot be checked: refused, not trusted.
    const issuerless = await against(
      send((i) => signedAnswer(key, good(i))),
      (url) => ({ issuer: undefined, introspectionEndpoint: `${url}/introspect` }),
    );
    expect(issuerless.result).toMatchObject({ ok: false, failure: { status: 503 } });
    expect(issuerless.seen.errors[0]?.code).toBe('ERR_INVALID_RESPONSE');
    // Properly signed: accepted, with the claims inside token_introspection.
    const { result, server } = await against(
      send((i) => signedAnswer(key, good(i))),
      {
        introspection: { clientId: 'rs', clientSecret: SECRET, jwtResponse: true },
      },
    );
    expect(result.ok && result.auth).toMatchObject({ uid: 'mallory', credentials: { scopes: ['admin'] } });
    expect(server.requests.find((r) => r.path === '/introspect')?.headers.accept).toBe(
      'application/token-introspection+jwt',
    );
  });

  it('HTML, oversized and slow answers are 503 with a coded error', async () => {
    const html = await against((res) => {
      res.writeHead(200, { 'content-type': 'text/html' }).end('<html>login</html>');
    });
    expect(html.result).toMatchObject({ ok: false, failure: { status: 503 } });
    expect(html.seen.errors[0]?.code).toBe('ERR_INVALID_RESPONSE');
    const error = await against((res) => {
      res.writeHead(500, { 'content-type': 'text/html' }).end('<h1>oops</h1>');
    });
    expect(error.seen.errors[0]).toMatchObject({ code: 'ERR_HTTP_STATUS', status: 500 });
    const big = await against((res) => json(res, 200, { active: true, pad: 'x'.repeat(100 * 1024) }));
    expect(big.seen.errors[0]?.code).toBe('ERR_RESPONSE_TOO_LARGE');
    const slow = await against(
      async (res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.write('{"active":');
        await new Promise((r) => setTimeout(r, 3000)); // a body that never finishes in time
        res.end('true}');
      },
      { timeout: '1s' },
    );
    expect(slow.result).toMatchObject({ ok: false, failure: { status: 503 } });
    expect(slow.seen.errors[0]?.code).toBe('ERR_TIMEOUT');
  });

  it('deeply nested claims in an active answer: no stack overflow', async () => {
    const depth = 200_000;
    const body = `{"active":true,"sub":"alice","exp":${Math.floor(Date.now() / 1000) + 300},"deep":${'['.repeat(depth)}${']'.repeat(depth)}}`;
    const { result } = await against((res) => json(res, 200, body), { maxResponseBytes: 1024 * 1024 });
    expect(result.ok).toBe(true);
  });

  it('a server echoing the token and our credentials (error_description, WWW-Authenticate, body) leaks none of them', async () => {
    const echoes: ((res: ServerResponse, body: string) => void)[] = [
      (res, body) => json(res, 400, { error: 'invalid_request', error_description: `bad request: ${body}` }),
      (res) => json(res, 400, { error: TOKEN.slice(0, 40), error_description: TOKEN }),
      (res) => json(res, 400, { error: 'invalid_token', error_description: `token ${TOKEN} secret ${SECRET}` }),
      (res) => {
        const auth = String(res.req.headers.authorization);
        res.writeHead(401, {
          'content-type': 'application/json',
          'www-authenticate': `Basic realm="x", error="invalid_client", error_description="${auth} ${TOKEN}"`,
        });
        res.end(JSON.stringify({ error: 'invalid_client', error_description: auth }));
      },
      (res, body) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`failed for ${body}`),
      (res, body) => res.writeHead(200, { 'content-type': 'application/json' }).end(`{"active": ${body}`),
    ];
    for (const echo of echoes) {
      const { result } = await against(echo); // expectNoLeak runs inside
      expect(result).toMatchObject({ ok: false, failure: { status: 503 } });
    }
    // The safe part survives: status and a plain error code.
    const { seen } = await against((res) => json(res, 401, { error: 'invalid_client', error_description: SECRET }));
    expect(seen.errors[0]).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client', status: 401 });
  });

  it('the real authorization server, asked for signed answers (RFC 9701): verified against its JWKS', async () => {
    const opaque = (await issueToken(as, { resource: OPAQUE_RESOURCE })).accessToken;
    const { verify, seen } = observed({
      issuer: as.issuer,
      introspection: { clientId: as.clients.rs.clientId, clientSecret: as.clients.rs.clientSecret, jwtResponse: true },
      allowInsecureRequests: true,
    });
    as.resetCounts();
    const result = await verify(opaque);
    expect(result.ok && result.auth).toMatchObject({ uid: 'svc', extra: { strategy: 'introspection' } });
    expect(as.counts.introspection).toBe(1);
    expect(as.counts.jwks).toBe(1);
    expect(seen.errors).toEqual([]);
  });
});

describe('DPoP proofs', () => {
  const API = 'https://api.example.test/orders';
  let keys: CryptoKeyPair;
  let token: string;
  beforeAll(async () => {
    keys = await generateKeyPair('ES256', { extractable: true });
    token = await issueDPoPToken(as, keys);
  });

  const request = (proof: string | string[]) => {
    const headers = new Headers({ authorization: `DPoP ${token}` });
    for (const p of ([] as string[]).concat(proof)) headers.append('dpop', p);
    return new Request(API, { headers });
  };

  it('hostile proofs are refused with invalid_dpop_proof (or invalid_token), never accepted', async () => {
    const { verify, seen } = observed(jwtOptions());
    const now = Math.floor(Date.now() / 1000);
    const publicJ = await exportJWK(keys.publicKey);
    const privateJ = await exportJWK(keys.privateKey);
    const other = await generateKeyPair('ES256', { extractable: true });
    const proof = (o: Parameters<typeof dpopProof>[1], k = keys) => dpopProof(k, o);
    const good = { htu: API, token };
    const raw = (header: Record<string, unknown>, claims: Record<string, unknown>) =>
      `${segment(header)}.${segment(claims)}.${segment('sig')}`;
    const hostile: (string | string[])[] = [
      raw({ alg: 'none', typ: 'dpop+jwt', jwk: publicJ }, { jti: 'a', htm: 'GET', htu: API, iat: now }),
      `${segment({ alg: 'HS256', typ: 'dpop+jwt', jwk: publicJ })}.${segment({ jti: 'a', htm: 'GET', htu: API, iat: now })}.${createHmac('sha256', JSON.stringify(publicJ)).update('x').digest('base64url')}`,
      await proof({ ...good, header: { jwk: privateJ } }),
      await proof({ ...good, header: { jwk: undefined } }),
      await proof({ ...good, header: { typ: 'JWT' } }),
      await proof({ ...good, header: { jwk: await exportJWK(other.publicKey) } }),
      await proof(good, other), // bound token, other key
      await proof({ ...good, htu: 'https://evil.example.test/orders' }),
      await proof({ ...good, htm: 'POST' }),
      await proof({ ...good, token: 'another-token' }),
      await proof({ ...good, iat: now - 3600 }),
      await proof({ ...good, iat: now + 3600 }),
      await proof({ ...good, claims: { iat: '1e400' } }),
      await signTextES(keys, publicJ, `{"jti":"x","htm":"GET","htu":"${API}","iat":1e400}`),
      await proof({ ...good, jti: '' }),
      await proof({ ...good, jti: 'j'.repeat(10_000) }),
      `eyJ${'A'.repeat(20_000)}.e30.sig`,
      [await proof(good), await proof(good)],
      'not-a-proof',
    ];
    for (const p of hostile) {
      await refused(verify, request(p), seen, [400, 401]);
    }
    // Replay: the same proof twice.
    const once = await proof(good);
    expect((await verify(request(once))).ok).toBe(true);
    await refused(verify, request(once), seen);
    expectNoLeak(seen, [token]);
  });
});

/** A DPoP proof with a literal JSON payload (so `iat` may be `1e400`), signed ES256 with `keys`. */
async function signTextES(keys: CryptoKeyPair, jwk: JWK, payload: string): Promise<string> {
  // jose cannot sign a payload it did not serialise; sign the compact input with WebCrypto directly.
  const input = `${segment({ alg: 'ES256', typ: 'dpop+jwt', jwk })}.${Buffer.from(payload).toString('base64url')}`;
  const signature = await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, keys.privateKey, Buffer.from(input));
  return `${input}.${Buffer.from(signature).toString('base64url')}`;
}

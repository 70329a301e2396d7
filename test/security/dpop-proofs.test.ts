/**
 * Hostile DPoP proofs (RFC 9449 §4.3) against DPoP-bound access tokens, judged twice: by what the RFC allows
 * (each change below says whether it leaves a proof valid), and by oauth4webapi's resource-server validation
 * (`validateJwtAccessToken`), the second judge. Where oauth4webapi and the RFC part ways, the RFC wins and the
 * change says why (`o4w`). Every refusal is a 401 with a challenge (DPoP, or Bearer for a token presented as
 * Bearer: RFC 9449 §7.2), never a throw, and never echoes the token or the proof.
 *
 * The proof's own unit behaviour (replay cache, thumbprints, nonces, URLs behind proxies) is in
 * test/server/dpop.test.ts; this suite is the differential and the faults it found.
 */
import {
  type KeyObject,
  createHash,
  createHmac,
  createPrivateKey,
  generateKeyPairSync,
  sign as cryptoSign,
} from 'node:crypto';
import * as oauth from 'oauth4webapi';
import { beforeAll, describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/stores/memory.js';
import { type Verifier, challenge, createVerifier, failureResponse } from '../../src/server/index.js';
import { seeded } from '../support/seeded.js';

const ISSUER = 'https://as.example.test';
const AUDIENCE = 'https://api.example.test';
const JWKS_URI = `${ISSUER}/jwks`;
const API = 'https://api.example.test/orders';

type Json = Record<string, unknown>;
interface Signer {
  name: string;
  alg: string;
  privateKey: KeyObject;
  jwk: Json;
  /** A token bound to this key (`cnf.jkt`). */
  token: string;
}

const b64 = (value: unknown): string =>
  Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
const ath = (token: string): string => createHash('sha256').update(token).digest('base64url');
const thumbprint = (jwk: Json): string => {
  const names =
    jwk['kty'] === 'EC' ? ['crv', 'kty', 'x', 'y'] : jwk['kty'] === 'RSA' ? ['e', 'kty', 'n'] : ['crv', 'kty', 'x'];
  return createHash('sha256')
    .update(JSON.stringify(Object.fromEntries(names.map((n) => [n, jwk[n]]))))
    .digest('base64url');
};

/** A JWS signature over `input` with node:crypto, as `alg` says (whatever the header says). */
function signWith(alg: string, privateKey: KeyObject, input: string): string {
  const hash = alg.startsWith('Ed') ? null : `sha${alg.slice(2)}`;
  const key = alg.startsWith('PS')
    ? { key: privateKey, padding: 6, saltLength: Number(alg.slice(2)) / 8 }
    : alg.startsWith('ES')
      ? { key: privateKey, dsaEncoding: 'ieee-p1363' as const }
      : privateKey;
  return cryptoSign(hash, Buffer.from(input), key).toString('base64url');
}

const asKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const asJwk = { ...(asKey.publicKey.export({ format: 'jwk' }) as Json), kid: 'as-1', alg: 'ES256', use: 'sig' };
const jwks = JSON.stringify({ keys: [asJwk] });
const serveJwks = async (): Promise<Response> =>
  new Response(jwks, { status: 200, headers: { 'content-type': 'application/json' } });

/** An access token from the authorization server (JWT profile, RFC 9068), with `claims` on top. */
function accessToken(claims: Json): string {
  const now = Math.floor(Date.now() / 1000);
  const input = `${b64({ alg: 'ES256', typ: 'at+jwt', kid: 'as-1' })}.${b64({
    iss: ISSUER,
    aud: AUDIENCE,
    sub: 'svc',
    client_id: 'svc',
    iat: now,
    exp: now + 600,
    jti: createHash('sha256').update(JSON.stringify(claims)).digest('hex').slice(0, 16),
    ...claims,
  })}`;
  return `${input}.${signWith('ES256', asKey.privateKey, input)}`;
}

function signer(name: string, alg: string, type: string, options: object): Signer {
  const pair = generateKeyPairSync(type as 'ec', options as never) as unknown as {
    privateKey: KeyObject;
    publicKey: KeyObject;
  };
  const jwk = pair.publicKey.export({ format: 'jwk' }) as Json;
  return { name, alg, privateKey: pair.privateKey, jwk, token: accessToken({ cnf: { jkt: thumbprint(jwk) } }) };
}

/** What one request presents. */
interface Case {
  s: Signer;
  header: Json;
  claims: Json;
  /** Rewrites the JSON text of the header / claims (duplicate members). */
  headerJson?: (json: string) => string;
  claimsJson?: (json: string) => string;
  /** The signature segment, from the signed input and the real signature. */
  signature?: (input: string, real: string) => string;
  url: string;
  method: string;
  scheme: string;
  token: string;
  /** The DPoP header values, from the proof. */
  dpop: (proof: string) => string[];
  /** The verifier that gets it: `b` shares the replay store with `a`. */
  verifier: 'a' | 'b';
}

type Verdict = 'accept' | 'refuse';
/** One change to a valid proof or request; `o4w` when oauth4webapi judges it otherwise than the RFC. */
interface Change {
  name: string;
  tw: Verdict;
  o4w?: Verdict;
  apply(c: Case, n: number): void;
  /** Runs before the request (another key's proof with the same id). */
  before?: (n: number) => Promise<void>;
}

let signers: Signer[];
let other: Signer;
let unbound: string;
let a: Verifier;
let b: Verifier;

/** The changes of one slot exclude each other (a later one would undo an earlier one). */
function slots(now: number): Record<string, Change[]> {
  const header = (name: string, tw: Verdict, value: Json, o4w?: Verdict): Change => ({
    name,
    tw,
    ...(o4w !== undefined && { o4w }),
    apply: (c) => Object.assign(c.header, value),
  });
  const claim = (name: string, tw: Verdict, value: Json, o4w?: Verdict): Change => ({
    name,
    tw,
    ...(o4w !== undefined && { o4w }),
    apply: (c) => Object.assign(c.claims, value),
  });
  const evil = 'https://evil.example.test/orders';
  return {
    typ: [
      header('typ DPoP+JWT (media types ignore case)', 'accept', { typ: 'DPoP+JWT' }),
      header('typ application/dpop+jwt', 'accept', { typ: 'application/dpop+jwt' }),
      header('typ jwt', 'refuse', { typ: 'jwt' }),
      header('typ at+jwt', 'refuse', { typ: 'at+jwt' }),
      header('typ absent', 'refuse', { typ: undefined }),
      header('typ number', 'refuse', { typ: 7 }),
      header('typ with a space', 'refuse', { typ: 'dpop+jwt ' }),
      header('typ dpop', 'refuse', { typ: 'dpop' }),
    ],
    alg: [
      {
        name: 'alg none, no signature',
        tw: 'refuse',
        apply: (c) => {
          c.header['alg'] = 'none';
          c.signature = () => '';
        },
      },
      {
        name: 'alg HS256 keyed with the public jwk',
        tw: 'refuse',
        apply: (c) => {
          c.header['alg'] = 'HS256';
          c.signature = (input) => createHmac('sha256', JSON.stringify(c.s.jwk)).update(input).digest('base64url');
        },
      },
      {
        name: 'alg of another key type or curve than the jwk',
        tw: 'refuse',
        apply: (c) => {
          c.header['alg'] = c.s.alg === 'ES256' ? 'ES384' : c.s.alg.startsWith('Ed') ? 'RS256' : 'ES256';
        },
      },
      {
        name: 'alg RS256 for a PSS signature (or PS256 for a PKCS#1 one)',
        tw: 'refuse',
        apply: (c) => {
          if (c.s.alg === 'PS256') c.header['alg'] = 'RS256';
          else if (c.s.alg === 'RS256') c.header['alg'] = 'PS256';
          else c.header['alg'] = 'RS256';
        },
      },
      header('alg absent', 'refuse', { alg: undefined }),
      header('alg lower case', 'refuse', { alg: 'es256' }),
    ],
    jwk: [
      {
        name: 'jwk with the private members',
        tw: 'refuse',
        apply: (c) => {
          c.header['jwk'] = c.s.privateKey.export({ format: 'jwk' });
        },
      },
      header('jwk symmetric (oct)', 'refuse', { jwk: { kty: 'oct', k: 'c2VjcmV0LXNlY3JldC1zZWNyZXQ' } }),
      {
        name: 'jwk of another curve or type',
        tw: 'refuse',
        apply: (c) => {
          const jwk = c.s.jwk;
          c.header['jwk'] =
            jwk['kty'] === 'EC'
              ? { ...jwk, crv: jwk['crv'] === 'P-256' ? 'P-384' : 'P-256' }
              : jwk['kty'] === 'OKP'
                ? { ...jwk, crv: 'Ed448' }
                : { ...jwk, kty: 'EC' };
        },
      },
      {
        name: 'jwk with kid, use sig, key_ops, ext',
        tw: 'accept',
        apply: (c) => {
          c.header['jwk'] = { ...c.s.jwk, kid: 'client-key-1', use: 'sig', key_ops: ['verify'], ext: true };
        },
      },
      {
        name: 'jwk for encryption (use enc)',
        tw: 'refuse',
        // RFC 7517 §4.2: an `enc` key is not for signatures; oauth4webapi drops `use` before importing.
        o4w: 'accept',
        apply: (c) => {
          c.header['jwk'] = { ...c.s.jwk, use: 'enc' };
        },
      },
      {
        name: 'jwk whose alg is another algorithm',
        tw: 'refuse',
        apply: (c) => {
          c.header['jwk'] = { ...c.s.jwk, alg: c.s.alg === 'RS256' ? 'PS256' : 'RS256' };
        },
      },
      header('jwk absent', 'refuse', { jwk: undefined }),
      header('jwk a string', 'refuse', { jwk: 'jwk' }),
      header('jwk an array', 'refuse', { jwk: [] }),
      header('jwk empty', 'refuse', { jwk: {} }),
      header('jwk kty constructor', 'refuse', { jwk: { kty: 'constructor', x: 'AAAA' } }),
      header('jwk kty __proto__', 'refuse', { jwk: { kty: '__proto__', x: 'AAAA' } }),
      {
        name: 'jwk of another key than the signature',
        tw: 'refuse',
        apply: (c) => {
          c.header['jwk'] = other.jwk;
        },
      },
      {
        name: 'jwk with a member that is not a string',
        tw: 'refuse',
        apply: (c) => {
          c.header['jwk'] = { ...c.s.jwk, [c.s.jwk['kty'] === 'RSA' ? 'n' : 'x']: 5 };
        },
      },
      {
        name: 'jwk made huge (an 8 KiB kid)',
        // Proofs over 8 KiB are refused unread (docs/server.md); RFC 9449 sets no size.
        tw: 'refuse',
        o4w: 'accept',
        apply: (c) => {
          c.header['jwk'] = { ...c.s.jwk, kid: 'k'.repeat(8192) };
        },
      },
    ],
    htm: [
      claim('htm lower case', 'refuse', { htm: 'get' }),
      claim('htm POST', 'refuse', { htm: 'POST' }),
      claim('htm absent', 'refuse', { htm: undefined }),
      claim('htm an array', 'refuse', { htm: ['GET'] }),
      claim('htm empty', 'refuse', { htm: '' }),
      claim('htm with a space', 'refuse', { htm: ' GET' }),
      {
        name: 'POST request, htm POST',
        tw: 'accept',
        apply: (c) => {
          c.method = 'POST';
          c.claims['htm'] = 'POST';
        },
      },
      {
        name: 'PATCH request, htm PATCH',
        tw: 'accept',
        apply: (c) => {
          c.method = 'PATCH';
          c.claims['htm'] = 'PATCH';
        },
      },
    ],
    htu: [
      claim('htu with the query', 'accept', { htu: `${API}?page=2` }),
      claim('htu with another query', 'accept', { htu: `${API}?page=3` }),
      claim('htu with a fragment', 'accept', { htu: `${API}#top` }),
      claim('htu host in upper case', 'accept', { htu: 'https://API.Example.TEST/orders' }),
      claim('htu scheme in upper case', 'accept', { htu: 'HTTPS://api.example.test/orders' }),
      claim('htu with the default port', 'accept', { htu: 'https://api.example.test:443/orders' }),
      claim('htu with dot segments', 'accept', { htu: 'https://api.example.test/x/../orders' }),
      claim('htu with a ./ segment', 'accept', { htu: 'https://api.example.test/./orders' }),
      // RFC 9449 §4.3 asks for RFC 3986 §6.2.2 normalization; oauth4webapi compares URL.href, which keeps them.
      claim(
        'htu with an unreserved character percent-encoded',
        'accept',
        { htu: 'https://api.example.test/%6Frders' },
        'refuse',
      ),
      {
        name: 'htu percent-encoding in lower case, the request in upper case',
        tw: 'accept',
        o4w: 'refuse',
        apply: (c) => {
          c.url = 'https://api.example.test/orders%2Fx';
          c.claims['htu'] = 'https://api.example.test/orders%2fx';
        },
      },
      claim('htu host percent-encoded', 'accept', { htu: 'https://api%2Eexample.test/orders' }),
      {
        name: 'IDN: request in A-labels, htu in U-labels',
        tw: 'accept',
        apply: (c) => {
          c.url = 'https://xn--bcher-kva.example/orders';
          c.claims['htu'] = 'https://bücher.example/orders';
        },
      },
      {
        name: 'IDN: request in U-labels, htu in A-labels',
        tw: 'accept',
        apply: (c) => {
          c.url = 'https://bücher.example/orders';
          c.claims['htu'] = 'https://xn--bcher-kva.example/orders';
        },
      },
      claim('htu host with a trailing dot', 'refuse', { htu: 'https://api.example.test./orders' }),
      // RFC 9110 §4.2.4: a target URI carries no userinfo.
      claim('htu with userinfo', 'refuse', { htu: 'https://user@api.example.test/orders' }),
      claim('htu with user and password', 'refuse', { htu: 'https://user:pw@api.example.test/orders' }),
      claim('htu http', 'refuse', { htu: 'http://api.example.test/orders' }),
      claim('htu another port', 'refuse', { htu: 'https://api.example.test:8443/orders' }),
      claim('htu http on 443', 'refuse', { htu: 'http://api.example.test:443/orders' }),
      claim('htu wss', 'refuse', { htu: 'wss://api.example.test/orders' }),
      claim('htu with a trailing slash', 'refuse', { htu: `${API}/` }),
      claim('htu path in another case', 'refuse', { htu: 'https://api.example.test/Orders' }),
      claim('htu without the path', 'refuse', { htu: 'https://api.example.test' }),
      claim('htu another host', 'refuse', { htu: evil }),
      claim('htu relative', 'refuse', { htu: '/orders' }),
      claim('htu empty', 'refuse', { htu: '' }),
      claim('htu a number', 'refuse', { htu: 42 }),
      claim('htu an array', 'refuse', { htu: [API] }),
      claim('htu absent', 'refuse', { htu: undefined }),
    ],
    iat: [
      claim('iat 200 s ago', 'accept', { iat: now - 200 }),
      claim('iat 200 s ahead', 'accept', { iat: now + 200 }),
      claim('iat with a fraction', 'accept', { iat: now + 0.5 }),
      claim('iat 400 s ago', 'refuse', { iat: now - 400 }),
      claim('iat 400 s ahead', 'refuse', { iat: now + 400 }),
      claim('iat a string', 'refuse', { iat: String(now) }),
      claim('iat huge', 'refuse', { iat: 1e308 }),
      claim('iat 2^53', 'refuse', { iat: 2 ** 53 }),
      claim('iat negative', 'refuse', { iat: -1 }),
      claim('iat null', 'refuse', { iat: null }),
      claim('iat absent', 'refuse', { iat: undefined }),
    ],
    jti: [
      claim('jti absent', 'refuse', { jti: undefined }),
      claim('jti a number', 'refuse', { jti: 42 }),
      // Proof ids are remembered against replay: an empty one identifies nothing, a long one is bounded.
      claim('jti empty', 'refuse', { jti: '' }, 'accept'),
      {
        name: 'jti of 300 characters',
        tw: 'refuse',
        o4w: 'accept',
        apply: (c, n) => {
          c.claims['jti'] = `${n}-`.padEnd(300, 'x');
        },
      },
      {
        name: 'jti of 256 characters',
        tw: 'accept',
        apply: (c, n) => {
          c.claims['jti'] = `${n}-`.padEnd(256, 'x');
        },
      },
      {
        // RFC 9449 §11.1: the server checks replay; oauth4webapi leaves that to its caller.
        name: 'jti replayed (first seen by the other verifier)',
        tw: 'refuse',
        o4w: 'accept',
        apply: (c) => {
          c.claims['jti'] = `primer-${c.s.name}`;
          c.verifier = 'b';
        },
      },
      {
        name: 'jti another key used (ids are per key)',
        tw: 'accept',
        before: async (n) => {
          const c = baseCase(other, 0, now);
          c.claims['jti'] = `shared-${n}`;
          expect((await a(build(c).request())).ok).toBe(true);
        },
        apply: (c, n) => {
          c.claims['jti'] = `shared-${n}`;
        },
      },
    ],
    ath: [
      claim('ath absent', 'refuse', { ath: undefined }),
      claim('ath of another token', 'refuse', { ath: ath('another-token') }),
      claim('ath a number', 'refuse', { ath: 42 }),
      {
        name: 'ath padded',
        tw: 'refuse',
        apply: (c) => {
          c.claims['ath'] = `${ath(c.token)}=`;
        },
      },
      {
        name: 'ath in standard base64',
        tw: 'refuse',
        apply: (c) => {
          c.claims['ath'] = createHash('sha256').update(c.token).digest('base64');
        },
      },
      {
        name: 'ath in hex',
        tw: 'refuse',
        apply: (c) => {
          c.claims['ath'] = createHash('sha256').update(c.token).digest('hex');
        },
      },
      {
        name: 'ath of the token of another key',
        tw: 'refuse',
        apply: (c) => {
          c.claims['ath'] = ath(other.token);
        },
      },
    ],
    timestamps: [
      claim('exp two minutes ago', 'refuse', { exp: now - 120 }),
      claim('exp a string', 'refuse', { exp: String(now + 60) }),
      claim('exp in a minute', 'accept', { exp: now + 60 }),
      claim('nbf in two minutes', 'refuse', { nbf: now + 120 }),
      claim('nbf a minute ago', 'accept', { nbf: now - 60 }),
    ],
    signature: [
      { name: 'signature empty', tw: 'refuse', apply: (c) => void (c.signature = () => '') },
      { name: 'signature truncated', tw: 'refuse', apply: (c) => void (c.signature = (_i, s) => s.slice(0, -4)) },
      {
        name: 'signature with a bit flipped',
        tw: 'refuse',
        apply: (c) =>
          void (c.signature = (_i, s) => {
            const bytes = Buffer.from(s, 'base64url');
            bytes[5] = (bytes[5] as number) ^ 1;
            return bytes.toString('base64url');
          }),
      },
      {
        name: 'signature by another key',
        tw: 'refuse',
        apply: (c) => void (c.signature = (input) => signWith(other.alg, other.privateKey, input)),
      },
      {
        // RFC 7515 §2 omits the padding; jose's decoder (which src/server/jws.ts matches on purpose) and
        // oauth4webapi's take it, and the signature's bytes are the same: a leniency, not a forgery.
        name: 'signature base64url with = padding',
        tw: 'accept',
        apply: (c) => void (c.signature = (_i, sig) => sig + '='.repeat((4 - (sig.length % 4)) % 4)),
      },
    ],
    extras: [
      header('header kid', 'accept', { kid: 'client-key-1' }),
      header('header jku (ignored: the key is the jwk)', 'accept', { jku: 'https://evil.example.test/jwks' }),
      // RFC 7797: b64 true is the default, understood; oauth4webapi refuses any crit.
      header('crit b64 true', 'accept', { crit: ['b64'], b64: true }, 'refuse'),
      header('crit exp', 'refuse', { crit: ['exp'], exp: 1 }),
      header('crit b64 false', 'refuse', { crit: ['b64'], b64: false }),
    ],
    duplicates: [
      // RFC 7515 §4 / RFC 7159 §4: the last of duplicate members counts, in every parser here.
      {
        name: 'claims: evil htu, then the right one',
        tw: 'accept',
        apply: (c) => void (c.claimsJson = (json) => json.replace(/^\{/, `{"htu":"${evil}",`)),
      },
      {
        name: 'claims: the right htu, then evil',
        tw: 'refuse',
        apply: (c) => void (c.claimsJson = (json) => json.replace(/\}$/, `,"htu":"${evil}"}`)),
      },
      {
        name: 'header: typ jwt, then dpop+jwt',
        tw: 'accept',
        apply: (c) => void (c.headerJson = (json) => json.replace(/^\{/, '{"typ":"jwt",')),
      },
      {
        name: 'header: typ dpop+jwt, then jwt',
        tw: 'refuse',
        apply: (c) => void (c.headerJson = (json) => json.replace(/\}$/, ',"typ":"jwt"}')),
      },
      {
        name: 'header: the jwk, then another key',
        tw: 'refuse',
        apply: (c) => void (c.headerJson = (json) => json.replace(/\}$/, `,"jwk":${JSON.stringify(other.jwk)}}`)),
      },
    ],
    presentation: [
      { name: 'scheme dpop in lower case', tw: 'accept', apply: (c) => void (c.scheme = 'dpop') },
      // RFC 9449 §7.2: a bound token as a bearer token is refused, proof or not.
      { name: 'scheme Bearer with the proof', tw: 'refuse', apply: (c) => void (c.scheme = 'Bearer') },
      {
        name: 'a token not bound to a key, with a proof for it',
        tw: 'refuse',
        apply: (c) => {
          c.token = unbound;
          c.claims['ath'] = ath(unbound);
        },
      },
      {
        name: 'a token bound to another key (cnf.jkt mismatch)',
        tw: 'refuse',
        apply: (c) => {
          c.token = other.token;
          c.claims['ath'] = ath(other.token);
        },
      },
      {
        name: 'a token whose cnf.jkt is the thumbprint in upper case',
        tw: 'refuse',
        apply: (c) => {
          c.token = accessToken({ cnf: { jkt: thumbprint(c.s.jwk).toUpperCase() } });
          c.claims['ath'] = ath(c.token);
        },
      },
      {
        name: 'a token bound to the key and to a certificate',
        tw: 'refuse',
        apply: (c) => {
          c.token = accessToken({ cnf: { jkt: thumbprint(c.s.jwk), 'x5t#S256': 'AAAA' } });
          c.claims['ath'] = ath(c.token);
        },
      },
      { name: 'two DPoP headers', tw: 'refuse', apply: (c) => void (c.dpop = (p) => [p, p]) },
      { name: 'a DPoP header and an empty one', tw: 'refuse', apply: (c) => void (c.dpop = (p) => [p, '']) },
      { name: 'no DPoP header', tw: 'refuse', apply: (c) => void (c.dpop = () => []) },
    ],
  };
}

function build(c: Case): { proof: string; request: () => Request } {
  const strip = (value: Json): Json => Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined));
  let headerJson = JSON.stringify(strip(c.header));
  let claimsJson = JSON.stringify(strip(c.claims));
  if (c.headerJson) headerJson = c.headerJson(headerJson);
  if (c.claimsJson) claimsJson = c.claimsJson(claimsJson);
  const input = `${b64(headerJson)}.${b64(claimsJson)}`;
  const real = signWith(c.s.alg, c.s.privateKey, input);
  const proof = `${input}.${c.signature === undefined ? real : c.signature(input, real)}`;
  const request = () => {
    const headers = new Headers({ authorization: `${c.scheme} ${c.token}` });
    for (const value of c.dpop(proof)) headers.append('dpop', value);
    return new Request(c.url, { method: c.method, headers });
  };
  return { proof, request };
}

async function oauth4webapiAccepts(request: Request): Promise<boolean> {
  try {
    await oauth.validateJwtAccessToken({ issuer: ISSUER, jwks_uri: JWKS_URI }, request, AUDIENCE, {
      [oauth.customFetch]: serveJwks,
    });
    return true;
  } catch {
    return false;
  }
}

function baseCase(s: Signer, n: number, now: number): Case {
  return {
    s,
    header: { typ: 'dpop+jwt', alg: s.alg, jwk: s.jwk },
    claims: { jti: `case-${n}`, htm: 'GET', htu: API, iat: now, ath: ath(s.token) },
    url: `${API}?page=2`,
    method: 'GET',
    scheme: 'DPoP',
    token: s.token,
    dpop: (proof) => [proof],
    verifier: 'a',
  };
}

beforeAll(async () => {
  signers = [
    signer('ES256', 'ES256', 'ec', { namedCurve: 'P-256' }),
    signer('ES384', 'ES384', 'ec', { namedCurve: 'P-384' }),
    signer('RS256', 'RS256', 'rsa', { modulusLength: 2048 }),
    signer('PS256', 'PS256', 'rsa', { modulusLength: 2048 }),
    signer('EdDSA', 'EdDSA', 'ed25519', {}),
    signer('Ed25519', 'Ed25519', 'ed25519', {}),
  ];
  other = signer('other', 'ES256', 'ec', { namedCurve: 'P-256' });
  unbound = accessToken({});
  const replayStore = new MemoryStore();
  const options = {
    issuer: ISSUER,
    audience: AUDIENCE,
    jwksUri: JWKS_URI,
    fetch: serveJwks,
    // oauth4webapi's window (300 s), so that both judges see the same iat rule.
    dpop: { iatWindow: '300s', replayStore },
  } as const;
  a = createVerifier(options);
  b = createVerifier(options);
  // Each key's first proof (`primer-<key>`), accepted by `a`: the ids the replay changes reuse.
  const now = Math.floor(Date.now() / 1000);
  for (const s of signers) {
    const c = baseCase(s, 0, now);
    c.claims['jti'] = `primer-${s.name}`;
    const result = await a(build(c).request());
    expect(result.ok, s.name).toBe(true);
  }
});

describe('DPoP proofs from a seeded corpus, judged by the RFC and by oauth4webapi', () => {
  it('every unchanged proof is accepted by both', async () => {
    const now = Math.floor(Date.now() / 1000);
    for (const [i, s] of signers.entries()) {
      const { request } = build(baseCase(s, 1000 + i, now));
      expect(await oauth4webapiAccepts(request()), s.name).toBe(true);
      expect((await a(request())).ok, s.name).toBe(true);
    }
  });

  it('each change alone, then 500 cases of one to three changes: tokenwarden answers as the RFC says, oauth4webapi too where noted; refusals are 401 with a challenge, never a throw, no token echoed', async () => {
    const now = Math.floor(Date.now() / 1000);
    const table = slots(now);
    const names = Object.keys(table);
    const pick = seeded(9449);
    const cases: { signer: Signer; changes: Change[] }[] = [];
    // Each change once on the ES256 key, then combinations on every key.
    for (const name of names)
      for (const change of table[name] as Change[]) cases.push({ signer: signers[0] as Signer, changes: [change] });
    for (let n = 0; n < 500; n++) {
      const chosen = new Set<string>();
      for (let k = 1 + pick(3); k > 0; k--) chosen.add(names[pick(names.length)] as string);
      const changes = [...chosen].map((slot) => {
        const list = table[slot] as Change[];
        return list[pick(list.length)] as Change;
      });
      cases.push({ signer: signers[pick(signers.length)] as Signer, changes });
    }
    const problems: string[] = [];
    const disagreements = new Set<string>();
    let accepted = 0;
    for (const [n, { signer: s, changes }] of cases.entries()) {
      const c = baseCase(s, 2000 + n, now);
      for (const change of changes) {
        change.apply(c, n);
        await change.before?.(n);
      }
      const { proof, request } = build(c);
      const rfc: Verdict = changes.every((ch) => ch.tw === 'accept') ? 'accept' : 'refuse';
      const second: Verdict = changes.every((ch) => (ch.o4w ?? ch.tw) === 'accept') ? 'accept' : 'refuse';
      const described = `#${n} ${s.name}: ${changes.map((ch) => ch.name).join(' + ')}`;
      const o4w: Verdict = (await oauth4webapiAccepts(request())) ? 'accept' : 'refuse';
      if (o4w !== second) problems.push(`oauth4webapi ${o4w}s, expected ${second}: ${described}`);
      if (o4w !== rfc) for (const ch of changes) if (ch.o4w !== undefined) disagreements.add(ch.name);
      let result;
      try {
        result = await (c.verifier === 'a' ? a : b)(request());
      } catch (err) {
        problems.push(`threw ${String(err)}: ${described}`);
        continue;
      }
      if (result.ok !== (rfc === 'accept')) {
        problems.push(
          `tokenwarden ${result.ok ? 'accepted' : `refused (${result.failure.description})`}: ${described}`,
        );
      }
      if (result.ok) {
        accepted += 1;
        continue;
      }
      const { failure } = result;
      const answer = failureResponse(failure);
      const text = JSON.stringify(answer);
      const www = challenge(failure) ?? '';
      const asBearer = c.scheme === 'Bearer';
      if (
        answer.status !== 401 ||
        !(asBearer
          ? failure.error === 'invalid_token' && www.startsWith('Bearer ')
          : ['invalid_dpop_proof', 'invalid_token'].includes(failure.error) && www.startsWith('DPoP ')) ||
        text.includes(c.token) ||
        text.includes(proof)
      ) {
        problems.push(`answer ${answer.status} ${www}: ${described}`);
      }
    }
    expect(problems).toEqual([]);
    // The corpus is not all refusals: a share of it is valid by the RFC, and accepted.
    expect(accepted).toBeGreaterThan(50);
    // Where oauth4webapi departs from the RFC, the corpus shows it (each noted `o4w` change).
    expect([...disagreements].sort()).toEqual(
      [
        'crit b64 true',
        'htu percent-encoding in lower case, the request in upper case',
        'htu with an unreserved character percent-encoded',
        'jti empty',
        'jti of 300 characters',
        'jti replayed (first seen by the other verifier)',
        'jwk for encryption (use enc)',
        'jwk made huge (an 8 KiB kid)',
      ].sort(),
    );
  });
});

/** An RSA key pair whose public exponent is `bits` long (Node makes only small ones): from a real key's primes. */
function rsaWithExponent(bits: number): { privateKey: KeyObject; jwk: Json } {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const j = privateKey.export({ format: 'jwk' }) as Record<string, string>;
  const big = (v: string) => BigInt(`0x${Buffer.from(v, 'base64url').toString('hex')}`);
  const enc = (v: bigint) => {
    let hex = v.toString(16);
    if (hex.length % 2) hex = `0${hex}`;
    return Buffer.from(hex, 'hex').toString('base64url');
  };
  const gcd = (x: bigint, y: bigint): bigint => (y === 0n ? x : gcd(y, x % y));
  const inverse = (x: bigint, m: bigint): bigint => {
    let [r0, r1, s0, s1] = [m, x % m, 0n, 1n];
    while (r1 !== 0n) {
      const q = r0 / r1;
      [r0, r1, s0, s1] = [r1, r0 - q * r1, s1, s0 - q * s1];
    }
    return ((s0 % m) + m) % m;
  };
  const [p, q] = [big(j['p'] as string), big(j['q'] as string)];
  const lambda = ((p - 1n) * (q - 1n)) / gcd(p - 1n, q - 1n);
  let e = (1n << BigInt(bits - 1)) | 1n;
  while (gcd(e, lambda) !== 1n) e += 2n;
  const d = inverse(e, lambda);
  const jwk = { kty: 'RSA', n: j['n'] as string, e: enc(e) };
  const key = createPrivateKey({
    format: 'jwk',
    key: {
      ...jwk,
      d: enc(d),
      p: j['p'],
      q: j['q'],
      dp: enc(d % (p - 1n)),
      dq: enc(d % (q - 1n)),
      qi: enc(inverse(q, p)),
    } as never,
  });
  return { privateKey: key, jwk };
}

describe('faults found', () => {
  it('a proof key whose kty names a member of Object.prototype is refused, not thrown', async () => {
    // `THUMBPRINT_MEMBERS[kty]` found `Object.prototype.constructor` and iterated it: verify() rejected.
    const now = Math.floor(Date.now() / 1000);
    for (const kty of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
      const c = baseCase(signers[0] as Signer, 0, now);
      c.header['jwk'] = { ...c.s.jwk, kty };
      c.claims['jti'] = `kty-${kty}`;
      expect(await a(build(c).request()), kty).toEqual({
        ok: false,
        failure: expect.objectContaining({
          error: 'invalid_dpop_proof',
          status: 401,
          description: 'DPoP proof key invalid',
        }),
      });
    }
  });

  it('an RSA proof key with a public exponent as long as its modulus is refused before its signature is checked', async () => {
    // Each check with such a key costs a private-key operation (measured: ~2 ms for 2048 bits, ~6 ms for 3072,
    // against ~0.1 ms), for anyone who sends a proof with any token: a proof is checked before its token.
    const now = Math.floor(Date.now() / 1000);
    for (const bits of [33, 2040]) {
      const { privateKey, jwk } = rsaWithExponent(bits);
      const s: Signer = {
        name: `RS256-e${bits}`,
        alg: 'RS256',
        privateKey,
        jwk,
        token: accessToken({ cnf: { jkt: thumbprint(jwk) } }),
      };
      const { request } = build(baseCase(s, bits, now));
      // A valid proof by the RFC's letter (oauth4webapi accepts it)…
      expect(await oauth4webapiAccepts(request()), `e of ${bits} bits`).toBe(true);
      // …that tokenwarden refuses, as a proof key that is not one a client makes.
      const result = await a(request());
      expect(result, `e of ${bits} bits`).toEqual({
        ok: false,
        failure: expect.objectContaining({
          error: 'invalid_dpop_proof',
          status: 401,
          description: 'DPoP proof key invalid',
        }),
      });
    }
    // 65537 in four octets (leading zero) still passes.
    const s = signers.find((x) => x.name === 'RS256') as Signer;
    const padded = { ...s.jwk, e: 'AAEAAQ' };
    const c = baseCase({ ...s, jwk: padded, token: accessToken({ cnf: { jkt: thumbprint(padded) } }) }, 1, now);
    expect((await a(build(c).request())).ok).toBe(true);
  });

  it('an htu with userinfo names no request this server gets (RFC 9110 §4.2.4): refused', async () => {
    const now = Math.floor(Date.now() / 1000);
    for (const htu of ['https://user@api.example.test/orders', 'https://:pw@api.example.test/orders']) {
      const c = baseCase(signers[0] as Signer, 0, now);
      c.claims['jti'] = `userinfo-${htu}`;
      c.claims['htu'] = htu;
      expect(await a(build(c).request()), htu).toEqual({
        ok: false,
        failure: expect.objectContaining({
          error: 'invalid_dpop_proof',
          status: 401,
          description: 'DPoP proof htu does not match the request URL',
        }),
      });
    }
  });
});

describe('server nonces (RFC 9449 §9), judged by the RFC (oauth4webapi has no nonces)', () => {
  it('only the current or the previous nonce, exactly; a nonce never rescues an invalid proof', async () => {
    const verify = createVerifier({
      issuer: ISSUER,
      audience: AUDIENCE,
      jwksUri: JWKS_URI,
      fetch: serveJwks,
      dpop: { nonce: () => ({ current: 'n-2', previous: 'n-1' }) },
    });
    const now = Math.floor(Date.now() / 1000);
    const s = signers[0] as Signer;
    const cases: [string, Json, 'accept' | 'stale' | 'use_dpop_nonce' | 'invalid_dpop_proof'][] = [
      ['the current nonce', { nonce: 'n-2' }, 'accept'],
      ['the previous nonce', { nonce: 'n-1' }, 'stale'],
      ['no nonce', {}, 'use_dpop_nonce'],
      ['an older nonce', { nonce: 'n-0' }, 'use_dpop_nonce'],
      ['the nonce in another case', { nonce: 'N-2' }, 'use_dpop_nonce'],
      ['the nonce with a space', { nonce: ' n-2' }, 'use_dpop_nonce'],
      ['an empty nonce', { nonce: '' }, 'use_dpop_nonce'],
      ['a number', { nonce: 2 }, 'use_dpop_nonce'],
      ['the nonce in an array', { nonce: ['n-2'] }, 'use_dpop_nonce'],
      ['the nonce, with a proof for another URL', { nonce: 'n-2', htu: `${API}/x` }, 'invalid_dpop_proof'],
    ];
    for (const [n, [name, claims, expected]] of cases.entries()) {
      const c = baseCase(s, 5000 + n, now);
      Object.assign(c.claims, claims);
      const result = await verify(build(c).request());
      if (expected === 'accept' || expected === 'stale') {
        expect(result, name).toMatchObject({ ok: true });
        expect(result.ok && result.headers, name).toEqual(expected === 'stale' ? { 'dpop-nonce': 'n-2' } : undefined);
        continue;
      }
      expect(result, name).toEqual({ ok: false, failure: expect.objectContaining({ error: expected, status: 401 }) });
      if (result.ok) continue;
      const answer = failureResponse(result.failure);
      expect(answer.headers['www-authenticate'], name).toMatch(new RegExp(`^DPoP realm="api", error="${expected}"`));
      expect(answer.headers['dpop-nonce'], name).toBe(expected === 'use_dpop_nonce' ? 'n-2' : undefined);
    }
  });

  it('a previous nonce that is no nonce (empty) is a configuration error, not a pass for "nonce": ""', async () => {
    const reported: string[] = [];
    const verify = createVerifier({
      issuer: ISSUER,
      audience: AUDIENCE,
      jwksUri: JWKS_URI,
      fetch: serveJwks,
      // A rotation that starts with no previous nonce and writes '' for it.
      dpop: { nonce: () => ({ current: 'n-1', previous: '' }) },
      onError: (err) => reported.push(err.code),
    });
    const c = baseCase(signers[0] as Signer, 6000, Math.floor(Date.now() / 1000));
    c.claims['nonce'] = '';
    expect(await verify(build(c).request())).toMatchObject({
      ok: false,
      failure: { error: 'temporarily_unavailable', status: 503 },
    });
    expect(reported).toEqual(['ERR_CONFIG']);
  });
});

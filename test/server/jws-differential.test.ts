/**
 * The differential test of issue 15: tokenwarden verifies signatures with node:crypto (src/server/jws.ts)
 * where it used jose's jwtVerify. On a corpus of valid and hostile tokens, verify() must refuse every token
 * jose refuses, and accept exactly the tokens jose accepts — except those that tokenwarden's own, documented
 * rules refuse on top (RFC 6750 token syntax, NumericDates in range, explicit typing). A token without
 * `kid` that several keys fit is tried against each, by tokenwarden as it was with jose, and here too.
 */
import { type KeyObject, generateKeyPairSync, sign as cryptoSign } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { type JWK, createLocalJWKSet, errors, exportJWK, jwtVerify } from 'jose';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { createVerifier } from '../../src/server/index.js';
import { numericDatesValid } from '../../src/server/provider.js';
import { signatureLanes } from '../../src/server/signature-workers.js';
import { seeded } from '../support/seeded.js';

const ISSUER = 'https://as.example.test';
const AUDIENCE = 'https://api.example.test';
const JWKS_URI = `${ISSUER}/jwks`;
const ALGS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'];

type Signer = { kid: string; alg: string; privateKey: KeyObject };
const b64 = (value: unknown): string =>
  Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** Signs `header.payload` (segments given as text) with node:crypto, whatever the header says. */
function signInput(input: string, signer: Signer, alg = signer.alg): string {
  const hash = alg.startsWith('Ed') ? null : `sha${alg.slice(2)}`;
  const key = alg.startsWith('PS')
    ? { key: signer.privateKey, padding: 6, saltLength: Number(alg.slice(2)) / 8 }
    : alg.startsWith('ES')
      ? { key: signer.privateKey, dsaEncoding: 'ieee-p1363' as const }
      : signer.privateKey;
  return cryptoSign(hash, Buffer.from(input), key).toString('base64url');
}

function jwt(signer: Signer, claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}): string {
  const now = Math.floor(Date.now() / 1000);
  const input = `${b64({ alg: signer.alg, typ: 'at+jwt', kid: signer.kid, ...header })}.${b64({
    iss: ISSUER,
    aud: AUDIENCE,
    sub: 'alice',
    iat: now,
    exp: now + 300,
    ...claims,
  })}`;
  return `${input}.${signInput(input, signer)}`;
}

const signers = new Map<string, Signer>();
const keys: JWK[] = [];
const corpus: [string, string][] = [];

beforeAll(async () => {
  const pairs: [string, string, object][] = [
    ['RS', 'rsa', { modulusLength: 2048 }],
    ['PS', 'rsa', { modulusLength: 2048 }],
    ['ES256', 'ec', { namedCurve: 'P-256' }],
    ['ES384', 'ec', { namedCurve: 'P-384' }],
    ['ES512', 'ec', { namedCurve: 'P-521' }],
    ['Ed', 'ed25519', {}],
    ['small', 'rsa', { modulusLength: 1024 }],
  ];
  for (const [name, type, options] of pairs) {
    const pair = generateKeyPairSync(type as 'rsa', options as never) as unknown as {
      privateKey: KeyObject;
      publicKey: KeyObject;
    };
    const { privateKey, publicKey } = pair;
    const kid = `k-${name}`;
    keys.push({ ...(await exportJWK(publicKey)), kid, use: 'sig' });
    for (const alg of ALGS.filter((a) => (name.length === 2 ? a.startsWith(name) : a === name))) {
      signers.set(alg, { kid, alg, privateKey });
    }
    if (name === 'small') signers.set('RS256-small', { kid, alg: 'RS256', privateKey });
  }
  // A key for "wrong alg for the key" and kid-less tokens: an RSA key with no kid (one of several RSA keys).
  const rs = signers.get('RS256') as Signer;
  const es = signers.get('ES256') as Signer;
  const ed = signers.get('EdDSA') as Signer;
  const now = Math.floor(Date.now() / 1000);
  const add = (name: string, token: string) => corpus.push([name, token]);

  for (const alg of ALGS) add(`valid ${alg}`, jwt(signers.get(alg) as Signer));
  add('valid, RSA key under 2048 bits', jwt(signers.get('RS256-small') as Signer));
  const good = jwt(rs);
  const [h, p, s] = good.split('.') as [string, string, string];
  // Signatures.
  add('wrong signature', `${h}.${p}.${s.slice(0, -2)}${s.endsWith('AA') ? 'BA' : 'AA'}`);
  add('signature of another token', `${h}.${b64({ iss: ISSUER, aud: AUDIENCE, sub: 'mallory', exp: now + 300 })}.${s}`);
  add('empty signature', `${h}.${p}.`);
  add(
    'signature by another key',
    (() => {
      const input = `${h}.${p}`;
      return `${input}.${signInput(input, signers.get('PS256') as Signer, 'RS256')}`;
    })(),
  );
  add(
    'PS256 with PKCS#1 v1.5 padding',
    (() => {
      const ps = signers.get('PS256') as Signer;
      const input = `${b64({ alg: 'PS256', kid: ps.kid })}.${p}`;
      return `${input}.${signInput(input, ps, 'RS256')}`;
    })(),
  );
  add(
    'ES256 signature in DER',
    (() => {
      const input = `${b64({ alg: 'ES256', kid: es.kid })}.${p}`;
      return `${input}.${cryptoSign('sha256', Buffer.from(input), es.privateKey).toString('base64url')}`;
    })(),
  );
  add(
    'ES256 signature one byte short',
    (() => {
      const t = jwt(es);
      return t.slice(0, -3);
    })(),
  );
  add('EdDSA signature truncated', jwt(ed).slice(0, -6));
  // Algorithms.
  add('alg none', `${b64({ alg: 'none', kid: rs.kid })}.${p}.`);
  add('alg HS256 (public key as secret)', `${b64({ alg: 'HS256', kid: rs.kid })}.${p}.${s}`);
  add(
    'alg RS256 naming an EC key',
    (() => {
      const input = `${b64({ alg: 'RS256', kid: es.kid })}.${p}`;
      return `${input}.${signInput(input, es, 'ES256')}`;
    })(),
  );
  add(
    'alg ES384 with a P-256 key',
    (() => {
      const input = `${b64({ alg: 'ES384', kid: es.kid })}.${p}`;
      return `${input}.${signInput(input, es, 'ES256')}`;
    })(),
  );
  add('alg ML-DSA-44', `${b64({ alg: 'ML-DSA-44', kid: rs.kid })}.${p}.${s}`);
  add('alg missing', `${b64({ kid: rs.kid })}.${p}.${s}`);
  add('alg empty', `${b64({ alg: '', kid: rs.kid })}.${p}.${s}`);
  add('alg not a string', `${b64({ alg: ['RS256'], kid: rs.kid })}.${p}.${s}`);
  // Keys.
  add('unknown kid', jwt(rs, {}, { kid: 'nobody' }));
  add('kid a number', jwt(rs, {}, { kid: 7 }));
  add('no kid, several RSA keys', jwt(rs, {}, { kid: undefined }));
  add('no kid, one EC P-384 key', jwt(signers.get('ES384') as Signer, {}, { kid: undefined }));
  // crit and b64.
  add('crit b64 with b64 true', jwt(rs, {}, { crit: ['b64'], b64: true }));
  add('crit b64 with b64 false', jwt(rs, {}, { crit: ['b64'], b64: false }));
  add('b64 false without crit (ignored)', jwt(rs, {}, { b64: false }));
  add('crit b64 without b64', jwt(rs, {}, { crit: ['b64'] }));
  add('crit b64 with b64 a string', jwt(rs, {}, { crit: ['b64'], b64: 'false' }));
  add('crit exp (not understood)', jwt(rs, {}, { crit: ['exp'], exp: now + 300 }));
  add('crit empty', jwt(rs, {}, { crit: [] }));
  add('crit not an array', jwt(rs, {}, { crit: 'b64', b64: true }));
  add('crit with an empty name', jwt(rs, {}, { crit: [''] }));
  add('crit twice b64', jwt(rs, {}, { crit: ['b64', 'b64'], b64: true }));
  add(
    'unencoded payload, signed as such',
    (() => {
      const header = b64({ alg: 'RS256', kid: rs.kid, crit: ['b64'], b64: false });
      const payload = JSON.stringify({ iss: ISSUER, aud: AUDIENCE, exp: now + 300 });
      const input = `${header}.${payload}`;
      return `${input}.${signInput(input, rs)}`;
    })(),
  );
  // Encodings.
  add('two segments', `${h}.${p}`);
  add('four segments', `${good}.${s}`);
  add('trailing dot', `${good}.`);
  add('trailing data in the signature', `${good}A`);
  add('padding on the signature', `${good}==`);
  add('padding on the header', `${h}=.${p}.${s}`);
  add(
    'non-canonical trailing bits in the signature',
    `${h}.${p}.${s.slice(0, -1)}${String.fromCharCode(s.charCodeAt(s.length - 1) ^ 1)}`,
  );
  add('+ and / in the signature', `${h}.${p}.${s.replace(/-/g, '+').replace(/_/g, '/')}`);
  add('space in the payload segment', `${h}.${p.slice(0, 10)} ${p.slice(10)}.${s}`);
  add('empty header', `.${p}.${s}`);
  add('header not JSON', `${b64('{alg:RS256')}.${p}.${s}`);
  add('header an array', `${b64([{ alg: 'RS256' }])}.${p}.${s}`);
  add('header null', `${b64('null')}.${p}.${s}`);
  add(
    'header with a BOM, signed',
    (() => {
      const input = `${Buffer.from(`\uFEFF${JSON.stringify({ alg: 'RS256', kid: rs.kid })}`).toString('base64url')}.${p}`;
      return `${input}.${signInput(input, rs)}`;
    })(),
  );
  add(
    'header invalid UTF-8, signed',
    (() => {
      const input = `${Buffer.concat([Buffer.from('{"alg":"RS256","kid":"k-RS","x":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]).toString('base64url')}.${p}`;
      return `${input}.${signInput(input, rs)}`;
    })(),
  );
  add(
    'payload invalid UTF-8, signed',
    (() => {
      const input = `${h}.${Buffer.from([0x7b, 0xff, 0x7d]).toString('base64url')}`;
      return `${input}.${signInput(input, rs)}`;
    })(),
  );
  add(
    'payload an array, signed',
    (() => {
      const input = `${h}.${b64([1])}`;
      return `${input}.${signInput(input, rs)}`;
    })(),
  );
  add(
    'payload not JSON, signed',
    (() => {
      const input = `${h}.${b64('exp=1')}`;
      return `${input}.${signInput(input, rs)}`;
    })(),
  );
  add('payload with non-ASCII characters', `${h}.${p}é.${s}`);
  add(
    'payload length 1 mod 4, signed',
    (() => {
      const input = `${h}.${p.length % 4 === 1 ? p : `${p}A`.slice(0, p.length - (p.length % 4) + 1)}`;
      return `${input}.${signInput(input, rs)}`;
    })(),
  );
  // Claims.
  add('expired', jwt(rs, { exp: now - 10 }));
  add('not yet valid', jwt(rs, { nbf: now + 600 }));
  add('no exp', jwt(rs, { exp: undefined }));
  add('exp a string', jwt(rs, { exp: String(now + 300) }));
  add(
    'exp 1e400',
    (() => {
      const input = `${h}.${b64(`{"iss":"${ISSUER}","aud":"${AUDIENCE}","exp":1e400}`)}`;
      return `${input}.${signInput(input, rs)}`;
    })(),
  );
  add('iat a string', jwt(rs, { iat: 'now' }));
  add('wrong audience', jwt(rs, { aud: 'https://other.example.test' }));
  add('audience in a list', jwt(rs, { aud: ['https://other.example.test', AUDIENCE] }));
  add('audience a number', jwt(rs, { aud: 1 }));
  add('wrong issuer', jwt(rs, { iss: 'https://evil.example.test' }));
  add('no issuer', jwt(rs, { iss: undefined }));
  add('typ JWT', jwt(rs, {}, { typ: 'JWT' }));
  add('typ application/at+jwt', jwt(rs, {}, { typ: 'application/at+jwt' }));
  add('typ id_token+jwt', jwt(rs, {}, { typ: 'id_token+jwt' }));
  add('typ a number', jwt(rs, {}, { typ: 1 }));
  add(
    '__proto__ in the header',
    (() => {
      const input = `${b64(`{"alg":"RS256","kid":"${rs.kid}","__proto__":{"alg":"none"}}`)}.${p}`;
      return `${input}.${signInput(input, rs)}`;
    })(),
  );
});

/** A verifier of the corpus' keys (served by a fetch of its own), without a cache: every call checks. */
function corpusVerifier() {
  const jwks = JSON.stringify({ keys });
  return createVerifier({
    issuer: ISSUER,
    audience: AUDIENCE,
    jwksUri: JWKS_URI,
    cache: false,
    fetch: async () => new Response(jwks, { status: 200, headers: { 'content-type': 'application/json' } }),
  });
}

/**
 * How jose judges `token` (with the same options and tokenwarden's documented rules on top) against how
 * tokenwarden does: the mismatches, none when they agree.
 */
async function judge(
  verify: ReturnType<typeof corpusVerifier>,
  local: ReturnType<typeof createLocalJWKSet>,
  name: string,
  token: string,
): Promise<{ mismatches: string[]; accepted: boolean }> {
  let joseAccepts = false;
  let joseRefusal: 401 | 503 = 401;
  let claims: Record<string, unknown> = {};
  let typ: unknown;
  const options = { issuer: ISSUER, audience: AUDIENCE, algorithms: ALGS, requiredClaims: ['exp'] };
  try {
    let result;
    try {
      result = await jwtVerify(token, local, options);
    } catch (err) {
      // No kid and several keys that fit: tokenwarden tries each (as it did with jose), so does this.
      if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err;
      for await (const key of err) {
        try {
          result = await jwtVerify(token, key, options);
          break;
        } catch (inner) {
          if ((inner as { code?: unknown }).code !== 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED') throw inner;
        }
      }
      if (result === undefined) throw err;
    }
    joseAccepts = true;
    claims = result.payload;
    typ = result.protectedHeader.typ;
  } catch (err) {
    // jose's own errors judge the token (401); anything else (a key it cannot use) is not a judgement.
    const code = (err as { code?: unknown }).code;
    joseRefusal = typeof code === 'string' && code.startsWith('ERR_J') ? 401 : 503;
  }
  // tokenwarden's documented rules on top of jose's.
  const syntax = /^[A-Za-z0-9\-._~+/]+=*$/.test(token);
  const typed =
    typ === undefined ||
    (typeof typ === 'string' && ['jwt', 'at+jwt', 'application/jwt', 'application/at+jwt'].includes(typ.toLowerCase()));
  const expected = joseAccepts && syntax && numericDatesValid(claims) && typed;
  const result = await verify(token);
  const mismatches: string[] = [];
  if (result.ok !== expected) {
    mismatches.push(
      `${name}: jose ${joseAccepts ? 'accepts' : 'refuses'}, tokenwarden ${result.ok ? 'accepts' : 'refuses'}`,
    );
  }
  if (!result.ok && !joseAccepts && syntax && result.failure.status !== joseRefusal) {
    mismatches.push(`${name}: refused with ${result.failure.status}, jose's refusal means ${joseRefusal}`);
  }
  return { mismatches, accepted: result.ok };
}

describe('tokenwarden against jose, token by token', () => {
  it('refuses every token jose refuses, accepts exactly those jose accepts (besides its own documented rules)', async () => {
    const verify = corpusVerifier();
    const local = createLocalJWKSet({ keys });
    const mismatches: string[] = [];
    let accepted = 0;
    for (const [name, token] of corpus) {
      const judged = await judge(verify, local, name, token);
      mismatches.push(...judged.mismatches);
      if (judged.accepted) accepted += 1;
    }
    expect(mismatches).toEqual([]);
    // The corpus has both kinds: every algorithm's valid token is accepted, and the hostile ones are not.
    expect(accepted).toBeGreaterThanOrEqual(ALGS.length);
    expect(corpus.length - accepted).toBeGreaterThan(50);
  });

  it('1 000 validly signed tokens with claims and headers made at random from hostile parts: the same answers as jose', async () => {
    const pick = seeded(15_000);
    const now = Math.floor(Date.now() / 1000);
    const VALUES: unknown[] = [
      null,
      true,
      0,
      -1,
      1.5,
      now - 600,
      now - 1,
      now + 1,
      now + 600,
      now + 10 ** 12,
      1e308,
      -1e308,
      String(now + 600),
      '',
      '\ud800',
      ISSUER,
      `${ISSUER}/`,
      ISSUER.toUpperCase(),
      AUDIENCE,
      [AUDIENCE],
      ['other', AUDIENCE],
      ['other'],
      [],
      [AUDIENCE, 1],
      {},
      { sub: 'x' },
      'x'.repeat(2000),
    ];
    const CLAIMS = ['iss', 'aud', 'exp', 'nbf', 'iat', 'sub', 'jti', 'scope', 'client_id'];
    const HEADERS: Record<string, unknown>[] = [
      {},
      {},
      { typ: 'JWT' },
      { typ: 'at+JWT' },
      { typ: 'application/at+jwt' },
      { typ: 'id+jwt' },
      { typ: 7 },
      { crit: ['exp'] },
      { crit: [] },
      { b64: false },
      { b64: true, crit: ['b64'] },
      { kid: 'unknown' },
      { jku: 'https://attacker.example/jwks' },
      { x5u: 'https://attacker.example/cert' },
    ];
    const verify = corpusVerifier();
    const local = createLocalJWKSet({ keys });
    const mismatches: string[] = [];
    let accepted = 0;
    for (let n = 0; n < 1000; n++) {
      const claims: Record<string, unknown> = {};
      for (let k = 1 + pick(3); k > 0; k--) claims[CLAIMS[pick(CLAIMS.length)] as string] = VALUES[pick(VALUES.length)];
      if (pick(8) === 0) delete claims['exp'];
      const header = HEADERS[pick(HEADERS.length)] as Record<string, unknown>;
      const signer = signers.get(ALGS[pick(ALGS.length)] as string) as Signer;
      const token = jwt(signer, claims, header);
      const judged = await judge(
        verify,
        local,
        `case ${n}: ${JSON.stringify({ header, claims }).slice(0, 200)}`,
        token,
      );
      mismatches.push(...judged.mismatches);
      if (judged.accepted) accepted += 1;
    }
    expect(mismatches).toEqual([]);
    expect(accepted).toBeGreaterThan(100);
    expect(accepted).toBeLessThan(900);
  });
});

describe('one at a time and in a burst', () => {
  it('gives every token the same answer alone (this thread) and in a burst (the thread pool, then worker threads)', async () => {
    const alone = corpusVerifier();
    const answers: string[] = [];
    for (const [, token] of corpus) {
      const result = await alone(token);
      answers.push(result.ok ? 'ok' : `${result.failure.status} ${result.failure.error}`);
    }
    const burst = corpusVerifier();
    await burst.ready();
    // Every token twice, all started in one tick: a share of them on this thread, the others elsewhere.
    const tokens = [...corpus, ...corpus].map(([, token]) => token);
    const inBurst = async (): Promise<string[]> =>
      (await Promise.all(tokens.map((token) => burst(token)))).map((r) =>
        r.ok ? 'ok' : `${r.failure.status} ${r.failure.error}`,
      );
    // The first burst starts the worker threads; the thread pool serves it.
    expect(await inBurst()).toEqual([...answers, ...answers]);
    expect(answers.filter((a) => a === 'ok').length).toBeGreaterThanOrEqual(ALGS.length);
    if (availableParallelism() === 1) return; // one core: every check on this thread, no worker
    await vi.waitFor(() => expect(signatureLanes()).toBeDefined(), { timeout: 10_000 });
    expect(await inBurst()).toEqual([...answers, ...answers]);
  });
});

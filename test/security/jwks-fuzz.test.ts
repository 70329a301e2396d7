/**
 * 600 JWKS documents made at random (a fixed seed) from hostile parts — keys of every `kty`, wrong curves and
 * sizes, members that are not base64url or not strings, duplicate `kid`s, encryption keys, `x5c` garbage,
 * documents that are not a key set at all — each served to a fresh verifier, which then checks a token signed
 * by the real key and one signed by an attacker's key under the real key's `kid`. The promise: `verify()` never
 * throws; the attacker's token is never accepted; every refusal is 401 or 503; and the real key, alone in a
 * well-formed set, verifies its token (so the search is not refusing everything).
 */
import { generateKeyPairSync } from 'node:crypto';
import { type JWK, SignJWT, exportJWK } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { createVerifier } from '../../src/server/index.js';
import { seeded } from '../support/seeded.js';

const ISSUER = 'https://as.example.test';
const AUDIENCE = 'https://api.example.test';
const CASES = 600;

let real: JWK;
let realToken: string;
let forgedToken: string;
let unnamedForged: string;

beforeAll(async () => {
  const mine = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const theirs = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  real = { ...(await exportJWK(mine.publicKey)), kid: 'real', alg: 'ES256', use: 'sig' };
  const sign = (key: typeof mine.privateKey, kid?: string) =>
    new SignJWT({ sub: 'alice' })
      .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', ...(kid !== undefined && { kid }) })
      .setIssuer(ISSUER)
      .setAudience(AUDIENCE)
      .setIssuedAt()
      .setExpirationTime('10m')
      .sign(key);
  realToken = await sign(mine.privateKey, 'real');
  forgedToken = await sign(theirs.privateKey, 'real');
  unnamedForged = await sign(theirs.privateKey);
});

describe('JWKS documents made at random from hostile parts', () => {
  it(`${CASES} key sets: never a throw, never an attacker's token, refusals 401 or 503`, async () => {
    const pick = seeded(7517);
    const choose = <T>(list: readonly T[]): T => list[pick(list.length)] as T;
    const junkValue = (): unknown =>
      choose([
        null,
        42,
        '',
        'AQAB',
        '!!not-base64url!!',
        'A'.repeat(5000),
        real.x,
        real.y,
        [],
        {},
        ['MIIB'],
        '\ud800',
        true,
      ]);
    const junkKey = (): unknown => {
      const key: Record<string, unknown> = {
        kty: choose(['RSA', 'EC', 'OKP', 'oct', 'rsa', '', 42, undefined]),
        kid: choose(['real', 'real', 'other', '', 7, undefined]),
      };
      for (const name of ['crv', 'n', 'e', 'x', 'y', 'k', 'alg', 'use', 'key_ops', 'x5c', 'd']) {
        if (pick(3) === 0) key[name] = junkValue();
      }
      if (pick(4) === 0) key['crv'] = choose(['P-256', 'P-384', 'P-521', 'secp256k1', 'Ed25519', 'X25519']);
      if (pick(4) === 0) key['alg'] = choose(['ES256', 'RS256', 'HS256', 'none', 'ECDH-ES']);
      if (pick(5) === 0) key['use'] = 'enc';
      if (pick(6) === 0) Object.assign(key, { ...real, [choose(['x', 'y', 'crv', 'kty'])]: junkValue() }); // near-real
      return key;
    };
    const document = (): { body: string; realAlone: boolean } => {
      const shape = pick(12);
      if (shape === 0)
        return { body: choose(['null', '[]', '"keys"', '{"keys":{}}', '{"keys":null}', '{'])!, realAlone: false };
      const keys: unknown[] = [];
      const withReal = pick(4) !== 0;
      for (let n = pick(5); n > 0; n--) keys.push(pick(6) === 0 ? junkValue() : junkKey());
      if (withReal) keys.splice(pick(keys.length + 1), 0, real);
      return { body: JSON.stringify({ keys }), realAlone: withReal && keys.length === 1 };
    };

    const problems: string[] = [];
    let realAccepted = 0;
    let realAloneCases = 0;
    for (let n = 0; n < CASES; n++) {
      const { body, realAlone } = document();
      const verify = createVerifier({
        issuer: ISSUER,
        audience: AUDIENCE,
        jwksUri: `${ISSUER}/jwks`,
        cache: false,
        fetch: async () => new Response(body, { status: 200, headers: { 'content-type': 'application/json' } }),
      });
      const described = `case ${n}: ${body.slice(0, 200)}`;
      for (const [name, token] of [
        ['forged', forgedToken],
        ['forged, no kid', unnamedForged],
        ['real', realToken],
      ] as const) {
        let result;
        try {
          result = await verify(token);
        } catch (err) {
          problems.push(`${name} threw ${String(err)}: ${described}`);
          continue;
        }
        if (result.ok) {
          if (name !== 'real') problems.push(`${name} ACCEPTED: ${described}`);
          else realAccepted += 1;
        } else if (![401, 503].includes(result.failure.status)) {
          problems.push(`${name} refused with ${result.failure.status}: ${described}`);
        } else if (name === 'real' && realAlone) {
          problems.push(`the real key alone did not verify its token (${result.failure.description}): ${described}`);
        }
      }
      if (realAlone) realAloneCases += 1;
    }
    expect(problems).toEqual([]);
    expect(realAloneCases).toBeGreaterThan(20);
    expect(realAccepted).toBeGreaterThan(CASES / 4);
  }, 120_000);
});

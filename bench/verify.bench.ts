/**
 * Issue 15: unique tokens (every verify() a cache miss), RS256 and ES256, one at a time and 16 in flight,
 * against raw jose `jwtVerify` (remote JWKS, warm), the floor — the signature alone, checked with a cached
 * `KeyObject` through `node:crypto` synchronously — and the peers: fast-jwt and jsonwebtoken, each with
 * jwks-rsa for the keys (as `@fastify/jwt` and `express-jwt` use them). Every contender verifies the same
 * tokens, in alternating slices of one run.
 */
import { createPublicKey, verify as cryptoVerify } from 'node:crypto';
import { createVerifier as fastJwtVerifier } from 'fast-jwt';
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import jsonwebtoken from 'jsonwebtoken';
import { JwksClient } from 'jwks-rsa';
import { createVerifier } from '../dist/server/index.js';
import { createTestAuthorizationServer } from '../dist/testing/index.js';
import type { BenchRow } from './run.js';
import { alternateRounds, medianRatio, percentile, si } from './util.js';

const TOKENS = 3000;
const IN_FLIGHT = 16;

export async function run(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const alg of ['RS256', 'ES256'] as const) {
    const as = await createTestAuthorizationServer({ algorithm: alg, accessTokenTtl: '1h' });
    const audience = (decodeJwtAudience(await as.mintAccessToken()) ?? 'https://api.example.test') as string;
    const tokens: string[] = [];
    for (let i = 0; i < TOKENS; i++) tokens.push(await as.mintAccessToken({ sub: `user-${i}`, scope: 'read' }));
    const jwksUri = new URL('/jwks', as.issuer).href;
    const jwks = (await (await fetch(jwksUri)).json()) as {
      keys: (import('node:crypto').JsonWebKey & { kid: string })[];
    };

    // Ours: a verifier whose cache holds fewer entries than there are tokens, so every call misses.
    const verify = createVerifier({
      issuer: as.issuer,
      audience,
      allowInsecureRequests: true,
      cache: { maxEntries: 500 },
    });
    await verify.ready();
    const remote = createRemoteJWKSet(new URL(jwksUri));
    const joseOptions = { issuer: as.issuer, audience, algorithms: [alg] };
    // The floor: the signature alone, with the KeyObject of the token's kid made once.
    const keyObjects = new Map(jwks.keys.map((k) => [k.kid, createPublicKey({ key: k, format: 'jwk' })]));
    const hash = 'sha256';
    const floor = (token: string): boolean => {
      const dot = token.lastIndexOf('.');
      const kid = decodeProtectedHeader(token).kid as string;
      const key = keyObjects.get(kid)!;
      const ok = cryptoVerify(
        hash,
        Buffer.from(token.slice(0, dot), 'latin1'),
        alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key,
        Buffer.from(token.slice(dot + 1), 'base64url'),
      );
      if (!ok) throw new Error('floor: bad signature');
      return ok;
    };
    // Peers, with jwks-rsa for the keys (cached, as configured by default).
    const keys = new JwksClient({ jwksUri, cache: true });
    const pem = async (kid: string | undefined): Promise<string> => (await keys.getSigningKey(kid)).getPublicKey();
    const fastJwt = fastJwtVerifier({
      key: async (decoded: { header: { kid?: string } }) => pem(decoded.header.kid),
      algorithms: [alg],
      allowedIss: as.issuer,
      allowedAud: audience,
      cache: false,
    });
    const jsonwebtokenVerify = async (token: string): Promise<unknown> => {
      const key = await pem(decodeProtectedHeader(token).kid);
      return jsonwebtoken.verify(token, key, { algorithms: [alg], issuer: as.issuer, audience });
    };

    // All of them accept the tokens (and are warm) before anything is measured.
    for (const token of tokens.slice(0, 5)) {
      if (!(await verify(token)).ok) throw new Error('bench token did not verify');
      await jwtVerify(token, remote, joseOptions);
      floor(token);
      await fastJwt(token);
      await jsonwebtokenVerify(token);
    }

    for (const inFlight of [1, IN_FLIGHT]) {
      let i = 0;
      const next = (): string => tokens[i++ % TOKENS] as string;
      const each = (fn: (token: string) => unknown) => (): unknown =>
        inFlight === 1 ? fn(next()) : Promise.all(Array.from({ length: inFlight }, () => fn(next())));
      const check = async (token: string) => {
        const result = await verify(token);
        if (!result.ok) throw new Error(`verify refused a bench token: ${result.failure.description}`);
      };
      const [ours, jose, bare, fast, jwt] = (
        await alternateRounds(
          [
            each(check),
            each((t) => jwtVerify(t, remote, joseOptions)),
            each(floor),
            each((t) => fastJwt(t)),
            each(jsonwebtokenVerify),
          ],
          { rounds: 12, sliceMs: 150 },
        )
      ).map((rates) => rates.map((n) => n * inFlight)) as [number[], number[], number[], number[], number[]];
      const mode = inFlight === 1 ? 'one at a time' : `${inFlight} in flight`;
      // Medians of the rounds' rates; the ratio is the median of the rounds' ratios.
      const line = (peer: string, theirs: number[]): BenchRow => ({
        case: `verify() unique tokens ${alg}, ${mode}`,
        ours: `${si(percentile(ours, 50))} ops/s`,
        baseline: `${peer}: ${si(percentile(theirs, 50))} ops/s`,
        ratio: medianRatio(ours, theirs),
      });
      rows.push(line('jose jwtVerify', jose));
      rows.push(line('floor (sync KeyObject)', bare));
      rows.push(line('fast-jwt + jwks-rsa', fast));
      rows.push(line('jsonwebtoken + jwks-rsa', jwt));
    }
    await as.close();
  }
  return rows;
}

function decodeJwtAudience(token: string): string | undefined {
  const payload = JSON.parse(Buffer.from(token.split('.')[1] as string, 'base64url').toString()) as { aud?: unknown };
  return typeof payload.aud === 'string'
    ? payload.aud
    : Array.isArray(payload.aud)
      ? String(payload.aud[0])
      : undefined;
}

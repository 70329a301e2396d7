/**
 * 1 000 RFC 7662 introspection answers made at random (a fixed seed) from hostile parts — each member given a
 * value of another type, a past or future time, an unrelated audience or issuer, a lone surrogate, the
 * resource server's own secret — checked by a fresh verifier each (so that one bad answer's backoff does not
 * hide the next). The promise: `verify()` never throws; it accepts a token only when the answer says
 * `"active": true` (the boolean) and every check passes; a refusal is 401, 403 or 503 and never shows the
 * resource server's secret.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createVerifier } from '../../src/server/index.js';
import { type FaultServer, startFaultServer } from '../support/fault-server.js';
import { seeded } from '../support/seeded.js';
import { leaksIn } from './support.js';

const CASES = 1000;
const RS_SECRET = 'rs-secret-"fuzz"+/=&~!%41-é';
let server: FaultServer;
let answer: Record<string, unknown> = {};

beforeAll(async () => {
  server = await startFaultServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(answer));
  });
});
afterAll(() => server.close());

describe('introspection answers made at random from hostile parts', () => {
  it(`${CASES} answers: never a throw, accepted only when active is true and every check passes`, async () => {
    const pick = seeded(7662);
    const now = () => Math.floor(Date.now() / 1000);
    const values = (): unknown[] => [
      null,
      true,
      false,
      'true',
      1,
      0,
      -1,
      1e308,
      '',
      '\ud800',
      'é',
      [],
      ['api'],
      ['other', 'api'],
      ['other'],
      [1],
      {},
      { jkt: 'x' },
      'api',
      'other',
      'x'.repeat(3000),
      RS_SECRET,
      now() + 600,
      now() - 600,
      String(now() + 600),
      server.url,
      'https://elsewhere.example',
    ];
    const FIELDS = ['active', 'scope', 'client_id', 'sub', 'token_type', 'exp', 'iat', 'nbf', 'aud', 'iss', 'cnf'];
    const problems: string[] = [];
    const outcomes = new Map<string, number>();
    for (let n = 0; n < CASES; n++) {
      const pool = values();
      answer = { active: true, exp: now() + 600, aud: 'api', client_id: 'client' };
      for (let k = 1 + pick(3); k > 0; k--) answer[FIELDS[pick(FIELDS.length)] as string] = pool[pick(pool.length)];
      const verify = createVerifier({
        issuer: server.url,
        audience: 'api',
        strategy: 'introspection',
        introspection: { endpoint: `${server.url}/introspect`, clientId: 'rs', clientSecret: RS_SECRET },
        allowInsecureRequests: true,
        cache: false,
        timeout: '2s',
      });
      const described = `case ${n}: ${JSON.stringify(answer).slice(0, 200)}`;
      let result;
      try {
        result = await verify(`Bearer opaque-token-${n}`);
      } catch (err) {
        problems.push(`threw ${String(err)}: ${described}`);
        continue;
      }
      const key = result.ok ? 'ok' : String(result.failure.status);
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
      if (!result.ok) {
        // A refusal becomes a response and a challenge: the secret must not be in it. (An accepted token's
        // claims are the server's data about it, handed to the application as they are.)
        if (leaksIn(JSON.stringify(result), [RS_SECRET]).length > 0) problems.push(`secret shown: ${described}`);
        if (![401, 403, 503].includes(result.failure.status))
          problems.push(`status ${result.failure.status}: ${described}`);
        continue;
      }
      const { active, aud, exp, nbf, iss } = answer;
      const audiences = Array.isArray(aud) ? aud : [aud];
      if (active !== true) problems.push(`accepted without active: true: ${described}`);
      if (!audiences.includes('api')) problems.push(`accepted for another audience: ${described}`);
      if (typeof exp === 'number' && exp <= now()) problems.push(`accepted expired: ${described}`);
      if (typeof nbf === 'number' && nbf > now() + 60) problems.push(`accepted before nbf: ${described}`);
      if (iss !== undefined && iss !== server.url) problems.push(`accepted from another issuer: ${described}`);
    }
    expect(problems).toEqual([]);
    for (const key of ['ok', '401', '503']) expect(outcomes.get(key) ?? 0, key).toBeGreaterThan(20);
  }, 120_000);
});

/**
 * 1 500 stored manager tokens corrupted at random (a fixed seed: a failure names its case and reproduces) — a
 * member given a value of another type, removed, the text truncated — as a store that mangled bytes, or someone
 * with write access to it, would leave them. The promise: `getToken()` serves a usable token (a non-empty access
 * token, finite moments, not expired) or rejects with a coded error — never a throw of another kind, never an
 * empty token (the fleet's placeholder, which expires as it is written, is the only empty one a store may hold).
 */
import { describe, expect, it } from 'vitest';
import { TokenwardenError } from '../../src/errors.js';
import { TokenManager } from '../../src/manager.js';
import { clientCredentials } from '../../src/sources/client-credentials.js';
import { MemoryStore } from '../../src/stores/memory.js';
import { seeded } from '../support/seeded.js';

const CASES = 1500;
const VALUES: unknown[] = [null, true, 0, -1, 1e308, 0.5, '', 'x', '\u0000', [], [1], {}, 'NaN', 'a b'];

describe('stored manager tokens corrupted at random', () => {
  it(`${CASES} entries: a usable token served, or a coded error`, async () => {
    const pick = seeded(20261203);
    const choose = <T>(list: readonly T[]): T => list[pick(list.length)] as T;
    const now = Date.now();
    const good = {
      v: 1,
      accessToken: 'at-1',
      tokenType: 'Bearer',
      issuedAt: now,
      expiresAt: now + 3_600_000,
      scope: 'read',
      raw: { x: 1 },
      seq: 5,
      refreshToken: 'rt',
    };
    const problems: string[] = [];
    const outcomes = { served: 0, refused: 0 };
    for (let n = 0; n < CASES; n++) {
      const entry: Record<string, unknown> = structuredClone(good);
      for (let k = 1 + pick(3); k > 0; k--) {
        const name = choose([...Object.keys(entry), 'forced', 'healedAt', 'refreshExpiresAt', 'idToken']);
        if (pick(4) === 0) delete entry[name];
        else entry[name] = choose(VALUES);
      }
      let text = JSON.stringify(entry);
      if (pick(10) === 0) text = text.slice(0, pick(text.length));
      const described = `case ${n}: ${text.slice(0, 200)}`;
      const store = new MemoryStore();
      // Anything not served from the store needs the token endpoint: a closed port (ERR_NETWORK at once).
      const source = clientCredentials({
        tokenEndpoint: 'http://127.0.0.1:9/token',
        clientId: 'svc',
        clientSecret: 'secret',
        allowInsecureRequests: true,
        timeout: '1s',
      });
      const manager = new TokenManager({ source, store });
      await store.set(manager.key, text);
      try {
        const token = await manager.getToken();
        outcomes.served++;
        const usable =
          typeof token.accessToken === 'string' &&
          token.accessToken !== '' &&
          Number.isFinite(token.issuedAt) &&
          (token.expiresAt === undefined || (Number.isFinite(token.expiresAt) && token.expiresAt > Date.now()));
        if (!usable) problems.push(`served ${JSON.stringify(token).slice(0, 120)}: ${described}`);
      } catch (err) {
        outcomes.refused++;
        if (!(err instanceof TokenwardenError)) problems.push(`not coded (${String(err).slice(0, 80)}): ${described}`);
      } finally {
        await manager.close();
      }
    }
    expect(problems).toEqual([]);
    expect(outcomes.served, JSON.stringify(outcomes)).toBeGreaterThan(100);
    expect(outcomes.refused, JSON.stringify(outcomes)).toBeGreaterThan(100);
  }, 120_000);
});

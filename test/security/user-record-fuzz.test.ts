/**
 * 2 000 stored user records corrupted at random (a fixed seed: a failure names its case and reproduces) — a
 * member given a value of another type, removed, a token list entry mangled, the text truncated — as a store
 * that lost or mangled bytes, or someone with write access to it, would leave them. The promise: a record is
 * read as a record whose every token is a usable string and every moment a finite number, or as a miss
 * (`storeError`, and the subject must sign in again) — never a throw, never a `TypeError` later.
 */
import { describe, expect, it } from 'vitest';
import { TokenwardenError } from '../../src/errors.js';
import { MemoryStore } from '../../src/stores/memory.js';
import { UserTokens } from '../../src/users/index.js';
import { seeded } from '../support/seeded.js';

const CASES = 2000;
const VALUES: unknown[] = [null, true, 0, -1, 1e308, 0.5, '', 'x', '\u0000', [], [1], ['a'], {}, { t: 'x' }, 'NaN'];

describe('stored user records corrupted at random', () => {
  it(`${CASES} records: a sound record or a miss, never a throw`, async () => {
    const store = new MemoryStore();
    const options = {
      issuer: 'https://login.example.test',
      tokenEndpoint: 'http://127.0.0.1:9/token',
      clientId: 'web',
      clientSecret: 'secret',
      allowInsecureRequests: true,
      store,
    };
    const writer = new UserTokens(options);
    await writer.save(
      'pat',
      { access_token: 'at-1', token_type: 'Bearer', expires_in: 3600, refresh_token: 'rt-1', scope: 'read write' },
      { resource: 'https://api.example.test' },
    );
    await writer.getAccessToken('pat', { resource: 'https://api.example.test' });
    const key = writer.keyFor('pat');
    const good = JSON.parse((await store.get(key))!.value) as Record<string, unknown>;
    await writer.close();

    const pick = seeded(20261202);
    const choose = <T>(list: readonly T[]): T => list[pick(list.length)] as T;
    const problems: string[] = [];
    let sound = 0;
    let misses = 0;
    for (let n = 0; n < CASES; n++) {
      const record = structuredClone(good);
      for (let k = 1 + pick(3); k > 0; k--) {
        const where = pick(3);
        if (where === 0) {
          const name = choose(Object.keys(record));
          if (pick(4) === 0) delete record[name];
          else record[name] = choose(VALUES);
        } else {
          const entries = Array.isArray(record['a']) ? (record['a'] as unknown[]) : [];
          const entry = entries[pick(Math.max(1, entries.length))];
          if (entry !== null && typeof entry === 'object' && !Array.isArray(entry)) {
            const fields = entry as Record<string, unknown>;
            const name = choose([...Object.keys(fields), 'e', 'x', 'q', 'w', 'at', 'y']);
            if (pick(4) === 0) delete fields[name];
            else fields[name] = choose(VALUES);
          } else if (entries.length > 0) {
            entries[pick(entries.length)] = choose(VALUES);
          }
        }
      }
      let text = JSON.stringify(record);
      if (pick(10) === 0) text = text.slice(0, pick(text.length));
      await store.set(key, text);
      const described = `case ${n}: ${text.slice(0, 200)}`;
      const reader = new UserTokens(options);
      let missed = false;
      reader.on('storeError', () => (missed = true));
      try {
        const listed = await reader.listAccessTokens('pat');
        await reader.getClaims('pat');
        await reader.getIdToken('pat');
        for (const { token } of listed) {
          if (typeof token.accessToken !== 'string' || token.accessToken === '') problems.push(`a token: ${described}`);
          if (!Number.isFinite(token.issuedAt)) problems.push(`issuedAt: ${described}`);
          if (token.expiresAt !== undefined && !Number.isFinite(token.expiresAt)) problems.push(`expiry: ${described}`);
        }
        // A held token served without I/O; otherwise a refresh is needed (the closed port), or sign in again.
        const served = await reader
          .getAccessToken('pat', { resource: 'https://api.example.test' })
          .catch((err: unknown) => {
            if (!(err instanceof TokenwardenError)) throw err;
            return undefined;
          });
        if (served !== undefined && (typeof served.accessToken !== 'string' || served.accessToken === '')) {
          problems.push(`served a token that is not one: ${described}`);
        }
        if (missed) misses++;
        else sound++;
      } catch (err) {
        problems.push(`${err instanceof TokenwardenError ? err.code : String(err).slice(0, 80)}: ${described}`);
      } finally {
        await reader.close();
      }
    }
    expect(problems).toEqual([]);
    expect(sound, 'records still read').toBeGreaterThan(100);
    expect(misses, 'records read as a miss').toBeGreaterThan(100);
  }, 120_000);
});

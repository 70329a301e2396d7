/**
 * The compact user record (issue 15): each token once in the stored text, claims derived from the ID token
 * unless UserInfo merged new ones, no identity in clear; version 1 records (before) still read.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/stores/memory.js';
import { recordId, recordLineage } from '../../src/users/record.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { syntheticResponse, usersFor } from './helpers.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await startAuthorizationServer();
});
afterAll(async () => {
  await as.close();
});

const occurrences = (text: string, part: string): number => text.split(part).length - 1;

describe('the compact record', () => {
  it('holds each token once, no claims beside the ID token, and no issuer, client or subject in clear', async () => {
    const store = new MemoryStore();
    const users = usersFor(as, { store });
    const response = await syntheticResponse(as, 'alice@example.test');
    await users.save('alice@example.test', response);
    const text = (await store.get(users.keyFor('alice@example.test')))!.value;
    for (const token of ['access_token', 'refresh_token', 'id_token'] as const) {
      expect(occurrences(text, response[token] as string)).toBe(1);
    }
    expect(text).not.toContain(as.issuer);
    expect(text).not.toContain('alice@example.test');
    expect(JSON.parse(text)).not.toHaveProperty('c');
    // The claims come from the ID token when asked for.
    expect((await users.getClaims('alice@example.test'))?.['sub']).toBe('alice@example.test');
    expect((await users.getClaimsInfo('alice@example.test'))?.from).toBe('id_token');
    await users.close();
  });

  it('reads a version 1 record as before (tokens, claims, ID token), and refuses one of another client', async () => {
    const store = new MemoryStore();
    const users = usersFor(as, { store });
    const now = Date.now();
    const response = await syntheticResponse(as, 'bob');
    const v1 = {
      v: 1,
      issuer: as.issuer,
      clientId: as.clients.app.clientId,
      subject: 'bob',
      session: '9b7c7a0e-2f4e-4a53-8a0c-3a7f2d1c5e6f',
      refreshToken: response['refresh_token'],
      idToken: response['id_token'],
      claims: { sub: 'bob', email: 'bob@example.test' },
      claimsUpdatedAt: now,
      claimsFrom: 'userinfo',
      accessTokens: [
        {
          spec: { scope: null, resource: null, params: null },
          token: {
            accessToken: 'at-bob',
            tokenType: 'Bearer',
            issuedAt: now,
            expiresAt: now + 3_600_000,
            scope: 'read',
            raw: { token_type: 'Bearer' },
          },
        },
      ],
      updatedAt: now,
      seq: now,
    };
    await store.set(users.keyFor('bob'), JSON.stringify(v1));
    const token = await users.getAccessToken('bob');
    expect(token.accessToken).toBe('at-bob');
    expect(token.scope).toBe('read');
    expect(await users.getIdToken('bob')).toBe(response['id_token']);
    expect(await users.getClaimsInfo('bob')).toMatchObject({ claims: { email: 'bob@example.test' }, from: 'userinfo' });
    // A version 1 record of another client under bob's key is a miss.
    await store.set(
      users.keyFor('carol'),
      JSON.stringify({ ...v1, clientId: 'other', subject: 'carol', claims: undefined }),
    );
    await expect(users.getAccessToken('carol')).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
    await users.close();
  });

  it('reads a version 2 record in its earlier form (128-bit id, expiry as a moment), and refuses one of another subject', async () => {
    const store = new MemoryStore();
    const users = usersFor(as, { store });
    await users.save('fay', await syntheticResponse(as, 'fay'));
    const key = users.keyFor('fay');
    const stored = JSON.parse((await store.get(key))!.value) as Record<string, unknown>;
    const longId = (subject: string): string =>
      createHash('sha256')
        .update(JSON.stringify([as.issuer, as.clients.app.clientId, subject]))
        .digest()
        .subarray(0, 16)
        .toString('base64url');
    expect(longId('fay').startsWith(stored['id'] as string)).toBe(true);
    // As stop 17 wrote it: the issue time, the expiry as a moment and the seq written out.
    const [entry] = stored['a'] as { e: number; at?: number; x?: number }[];
    const u = stored['u'] as number;
    const { e: lifetime, ...rest } = entry!;
    const earlier = { ...stored, id: longId('fay'), a: [{ ...rest, at: u, x: u + lifetime }], seq: u };
    await store.set(key, JSON.stringify(earlier));
    await users.close();
    const again = usersFor(as, { store });
    const token = await again.getAccessToken('fay');
    expect(token.accessToken).toMatch(/^at-/);
    expect(token.expiresAt).toBe(u + lifetime);
    // The same record under the id of someone else: a miss.
    await store.set(key, JSON.stringify({ ...earlier, id: longId('gus') }));
    const other = usersFor(as, { store });
    await expect(other.getAccessToken('fay')).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
    await again.close();
    await other.close();
  });

  it('in memory, the record read from the store shares its token strings with the stored text', () => {
    const lineage = recordLineage('https://as.example.test', 'web', undefined);
    const accessToken = `eyJ${'a'.repeat(600)}`;
    const record = {
      id: recordId('https://as.example.test', 'web', 'dave'),
      session: 's',
      refreshToken: 'r'.repeat(43),
      accessTokens: [
        {
          spec: { scope: null, resource: null, params: null },
          token: Object.freeze({ accessToken, tokenType: 'Bearer', issuedAt: 1, raw: {} }),
        },
      ],
      updatedAt: 1,
    };
    const text = lineage.encode(record, 1);
    const decoded = lineage.decode('k', text)!;
    const { record: shared, text: stored } = lineage.shared(decoded.state);
    expect(stored).toBe(text); // the very string the store holds
    expect(shared).not.toBe(decoded.state); // rebuilt around the text
    expect(shared.accessTokens[0]!.token.accessToken).toBe(accessToken);
    expect(shared.refreshToken).toBe(record.refreshToken);
    expect(lineage.shared(shared).record).toBe(shared); // nothing more to share
    // Read again from the text alone (the in-process layer keeps the text, not the record).
    const again = lineage.reread(text)!;
    expect(again.refreshToken).toBe(record.refreshToken);
    expect(again.accessTokens[0]!.token.accessToken).toBe(accessToken);
  });
  it('writes no moment twice: issuedAt, claimsUpdatedAt and seq are left out when they equal updatedAt, and read back', () => {
    const lineage = recordLineage('https://as.example.test', 'web', undefined);
    const entry = (issuedAt: number) => ({
      spec: { scope: null, resource: null, params: null },
      token: Object.freeze({
        accessToken: `at-${issuedAt}`,
        tokenType: 'Bearer',
        issuedAt,
        expiresAt: issuedAt + 60_000,
        raw: {},
      }),
    });
    const base = {
      id: recordId('https://as.example.test', 'web', 'erin'),
      session: 's',
      idToken: 'h.p.s',
      claimsFrom: 'id_token' as const,
    };
    // After a login: every moment is the same one.
    const login = { ...base, claimsUpdatedAt: 5_000, accessTokens: [entry(5_000)], updatedAt: 5_000 };
    const text = lineage.encode(login, 5_000);
    const stored = JSON.parse(text) as Record<string, unknown>;
    expect(stored).not.toHaveProperty('seq');
    expect(stored).not.toHaveProperty('cu');
    expect((stored['a'] as Record<string, unknown>[])[0]).not.toHaveProperty('at');
    const read = lineage.decode('k', text)!;
    expect(read.seq).toBe(5_000);
    expect(read.state.claimsUpdatedAt).toBe(5_000);
    expect(read.state.accessTokens[0]!.token.issuedAt).toBe(5_000);
    expect(read.state.accessTokens[0]!.token.expiresAt).toBe(65_000);
    // After a refresh (and a date-less version 1 record's claims): each one kept as it is.
    const later = { ...base, claimsUpdatedAt: undefined, accessTokens: [entry(7_000), entry(5_000)], updatedAt: 7_001 };
    const again = lineage.decode('k', lineage.encode(later, 5_001))!;
    expect(again.seq).toBe(5_001);
    expect(again.state.updatedAt).toBe(7_001);
    expect(again.state.accessTokens.map((e) => [e.token.issuedAt, e.token.expiresAt])).toEqual([
      [7_000, 67_000],
      [5_000, 65_000],
    ]);
    expect(again.state.claimsUpdatedAt).toBe(0); // "never": the claims are due for UserInfo again
  });

  it('keeps the times of forced refreshes (invalidate) through a write; a malformed list is dropped, not the record', () => {
    const lineage = recordLineage('https://as.example.test', 'web', undefined);
    const record = {
      id: recordId('https://as.example.test', 'web', 'gus'),
      session: 's',
      refreshToken: 'rt',
      accessTokens: [],
      updatedAt: 5_000,
    };
    const text = lineage.encode({ ...record, forced: [6_000, 7_000] }, 5_000);
    expect(lineage.decode('k', text)?.state.forced).toEqual([6_000, 7_000]);
    expect(JSON.parse(lineage.encode({ ...record, forced: [] }, 5_000))).not.toHaveProperty('f');
    const hostile = ['"6000"', '[6000,"7000"]', '[null]', '{"0":1}', `[${'1,'.repeat(16)}1]`, '[1e400]', '[-1e400]'];
    for (const f of hostile) {
      const read = lineage.decode('k', text.replace(/}$/, `,"f":${f}}`).replace('"f":[6000,7000],', ''));
      expect(read?.state.refreshToken, f).toBe('rt');
      expect(read?.state.forced, f).toBeUndefined();
    }
  });
});

describe('the default store', () => {
  it('keeps every signed-in user: 12 000 logins, none evicted (its bound is 1 000 000)', async () => {
    const users = usersFor(as, { cache: { max: 100 } });
    const subjects = Array.from({ length: 12_000 }, (_, i) => `user-${i}`);
    const tokens = new Map<string, string>();
    for (const subject of subjects) {
      const response = {
        access_token: `at-${subject}`,
        token_type: 'Bearer',
        expires_in: 3600,
        refresh_token: `rt-${subject}`,
      };
      await users.save(subject, response);
      tokens.set(subject, response.access_token);
    }
    // The first users signed in are the ones an LRU of 10 000 would have dropped.
    for (const subject of subjects.slice(0, 2_500)) {
      expect((await users.getAccessToken(subject)).accessToken).toBe(tokens.get(subject));
    }
    await users.close();
  }, 60_000);
});

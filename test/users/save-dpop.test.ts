/**
 * A login whose access token is DPoP-bound (`token_type: DPoP`), given to `save()`: it can only be used with the
 * key the login's proofs were signed with, so a `UserTokens` without `dpop` refuses it at `save()` — kept, every
 * `fetchAs()` and every request with `getAccessToken()` would fail until the user signed in again.
 */
import { generateKeyPair } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/stores/memory.js';
import { UserTokens } from '../../src/users/index.js';

const ISSUED = 'dpop-bound-access-token';
const options = {
  issuer: 'https://login.example.test',
  tokenEndpoint: 'http://127.0.0.1:9/token',
  clientId: 'web',
  clientSecret: 'web-secret',
  allowInsecureRequests: true,
};
const open: UserTokens[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((u) => u.close()));
});
function users(extra: { dpop?: CryptoKeyPair } = {}): UserTokens {
  const u = new UserTokens({ ...options, store: new MemoryStore(), ...extra });
  open.push(u);
  return u;
}

describe('save() and a DPoP-bound login', () => {
  it('without dpop: ERR_CONFIG, nothing stored, the token not in the error', async () => {
    const u = users();
    for (const type of ['DPoP', 'dpop']) {
      const error = await u
        .save('alice', { access_token: ISSUED, token_type: type, expires_in: 60, refresh_token: 'rt' })
        .then(
          () => undefined,
          (err: unknown) => err,
        );
      expect(error).toMatchObject({ code: 'ERR_CONFIG', message: expect.stringContaining('DPoP-bound') });
      expect(JSON.stringify(error) + String(error)).not.toContain(ISSUED);
    }
    await expect(u.getAccessToken('alice')).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
  });

  it('with dpop: kept as DPoP; a Bearer login is kept either way (RFC 9449 §5: the server did not bind it)', async () => {
    const dpop = await generateKeyPair('ES256', { extractable: true });
    const bound = users({ dpop });
    await bound.save('alice', { access_token: ISSUED, token_type: 'DPoP', expires_in: 60 });
    expect(await bound.getAccessToken('alice')).toMatchObject({ accessToken: ISSUED, tokenType: 'DPoP' });
    await bound.save('bob', { access_token: 'b', token_type: 'Bearer', expires_in: 60 });
    expect((await bound.getAccessToken('bob')).tokenType).toBe('Bearer');
    const plain = users();
    await plain.save('bob', { access_token: 'b', token_type: 'bearer', expires_in: 60 });
    expect((await plain.getAccessToken('bob')).tokenType).toBe('Bearer');
  });
});

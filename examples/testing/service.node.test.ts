/**
 * Testing a service that calls an API with its own token (TokenManager) — with node:test, no test framework
 * to install. The authorization server is real; its outages are produced on demand.
 *
 *   node --import tsx --test examples/testing/service.node.test.ts
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { TokenManager, clientCredentials, isTokenwardenError } from 'tokenwarden';
import { type TestAuthorizationServer, createTestAuthorizationServer } from 'tokenwarden/testing';

/** The service under test: in your code base, imported from where it lives. */
function createService(options: { issuer: string; clientId: string; clientSecret: string }) {
  const manager = new TokenManager({
    source: clientCredentials({ ...options, scope: 'reports:read', allowInsecureRequests: true }),
  });
  return {
    authorization: async () => `Bearer ${await manager.getAccessToken()}`,
    rotateNow: () => manager.refresh(),
    close: () => manager.close(),
  };
}

describe('the report service', () => {
  let as: TestAuthorizationServer;
  let service: ReturnType<typeof createService>;

  before(async () => {
    as = await createTestAuthorizationServer({ accessTokenTtl: '10m' });
    service = createService({ issuer: as.issuer, ...as.client });
  });
  after(async () => {
    await service.close();
    await as.close();
  });

  it('asks for one token and reuses it', async () => {
    const first = await service.authorization();
    assert.equal(await service.authorization(), first);
    assert.equal(as.stats().token, 1);
  });

  it('rides out an outage of the authorization server on its still-valid token', async () => {
    const before = await service.authorization();
    await as.fault('down');
    await assert.rejects(service.rotateNow(), (err) => isTokenwardenError(err, 'ERR_NETWORK'));
    assert.equal(await service.authorization(), before);
    await as.fault('ok');
    await service.rotateNow();
    assert.notEqual(await service.authorization(), before);
  });
});

/**
 * DPoP (RFC 9449) end to end: the real authorization server binds the token to our key; a resource server
 * that validates proofs with oauth4webapi (and demands a nonce) accepts manager.fetch.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { calculateJwkThumbprint, decodeJwt, exportJWK, generateKeyPair } from 'jose';
import * as oauth from 'oauth4webapi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenManager, clientCredentials } from '../src/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from './support/authorization-server.js';
import { svcDpopSource } from './support/app-client.js';

let as: TestAuthorizationServer;
let api: Server;
let apiUrl: string;
const NONCE = 'server-nonce-1';
const seen: { scheme: string; nonce: unknown; status: number }[] = [];

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
  const metadata = await oauth.processDiscoveryResponse(
    new URL(as.issuer),
    await oauth.discoveryRequest(new URL(as.issuer), { [oauth.allowInsecureRequests]: true }),
  );
  api = createServer(async (req, res) => {
    const url = `${apiUrl}${req.url}`;
    const headers = new Headers(req.headers as Record<string, string>);
    const proof = headers.get('dpop');
    const nonce = proof ? decodeJwt(proof).nonce : undefined;
    const scheme = (headers.get('authorization') ?? '').split(' ')[0] ?? '';
    const answer = (status: number, h: Record<string, string> = {}) => {
      seen.push({ scheme, nonce, status });
      res.writeHead(status, h).end();
    };
    if (proof && nonce !== NONCE) {
      answer(401, { 'www-authenticate': 'DPoP error="use_dpop_nonce"', 'dpop-nonce': NONCE });
      return;
    }
    try {
      await oauth.validateJwtAccessToken(metadata, new Request(url, { method: req.method, headers }), API_RESOURCE, {
        requireDPoP: true,
        [oauth.allowInsecureRequests]: true,
      } as oauth.ValidateJWTAccessTokenOptions);
      answer(200);
    } catch {
      answer(401, { 'www-authenticate': 'DPoP error="invalid_token"' });
    }
  });
  await new Promise<void>((r) => api.listen(0, '127.0.0.1', r));
  apiUrl = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
});
afterAll(async () => {
  api.close();
  await as.close();
});

/** A manager for the `svc` client of `server`, its tokens bound to a new ES256 key pair. */
async function dpopManager(
  server: TestAuthorizationServer,
): Promise<{ manager: TokenManager; keyPair: CryptoKeyPair }> {
  const keyPair = await generateKeyPair('ES256', { extractable: true });
  return { manager: new TokenManager({ source: svcDpopSource(server, keyPair) }), keyPair };
}

describe('DPoP', () => {
  it('binds the token to the key and proves possession on every API call, answering a nonce challenge', async () => {
    const { manager, keyPair } = await dpopManager(as);
    const token = await manager.getToken();
    expect(token.tokenType).toBe('DPoP');
    const jkt = await calculateJwkThumbprint(await exportJWK(keyPair.publicKey));
    expect((decodeJwt(token.accessToken).cnf as { jkt: string }).jkt).toBe(jkt);

    seen.length = 0;
    const res = await manager.fetch(`${apiUrl}/orders`, { method: 'POST', body: 'x' });
    expect(res.status).toBe(200);
    expect(seen).toEqual([
      { scheme: 'DPoP', nonce: undefined, status: 401 },
      { scheme: 'DPoP', nonce: NONCE, status: 200 },
    ]);
    // the nonce is remembered: the next call goes through at once
    expect((await manager.fetch(`${apiUrl}/orders`)).status).toBe(200);
    expect(seen).toHaveLength(3);
    await manager.close();
  });

  it('an authorization server that demands a nonce (400 use_dpop_nonce): the token request is sent again once, with it', async () => {
    const strict = await startAuthorizationServer({ accessTokenTtl: 60, dpopNonce: true });
    try {
      const { manager } = await dpopManager(strict);
      const token = await manager.getToken();
      expect(token.tokenType).toBe('DPoP');
      expect(strict.counts.errors).toEqual({ use_dpop_nonce: 1 });
      await manager.refresh(); // the nonce is remembered: no second challenge while it is valid
      expect(strict.counts.byGrant['client_credentials']).toBe(3);
      expect(strict.counts.errors).toEqual({ use_dpop_nonce: 1 });
      await manager.close();
    } finally {
      await strict.close();
    }
  });

  it('a DPoP-bound token without its proof is refused', async () => {
    const keyPair = await generateKeyPair('ES256', { extractable: true });
    const token = await svcDpopSource(as, keyPair).fetchToken({});
    const res = await fetch(`${apiUrl}/orders`, { headers: { authorization: `Bearer ${token.accessToken}` } });
    expect(res.status).toBe(401);
  });

  it('refuses something that is not a key pair with ERR_CONFIG', () => {
    const dpop = { privateKey: 'not a key' } as unknown as CryptoKeyPair;
    expect(() =>
      clientCredentials({ issuer: as.issuer, clientId: 'svc', clientSecret: 'x', allowInsecureRequests: true, dpop }),
    ).toThrow(expect.objectContaining({ code: 'ERR_CONFIG' }));
  });
});

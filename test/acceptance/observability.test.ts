/**
 * Issue 12's acceptance, as written, through the package's own subpaths (the build): a global
 * `MeterProvider` with an in-memory exporter, a `TokenManager(clientCredentials(…))` against the real
 * authorization server with 3 forced refreshes and one refresh failing while the server is down, and a
 * verifier answering one valid and one expired token; then `tokenwarden agent` serving `/v1/metrics`.
 */
import { TokenManager, clientCredentials } from 'tokenwarden';
import { createVerifier } from 'tokenwarden/server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { attributeValues, installMetrics, total } from '../support/otel.js';
import { Agent, assertBuilt, httpGet, removeHomes, tempHome, writeAgentConfig } from '../cli/support.js';
import { forge } from '../server/support.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  await assertBuilt();
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
});
afterAll(async () => {
  await as?.close();
  await removeHomes();
});

describe('issue 12 acceptance', () => {
  it('token requests (4 success, ≥ 1 error), time to expiry > 0, verify ok and invalid_token; no secret or token in any attribute', async () => {
    const otel = installMetrics();
    const secret = as.clients.svc.clientSecret;
    const manager = new TokenManager({
      source: clientCredentials({
        issuer: as.issuer,
        clientId: as.clients.svc.clientId,
        clientSecret: secret,
        scope: 'read',
        allowInsecureRequests: true,
      }),
    });
    try {
      as.resetCounts();
      const tokens = [await manager.getToken()];
      for (let i = 0; i < 3; i++) tokens.push(await manager.refresh());
      await as.setFault('refuse');
      await expect(manager.refresh()).rejects.toMatchObject({ code: 'ERR_NETWORK' });
      await as.clearFault();

      const verify = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
      const now = Math.floor(Date.now() / 1000);
      const expired = await forge(as, { iat: now - 120, exp: now - 60 });
      expect((await verify(`Bearer ${tokens[3]?.accessToken}`)).ok).toBe(true);
      expect(await verify(`Bearer ${expired}`)).toMatchObject({ ok: false, failure: { error: 'invalid_token' } });

      const points = await otel.collect();
      const requests = 'tokenwarden.token.requests';
      expect(total(points, requests, { 'tokenwarden.outcome': 'success' })).toBe(4);
      expect(as.counts.token - as.counts.tokenErrors, "the authorization server's own count").toBe(4);
      expect(total(points, requests, { 'tokenwarden.outcome': 'error' })).toBeGreaterThanOrEqual(1);
      expect(total(points, requests, { 'tokenwarden.outcome': 'error', 'error.type': 'ERR_NETWORK' })).toBe(1);
      expect(total(points, requests, { 'tokenwarden.grant': 'client_credentials' })).toBe(5);
      const expiry = points.filter((p) => p.name === 'tokenwarden.token.time_to_expiry');
      expect(expiry).toHaveLength(1);
      expect(expiry[0]?.value).toBeGreaterThan(0);
      expect(expiry[0]?.value).toBeLessThanOrEqual(60);
      expect(expiry[0]?.attributes).toMatchObject({
        'tokenwarden.key': manager.key,
        'tokenwarden.grant': 'client_credentials',
      });
      expect(total(points, 'tokenwarden.verify.requests', { 'tokenwarden.outcome': 'ok' })).toBe(1);
      expect(total(points, 'tokenwarden.verify.requests', { 'tokenwarden.outcome': 'invalid_token' })).toBe(1);

      const values = attributeValues(points);
      expect(values.length).toBeGreaterThan(0);
      for (const value of values) {
        expect(value).not.toContain(secret);
        for (const t of [...tokens.map((x) => x.accessToken), expired]) expect(value).not.toContain(t);
      }
    } finally {
      await manager.close();
      await otel.close();
    }
  });

  it('tokenwarden agent with "listen" serves /v1/metrics containing tokenwarden_token_requests_total', async () => {
    const home = await tempHome();
    const file = await writeAgentConfig(home.dir, as.issuer);
    const agent = new Agent(['agent', '--config', file], { ...home.env, SVC_SECRET: as.clients.svc.clientSecret });
    try {
      const port = (await agent.waitForLog((l) => l['msg'] === 'listening'))['port'] as number;
      await agent.waitForLog((l) => l['msg'] === 'token obtained');
      const res = await httpGet(port, '/v1/metrics');
      expect(res.status).toBe(200);
      expect(res.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
      expect(res.body).toContain('tokenwarden_token_requests_total');
      expect(res.body).toMatch(
        /^tokenwarden_token_requests_total\{tokenwarden_grant="client_credentials",tokenwarden_outcome="success"\} 1$/m,
      );
      expect(res.body).not.toContain(as.clients.svc.clientSecret);
    } finally {
      await agent.stop();
    }
  });
});

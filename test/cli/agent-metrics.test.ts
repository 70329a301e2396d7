/**
 * `tokenwarden agent`'s observability routes, run as a child process (the built CLI) against the real
 * authorization server: `/v1/health` answers 503 with a reason while a token is missing (the server is
 * down at start-up) and 200 once it is back; `/v1/metrics` counts what happened, in Prometheus text.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import parse from 'parse-prometheus-text-format';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { json, startFaultServer } from '../support/fault-server.js';
import { Agent, assertBuilt, httpGet, removeHomes, tempHome, writeAgentConfig } from './support.js';

let as: TestAuthorizationServer;
const agents: Agent[] = [];
beforeAll(async () => {
  await assertBuilt();
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
});
afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await as?.close();
  await removeHomes();
});

const sample = (text: string, line: RegExp): number | undefined => {
  const hit = text.split('\n').find((l) => line.test(l));
  return hit === undefined ? undefined : Number(hit.slice(hit.lastIndexOf(' ') + 1));
};

describe('tokenwarden agent: /v1/health and /v1/metrics', () => {
  it('503 with the reason while the server is down, 200 once a token is held; the metrics count both', async () => {
    const home = await tempHome();
    const file = await writeAgentConfig(home.dir, as.issuer);
    await as.setFault('refuse');
    const agent = new Agent(['agent', '--config', file], { ...home.env, SVC_SECRET: as.clients.svc.clientSecret });
    agents.push(agent);
    try {
      const port = (await agent.waitForLog((l) => l['msg'] === 'listening'))['port'] as number;
      await agent.waitForLog((l) => l['msg'] === 'refresh failed; retrying');

      const down = await httpGet(port, '/v1/health');
      expect(down.status).toBe(503);
      expect(down.headers['content-type']).toBe('application/json');
      const body = JSON.parse(down.body) as Record<string, unknown>;
      expect(body).toMatchObject({
        status: 'unavailable',
        reason: expect.stringMatching(
          /^no valid token for svc: no token obtained yet; the last refresh failed \(ERR_NETWORK\)$/,
        ),
        tokens: {
          svc: { valid: false, status: 'none', last_error: { code: 'ERR_NETWORK' }, failures: expect.any(Number) },
        },
      });
      let metrics = (await httpGet(port, '/v1/metrics')).body;
      const errors =
        /^tokenwarden_token_requests_total\{error_type="ERR_NETWORK",tokenwarden_grant="client_credentials",tokenwarden_outcome="error"\} \d+$/;
      expect(sample(metrics, errors)).toBeGreaterThanOrEqual(1);
      expect(metrics).not.toMatch(/tokenwarden_outcome="success"/);

      await as.clearFault();
      await agent.waitForLog((l) => l['msg'] === 'token obtained');
      const up = await httpGet(port, '/v1/health');
      expect(up.status).toBe(200);
      expect(JSON.parse(up.body)).toMatchObject({ status: 'ok', tokens: { svc: { valid: true, status: 'fresh' } } });
      expect(JSON.parse(up.body)).not.toHaveProperty('reason');

      const res = await httpGet(port, '/v1/metrics');
      expect(res.status).toBe(200);
      expect(res.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
      metrics = res.body;
      expect(parse(metrics).length).toBeGreaterThanOrEqual(10); // well-formed
      expect(
        sample(
          metrics,
          /^tokenwarden_token_requests_total\{tokenwarden_grant="client_credentials",tokenwarden_outcome="success"\} /,
        ),
      ).toBe(1);
      const ttl = sample(metrics, /^tokenwarden_token_time_to_expiry_seconds\{[^}]*tokenwarden_name="svc"[^}]*\} /);
      expect(ttl).toBeGreaterThan(50);
      expect(ttl).toBeLessThanOrEqual(60);
      expect(metrics).not.toContain(as.clients.svc.clientSecret);
      expect((await httpGet(port, '/v1/metrics', {}, 'HEAD')).body).toBe('');
      // The loopback defences hold for this route too.
      expect((await httpGet(port, '/v1/metrics', { host: 'attacker.example' })).status).toBe(403);
      expect((await httpGet(port, '/v1/metrics', { origin: 'https://attacker.example' })).status).toBe(403);
    } finally {
      await as.clearFault();
      expect((await agent.stop()).code).toBe(0);
    }
  });

  it('a server echoing the secret in its OAuth error: /v1/health and /v1/metrics repeat neither', async () => {
    const secret = 'echo-me-if-you-can-0123456789';
    // A 2 s token first, then refusals that echo the client secret (an OAuth error no retry will heal).
    let served = 0;
    const server = await startFaultServer((req, res) => {
      if (served++ === 0) return json(res, 200, { access_token: 'opaque-first', token_type: 'Bearer', expires_in: 2 });
      const basic = Buffer.from(String(req.headers.authorization).replace(/^Basic /, ''), 'base64').toString();
      const echoed = decodeURIComponent(basic.slice(basic.indexOf(':') + 1));
      json(res, 400, { error: `bad_${echoed}`, error_description: `secret was ${echoed}` });
    });
    const home = await tempHome();
    const file = join(home.dir, 'agent.json');
    const config = {
      tokens: {
        echo: {
          tokenEndpoint: `${server.url}/token`,
          clientId: 'svc',
          clientSecretEnv: 'ECHO_SECRET',
          allowInsecureRequests: true,
        },
      },
      listen: '127.0.0.1:0',
    };
    await writeFile(file, JSON.stringify(config));
    const agent = new Agent(['agent', '--config', file], { ...home.env, ECHO_SECRET: secret });
    agents.push(agent);
    try {
      const port = (await agent.waitForLog((l) => l['msg'] === 'listening'))['port'] as number;
      await agent.waitForLog((l) => typeof l['msg'] === 'string' && l['msg'].startsWith('refresh failed'));
      let health = await httpGet(port, '/v1/health');
      for (let i = 0; i < 100 && health.status === 200; i++) {
        await new Promise((r) => setTimeout(r, 50));
        health = await httpGet(port, '/v1/health'); // until the first token runs out
      }
      expect(health.status).toBe(503);
      expect(JSON.parse(health.body)).toMatchObject({
        reason: expect.stringContaining('(ERR_OAUTH)'),
        tokens: { echo: { valid: false, last_error: { code: 'ERR_OAUTH', oauth_error: 'other', status: 400 } } },
      });
      const metrics = (await httpGet(port, '/v1/metrics')).body;
      expect(metrics).toMatch(/error_type="ERR_OAUTH"/);
      for (const text of [health.body, metrics]) {
        expect(text).not.toContain(secret);
        expect(text).not.toContain('bad_');
      }
    } finally {
      expect((await agent.stop()).code).toBe(0);
      await server.close();
    }
  });
});

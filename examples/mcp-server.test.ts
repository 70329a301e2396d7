/**
 * The MCP server of examples/mcp-server.ts against the MCP TypeScript SDK's own client code: the SDK finds
 * the metadata through the 401, accepts the document, and calls a tool with a token from the test server.
 */
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  discoverOAuthProtectedResourceMetadata,
  extractWWWAuthenticateParams,
} from '@modelcontextprotocol/sdk/client/auth.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestAuthorizationServer, createTestAuthorizationServer } from 'tokenwarden/testing';
import { createMcpApp } from './mcp-server.js';

let as: TestAuthorizationServer;
let server: Server;
let resource: string;

beforeAll(async () => {
  server = createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  resource = `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`;
  as = await createTestAuthorizationServer({ audience: [resource, 'https://other.example.com'] });
  server.on('request', createMcpApp({ issuer: as.issuer, resource, allowInsecureRequests: true }));
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  await as.close();
});

const connect = async (token: string) => {
  const client = new Client({ name: 'test-client', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(resource), {
    requestInit: { headers: { authorization: `Bearer ${token}` } },
  });
  await client.connect(transport);
  return client;
};

describe('an MCP server authorized by tokenwarden', () => {
  it('a request without a token: 401 whose challenge the SDK reads, and a metadata document it accepts', async () => {
    const res = await fetch(resource, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(401);
    const { resourceMetadataUrl, scope } = extractWWWAuthenticateParams(res);
    expect(resourceMetadataUrl?.href).toBe(`${new URL(resource).origin}/.well-known/oauth-protected-resource/mcp`);
    expect(scope).toBe('mcp:tools');
    for (const opts of [{ resourceMetadataUrl }, {}]) {
      const metadata = await discoverOAuthProtectedResourceMetadata(resource, opts);
      expect(metadata).toMatchObject({
        resource,
        authorization_servers: [as.issuer],
        scopes_supported: ['mcp:tools'],
        resource_name: 'Invoices MCP server',
      });
    }
  });

  it('the SDK client calls tools with a token issued for this server', async () => {
    const client = await connect(await as.mintAccessToken({ sub: 'alice', scope: 'mcp:tools', audience: resource }));
    try {
      expect((await client.listTools()).tools.map((t) => t.name).sort()).toEqual(['invoice', 'whoami']);
      expect(await client.callTool({ name: 'whoami', arguments: {} })).toMatchObject({
        content: [{ type: 'text', text: 'alice' }],
      });
    } finally {
      await client.close();
    }
  });

  it('refuses a token for another resource (no token passthrough) and one without mcp:tools', async () => {
    const foreign = await as.mintAccessToken({
      sub: 'alice',
      scope: 'mcp:tools',
      audience: 'https://other.example.com',
    });
    await expect(connect(foreign)).rejects.toThrow();
    const res = await fetch(resource, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${await as.mintAccessToken({ sub: 'alice', scope: 'read', audience: resource })}`,
        'content-type': 'application/json',
      },
      body: '{}',
    });
    expect(res.status).toBe(403);
    expect(res.headers.get('www-authenticate')).toContain('resource_metadata=');
  });
});

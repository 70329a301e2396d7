/**
 * An MCP server (Streamable HTTP transport, stateless) whose authorization is tokenwarden's: the Protected
 * Resource Metadata document MCP clients discover (RFC 9728), 401s that point to it, and only access tokens
 * issued for this server (RFC 8707 audience). See docs/mcp.md.
 *
 *   ISSUER=https://login.example.com RESOURCE=https://mcp.example.com/mcp node --import tsx examples/mcp-server.ts
 */
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import express from 'express';
import { bearerAuth } from 'tokenwarden/express';
import type { Auth } from 'tokenwarden/server';
import { z } from 'zod';

export interface McpAppOptions {
  /** The authorization server clients get tokens from. */
  issuer: string;
  /** This MCP server's canonical URL: what clients send as `resource` and tokens carry in `aud`. */
  resource: string;
  /** Only for local development and tests (an http issuer). */
  allowInsecureRequests?: boolean;
}

/** tokenwarden's verified token, as the MCP SDK hands it to tool handlers (`extra.authInfo`). */
function authInfo(auth: Auth, resource: string): AuthInfo {
  return {
    token: auth.credentials.token,
    clientId: auth.info.clientId ?? '',
    scopes: [...auth.credentials.scopes],
    ...(auth.credentials.expiresAt !== undefined && { expiresAt: Math.floor(auth.credentials.expiresAt / 1000) }),
    resource: new URL(resource),
    extra: { sub: auth.uid },
  };
}

/** The MCP server's tools, built per request (stateless transport). */
function mcpServer(): McpServer {
  const server = new McpServer({ name: 'invoices', version: '1.0.0' });
  server.registerTool('whoami', { description: 'Who the access token speaks for' }, async (extra) => ({
    content: [{ type: 'text', text: String(extra.authInfo?.extra?.['sub'] ?? 'anonymous') }],
  }));
  server.registerTool(
    'invoice',
    { description: 'One invoice by number', inputSchema: { number: z.string() } },
    async ({ number }) => ({ content: [{ type: 'text', text: `invoice ${number}: 42.00 EUR` }] }),
  );
  return server;
}

export function createMcpApp(options: McpAppOptions): express.Express {
  const app = express();
  // Every request needs a token for this resource with the mcp:tools scope — except the metadata document,
  // which the middleware itself serves at /.well-known/oauth-protected-resource/mcp.
  app.use(
    bearerAuth({
      issuer: options.issuer,
      allowInsecureRequests: options.allowInsecureRequests === true,
      requiredScopes: ['mcp:tools'],
      protectedResource: {
        resource: options.resource,
        scopesSupported: ['mcp:tools'],
        resourceName: 'Invoices MCP server',
      },
    }),
  );
  app.use(express.json());
  app.post('/mcp', async (req, res) => {
    const server = mcpServer();
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => {
      void transport.close();
      void server.close();
    });
    await server.connect(transport);
    const request = Object.assign(req, { auth: authInfo(req.auth!, options.resource) });
    await transport.handleRequest(request, res, req.body);
  });
  // Stateless: no server-initiated stream, no session to delete.
  app.all('/mcp', (_req, res) => void res.status(405).set('allow', 'POST').end());
  return app;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const resource = process.env.RESOURCE ?? 'http://localhost:3000/mcp';
  createMcpApp({ issuer: process.env.ISSUER ?? 'https://login.example.com', resource }).listen(
    Number(new URL(resource).port || 3000),
  );
}

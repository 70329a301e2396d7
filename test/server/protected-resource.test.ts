/**
 * RFC 9728 without a framework: the metadata URL (§3.1), the document (§2, §3.2), which requests are answered,
 * the audience check, and hostile configuration. The adapter suite checks the same through five frameworks.
 */
import { describe, expect, it } from 'vitest';
import {
  type Auth,
  challenge,
  failure,
  protectedResource,
  protectedResourceMetadata,
  protectedResourceMetadataUrl,
} from '../../src/server/index.js';

const AS = 'https://login.example.com';

describe('protectedResourceMetadataUrl (RFC 9728 §3.1)', () => {
  it.each([
    ['https://api.example.com', 'https://api.example.com/.well-known/oauth-protected-resource'],
    ['https://api.example.com/', 'https://api.example.com/.well-known/oauth-protected-resource'],
    ['https://api.example.com/resource1', 'https://api.example.com/.well-known/oauth-protected-resource/resource1'],
    ['https://api.example.com/a/b/', 'https://api.example.com/.well-known/oauth-protected-resource/a/b/'],
    ['https://api.example.com:8443/mcp', 'https://api.example.com:8443/.well-known/oauth-protected-resource/mcp'],
    ['https://api.example.com:443/mcp', 'https://api.example.com/.well-known/oauth-protected-resource/mcp'],
    ['https://API.Example.com/MCP', 'https://api.example.com/.well-known/oauth-protected-resource/MCP'],
    ['https://api.example.com/x?tenant=1', 'https://api.example.com/.well-known/oauth-protected-resource/x?tenant=1'],
    ['https://api.example.com?tenant=1', 'https://api.example.com/.well-known/oauth-protected-resource?tenant=1'],
    ['http://127.0.0.1:3000/mcp', 'http://127.0.0.1:3000/.well-known/oauth-protected-resource/mcp'],
  ])('%s → %s', (resource, url) => {
    expect(protectedResourceMetadataUrl(resource)).toBe(url);
    expect(protectedResource({ resource }).metadataUrl).toBe(url);
  });
});

describe('protectedResourceMetadata (RFC 9728 §2)', () => {
  it('maps every option to its member, leaves out empty ones, keeps resource exactly as given', () => {
    const doc = protectedResourceMetadata({
      resource: 'https://API.example.com/mcp',
      authorizationServers: [AS, 'https://other.example.com/tenant', AS],
      scopesSupported: ['files:read', 'files:write'],
      bearerMethodsSupported: ['header'],
      resourceName: 'Files',
      resourceDocumentation: 'https://docs.example.com/files',
      resourcePolicyUri: 'https://example.com/policy',
      resourceTosUri: 'https://example.com/tos',
      jwksUri: 'https://api.example.com/jwks.json',
      resourceSigningAlgValuesSupported: ['ES256'],
      authorizationDetailsTypesSupported: ['payment_initiation'],
      dpopSigningAlgValuesSupported: ['ES256', 'EdDSA'],
      dpopBoundAccessTokensRequired: true,
      tlsClientCertificateBoundAccessTokens: false,
      signedMetadata: 'eyJhbGciOiJFUzI1NiJ9.e30.sig',
      extra: { 'resource_name#fr': 'Fichiers', custom_flag: true },
    });
    expect(doc).toEqual({
      resource: 'https://API.example.com/mcp',
      authorization_servers: [AS, 'https://other.example.com/tenant'],
      jwks_uri: 'https://api.example.com/jwks.json',
      scopes_supported: ['files:read', 'files:write'],
      bearer_methods_supported: ['header'],
      resource_signing_alg_values_supported: ['ES256'],
      resource_name: 'Files',
      resource_documentation: 'https://docs.example.com/files',
      resource_policy_uri: 'https://example.com/policy',
      resource_tos_uri: 'https://example.com/tos',
      authorization_details_types_supported: ['payment_initiation'],
      dpop_signing_alg_values_supported: ['ES256', 'EdDSA'],
      dpop_bound_access_tokens_required: true,
      signed_metadata: 'eyJhbGciOiJFUzI1NiJ9.e30.sig',
      'resource_name#fr': 'Fichiers',
      custom_flag: true,
    });
    expect(Object.isFrozen(doc)).toBe(true);
    expect(Object.isFrozen(doc.authorization_servers)).toBe(true);
    // Zero values are omitted (§3.2), except the meaningful empty bearer_methods_supported (§2).
    expect(
      protectedResourceMetadata({
        resource: 'https://api.example.com',
        authorizationServers: [],
        scopesSupported: [],
        resourceName: '',
        bearerMethodsSupported: [],
      }),
    ).toEqual({ resource: 'https://api.example.com', bearer_methods_supported: [] });
  });

  const bad: [string, unknown][] = [
    ['not an object', null],
    ['no resource', {}],
    ['relative resource', { resource: '/mcp' }],
    ['resource with a fragment', { resource: 'https://api.example.com/#frag' }],
    ['resource with an empty fragment', { resource: 'https://api.example.com/#' }],
    ['resource with credentials', { resource: 'https://user:pass@api.example.com' }],
    ['http resource on a public host', { resource: 'http://api.example.com' }],
    ['ftp resource', { resource: 'ftp://api.example.com' }],
    ['resource with a quote', { resource: 'https://api.example.com/a"b' }],
    ['resource with a space', { resource: 'https://api.example.com/a b' }],
    ['resource with a newline', { resource: 'https://api.example.com/\nx' }],
    ['authorization server with a query', { resource: 'https://a.example', authorizationServers: [`${AS}?x=1`] }],
    ['authorization server not a list', { resource: 'https://a.example', authorizationServers: AS }],
    ['authorization server not a string', { resource: 'https://a.example', authorizationServers: [42] }],
    ['scope with a space', { resource: 'https://a.example', scopesSupported: ['read write'] }],
    ['scope with a quote', { resource: 'https://a.example', scopesSupported: ['a"b'] }],
    ['empty scope', { resource: 'https://a.example', scopesSupported: [''] }],
    ['unknown bearer method', { resource: 'https://a.example', bearerMethodsSupported: ['cookie'] }],
    ['signing alg none', { resource: 'https://a.example', resourceSigningAlgValuesSupported: ['none'] }],
    ['dpop alg none', { resource: 'https://a.example', dpopSigningAlgValuesSupported: ['NONE'] }],
    ['http jwks_uri', { resource: 'https://a.example', jwksUri: 'http://a.example/jwks' }],
    ['extra replacing resource', { resource: 'https://a.example', extra: { resource: 'https://evil.example' } }],
    ['extra __proto__', { resource: 'https://a.example', extra: JSON.parse('{"__proto__": {"x": 1}}') }],
    ['extra not JSON', { resource: 'https://a.example', extra: { big: 10n } }],
    ['boolean not a boolean', { resource: 'https://a.example', dpopBoundAccessTokensRequired: 'yes' }],
    ['name not a string', { resource: 'https://a.example', resourceName: 42 }],
  ];
  it.each(bad)('refuses %s with a TokenwardenError at construction', (_name, options) => {
    expect(() => protectedResource(options as never)).toThrow(expect.objectContaining({ name: 'TokenwardenError' }));
  });

  it('allows http on loopback hosts, and elsewhere only with allowInsecureRequests', () => {
    for (const resource of ['http://localhost:3000/mcp', 'http://127.0.0.1:8080', 'http://[::1]:9000/x']) {
      expect(protectedResourceMetadata({ resource }).resource).toBe(resource);
    }
    expect(() => protectedResourceMetadata({ resource: 'http://mcp.internal' })).toThrow(
      expect.objectContaining({ code: 'ERR_INSECURE_ISSUER' }),
    );
    expect(protectedResourceMetadata({ resource: 'http://mcp.internal', allowInsecureRequests: true }).resource).toBe(
      'http://mcp.internal',
    );
  });
});

describe('protectedResource().answer: which requests get the document', () => {
  const resource = protectedResource({ resource: 'https://api.example.com/mcp', authorizationServers: [AS] });
  const node = (url: string, method = 'GET') => ({ headers: {}, url, method });

  it('answers GET and HEAD on the metadata path (any query), from Node and Fetch requests', () => {
    for (const input of [
      node('/.well-known/oauth-protected-resource/mcp'),
      node('/.well-known/oauth-protected-resource/mcp?x=1', 'HEAD'),
      node('/.well-known/oauth-protected-resource/mcp#x'),
      new Request('http://127.0.0.1/a/../.well-known/oauth-protected-resource/mcp?x=1'),
      node('http://evil.example/.well-known/oauth-protected-resource/mcp'),
      new Request('http://127.0.0.1/.well-known/oauth-protected-resource/mcp'),
    ]) {
      const answer = resource.answer(input);
      expect(answer?.status).toBe(200);
      expect(answer?.body).toBe(resource.metadata);
    }
    // Koa and Express routers rewrite url: the original target decides.
    expect(resource.answer(node('/'), '/.well-known/oauth-protected-resource/mcp')?.status).toBe(200);
    expect(resource.answer({ ...node('/'), originalUrl: '/.well-known/oauth-protected-resource/mcp' })?.status).toBe(
      200,
    );
  });

  it.each([
    '/.well-known/oauth-protected-resource',
    '/.well-known/oauth-protected-resource/mcp/',
    '/.well-known/oauth-protected-resource/MCP',
    '/.well-known/oauth-protected-resource/%6Dcp',
    '/.well-known/oauth-protected-resource/x/../mcp',
    '//.well-known/oauth-protected-resource/mcp',
    '/mcp/.well-known/oauth-protected-resource',
    '/.well-known/oauth-protected-resource/mcp%2F',
    '/.WELL-KNOWN/oauth-protected-resource/mcp',
    '*',
    '',
    'http://[bad',
  ])('does not answer %j (the exact path only)', (url) => {
    expect(resource.answer(node(url))).toBeUndefined();
  });

  it('does not answer a raw token, a header, or nothing', () => {
    for (const input of ['Bearer x', 'x', undefined, null]) expect(resource.answer(input)).toBeUndefined();
    for (const url of [
      'http://x/mcp',
      'http://x/.well-known/oauth-protected-resource/mcp/x',
      'http://x/?/.well-known/oauth-protected-resource/mcp',
    ]) {
      expect(resource.answer(new Request(url))).toBeUndefined();
    }
  });

  it('OPTIONS is a CORS preflight; other methods get 405 with Allow', () => {
    expect(resource.answer(node('/.well-known/oauth-protected-resource/mcp', 'OPTIONS'))).toMatchObject({
      status: 204,
      headers: { 'access-control-allow-origin': '*', allow: 'GET, HEAD, OPTIONS' },
    });
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'TRACE']) {
      expect(resource.answer(node('/.well-known/oauth-protected-resource/mcp', method))).toMatchObject({
        status: 405,
        headers: { allow: 'GET, HEAD, OPTIONS' },
      });
    }
  });

  it('maxAge sets Cache-Control', () => {
    const short = protectedResource({ resource: 'https://api.example.com', maxAge: '5m' });
    expect(short.answer(node('/.well-known/oauth-protected-resource'))?.headers['cache-control']).toBe(
      'public, max-age=300',
    );
  });
});

describe('protectedResource().checkAudience (RFC 8707)', () => {
  const resource = protectedResource({ resource: 'https://api.example.com' });
  const auth = (aud: unknown, tokenType: 'Bearer' | 'DPoP' = 'Bearer') =>
    ({ extra: { claims: aud === undefined ? {} : { aud }, strategy: 'jwt' }, credentials: { tokenType } }) as Auth;

  it('accepts a token that names the resource, alone or among others', () => {
    expect(resource.checkAudience(auth('https://api.example.com'))).toBeUndefined();
    expect(resource.checkAudience(auth(['https://other.example', 'https://api.example.com']))).toBeUndefined();
  });

  it.each([
    ['another audience', 'https://other.example'],
    ['a trailing slash', 'https://api.example.com/'],
    ['another case', 'https://API.example.com'],
    ['a prefix', 'https://api.example.com/mcp'],
    ['no aud', undefined],
    ['an empty list', []],
    ['a number', 42],
    ['an object', { 'https://api.example.com': true }],
  ])('refuses %s with 401 invalid_token', (_name, aud) => {
    expect(resource.checkAudience(auth(aud))).toMatchObject({ status: 401, error: 'invalid_token' });
  });

  it('answers a DPoP token in the DPoP scheme; requireAudience: false accepts anything', () => {
    expect(resource.checkAudience(auth('x', 'DPoP'))?.scheme).toBe('DPoP');
    const lax = protectedResource({ resource: 'https://api.example.com', requireAudience: false });
    expect(lax.checkAudience(auth(undefined))).toBeUndefined();
  });
});

describe('challenge with resource_metadata (RFC 9728 §5.1)', () => {
  const resourceMetadata = 'https://api.example.com/.well-known/oauth-protected-resource';
  it('is added to every scheme offered', () => {
    const dpop = { algs: ['ES256'] };
    expect(challenge({ ...failure('missing_token', 'x'), dpop }, { resourceMetadata })).toBe(
      `Bearer realm="api", resource_metadata="${resourceMetadata}", DPoP realm="api", algs="ES256", resource_metadata="${resourceMetadata}"`,
    );
    expect(
      challenge({ ...failure('invalid_dpop_proof', 'bad proof'), scheme: 'DPoP', dpop }, { resourceMetadata }),
    ).toBe(
      `DPoP realm="api", error="invalid_dpop_proof", error_description="bad proof", algs="ES256", resource_metadata="${resourceMetadata}"`,
    );
    expect(challenge(failure('temporarily_unavailable', 'x'), { resourceMetadata })).toBeUndefined();
  });
});

/**
 * OAuth 2.0 Protected Resource Metadata (RFC 9728): the document a resource server publishes about itself,
 * the URL it is published at (§3.1), and what every framework adapter does with it — answer the metadata
 * request unauthenticated, name that URL in every challenge (`resource_metadata`, §5.1), and accept only
 * tokens issued for the resource (RFC 8707, RFC 9728 §7.4). The one place for all of it: adapters only move
 * its answers between their framework's request and response.
 *
 * @module
 */
import { type Duration, toMs } from '../duration.js';
import { TokenwardenError } from '../errors.js';
import { type VerifyFailure, failure, isScopeToken } from './errors.js';
import { type NodeRequestLike, type TokenLocation, type VerifyInput, isFetchRequest } from './extract.js';
import { type Auth, freezeDeep } from './provider.js';

/**
 * The well-known URI suffix of RFC 9728 §3, registered for general-purpose OAuth protected resources.
 *
 * @example
 * ```ts
 * app.get(PROTECTED_RESOURCE_WELL_KNOWN, (_req, res) => res.json(protectedResourceMetadata(options)));
 * ```
 */
export const PROTECTED_RESOURCE_WELL_KNOWN = '/.well-known/oauth-protected-resource';

/**
 * What a resource server says about itself (RFC 9728 §2). `resource` is required; everything else is
 * optional. Member names follow this library's style; the document uses the RFC's names.
 *
 * @example
 * ```ts
 * const options: ProtectedResourceOptions = {
 *   resource: 'https://api.example.com',
 *   authorizationServers: ['https://login.example.com'],
 *   scopesSupported: ['orders:read', 'orders:write'],
 *   resourceName: 'Orders API',
 * };
 * ```
 */
export interface ProtectedResourceOptions {
  /**
   * The resource identifier (RFC 9728 §1.2, RFC 8707 §2): an `https` URL without a fragment (`http` only
   * for a loopback host, or with `allowInsecureRequests`). Published as `resource` exactly as given, the
   * metadata URL is formed from it (§3.1), and tokens must name it in `aud` (see `requireAudience`).
   */
  resource: string;
  /**
   * Issuer identifiers of the authorization servers that issue tokens for the resource (RFC 8414: `https`,
   * no query, no fragment). Under `bearerAuth()` the default is the verifier's `issuer` when it is one URL
   * or a list, and a server the verifier does not trust is refused at construction.
   */
  authorizationServers?: readonly string[];
  /** Scopes used to request access to the resource (`scopes_supported`; RECOMMENDED). */
  scopesSupported?: readonly string[];
  /**
   * How a bearer token may be sent (`bearer_methods_supported`): `[]` when only DPoP is accepted. Under
   * `bearerAuth()` the default follows the verifier's `tokenLocations` (`['header']` by default).
   */
  bearerMethodsSupported?: readonly TokenLocation[];
  /** Human-readable name (`resource_name`; RECOMMENDED). Language-tagged ones go in `extra`. */
  resourceName?: string;
  /** A page for developers (`resource_documentation`). */
  resourceDocumentation?: string;
  /** The data usage policy (`resource_policy_uri`). */
  resourcePolicyUri?: string;
  /** The terms of service (`resource_tos_uri`). */
  resourceTosUri?: string;
  /** The resource's own key set, for signed responses (`jwks_uri`; `https` only). */
  jwksUri?: string;
  /** Algorithms the resource signs responses with (`resource_signing_alg_values_supported`; never `none`). */
  resourceSigningAlgValuesSupported?: readonly string[];
  /** RFC 9396 authorization details types (`authorization_details_types_supported`). */
  authorizationDetailsTypesSupported?: readonly string[];
  /**
   * DPoP proof algorithms accepted (`dpop_signing_alg_values_supported`). Under `bearerAuth()` the default
   * is the verifier's `dpop.algorithms` when a `dpop` option is set.
   */
  dpopSigningAlgValuesSupported?: readonly string[];
  /** Only DPoP-bound tokens are accepted (`dpop_bound_access_tokens_required`). Under `bearerAuth()`: `dpop.required`. */
  dpopBoundAccessTokensRequired?: boolean;
  /** mTLS certificate-bound tokens are supported (`tls_client_certificate_bound_access_tokens`). Default `false`. */
  tlsClientCertificateBoundAccessTokens?: boolean;
  /** A JWT asserting the metadata, signed by a party clients trust (`signed_metadata`, §2.2). */
  signedMetadata?: string;
  /**
   * Further members: language-tagged names (`'resource_name#fr'`, §2.1) or extensions. They may not
   * replace a member the options above produce.
   */
  extra?: Readonly<Record<string, unknown>>;
  /**
   * Accept only tokens whose `aud` names `resource` (RFC 8707; required of MCP servers). Default `true`.
   * Set `false` when your authorization server puts another identifier in `aud` and the verifier's
   * `audience` checks that one.
   */
  requireAudience?: boolean;
  /** How long clients may cache the document (`Cache-Control: max-age`, §7.10). Default `'1h'`. */
  maxAge?: Duration;
  /** Allow `http:` URLs for hosts other than loopback ones. Only for development and tests. Default `false`. */
  allowInsecureRequests?: boolean;
}

/**
 * The metadata document (RFC 9728 §2), as served at the metadata URL.
 *
 * @example
 * ```ts
 * const doc: ProtectedResourceMetadata = protectedResourceMetadata({ resource, authorizationServers: [issuer] });
 * doc.resource; doc.authorization_servers; // the RFC's member names
 * ```
 */
export interface ProtectedResourceMetadata {
  readonly resource: string;
  readonly authorization_servers?: readonly string[];
  readonly jwks_uri?: string;
  readonly scopes_supported?: readonly string[];
  readonly bearer_methods_supported?: readonly TokenLocation[];
  readonly resource_signing_alg_values_supported?: readonly string[];
  readonly resource_name?: string;
  readonly resource_documentation?: string;
  readonly resource_policy_uri?: string;
  readonly resource_tos_uri?: string;
  readonly tls_client_certificate_bound_access_tokens?: boolean;
  readonly authorization_details_types_supported?: readonly string[];
  readonly dpop_signing_alg_values_supported?: readonly string[];
  readonly dpop_bound_access_tokens_required?: boolean;
  readonly signed_metadata?: string;
  readonly [member: string]: unknown;
}

/**
 * An answer to a request for the metadata document: `200` with the document (GET, HEAD), `204` for a CORS
 * preflight (OPTIONS), `405` for any other method.
 *
 * @example
 * ```ts
 * const answer: MetadataResponse | undefined = resource.answer(req);
 * if (answer) res.writeHead(answer.status, answer.headers).end(answer.body && JSON.stringify(answer.body));
 * ```
 */
export interface MetadataResponse {
  status: 200 | 204 | 405;
  headers: Record<string, string>;
  body?: ProtectedResourceMetadata | { error: string; error_description: string };
}

/**
 * A configured protected resource: its document, where it is served, and the checks adapters apply. Made
 * by {@link protectedResource}; the adapters make one from `bearerAuth({ protectedResource })`.
 *
 * @example
 * ```ts
 * const resource = protectedResource({ resource: 'https://api.example.com/mcp', authorizationServers: [issuer] });
 * resource.metadataUrl;  // 'https://api.example.com/.well-known/oauth-protected-resource/mcp'
 * resource.metadataPath; // '/.well-known/oauth-protected-resource/mcp'
 * ```
 */
export interface ProtectedResource {
  /** The document (frozen). */
  readonly metadata: ProtectedResourceMetadata;
  /** The metadata URL formed from the resource identifier (RFC 9728 §3.1), for `resource_metadata`. */
  readonly metadataUrl: string;
  /** The path of {@link metadataUrl}, where the document is answered. */
  readonly metadataPath: string;
  /** Whether tokens must name the resource in `aud`. */
  readonly requireAudience: boolean;
  /**
   * The answer when `input` asks for the metadata document (its path is {@link metadataPath}, any query),
   * else `undefined`. `originalUrl` is the request target when the framework rewrote the request's `url`.
   */
  answer(input: VerifyInput, originalUrl?: string): MetadataResponse | undefined;
  /** `undefined` when `auth` is for this resource (or audiences are not required), else the 401 failure. */
  checkAudience(auth: Auth): VerifyFailure | undefined;
}

const MEMBERS = [
  'resource',
  'authorization_servers',
  'jwks_uri',
  'scopes_supported',
  'bearer_methods_supported',
  'resource_signing_alg_values_supported',
  'resource_name',
  'resource_documentation',
  'resource_policy_uri',
  'resource_tos_uri',
  'tls_client_certificate_bound_access_tokens',
  'authorization_details_types_supported',
  'dpop_signing_alg_values_supported',
  'dpop_bound_access_tokens_required',
  'signed_metadata',
] as const;

const URI_CHARS = /^[A-Za-z0-9\-._~:/?#[\]@!$&'()*+,;=%]+$/; // RFC 3986 §2
const HEADER_SAFE = /^[\x21\x23-\x5b\x5d-\x7e]+$/; // fits a quoted-string in WWW-Authenticate as is
const NOT_FOR_RESOURCE = failure('invalid_token', 'token is not for this resource');
const METHODS = 'GET, HEAD, OPTIONS';

/**
 * Checks `options` (throwing `ERR_CONFIG`) and returns the RFC 9728 document: members with no value are
 * left out (§3.2), `resource` is published exactly as configured (clients compare it code point by code
 * point, §3.3 and §6). Use it to serve the document from a route of your own.
 *
 * @example
 * ```ts
 * import { protectedResourceMetadata, protectedResourceMetadataUrl } from 'tokenwarden/server';
 * const options = { resource: 'https://api.example.com', authorizationServers: ['https://login.example.com'] };
 * app.get(new URL(protectedResourceMetadataUrl(options.resource)).pathname, (_req, res) => {
 *   res.json(protectedResourceMetadata(options));
 * });
 * ```
 */
export function protectedResourceMetadata(options: ProtectedResourceOptions): ProtectedResourceMetadata {
  if (options === null || typeof options !== 'object') {
    throw new TokenwardenError('ERR_CONFIG', 'protectedResource options must be an object');
  }
  const insecure = options.allowInsecureRequests === true;
  const doc: Record<string, unknown> = {
    resource: checkUrl(options.resource, 'protectedResource.resource', { insecure, query: true }),
  };
  if (options.authorizationServers !== undefined) {
    const servers = list(options.authorizationServers, 'protectedResource.authorizationServers', (s, name) =>
      checkUrl(s, name, { insecure, query: false }),
    );
    if (servers.length > 0) doc['authorization_servers'] = servers;
  }
  if (options.jwksUri !== undefined) {
    doc['jwks_uri'] = checkUrl(options.jwksUri, 'protectedResource.jwksUri', { insecure, query: true });
  }
  addList(doc, 'scopes_supported', options.scopesSupported, 'protectedResource.scopesSupported', (s, name) => {
    if (!isScopeToken(s)) throw config(`${name} must be a scope name (no spaces, quotes or backslashes)`);
    return s;
  });
  if (options.bearerMethodsSupported !== undefined) {
    // `[]` is meaningful here (no bearer methods: DPoP only), so it is kept (§2).
    doc['bearer_methods_supported'] = list(
      options.bearerMethodsSupported,
      'protectedResource.bearerMethodsSupported',
      (m, name) => {
        if (m !== 'header' && m !== 'body' && m !== 'query')
          throw config(`${name} must be 'header', 'body' or 'query'`);
        return m;
      },
    );
  }
  addList(
    doc,
    'resource_signing_alg_values_supported',
    options.resourceSigningAlgValuesSupported,
    'protectedResource.resourceSigningAlgValuesSupported',
    algorithm,
  );
  addText(doc, 'resource_name', options.resourceName, 'protectedResource.resourceName');
  for (const [member, key] of [
    ['resource_documentation', 'resourceDocumentation'],
    ['resource_policy_uri', 'resourcePolicyUri'],
    ['resource_tos_uri', 'resourceTosUri'],
  ] as const) {
    const value = options[key];
    if (value !== undefined) doc[member] = checkUrl(value, `protectedResource.${key}`, { insecure: true, query: true });
  }
  addFlag(doc, 'tls_client_certificate_bound_access_tokens', options.tlsClientCertificateBoundAccessTokens);
  addList(
    doc,
    'authorization_details_types_supported',
    options.authorizationDetailsTypesSupported,
    'protectedResource.authorizationDetailsTypesSupported',
    (t, name) => {
      if (t === '') throw config(`${name} must be a non-empty string`);
      return t;
    },
  );
  addList(
    doc,
    'dpop_signing_alg_values_supported',
    options.dpopSigningAlgValuesSupported,
    'protectedResource.dpopSigningAlgValuesSupported',
    algorithm,
  );
  addFlag(doc, 'dpop_bound_access_tokens_required', options.dpopBoundAccessTokensRequired);
  addText(doc, 'signed_metadata', options.signedMetadata, 'protectedResource.signedMetadata');
  if (options.extra !== undefined) {
    if (options.extra === null || typeof options.extra !== 'object' || Array.isArray(options.extra)) {
      throw config('protectedResource.extra must be an object');
    }
    for (const [member, value] of Object.entries(options.extra)) {
      if (value === undefined) continue;
      if ((MEMBERS as readonly string[]).includes(member) && member in doc) {
        throw config(`protectedResource.extra may not replace ${member}`);
      }
      if (member === '__proto__') throw config('protectedResource.extra may not have a __proto__ member');
      doc[member] = jsonValue(value, `protectedResource.extra.${member}`);
    }
  }
  return freezeDeep(doc) as ProtectedResourceMetadata;
}

/**
 * The URL of the metadata document of `resource` (RFC 9728 §3.1): `/.well-known/oauth-protected-resource`
 * inserted between the host and the path (a lone trailing `/` removed), query kept. Throws `ERR_CONFIG`
 * for a `resource` that is not an absolute URL.
 *
 * @example
 * ```ts
 * protectedResourceMetadataUrl('https://api.example.com');     // 'https://api.example.com/.well-known/oauth-protected-resource'
 * protectedResourceMetadataUrl('https://api.example.com/mcp'); // 'https://api.example.com/.well-known/oauth-protected-resource/mcp'
 * ```
 */
export function protectedResourceMetadataUrl(resource: string): string {
  const url = parseUrl(resource, 'resource');
  const path = url.pathname === '/' ? '' : url.pathname;
  return `${url.origin}${PROTECTED_RESOURCE_WELL_KNOWN}${path}${url.search}`;
}

/**
 * Builds a {@link ProtectedResource} from checked options (throws `ERR_CONFIG`). Adapters call it through
 * `bearerAuth({ protectedResource })`; call it yourself to serve the document and check audiences in a
 * framework tokenwarden has no adapter for.
 *
 * @example
 * ```ts
 * const resource = protectedResource({ resource: 'https://api.example.com', authorizationServers: [issuer] });
 * const answer = resource.answer(request); // a Fetch Request or a Node request
 * if (answer) return Response.json(answer.body, { status: answer.status, headers: answer.headers });
 * ```
 */
export function protectedResource(options: ProtectedResourceOptions): ProtectedResource {
  const metadata = protectedResourceMetadata(options);
  const metadataUrl = protectedResourceMetadataUrl(metadata.resource);
  if (!HEADER_SAFE.test(metadataUrl)) {
    throw config('protectedResource.resource must not contain quotes, backslashes or spaces');
  }
  const metadataPath = new URL(metadataUrl).pathname;
  const requireAudience = options.requireAudience !== false;
  const maxAgeSeconds = Math.floor(toMs(options.maxAge ?? '1h', 'protectedResource.maxAge') / 1000);
  const cors = { 'access-control-allow-origin': '*' };
  const ok: MetadataResponse = {
    status: 200,
    headers: {
      ...cors,
      'cache-control': `public, max-age=${maxAgeSeconds}`,
      'content-type': 'application/json; charset=utf-8',
    },
    body: metadata,
  };
  const resource = metadata.resource;
  return Object.freeze({
    metadata,
    metadataUrl,
    metadataPath,
    requireAudience,
    answer(input: VerifyInput, originalUrl?: string): MetadataResponse | undefined {
      const method = methodFor(input, metadataPath, originalUrl);
      if (method === undefined) return undefined;
      if (method === 'GET' || method === 'HEAD') return { ...ok, headers: { ...ok.headers } };
      if (method === 'OPTIONS') {
        return {
          status: 204,
          headers: {
            ...cors,
            allow: METHODS,
            'access-control-allow-methods': METHODS,
            'access-control-allow-headers': '*',
            'access-control-max-age': '86400',
          },
        };
      }
      return {
        status: 405,
        headers: { allow: METHODS, 'content-type': 'application/json; charset=utf-8' },
        body: { error: 'invalid_request', error_description: 'method not allowed' },
      };
    },
    checkAudience(auth: Auth): VerifyFailure | undefined {
      if (!requireAudience) return undefined;
      const aud = auth.extra.claims['aud'];
      const named = typeof aud === 'string' ? aud === resource : Array.isArray(aud) && aud.includes(resource);
      if (named) return undefined;
      return auth.credentials.tokenType === 'DPoP' ? { ...NOT_FOR_RESOURCE, scheme: 'DPoP' } : NOT_FOR_RESOURCE;
    },
  });
}

/**
 * The method of a Fetch or Node request for exactly `path` (any query), or `undefined`: another path, a raw
 * token or a header. Called on every request the middleware sees: an origin-form target (what clients send)
 * is compared as it is, and a URL is parsed only when it may be the one (a Fetch request's URL is
 * serialized, its path in it as it is) or is in absolute form (as proxies send, RFC 9112 §3.2.2).
 */
function methodFor(input: VerifyInput, path: string, originalUrl?: string): string | undefined {
  if (input === null || typeof input !== 'object') return undefined;
  if (isFetchRequest(input)) {
    if (typeof input.url !== 'string' || !input.url.includes(path)) return undefined;
    try {
      return new URL(input.url).pathname === path ? input.method.toUpperCase() : undefined;
    } catch {
      return undefined;
    }
  }
  const node = input as NodeRequestLike;
  const raw = originalUrl ?? node.originalUrl ?? node.url;
  if (typeof raw !== 'string') return undefined;
  let same: boolean;
  if (raw.startsWith('/')) {
    const after = raw.charCodeAt(path.length); // NaN at the end
    same = raw.startsWith(path) && (raw.length === path.length || after === 0x3f || after === 0x23); // ? or #
  } else {
    try {
      same = new URL(raw).pathname === path;
    } catch {
      return undefined;
    }
  }
  return same ? (node.method ?? 'GET').toUpperCase() : undefined;
}

function config(message: string): TokenwardenError {
  return new TokenwardenError('ERR_CONFIG', message);
}

function parseUrl(value: unknown, name: string): URL {
  if (typeof value !== 'string' || value === '') throw config(`${name} must be an absolute URL`);
  try {
    return new URL(value);
  } catch {
    throw config(`${name} must be an absolute URL`);
  }
}

function isLoopback(hostname: string): boolean {
  return (
    hostname === 'localhost' ||
    hostname.endsWith('.localhost') ||
    hostname === '[::1]' ||
    /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname)
  );
}

/** An `https` URL (or `http` on loopback / when insecure), no fragment, no credentials; query only where allowed. */
function checkUrl(value: unknown, name: string, rules: { insecure: boolean; query: boolean }): string {
  const url = parseUrl(value, name);
  const text = value as string;
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && (rules.insecure || isLoopback(url.hostname)))) {
    throw new TokenwardenError(
      url.protocol === 'http:' ? 'ERR_INSECURE_ISSUER' : 'ERR_CONFIG',
      `${name} must be an https URL (http only for loopback hosts or with allowInsecureRequests)`,
    );
  }
  if (text.includes('#')) throw config(`${name} must not have a fragment`);
  if (url.username !== '' || url.password !== '') throw config(`${name} must not carry credentials`);
  if (!rules.query && text.includes('?')) throw config(`${name} must not have a query`);
  if (!URI_CHARS.test(text)) throw config(`${name} must be a URI: no spaces, quotes or other unencoded characters`);
  return text;
}

function list<T>(value: unknown, name: string, check: (item: string, name: string) => T): T[] {
  if (!Array.isArray(value)) throw config(`${name} must be a list`);
  const out: T[] = [];
  value.forEach((item, n) => {
    if (typeof item !== 'string') throw config(`${name}[${n}] must be a string`);
    const checked = check(item, `${name}[${n}]`);
    if (!out.includes(checked)) out.push(checked);
  });
  return out;
}

function addList(
  doc: Record<string, unknown>,
  member: string,
  value: readonly string[] | undefined,
  name: string,
  check: (item: string, name: string) => string,
): void {
  if (value === undefined) return;
  const items = list(value, name, check);
  if (items.length > 0) doc[member] = items; // zero values are omitted (§3.2)
}

function addText(doc: Record<string, unknown>, member: string, value: unknown, name: string): void {
  if (value === undefined) return;
  if (typeof value !== 'string') throw config(`${name} must be a string`);
  if (value !== '') doc[member] = value;
}

function addFlag(doc: Record<string, unknown>, member: string, value: unknown): void {
  if (value === undefined) return;
  if (typeof value !== 'boolean') throw config(`${member} must be a boolean`);
  if (value) doc[member] = true; // false is the default: left out
}

function algorithm(alg: string, name: string): string {
  if (alg === '' || alg.toLowerCase() === 'none') throw config(`${name} must be a JWS algorithm other than none`);
  return alg;
}

function jsonValue(value: unknown, name: string): unknown {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch {
    throw config(`${name} must be a JSON value`);
  }
  if (text === undefined) throw config(`${name} must be a JSON value`);
  return JSON.parse(text) as unknown;
}

/**
 * Finding the access token in a request (RFC 6750 §2, RFC 9449 §7.1): the `Authorization` header by default
 * (`Bearer`, and `DPoP` when the verifier accepts DPoP); the `access_token` query parameter and form body
 * field only when enabled (always bearer). A request that carries a token in more than one place, or two
 * `Authorization` headers, is an `invalid_request`.
 *
 * @module
 */
import { readAtMost } from '../http/transport.js';
import { type VerifyFailure, failure } from './errors.js';

/**
 * Where a bearer token may be sent. Default: `['header']` (RFC 6750 §2.1; query and body are discouraged).
 *
 * @example
 * ```ts
 * // Server-sent events cannot set headers: accept ?access_token= on that route only (its own verifier:
 * // a shared one reads the locations it was made with).
 * app.get('/events', bearerAuth({ issuer, audience, tokenLocations: ['header', 'query'] }), stream);
 * ```
 */
export type TokenLocation = 'header' | 'query' | 'body';

/**
 * The parts of a Node.js request (`http.IncomingMessage`, which Express, Koa and Fastify requests are or
 * wrap) that extraction reads. `body` is a body a framework already parsed, if any.
 *
 * @example
 * ```ts
 * createServer(async (req, res) => {
 *   const result = await verify(req); // an IncomingMessage is a NodeRequestLike
 * });
 * ```
 */
export interface NodeRequestLike {
  headers: Record<string, string | string[] | undefined>;
  rawHeaders?: string[];
  url?: string;
  /** The URL before a router rewrote `url` (Express, connect and Fastify set it); read for DPoP's `htu`. */
  originalUrl?: string;
  method?: string;
  body?: unknown;
  /** The connection: a TLS socket (`encrypted: true`) tells an HTTPS request from an HTTP one, for DPoP's `htu`. */
  socket?: object | null;
}

/**
 * What `verify()` accepts: a raw token, an `Authorization` header value (`'Bearer …'`), a Fetch `Request`,
 * a Node.js request, or nothing (a request without a token).
 *
 * @example
 * ```ts
 * await verify(token); // raw
 * await verify(req.headers.authorization); // 'Bearer …', or undefined
 * await verify(request); // a Fetch Request (Hono, Next.js route handlers, Deno, Bun)
 * await verify(req); // a Node.js IncomingMessage (Express, Koa's ctx.req, Fastify's request.raw)
 * ```
 */
export type VerifyInput = string | Request | NodeRequestLike | null | undefined;

/** The `Authorization` schemes a token may be presented with. */
export type TokenScheme = 'Bearer' | 'DPoP';

/** A token found in a request, and the scheme it came with (`Bearer` for a raw token, a query or body one). */
export interface PresentedToken {
  token: string;
  scheme: TokenScheme;
  /** Found in the `Authorization` header, whose value must hold nothing after the token (see {@link malformation}). */
  header?: true;
}

const NO_TOKEN = failure('missing_token', 'bearer token required');
const MALFORMED_HEADER = failure('invalid_request', 'malformed Authorization header');
const MALFORMED_DPOP_HEADER: VerifyFailure = { ...MALFORMED_HEADER, scheme: 'DPoP' };
const BEARER_ONLY: readonly TokenScheme[] = ['Bearer'];
const TWO_HEADERS = failure('invalid_request', 'more than one Authorization header');
const TWO_TOKENS = failure('invalid_request', 'bearer token sent in more than one place');
const TOO_LARGE = failure('invalid_token', 'token too large');
const MALFORMED_TOKEN = failure('invalid_token', 'malformed token');
const MALFORMED_URL = failure('invalid_request', 'malformed request URL');
const EMPTY_PARAMETER = failure('invalid_request', 'empty access_token parameter');
const TOKEN_SYNTAX = /^[A-Za-z0-9\-._~+/]+=*$/; // RFC 6750 §2.1 b64token
const HEADER_JUNK = /[\s,]/;

/**
 * Why a found token cannot be one, or `undefined`: a header value with more after the token ("Bearer a b",
 * "Bearer a, Bearer b" from merged duplicate headers) is a malformed request; a token outside the RFC 6750
 * §2.1 `b64token` syntax is a malformed token. Kept apart from {@link extractPresented} so that the verifier
 * runs it only for tokens its cache does not know (a cached token passed it).
 *
 * @example
 * ```ts
 * malformation({ token: 'a b', scheme: 'Bearer', header: true }); // { error: 'invalid_request', … }
 * malformation({ token: 'abc', scheme: 'Bearer' }); // undefined
 * ```
 */
export function malformation(presented: PresentedToken): VerifyFailure | undefined {
  const { token } = presented;
  if (presented.header === true && HEADER_JUNK.test(token)) {
    return presented.scheme === 'DPoP' ? MALFORMED_DPOP_HEADER : MALFORMED_HEADER;
  }
  return TOKEN_SYNTAX.test(token) ? undefined : MALFORMED_TOKEN;
}

/**
 * Returns the one bearer token in `input`, or the failure that explains why there is none. `body` is a
 * parsed form body (an object, `URLSearchParams` or `FormData`), used when `'body'` is enabled.
 * Header values longer than `maxLength` (plus room for the scheme) are refused before they are parsed; the
 * caller checks the token's own length and syntax. Only the `Bearer` scheme is read: a `DPoP` token needs
 * its proof checked, which the verifier does.
 *
 * @example
 * ```ts
 * extractToken('Bearer abc', { locations: ['header'], maxLength: 16_384 }); // 'abc'
 * extractToken('Basic dXNlcjpwYXNz', { locations: ['header'], maxLength: 16_384 }); // { error: 'missing_token', … }
 * ```
 */
export function extractToken(
  input: VerifyInput,
  options: { locations: readonly TokenLocation[]; maxLength: number },
  body?: unknown,
): string | VerifyFailure {
  const found = extractPresented(input, { ...options, schemes: BEARER_ONLY }, body);
  if ('error' in found) return found;
  return found.header === true && HEADER_JUNK.test(found.token) ? MALFORMED_HEADER : found.token;
}

/**
 * The one token in `input` with the scheme it was presented with (`schemes` lists the `Authorization`
 * schemes read; others count as no token), or the failure that explains why there is none.
 */
export function extractPresented(
  input: VerifyInput,
  options: { locations: readonly TokenLocation[]; maxLength: number; schemes: readonly TokenScheme[] },
  body?: unknown,
): PresentedToken | VerifyFailure {
  if (input === null || input === undefined) return NO_TOKEN;
  if (typeof input === 'string') {
    if (input.length > options.maxLength + 64) return TOO_LARGE;
    // A raw token has no space or tab; anything else is a header value.
    if (input.includes(' ') || input.includes('\t') || (input.length <= 6 && /^(?:bearer|dpop)$/i.test(input))) {
      return fromHeader(input, options.maxLength, options.schemes) ?? NO_TOKEN;
    }
    return input === '' ? NO_TOKEN : { token: input, scheme: 'Bearer' };
  }
  const { locations } = options;
  let fromAuthorization: PresentedToken | undefined;
  if (locations.includes('header')) {
    const header = authorizationHeader(input);
    if (typeof header === 'object') return header;
    if (header !== undefined) {
      const token = fromHeader(header, options.maxLength, options.schemes);
      if (token !== undefined && 'error' in token) return token;
      fromAuthorization = token;
    }
    // Header only (the default): no list to build.
    if (locations.length === 1) return fromAuthorization ?? NO_TOKEN;
  }
  const found: PresentedToken[] = fromAuthorization === undefined ? [] : [fromAuthorization];
  if (locations.includes('query')) {
    const url = input.url;
    // Parsed only when it may hold the parameter: by name, or percent-encoded (`access%5Ftoken=` is the same
    // name once decoded, and must count as a second token beside a header one: RFC 6750 §3.1).
    if (typeof url === 'string' && (url.includes('access_token=') || queryHasEscape(url))) {
      let values: string[];
      try {
        values = new URL(url, 'http://localhost').searchParams.getAll('access_token');
      } catch {
        // A request target no URL parser takes ("//a[b?…"): the client's fault, not a server error.
        return MALFORMED_URL;
      }
      for (const token of values) found.push({ token, scheme: 'Bearer' });
    }
  }
  if (locations.includes('body')) {
    for (const token of bodyTokens(input, body)) found.push({ token, scheme: 'Bearer' });
  }
  if (found.length > 1) return TWO_TOKENS;
  const [presented] = found;
  if (presented === undefined) return NO_TOKEN;
  // Only a query or body parameter can be empty here: an empty header token is malformed in fromHeader().
  return presented.token === '' ? EMPTY_PARAMETER : presented;
}

/**
 * Whether `input` is a request whose form body should be read for a token (RFC 6750 §2.2: not GET, and
 * `application/x-www-form-urlencoded`).
 */
export function hasFormBody(input: VerifyInput): boolean {
  if (input === null || input === undefined || typeof input === 'string') return false;
  const method = (input.method ?? 'GET').toUpperCase();
  if (method === 'GET' || method === 'HEAD') return false;
  const type = isFetchRequest(input) ? input.headers.get('content-type') : headerValue(input.headers['content-type']);
  return typeof type === 'string' && type.toLowerCase().startsWith('application/x-www-form-urlencoded');
}

/**
 * Reads a Fetch request's form body (from a clone, so the handler can still read it), refusing bodies
 * larger than `maxBytes`. Returns `undefined` when there is no usable body: none, too large, already read
 * (by a middleware before this one: `clone()` throws then), or cut off (the client went away mid-body) —
 * a request is never a thrown error (`verify()` resolves; a header token is still read).
 */
export async function readFormBody(request: Request, maxBytes: number): Promise<URLSearchParams | undefined> {
  let stream: ReadableStream<Uint8Array> | null;
  try {
    stream = request.clone().body;
  } catch {
    return undefined; // "Body is unusable": already consumed
  }
  if (!stream) return undefined;
  let body: Uint8Array | undefined;
  try {
    body = await readAtMost(stream, maxBytes, request.headers.get('content-length'));
  } catch {
    return undefined; // the stream errored: the client aborted the upload
  }
  return body === undefined ? undefined : new URLSearchParams(Buffer.from(body).toString('utf8'));
}

/** Whether `input` is a Fetch API `Request` (or shaped like one). */
export function isFetchRequest(input: object): input is Request {
  return typeof (input as { headers?: { get?: unknown } }).headers?.get === 'function';
}

function authorizationHeader(input: Request | NodeRequestLike): string | VerifyFailure | undefined {
  if (isFetchRequest(input)) return input.headers.get('authorization') ?? undefined;
  const header = input.headers['authorization'];
  if (Array.isArray(header)) return header.length > 1 ? TWO_HEADERS : header[0];
  const { rawHeaders } = input;
  if (!Array.isArray(rawHeaders)) return header;
  // Node keeps only the first of repeated Authorization headers in `headers`; rawHeaders has them all. But
  // `headers` is what the app sees: a middleware before this one may have set the header there (a session
  // cookie turned into a bearer token) or removed it, and rawHeaders still holds what the client sent.
  // rawHeaders decides only while `headers` holds what Node parsed (the first value, or all of them joined).
  let first: string | undefined;
  let count = 0;
  let joined = '';
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    if (name.length === 13 && name.toLowerCase() === 'authorization') {
      const value = rawHeaders[i + 1] ?? '';
      joined = count === 0 ? value : `${joined}, ${value}`;
      if (count++ === 0) first = value;
    }
  }
  if (header !== first && header !== joined) return header; // rewritten by the app
  return count > 1 ? TWO_HEADERS : header;
}

/**
 * The token in a header value, `undefined` when the header uses a scheme not in `schemes` (`Basic …`), or
 * a failure when it is malformed. The length is checked before anything else looks at the value.
 */
function fromHeader(
  value: string,
  maxLength: number,
  schemes: readonly TokenScheme[],
): PresentedToken | VerifyFailure | undefined {
  if (value.length > maxLength + 64) return TOO_LARGE;
  // Only HTTP's whitespace (SP, HTAB) around the value is dropped, as an HTTP parser drops it: not the
  // Unicode spaces String#trim() also drops ("Bearer <token>\u00a0" is malformed, not the token).
  let from = 0;
  let to = value.length;
  while (from < to && (value[from] === ' ' || value[from] === '\t')) from++;
  while (to > from && (value[to - 1] === ' ' || value[to - 1] === '\t')) to--;
  // The scheme ends at the first SP or HTAB: "Bearer\t<token>" is a malformed Bearer header, not another scheme.
  let end = from;
  while (end < to && value[end] !== ' ' && value[end] !== '\t') end++;
  const name = value.slice(from, end).toLowerCase();
  const scheme = name === 'bearer' ? 'Bearer' : name === 'dpop' ? 'DPoP' : undefined;
  if (scheme === undefined || !schemes.includes(scheme)) return undefined;
  const malformed = scheme === 'DPoP' ? MALFORMED_DPOP_HEADER : MALFORMED_HEADER;
  // RFC 6750 §2.1: the scheme, 1*SP, the token. Spaces are skipped; a tab stays in front of the token and
  // makes it malformed (malformation(): no whitespace in a token).
  let start = end;
  while (start < to && value[start] === ' ') start++;
  if (start === to) return malformed;
  const token = value.slice(start, to);
  // One token, no parameters: "Bearer a b" and "Bearer a, Bearer b" (merged duplicate headers) are malformed,
  // which malformation() tells, once per token the verifier does not know.
  return { token, scheme, header: true };
}

function bodyTokens(input: Request | NodeRequestLike, parsed: unknown): string[] {
  if (!hasFormBody(input)) return [];
  const body = parsed ?? (isFetchRequest(input) ? undefined : input.body);
  if (body === null || body === undefined || typeof body !== 'object') return [];
  if (body instanceof URLSearchParams) return body.getAll('access_token');
  if (typeof FormData !== 'undefined' && body instanceof FormData) {
    return body.getAll('access_token').filter((v): v is string => typeof v === 'string');
  }
  const value = (body as Record<string, unknown>)['access_token'];
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.map(String);
  return [];
}

/** Whether the query of a request target holds a percent-encoding. */
function queryHasEscape(url: string): boolean {
  const query = url.indexOf('?');
  return query >= 0 && url.indexOf('%', query) >= 0;
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/**
 * The values of the request's `DPoP` headers (RFC 9449 §4.3: there must be exactly one). Repeated headers
 * that a runtime merged into one value are split again at the comma, which no compact JWT contains.
 */
export function dpopHeaders(input: Request | NodeRequestLike): string[] {
  let values: string[];
  if (isFetchRequest(input)) {
    const value = input.headers.get('dpop');
    values = value === null ? [] : [value];
  } else if (Array.isArray(input.rawHeaders)) {
    values = [];
    const raw = input.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i] as string;
      if (name.length === 4 && name.toLowerCase() === 'dpop') values.push(raw[i + 1] ?? '');
    }
  } else {
    const value = input.headers['dpop'];
    values = value === undefined ? [] : Array.isArray(value) ? value : [value];
  }
  return values.flatMap((v) => v.split(','));
}

/** The first value of a request header (names in lower case). */
export function requestHeader(input: Request | NodeRequestLike, name: string): string | undefined {
  if (isFetchRequest(input)) return input.headers.get(name) ?? undefined;
  return headerValue(input.headers[name]);
}

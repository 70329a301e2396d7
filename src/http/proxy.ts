/**
 * Sending tokenwarden's own requests (token endpoint, discovery, JWKS, introspection, revocation, userinfo)
 * through an HTTP(S) proxy: a fixed proxy URL, or `'env'` — the `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/
 * `NO_PROXY` variables read the way curl reads them, on every request.
 *
 * The proxying is undici's `ProxyAgent` (CONNECT tunnels for `https:` targets, absolute-form requests for
 * `http:` ones, as curl does). undici is imported on the first proxied request only: a process that sets
 * no proxy never loads it. Credentials in a proxy URL become a `Proxy-Authorization` header and are never
 * shown: every description of a proxy is {@link redactProxyUrl}'d, and undici never sees the URL's
 * user-info.
 *
 * @module
 */
import { BlockList, isIP } from 'node:net';
import { domainToASCII } from 'node:url';
import type { Dispatcher } from 'undici';
import { TokenwardenError } from '../errors.js';
import type { FetchLike } from './transport.js';

/**
 * Where tokenwarden's own requests go: `'env'` (the proxy environment variables, like curl) or a proxy URL
 * (`'http://proxy.internal:3128'`, `'https://user:pass@proxy.example.com'`).
 *
 * @example
 * ```ts
 * const proxy: ProxyOption = process.env.CORP_PROXY ?? 'env';
 * clientCredentials({ issuer, clientId, clientSecret, proxy });
 * ```
 */
export type ProxyOption = 'env' | (string & {});

/** Reads which proxy a proxy-aware fetch uses for a URL (for error messages), without credentials. */
const PROXY_FOR = Symbol('tokenwarden.proxyFor');

type ProxyAwareFetch = FetchLike & { [PROXY_FOR]?: (url: string) => string | undefined };

/**
 * Returns a `fetch` that sends every request through `proxy`. Throws `ERR_CONFIG` (without the URL's
 * credentials) when `proxy` is not `'env'` or an `http:`/`https:` URL. With `'env'`, the variables are read
 * on each request; a malformed variable fails that request with `ERR_CONFIG` naming the variable.
 *
 * @example
 * ```ts
 * import { proxyFetch } from 'tokenwarden';
 * const viaProxy = proxyFetch('http://proxy.internal:3128');
 * const res = await viaProxy('https://login.example.com/.well-known/openid-configuration');
 * ```
 */
export function proxyFetch(proxy: ProxyOption, name = 'proxy'): FetchLike {
  let choose: (url: URL) => ParsedProxy | undefined;
  if (proxy === 'env') {
    choose = (url) => proxyFromEnv(url, process.env);
  } else {
    const fixed = parseProxyUrl(proxy, name);
    choose = () => fixed;
  }
  const fetchViaProxy: ProxyAwareFetch = async (input, init) => {
    const url = new URL(typeof input === 'string' ? input : input instanceof URL ? input.href : input.url);
    const chosen = choose(url);
    if (chosen === undefined) return globalThis.fetch(input, init);
    const { fetch: undiciFetch, dispatcher } = await agentFor(chosen);
    const request = input instanceof Request ? requestInit(input) : {};
    const response = await undiciFetch(url.href, {
      ...request,
      ...(init as object),
      dispatcher,
    } as Parameters<typeof undiciFetch>[1]);
    return response as unknown as Response;
  };
  fetchViaProxy[PROXY_FOR] = (target) => {
    try {
      return choose(new URL(target))?.display;
    } catch {
      return undefined;
    }
  };
  return fetchViaProxy;
}

/**
 * The transport of a component that takes both `fetch` and `proxy`: `proxy` builds a {@link proxyFetch};
 * both at once is `ERR_CONFIG` (give your own fetch a dispatcher instead).
 *
 * @example
 * ```ts
 * const transport = resolveTransport(options.fetch, options.proxy); // FetchLike | undefined
 * ```
 */
export function resolveTransport(fetch: FetchLike | undefined, proxy: ProxyOption | undefined): FetchLike | undefined {
  if (proxy === undefined) return fetch;
  if (fetch !== undefined) {
    throw new TokenwardenError(
      'ERR_CONFIG',
      'pass either fetch or proxy, not both (to proxy your own fetch, give it a dispatcher)',
    );
  }
  return proxyFetch(proxy);
}

/**
 * The proxy a fetch from {@link proxyFetch} uses for `url`, redacted; `undefined` for a direct request or
 * any other fetch.
 *
 * @example
 * ```ts
 * describeProxyFor(proxyFetch('http://u:p@proxy:3128'), 'https://as.example.com/token'); // 'http://***@proxy:3128'
 * ```
 */
export function describeProxyFor(fetch: FetchLike | undefined, url: string): string | undefined {
  return (fetch as ProxyAwareFetch | undefined)?.[PROXY_FOR]?.(url);
}

/**
 * A proxy setting fit to print: `'env'` as is; a URL without its credentials (`http://***@proxy:3128`),
 * path or query. Never throws; something that is not a URL prints as `'(invalid proxy URL)'`.
 *
 * @example
 * ```ts
 * redactProxyUrl('http://alice:s3cret@proxy.internal:3128/'); // 'http://***@proxy.internal:3128'
 * ```
 */
export function redactProxyUrl(proxy: string): string {
  if (proxy === 'env') return 'env';
  try {
    const url = new URL(withScheme(proxy));
    return `${url.protocol}//${url.username || url.password ? '***@' : ''}${url.host}`;
  } catch {
    return '(invalid proxy URL)';
  }
}

/**
 * The proxy URL for a request to `url` from the environment, the way curl reads it: `http_proxy` /
 * `HTTP_PROXY` for `http:`, `https_proxy` / `HTTPS_PROXY` for `https:`, else `all_proxy` / `ALL_PROXY`
 * (the lower-case name wins; an empty value is unset; a value without a scheme is `http://`; under CGI, where
 * `REQUEST_METHOD` is set, `HTTP_PROXY` is ignored: it may come from a request's `Proxy` header — httpoxy,
 * CVE-2016-5385 — as Go's net/http ignores it there), unless
 * `no_proxy` / `NO_PROXY` names the host: `*` (everything), a host name (that host and its subdomains;
 * a leading `.` or `*.` is ignored), an IP address, a CIDR block (`10.0.0.0/8`), each optionally with
 * `:port`. Returns the redacted URL, or `undefined` for a direct connection.
 *
 * @example
 * ```ts
 * proxyForUrl('https://login.example.com/token', { HTTPS_PROXY: 'http://proxy:3128', NO_PROXY: '.internal' }); // 'http://proxy:3128'
 * proxyForUrl('https://vault.internal/token', { HTTPS_PROXY: 'http://proxy:3128', NO_PROXY: '.internal' });   // undefined
 * ```
 */
export function proxyForUrl(url: string | URL, env: NodeJS.ProcessEnv = process.env): string | undefined {
  return proxyFromEnv(new URL(url), env)?.display;
}

interface ParsedProxy {
  /** The proxy URL without credentials: what undici connects to, and the cache key. */
  uri: string;
  /** `Basic …` for credentials in the URL. */
  token: string | undefined;
  /** For messages. */
  display: string;
}

function proxyFromEnv(url: URL, env: NodeJS.ProcessEnv): ParsedProxy | undefined {
  const scheme = url.protocol.slice(0, -1);
  if (scheme !== 'http' && scheme !== 'https') return undefined;
  const specific = variable(env, `${scheme}_proxy`);
  const chosen = specific ?? variable(env, 'all_proxy');
  if (chosen === undefined) return undefined;
  if (bypasses(url, variable(env, 'no_proxy')?.value)) return undefined;
  return parseProxyUrl(chosen.value, chosen.name);
}

function variable(env: NodeJS.ProcessEnv, lower: string): { name: string; value: string } | undefined {
  for (const name of [lower, lower.toUpperCase()]) {
    // httpoxy: a CGI server turns a request's `Proxy:` header into HTTP_PROXY (RFC 3875 §4.1.18).
    if (name === 'HTTP_PROXY' && env['REQUEST_METHOD'] !== undefined) continue;
    const value = env[name]?.trim();
    if (value) return { name, value };
  }
  return undefined;
}

/** NO_PROXY matching (curl's rules, plus `:port` entries as most other clients accept). */
function bypasses(url: URL, noProxy: string | undefined): boolean {
  if (noProxy === undefined) return false;
  const host = unbracket(url.hostname.toLowerCase()).replace(/\.$/, '');
  const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
  for (const raw of noProxy.toLowerCase().split(/[\s,]+/)) {
    if (raw === '') continue;
    if (raw === '*') return true;
    const { pattern, entryPort } = splitPort(raw);
    if (entryPort !== undefined && entryPort !== port) continue;
    if (pattern.includes('/')) {
      if (inCidr(host, pattern)) return true;
      continue;
    }
    const name = hostName(pattern.replace(/^\*?\./, '').replace(/\.$/, ''));
    if (name === '') continue;
    if (host === name || (isIP(name) === 0 && host.endsWith(`.${name}`))) return true;
  }
  return false;
}

function splitPort(entry: string): { pattern: string; entryPort: number | undefined } {
  if (entry.startsWith('[')) {
    const end = entry.indexOf(']');
    // `[fd00::]/8`: a block written with brackets.
    if (end > 0 && entry[end + 1] === '/')
      return { pattern: entry.slice(1, end) + entry.slice(end + 1), entryPort: undefined };
    const port = end > 0 && entry[end + 1] === ':' ? Number(entry.slice(end + 2)) : undefined;
    return { pattern: entry.slice(1, end > 0 ? end : undefined), entryPort: Number.isInteger(port) ? port : undefined };
  }
  const colon = entry.lastIndexOf(':');
  // One colon: host:port. More: a bare IPv6 address (possibly with a CIDR suffix).
  if (colon > 0 && entry.indexOf(':') === colon && /^\d+$/.test(entry.slice(colon + 1))) {
    return { pattern: entry.slice(0, colon), entryPort: Number(entry.slice(colon + 1)) };
  }
  return { pattern: entry, entryPort: undefined };
}

function inCidr(host: string, cidr: string): boolean {
  const family = isIP(host);
  const [address = '', bits = ''] = cidr.split('/');
  const net = unbracket(address);
  if (family === 0 || isIP(net) !== family || !/^\d+$/.test(bits)) return false;
  const type = family === 4 ? 'ipv4' : 'ipv6';
  try {
    const list = new BlockList();
    list.addSubnet(net, Number(bits), type);
    return list.check(host, type);
  } catch {
    return false;
  }
}

/**
 * An entry's host as the URL parser writes a request's: an IPv6 address canonical ({@link canonicalIPv6}), an
 * internationalized name in its A-label form (`bücher.example` → `xn--bcher-kva.example`, what `URL` makes of it).
 */
function hostName(entry: string): string {
  if (isIP(entry) !== 0 || !/[^\p{ASCII}]/u.test(entry)) return canonicalIPv6(entry);
  return domainToASCII(entry) || entry;
}

/**
 * An IPv6 address as the URL parser writes a host (`0:0:0:0:0:0:0:1` → `::1`, `::ffff:127.0.0.1` →
 * `::ffff:7f00:1`), so an entry names the address however it is spelled; anything else as it is.
 */
function canonicalIPv6(entry: string): string {
  if (isIP(entry) !== 6) return entry;
  try {
    return unbracket(new URL(`http://[${entry}]/`).hostname);
  } catch {
    return entry;
  }
}

function unbracket(host: string): string {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
}

function withScheme(value: string): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value : `http://${value}`;
}

function parseProxyUrl(value: unknown, name: string): ParsedProxy {
  const invalid = (why: string): TokenwardenError =>
    new TokenwardenError('ERR_CONFIG', `${name} ${why} (expected 'env' or a proxy URL like http://proxy:3128)`);
  if (typeof value !== 'string' || value.trim() === '') throw invalid('must be a non-empty string');
  let url: URL;
  try {
    url = new URL(withScheme(value.trim()));
  } catch {
    throw invalid('is not a valid URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw invalid('must be an http: or https: URL');
  const token =
    url.username || url.password
      ? `Basic ${Buffer.from(`${safeDecode(url.username)}:${safeDecode(url.password)}`).toString('base64')}`
      : undefined;
  const uri = `${url.protocol}//${url.host}`;
  return { uri, token, display: `${url.protocol}//${token ? '***@' : ''}${url.host}` };
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function requestInit(request: Request): RequestInit {
  return {
    method: request.method,
    headers: request.headers,
    redirect: request.redirect,
    signal: request.signal,
    ...(request.body !== null && { body: request.body, duplex: 'half' }),
  } as RequestInit;
}

interface Agent {
  fetch: typeof import('undici').fetch;
  dispatcher: Dispatcher;
}

/** One agent per proxy (and credentials) for the whole process, so connections to it are reused. */
const agents = new Map<string, Promise<Agent>>();

function agentFor(proxy: ParsedProxy): Promise<Agent> {
  const key = `${proxy.uri} ${proxy.token ?? ''}`;
  let agent = agents.get(key);
  if (agent === undefined) {
    agent = loadUndici().then(({ ProxyAgent, fetch }) => ({
      fetch,
      dispatcher: new ProxyAgent({
        uri: proxy.uri,
        ...(proxy.token !== undefined && { token: proxy.token }),
        // curl's way: http: targets as absolute-form requests (proxies commonly allow CONNECT to 443 only),
        // https: targets through a CONNECT tunnel.
        proxyTunnel: false,
      }),
    }));
    agent.catch(() => agents.delete(key));
    agents.set(key, agent);
  }
  return agent;
}

async function loadUndici(): Promise<typeof import('undici')> {
  try {
    return await import('undici');
  } catch (err) {
    throw new TokenwardenError('ERR_CONFIG', 'a proxy needs the undici package (npm install undici)', { cause: err });
  }
}

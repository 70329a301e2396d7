/**
 * The verifier's seam: a {@link VerifierProvider} turns a token into a payload and the payload into an
 * {@link Auth}. The built-in JWT and introspection strategies are providers; any authorization server or
 * home-grown scheme plugs in the same way. The shape follows UeberauthToken's strategy behaviour
 * (`get_payload`, `valid_token?`, `get_uid`, `get_credentials`, `get_info`, `get_extra`, `get_ttl`).
 *
 * @module
 */
import type { Clock } from '../clock.js';

/**
 * Claims of a token: a JWT payload or an introspection response.
 *
 * @example
 * ```ts
 * const tenant = result.ok ? (result.auth.extra.claims as Claims)['tenant_id'] : undefined;
 * ```
 */
export type Claims = Readonly<Record<string, unknown>>;

/**
 * The result of a successful verification (UeberauthToken's `Auth`).
 *
 * @example
 * ```ts
 * const result = await verify(req);
 * if (result.ok) {
 *   const { uid, credentials, info, extra } = result.auth;
 *   console.log(uid, credentials.scopes, info.clientId, extra.claims['jti']);
 * }
 * ```
 */
export interface Auth {
  /** Who the token speaks for: `sub` by default, else `client_id` (see the `uid` option). */
  readonly uid: string | undefined;
  /** The issuer (`iss`), or the configured issuer when an introspection response omits it. */
  readonly issuer: string | undefined;
  readonly credentials: Credentials;
  /** Descriptive claims when present: `clientId`, `username`, `name`, `email`, `preferredUsername`. */
  readonly info: AuthInfo;
  /** Everything else: the full claims, the JWT header, which strategy verified the token. */
  readonly extra: AuthExtra;
  /** Milliseconds this result stays valid from now (never past the token's `exp`). */
  readonly ttl: number;
}

/**
 * The credentials part of {@link Auth}.
 *
 * @example
 * ```ts
 * const { token, tokenType, jkt, scopes, expiresAt }: Credentials = result.auth.credentials;
 * if (scopes.includes('admin')) grantAdmin();
 * if (tokenType === 'DPoP') console.log('bound to key', jkt);
 * ```
 */
export interface Credentials {
  /** The token as presented. Treat it as a secret: never log it. */
  readonly token: string;
  /** `'DPoP'` when the request proved possession of the key the token is bound to (RFC 9449), else `'Bearer'`. */
  readonly tokenType: 'Bearer' | 'DPoP';
  /**
   * For a DPoP token: the JWK SHA-256 thumbprint (RFC 7638) of the key that signed the proof, which is the
   * token's `cnf.jkt`. Use it to tie state to the client's key.
   */
  readonly jkt?: string;
  /** Granted scopes, from `scope` (space-separated) or `scp` (array or string). */
  readonly scopes: readonly string[];
  /** When the token expires (`exp`), epoch milliseconds; `undefined` when the token does not say. */
  readonly expiresAt: number | undefined;
}

/**
 * The info part of {@link Auth}.
 *
 * @example
 * ```ts
 * const who = result.auth.info.email ?? result.auth.info.clientId ?? result.auth.uid;
 * ```
 */
export interface AuthInfo {
  readonly clientId?: string;
  readonly username?: string;
  readonly name?: string;
  readonly email?: string;
  readonly preferredUsername?: string;
  readonly [key: string]: unknown;
}

/**
 * What a provider puts in {@link AuthExtra}.
 *
 * @example
 * ```ts
 * const provider: VerifierProvider<Row> = { getPayload, getExtra: (row) => ({ claims: { sub: row.owner }, plan: row.plan }) };
 * ```
 */
export interface ProviderExtra {
  /** The verified JWT payload, the introspection response or the provider's payload, frozen. */
  readonly claims: Claims;
  /** The JWT protected header (JWT strategy only). */
  readonly header?: Readonly<Record<string, unknown>>;
  readonly [key: string]: unknown;
}

/**
 * The extra part of {@link Auth}.
 *
 * @example
 * ```ts
 * const { claims, header, strategy }: AuthExtra = result.auth.extra;
 * console.log(strategy, header?.['kid'], claims['jti']);
 * ```
 */
export interface AuthExtra extends ProviderExtra {
  /** Which strategy verified the token. */
  readonly strategy: 'jwt' | 'introspection' | 'provider';
}

/**
 * What a provider is given besides the token.
 *
 * @example
 * ```ts
 * const provider: VerifierProvider = {
 *   async getPayload(token, { now }: ProviderContext) {
 *     const row = await db.sessions.find(token);
 *     return row && row.expiresAt > now ? { ok: true, payload: row.claims } : { ok: false, error: 'invalid_token', description: 'unknown session' };
 *   },
 * };
 * ```
 */
export interface ProviderContext {
  /** The current time from the verifier's clock, epoch milliseconds. */
  readonly now: number;
  readonly clock: Clock;
}

/**
 * What {@link VerifierProvider.getPayload} returns. A failure says whether the token is bad
 * (`invalid_token`, with an optional time to remember that) or could not be checked
 * (`temporarily_unavailable`, never remembered).
 *
 * @example
 * ```ts
 * async function getPayload(token: string): Promise<PayloadResult<Claims>> {
 *   try {
 *     const row = await db.apiKeys.find(token);
 *     if (!row) return { ok: false, error: 'invalid_token', description: 'unknown key', cacheForMs: 10_000 };
 *     return { ok: true, payload: row };
 *   } catch (err) {
 *     return { ok: false, error: 'temporarily_unavailable', description: 'key store down', cause: err };
 *   }
 * }
 * ```
 */
export type PayloadResult<P> =
  | { ok: true; payload: P }
  | {
      ok: false;
      error: 'invalid_token' | 'temporarily_unavailable';
      /** A short fixed text for `error_description`; never the token or text from the network. */
      description: string;
      /** How long the verifier may remember this failure, in ms (only for `invalid_token`). Default 0. */
      cacheForMs?: number;
      /** The underlying error, for the verifier's `onError` hook (never shown to clients). */
      cause?: unknown;
      /**
       * For `temporarily_unavailable`: when to try again, in ms (sent as `Retry-After`). Default: the
       * cause's `retryAfterMs` when it is a `TokenwardenError`, else 5 s.
       */
      retryAfterMs?: number;
    };

/**
 * Plugs a token scheme into `createVerifier({ provider })`. Only `getPayload` is required; the other
 * methods default to reading standard claims from the payload (`sub`, `client_id`, `scope`/`scp`, `exp`,
 * `nbf`, `iss`).
 *
 * A provider that throws is treated as unreachable (503 `temporarily_unavailable`), never as a bad token.
 *
 * @example
 * ```ts
 * import { createVerifier, type VerifierProvider } from 'tokenwarden/server';
 * const apiKeys: VerifierProvider<{ owner: string; scope: string }> = {
 *   async getPayload(token) {
 *     const row = await db.apiKeys.find(token);
 *     return row ? { ok: true, payload: row } : { ok: false, error: 'invalid_token', description: 'unknown key' };
 *   },
 *   getUid: (row) => row.owner,
 *   getTtl: () => 60_000,
 * };
 * const verify = createVerifier({ provider: apiKeys });
 * ```
 */
export interface VerifierProvider<P = Claims> {
  /** `get_payload`: looks the token up or decodes it. */
  getPayload(token: string, context: ProviderContext): Promise<PayloadResult<P>>;
  /** `valid_token?`: a last yes/no on the payload. Default: `exp` in the future and `nbf` in the past. */
  isValid?(payload: P, context: ProviderContext): boolean | Promise<boolean>;
  /** `get_uid`. Default: `sub`, else `client_id`. */
  getUid?(payload: P): string | undefined;
  /** `get_credentials`: scopes and expiry. Default: from `scope`/`scp` and `exp`. */
  getCredentials?(payload: P): { scopes?: readonly string[]; expiresAt?: number | undefined };
  /** `get_info`. Default: see {@link AuthInfo}. */
  getInfo?(payload: P): AuthInfo;
  /** `get_extra`. Default: `{ claims: payload }`. */
  getExtra?(payload: P): ProviderExtra;
  /** The issuer. Default: `iss`. */
  getIssuer?(payload: P): string | undefined;
  /**
   * `get_ttl`: how long, in ms from now, the result may be cached. The verifier caps it by the token's
   * expiry and its `cache.maxAge`. Default: until expiry.
   */
  getTtl?(payload: P, context: ProviderContext): number | undefined;
}

/** `scope: "a b"` or `scp: ["a", "b"]` / `scp: "a b"` → `['a', 'b']`. */
export function scopesOf(claims: Claims): string[] {
  const value = claims['scope'] ?? claims['scp'];
  if (typeof value === 'string') return value.split(' ').filter((s) => s !== '');
  if (Array.isArray(value)) return value.filter((s): s is string => typeof s === 'string' && s !== '');
  return [];
}

/**
 * Largest NumericDate accepted: 9999-12-31T23:59:59Z. Beyond it a date is a forgery or a bug, and past
 * 8.64e12 it is not even a JavaScript `Date`.
 */
export const MAX_NUMERIC_DATE = 253_402_300_799;

/**
 * Whether `exp`, `nbf` and `iat`, where present, are NumericDates (RFC 7519 §2): finite numbers of seconds
 * from 0 to {@link MAX_NUMERIC_DATE}. `1e400` (Infinity after JSON parsing), a negative number, a string or
 * `null` are not.
 *
 * @example
 * ```ts
 * numericDatesValid({ exp: 1767225600 }); // true
 * numericDatesValid(JSON.parse('{"exp":1e400}')); // false
 * ```
 */
export function numericDatesValid(claims: Claims): boolean {
  for (const name of ['exp', 'nbf', 'iat']) {
    const value = claims[name];
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > MAX_NUMERIC_DATE) return false;
  }
  return true;
}

/** `exp` (seconds) → epoch milliseconds, or `undefined`. */
export function expiresAtOf(claims: Claims): number | undefined {
  const exp = claims['exp'];
  return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : undefined;
}

/** The uid: the string claim named `claim`, or by default `sub` then `client_id`. */
export function uidOf(claims: Claims, claim?: string): string | undefined {
  if (claim !== undefined) return stringClaim(claims, claim);
  return stringClaim(claims, 'sub') ?? stringClaim(claims, 'client_id');
}

/** The standard descriptive claims, when present. */
export function infoOf(claims: Claims): AuthInfo {
  const info: Record<string, string> = {};
  const pick = (name: string, claim: string): void => {
    const value = stringClaim(claims, claim);
    if (value !== undefined) info[name] = value;
  };
  pick('clientId', 'client_id');
  if (info['clientId'] === undefined) pick('clientId', 'azp');
  pick('username', 'username');
  pick('name', 'name');
  pick('email', 'email');
  pick('preferredUsername', 'preferred_username');
  return info;
}

/** A claim when it is a string. */
export function stringClaim(claims: Claims, name: string): string | undefined {
  const value = claims[name];
  return typeof value === 'string' ? value : undefined;
}

/**
 * Freezes an object and everything in it, so a cached result shared between requests cannot be changed
 * by one of them. Returns `value`.
 *
 * Recursive for the shallow objects claims are (a few levels: no array of what is left to do, no
 * `Object.values` copies), and iterative past 32 levels, so that claims nested 100 000 deep (an
 * introspection answer may be a MiB) cannot overflow the stack.
 *
 * Binary values (a `Buffer`, any typed array or `DataView`) are left as they are: JavaScript cannot freeze a
 * typed array that has elements (`Object.freeze` throws), and a provider's payload often holds one — a
 * PostgreSQL `bytea` column, a MongoDB `ObjectId` (its bytes are a `Uint8Array`). Their bytes stay mutable.
 *
 * @example
 * ```ts
 * const claims = freezeDeep(JSON.parse(text));
 * Object.isFrozen(claims.cnf); // true
 * ```
 */
export function freezeDeep<T>(value: T): T {
  freezeWithin(value, 32);
  return value;
}

function freezeWithin(value: unknown, depth: number): void {
  if (value === null || typeof value !== 'object' || Object.isFrozen(value) || ArrayBuffer.isView(value)) return;
  if (depth === 0) {
    deepFreeze(value);
    return;
  }
  Object.freeze(value);
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const inner: unknown = value[i];
      if (inner !== null && typeof inner === 'object') freezeWithin(inner, depth - 1);
    }
    return;
  }
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    const inner = record[key];
    if (inner !== null && typeof inner === 'object') freezeWithin(inner, depth - 1);
  }
}

/** {@link freezeDeep} without recursion, for what is deeper than it recurses. */
function deepFreeze(value: unknown): void {
  const pending: unknown[] = [value];
  while (pending.length > 0) {
    const next = pending.pop();
    if (next !== null && typeof next === 'object' && !Object.isFrozen(next) && !ArrayBuffer.isView(next)) {
      Object.freeze(next);
      for (const inner of Object.values(next)) pending.push(inner);
    }
  }
}

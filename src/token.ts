/**
 * A token and its life: parsed from a token response, fresh → stale → expired.
 *
 * @module
 */
import { decodeJwt } from 'jose';
import { TokenwardenError } from './errors.js';
import { parseJsonObject } from './json.js';

/**
 * An access token as tokenwarden holds it.
 *
 * `expiresAt` is absent when neither `expires_in` nor a JWT `exp` tells the lifetime; the refresh policy's
 * `every` then decides when to refresh.
 *
 * @example
 * ```ts
 * const token: Token = await manager.getToken();
 * console.log(token.tokenType, new Date(token.expiresAt ?? 0).toISOString(), token.scope);
 * ```
 */
export interface Token {
  /** The access token itself. Treat it as a secret. */
  readonly accessToken: string;
  /** `Bearer` or `DPoP` (normalised from any case; a grant's answer without one is `Bearer`), `N_A` from a token exchange. */
  readonly tokenType: string;
  /** When the access token expires, epoch milliseconds. */
  readonly expiresAt?: number;
  /** When it was obtained (the moment the request was sent), epoch milliseconds. */
  readonly issuedAt: number;
  /** The refresh token to use next (the newest rotated one). */
  readonly refreshToken?: string;
  /** The OpenID Connect ID token, when one came with the response. */
  readonly idToken?: string;
  /** The granted scope, when the server said (space-separated). */
  readonly scope?: string;
  /** The token endpoint's JSON response as received. */
  readonly raw: Readonly<Record<string, unknown>>;
}

/**
 * Where a token is in its life.
 * - `fresh`: valid and not yet due for refresh — served without any I/O;
 * - `stale`: still valid but due for refresh — served while a refresh runs;
 * - `expired`: no longer valid — callers wait for a new one.
 *
 * @example
 * ```ts
 * const status: TokenStatus | 'none' = manager.peek().status;
 * ```
 */
export type TokenStatus = 'fresh' | 'stale' | 'expired';

/** Upper bound on a lifetime we believe (ten years): a huge `expires_in` must not overflow dates or timers. */
export const MAX_LIFETIME_MS = 10 * 365 * 86_400_000;

/** A JWT `exp` up to this much earlier than `expires_in` implies is rounding and latency, not clock skew. */
const EXP_AGREEMENT_MS = 2_000;

/**
 * RFC 6749 Appendix A: tokens are printable ASCII; RFC 6750 puts the access token in a header. Held to
 * NQSCHAR (`%x21 / %x23-5B / %x5D-7E`: no space, no quote, no backslash), which every b64token is: nothing that could
 * end a header, a quoted string or a terminal line, and no escape sequence.
 */
const TOKEN_CHARS = /^[\x21\x23-\x5B\x5D-\x7E]+$/;
/** RFC 6749 A.13: `type-name` (`1*name-char`) or an absolute URI (RFC 8693 types). */
const TOKEN_TYPE_CHARS = /^(?:[A-Za-z0-9._-]+|[A-Za-z][A-Za-z0-9+.-]*:[\x21\x23-\x5B\x5D-\x7E]+)$/;
/** RFC 6749 §3.3: scope tokens of NQCHAR separated by spaces (extra spaces tolerated). */
const SCOPE_CHARS = /^[ \x21\x23-\x5B\x5D-\x7E]*$/;

/**
 * Whether `value` is made only of the characters an access or refresh token may hold (NQSCHAR: printable
 * ASCII but space, `"` and `\`).
 *
 * @example
 * ```ts
 * isTokenString('2YotnFZFEjr1zCsicMWpAA'); // true
 * ```
 */
export function isTokenString(value: string): boolean {
  return TOKEN_CHARS.test(value);
}

/**
 * Which field of a token, if any, holds characters outside its RFC 6749 / RFC 6750 character set: the
 * access, refresh and ID tokens NQSCHAR, the token type a `type-name` or URI, the scope NQCHAR and spaces.
 * `undefined` when all are fine. Never says what the characters are (a token is a secret).
 *
 * @example
 * ```ts
 * const bad = invalidTokenField({ accessToken: 'abc\u001b[2J', tokenType: 'Bearer' }); // 'access_token'
 * ```
 */
export function invalidTokenField(token: {
  accessToken: string;
  tokenType: string;
  refreshToken?: string | undefined;
  idToken?: string | undefined;
  scope?: string | undefined;
}): 'access_token' | 'token_type' | 'refresh_token' | 'id_token' | 'scope' | undefined {
  if (!TOKEN_CHARS.test(token.accessToken)) return 'access_token';
  if (!TOKEN_TYPE_CHARS.test(token.tokenType)) return 'token_type';
  if (token.refreshToken !== undefined && !TOKEN_CHARS.test(token.refreshToken)) return 'refresh_token';
  if (token.idToken !== undefined && !TOKEN_CHARS.test(token.idToken)) return 'id_token';
  if (token.scope !== undefined && !SCOPE_CHARS.test(token.scope)) return 'scope';
  return undefined;
}

/**
 * When the refresh token expires, from `issuedAt`, when the server said: `refresh_expires_in` (Keycloak) or
 * `refresh_token_expires_in` (Microsoft Entra ID, GitHub Apps), in seconds. `0` (Keycloak's offline tokens) or
 * anything that is not a positive number says nothing, nor does a lifetime over ten years (`MAX_LIFETIME_MS`). One
 * reading for UserTokens and the refresh token grant.
 *
 * @example
 * ```ts
 * refreshExpiry({ refresh_expires_in: 1800 }, issuedAt); // { refreshExpiresAt: issuedAt + 1_800_000 }
 * ```
 */
export function refreshExpiry(
  json: Readonly<Record<string, unknown>>,
  issuedAt: number,
): { refreshExpiresAt?: number } {
  const value = json['refresh_expires_in'] ?? json['refresh_token_expires_in'];
  const seconds = typeof value === 'string' ? Number(value) : value;
  if (typeof seconds !== 'number' || !(seconds > 0)) return {};
  // Longer than any lifetime we believe is no limit (1e308 s would overflow to Infinity, which JSON writes as null).
  const ms = seconds * 1000;
  return ms <= MAX_LIFETIME_MS ? { refreshExpiresAt: issuedAt + ms } : {};
}

/**
 * Builds a {@link Token} from a token endpoint response (validated by `oauth4webapi`, or by `UserTokens.save`).
 *
 * Lifetime: from `expires_in` (relative, so immune to clock skew), tightened to the JWT's `exp` when the
 * two agree within 2 s; from `exp` when `expires_in` is absent; unknown otherwise. `expires_in: 0` is read
 * as "no lifetime given" (as golang/oauth2 does). When the response has no refresh token,
 * `options.refreshToken` (the one just spent) is carried over, because servers that do not rotate omit it.
 *
 * Every token string is checked against its RFC 6749 / RFC 6750 character set (see
 * {@link invalidTokenField}): a response with an access token holding a space, a quote, CR/LF, a terminal
 * escape or anything outside printable ASCII is an `ERR_INVALID_RESPONSE` that names the field, never the
 * value.
 *
 * @example
 * ```ts
 * const token = tokenFromResponse({ access_token: 'abc', token_type: 'bearer', expires_in: 3600 }, { issuedAt: Date.now() });
 * ```
 */
export function tokenFromResponse(
  json: Readonly<Record<string, unknown>>,
  options: { issuedAt: number; refreshToken?: string | undefined },
): Token {
  const accessToken = json['access_token'];
  if (typeof accessToken !== 'string' || accessToken === '') {
    throw new TokenwardenError('ERR_INVALID_RESPONSE', 'the token response has no access_token');
  }
  const { issuedAt } = options;
  const sent = typeof json['refresh_token'] === 'string' ? json['refresh_token'] : undefined;
  const fields = {
    accessToken,
    tokenType: normaliseTokenType(typeof json['token_type'] === 'string' ? json['token_type'] : 'bearer'),
    refreshToken: sent,
    idToken: typeof json['id_token'] === 'string' ? json['id_token'] : undefined,
    scope: typeof json['scope'] === 'string' ? json['scope'] : undefined,
  };
  const bad = invalidTokenField(fields);
  if (bad !== undefined) {
    throw new TokenwardenError(
      'ERR_INVALID_RESPONSE',
      `the token response's ${bad} holds characters outside the RFC 6749 character set (control characters, spaces, quotes or non-ASCII); refused`,
    );
  }
  const refreshToken = sent ?? options.refreshToken;
  const expiresAt = computeExpiresAt(accessToken, json['expires_in'], issuedAt);
  return freezeToken({
    accessToken,
    tokenType: fields.tokenType,
    issuedAt,
    ...(expiresAt !== undefined && { expiresAt }),
    ...(refreshToken !== undefined && { refreshToken }),
    ...(fields.idToken !== undefined && { idToken: fields.idToken }),
    ...(fields.scope !== undefined && { scope: fields.scope }),
    raw: json,
  });
}

function computeExpiresAt(accessToken: string, expiresIn: unknown, issuedAt: number): number | undefined {
  const exp = jwtExpiry(accessToken);
  if (typeof expiresIn === 'number' && expiresIn > 0) {
    const fromExpiresIn = issuedAt + Math.min(expiresIn * 1000, MAX_LIFETIME_MS);
    if (exp !== undefined && exp.exp <= fromExpiresIn && exp.exp >= fromExpiresIn - EXP_AGREEMENT_MS) {
      return exp.exp;
    }
    return fromExpiresIn;
  }
  if (exp === undefined) return undefined;
  if (exp.exp > issuedAt) return Math.min(exp.exp, issuedAt + MAX_LIFETIME_MS);
  // exp is already past on our clock: trust the lifetime the token states, if it states one.
  return exp.iat !== undefined && exp.exp > exp.iat ? issuedAt + Math.min(exp.exp - exp.iat, MAX_LIFETIME_MS) : exp.exp;
}

function jwtExpiry(token: string): { exp: number; iat?: number } | undefined {
  if (token.split('.').length !== 3) return undefined;
  try {
    const { exp, iat } = decodeJwt(token);
    if (typeof exp !== 'number' || !Number.isFinite(exp)) return undefined;
    return {
      exp: exp * 1000,
      ...(typeof iat === 'number' && Number.isFinite(iat) && { iat: iat * 1000 }),
    };
  } catch {
    return undefined;
  }
}

/** `bearer` → `Bearer`, `dpop` → `DPoP`, `n_a` → `N_A` (RFC 8693 §2.2.1); anything else as sent. */
export function normaliseTokenType(type: string): string {
  const lower = type.toLowerCase();
  if (lower === 'bearer') return 'Bearer';
  if (lower === 'dpop') return 'DPoP';
  if (lower === 'n_a') return 'N_A';
  return type;
}

function freezeToken(token: Token): Token {
  return Object.freeze(token);
}

/**
 * Serialises a token for a store. The inverse is {@link parseStoredToken}.
 *
 * @example
 * ```ts
 * await store.set(key, serializeToken(token));
 * ```
 */
export function serializeToken(token: Token): string {
  return JSON.stringify({ v: 1, ...token });
}

/**
 * A refresh token the authorization server refused, as the fleet stores it beside the entry that holds it:
 * the OAuth `error` and the HTTP status, never the server's description (text it may have echoed).
 *
 * @example
 * ```ts
 * const refused: StoredRefusal = { error: 'invalid_grant', status: 400 };
 * ```
 */
export interface StoredRefusal {
  readonly error: string;
  readonly status?: number;
}

/** An OAuth `error` code as RFC 6749 §5.2 allows it (printable ASCII but `"` and `\`), bounded. */
const ERROR_CODE = /^[\x20\x21\x23-\x5B\x5D-\x7E]{1,64}$/;

/**
 * A token as the fleet stores it: with its place in the key's history (`seq`), when a process wrote it
 * back from memory into a store that had lost it (`healedAt`), when a refresh was last forced by a
 * rejected token (`forced`, the latest times), and whether the server refused its refresh token
 * (`refused`: no process presents it again). Read by {@link parseStoredToken} too.
 *
 * @example
 * ```ts
 * const text = serializeStoredToken(token, { seq: 7 });
 * parseStoredEntry(text); // { token, seq: 7 }
 * ```
 */
export function serializeStoredToken(
  token: Token,
  meta: {
    seq: number;
    healedAt?: number | undefined;
    forced?: readonly number[] | undefined;
    refused?: StoredRefusal | undefined;
  },
): string {
  const { seq, healedAt, forced, refused } = meta;
  return JSON.stringify({
    v: 1,
    ...token,
    seq,
    ...(healedAt !== undefined && { healedAt }),
    ...(forced !== undefined && forced.length > 0 && { forced }),
    ...(refused !== undefined && { refused }),
  });
}

/**
 * A stored refusal as read: a planted or damaged one still counts as a refusal (the safe side: nothing is
 * spent), with an `error` that is not an OAuth error code read as `invalid_grant` and a status outside
 * 400–599 dropped.
 */
function toRefusal(value: unknown): StoredRefusal | undefined {
  if (value === undefined) return undefined;
  const { error, status } = (value !== null && typeof value === 'object' ? value : {}) as Record<string, unknown>;
  return {
    error: typeof error === 'string' && ERROR_CODE.test(error) ? error : 'invalid_grant',
    ...(Number.isInteger(status) &&
      (status as number) >= 400 &&
      (status as number) <= 599 && { status: status as number }),
  };
}

/**
 * Reads {@link serializeStoredToken}'s form (an entry written by {@link serializeToken} has `seq` 0);
 * `undefined` for anything that is not a stored token.
 *
 * @example
 * ```ts
 * const entry = parseStoredEntry(record.value); // { token, seq, healedAt } | undefined
 * ```
 */
export function parseStoredEntry(
  text: string,
): { token: Token; seq: number; healedAt?: number; forced?: number[]; refused?: StoredRefusal } | undefined {
  const data = parseJsonObject(text);
  const token = toToken(data);
  if (token === undefined || data === undefined) return undefined;
  const seq = data['seq'];
  const time = (name: string): number | undefined => {
    const value = data[name];
    return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
  };
  const healedAt = time('healedAt');
  const list = data['forced'];
  const forced = Array.isArray(list)
    ? list.filter((t): t is number => typeof t === 'number' && Number.isFinite(t)).slice(-8)
    : undefined;
  const refused = toRefusal(data['refused']);
  return {
    token,
    seq: Number.isSafeInteger(seq) && (seq as number) >= 0 ? (seq as number) : 0,
    ...(healedAt !== undefined && { healedAt }),
    ...(forced !== undefined && forced.length > 0 && { forced }),
    ...(refused !== undefined && { refused }),
  };
}

/**
 * Reads a token written by {@link serializeToken}; returns `undefined` for anything that is not one
 * (a corrupt or foreign entry is a miss, never a crash).
 *
 * @example
 * ```ts
 * const token = parseStoredToken(record.value); // Token | undefined
 * ```
 */
export function parseStoredToken(text: string): Token | undefined {
  return toToken(parseJsonObject(text));
}

/** Checks the shape of a deserialised token; `undefined` when it is not a token. */
export function toToken(data: unknown): Token | undefined {
  if (data === null || typeof data !== 'object') return undefined;
  const d = data as Record<string, unknown>;
  if (typeof d['accessToken'] !== 'string' || typeof d['tokenType'] !== 'string') return undefined;
  if (typeof d['issuedAt'] !== 'number' || !Number.isFinite(d['issuedAt'])) return undefined;
  if (d['expiresAt'] !== undefined && (typeof d['expiresAt'] !== 'number' || !Number.isFinite(d['expiresAt']))) {
    return undefined;
  }
  for (const field of ['refreshToken', 'idToken', 'scope'] as const) {
    if (d[field] !== undefined && typeof d[field] !== 'string') return undefined;
  }
  // A stored token is held to the same character sets as a received one (a planted entry is no exception),
  // except that the access token may be empty: the fleet's placeholder announcing a first refresh.
  const strings = d as {
    accessToken: string;
    tokenType: string;
    refreshToken?: string;
    idToken?: string;
    scope?: string;
  };
  // The placeholder expires as it is written (`expiresAt` = `issuedAt`): an empty token that claims any life left
  // is a corrupted entry, and would be served as `Bearer ` (nothing).
  if (strings.accessToken === '' && !(typeof d['expiresAt'] === 'number' && d['expiresAt'] <= d['issuedAt'])) {
    return undefined;
  }
  const checked = strings.accessToken === '' ? { ...strings, accessToken: 'placeholder' } : strings;
  if (invalidTokenField(checked) !== undefined) return undefined;
  const raw = d['raw'] !== null && typeof d['raw'] === 'object' ? (d['raw'] as Record<string, unknown>) : {};
  return freezeToken({
    accessToken: d['accessToken'],
    tokenType: d['tokenType'],
    issuedAt: d['issuedAt'],
    ...(d['expiresAt'] !== undefined && { expiresAt: d['expiresAt'] as number }),
    ...(d['refreshToken'] !== undefined && { refreshToken: d['refreshToken'] as string }),
    ...(d['idToken'] !== undefined && { idToken: d['idToken'] as string }),
    ...(d['scope'] !== undefined && { scope: d['scope'] as string }),
    raw,
  });
}

/**
 * The error for a token request that succeeded with an access token already expired when it arrived (`expires_in`
 * shorter than the request took): a `TokenManager` or `UserTokens` reports it (and backs off, as for any answer it
 * cannot use) rather than hand out a token every API refuses — or, for a user, call it a sign-out.
 *
 * @example
 * ```ts
 * if (!isValid(token, clock.now())) throw expiredOnArrival();
 * ```
 */
export function expiredOnArrival(): TokenwardenError {
  return new TokenwardenError(
    'ERR_INVALID_RESPONSE',
    'the access token the authorization server issued had expired by the time it arrived (its expires_in is shorter than the token request took)',
  );
}

/**
 * Whether a token can still be used at `now` (it has no known expiry, or the expiry is in the future).
 *
 * @example
 * ```ts
 * if (!isValid(token, Date.now())) await manager.refresh();
 * ```
 */
export function isValid(token: Token, now: number): boolean {
  return token.expiresAt === undefined || now < token.expiresAt;
}

/**
 * Milliseconds of life a token has left at `now` (`Infinity` when its expiry is unknown, never negative).
 *
 * @example
 * ```ts
 * console.log(`${Math.round(remainingMs(token, Date.now()) / 1000)} s left`);
 * ```
 */
export function remainingMs(token: Token, now: number): number {
  return token.expiresAt === undefined ? Infinity : Math.max(0, token.expiresAt - now);
}

/**
 * The stored record of a subject: one per (issuer, client, subject), holding everything about the
 * subject — refresh token, ID token, access tokens by request — so that listing is one read and every
 * update is one compare-and-set. Its `seq` places it in the subject's history (see the fleet core).
 *
 * Compact (version 2): each token once, claims derived from the ID token (stored only when UserInfo merged
 * new ones), no identity fields repeated in clear (one 96-bit hash of issuer, client and subject), no
 * response fields the token already carries, and no moment written twice: a token's `issuedAt`, the claims'
 * `claimsUpdatedAt` and the record's `seq` are left out when they equal its `updatedAt` (as they do after a
 * login), and read back as it. In this process the record's token strings are slices of the
 * stored text ({@link RecordLineage.shared}), so a subject's tokens are held once, not once in the store
 * and again in the in-process layer. Version 1 records (before) still read.
 *
 * @module
 */
import { createHash, randomBytes } from 'node:crypto';
import { decodeJwt } from 'jose';
import type { Lineage } from '../fleet/fleet.js';
import { type UserClaims, userClaims } from '../id-token.js';
import { parseJsonObject } from '../json.js';
import { TokenwardenError } from '../errors.js';
import { normaliseTokenFields } from '../sources/token-response.js';
import { type Token, toToken } from '../token.js';
import type { Spec, StoredSpec } from './spec.js';
import { storedSpec } from './spec.js';

export interface StoredEntry {
  spec: StoredSpec;
  token: Token;
}

export interface UserRecord {
  /** Whose record this is: {@link recordId} of issuer, client and subject. */
  id: string;
  /** New on every `save()` (a login); lets a refresh that raced a new login tell the two apart. */
  session: string;
  refreshToken?: string;
  /** When the refresh token expires, if the server said (`refresh_expires_in`, `refresh_token_expires_in`). */
  refreshExpiresAt?: number;
  idToken?: string;
  /** Claims merged from UserInfo; absent when the claims are the ID token's (see {@link recordClaims}). */
  claims?: UserClaims;
  claimsUpdatedAt?: number;
  claimsFrom?: 'id_token' | 'userinfo';
  accessTokens: StoredEntry[];
  updatedAt: number;
  /**
   * When refreshes were last forced for this subject by rejected access tokens (`invalidate()`), by any
   * instance; newest last. Carried through refreshes (a new login starts without).
   */
  forced?: number[];
}

/**
 * Whose record: base64url of the first 96 bits of SHA-256 over issuer, client and subject. A record copied
 * under another subject's key, or another client's, does not match it.
 */
export function recordId(issuer: string, clientId: string, subject: string): string {
  return createHash('sha256')
    .update(JSON.stringify([issuer, clientId, subject]))
    .digest()
    .subarray(0, 12)
    .toString('base64url');
}

/**
 * Whether `record` belongs to the subject whose {@link recordId} is `id`. Version 2 records written before the
 * id was cut to 96 bits (those also write `x`, a token's expiry as a moment) carry 128 (22 characters), of
 * which the first 16 characters are exactly those 96 bits.
 */
export function isRecordOf(record: UserRecord, id: string): boolean {
  return record.id === id || (record.id.length === 22 && record.id.startsWith(id));
}

/** A new login's session id (96 random bits: it only tells logins of one subject apart). */
export function newSession(): string {
  return randomBytes(12).toString('base64url');
}

/** The subject's claims: merged from UserInfo when they were, else the ID token's (decoded, not verified again). */
export function recordClaims(record: UserRecord): UserClaims | undefined {
  if (record.claims !== undefined) return record.claims;
  if (record.idToken === undefined) return undefined;
  try {
    return userClaims(decodeJwt(record.idToken));
  } catch {
    return undefined;
  }
}

/** The lineage of one issuer and client's records, and {@link RecordLineage.shared}. */
export interface RecordLineage extends Lineage<UserRecord> {
  /**
   * The record to hold in memory: its token strings made slices of the text it was last encoded to or
   * decoded from (the text the store holds), so that no token is held twice in this process — and that
   * text, from which the record can be read again (`undefined` for a record never encoded nor decoded).
   */
  shared(record: UserRecord): { record: UserRecord; text: string | undefined };
  /** The record in `text` (what {@link RecordLineage.shared} gave), read again; `undefined` if it is not one. */
  reread(text: string): UserRecord | undefined;
}

/** The records of one issuer and client (a version 1 record's identity is checked when it is read). */
export function recordLineage(issuer: string, clientId: string, ttlMs: number | undefined): RecordLineage {
  const texts = new WeakMap<UserRecord, string>();
  return {
    decode: (_key, value) => {
      const data = parseJsonObject(value);
      if (data === undefined) return undefined;
      const record = data['v'] === 2 ? fromV2(data) : fromV1(data, issuer, clientId);
      if (record === undefined) return undefined;
      texts.set(record, value);
      // No seq: the record's updatedAt (see encode).
      const seq = data['v'] === 2 && data['seq'] === undefined ? record.updatedAt : data['seq'];
      const healedAt = data['healedAt'];
      return {
        state: record,
        seq: Number.isSafeInteger(seq) && (seq as number) >= 0 ? (seq as number) : 0,
        ...(typeof healedAt === 'number' && Number.isFinite(healedAt) && { healedAt }),
      };
    },
    encode: (record, seq, healedAt) => {
      const text = JSON.stringify({
        ...toV2(record),
        ...(seq !== record.updatedAt && { seq }),
        ...(healedAt !== undefined && { healedAt }),
      });
      texts.set(record, text);
      return text;
    },
    shared: (record) => {
      const text = texts.get(record);
      if (text === undefined) return { record, text: undefined };
      texts.delete(record);
      return { record: slicedRecord(record, text), text };
    },
    reread: (text) => {
      const data = parseJsonObject(text);
      const record = data === undefined ? undefined : data['v'] === 2 ? fromV2(data) : fromV1(data, issuer, clientId);
      return record && slicedRecord(record, text);
    },
    precious: (record) => record.refreshToken !== undefined,
    ttlMs: () => ttlMs,
    expiresAt: (record) => newestOf(record)?.token.expiresAt,
  };
}

/** The stored form: short names, defaults left out, each token once, `updatedAt` not repeated. */
function toV2(record: UserRecord): Record<string, unknown> {
  const hasClaims = record.idToken !== undefined || record.claims !== undefined;
  return {
    v: 2,
    id: record.id,
    s: record.session,
    ...(record.refreshToken !== undefined && { r: record.refreshToken }),
    ...(record.refreshExpiresAt !== undefined && { rx: record.refreshExpiresAt }),
    ...(record.idToken !== undefined && { i: record.idToken }),
    ...(record.claims !== undefined && { c: record.claims }),
    // Absent means "as updatedAt"; 0 keeps a record's "never" (claims of a version 1 record without a date).
    ...(hasClaims && record.claimsUpdatedAt !== record.updatedAt && { cu: record.claimsUpdatedAt ?? 0 }),
    ...(record.claimsFrom === 'userinfo' && { cf: 'userinfo' }),
    a: record.accessTokens.map(({ spec, token }) => {
      const {
        access_token: _a,
        refresh_token: _r,
        id_token: _i,
        token_type: _t,
        expires_in: _e,
        scope: _s,
        ...extra
      } = token.raw as Record<string, unknown>;
      return {
        t: token.accessToken,
        ...(token.tokenType !== 'Bearer' && { y: token.tokenType }),
        ...(token.issuedAt !== record.updatedAt && { at: token.issuedAt }),
        // The lifetime (ms), not the moment: 6 characters fewer.
        ...(token.expiresAt !== undefined && { e: token.expiresAt - token.issuedAt }),
        ...(token.scope !== undefined && { sc: token.scope }),
        ...((spec.scope !== null || spec.resource !== null || spec.params !== null) && {
          q: [spec.scope, spec.resource, spec.params],
        }),
        ...(Object.keys(extra).length > 0 && { w: extra }),
      };
    }),
    u: record.updatedAt,
    ...(record.forced !== undefined && record.forced.length > 0 && { f: record.forced }),
  };
}

const DEFAULT_STORED_SPEC: StoredSpec = Object.freeze({ scope: null, resource: null, params: null });
const NO_EXTRA: Readonly<Record<string, unknown>> = Object.freeze({});

function fromV2(d: Record<string, unknown>): UserRecord | undefined {
  if (typeof d['id'] !== 'string' || typeof d['s'] !== 'string' || typeof d['u'] !== 'number') return undefined;
  if (!Array.isArray(d['a'])) return undefined;
  for (const field of ['r', 'i'] as const) if (d[field] !== undefined && typeof d[field] !== 'string') return undefined;
  for (const field of ['rx', 'cu'] as const)
    if (d[field] !== undefined && typeof d[field] !== 'number') return undefined;
  const claims = d['c'];
  if (claims !== undefined && (claims === null || typeof claims !== 'object' || Array.isArray(claims)))
    return undefined;
  const accessTokens: StoredEntry[] = [];
  for (const e of d['a'] as unknown[]) {
    if (e === null || typeof e !== 'object') return undefined;
    const a = e as Record<string, unknown>;
    // An empty access token is a placeholder elsewhere (a TokenManager's announced refresh), never in a record.
    if (typeof a['t'] !== 'string' || a['t'] === '') return undefined;
    const issuedAt = a['at'] ?? d['u'];
    const lifetime = a['e'];
    if (lifetime !== undefined && typeof lifetime !== 'number') return undefined;
    // The expiry as a lifetime (`e`), or as the moment itself (`x`: records written before lifetimes).
    const expiresAt = lifetime !== undefined ? (issuedAt as number) + lifetime : a['x'];
    const token = toToken({
      accessToken: a['t'],
      tokenType: a['y'] ?? 'Bearer',
      issuedAt,
      ...(expiresAt !== undefined && { expiresAt }),
      ...(a['sc'] !== undefined && { scope: a['sc'] }),
      raw: a['w'] !== null && typeof a['w'] === 'object' ? a['w'] : NO_EXTRA,
    });
    if (token === undefined) return undefined;
    let spec = DEFAULT_STORED_SPEC;
    if (a['q'] !== undefined) {
      const q = a['q'];
      if (!Array.isArray(q) || q.length !== 3) return undefined;
      const checked = checkSpec({ scope: q[0], resource: q[1], params: q[2] });
      if (checked === undefined) return undefined;
      spec = checked;
    }
    accessTokens.push({ spec, token });
  }
  return {
    id: d['id'],
    session: d['s'],
    ...(d['r'] !== undefined && { refreshToken: d['r'] as string }),
    ...(d['rx'] !== undefined && { refreshExpiresAt: d['rx'] as number }),
    ...(d['i'] !== undefined && { idToken: d['i'] as string }),
    ...(claims !== undefined && { claims: claims as UserClaims }),
    ...((d['i'] !== undefined || claims !== undefined) && {
      claimsUpdatedAt: (d['cu'] ?? d['u']) as number,
      claimsFrom: d['cf'] === 'userinfo' ? 'userinfo' : 'id_token',
    }),
    accessTokens,
    updatedAt: d['u'],
    // Only a rate limit: a malformed list is dropped, not the record.
    ...(isTimes(d['f']) && { forced: d['f'] }),
  };
}

function isTimes(value: unknown): value is number[] {
  return Array.isArray(value) && value.length <= 16 && value.every((t) => Number.isFinite(t));
}

/** A version 1 record (full names, identity in clear, claims beside the ID token), in today's form. */
function fromV1(d: Record<string, unknown>, issuer: string, clientId: string): UserRecord | undefined {
  if (d['v'] !== 1 || d['issuer'] !== issuer || d['clientId'] !== clientId) return undefined;
  if (typeof d['subject'] !== 'string' || typeof d['session'] !== 'string') return undefined;
  if (typeof d['updatedAt'] !== 'number' || !Array.isArray(d['accessTokens'])) return undefined;
  for (const field of ['refreshToken', 'idToken'] as const) {
    if (d[field] !== undefined && typeof d[field] !== 'string') return undefined;
  }
  for (const field of ['refreshExpiresAt', 'claimsUpdatedAt'] as const) {
    if (d[field] !== undefined && typeof d[field] !== 'number') return undefined;
  }
  const claims = d['claims'];
  if (
    claims !== undefined &&
    (claims === null || typeof claims !== 'object' || (claims as { sub?: unknown }).sub !== d['subject'])
  ) {
    return undefined;
  }
  const accessTokens: StoredEntry[] = [];
  for (const e of d['accessTokens'] as unknown[]) {
    if (e === null || typeof e !== 'object') return undefined;
    const entry = e as { spec?: unknown; token?: unknown };
    const token = toToken(entry.token);
    if (token?.accessToken === '') return undefined;
    const spec =
      entry.spec === null || typeof entry.spec !== 'object' ? undefined : checkSpec(entry.spec as StoredSpec);
    if (token === undefined || spec === undefined) return undefined;
    accessTokens.push({ spec, token });
  }
  const fromUserinfo = d['claimsFrom'] === 'userinfo';
  // Claims that are the ID token's are derived from it from now on; UserInfo-merged ones stay.
  const keepClaims = claims !== undefined && (fromUserinfo || d['idToken'] === undefined);
  return {
    id: recordId(issuer, clientId, d['subject']),
    session: d['session'],
    ...(d['refreshToken'] !== undefined && { refreshToken: d['refreshToken'] as string }),
    ...(d['refreshExpiresAt'] !== undefined && { refreshExpiresAt: d['refreshExpiresAt'] as number }),
    ...(d['idToken'] !== undefined && { idToken: d['idToken'] as string }),
    ...(keepClaims && { claims: claims as UserClaims }),
    ...(d['claimsUpdatedAt'] !== undefined && { claimsUpdatedAt: d['claimsUpdatedAt'] as number }),
    ...((d['idToken'] !== undefined || claims !== undefined) && {
      claimsFrom: fromUserinfo ? ('userinfo' as const) : ('id_token' as const),
    }),
    accessTokens,
    updatedAt: d['updatedAt'],
  };
}

function checkSpec(s: StoredSpec): StoredSpec | undefined {
  if (!isListOrNull(s.scope) || !isListOrNull(s.resource)) return undefined;
  if (s.params !== null && (typeof s.params !== 'object' || !Object.values(s.params).every(isListOrNull))) {
    return undefined;
  }
  if (s.scope === null && s.resource === null && s.params === null) return DEFAULT_STORED_SPEC;
  return { scope: s.scope, resource: s.resource, params: s.params };
}

/** `value` as a slice of `text` when `text` holds it verbatim (V8 keeps a slice as a view of its parent). */
function slice(text: string, value: string): string {
  const at = text.indexOf(value);
  return at < 0 ? value : text.slice(at, at + value.length);
}

/** Scope strings, one instance each (most users have the same few). */
const scopes = new Map<string, string>();
function interned(scope: string): string {
  const known = scopes.get(scope);
  if (known !== undefined) return known;
  if (scopes.size >= 1000) scopes.clear();
  scopes.set(scope, scope);
  return scope;
}

/**
 * A stored access token as held in process: one object literal, so that every field sits inside the object
 * (a spread adds them one by one, into a separate property array: 40 bytes more per user).
 */
function heldToken(token: Token, accessToken: string): Token {
  const { tokenType, issuedAt, expiresAt, scope, raw } = token;
  const shared = scope === undefined ? undefined : interned(scope);
  if (token.refreshToken !== undefined || token.idToken !== undefined) {
    return Object.freeze({ ...token, accessToken, ...(shared !== undefined && { scope: shared }) });
  }
  if (expiresAt === undefined) {
    return Object.freeze(
      shared === undefined
        ? { accessToken, tokenType, issuedAt, raw }
        : { accessToken, tokenType, issuedAt, scope: shared, raw },
    );
  }
  return Object.freeze(
    shared === undefined
      ? { accessToken, tokenType, expiresAt, issuedAt, raw }
      : { accessToken, tokenType, expiresAt, issuedAt, scope: shared, raw },
  );
}

/** The record with its tokens (and id, session) as slices of `text`, its scope strings shared. */
function slicedRecord(record: UserRecord, text: string): UserRecord {
  const shared: UserRecord = {
    ...record,
    id: slice(text, record.id),
    session: slice(text, record.session),
    accessTokens: record.accessTokens.map(({ spec, token }) => ({
      spec: spec.scope === null && spec.resource === null && spec.params === null ? DEFAULT_STORED_SPEC : spec,
      token: heldToken(token, slice(text, token.accessToken)),
    })),
  };
  if (record.refreshToken !== undefined) shared.refreshToken = slice(text, record.refreshToken);
  if (record.idToken !== undefined) shared.idToken = slice(text, record.idToken);
  return shared;
}

/**
 * The stored form of a new access token: without the refresh and ID tokens (kept once, in the record), and
 * with the granted scope — the requested one when the server did not say (RFC 6749 §5.1).
 */
export function accessEntry(want: Spec, token: Token, requestedScope: readonly string[] | null): StoredEntry {
  const scope = token.scope ?? requestedScope?.join(' ');
  const { access_token: _a, refresh_token: _r, id_token: _i, ...raw } = token.raw as Record<string, unknown>;
  const stored: Token = Object.freeze({
    accessToken: token.accessToken,
    tokenType: token.tokenType,
    issuedAt: token.issuedAt,
    ...(token.expiresAt !== undefined && { expiresAt: token.expiresAt }),
    ...(scope !== undefined && { scope }),
    raw,
  });
  return { spec: storedSpec(want), token: stored };
}

/**
 * Checks the shape of a token endpoint response given to `save()`, read by the rules token endpoint answers
 * are read by (`normaliseTokenFields`: `null` members absent, no `token_type` is `bearer`, a numeric-string
 * `expires_in` a number).
 */
export function checkTokenResponse(json: unknown): Record<string, unknown> {
  const bad = (why: string): TokenwardenError =>
    new TokenwardenError('ERR_INVALID_RESPONSE', `the token response ${why}`);
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw bad('is not a JSON object');
  const { fields: j, failure } = normaliseTokenFields(json as Record<string, unknown>, { dpop: false });
  if (failure !== undefined) throw failure;
  if (typeof j['access_token'] !== 'string' || j['access_token'] === '') throw bad('has no access_token');
  if (typeof j['token_type'] !== 'string' || j['token_type'] === '') throw bad('has no token_type');
  for (const field of ['refresh_token', 'id_token', 'scope'] as const) {
    if (j[field] !== undefined && typeof j[field] !== 'string') throw bad(`has a ${field} that is not a string`);
  }
  const expiresIn = j['expires_in'];
  if (expiresIn !== undefined && (typeof expiresIn !== 'number' || !Number.isFinite(expiresIn) || expiresIn < 0)) {
    throw bad('has an invalid expires_in');
  }
  return j;
}

/** Drops expired access tokens and keeps at most `max` (those expiring last; `keep` always). */
export function prune(entries: StoredEntry[], now: number, keep: StoredEntry, max: number): StoredEntry[] {
  const live = entries.filter((e) => e === keep || e.token.expiresAt === undefined || e.token.expiresAt > now);
  if (live.length <= max) return live;
  const others = live
    .filter((e) => e !== keep)
    .sort((a, b) => (b.token.expiresAt ?? Infinity) - (a.token.expiresAt ?? Infinity))
    .slice(0, max - 1);
  return [...others, keep];
}

/** The record without its refresh token (the server rejected it, or it belongs to someone else). */
export function withoutRefreshToken(record: UserRecord, now: number): UserRecord {
  const { refreshToken: _rt, refreshExpiresAt: _re, ...rest } = record;
  return { ...rest, updatedAt: now };
}

function isListOrNull(value: unknown): value is string[] | null {
  return value === null || (Array.isArray(value) && value.every((v) => typeof v === 'string'));
}

/** The access token a refresh of `record` obtained last (the newest issued). */
export function newestOf(record: UserRecord): StoredEntry | undefined {
  return record.accessTokens.reduce<StoredEntry | undefined>(
    (a, e) => (a === undefined || e.token.issuedAt > a.token.issuedAt ? e : a),
    undefined,
  );
}

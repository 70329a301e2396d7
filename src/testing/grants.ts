/**
 * What the test authorization server knows and decides: grants (client credentials, refresh tokens rotated
 * on every use with reuse detection, RFC 6749 §6 and RFC 9700 §4.14.2), access tokens (RFC 9068 JWTs or
 * opaque), ID tokens, introspection (RFC 7662), revocation (RFC 7009) and UserInfo. The HTTP layer
 * (`authorization-server.ts`) only parses requests and writes these answers.
 *
 * @module
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { JWTPayload } from 'jose';
import type { Clock } from '../clock.js';
import { type OAuthError, type RegisteredClient, oauthError } from './client-auth.js';
import type { KeyRing } from './keys.js';

/** An answer of an endpoint: status, JSON body (or none) and headers. */
export interface Answer {
  readonly status: number;
  readonly body?: Readonly<Record<string, unknown>>;
  readonly headers?: Readonly<Record<string, string>>;
}

/** Settings of the grant logic, fixed when the server starts. */
export interface GrantSettings {
  readonly issuer: string;
  readonly keys: KeyRing;
  readonly clock: Clock;
  readonly accessTokenTtlS: number;
  readonly refreshTokenTtlS: number;
  readonly idTokenTtlS: number;
  /** Resources tokens may be issued for; the first is the default audience. */
  readonly audiences: readonly string[];
  readonly accessTokenFormat: 'jwt' | 'opaque';
  readonly rotateRefreshTokens: boolean;
  /** Scopes the server knows; `undefined`: any well-formed scope. */
  readonly scopes: ReadonlySet<string> | undefined;
  readonly userClaims: (sub: string) => Readonly<Record<string, unknown>>;
}

/** Who and what a token is about. */
export interface Subject {
  readonly sub: string;
  readonly clientId: string;
  readonly scope: readonly string[];
  readonly resources: readonly string[];
  /** The DPoP key the access token is bound to (RFC 9449 `cnf.jkt`). */
  readonly jkt?: string;
}

interface Family extends Subject {
  readonly id: string;
  readonly authTime: number;
  revoked: boolean;
}

interface RefreshRecord {
  readonly family: Family;
  readonly expiresAt: number;
  consumed: boolean;
}

interface OpaqueRecord extends Subject {
  readonly jti: string;
  readonly iat: number;
  readonly exp: number;
  readonly family?: Family;
}

/**
 * A token endpoint response (RFC 6749 §5.1): `access_token`, `token_type`, `expires_in`, `scope`, and for
 * a login `refresh_token` and (with `openid`) `id_token`.
 *
 * @example
 * ```ts
 * const login: TokenResponse = await as.issueTokens({ sub: 'alice', scope: 'openid read' });
 * await users.save('alice', login);
 * ```
 */
export type TokenResponse = Readonly<Record<string, unknown>>;

const NO_STORE = { 'cache-control': 'no-store', pragma: 'no-cache' };
const SCOPE = /^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$/; // RFC 6749 §3.3
const SWEEP_AT = 10_000;

/** The answer of an endpoint refusing a request (RFC 6749 §5.2), never cached. */
export function errorAnswer(err: OAuthError): Answer {
  return {
    status: err.status,
    body: { error: err.error, error_description: err.description },
    headers: { ...NO_STORE, ...err.headers },
  };
}

function newToken(): string {
  return randomBytes(32).toString('base64url');
}

/** The grants, tokens and their state. */
export class Grants {
  readonly #settings: GrantSettings;
  readonly #refreshTokens = new Map<string, RefreshRecord>();
  readonly #opaque = new Map<string, OpaqueRecord>();
  /** JWT access tokens issued from a refresh token family, so that revoking the family reaches them. */
  readonly #jwtFamilies = new Map<string, { family: Family; exp: number }>();
  readonly #revokedJtis = new Map<string, number>();

  constructor(settings: GrantSettings) {
    this.#settings = settings;
  }

  #nowS(): number {
    return Math.floor(this.#settings.clock.now() / 1000);
  }

  /** Parses and checks a `scope` parameter; `undefined` when absent or empty. */
  checkScope(value: string | null | undefined): string[] | OAuthError | undefined {
    if (value === null || value === undefined || value === '') return undefined;
    if (!SCOPE.test(value)) return oauthError(400, 'invalid_scope', 'malformed scope');
    const scope = [...new Set(value.split(' '))];
    const known = this.#settings.scopes;
    if (known !== undefined && scope.some((s) => !known.has(s))) {
      return oauthError(400, 'invalid_scope', 'unknown scope');
    }
    return scope;
  }

  /** Checks `resource` parameters (RFC 8707 §2): absolute URIs without fragment, among the known ones. */
  checkResources(values: readonly string[]): string[] | OAuthError {
    for (const value of values) {
      let url: URL | undefined;
      try {
        url = new URL(value);
      } catch {
        url = undefined;
      }
      if (url === undefined || value.includes('#')) {
        return oauthError(400, 'invalid_target', 'resource must be an absolute URI without a fragment');
      }
      if (!this.#settings.audiences.includes(value)) return oauthError(400, 'invalid_target', 'unknown resource');
    }
    return [...new Set(values)];
  }

  /**
   * The token endpoint, once the client is authenticated and the parameters are single; `jkt` is the key of
   * a valid DPoP proof, to bind the access token to.
   */
  async token(params: URLSearchParams, client: RegisteredClient, jkt?: string): Promise<Answer> {
    const grantType = params.get('grant_type');
    if (grantType === null || grantType === '') {
      return errorAnswer(oauthError(400, 'invalid_request', 'grant_type required'));
    }
    if (grantType !== 'client_credentials' && grantType !== 'refresh_token') {
      return errorAnswer(oauthError(400, 'unsupported_grant_type', 'unsupported grant_type'));
    }
    if (!client.grantTypes.has(grantType)) {
      return errorAnswer(oauthError(400, 'unauthorized_client', 'grant type not allowed for this client'));
    }
    const scope = this.checkScope(params.get('scope'));
    if (scope !== undefined && !Array.isArray(scope)) return errorAnswer(scope);
    const resources = this.checkResources(params.getAll('resource'));
    if (!Array.isArray(resources)) return errorAnswer(resources);
    if (grantType === 'client_credentials') {
      const subject: Subject = {
        sub: client.clientId,
        clientId: client.clientId,
        scope: scope ?? [],
        resources: resources.length > 0 ? resources : this.#defaultResources(),
        ...(jkt !== undefined && { jkt }),
      };
      return this.#answer(await this.#accessToken(subject, undefined));
    }
    return this.#refresh(params.get('refresh_token'), client, scope, resources, jkt);
  }

  async #refresh(
    refreshToken: string | null,
    client: RegisteredClient,
    scope: string[] | undefined,
    resources: string[],
    jkt: string | undefined,
  ): Promise<Answer> {
    if (refreshToken === null || refreshToken === '') {
      return errorAnswer(oauthError(400, 'invalid_request', 'refresh_token required'));
    }
    const record = this.#refreshTokens.get(refreshToken);
    const now = this.#settings.clock.now();
    if (record === undefined || record.family.revoked) {
      return errorAnswer(oauthError(400, 'invalid_grant', 'refresh token is not valid'));
    }
    const family = record.family;
    if (family.clientId !== client.clientId) {
      return errorAnswer(oauthError(400, 'invalid_grant', 'refresh token was issued to another client'));
    }
    if (record.consumed) {
      // RFC 9700 §4.14.2: a rotated refresh token used again — by an attacker or a confused client — ends
      // the whole grant, the newest refresh token included.
      this.#revokeFamily(family);
      return errorAnswer(oauthError(400, 'invalid_grant', 'refresh token already used; grant revoked'));
    }
    if (record.expiresAt <= now) {
      this.#refreshTokens.delete(refreshToken);
      return errorAnswer(oauthError(400, 'invalid_grant', 'refresh token expired'));
    }
    if (scope !== undefined && scope.some((s) => !family.scope.includes(s))) {
      return errorAnswer(oauthError(400, 'invalid_scope', 'scope exceeds the grant'));
    }
    if (resources.some((r) => !family.resources.includes(r))) {
      return errorAnswer(oauthError(400, 'invalid_target', 'resource outside the grant'));
    }
    // Decided synchronously, before anything is awaited: two concurrent uses cannot both succeed.
    let next: string | undefined;
    if (this.#settings.rotateRefreshTokens) {
      record.consumed = true;
      next = this.#newRefreshToken(family);
    }
    const subject: Subject = {
      sub: family.sub,
      clientId: family.clientId,
      scope: scope ?? family.scope,
      resources: resources.length > 0 ? resources : family.resources,
      ...(jkt !== undefined && { jkt }),
    };
    const issued = await this.#accessToken(subject, family);
    return this.#answer({
      ...issued,
      ...(next !== undefined && { refresh_token: next }),
      // An ID token only when the refreshed scope keeps `openid` (OpenID Connect Core §12.2; oidc-provider).
      ...(subject.scope.includes('openid') && { id_token: await this.#idToken(family) }),
    });
  }

  #answer(response: TokenResponse): Answer {
    return {
      status: 200,
      body: response,
      headers: { ...NO_STORE, 'content-type': 'application/json; charset=utf-8' },
    };
  }

  #defaultResources(): string[] {
    return [this.#settings.audiences[0] as string];
  }

  /** An access token for `subject` and its token endpoint fields (`access_token`, `token_type`, `expires_in`, `scope`). */
  async #accessToken(subject: Subject, family: Family | undefined): Promise<Record<string, unknown>> {
    const ttl = this.#settings.accessTokenTtlS;
    const iat = this.#nowS();
    const jti = randomUUID();
    let accessToken: string;
    if (this.#settings.accessTokenFormat === 'opaque') {
      accessToken = newToken();
      this.#sweep();
      this.#opaque.set(accessToken, { ...subject, jti, iat, exp: iat + ttl, ...(family && { family }) });
    } else {
      accessToken = await this.#settings.keys.sign(this.#accessClaims(subject, iat, iat + ttl, jti), 'at+jwt');
      if (family !== undefined) {
        this.#sweep();
        this.#jwtFamilies.set(jti, { family, exp: iat + ttl });
      }
    }
    return {
      access_token: accessToken,
      token_type: subject.jkt === undefined ? 'Bearer' : 'DPoP',
      expires_in: ttl,
      ...(subject.scope.length > 0 && { scope: subject.scope.join(' ') }),
    };
  }

  /** The claims of an RFC 9068 access token. */
  #accessClaims(subject: Subject, iat: number, exp: number, jti: string): JWTPayload {
    const aud = subject.resources;
    return {
      iss: this.#settings.issuer,
      sub: subject.sub,
      aud: aud.length === 1 ? aud[0] : [...aud],
      exp,
      iat,
      jti,
      client_id: subject.clientId,
      ...(subject.scope.length > 0 && { scope: subject.scope.join(' ') }),
      ...(subject.jkt !== undefined && { cnf: { jkt: subject.jkt } }),
    };
  }

  async #idToken(family: Family): Promise<string> {
    const iat = this.#nowS();
    return this.#settings.keys.sign(
      {
        ...this.#settings.userClaims(family.sub),
        iss: this.#settings.issuer,
        sub: family.sub,
        aud: family.clientId,
        iat,
        exp: iat + this.#settings.idTokenTtlS,
        auth_time: family.authTime,
      },
      'JWT',
    );
  }

  #newRefreshToken(family: Family): string {
    const token = newToken();
    this.#sweep();
    this.#refreshTokens.set(token, {
      family,
      expiresAt: this.#settings.clock.now() + this.#settings.refreshTokenTtlS * 1000,
      consumed: false,
    });
    return token;
  }

  /**
   * What a login would have returned (access token, refresh token, ID token with `openid`), issued without
   * a request: the state a test starts from.
   */
  async login(subject: Subject): Promise<TokenResponse> {
    const family: Family = { ...subject, id: randomUUID(), authTime: this.#nowS(), revoked: false };
    const refreshToken = this.#newRefreshToken(family);
    return {
      ...(await this.#accessToken(subject, family)),
      refresh_token: refreshToken,
      ...(subject.scope.includes('openid') && { id_token: await this.#idToken(family) }),
    };
  }

  /** A JWT access token signed with the current key, with any claims a test wants. */
  mint(claims: JWTPayload): Promise<string> {
    return this.#settings.keys.sign(claims, 'at+jwt');
  }

  /** The claims of an active access token (JWT or opaque), or `undefined`. */
  async activeAccessToken(token: string): Promise<Record<string, unknown> | undefined> {
    const now = this.#nowS();
    const opaque = this.#opaque.get(token);
    if (opaque !== undefined) {
      if (opaque.exp <= now || opaque.family?.revoked === true) return undefined;
      return {
        iss: this.#settings.issuer,
        sub: opaque.sub,
        aud: opaque.resources.length === 1 ? opaque.resources[0] : [...opaque.resources],
        exp: opaque.exp,
        iat: opaque.iat,
        jti: opaque.jti,
        client_id: opaque.clientId,
        ...(opaque.scope.length > 0 && { scope: opaque.scope.join(' ') }),
        ...(opaque.jkt !== undefined && { cnf: { jkt: opaque.jkt } }),
      };
    }
    if (token.split('.').length !== 3) return undefined;
    let payload: JWTPayload;
    try {
      // RFC 9068 §4: only a JWT typed at+jwt is an access token; an ID token signed by the same key is not.
      const { issuer, clock } = this.#settings;
      ({ payload } = await this.#settings.keys.verify(token, issuer, clock.now(), 'at+jwt'));
    } catch {
      return undefined;
    }
    const jti = typeof payload.jti === 'string' ? payload.jti : undefined;
    if (jti !== undefined && (this.#revokedJtis.has(jti) || this.#jwtFamilies.get(jti)?.family.revoked === true)) {
      return undefined;
    }
    return payload as Record<string, unknown>;
  }

  /** RFC 7662: any authenticated client may introspect access tokens; refresh tokens only their own. */
  async introspect(token: string, client: RegisteredClient): Promise<Answer> {
    const refresh = this.#refreshTokens.get(token);
    let body: Record<string, unknown> = { active: false };
    if (refresh !== undefined) {
      const family = refresh.family;
      const active =
        !family.revoked &&
        !refresh.consumed &&
        refresh.expiresAt > this.#settings.clock.now() &&
        family.clientId === client.clientId;
      if (active) {
        body = {
          active: true,
          iss: this.#settings.issuer,
          sub: family.sub,
          client_id: family.clientId,
          exp: Math.floor(refresh.expiresAt / 1000),
          ...(family.scope.length > 0 && { scope: family.scope.join(' ') }),
        };
      }
    } else {
      const claims = await this.activeAccessToken(token);
      if (claims !== undefined) body = { active: true, ...claims, token_type: claims['cnf'] ? 'DPoP' : 'Bearer' };
    }
    return { status: 200, body, headers: { ...NO_STORE, 'content-type': 'application/json; charset=utf-8' } };
  }

  /**
   * RFC 7009: a refresh token ends its whole grant (every refresh and access token of it); an access token
   * ends itself. Unknown tokens, and tokens of other clients, are answered 200 and left alone (§2.2).
   */
  async revoke(token: string, client: RegisteredClient): Promise<Answer> {
    const refresh = this.#refreshTokens.get(token);
    if (refresh !== undefined) {
      if (refresh.family.clientId === client.clientId) this.#revokeFamily(refresh.family);
    } else {
      const opaque = this.#opaque.get(token);
      if (opaque !== undefined) {
        if (opaque.clientId === client.clientId) this.#opaque.delete(token);
      } else {
        const claims = await this.activeAccessToken(token);
        if (claims !== undefined && claims['client_id'] === client.clientId && typeof claims['jti'] === 'string') {
          this.#revokedJtis.set(claims['jti'], Number(claims['exp']));
        }
      }
    }
    return { status: 200, headers: NO_STORE };
  }

  /**
   * OpenID Connect UserInfo for a valid access token with the `openid` scope. `proof` is what the request's
   * DPoP proof proved when the token came with the `DPoP` scheme (the key's thumbprint, or why not);
   * `undefined` for the `Bearer` scheme, which a DPoP-bound token cannot use (RFC 9449 §7.2).
   */
  async userinfo(token: string | undefined, proof?: string | OAuthError): Promise<Answer> {
    const scheme = proof === undefined ? 'Bearer' : 'DPoP';
    const refuse = (error: string, description: string): Answer => ({
      status: 401,
      headers: { ...NO_STORE, 'www-authenticate': `${scheme} error="${error}"` },
      body: { error, error_description: description },
    });
    if (typeof proof === 'object') return refuse('invalid_dpop_proof', proof.description);
    const claims = token === undefined ? undefined : await this.activeAccessToken(token);
    if (claims === undefined || typeof claims['sub'] !== 'string') {
      return refuse('invalid_token', 'access token is not valid');
    }
    const cnf = claims['cnf'];
    const bound = typeof cnf === 'object' && cnf !== null ? (cnf as Record<string, unknown>)['jkt'] : undefined;
    if (bound !== proof) {
      const description =
        proof === undefined
          ? 'a DPoP-bound token needs the DPoP scheme and a proof'
          : bound === undefined
            ? 'not a DPoP-bound token'
            : 'the proof is not signed by the key the token is bound to';
      return refuse('invalid_token', description);
    }
    const scope = typeof claims['scope'] === 'string' ? claims['scope'].split(' ') : [];
    if (!scope.includes('openid')) {
      return {
        status: 403,
        headers: { ...NO_STORE, 'www-authenticate': `${scheme} error="insufficient_scope", scope="openid"` },
        body: { error: 'insufficient_scope', error_description: 'the openid scope is required' },
      };
    }
    return {
      status: 200,
      body: { ...this.#settings.userClaims(claims['sub']), sub: claims['sub'] },
      headers: { ...NO_STORE, 'content-type': 'application/json; charset=utf-8' },
    };
  }

  #revokeFamily(family: Family): void {
    family.revoked = true;
  }

  /** Drops expired records when the maps grow, so a long test run does not keep every token forever. */
  #sweep(): void {
    const now = this.#settings.clock.now();
    const nowS = Math.floor(now / 1000);
    if (this.#refreshTokens.size >= SWEEP_AT) {
      for (const [token, r] of this.#refreshTokens) {
        if (r.expiresAt <= now || r.family.revoked) this.#refreshTokens.delete(token);
      }
    }
    if (this.#opaque.size >= SWEEP_AT) {
      for (const [token, r] of this.#opaque) if (r.exp <= nowS) this.#opaque.delete(token);
    }
    if (this.#jwtFamilies.size >= SWEEP_AT) {
      for (const [jti, r] of this.#jwtFamilies) if (r.exp <= nowS) this.#jwtFamilies.delete(jti);
    }
    if (this.#revokedJtis.size >= SWEEP_AT) {
      for (const [jti, exp] of this.#revokedJtis) if (exp <= nowS) this.#revokedJtis.delete(jti);
    }
  }
}

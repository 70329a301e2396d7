/**
 * What every grant shares: where the authorization server is (discovery or an explicit token endpoint),
 * who the client is and how it authenticates, the transport, and turning a token endpoint response into a
 * {@link Token}. Built on `oauth4webapi`.
 *
 * @module
 */
import { KeyObject, X509Certificate, createHash } from 'node:crypto';
import { inspect } from 'node:util';
import { decodeJwt } from 'jose';
import * as oauth from 'oauth4webapi';
import { type Clock, systemClock } from '../clock.js';
import { type Duration, toMs } from '../duration.js';
import { TokenwardenError, isTokenwardenError } from '../errors.js';
import {
  DEFAULT_MAX_RESPONSE_BYTES,
  DEFAULT_TIMEOUT_MS,
  type FetchLike,
  type ResponseMeta,
  boundedFetch,
} from '../http/transport.js';
import { type ProxyOption, redactProxyUrl, resolveTransport } from '../http/proxy.js';
import { parseRetryAfter } from '../policy.js';
import { Redactor } from '../redact.js';
import { checkKey } from '../stores/shared.js';
import * as telemetry from '../telemetry/hooks.js';
import { type Token, isTokenString, tokenFromResponse } from '../token.js';
import { isWellFormedUnicode } from '../unicode.js';
import { basicUserPass, clientSecretBasic } from './client-secret-basic.js';
import { type CredentialInput, checkCredentialInput, isFileCredential, readCredential } from './credential.js';
import { type DiscoveryAlgorithm, discover } from './discovery.js';
import { rememberSecrets, toTokenwardenError } from './errors.js';
import { readTokenResponse } from './token-response.js';
import type { FetchTokenContext, TokenSource } from './source.js';

/**
 * The client authentication methods of RFC 6749, RFC 7523 and RFC 8705.
 *
 * @example
 * ```ts
 * const method: ClientAuthMethod = 'private_key_jwt';
 * clientCredentials({ issuer, clientId, clientAuth: method, privateKey: jwk });
 * ```
 */
export type ClientAuthMethod =
  | 'client_secret_basic'
  | 'client_secret_post'
  | 'client_secret_jwt'
  | 'private_key_jwt'
  | 'tls_client_auth'
  | 'self_signed_tls_client_auth'
  | 'none';

/**
 * A private key for `private_key_jwt` (or a JWT bearer assertion): a `CryptoKey`, a private JWK (with `d`),
 * a PKCS#8 PEM string, or `{ key, kid, alg, certificate }` with any of those. `certificate` is the key's X.509
 * certificate (PEM): its SHA-256 and SHA-1 thumbprints go in the header of each client assertion
 * (`x5t#S256`, `x5t`), as Microsoft Entra ID requires of certificate credentials; it must be the certificate of
 * this key (`ERR_CONFIG` at the first request otherwise).
 *
 * @example
 * ```ts
 * const key: PrivateKeyInput = { key: readFileSync('client-key.pem', 'utf8'), kid: 'key-2026', alg: 'PS256' };
 * const entra: PrivateKeyInput = { key: readFileSync('app.key', 'utf8'), certificate: readFileSync('app.crt', 'utf8') };
 * ```
 */
export type PrivateKeyInput =
  | CryptoKey
  | oauth.JWK
  | string
  | { key: CryptoKey | oauth.JWK | string; kid?: string; alg?: string; certificate?: string };

/**
 * Options every grant accepts.
 *
 * @example
 * ```ts
 * const common: ClientOptions = {
 *   issuer: 'https://login.example.com',
 *   clientId: 'billing',
 *   clientSecret: process.env.CLIENT_SECRET,
 *   scope: ['invoices:read'],
 *   resource: 'https://api.example.com',
 *   timeout: '5s',
 * };
 * ```
 */
export interface ClientOptions {
  /** Issuer URL; its metadata is discovered (OpenID Connect, then RFC 8414) and cached. */
  issuer?: string;
  /** Token endpoint URL; when given, no discovery happens (revocation then needs `revocationEndpoint`). */
  tokenEndpoint?: string;
  /**
   * Revocation endpoint URL (RFC 7009), used when the server's metadata names none (or there is no
   * discovery): `UserTokens.revoke()` and `OAuthClient.revoke()` then work against servers that do not
   * advertise it.
   */
  revocationEndpoint?: string;
  /** Which discovery document to read. Default `'auto'`. */
  discovery?: DiscoveryAlgorithm;
  /** The client identifier. */
  clientId: string;
  /** The client secret (for `client_secret_*`). Never logged; redacted in `inspect` and JSON. */
  clientSecret?: string;
  /**
   * How the client authenticates: a method name or an `oauth4webapi` `ClientAuth` function. Default:
   * `private_key_jwt` with `privateKey`, `client_secret_basic` with `clientSecret`, otherwise `none`.
   */
  clientAuth?: ClientAuthMethod | oauth.ClientAuth;
  /** The private key for `private_key_jwt`. */
  privateKey?: PrivateKeyInput;
  /**
   * The `aud` of the client assertions `private_key_jwt` and `client_secret_jwt` sign: `'issuer'` (default: the
   * authorization server's issuer identifier, as RFC 7523bis and FAPI 2.0 require), `'token_endpoint'` (the token
   * endpoint's URL, which Microsoft Entra ID and Authlib 1.2 require, and which OpenID Connect Core §9 suggests;
   * an `invalid_client` answered to an assertion for the issuer says to try it), or a URL of
   * your choosing.
   *
   * @example
   * ```ts
   * clientCredentials({ issuer: `https://login.microsoftonline.com/${tenant}/v2.0`, clientId, privateKey,
   *   clientAssertionAudience: 'token_endpoint', scope: 'api://billing/.default' });
   * ```
   */
  clientAssertionAudience?: 'issuer' | 'token_endpoint' | (string & {});
  /**
   * A client assertion signed elsewhere (RFC 7523 §2.2), read for every request to the authorization server:
   * `{ file }` — a workload identity token the platform writes and rotates (a Kubernetes projected
   * service-account token, `AZURE_FEDERATED_TOKEN_FILE`) — or a function returning one. Sent as
   * `client_assertion` with `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`
   * (the `private_key_jwt` method). A missing, empty or unreadable file fails that request with
   * `ERR_CREDENTIAL` naming the path, never the content.
   */
  clientAssertion?: CredentialInput;
  /** Scope(s) to request. */
  scope?: string | string[];
  /** Resource indicator(s), RFC 8707. */
  resource?: string | string[];
  /** Audience(s) (RFC 8693 and many providers' `audience` parameter). */
  audience?: string | string[];
  /** Extra token request parameters. */
  extraParams?: Record<string, string | string[]>;
  /** Extra HTTP headers on requests to the authorization server. */
  headers?: Record<string, string>;
  /** The `fetch` to use (inject for mTLS agents, tests). Not with `proxy`. */
  fetch?: FetchLike;
  /**
   * Send every request to the authorization server (discovery, token, revocation, userinfo) through an
   * HTTP(S) proxy: a URL (`'http://proxy.internal:3128'`, credentials allowed and never shown), or `'env'`
   * for `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` (and lower-case) read like curl on each request.
   * Default: no proxy (Node's `fetch` ignores those variables). Not with `fetch`.
   */
  proxy?: ProxyOption;
  /** Time limit per request. Default `'10s'`. */
  timeout?: Duration;
  /** Largest response accepted from the server, in bytes. Default 1 MiB. */
  maxResponseBytes?: number;
  /** Allow `http:` URLs. Only for local development and tests. Default `false`. */
  allowInsecureRequests?: boolean;
  /**
   * Sender-constrain tokens with DPoP (RFC 9449): the key pair that signs the proofs (its public key must
   * be extractable). The token endpoint then issues `DPoP` tokens, and `manager.fetch` adds a proof to each
   * request. Processes that share a store must share this key pair, or they cannot use each other's tokens.
   */
  dpop?: CryptoKeyPair;
  /** Store key override; by default the key is derived from the source's identity. */
  key?: string;
  /** Clock for `issuedAt`. Default: the system clock. */
  clock?: Clock;
}

/** The identity fields of a client used to derive store keys. */
type Identity = Record<string, unknown>;

/**
 * A configured OAuth client: resolves the authorization server, authenticates, and performs token
 * endpoint, revocation and userinfo requests. Grants are thin wrappers over it.
 *
 * @example
 * ```ts
 * const client = new OAuthClient({ issuer, clientId: 'app', clientSecret });
 * const token = await client.tokenRequest('client_credentials', new URLSearchParams({ scope: 'read' }));
 * ```
 */
export class OAuthClient {
  readonly clientId: string;
  readonly issuer: string | undefined;
  readonly tokenEndpoint: string | undefined;
  /** The configured `revocationEndpoint`, if any (used when the metadata has none). */
  readonly revocationEndpoint: string | undefined;
  readonly authMethod: ClientAuthMethod | 'custom';
  readonly timeoutMs: number;
  readonly maxResponseBytes: number;
  readonly allowInsecureRequests: boolean;
  readonly clock: Clock;
  /** The DPoP handle (proofs and server nonces), when `dpop` is configured. */
  readonly dpop: oauth.DPoPHandle | undefined;
  /**
   * The transport under every request of this client: the `fetch` option, a proxy-aware fetch for `proxy`,
   * or `undefined` for the global `fetch`. Give it to anything else that talks to the same server.
   */
  readonly fetch: FetchLike | undefined;
  readonly #options: ClientOptions;
  readonly #client: oauth.Client;
  #auth: Promise<oauth.ClientAuth> | undefined;

  constructor(options: ClientOptions) {
    if (options === null || typeof options !== 'object') {
      throw new TokenwardenError('ERR_CONFIG', 'options must be an object');
    }
    if (typeof options.clientId !== 'string' || options.clientId === '') {
      throw new TokenwardenError('ERR_CONFIG', 'clientId is required');
    }
    if (options.issuer === undefined && options.tokenEndpoint === undefined) {
      throw new TokenwardenError('ERR_CONFIG', 'either issuer or tokenEndpoint is required');
    }
    this.allowInsecureRequests = options.allowInsecureRequests === true;
    this.issuer =
      options.issuer === undefined ? undefined : checkUrl(options.issuer, 'issuer', this.allowInsecureRequests);
    this.tokenEndpoint =
      options.tokenEndpoint === undefined
        ? undefined
        : checkUrl(options.tokenEndpoint, 'tokenEndpoint', this.allowInsecureRequests);
    this.revocationEndpoint =
      options.revocationEndpoint === undefined
        ? undefined
        : checkUrl(options.revocationEndpoint, 'revocationEndpoint', this.allowInsecureRequests);
    if (options.clientSecret !== undefined && typeof options.clientSecret !== 'string') {
      throw new TokenwardenError('ERR_CONFIG', 'clientSecret must be a string');
    }
    // A lone surrogate cannot be sent (UTF-8 has no form for it): found here, not as a URIError mid-request.
    for (const [name, value] of [
      ['clientId', options.clientId],
      ['clientSecret', options.clientSecret],
    ] as const) {
      if (value !== undefined && !isWellFormedUnicode(value)) {
        throw new TokenwardenError('ERR_CONFIG', `${name} is not well-formed Unicode (it holds a lone surrogate)`);
      }
    }
    if (options.key !== undefined) checkKey(options.key);
    checkRequestParams(options);
    this.clientId = options.clientId;
    this.timeoutMs = toMs(options.timeout ?? DEFAULT_TIMEOUT_MS, 'timeout');
    this.maxResponseBytes = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    if (!(Number.isInteger(this.maxResponseBytes) && this.maxResponseBytes > 0)) {
      throw new TokenwardenError('ERR_CONFIG', 'maxResponseBytes must be a positive integer');
    }
    this.clock = options.clock ?? systemClock;
    this.fetch = resolveTransport(options.fetch, options.proxy);
    this.authMethod = resolveAuthMethod(options);
    const audience: unknown = options.clientAssertionAudience;
    if (audience !== undefined && (typeof audience !== 'string' || audience === '')) {
      throw new TokenwardenError('ERR_CONFIG', "clientAssertionAudience must be 'issuer', 'token_endpoint' or a URL");
    }
    this.#options = options;
    // RFC 8705 §5: a client authenticating with its certificate uses the metadata's `mtls_endpoint_aliases` where
    // present — a server may ask for client certificates only there (Auth0 serves them on a host of their own),
    // so the plain endpoint would see no certificate and answer invalid_client.
    const mtls = this.authMethod === 'tls_client_auth' || this.authMethod === 'self_signed_tls_client_auth';
    this.#client = { client_id: options.clientId, ...(mtls && { use_mtls_endpoint_aliases: true }) };
    try {
      this.dpop = options.dpop === undefined ? undefined : oauth.DPoP(this.#client, options.dpop);
    } catch (err) {
      throw new TokenwardenError('ERR_CONFIG', 'dpop must be a CryptoKeyPair whose public key is extractable', {
        cause: err,
      });
    }
  }

  /** The authorization server metadata (discovered and cached, or built from `tokenEndpoint`). */
  async authorizationServer(signal?: AbortSignal): Promise<oauth.AuthorizationServer> {
    if (this.issuer === undefined || this.tokenEndpoint !== undefined) {
      // No discovery: the assertion audience is the issuer when known, else the token endpoint (RFC 7523).
      return {
        issuer: this.issuer ?? (this.tokenEndpoint as string),
        token_endpoint: this.tokenEndpoint,
        ...(this.revocationEndpoint !== undefined && { revocation_endpoint: this.revocationEndpoint }),
      };
    }
    const as = await discover(this.issuer, {
      clock: this.clock,
      algorithm: this.#options.discovery ?? 'auto',
      allowInsecureRequests: this.allowInsecureRequests,
      timeoutMs: this.timeoutMs,
      maxResponseBytes: this.maxResponseBytes,
      ...(this.fetch && { fetch: this.fetch }),
      ...(signal && { signal }),
    });
    const aliases: unknown = as.mtls_endpoint_aliases;
    if (
      this.#client.use_mtls_endpoint_aliases === true &&
      aliases !== undefined &&
      (aliases === null || typeof aliases !== 'object' || Array.isArray(aliases))
    ) {
      // oauth4webapi would look endpoints up in it with `in`, a TypeError on a string or a number.
      throw new TokenwardenError(
        'ERR_DISCOVERY',
        "discovery failed: the metadata's mtls_endpoint_aliases is not an object",
      );
    }
    return as;
  }

  /**
   * Options for an oauth4webapi request: transport, insecure flag, headers, signal. The transport notes the
   * credentials each request carries (its `Authorization` header, secret form fields) with the response,
   * so that errors made of what the server answered are scrubbed of them (see {@link OAuthClient.redactor}).
   */
  requestOptions(meta?: ResponseMeta, signal?: AbortSignal): oauth.HttpRequestOptions<'POST', URLSearchParams> {
    const transport = boundedFetch(
      {
        timeoutMs: this.timeoutMs,
        maxResponseBytes: this.maxResponseBytes,
        ...(this.fetch && { fetch: this.fetch }),
      },
      meta,
    );
    const noting: FetchLike = async (input, init) => {
      const secrets = sentSecrets(init);
      if (meta !== undefined) ((meta as SentMeta).sent ??= []).push(...secrets);
      const sent = this.redactor(secrets);
      try {
        const response = await transport(input, init);
        rememberSecrets(response, sent);
        return response;
      } catch (err) {
        if (err !== null && typeof err === 'object') rememberSecrets(err, sent);
        throw err;
      }
    };
    return {
      [oauth.customFetch]: noting,
      [oauth.allowInsecureRequests]: this.allowInsecureRequests,
      ...(this.#options.headers && { headers: this.#options.headers }),
      ...(signal && { signal }),
    };
  }

  /** The oauth4webapi client metadata. */
  get client(): oauth.Client {
    return this.#client;
  }

  /** The client authentication function (keys imported once, lazily). */
  clientAuthentication(): Promise<oauth.ClientAuth> {
    if (this.#auth === undefined) {
      const auth = makeClientAuth(this.#options, this.authMethod);
      // A key that failed to import is tried again next time rather than cached as a failure.
      auth.catch(() => {
        if (this.#auth === auth) this.#auth = undefined;
      });
      this.#auth = auth;
    }
    return this.#auth;
  }

  /**
   * Performs a token request with `grantType` and `params` (the common scope/resource/audience/extra
   * parameters are added unless `params` already sets them) and returns the {@link Token}.
   * `context.refreshToken` is carried over when the response has no refresh token.
   *
   * `params` may be a function that makes the parameters: it is called for the request and again for the one
   * resend this method may make (a DPoP nonce demanded, a connection reset before any answer), so that a
   * credential good for one use — a JWT whose `jti` the server remembers (RFC 7523 §3) — is made anew rather
   * than sent twice. A failure of its first call is thrown as it is.
   *
   * @example
   * ```ts
   * await client.tokenRequest('urn:ietf:params:oauth:grant-type:jwt-bearer', async () => new URLSearchParams({ assertion: await signAssertion() }));
   * ```
   */
  async tokenRequest(
    grantType: string,
    params: URLSearchParams | (() => URLSearchParams | Promise<URLSearchParams>),
    context: { signal?: AbortSignal | undefined; refreshToken?: string | undefined } = {},
  ): Promise<Token> {
    const make = typeof params === 'function' ? params : undefined;
    const first = make === undefined ? (params as URLSearchParams) : await make();
    // Counted, timed and traced as one token request (the HTTP client span is a child of its span).
    return telemetry.tokenRequest(grantType, () => this.#tokenRequest(grantType, first, make, context));
  }

  async #tokenRequest(
    grantType: string,
    params: URLSearchParams,
    make: (() => URLSearchParams | Promise<URLSearchParams>) | undefined,
    context: { signal?: AbortSignal | undefined; refreshToken?: string | undefined },
  ): Promise<Token> {
    const meta: SentMeta = {};
    const what = `token request (${grantType})`;
    const issuedAt = this.clock.now();
    /** A refresh token the server issued in a successful answer — kept even if a later check fails. */
    let rotated: string | undefined;
    /** Every parameter set made for this request (a resend may make another): their credentials are redacted. */
    const made = [params];
    try {
      const as = await this.authorizationServer(context.signal);
      const auth = await this.clientAuthentication();
      this.addCommonParams(params);
      const attempt = async (form: URLSearchParams): Promise<oauth.TokenEndpointResponse> => {
        const answer = await readTokenResponse(
          await oauth.genericTokenEndpointRequest(as, this.#client, auth, grantType, new URLSearchParams(form), {
            ...this.requestOptions(meta, context.signal),
            ...(this.dpop && { DPoP: this.dpop }),
          }),
          { dpop: this.dpop !== undefined, exchange: grantType === TOKEN_EXCHANGE },
        );
        const body = answer.response.ok ? answer.body : undefined;
        // Kept only when it could be sent: a refresh token outside its character set (a lone surrogate, a
        // control character) is refused with the answer, and could never be spent.
        if (typeof body?.['refresh_token'] === 'string' && isTokenString(body['refresh_token'])) {
          rotated = body['refresh_token'];
        }
        if (answer.failure !== undefined) throw answer.failure;
        return oauth.processGenericTokenEndpointResponse(
          idTokenIssuer(as, this.issuer, body),
          this.#client,
          answer.response,
          // RFC 8693 §2.2.1: an exchanged token that is not an access token has the type "N_A"; no other grant
          // issues one (RFC 6749 §7.1: a token of a type the client does not understand is not used).
          grantType === TOKEN_EXCHANGE ? { recognizedTokenTypes: { n_a: () => undefined } } : {},
        );
      };
      let json: oauth.TokenEndpointResponse;
      try {
        json = await attempt(params);
      } catch (err) {
        // A DPoP server may ask for a nonce first (RFC 9449 §8): the handle kept it; send again once.
        // A kept-alive connection the server closed as we reused it fails with a reset before any answer:
        // send again once, except for a refresh token, which the server may have spent (a second spend
        // revokes the grant) — the manager's backoff retries that one.
        const again =
          rotated === undefined &&
          ((this.dpop !== undefined && oauth.isDPoPNonceError(err)) ||
            (grantType !== 'refresh_token' && meta.status === undefined && isConnectionReset(err)));
        if (!again) throw err;
        // The server may have read (and remembered) what was sent: a one-time credential is made anew.
        let resend = params;
        if (make !== undefined) {
          resend = await make();
          made.push(resend);
          this.addCommonParams(resend);
        }
        json = await attempt(resend);
      }
      return tokenFromResponse(json as unknown as Record<string, unknown>, {
        issuedAt,
        refreshToken: context.refreshToken,
      });
    } catch (err) {
      const retryAfterMs =
        meta.status === 429 || meta.status === 503 ? parseRetryAfter(meta.retryAfter, this.clock.now()) : undefined;
      const error = toTokenwardenError(
        err,
        what,
        'ERR_DISCOVERY',
        retryAfterMs,
        this.redactor([context.refreshToken, ...made.flatMap(secretParams), ...(meta.sent ?? [])]),
      );
      if (rotated !== undefined && rotated !== context.refreshToken) markRotated(error, rotated);
      // A refused client: invalid_client, or a bare 401/403 (Glewlwyd answers so, with no body at all).
      const refusedClient =
        error.error === 'invalid_client' ||
        (error.code === 'ERR_HTTP_STATUS' && (error.status === 401 || error.status === 403));
      if (refusedClient) explainInvalidClient(error, this.authMethod, this.#options);
      throw error;
    }
  }

  /** Adds `scope`, `resource`, `audience` and `extraParams` from the options where `params` lacks them. */
  addCommonParams(params: URLSearchParams): void {
    const { scope, resource, audience, extraParams } = this.#options;
    if (scope !== undefined && !params.has('scope')) params.set('scope', scopeString(scope));
    if (resource !== undefined && !params.has('resource'))
      for (const r of toArray(resource)) params.append('resource', r);
    if (audience !== undefined && !params.has('audience'))
      for (const a of toArray(audience)) params.append('audience', a);
    for (const [name, value] of Object.entries(extraParams ?? {})) {
      if (params.has(name)) continue;
      for (const v of toArray(value)) params.append(name, v);
    }
  }

  /**
   * Revokes a token (RFC 7009) at the metadata's `revocation_endpoint`, else at the configured
   * `revocationEndpoint`. Resolves when the server confirms; with neither it is an `ERR_UNSUPPORTED` error.
   */
  async revoke(token: string, hint?: 'refresh_token' | 'access_token', signal?: AbortSignal): Promise<void> {
    const meta: SentMeta = {};
    try {
      const discovered = await this.authorizationServer(signal);
      const endpoint = discovered.revocation_endpoint ?? this.revocationEndpoint;
      if (endpoint === undefined) {
        throw new TokenwardenError(
          'ERR_UNSUPPORTED',
          'the authorization server has no revocation endpoint (set revocationEndpoint if it has one that its metadata does not name)',
        );
      }
      const as = { ...discovered, revocation_endpoint: endpoint };
      const response = await oauth.revocationRequest(as, this.#client, await this.clientAuthentication(), token, {
        ...this.requestOptions(meta, signal),
        ...(hint && { additionalParameters: { token_type_hint: hint } }),
      });
      await oauth.processRevocationResponse(response);
    } catch (err) {
      throw toTokenwardenError(
        err,
        'revocation',
        'ERR_DISCOVERY',
        undefined,
        this.redactor([token, ...(meta.sent ?? [])]),
      );
    }
  }

  /**
   * A {@link Redactor} for errors of this client: it knows the client secret, the private key material, and
   * `extra` (a refresh token being spent, an assertion, a subject token…), in every form a server could
   * echo them, including the Basic credential of this client id.
   *
   * @example
   * ```ts
   * throw toTokenwardenError(err, 'userinfo', 'ERR_DISCOVERY', undefined, client.redactor([accessToken]));
   * ```
   */
  redactor(extra: Iterable<string | undefined> = []): Redactor {
    return new Redactor([this.#options.clientSecret, ...keyMaterial(this.#options.privateKey), ...extra], {
      clientId: this.clientId,
    });
  }

  /**
   * The identity fields for store keys: everything that changes which token the server would issue.
   * Secret values are hashed before they reach a key.
   */
  identity(grant: string, extra: Identity = {}): Identity {
    const o = this.#options;
    return {
      grant,
      issuer: this.issuer ?? null,
      tokenEndpoint: this.tokenEndpoint ?? null,
      clientId: this.clientId,
      scope: o.scope === undefined ? null : scopeString(o.scope),
      resource: o.resource === undefined ? null : toArray(o.resource),
      audience: o.audience === undefined ? null : toArray(o.audience),
      extraParams: o.extraParams ?? null,
      ...extra,
    };
  }

  /** The store key for a source: the explicit `key` option, else derived from {@link identity}. */
  keyFor(grant: string, extra: Identity = {}): string {
    return this.#options.key ?? deriveKey(this.identity(grant, extra));
  }

  /** Log-safe description (no secret). */
  toJSON(): Record<string, unknown> {
    return {
      clientId: this.clientId,
      issuer: this.issuer,
      tokenEndpoint: this.tokenEndpoint,
      clientAuth: this.authMethod,
      clientSecret: this.#options.clientSecret === undefined ? undefined : '[redacted]',
      privateKey: this.#options.privateKey === undefined ? undefined : '[redacted]',
      clientAssertion: describeCredential(this.#options.clientAssertion),
      proxy: this.#options.proxy === undefined ? undefined : redactProxyUrl(this.#options.proxy),
    };
  }

  [inspect.custom](): string {
    return `OAuthClient ${inspect(this.toJSON())}`;
  }
}

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';

const ROTATED_REFRESH_TOKEN = Symbol('tokenwarden.rotatedRefreshToken');

function markRotated(error: Error, refreshToken: string): void {
  Object.defineProperty(error, ROTATED_REFRESH_TOKEN, { value: refreshToken, enumerable: false, configurable: true });
}

/**
 * The refresh token the server issued in an answer that then failed a check (an ID token, a token type):
 * the server has already rotated the refresh token it was sent, so this one must be kept, not the old one.
 * Never enumerable, never in a message or in JSON.
 *
 * @example
 * ```ts
 * try { await client.tokenRequest('refresh_token', params); }
 * catch (err) { const next = rotatedRefreshToken(err); if (next) await keep(next); throw err; }
 * ```
 */
export function rotatedRefreshToken(error: unknown): string | undefined {
  if (error === null || typeof error !== 'object') return undefined;
  const value = (error as { [ROTATED_REFRESH_TOKEN]?: unknown })[ROTATED_REFRESH_TOKEN];
  return typeof value === 'string' ? value : undefined;
}

/**
 * The metadata to check a token response's ID token against. With a configured issuer, that issuer; with
 * only a token endpoint there is none to compare with, so the ID token is not judged against the endpoint's
 * URL (its own `iss` stands; audience, expiry and the rest are still checked).
 */
function idTokenIssuer(
  as: oauth.AuthorizationServer,
  configured: string | undefined,
  body: Record<string, unknown> | undefined,
): oauth.AuthorizationServer {
  if (configured !== undefined || typeof body?.['id_token'] !== 'string') return as;
  try {
    const { iss } = decodeJwt(body['id_token']);
    return typeof iss === 'string' ? { ...as, issuer: iss } : as;
  } catch {
    return as;
  }
}

/** A socket closed under the request (reset, broken pipe) — not a refusal, not a timeout. */
function isConnectionReset(err: unknown): boolean {
  if (!isTokenwardenError(err, 'ERR_NETWORK')) return false;
  for (let e: unknown = err.cause, depth = 0; e && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code;
    if (code === 'ECONNRESET' || code === 'EPIPE' || code === 'UND_ERR_SOCKET') return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/** What a request observed, plus the credentials it sent (for {@link OAuthClient.redactor}). */
interface SentMeta extends ResponseMeta {
  sent?: string[];
}

/** Form fields that carry a credential (RFC 6749, 7009, 7523, 7636, 8628, 8693). */
const SECRET_FIELDS = [
  'client_secret',
  'client_assertion',
  'assertion',
  'refresh_token',
  'code',
  'code_verifier',
  'password',
  'device_code',
  'subject_token',
  'actor_token',
  'token',
];

function secretParams(params: URLSearchParams): string[] {
  return SECRET_FIELDS.flatMap((name) => params.getAll(name));
}

/** The credentials a request carries: its Authorization header (and a Basic one decoded), secret form fields. */
function sentSecrets(init: RequestInit | undefined): string[] {
  const out: string[] = [];
  const authorization = new Headers(init?.headers).get('authorization');
  if (authorization !== null) {
    const [scheme, value] = authorization.split(/\s+/, 2);
    if (value !== undefined) {
      out.push(value);
      if (scheme?.toLowerCase() === 'basic') {
        const decoded = Buffer.from(value, 'base64').toString('utf8');
        const password = decoded.slice(decoded.indexOf(':') + 1);
        out.push(password, safeDecode(password));
      }
    }
  }
  const body = init?.body;
  if (body instanceof URLSearchParams) out.push(...secretParams(body));
  else if (typeof body === 'string') out.push(...secretParams(new URLSearchParams(body)));
  return out;
}

function safeDecode(value: string): string {
  try {
    return decodeURIComponent(value.replace(/\+/g, ' '));
  } catch {
    return value;
  }
}

/** The secret parts of a private key as text: a PEM (and its base64 body), a JWK's private members. */
function keyMaterial(input: PrivateKeyInput | undefined): string[] {
  if (input === undefined || input === null) return [];
  if (typeof input === 'string') {
    const body = input.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
    const lines = input.split(/\r?\n/).filter((l) => l.length >= 16 && !l.startsWith('-----'));
    return [input, body, ...lines];
  }
  if (isCryptoKey(input)) return [];
  if ('key' in input && input.key !== undefined && !('kty' in input)) {
    return keyMaterial(input.key as PrivateKeyInput);
  }
  const jwk = input as Record<string, unknown>;
  return ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k'].flatMap((m) => (typeof jwk[m] === 'string' ? [jwk[m]] : []));
}

/**
 * A deterministic store key from identity fields: `tw1:` + a SHA-256 over canonical JSON, so that no
 * secret and no attacker-chosen character ever reaches a key.
 *
 * @example
 * ```ts
 * deriveKey({ grant: 'client_credentials', clientId: 'svc', scope: 'read' }); // 'tw1:client_credentials:3f2a…'
 * ```
 */
export function deriveKey(identity: Identity): string {
  const digest = createHash('sha256').update(canonicalJson(identity)).digest('base64url');
  const grant = typeof identity['grant'] === 'string' ? identity['grant'].replace(/[^a-z0-9_-]/gi, '_') : 'token';
  return `tw1:${grant}:${digest}`;
}

/** SHA-256 of a secret, for identities: lets two configurations with different secrets differ in key. */
export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('base64url');
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/**
 * Refuses request options of the wrong type (`scope: 5`, `resource: { url }`, `extraParams: 'a=b'`) and values
 * that cannot be sent as they are (a lone surrogate becomes U+FFFD in a form body): `ERR_CONFIG` at
 * construction, not a mangled request or a `TypeError` at the first token request. Also the first check of a
 * `UserTokens` request (`spec()`), which adds its own rules.
 */
export function checkRequestParams(options: {
  readonly scope?: unknown;
  readonly resource?: unknown;
  readonly audience?: unknown;
  readonly extraParams?: unknown;
}): void {
  const checkList = (value: unknown, name: string): void => {
    if (value === undefined) return;
    const list: unknown[] = Array.isArray(value) ? value : [value];
    if ((typeof value === 'string' || Array.isArray(value)) && list.every(isSendable)) return;
    throw new TokenwardenError('ERR_CONFIG', `${name} must be a string or an array of strings (well-formed Unicode)`);
  };
  checkList(options.scope, 'scope');
  checkList(options.resource, 'resource');
  checkList(options.audience, 'audience');
  const extra: unknown = options.extraParams;
  if (extra === undefined) return;
  if (extra === null || typeof extra !== 'object' || Array.isArray(extra)) {
    throw new TokenwardenError('ERR_CONFIG', 'extraParams must be an object of parameter names to strings');
  }
  for (const [name, value] of Object.entries(extra)) {
    if (!isSendable(name)) throw new TokenwardenError('ERR_CONFIG', 'an extraParams name is not well-formed Unicode');
    checkList(value, `extraParams.${name.slice(0, 40)}`);
  }
}

function isSendable(value: unknown): value is string {
  return typeof value === 'string' && isWellFormedUnicode(value);
}

/** `['a', 'b']` → `'a b'`. */
export function scopeString(scope: string | string[]): string {
  return Array.isArray(scope) ? scope.join(' ') : scope;
}

function toArray(value: string | string[]): string[] {
  return Array.isArray(value) ? value : [value];
}

/**
 * Checks that `value` is an absolute http(s) URL, and https unless `allowInsecure`; returns it. Throws
 * `ERR_CONFIG` or `ERR_INSECURE_ISSUER` naming the option.
 *
 * @example
 * ```ts
 * checkUrl(options.jwksUri, 'jwksUri', false);
 * ```
 */
export function checkUrl(value: unknown, name: string, allowInsecure: boolean): string {
  let url: URL;
  try {
    url = new URL(String(value));
  } catch {
    throw new TokenwardenError('ERR_CONFIG', `${name} must be an absolute URL`);
  }
  if (url.protocol === 'http:' && !allowInsecure) {
    throw new TokenwardenError(
      'ERR_INSECURE_ISSUER',
      `${name} uses http:, which sends credentials in clear; use https:, or set allowInsecureRequests: true for local development`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new TokenwardenError('ERR_CONFIG', `${name} must be an http(s) URL`);
  }
  // fetch refuses such URLs, quoting them whole in its error: refused here, without repeating the URL.
  if (url.username !== '' || url.password !== '') {
    throw new TokenwardenError(
      'ERR_CONFIG',
      `${name} must not contain a user name or password (credentials in a URL end up in logs; use clientSecret)`,
    );
  }
  return String(value);
}

/** How a credential input prints: the file path, or that it is a function. Never the credential. */
export function describeCredential(input: CredentialInput | undefined): string | undefined {
  if (input === undefined) return undefined;
  return isFileCredential(input) ? `file ${input.file}` : '[function]';
}

function resolveAuthMethod(options: ClientOptions): ClientAuthMethod | 'custom' {
  const { clientAuth } = options;
  if (options.clientAssertion !== undefined) {
    checkCredentialInput(options.clientAssertion, 'clientAssertion');
    if (options.clientSecret !== undefined || options.privateKey !== undefined || typeof clientAuth === 'function') {
      throw new TokenwardenError(
        'ERR_CONFIG',
        'clientAssertion is the client authentication: do not pass clientSecret, privateKey or a clientAuth function with it',
      );
    }
    if (clientAuth !== undefined && clientAuth !== 'private_key_jwt' && clientAuth !== 'client_secret_jwt') {
      throw new TokenwardenError(
        'ERR_CONFIG',
        `clientAssertion is a JWT client assertion: clientAuth '${String(clientAuth)}' does not take one`,
      );
    }
    return clientAuth ?? 'private_key_jwt';
  }
  if (typeof clientAuth === 'function') return 'custom';
  const method =
    clientAuth ?? (options.privateKey ? 'private_key_jwt' : options.clientSecret ? 'client_secret_basic' : 'none');
  switch (method) {
    case 'client_secret_basic':
    case 'client_secret_post':
    case 'client_secret_jwt':
      if (!options.clientSecret) {
        throw new TokenwardenError('ERR_CONFIG', `clientAuth '${method}' needs clientSecret`);
      }
      return method;
    case 'private_key_jwt':
      if (!options.privateKey)
        throw new TokenwardenError('ERR_CONFIG', "clientAuth 'private_key_jwt' needs privateKey");
      return method;
    case 'tls_client_auth':
    case 'self_signed_tls_client_auth':
    case 'none':
      return method;
    default:
      throw new TokenwardenError(
        'ERR_CONFIG',
        'clientAuth must be one of client_secret_basic, client_secret_post, client_secret_jwt, private_key_jwt, tls_client_auth, self_signed_tls_client_auth, none, or a function',
      );
  }
}

/**
 * Adds to an `invalid_client` (or a 401/403 without an OAuth body) the two causes that are the client's choice
 * of encoding, not a wrong credential, when they apply: an assertion whose `aud` is the issuer at a server that
 * wants its token endpoint there, and a secret that `client_secret_basic` had to percent-encode at a server that
 * does not decode it. Names neither the secret nor the characters.
 */
function explainInvalidClient(
  error: TokenwardenError,
  method: ClientAuthMethod | 'custom',
  options: ClientOptions,
): void {
  let hint: string | undefined;
  const audience = options.clientAssertionAudience ?? 'issuer';
  if ((method === 'client_secret_jwt' || method === 'private_key_jwt') && options.clientAssertion === undefined) {
    if (audience === 'issuer') {
      hint =
        "the client assertion's aud was the issuer identifier (RFC 7523bis); a server that wants its token " +
        "endpoint's URL there (Microsoft Entra ID, Authlib 1.2, Glewlwyd) needs clientAssertionAudience: 'token_endpoint'";
    }
  } else if (method === 'client_secret_basic') {
    const secret = options.clientSecret ?? '';
    if (basicUserPass(options.clientId, secret) !== `${options.clientId}:${secret}`) {
      hint =
        'the client id or secret has characters that client_secret_basic percent-encodes (RFC 6749 §2.3.1); a ' +
        "server that does not decode the credential (Authlib 1.2, @node-oauth/oauth2-server) refuses it: use clientAuth: 'client_secret_post'";
    }
  }
  if (hint !== undefined) error.message = `${error.message} (if the credential is right: ${hint})`;
}

async function makeClientAuth(options: ClientOptions, method: ClientAuthMethod | 'custom'): Promise<oauth.ClientAuth> {
  const secret = options.clientSecret as string;
  const assertion = options.clientAssertion;
  if (assertion !== undefined) {
    // oauth4webapi's own client authentication seam: called for every request, so a rotated file is read.
    return async (_as, client, body) => {
      const jwt = await readCredential(assertion, 'clientAssertion');
      body.set('client_id', client.client_id);
      body.set('client_assertion_type', 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
      body.set('client_assertion', jwt);
    };
  }
  switch (method) {
    case 'custom':
      return options.clientAuth as oauth.ClientAuth;
    case 'client_secret_basic':
      return clientSecretBasic(secret);
    case 'client_secret_post':
      return oauth.ClientSecretPost(secret);
    case 'client_secret_jwt':
      return withAssertion(options.clientAssertionAudience, {}, (modify) => oauth.ClientSecretJwt(secret, modify));
    case 'private_key_jwt': {
      const input = options.privateKey as PrivateKeyInput;
      const key = await importPrivateKey(input);
      const header = certificateHeader(input, key.key);
      return withAssertion(options.clientAssertionAudience, header, (modify) => oauth.PrivateKeyJwt(key, modify));
    }
    case 'tls_client_auth':
    case 'self_signed_tls_client_auth':
      return oauth.TlsClientAuth();
    case 'none':
      return oauth.None();
  }
}

/**
 * A client assertion method whose `aud` is `audience` (see `ClientOptions.clientAssertionAudience`) and whose
 * header has `header`'s members too, through `oauth4webapi`'s `modifyAssertion` hook (called as the assertion
 * is made, with the metadata of that request).
 */
function withAssertion(
  audience: ClientOptions['clientAssertionAudience'],
  header: Readonly<Record<string, string>>,
  make: (options: oauth.ModifyAssertionOptions) => oauth.ClientAuth,
): oauth.ClientAuth {
  const toIssuer = audience === undefined || audience === 'issuer';
  if (toIssuer && Object.keys(header).length === 0) return make({});
  let current: string | undefined;
  const inner = make({
    [oauth.modifyAssertion]: (jwtHeader, payload) => {
      Object.assign(jwtHeader, header);
      if (current !== undefined) payload.aud = current;
    },
  });
  if (toIssuer) return inner;
  return (as, client, body, headers) => {
    current = audience === 'token_endpoint' ? as.token_endpoint : audience;
    return inner(as, client, body, headers);
  };
}

/**
 * The assertion header members a {@link PrivateKeyInput}'s `certificate` gives: its thumbprints, `x5t#S256`
 * (SHA-256) and `x5t` (SHA-1) of its DER form, base64url (RFC 7515 §4.1.7–8). Throws `ERR_CONFIG` when it is not
 * a certificate, or not the certificate of `key`.
 */
function certificateHeader(input: PrivateKeyInput, key: CryptoKey): Record<string, string> {
  const pem = typeof input === 'object' && input !== null && 'certificate' in input ? input.certificate : undefined;
  if (pem === undefined) return {};
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(pem);
  } catch (err) {
    throw new TokenwardenError('ERR_CONFIG', 'privateKey.certificate is not an X.509 certificate (PEM)', {
      cause: err,
    });
  }
  if (!certificate.checkPrivateKey(KeyObject.from(key))) {
    throw new TokenwardenError('ERR_CONFIG', 'privateKey.certificate is the certificate of another key');
  }
  const thumbprint = (hash: string) => createHash(hash).update(certificate.raw).digest('base64url');
  return { 'x5t#S256': thumbprint('sha256'), x5t: thumbprint('sha1') };
}

/**
 * Imports a {@link PrivateKeyInput} as an `oauth4webapi` private key (`{ key, kid }`).
 *
 * @example
 * ```ts
 * const { key, kid } = await importPrivateKey(JSON.parse(process.env.CLIENT_JWK!));
 * ```
 */
export async function importPrivateKey(input: PrivateKeyInput): Promise<oauth.PrivateKey> {
  const { importJWK, importPKCS8 } = await import('jose');
  const wrapped =
    typeof input === 'object' && input !== null && 'key' in input && !isCryptoKey(input)
      ? (input as { key: CryptoKey | oauth.JWK | string; kid?: string; alg?: string })
      : { key: input as CryptoKey | oauth.JWK | string };
  const { key } = wrapped;
  try {
    if (isCryptoKey(key)) return { key, ...(wrapped.kid && { kid: wrapped.kid }) };
    if (typeof key === 'string') {
      // A PKCS#8 PEM does not name its algorithm; RS256 is the common case, pass `alg` for others.
      const alg = wrapped.alg ?? 'RS256';
      const imported = await importPKCS8(key, alg);
      return { key: imported, ...(wrapped.kid && { kid: wrapped.kid }) };
    }
    const jwk = key as oauth.JWK & { d?: string; alg?: string; kid?: string };
    if (!jwk.d) throw new TokenwardenError('ERR_CONFIG', 'privateKey JWK has no private part ("d")');
    const alg = wrapped.alg ?? jwk.alg ?? algForJwk(jwk);
    const imported = (await importJWK(jwk, alg)) as CryptoKey;
    const kid = wrapped.kid ?? jwk.kid;
    return { key: imported, ...(kid && { kid }) };
  } catch (err) {
    if (err instanceof TokenwardenError) throw err;
    throw new TokenwardenError(
      'ERR_CONFIG',
      'privateKey could not be imported (expected a CryptoKey, private JWK or PKCS#8 PEM)',
      {
        cause: err,
      },
    );
  }
}

function isCryptoKey(value: unknown): value is CryptoKey {
  return typeof CryptoKey !== 'undefined' && value instanceof CryptoKey;
}

function algForJwk(jwk: { kty?: string; crv?: string }): string {
  if (jwk.kty === 'EC') return jwk.crv === 'P-384' ? 'ES384' : jwk.crv === 'P-521' ? 'ES512' : 'ES256';
  if (jwk.kty === 'OKP') return 'EdDSA';
  return 'RS256';
}

/**
 * A {@link TokenSource} backed by an {@link OAuthClient}: what every built-in grant returns. Its
 * `toJSON` and `inspect` never show a secret.
 *
 * @example
 * ```ts
 * const source = clientCredentials({ issuer, clientId: 'svc', clientSecret });
 * console.log(source.grant, source.key, source.client.clientId);
 * ```
 */
export class GrantSource implements TokenSource {
  readonly #fetch: (context: FetchTokenContext) => Promise<Token>;

  constructor(
    /** The grant type this source uses. */
    readonly grant: string,
    /** The configured client. */
    readonly client: OAuthClient,
    /** The store key. */
    readonly key: string,
    fetch: (context: FetchTokenContext) => Promise<Token>,
  ) {
    this.#fetch = fetch;
  }

  fetchToken(context: FetchTokenContext): Promise<Token> {
    return this.#fetch(context);
  }

  /** Refresh tokens may be single-use: never spent without the fleet lock while a valid token is held. */
  get exclusive(): boolean {
    return this.grant === 'refresh_token';
  }

  /** The DPoP handle when the client is configured with `dpop` (used by `TokenManager.fetch`). */
  get dpop(): oauth.DPoPHandle | undefined {
    return this.client.dpop;
  }

  toJSON(): Record<string, unknown> {
    return { grant: this.grant, key: this.key, ...this.client.toJSON() };
  }

  [inspect.custom](): string {
    return `GrantSource ${inspect(this.toJSON())}`;
  }
}

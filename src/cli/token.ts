/**
 * `tokenwarden token`: prints an access token (client credentials grant), cached between invocations in
 * a {@link FileStore} so that scripts, cron jobs and concurrent invocations share one token request.
 *
 * @module
 */
import { isTokenwardenError } from '../errors.js';
import { TokenManager, isTransient } from '../manager.js';
import type { RefreshPolicyOptions } from '../policy.js';
import { clientCredentials } from '../sources/client-credentials.js';
import { deriveKey, hashSecret } from '../sources/client.js';
import { FileStore } from '../stores/file.js';
import { type Token, remainingMs } from '../token.js';
import {
  type CliAuthMethod,
  type CredentialConfig,
  AUTH_METHODS,
  cacheDir,
  checkSecretLength,
  loadProfile,
  parseDuration,
  parseTimeout,
  readSecret,
} from './config.js';
import { UsageError, humanDuration, keepSecret, write } from './output.js';

/** The options of `tokenwarden token`, as parsed from the command line. */
export interface TokenCommandOptions {
  issuer?: string;
  tokenEndpoint?: string;
  clientId?: string;
  clientSecretFile?: string;
  authMethod?: string;
  scope?: string[];
  resource?: string[];
  audience?: string[];
  profile?: string;
  json?: boolean;
  /** `false` with `--no-cache`. */
  cache?: boolean;
  minTtl?: string;
  timeout?: string;
  allowInsecureRequests?: boolean;
}

/** The environment variable holding the client secret. */
export const SECRET_ENV = 'TOKENWARDEN_CLIENT_SECRET';
/** The environment variable holding the cache's encryption key (optional). */
export const ENCRYPTION_KEY_ENV = 'TOKENWARDEN_ENCRYPTION_KEY';

/**
 * How the command judges a cached token: it is used while it has at least `min(30 s, 10 % of its lifetime)`
 * left, else replaced — a one-hour token is reused for 59½ minutes, a five-minute token for 4½, a 3 s token
 * for about 2.7 s. The token is for immediate use (the next command in the script); a caller that needs it
 * to last passes `--min-ttl`. No jitter: the processes of one host share the cache and its lock, so they
 * never refresh in lock-step anyway; no background refresh: the process exits right after printing.
 */
export const CLI_REFRESH_POLICY: RefreshPolicyOptions = {
  beforeExpiry: '30s',
  maxBeforeExpiryRatio: 0.1,
  jitter: 0,
  background: false,
};

/**
 * Runs `tokenwarden token`: resolves the credential (flags over the profile), gets a token through the
 * cache, prints it (or its JSON form) to stdout. Warnings go to `warn`. Throws on failure.
 *
 * @example
 * ```ts
 * await runToken({ issuer: 'https://login.example.com', clientId: 'svc', scope: ['read'] }, (m) => console.error(m));
 * ```
 */
export async function runToken(options: TokenCommandOptions, warn: (message: string) => void): Promise<void> {
  const profile = options.profile === undefined ? {} : await loadProfile(options.profile, process.env, warn);
  const where =
    options.profile === undefined ? 'the command line' : `the command line and profile '${options.profile}'`;
  const credential: CredentialConfig = { ...profile };
  const set = <K extends keyof CredentialConfig>(key: K, value: CredentialConfig[K] | undefined): void => {
    if (value !== undefined) credential[key] = value;
  };
  set('issuer', options.issuer);
  set('tokenEndpoint', options.tokenEndpoint);
  set('clientId', options.clientId);
  set('scope', joinScopes(options.scope));
  set('resource', nonEmpty(options.resource));
  set('audience', nonEmpty(options.audience));
  if (options.allowInsecureRequests === true) credential.allowInsecureRequests = true;
  if (options.authMethod !== undefined) {
    if (!(AUTH_METHODS as readonly string[]).includes(options.authMethod)) {
      throw new UsageError(`--auth-method must be one of ${AUTH_METHODS.join(', ')}`);
    }
    credential.clientAuth = options.authMethod as CliAuthMethod;
  }
  if (options.timeout !== undefined) credential.timeoutMs = parseTimeout(options.timeout, '--timeout');
  const minTtlMs = options.minTtl !== undefined ? parseDuration(options.minTtl, '--min-ttl') : profile.minTtlMs;

  if (credential.issuer === undefined && credential.tokenEndpoint === undefined) {
    throw new UsageError('--issuer or --token-endpoint is required', 'pass --issuer URL, or --profile NAME');
  }
  if (credential.clientId === undefined) {
    throw new UsageError('--client-id is required', 'pass --client-id ID, or --profile NAME');
  }

  const secret = credential.clientAuth === 'none' ? undefined : await resolveSecret(options, profile, where, warn);
  if (secret !== undefined) keepSecret(secret, credential.clientId);
  const source = clientCredentials({
    ...(credential.issuer !== undefined && { issuer: credential.issuer }),
    ...(credential.tokenEndpoint !== undefined && { tokenEndpoint: credential.tokenEndpoint }),
    clientId: credential.clientId,
    ...(secret !== undefined && { clientSecret: secret }),
    ...(credential.clientAuth !== undefined && { clientAuth: credential.clientAuth }),
    ...(credential.scope !== undefined && { scope: credential.scope }),
    ...(credential.resource !== undefined && { resource: credential.resource }),
    ...(credential.audience !== undefined && { audience: credential.audience }),
    ...(credential.timeoutMs !== undefined && { timeout: credential.timeoutMs }),
    allowInsecureRequests: credential.allowInsecureRequests === true,
    proxy: 'env', // HTTPS_PROXY/HTTP_PROXY/NO_PROXY, as curl
  });
  // The key binds the cached token to the secret that obtained it (hashed into the digest, never stored as
  // such): a changed or wrong secret is not served someone else's token; it asks the server.
  const key = deriveKey(
    source.client.identity('client_credentials', {
      credential: secret === undefined ? null : hashSecret(`tokenwarden-cli:${secret}`),
    }),
  );

  const store =
    options.cache === false
      ? undefined
      : new FileStore({
          path: cacheDir(),
          ...(process.env[ENCRYPTION_KEY_ENV] && { encryptionKey: process.env[ENCRYPTION_KEY_ENV] }),
        });
  const manager = new TokenManager({ source, key, refresh: CLI_REFRESH_POLICY, ...(store && { store }) });
  let cacheWarned = false;
  manager.on('storeError', ({ error }) => {
    if (cacheWarned) return;
    cacheWarned = true;
    warn(`the token cache in ${store?.path} is not usable (${error.code}: ${error.message}); going without it`);
  });
  try {
    const token = await obtain(manager, minTtlMs, warn);
    await write(process.stdout, options.json ? `${JSON.stringify(toJson(token))}\n` : `${token.accessToken}\n`);
  } finally {
    await manager.close();
    await store?.close();
  }
}

/** Gets a token that satisfies `--min-ttl`, or by default one that is not stale under {@link CLI_REFRESH_POLICY}. */
async function obtain(manager: TokenManager, minTtlMs: number | undefined, warn: (m: string) => void): Promise<Token> {
  if (minTtlMs !== undefined) {
    const token = await manager.getToken({ minTtl: minTtlMs });
    const left = remainingMs(token, Date.now());
    if (left <= minTtlMs) {
      warn(`the server issues tokens that live ${humanDuration(left)}, less than --min-ttl ${humanDuration(minTtlMs)}`);
    }
    return token;
  }
  // A valid cached token is taken as is (no request); a new process knows nothing fresher.
  const token = await manager.getToken();
  if (manager.peek().status !== 'stale') return token;
  try {
    return await manager.refresh(); // another invocation may have refreshed already: the store is re-read first
  } catch (err) {
    // The authorization server is down or slow, and the cached token is still good for a while: use it.
    const left = remainingMs(token, Date.now());
    if (isTokenwardenError(err) && isTransient(err) && left > 1000) {
      warn(
        `could not refresh the cached token (${err.code}: ${err.message}); it is still valid for ${humanDuration(left)}`,
      );
      return token;
    }
    throw err;
  }
}

async function resolveSecret(
  options: TokenCommandOptions,
  profile: CredentialConfig,
  where: string,
  warn: (message: string) => void,
): Promise<string> {
  if (options.clientSecretFile !== undefined)
    return readSecret({ file: options.clientSecretFile }, '--client-secret-file', warn);
  if (profile.clientSecretFile !== undefined || profile.clientSecretEnv !== undefined) {
    return readSecret(
      { file: profile.clientSecretFile, env: profile.clientSecretEnv },
      `profile '${options.profile}'`,
      warn,
    );
  }
  const fromEnv = process.env[SECRET_ENV];
  if (fromEnv !== undefined && fromEnv !== '') return checkSecretLength(fromEnv, SECRET_ENV);
  throw new UsageError(
    `no client secret in ${where}`,
    `set ${SECRET_ENV}, or pass --client-secret-file FILE (never the secret itself on the command line), or --auth-method none for a public client`,
  );
}

/** The `--json` form: `{ access_token, token_type, expires_at, expires_in, scope }`. */
export function toJson(token: Token): Record<string, unknown> {
  return {
    access_token: token.accessToken,
    token_type: token.tokenType,
    expires_at: token.expiresAt === undefined ? null : new Date(token.expiresAt).toISOString(),
    expires_in: token.expiresAt === undefined ? null : Math.max(0, Math.floor((token.expiresAt - Date.now()) / 1000)),
    scope: token.scope ?? null,
  };
}

function joinScopes(scopes: string[] | undefined): string | undefined {
  const words = (scopes ?? []).flatMap((s) => s.split(/\s+/)).filter((s) => s !== '');
  return words.length === 0 ? undefined : words.join(' ');
}

function nonEmpty(values: string[] | undefined): string[] | undefined {
  return values === undefined || values.length === 0 ? undefined : values;
}

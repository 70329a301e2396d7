/**
 * `tokenwarden agent`: a long-running process that keeps every configured token fresh with a
 * {@link TokenManager} each (background refresh, grace while the authorization server is down, backoff) and
 * publishes it to its sinks — a file (atomic replace, mode 0600) and, optionally, a loopback HTTP endpoint.
 *
 * The contract of a sink: **it holds a valid token, or nothing**. When a token is about to expire without a
 * replacement (a long outage), the sink file is removed and the endpoint answers 503 until a new token
 * arrives; on shutdown the sink files are removed too (nobody would remove them once expired). A reader
 * therefore never gets an expired token: it gets a valid one or a clear "none".
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import { lstat, mkdir, open, rename, stat, unlink } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { basename, dirname, join } from 'node:path';
import { TokenwardenError, isTokenwardenError } from '../errors.js';
import { TokenManager, isTransient } from '../manager.js';
import type { RefreshPolicyOptions } from '../policy.js';
import { clientCredentials } from '../sources/client-credentials.js';
import type { GrantSource } from '../sources/client.js';
import { MetricsRegistry } from '../telemetry/registry.js';
import type { Token } from '../token.js';
import { type AgentConfig, type AgentTokenConfig, type SinkConfig, loadAgentConfig, readSecret } from './config.js';
import { UsageError, WITHHELD, keepSecret, oneLine, printable } from './output.js';

/** The request header every `GET /v1/token/<name>` must carry (`Tokenwarden-Request: 1`). */
export const REQUEST_HEADER = 'tokenwarden-request';

/** Longest wait for a clean shutdown before the agent exits anyway. */
const SHUTDOWN_LIMIT_MS = 15_000;
/**
 * While a token has no usable token, the agent asks its manager for one this often. The manager turns
 * that into at most one request per attempt window (it answers at once with the last error inside it, and
 * honours `Retry-After`), so a down server sees about one request per second from this token, and a
 * recovered one is used within a second — instead of after the background backoff, which may have grown
 * to tens of seconds during the outage.
 */
const RECOVERY_POLL_MS = 1_000;
/**
 * The agent's refresh policy: the library's, but up to 5 minutes ahead of expiry (not 30 s) — continuity is
 * the agent's whole job, so a one-hour token is replaced 5–6 minutes early, leaving room to ride out an
 * outage; short tokens are still replaced at about half their life.
 */
const AGENT_REFRESH_POLICY: RefreshPolicyOptions = { beforeExpiry: '5m' };

/** A failed sink write is tried again after this long. */
const SINK_RETRY_MS = 5_000;

/** A JSON-lines logger: `{"time","level","msg",...fields}`. Fields must never hold a token or a secret. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

/**
 * A logger writing JSON lines: `debug` and `info` to stdout, `warn` and `error` to stderr.
 *
 * @example
 * ```ts
 * const log = jsonLogger({ debug: false });
 * log.info('started', { tokens: ['billing'] }); // {"time":"…","level":"info","msg":"started","tokens":["billing"]}
 * ```
 */
export function jsonLogger(options: { debug: boolean }): Logger {
  const emit = (level: string, msg: string, fields: Record<string, unknown> = {}): void => {
    // Secrets the agent read, and passwords in URLs (an issuer, a token endpoint), never reach a log line.
    const time = new Date().toISOString();
    let line = printable(JSON.stringify({ time, level, msg, ...fields }));
    if (line === WITHHELD) line = JSON.stringify({ time, level, msg: WITHHELD });
    (level === 'warn' || level === 'error' ? process.stderr : process.stdout).write(`${line}\n`);
  };
  return {
    debug: (msg, fields) => {
      if (options.debug) emit('debug', msg, fields);
    },
    info: (msg, fields) => emit('info', msg, fields),
    warn: (msg, fields) => emit('warn', msg, fields),
    error: (msg, fields) => emit('error', msg, fields),
  };
}

/** Log fields for an error: code, message, OAuth error and status. Never a secret (errors hold none). */
export function errorFields(err: unknown): Record<string, unknown> {
  if (isTokenwardenError(err)) {
    return {
      code: err.code,
      message: oneLine(err.message),
      ...(err.error !== undefined && { error: err.error }),
      ...(err.status !== undefined && { status: err.status }),
    };
  }
  return {
    code: (err as NodeJS.ErrnoException)?.code ?? 'ERR_INTERNAL',
    message: oneLine(String((err as Error)?.message ?? err)),
  };
}

/** A running agent. */
export interface RunningAgent {
  /** The HTTP endpoint's address, when `listen` is configured. */
  readonly address: AddressInfo | undefined;
  /** Stops: closes the endpoint and the managers, removes the sink files. */
  stop(): Promise<void>;
}

/** One configured token: its manager, its file sink, and the recovery poll. */
class Entry {
  readonly sink: FileSink | undefined;
  readonly #poll: NodeJS.Timeout;
  #asking = false;
  /** The last refresh failure since the last token (for `/v1/health`). */
  lastError: TokenwardenError | undefined;
  failures = 0;

  constructor(
    readonly name: string,
    readonly manager: TokenManager,
    sinkConfig: SinkConfig | undefined,
    readonly log: Logger,
  ) {
    this.sink = sinkConfig && new FileSink(name, sinkConfig, manager, log);
    manager.on('token', (info) => {
      this.lastError = undefined;
      this.failures = 0;
      log.info('token obtained', {
        token: name,
        expires_at: iso(info.expiresAt),
        refresh_at: iso(info.staleAt),
        scope: info.scope ?? null,
      });
      this.sink?.sync();
    });
    manager.on('refreshFailed', ({ error, failures, retryInMs, validUntil }) => {
      this.lastError = error;
      this.failures = failures;
      const fields = {
        token: name,
        ...errorFields(error),
        failures,
        retry_in_ms: retryInMs === undefined ? null : Math.round(retryInMs),
        valid_until: iso(validUntil),
      };
      if (isTransient(error)) log.warn('refresh failed; retrying', fields);
      else log.error('refresh failed with an error that waiting will not heal; check the configuration', fields);
    });
    this.#poll = setInterval(() => this.#recover(), RECOVERY_POLL_MS);
    this.#poll.unref();
  }

  /** A usable token: valid, and not within its last moments (see {@link usableToken}). */
  token(): Token | undefined {
    return usableToken(this.manager);
  }

  /** The first token; rejects when the first attempt fails. */
  start(): Promise<Token> {
    return this.#ask();
  }

  /** No usable token (an outage outlived it, or the start failed): ask the manager, which bounds the rate. */
  #recover(): void {
    if (this.#asking || this.token() !== undefined) return;
    this.#ask().catch(() => undefined); // failures are logged through 'refreshFailed'
  }

  async #ask(): Promise<Token> {
    this.#asking = true;
    try {
      return await this.manager.getToken();
    } finally {
      this.#asking = false;
    }
  }

  async close(): Promise<void> {
    clearInterval(this.#poll);
    await this.manager.close();
    await this.sink?.close();
  }
}

/**
 * How long before its expiry a token stops being handed out: `min(5 s, 25 % of its lifetime)`. A token with
 * less left would likely expire on its way to the API — or, if the agent is starved of CPU, before it is
 * taken out of the sink.
 */
export function expiryMarginMs(token: Token): number {
  if (token.expiresAt === undefined) return 0;
  return Math.min(5000, Math.max(0, token.expiresAt - token.issuedAt) * 0.25);
}

/** The manager's token if it is valid beyond {@link expiryMarginMs}; `undefined` otherwise. No I/O. */
export function usableToken(manager: TokenManager, now = Date.now()): Token | undefined {
  const { status, token } = manager.peek();
  if (token === undefined || status === 'expired' || status === 'none') return undefined;
  if (usableUntil(token) <= now) return undefined;
  return token;
}

/** When `token` stops being handed out (its expiry less {@link expiryMarginMs}); `Infinity` without an expiry. */
function usableUntil(token: Token): number {
  return token.expiresAt === undefined ? Infinity : token.expiresAt - expiryMarginMs(token);
}

/**
 * A file holding the current token: replaced atomically (temp file in the same directory, mode 0600,
 * fsync, rename), removed when the token runs out without a replacement and when the agent stops.
 * Writes are serialised and coalesced: the file always ends up with the newest token.
 */
class FileSink {
  /** The token in the file; `null` when the file is known to be absent; `undefined` when unknown. */
  #written: Token | null | undefined = undefined;
  #running: Promise<void> | undefined;
  #again = false;
  #expiryTimer: NodeJS.Timeout | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #closed = false;
  /** The file was removed because a token ran out: say so when a token is back. */
  #lost = false;

  constructor(
    readonly name: string,
    readonly config: SinkConfig,
    readonly manager: TokenManager,
    readonly log: Logger,
  ) {}

  /** Brings the file in line with the manager's token (write, or remove). */
  sync(): void {
    if (this.#running !== undefined) {
      this.#again = true;
      return;
    }
    this.#running = this.#loop().finally(() => {
      this.#running = undefined;
    });
  }

  async #loop(): Promise<void> {
    do {
      this.#again = false;
      await this.#apply();
    } while (this.#again && !this.#closed);
  }

  async #apply(): Promise<void> {
    if (this.#closed) return;
    const token = usableToken(this.manager);
    clearTimeout(this.#expiryTimer);
    try {
      if (token === undefined) {
        await this.#remove();
        return;
      }
      if (token.accessToken !== this.#written?.accessToken) {
        await writeAtomically(this.config.file, sinkContent(token, this.config.format));
        this.#written = token;
        if (this.#lost)
          this.log.info('the sink file holds a valid token again', { token: this.name, file: this.config.file });
        else this.log.debug('sink written', { token: this.name, file: this.config.file });
        this.#lost = false;
      }
      if (token.expiresAt !== undefined) {
        // Check again when the token reaches its margin: if no replacement came, the file goes.
        const at = token.expiresAt - expiryMarginMs(token);
        this.#expiryTimer = setTimeout(() => this.sync(), Math.max(0, at - Date.now()) + 1);
        this.#expiryTimer.unref();
      }
    } catch (err) {
      this.log.error('cannot update the sink file; trying again', {
        token: this.name,
        file: this.config.file,
        ...errorFields(err),
      });
      // The file still holds the token written before (a full disk, a directory turned unsafe…): it must not
      // outlive that token's margin. Remove it once the token is no longer usable, and try again by then.
      let retryInMs = SINK_RETRY_MS;
      const held = this.#written;
      if (held !== undefined && held !== null) {
        const left = usableUntil(held) - Date.now();
        if (left <= 0) await this.#remove().catch((removeErr: unknown) => this.#removeFailed(removeErr));
        else retryInMs = Math.min(retryInMs, left + 1);
      }
      clearTimeout(this.#retryTimer);
      this.#retryTimer = setTimeout(() => this.sync(), retryInMs);
      this.#retryTimer.unref();
    }
  }

  /** Removes the file (if it is not known to be absent), saying so when it held a token. */
  async #remove(): Promise<void> {
    if (this.#written === null) return;
    const hadToken = this.#written !== undefined;
    await unlink(this.config.file).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    this.#written = null;
    if (hadToken) {
      this.#lost = true;
      this.log.error('no valid token: the sink file was removed until a new token arrives', {
        token: this.name,
        file: this.config.file,
      });
    }
  }

  #removeFailed(err: unknown): void {
    this.log.error('cannot remove the sink file, whose token is no longer valid', {
      token: this.name,
      file: this.config.file,
      ...errorFields(err),
    });
  }

  /** Stops updating and removes the file (a token left behind would expire with nobody to remove it). */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#expiryTimer);
    clearTimeout(this.#retryTimer);
    await this.#running;
    if (this.#written === null) return;
    await unlink(this.config.file).catch(() => undefined);
  }
}

function sinkContent(token: Token, format: SinkConfig['format']): string {
  if (format === 'token') return token.accessToken;
  return `${JSON.stringify(tokenJson(token))}\n`;
}

function tokenJson(token: Token): Record<string, unknown> {
  return {
    access_token: token.accessToken,
    token_type: token.tokenType,
    expires_at: iso(token.expiresAt),
    expires_in: token.expiresAt === undefined ? null : Math.max(0, Math.floor((token.expiresAt - Date.now()) / 1000)),
  };
}

/**
 * Whether a sink may be written in `file`'s directory: `'refuse'` (with the reason) when someone else could
 * replace the token file — the directory, or a directory above it, belongs to another user than this one or
 * root, or every user may write it and it is not sticky (anyone could rename or remove what is inside) — and
 * for an existing sink that belongs to another user or is not a file (a directory: nothing could replace
 * it); `'warn'` for a non-sticky directory its group may write; `'ok'` otherwise (missing directories are
 * created 0700).
 */
export async function sinkDirectoryRisk(
  file: string,
): Promise<{ verdict: 'ok' } | { verdict: 'warn' | 'refuse'; reason: string }> {
  const dir = dirname(file);
  const uid = process.geteuid?.();
  let warning: string | undefined;
  // From the sink's directory up to the root: whoever can rename one of them can put their own file in place.
  for (let current = dir, first = true; ; current = dirname(current), first = false) {
    const info = await stat(current).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined; // created 0700 by the agent
      if (err.code === 'ENOTDIR') return 'not a directory' as const;
      throw err;
    });
    if (info === 'not a directory' || (info !== undefined && !info.isDirectory())) {
      return { verdict: 'refuse', reason: `${current} is not a directory, so the sink file ${file} cannot be written` };
    }
    if (info !== undefined) {
      const what = first ? 'the sink directory' : `${current}, above the sink directory,`;
      const sticky = (info.mode & 0o1000) !== 0;
      const mode = (info.mode & 0o7777).toString(8);
      if (uid !== undefined && info.uid !== uid && info.uid !== 0) {
        return {
          verdict: 'refuse',
          reason: `${what} ${first ? `${current} ` : ''}belongs to another user (uid ${info.uid}), who could replace the token file with their own`,
        };
      }
      if (!sticky && (info.mode & 0o002) !== 0) {
        return {
          verdict: 'refuse',
          reason: `${what} ${first ? `${current} ` : ''}can be written by every user and is not sticky (mode ${mode}): anyone could replace the token file with their own`,
        };
      }
      if (!sticky && (info.mode & 0o020) !== 0 && warning === undefined) {
        warning = `${what} ${first ? `${current} ` : ''}can be written by its group (mode ${mode}): its members could replace the token file`;
      }
    }
    if (dirname(current) === current) break;
  }
  const existing = await lstat(file).catch(() => undefined);
  if (existing !== undefined && uid !== undefined && existing.uid !== uid) {
    return {
      verdict: 'refuse',
      reason: `the sink file ${file} exists and belongs to another user (uid ${existing.uid}): readers would get their file`,
    };
  }
  if (existing !== undefined && !existing.isFile() && !existing.isSymbolicLink()) {
    return { verdict: 'refuse', reason: `the sink file ${file} exists and is not a file` };
  }
  return warning === undefined ? { verdict: 'ok' } : { verdict: 'warn', reason: warning };
}

/**
 * Replaces `file` with `content` so that a reader sees the old file or the new one, never a part: a temp
 * file (mode 0600, created exclusively) in the same directory, fsync, rename. The directory is created
 * (0700) if missing; a directory where anyone could replace the file is refused (see
 * {@link sinkDirectoryRisk}).
 */
export async function writeAtomically(file: string, content: string): Promise<void> {
  const dir = dirname(file);
  const risk = await sinkDirectoryRisk(file);
  if (risk.verdict === 'refuse') throw new TokenwardenError('ERR_CONFIG', risk.reason);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const temp = join(dir, `.${basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const handle = await open(temp, 'wx', 0o600);
  try {
    await handle.writeFile(content, 'utf8');
    await handle.sync();
    await handle.close();
    await rename(temp, file);
  } catch (err) {
    await handle.close().catch(() => undefined);
    await unlink(temp).catch(() => undefined);
    throw err;
  }
}

/**
 * Starts the agent from a validated configuration: one manager per token, sinks, the optional loopback
 * endpoint. Resolves once every token has had its first attempt. Throws (after cleaning up) when a token
 * fails with an error that waiting will not heal (a wrong secret, an unknown client); transient failures
 * (the authorization server is down) are retried in the background.
 */
export async function startAgent(config: AgentConfig, log: Logger): Promise<RunningAgent> {
  // A sink where another user could swap the token file is refused before anything starts.
  for (const [name, token] of Object.entries(config.tokens)) {
    if (token.sink === undefined) continue;
    const risk = await sinkDirectoryRisk(token.sink.file);
    if (risk.verdict === 'refuse') {
      throw new UsageError(
        `tokens.${name}.sink: ${risk.reason}`,
        'put sinks in a directory only the agent can write (e.g. /run/tokenwarden, mode 0700), or a sticky one like /tmp',
      );
    }
    if (risk.verdict === 'warn') log.warn(risk.reason, { token: name });
  }
  const entries = new Map<string, Entry>();
  // The agent's own numbers for `GET /v1/metrics` (see telemetry/registry.ts for why not the OTel SDK).
  const metrics = config.listen === undefined ? undefined : new MetricsRegistry();
  for (const [name, token] of Object.entries(config.tokens)) {
    const manager = new TokenManager({
      source: await sourceFor(name, token),
      refresh: AGENT_REFRESH_POLICY,
      name,
    });
    entries.set(name, new Entry(name, manager, token.sink, log));
  }
  // Sinks left by an earlier run may hold expired tokens: until this run has a token, there is none.
  for (const entry of entries.values()) entry.sink?.sync();

  let server: Server | undefined;
  let address: AddressInfo | undefined;
  const stop = async (): Promise<void> => {
    if (server !== undefined) {
      const closed = new Promise<void>((resolve) => server?.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    }
    await Promise.all([...entries.values()].map((e) => e.close()));
    metrics?.close();
  };

  try {
    if (config.listen !== undefined) {
      server = createServer((req, res) =>
        handle(req, res, entries, address as AddressInfo, log, config.requireRequestHeader === true, metrics),
      );
      const listening = server;
      await new Promise<void>((resolve, reject) => {
        const refused = (err: NodeJS.ErrnoException): void => {
          // A port in use (another agent still running?) or not ours to take: the configuration's to fix.
          const where = `${config.listen?.host}:${config.listen?.port}`;
          reject(
            new UsageError(
              `listen: cannot listen on ${where}${err.code ? ` (${err.code})` : ''}`,
              err.code === 'EADDRINUSE'
                ? 'another process listens there (an agent still running?): stop it, or choose another port'
                : 'choose another loopback address or port',
            ),
          );
        };
        listening.once('error', refused);
        listening.listen(config.listen?.port, config.listen?.host, () => {
          listening.off('error', refused);
          resolve();
        });
      });
      address = server.address() as AddressInfo;
      log.info('listening', { address: address.address, port: address.port });
    }
    const results = await Promise.allSettled([...entries.values()].map((e) => e.start()));
    const permanent = results.find(
      (r): r is PromiseRejectedResult =>
        r.status === 'rejected' && !(isTokenwardenError(r.reason) && isTransient(r.reason as TokenwardenError)),
    );
    if (permanent !== undefined) throw permanent.reason;
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  return { address, stop };
}

async function sourceFor(name: string, token: AgentTokenConfig): Promise<GrantSource> {
  const secret =
    token.clientAuth === 'none'
      ? undefined
      : await readSecret(
          { env: token.clientSecretEnv, file: token.clientSecretFile },
          `tokens.${name}`,
          // A readable secret file is worth a warning, not a refusal: the operator may have reasons.
          (message) => warnLine(message, { token: name }),
        );
  if (secret !== undefined) keepSecret(secret, token.clientId);
  return clientCredentials({
    ...(token.issuer !== undefined && { issuer: token.issuer }),
    ...(token.tokenEndpoint !== undefined && { tokenEndpoint: token.tokenEndpoint }),
    clientId: token.clientId,
    ...(secret !== undefined && { clientSecret: secret }),
    ...(token.clientAuth !== undefined && { clientAuth: token.clientAuth }),
    ...(token.scope !== undefined && { scope: token.scope }),
    ...(token.resource !== undefined && { resource: token.resource }),
    ...(token.audience !== undefined && { audience: token.audience }),
    ...(token.timeoutMs !== undefined && { timeout: token.timeoutMs }),
    allowInsecureRequests: token.allowInsecureRequests === true,
    proxy: 'env', // HTTPS_PROXY/HTTP_PROXY/NO_PROXY, as curl
  });
}

/**
 * The loopback endpoint. `GET /v1/health` (200 when every token is valid, else 503 with the reason),
 * `GET /v1/metrics` (Prometheus text) and `GET /v1/token/<name>` (200 with the token, 503 when none is
 * valid, 404 for an unknown name); nothing else.
 *
 * Defences, because any local process can connect to a loopback port: the `Host` header must name the
 * loopback address (a web page using DNS rebinding cannot); requests with an `Origin` (browsers) are refused;
 * and with `requireRequestHeader` the token route needs the `Tokenwarden-Request: 1` header, which a
 * server-side request forgery (an app tricked into fetching a URL) does not send — the defence cloud
 * metadata servers use, opt-in as in Vault Agent.
 */
function handle(
  req: IncomingMessage,
  res: ServerResponse,
  entries: Map<string, Entry>,
  address: AddressInfo,
  log: Logger,
  requireHeader: boolean,
  metrics: MetricsRegistry | undefined,
): void {
  const reply = (status: number, body: Record<string, unknown>, headers: Record<string, string> = {}): void => {
    res.writeHead(status, {
      'content-type': 'application/json',
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      ...headers,
    });
    res.end(req.method === 'HEAD' ? undefined : `${JSON.stringify(body)}\n`);
  };
  const url = new URL(req.url ?? '/', 'http://agent.invalid');
  log.debug('request', { method: req.method, path: url.pathname });
  if (!isLoopbackHost(req.headers.host, address.port)) {
    reply(403, { error: 'forbidden', message: 'the Host header must name the loopback address' });
    return;
  }
  if (req.headers.origin !== undefined) {
    reply(403, { error: 'forbidden', message: 'browser requests are not served' });
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    reply(405, { error: 'method_not_allowed' }, { allow: 'GET, HEAD' });
    return;
  }
  if (url.pathname === '/v1/health') {
    const tokens: Record<string, unknown> = {};
    const unhealthy: string[] = [];
    for (const [name, entry] of entries) {
      const health = tokenHealth(entry);
      if (!health.valid) unhealthy.push(`${name}: ${health.reason as string}`);
      tokens[name] = health;
    }
    if (unhealthy.length === 0) reply(200, { status: 'ok', tokens });
    else reply(503, { status: 'unavailable', reason: `no valid token for ${unhealthy.join('; ')}`, tokens });
    return;
  }
  if (url.pathname === '/v1/metrics' && metrics !== undefined) {
    res.writeHead(200, {
      'content-type': metrics.contentType,
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
    });
    res.end(req.method === 'HEAD' ? undefined : metrics.text());
    return;
  }
  const match = /^\/v1\/token\/([^/]+)$/.exec(url.pathname);
  if (match === null) {
    reply(404, {
      error: 'not_found',
      message: 'the routes are GET /v1/token/<name>, GET /v1/health and GET /v1/metrics',
    });
    return;
  }
  let name: string;
  try {
    name = decodeURIComponent(match[1] as string);
  } catch {
    reply(404, { error: 'not_found' });
    return;
  }
  const entry = entries.get(name);
  if (entry === undefined) {
    reply(404, { error: 'not_found', message: 'no token is configured under this name' });
    return;
  }
  if (requireHeader && req.headers[REQUEST_HEADER] !== '1') {
    reply(400, { error: 'missing_header', message: 'send the header "Tokenwarden-Request: 1"' });
    return;
  }
  const token = entry.token();
  if (token === undefined) {
    reply(
      503,
      { error: 'unavailable', message: 'no valid token right now; the agent keeps trying' },
      { 'retry-after': '1' },
    );
    return;
  }
  reply(200, tokenJson(token));
}

/**
 * OAuth error codes a health answer may name (RFC 6749, 6750, 8628, 8693, 8707, 9449). Anything else a
 * server sent is shown as `other`: the endpoint never repeats text chosen by the server.
 */
const KNOWN_OAUTH_ERRORS: ReadonlySet<string> = new Set([
  'invalid_request',
  'invalid_client',
  'invalid_grant',
  'unauthorized_client',
  'unsupported_grant_type',
  'invalid_scope',
  'invalid_target',
  'invalid_token',
  'insufficient_scope',
  'invalid_dpop_proof',
  'use_dpop_nonce',
  'access_denied',
  'server_error',
  'temporarily_unavailable',
  'slow_down',
  'expired_token',
]);

/** One token in `/v1/health`: whether it is valid, until when, and — when it is not — why. */
function tokenHealth(entry: Entry): Record<string, unknown> {
  const token = entry.token();
  const { status, token: held } = entry.manager.peek();
  const error = entry.lastError;
  const lastError =
    error === undefined
      ? undefined
      : {
          code: error.code,
          ...(error.error !== undefined && {
            oauth_error: KNOWN_OAUTH_ERRORS.has(error.error) ? error.error : 'other',
          }),
          ...(error.status !== undefined && { status: error.status }),
        };
  const base = {
    valid: token !== undefined,
    status,
    expires_at: iso((token ?? held)?.expiresAt),
    ...(lastError !== undefined && { last_error: lastError, failures: entry.failures }),
  };
  if (token !== undefined) return base;
  const why =
    held === undefined
      ? 'no token obtained yet'
      : status === 'expired'
        ? 'the token expired'
        : 'the token is about to expire';
  return { ...base, reason: error === undefined ? why : `${why}; the last refresh failed (${error.code})` };
}

function isLoopbackHost(host: string | undefined, port: number): boolean {
  if (host === undefined) return false;
  const names = ['127.0.0.1', 'localhost', '[::1]'];
  return names.some((name) => host === name || host === `${name}:${port}`) || /^127\.\d+\.\d+\.\d+(:\d+)?$/.test(host);
}

function iso(ms: number | undefined): string | null {
  return ms === undefined || !Number.isFinite(ms) ? null : new Date(ms).toISOString();
}

/** A warning as a JSON log line on stderr, before the logger exists (configuration, secrets). */
function warnLine(message: string, fields: Record<string, unknown> = {}): void {
  process.stderr.write(
    `${printable(JSON.stringify({ time: new Date().toISOString(), level: 'warn', msg: message, ...fields }))}\n`,
  );
}

/**
 * Runs `tokenwarden agent --config FILE` until SIGTERM or SIGINT; resolves with the exit code (0 after a
 * clean stop). A second signal during shutdown exits at once.
 */
export async function runAgent(configFile: string, options: { debug: boolean }): Promise<number> {
  const config = await loadAgentConfig(configFile, (message) => warnLine(message));
  const log = jsonLogger(options);
  log.info('starting', {
    config: config.file,
    tokens: Object.fromEntries(
      Object.entries(config.tokens).map(([name, t]) => [
        name,
        {
          issuer: t.issuer ?? null,
          token_endpoint: t.tokenEndpoint ?? null,
          client_id: t.clientId,
          sink: t.sink?.file ?? null,
        },
      ]),
    ),
    listen: config.listen ? `${config.listen.host}:${config.listen.port}` : null,
    pid: process.pid,
  });
  // Timers of the managers are unref()'d: this keeps the process alive until a signal says stop.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  let stopping = false;
  let signalled!: (signal: string) => void;
  const signal = new Promise<string>((resolve) => (signalled = resolve));
  const onSignal = (name: NodeJS.Signals): void => {
    if (stopping) {
      log.warn('second signal: exiting without a clean stop', { signal: name });
      process.exit(1);
    }
    stopping = true;
    signalled(name);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  const detach = (): void => {
    clearInterval(keepAlive);
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  };
  let startError: unknown;
  const starting = startAgent(config, log).catch((err: unknown) => {
    startError = err;
    return undefined;
  });
  const first = await Promise.race([starting, signal]);
  if (first === undefined) {
    detach();
    throw startError;
  }
  const name = typeof first === 'string' ? first : await signal;
  log.info('stopping', { signal: name });
  const limit = setTimeout(() => {
    log.error('shutdown took too long; exiting', { limit_ms: SHUTDOWN_LIMIT_MS });
    process.exit(1);
  }, SHUTDOWN_LIMIT_MS);
  limit.unref();
  // A signal during start-up: the start (bounded by request timeouts) finishes first, then everything stops.
  const agent = await starting;
  await agent?.stop();
  clearTimeout(limit);
  detach();
  log.info('stopped');
  return 0;
}

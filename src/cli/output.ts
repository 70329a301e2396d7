/**
 * What the `tokenwarden` command prints when something goes wrong: one line on stderr with the error code,
 * what happened and what to do — no stack trace unless `--debug`, never a secret — and the exit code
 * (1 for a failure, 2 for a usage or configuration error).
 *
 * @module
 */
import { TokenwardenError } from '../errors.js';
import { Redactor, UNCHECKED, redactUrlCredentials } from '../redact.js';

/** The secrets this process read (client secrets): never printed, whatever text carries them. */
let known = Redactor.none;

/**
 * Registers a secret the command read (a client secret) so that nothing it prints — errors, `--debug`
 * stack traces, warnings, agent logs — can carry it, in any encoding.
 *
 * @example
 * ```ts
 * keepSecret(await readSecret({ file }, '--client-secret-file', warn));
 * ```
 */
export function keepSecret(secret: string, clientId?: string): void {
  known = known.with(new Redactor([secret], { clientId }));
}

/**
 * Text about to be printed, scrubbed: registered secrets (see {@link keepSecret}) and the user name and
 * password of any URL (`https://user:pass@host` → `https://***@host`: a token endpoint, an issuer, a
 * proxy).
 *
 * @example
 * ```ts
 * process.stderr.write(printable(`request to ${url} failed`));
 * ```
 */
export function printable(text: string): string {
  return known.redact(redactUrlCredentials(text));
}

/**
 * What {@link printable} gives instead of a text that could not be scrubbed of secrets (the redactor's pattern
 * could not be built): the redactor fails closed, never printing the text raw.
 */
export const WITHHELD = UNCHECKED;

/** Exit code of a failure (the authorization server refused, the network failed, a token is invalid…). */
export const EXIT_FAILURE = 1;
/** Exit code of a usage error: bad or missing arguments, an invalid configuration file. Nothing was attempted. */
export const EXIT_USAGE = 2;

/**
 * A mistake in how the command was invoked or configured (exit code 2): a `TokenwardenError` with code
 * `ERR_CONFIG` and a `hint` saying what to do.
 *
 * @example
 * ```ts
 * throw new UsageError('--client-id is required', 'pass --client-id ID, or --profile NAME');
 * ```
 */
export class UsageError extends TokenwardenError {
  /** What to do about it. */
  readonly hint: string | undefined;

  constructor(message: string, hint?: string) {
    super('ERR_CONFIG', message);
    this.hint = hint;
  }
}

/**
 * The exit code for an error: 2 for usage and configuration errors (nothing was attempted), 1 otherwise.
 *
 * @example
 * ```ts
 * process.exitCode = exitCodeFor(err);
 * ```
 */
export function exitCodeFor(err: unknown): number {
  if (err instanceof TokenwardenError && (err.code === 'ERR_CONFIG' || err.code === 'ERR_INSECURE_ISSUER')) {
    return EXIT_USAGE;
  }
  return EXIT_FAILURE;
}

/**
 * One line (newline-terminated): `tokenwarden: CODE: message. Hint: what to do.` With `debug`, the stack
 * traces of the error and its causes follow. Control characters are removed so that a message from the
 * network cannot forge further lines; secrets and passwords in URLs are removed (see {@link printable}).
 *
 * @example
 * ```ts
 * process.stderr.write(formatError(err, { debug: false }));
 * ```
 */
export function formatError(err: unknown, options: { debug: boolean; command?: string }): string {
  const code = err instanceof TokenwardenError ? err.code : 'ERR_INTERNAL';
  const message = oneLine(err instanceof Error ? err.message : String(err)).replace(/\.$/, '');
  const hint = hintFor(err, options.command);
  let text = `tokenwarden: ${code}: ${message}${hint ? `. Hint: ${hint}` : ''}\n`;
  if (options.debug) text += debugDetails(err);
  const printed = printable(text);
  return printed === WITHHELD ? `tokenwarden: ${code}: ${WITHHELD}\n` : printed;
}

/** What to do about an error, in a few words; `undefined` when there is nothing useful to add. */
export function hintFor(err: unknown, command = 'COMMAND'): string | undefined {
  if (err instanceof UsageError) return err.hint ?? `see tokenwarden ${command} --help`;
  if (!(err instanceof TokenwardenError)) {
    return 'this is a bug in tokenwarden: please report it with the output of --debug (check it holds no secret)';
  }
  switch (err.code) {
    case 'ERR_CONFIG':
      return `see tokenwarden ${command} --help`;
    case 'ERR_INSECURE_ISSUER':
      return 'use an https: URL, or --allow-insecure-requests (allowInsecureRequests in a config file) for local development only';
    case 'ERR_NETWORK':
      return 'check the issuer or token endpoint URL, that the server is up, and your network or proxy';
    case 'ERR_TIMEOUT':
      return 'the server did not answer in time: try again, or allow more with --timeout';
    case 'ERR_DISCOVERY':
      return 'check the issuer URL (it must serve OAuth or OpenID Connect metadata), or give the token endpoint instead';
    case 'ERR_HTTP_STATUS':
    case 'ERR_INVALID_RESPONSE':
    case 'ERR_RESPONSE_TOO_LARGE':
      return 'the server did not answer like an OAuth authorization server: check the issuer or token endpoint URL, or try again later';
    case 'ERR_RETRY_LATER':
      return 'the authorization server asked to wait: try again later';
    case 'ERR_OAUTH':
      return oauthHint(err);
    case 'ERR_STORE':
    case 'ERR_STORE_TIMEOUT':
    case 'ERR_LOCK_TIMEOUT':
      return 'the token cache failed: check the permissions of the cache directory, or use --no-cache';
    case 'ERR_DECRYPT':
      return 'TOKENWARDEN_ENCRYPTION_KEY does not open the cached entry: set the key it was written with, or delete the cache directory';
    case 'ERR_INVALID_TOKEN':
      return 'pass a JWT (three base64url parts separated by dots); opaque tokens can only be checked by introspection';
    default:
      return undefined;
  }
}

function oauthHint(err: TokenwardenError): string {
  switch (err.error) {
    case 'invalid_client':
      return 'check the client id, the client secret (TOKENWARDEN_CLIENT_SECRET or --client-secret-file) and the authentication method';
    case 'invalid_scope':
      return 'the client may not request this scope: check --scope';
    case 'invalid_target':
      return 'the server does not accept this resource or audience: check --resource and --audience';
    case 'unauthorized_client':
    case 'unsupported_grant_type':
      return 'the client is not allowed the client_credentials grant: check its registration';
    case 'temporarily_unavailable':
    case 'server_error':
    case 'slow_down':
      return 'the authorization server is having trouble: try again later';
    default:
      return 'the authorization server refused the request: see its error above';
  }
}

/** Collapses whitespace and control characters (C0, DEL, C1, bidirectional overrides) into single spaces. */
export function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\s]+/g, ' ').trim();
}

function debugDetails(err: unknown): string {
  const lines: string[] = [];
  let current: unknown = err;
  for (let depth = 0; current !== undefined && current !== null && depth < 5; depth++) {
    const prefix = depth === 0 ? '' : 'caused by: ';
    if (current instanceof Error) lines.push(prefix + (current.stack ?? `${current.name}: ${current.message}`));
    else lines.push(prefix + oneLine(String(current)).slice(0, 500));
    current = current instanceof Error ? (current as { cause?: unknown }).cause : undefined;
  }
  return `${lines.join('\n')}\n`;
}

/**
 * A duration in human words, for "expires in 4 min" / "expired 3 min ago".
 *
 * @example
 * ```ts
 * humanDuration(250_000); // '4 min'
 * ```
 */
export function humanDuration(ms: number): string {
  const s = Math.abs(ms) / 1000;
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 48 * 3600) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86_400)} d`;
}

/**
 * `'expires in 4 min'` or `'expired 3 min ago'` for an expiry (epoch ms) seen at `now`.
 *
 * @example
 * ```ts
 * describeExpiry(Date.now() + 240_000, Date.now()); // 'expires in 4 min'
 * ```
 */
export function describeExpiry(expiresAt: number, now: number): string {
  return expiresAt > now
    ? `expires in ${humanDuration(expiresAt - now)}`
    : `expired ${humanDuration(now - expiresAt)} ago`;
}

/**
 * Writes `text` to a stream and resolves once it is handed to the OS (so that exiting right after loses
 * nothing, even on a pipe).
 */
export function write(stream: NodeJS.WritableStream, text: string): Promise<void> {
  return new Promise((resolve) => {
    // The callback also runs on an error (a closed pipe): there is nobody left to tell.
    stream.write(text, () => resolve());
  });
}

/**
 * Configuration of the `tokenwarden` command: where things live (XDG directories), profiles for
 * `tokenwarden token --profile NAME`, the agent's configuration file, durations, loopback listen
 * addresses, and reading client secrets from the environment or a file — never from argv or a config file.
 *
 * Every problem is a {@link UsageError} (exit code 2) naming the file and the field.
 *
 * @module
 */
import { constants } from 'node:fs';
import { type FileHandle, open, stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import { homedir } from 'node:os';
import { dirname, extname, isAbsolute, join, resolve } from 'node:path';
import { toMs } from '../duration.js';
import { UsageError } from './output.js';

/** The client authentication methods the command supports (a secret, or none for a public client). */
export const AUTH_METHODS = ['client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'none'] as const;

/** One of {@link AUTH_METHODS}. */
export type CliAuthMethod = (typeof AUTH_METHODS)[number];

/**
 * A client credentials configuration, as written in a profile or an agent token. The secret is named
 * (`clientSecretEnv`, `clientSecretFile`), never written here.
 */
export interface CredentialConfig {
  issuer?: string;
  tokenEndpoint?: string;
  clientId?: string;
  /** Name of the environment variable that holds the client secret. */
  clientSecretEnv?: string;
  /** File holding the client secret (a trailing newline is ignored); relative to the config file. */
  clientSecretFile?: string;
  clientAuth?: CliAuthMethod;
  scope?: string | string[];
  resource?: string | string[];
  audience?: string | string[];
  allowInsecureRequests?: boolean;
  /** Time limit per request to the authorization server, milliseconds. */
  timeoutMs?: number;
}

/** A profile of `tokenwarden token --profile NAME`: a credential, possibly partial (flags complete it). */
export interface ProfileConfig extends CredentialConfig {
  /** Default `--min-ttl`, milliseconds. */
  minTtlMs?: number;
}

/** Where the agent writes a token. */
export interface SinkConfig {
  /** Absolute path of the file. */
  file: string;
  /** `token`: the access token alone (no newline); `json`: `{ access_token, token_type, expires_at }`. */
  format: 'token' | 'json';
}

/** One token the agent keeps fresh. */
export interface AgentTokenConfig extends CredentialConfig {
  issuer?: string;
  clientId: string;
  sink?: SinkConfig;
}

/** A loopback address and port for the agent's HTTP endpoint. */
export interface ListenAddress {
  host: string;
  port: number;
}

/** The agent's configuration file, validated. */
export interface AgentConfig {
  /** The file it was read from, absolute. */
  file: string;
  tokens: Record<string, AgentTokenConfig>;
  listen?: ListenAddress;
  /**
   * Serve `GET /v1/token/<name>` only to requests carrying `Tokenwarden-Request: 1` (a defence against
   * server-side request forgery, like Vault Agent's `require_request_header`). Default `false`.
   */
  requireRequestHeader?: boolean;
}

const CREDENTIAL_FIELDS = [
  'issuer',
  'tokenEndpoint',
  'clientId',
  'clientSecretEnv',
  'clientSecretFile',
  'clientAuth',
  'scope',
  'resource',
  'audience',
  'allowInsecureRequests',
  'timeout',
] as const;

/** `$XDG_CONFIG_HOME/tokenwarden`, else `~/.config/tokenwarden`. */
export function configDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(xdg(env, 'XDG_CONFIG_HOME', '.config'), 'tokenwarden');
}

/** `$XDG_CACHE_HOME/tokenwarden`, else `~/.cache/tokenwarden`. */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(xdg(env, 'XDG_CACHE_HOME', '.cache'), 'tokenwarden');
}

function xdg(env: NodeJS.ProcessEnv, name: string, fallback: string): string {
  const value = env[name];
  // The XDG specification: a relative path is invalid and must be ignored.
  if (value !== undefined && value !== '' && isAbsolute(value)) return value;
  const home = env['HOME'] || homedir();
  return join(home, fallback);
}

/**
 * Parses a duration from the command line or a config file: `'90s'`, `'5m'`, `'1h'`, `'250ms'`, or a bare
 * number of **seconds**. Returns milliseconds.
 *
 * @example
 * ```ts
 * parseDuration('5m', '--min-ttl'); // 300000
 * parseDuration('30', '--min-ttl'); // 30000
 * ```
 */
export function parseDuration(value: unknown, name: string): number {
  if (typeof value === 'number' || (typeof value === 'string' && /^\s*\d+(\.\d+)?\s*$/.test(value))) {
    const seconds = Number(value);
    if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  } else if (typeof value === 'string') {
    try {
      return toMs(value as `${number}s`, name);
    } catch {
      // the message below
    }
  }
  throw new UsageError(`${name} must be a duration like 90s, 5m, 1h or a number of seconds`);
}

/** Longest time limit: what a timer can wait (2³¹−1 ms, about 24 days); a longer one would fire at once. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * Parses a time limit per request (`--timeout`, a `timeout` field) like {@link parseDuration}; it must be
 * more than zero and at most about 24 days (what a timer can wait).
 *
 * @example
 * ```ts
 * parseTimeout('30s', '--timeout'); // 30000
 * ```
 */
export function parseTimeout(value: unknown, name: string): number {
  const ms = parseDuration(value, name);
  if (ms <= 0 || ms > MAX_TIMEOUT_MS) {
    throw new UsageError(`${name} must be more than 0 and at most 24 days (${MAX_TIMEOUT_MS} ms)`);
  }
  return ms;
}

/** A configuration file is small; anything larger is not one. */
const MAX_CONFIG_BYTES = 1024 * 1024;

/**
 * Reads a JSON file, or a YAML file (`.yaml`, `.yml`; the `yaml` package is loaded only then). Syntax
 * errors name the position, never quote the content (it might hold something secret).
 *
 * Whoever can change a configuration file decides where the client secret is sent: a file any user may
 * write is refused; one its group may write, or that belongs to another user (other than root), gives a
 * warning through `warn`.
 */
export async function readConfigFile(
  file: string,
  warn: (message: string) => void = () => undefined,
): Promise<unknown> {
  let text: string;
  let handle: FileHandle | undefined;
  try {
    // Non-blocking: a FIFO in place of the file must not hang the command.
    handle = await open(file, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
    const info = await handle.stat();
    if (!info.isFile()) throw Object.assign(new Error('not a file'), { code: 'ENOTFILE' });
    if (info.size > MAX_CONFIG_BYTES) throw Object.assign(new Error('too large'), { code: 'EFBIG' });
    checkConfigPermissions(file, info, warn);
    text = await handle.readFile('utf8');
  } catch (err) {
    if (err instanceof UsageError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new UsageError(
      `cannot read the configuration file ${file}${code ? ` (${code})` : ''}`,
      'check the path and its permissions',
    );
  } finally {
    await handle?.close().catch(() => undefined);
  }
  const ext = extname(file).toLowerCase();
  if (ext === '.yaml' || ext === '.yml') {
    const { parseDocument, YAMLError } = await import('yaml');
    try {
      // Read as a document so that its warnings are ours to report: the library would print them as process
      // warnings, and a value it could not resolve (an unknown tag: `!!js/function`) would be read as a string.
      const document = parseDocument(text, { logLevel: 'silent' }); // prettyErrors (default): linePos
      const problem = document.errors[0] ?? document.warnings[0];
      if (problem !== undefined) throw problem;
      return document.toJS({ maxAliasCount: 100 }) as unknown;
    } catch (err) {
      if (err instanceof YAMLError) {
        const at = err.linePos?.[0];
        throw new UsageError(
          `${file} is not valid YAML${at ? ` (line ${at.line}, column ${at.col})` : ''}: ${err.code}`,
          'fix the syntax',
        );
      }
      throw new UsageError(`${file} is not valid YAML`, 'fix the syntax');
    }
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    const position = /position (\d+)/.exec(String((err as Error).message))?.[1];
    const where = position === undefined ? '' : ` (${lineCol(text, Number(position))})`;
    throw new UsageError(`${file} is not valid JSON${where}`, 'fix the syntax (a .yaml or .yml file is read as YAML)');
  }
}

/** Refuses a configuration file every user may write; warns about one its group may write, or another user owns. */
function checkConfigPermissions(
  file: string,
  info: { mode: number; uid: number },
  warn: (message: string) => void,
): void {
  const mode = (info.mode & 0o777).toString(8).padStart(3, '0');
  const risk = 'whoever can change it can send the client secret to a server of their choosing';
  if ((info.mode & 0o002) !== 0) {
    throw new UsageError(
      `the configuration file ${file} can be changed by any user (mode ${mode}): ${risk}`,
      `chmod o-w ${file}`,
    );
  }
  if ((info.mode & 0o020) !== 0) {
    warn(`the configuration file ${file} can be changed by its group (mode ${mode}): ${risk}; chmod g-w it`);
  }
  const uid = process.geteuid?.();
  if (uid !== undefined && info.uid !== uid && info.uid !== 0) {
    warn(`the configuration file ${file} belongs to another user (uid ${info.uid}): ${risk}`);
  }
}

function lineCol(text: string, position: number): string {
  const before = text.slice(0, position).split('\n');
  return `line ${before.length}, column ${(before.at(-1)?.length ?? 0) + 1}`;
}

/**
 * Finds the profiles file: `config.json`, `config.yaml` or `config.yml` in {@link configDir}, the first
 * that exists. `undefined` when there is none.
 */
export async function findProfilesFile(env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  const dir = configDir(env);
  for (const name of ['config.json', 'config.yaml', 'config.yml']) {
    const file = join(dir, name);
    if (
      await stat(file).then(
        (s) => s.isFile(),
        () => false,
      )
    )
      return file;
  }
  return undefined;
}

/**
 * Loads profile `name` from the profiles file (`{ "profiles": { "<name>": { "issuer", "clientId", … } } }`).
 *
 * @example
 * ```ts
 * const profile = await loadProfile('billing'); // ProfileConfig, paths resolved
 * ```
 */
export async function loadProfile(
  name: string,
  env: NodeJS.ProcessEnv = process.env,
  warn: (message: string) => void = () => undefined,
): Promise<ProfileConfig> {
  const file = await findProfilesFile(env);
  if (file === undefined) {
    throw new UsageError(
      `profile '${name}' not found: there is no config.json, config.yaml or config.yml in ${configDir(env)}`,
      'create one with { "profiles": { "NAME": { "issuer": …, "clientId": … } } }',
    );
  }
  const data = await readConfigFile(file, warn);
  const root = object(data, file, '(top level)');
  allowOnly(root, ['profiles'], file, '');
  const profiles = object(root['profiles'] ?? {}, file, 'profiles');
  // Its own profiles only: `--profile __proto__` or `--profile toString` names none (not Object.prototype's).
  const raw = Object.hasOwn(profiles, name) ? profiles[name] : undefined;
  if (raw === undefined) {
    const known = Object.keys(profiles);
    throw new UsageError(
      `profile '${name}' is not in ${file}`,
      known.length ? `known profiles: ${known.join(', ')}` : 'add it under "profiles"',
    );
  }
  const where = `profiles.${name}`;
  const entry = object(raw, file, where);
  allowOnly(entry, [...CREDENTIAL_FIELDS, 'minTtl'], file, where);
  const profile: ProfileConfig = parseCredential(entry, file, where);
  if (entry['minTtl'] !== undefined) profile.minTtlMs = fieldDuration(entry['minTtl'], file, `${where}.minTtl`);
  return profile;
}

/**
 * Loads and validates the agent's configuration file:
 * `{ "tokens": { "<name>": { "issuer", "clientId", "clientSecretEnv" | "clientSecretFile", "scope", "resource",
 * "audience", "allowInsecureRequests", "sink": { "file": "…", "format": "token" | "json" } } }, "listen": "127.0.0.1:PORT",
 * "requireRequestHeader": false }`.
 *
 * @example
 * ```ts
 * const config = await loadAgentConfig('/etc/tokenwarden/agent.json');
 * ```
 */
export async function loadAgentConfig(
  file: string,
  warn: (message: string) => void = () => undefined,
): Promise<AgentConfig> {
  const path = resolve(file);
  const root = object(await readConfigFile(path, warn), path, '(top level)');
  allowOnly(root, ['tokens', 'listen', 'requireRequestHeader'], path, '');
  const requireRequestHeader = root['requireRequestHeader'];
  if (requireRequestHeader !== undefined && typeof requireRequestHeader !== 'boolean') {
    throw new UsageError(`${path}: requireRequestHeader must be true or false`);
  }
  const rawTokens = object(root['tokens'], path, 'tokens');
  const names = Object.keys(rawTokens);
  if (names.length === 0) throw new UsageError(`${path}: tokens is empty`, 'configure at least one token');
  const listen = root['listen'] === undefined ? undefined : parseListen(root['listen'], `${path}: listen`);
  const tokens: Record<string, AgentTokenConfig> = {};
  for (const name of names) {
    const where = `tokens.${name}`;
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) {
      throw new UsageError(
        `${path}: the token name '${name.slice(0, 64)}' is not allowed`,
        'use 1–64 characters of A–Z, a–z, 0–9, ".", "_" or "-", starting with a letter or digit',
      );
    }
    const entry = object(rawTokens[name], path, where);
    allowOnly(entry, [...CREDENTIAL_FIELDS, 'sink'], path, where);
    const credential = parseCredential(entry, path, where);
    requireCredential(credential, `${path}: ${where}`);
    const token: AgentTokenConfig = { ...credential, clientId: credential.clientId as string };
    if (entry['sink'] !== undefined) token.sink = parseSink(entry['sink'], path, `${where}.sink`);
    if (token.sink === undefined && listen === undefined) {
      throw new UsageError(
        `${path}: ${where} has no sink and there is no listen address, so nobody could read this token`,
        `add "sink": { "file": "…" } to ${where}, or a top-level "listen": "127.0.0.1:PORT"`,
      );
    }
    tokens[name] = token;
  }
  const sinks = Object.values(tokens).flatMap((t) => (t.sink ? [t.sink.file] : []));
  const duplicate = sinks.find((f, i) => sinks.indexOf(f) !== i);
  if (duplicate !== undefined) throw new UsageError(`${path}: two tokens write the same sink file ${duplicate}`);
  return {
    file: path,
    tokens,
    ...(listen && { listen }),
    ...(requireRequestHeader === true && { requireRequestHeader }),
  };
}

/** Checks that a credential names a server and a client; a `UsageError` otherwise. */
export function requireCredential(credential: CredentialConfig, where: string): void {
  if (credential.issuer === undefined && credential.tokenEndpoint === undefined) {
    throw new UsageError(`${where}: issuer or tokenEndpoint is required`);
  }
  if (credential.clientId === undefined) throw new UsageError(`${where}: clientId is required`);
  if (credential.clientAuth !== 'none' && !credential.clientSecretEnv && !credential.clientSecretFile) {
    throw new UsageError(
      `${where}: clientSecretEnv or clientSecretFile is required`,
      'name the environment variable or the file that holds the client secret (or set clientAuth to none for a public client)',
    );
  }
}

function parseCredential(entry: Record<string, unknown>, file: string, where: string): CredentialConfig {
  const out: CredentialConfig = {};
  const str = (name: string): string | undefined => {
    const value = entry[name];
    if (value === undefined) return undefined;
    if (typeof value !== 'string' || value === '') {
      throw new UsageError(`${file}: ${where}.${name} must be a non-empty string`);
    }
    return value;
  };
  const list = (name: string): string | string[] | undefined => {
    const value = entry[name];
    if (value === undefined) return undefined;
    if (typeof value === 'string' && value !== '') return value;
    if (Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === 'string' && v !== '')) {
      return value as string[];
    }
    throw new UsageError(`${file}: ${where}.${name} must be a string or an array of strings`);
  };
  if ('clientSecret' in entry) {
    throw new UsageError(
      `${file}: ${where}.clientSecret is not allowed: a secret does not belong in a configuration file`,
      'use clientSecretEnv (the name of an environment variable) or clientSecretFile (a file only the service can read)',
    );
  }
  const issuer = str('issuer');
  const tokenEndpoint = str('tokenEndpoint');
  const clientId = str('clientId');
  const clientSecretEnv = str('clientSecretEnv');
  const clientSecretFile = str('clientSecretFile');
  if (issuer !== undefined) out.issuer = issuer;
  if (tokenEndpoint !== undefined) out.tokenEndpoint = tokenEndpoint;
  if (clientId !== undefined) out.clientId = clientId;
  if (clientSecretEnv !== undefined) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(clientSecretEnv)) {
      throw new UsageError(`${file}: ${where}.clientSecretEnv must be the name of an environment variable`);
    }
    out.clientSecretEnv = clientSecretEnv;
  }
  if (clientSecretFile !== undefined) out.clientSecretFile = resolve(dirname(file), clientSecretFile);
  if (clientSecretEnv !== undefined && clientSecretFile !== undefined) {
    throw new UsageError(`${file}: ${where} has both clientSecretEnv and clientSecretFile`, 'keep one');
  }
  const clientAuth = str('clientAuth');
  if (clientAuth !== undefined) {
    if (!(AUTH_METHODS as readonly string[]).includes(clientAuth)) {
      throw new UsageError(`${file}: ${where}.clientAuth must be one of ${AUTH_METHODS.join(', ')}`);
    }
    out.clientAuth = clientAuth as CliAuthMethod;
  }
  for (const name of ['scope', 'resource', 'audience'] as const) {
    const value = list(name);
    if (value !== undefined) out[name] = value;
  }
  const insecure = entry['allowInsecureRequests'];
  if (insecure !== undefined) {
    if (typeof insecure !== 'boolean')
      throw new UsageError(`${file}: ${where}.allowInsecureRequests must be true or false`);
    out.allowInsecureRequests = insecure;
  }
  if (entry['timeout'] !== undefined) {
    out.timeoutMs = fieldDuration(entry['timeout'], file, `${where}.timeout`, parseTimeout);
  }
  return out;
}

function parseSink(raw: unknown, file: string, where: string): SinkConfig {
  const sink = object(raw, file, where);
  allowOnly(sink, ['file', 'format'], file, where);
  if (typeof sink['file'] !== 'string' || sink['file'] === '') {
    throw new UsageError(`${file}: ${where}.file must be a path`);
  }
  const format = sink['format'] ?? 'token';
  if (format !== 'token' && format !== 'json') throw new UsageError(`${file}: ${where}.format must be token or json`);
  return { file: resolve(dirname(file), sink['file']), format };
}

function fieldDuration(value: unknown, file: string, where: string, parse = parseDuration): number {
  try {
    return parse(value, where);
  } catch (err) {
    throw new UsageError(`${file}: ${(err as Error).message}`);
  }
}

/**
 * Parses a listen address and refuses anything but loopback: `127.0.0.1:8790`, `[::1]:8790`,
 * `localhost:8790` (read as `127.0.0.1`). Port 0 picks a free port.
 *
 * @example
 * ```ts
 * parseListen('127.0.0.1:8790', 'listen'); // { host: '127.0.0.1', port: 8790 }
 * ```
 */
export function parseListen(value: unknown, where: string): ListenAddress {
  if (typeof value !== 'string') throw new UsageError(`${where} must be a string like "127.0.0.1:8790"`);
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value.trim());
  if (!match) throw new UsageError(`${where} must look like "127.0.0.1:8790" or "[::1]:8790"`);
  const rawHost = (match[1] ?? match[2]) as string;
  const port = Number(match[3]);
  if (port > 65_535) throw new UsageError(`${where}: port ${port} is out of range`);
  const host = rawHost.toLowerCase() === 'localhost' ? '127.0.0.1' : rawHost;
  const loopback = (isIP(host) === 4 && host.startsWith('127.')) || (isIP(host) === 6 && isLoopbackV6(host));
  if (!loopback) {
    throw new UsageError(
      `${where}: ${rawHost} is not a loopback address; the token endpoint only listens on 127.0.0.1 or ::1`,
      'anyone who can reach the port can take the tokens: use a loopback address and a file sink for other hosts',
    );
  }
  return { host, port };
}

function isLoopbackV6(host: string): boolean {
  return /^(0{0,4}:){2,7}0{0,3}1$/.test(host) || host === '::1';
}

/**
 * Longest client secret accepted, in UTF-8 bytes. Real client secrets are tens of characters (Entra ID 40,
 * Okta 40–64); one of kilobytes is a wrong file (a certificate, a key, a log), and in a Basic header its
 * percent-encoded base64 would pass the 16 KB most servers take. Such a secret is refused before it is used.
 */
export const MAX_SECRET_BYTES = 4096;
/** Largest client secret file read (a secret plus trailing newlines fits easily; a log file does not). */
const MAX_SECRET_FILE_BYTES = 64 * 1024;

/**
 * Reads a client secret from an environment variable or a file (its trailing newline removed). A file that
 * others may read triggers `warn`. `what` names where the setting came from, for messages. A file that is
 * not a regular file (a FIFO, `/dev/zero`, a directory) or is larger than 64 KiB, and a secret longer than
 * {@link MAX_SECRET_BYTES}, are refused without reading them whole; no message holds the secret.
 */
export async function readSecret(
  from: { env?: string | undefined; file?: string | undefined },
  what: string,
  warn: (message: string) => void,
  env: NodeJS.ProcessEnv = process.env,
): Promise<string> {
  if (from.file !== undefined) {
    let text: string;
    let handle: FileHandle | undefined;
    try {
      // Non-blocking, and the type checked on the open file: a FIFO put in its place must not hang the command.
      handle = await open(from.file, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
      const info = await handle.stat();
      if (!info.isFile()) throw Object.assign(new Error('not a file'), { code: 'ENOTFILE' });
      if (info.size > MAX_SECRET_FILE_BYTES) throw Object.assign(new Error('too large'), { code: 'EFBIG' });
      if ((info.mode & 0o077) !== 0) {
        warn(
          `the client secret file ${from.file} can be read by other users (mode ${(info.mode & 0o777).toString(8)}): chmod 600 it`,
        );
      }
      // At most the size checked (plus one byte, to notice a file growing meanwhile), never an unbounded read.
      const buffer = Buffer.alloc(MAX_SECRET_FILE_BYTES + 1);
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
      if (bytesRead > MAX_SECRET_FILE_BYTES) throw Object.assign(new Error('too large'), { code: 'EFBIG' });
      text = buffer.subarray(0, bytesRead).toString('utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new UsageError(
        `cannot read the client secret file ${from.file} (${what})${code ? `: ${code}` : ''}`,
        code === 'EFBIG'
          ? `a client secret file holds the secret alone (at most ${MAX_SECRET_BYTES} bytes)`
          : 'check the path and that this user can read it',
      );
    } finally {
      await handle?.close().catch(() => undefined);
    }
    const secret = text.replace(/[\r\n]+$/, '');
    if (secret === '') throw new UsageError(`the client secret file ${from.file} (${what}) is empty`);
    return checkSecretLength(secret, `the client secret file ${from.file} (${what})`);
  }
  if (from.env !== undefined) {
    const secret = env[from.env];
    if (secret === undefined || secret === '') {
      throw new UsageError(
        `the environment variable ${from.env} (${what}) is not set or empty`,
        `export ${from.env} with the client secret`,
      );
    }
    return checkSecretLength(secret, `the environment variable ${from.env} (${what})`);
  }
  throw new UsageError(`no client secret (${what})`);
}

/**
 * `secret` if it is at most {@link MAX_SECRET_BYTES} long; a `UsageError` naming `where` (never the secret)
 * otherwise.
 *
 * @example
 * ```ts
 * checkSecretLength(process.env.TOKENWARDEN_CLIENT_SECRET ?? '', 'TOKENWARDEN_CLIENT_SECRET');
 * ```
 */
export function checkSecretLength(secret: string, where: string): string {
  const bytes = Buffer.byteLength(secret, 'utf8');
  if (bytes > MAX_SECRET_BYTES) {
    throw new UsageError(
      `${where} holds ${bytes} bytes: longer than any client secret (at most ${MAX_SECRET_BYTES})`,
      'check that it holds the client secret alone',
    );
  }
  return secret;
}

function object(value: unknown, file: string, where: string): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new UsageError(`${file}: ${where} must be an object`);
  }
  // A field set to null (a template's empty value) counts as absent.
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== null));
}

function allowOnly(entry: Record<string, unknown>, allowed: readonly string[], file: string, where: string): void {
  for (const key of Object.keys(entry)) {
    if (key === 'clientSecret') continue; // refused with its own message
    if (!allowed.includes(key)) {
      throw new UsageError(
        `${file}: unknown field ${where ? `${where}.` : ''}${key.slice(0, 64)}`,
        `allowed here: ${allowed.join(', ')}`,
      );
    }
  }
}

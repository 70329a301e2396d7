/**
 * Credentials read on every request — a workload identity token the platform writes to a file and rotates
 * (a Kubernetes projected service-account token, `AZURE_FEDERATED_TOKEN_FILE`, a file-sourced subject
 * token), or a function that returns one. One reader for client assertions and token exchange inputs.
 *
 * @module
 */
import { open } from 'node:fs/promises';
import { TokenwardenError } from '../errors.js';

/**
 * A credential read anew for every request: `{ file }` (the file's content, surrounding whitespace
 * removed) or a function returning it.
 *
 * @example
 * ```ts
 * const assertion: CredentialInput = { file: '/var/run/secrets/tokens/oidc-token' };
 * const fromVault: CredentialInput = async () => (await vault.read('identity/token')).token;
 * ```
 */
export type CredentialInput = { file: string } | (() => string | Promise<string>);

/**
 * Largest credential file read, in bytes (64 KiB): a JWT is a few kilobytes; anything larger is not one.
 *
 * @example
 * ```ts
 * if ((await stat(path)).size > MAX_CREDENTIAL_FILE_BYTES) console.warn(`${path} is too large to be a token`);
 * ```
 */
export const MAX_CREDENTIAL_FILE_BYTES = 64 * 1024;

/** True for `{ file: '…' }`. */
export function isFileCredential(value: unknown): value is { file: string } {
  return value !== null && typeof value === 'object' && 'file' in value;
}

/**
 * Checks a {@link CredentialInput} option at construction (`ERR_CONFIG` naming the option).
 */
export function checkCredentialInput(value: unknown, name: string): void {
  if (typeof value === 'function') return;
  if (isFileCredential(value) && typeof value.file === 'string' && value.file !== '') return;
  throw new TokenwardenError('ERR_CONFIG', `${name} must be { file: '/path/to/token' } or a function returning one`);
}

/**
 * Reads a {@link CredentialInput}. A missing, empty, unreadable or oversized file, or a function that
 * throws or returns nothing, is `ERR_CREDENTIAL` naming the option and the path — never the content.
 */
export async function readCredential(input: CredentialInput, name: string): Promise<string> {
  if (typeof input === 'function') {
    let value: unknown;
    try {
      value = await input();
    } catch (err) {
      if (err instanceof TokenwardenError) throw err;
      throw new TokenwardenError('ERR_CREDENTIAL', `${name} function failed`, { cause: err });
    }
    if (typeof value !== 'string' || value.trim() === '') {
      throw new TokenwardenError('ERR_CREDENTIAL', `${name} function returned no credential`);
    }
    return value.trim();
  }
  return readCredentialFile(input.file, name);
}

async function readCredentialFile(path: string, name: string): Promise<string> {
  const fail = (why: string, cause?: unknown): TokenwardenError =>
    new TokenwardenError('ERR_CREDENTIAL', `${name} file ${JSON.stringify(path)} ${why}`, {
      ...(cause !== undefined && { cause: withoutContent(cause) }),
    });
  let text: string;
  try {
    const handle = await open(path, 'r');
    try {
      // Read at most one byte more than the cap, whatever the file claims to be (/dev/zero, a growing log).
      const buffer = Buffer.alloc(MAX_CREDENTIAL_FILE_BYTES + 1);
      let size = 0;
      for (;;) {
        const { bytesRead } = await handle.read(buffer, size, buffer.length - size, null);
        if (bytesRead === 0) break;
        size += bytesRead;
        if (size > MAX_CREDENTIAL_FILE_BYTES) throw fail(`is larger than ${MAX_CREDENTIAL_FILE_BYTES} bytes`);
      }
      text = buffer.subarray(0, size).toString('utf8');
    } finally {
      await handle.close().catch(() => undefined);
    }
  } catch (err) {
    if (err instanceof TokenwardenError) throw err;
    const code = (err as { code?: unknown }).code;
    if (code === 'ENOENT') throw fail('does not exist', err);
    if (code === 'EACCES' || code === 'EPERM') throw fail('cannot be read (permission denied)', err);
    if (code === 'EISDIR') throw fail('is a directory', err);
    throw fail(`cannot be read${typeof code === 'string' ? ` (${code})` : ''}`, err);
  }
  const value = text.trim();
  if (value === '') throw fail('is empty');
  return value;
}

/** A file system error holds the path and a code, never the content; keep only those. */
function withoutContent(err: unknown): unknown {
  if (!(err instanceof Error)) return undefined;
  const { code, syscall } = err as { code?: unknown; syscall?: unknown };
  const copy = new Error(err.message);
  Object.assign(copy, { code, syscall });
  return copy;
}

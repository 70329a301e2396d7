/**
 * One process of the fleet test: `node --import tsx test/users/fleet-worker.ts '<config JSON>'`.
 * Opens the shared store, prints `ready`, waits for a line on stdin, then calls `getAccessToken()` for
 * every subject every `intervalMs` for `durationMs` (mode `run`) or once (mode `once`), checking each
 * token, and prints one JSON line of results.
 */
import { createInterface } from 'node:readline';
import { decodeJwt } from 'jose';
import { UserTokens } from '../../src/users/index.js';
import { type StoreSpec, openStore } from './stores.js';

export interface WorkerConfig {
  mode: 'run' | 'once';
  issuer: string;
  clientId: string;
  clientSecret: string;
  store: StoreSpec;
  subjects: string[];
  intervalMs: number;
  durationMs: number;
}

export interface WorkerResult {
  calls: number;
  expired: number;
  wrongUser: number;
  errors: { subject: string; code: string | undefined; message: string }[];
  /** For each expired token: how late it was, its lifetime and its age when received (ms). */
  expiredDetail: { lateMs: number; lifetimeMs: number; ageMs: number; waitedMs: number }[];
  /** Mode `once`: `'ok'` or the error code, per subject. */
  outcome: Record<string, string>;
}

const config = JSON.parse(process.argv[2] as string) as WorkerConfig;
const store = openStore(config.store);
const users = new UserTokens({
  issuer: config.issuer,
  clientId: config.clientId,
  clientSecret: config.clientSecret,
  store,
  allowInsecureRequests: true,
});
if (process.env.TW_DEBUG) {
  const t0 = Date.now();
  const log = (...args: unknown[]): void => console.error(process.pid, Date.now() - t0, ...args);
  (store as unknown as { on?: (e: string, f: () => void) => void }).on?.('reset', () => log('reset'));
  users.on('storeError', (e) => log('storeError', e.subject, e.operation, e.error.message));
  users.on('loginRequired', (e) => log('loginRequired', e.subject, e.error.message));
  users.on('token', (e) => log('token', e.subject, e.from));
}
const result: WorkerResult = { calls: 0, expired: 0, wrongUser: 0, errors: [], expiredDetail: [], outcome: {} };

async function check(subject: string): Promise<void> {
  try {
    const asked = Date.now();
    const token = await users.getAccessToken(subject);
    const now = Date.now();
    result.calls += 1;
    const claims = decodeJwt(token.accessToken);
    if (!(token.expiresAt !== undefined && token.expiresAt > now) || (claims.exp as number) * 1000 <= now) {
      result.expired += 1;
      result.expiredDetail.push({
        lateMs: now - (token.expiresAt ?? 0),
        lifetimeMs: (token.expiresAt ?? 0) - token.issuedAt,
        ageMs: now - token.issuedAt,
        waitedMs: now - asked,
      });
    }
    if (claims.sub !== subject) result.wrongUser += 1;
    result.outcome[subject] = 'ok';
  } catch (err) {
    const e = err as { code?: string; message?: string };
    result.errors.push({ subject, code: e.code, message: String(e.message).slice(0, 200) });
    result.outcome[subject] = e.code ?? 'no code';
  }
}

console.log('ready');
await new Promise<void>((resolve) => createInterface({ input: process.stdin }).once('line', () => resolve()));

if (config.mode === 'once') {
  for (const subject of config.subjects) await check(subject);
} else {
  const end = Date.now() + config.durationMs;
  while (Date.now() < end) {
    const tick = Date.now();
    await Promise.all(config.subjects.map(check));
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, tick + config.intervalMs - Date.now())));
  }
}
// Close first: a refresh still in flight must write its rotated refresh token before the process ends.
await users.close();
await store.close();
console.log(JSON.stringify(result));
process.exit(0);

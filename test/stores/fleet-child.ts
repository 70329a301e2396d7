/**
 * One process of a fleet (spawned by fleet.test.ts and bench/fleet.bench.ts): a TokenManager over a
 * shared store, calling getToken() every `intervalMs` for `durationMs`; prints one JSON line of results.
 *
 * argv[2]: JSON {@link ChildConfig}.
 */
import { TokenManager, type TokenManagerOptions, clientCredentials, refreshToken } from '../../src/index.js';
import { openFleetStore } from './fleet-support.js';

export interface ChildConfig {
  store:
    | { kind: 'file'; path: string }
    | { kind: 'redis'; url: string; prefix: string }
    | { kind: 'redis-sentinel'; sentinels: { host: string; port: number }[]; name: string; prefix: string }
    | { kind: 'redis-cluster'; nodes: { host: string; port: number }[]; prefix: string }
    | { kind: 'postgres'; connectionString: string; table: string }
    | { kind: 'none' };
  issuer: string;
  clientId: string;
  clientSecret: string;
  refreshToken: string;
  /** Epoch ms at which to start (so that the fleet starts together). */
  startAt: number;
  durationMs: number;
  intervalMs: number;
  /** The grant: the refresh token (default) or client credentials (`refreshToken` unused). */
  grant?: 'refresh_token' | 'client_credentials';
  /** Write a set of entries in a loop instead (crash safety: the parent kills us mid-write). */
  mode?: 'fleet' | 'writer';
  /** Extra TokenManager options (JSON-able): `storeTimeout`, `lock`… */
  manager?: Pick<TokenManagerOptions, 'storeTimeout' | 'lock'>;
}

export interface ChildResult {
  calls: number;
  errors: string[];
  expired: number;
  /** getToken() latencies after the first call (which includes discovery and connecting). */
  latenciesMs: number[];
  /** The first getToken()'s latency. */
  firstMs: number;
  /** The least life a returned token had left, in ms (diagnostics). */
  minRemainingMs: number;
  storeErrors: number;
  storeRecovered: number;
  sources: number;
  /** Calls made while the manager held a valid (fresh or stale) token. */
  callsWhileValid: number;
  /** The slowest of those, in ms. */
  maxWhileValidMs: number;
  /** Errors of calls made while a valid token was held (there should be none). */
  errorsWhileValid: string[];
  /** Errors without a tokenwarden code. */
  uncoded: string[];
  /** The first few distinct error messages, with when they came (ms after the start): diagnostics. */
  messages: string[];
}

const config = JSON.parse(process.argv[2] as string) as ChildConfig;
/** See the loop below: how much of its life a token must have left for a call to count as "while valid". */
const VALID_SLACK_MS = 50;
/** How far past its expiry a returned token may be when the caller looks at it (see where it is used). */
const EXPIRED_SLACK_MS = 20;

const { store, close: closeStore } = openFleetStore(config.store);

if (config.mode === 'writer') {
  // Crash safety: rewrite a few large entries as fast as possible until killed.
  process.stdout.write('ready\n');
  for (let i = 0; ; i++) {
    const key = `crash:${i % 5}`;
    await store!.set(key, JSON.stringify({ i, pad: 'x'.repeat(50_000 + (i % 7) * 10_000) }));
  }
}

const client = {
  issuer: config.issuer,
  clientId: config.clientId,
  clientSecret: config.clientSecret,
  allowInsecureRequests: true,
};
const manager = new TokenManager({
  source:
    config.grant === 'client_credentials'
      ? clientCredentials({ ...client, scope: 'read' })
      : refreshToken({ ...client, refreshToken: config.refreshToken }),
  ...(store && { store }),
  ...config.manager,
});
const result: ChildResult = {
  calls: 0,
  errors: [],
  expired: 0,
  latenciesMs: [],
  firstMs: 0,
  minRemainingMs: Infinity,
  storeErrors: 0,
  storeRecovered: 0,
  sources: 0,
  callsWhileValid: 0,
  maxWhileValidMs: 0,
  errorsWhileValid: [],
  uncoded: [],
  messages: [],
};
manager.on('storeError', (e) => {
  result.storeErrors++;
  if (process.env.TW_DEBUG)
    console.error('storeError', e.operation, e.error.code, e.error.message, Date.now() - config.startAt);
});
manager.on('storeRecovered', () => result.storeRecovered++);
manager.on('token', (t) => {
  if (t.from === 'source') result.sources++;
});

await new Promise((r) => setTimeout(r, Math.max(0, config.startAt - Date.now())));
const end = Date.now() + config.durationMs;
while (Date.now() < end) {
  const started = performance.now();
  const { status, token: held } = manager.peek();
  // A token with a few milliseconds left may expire between this look and the manager's own (a busy machine
  // pauses a process that long): such a call is not counted either way. From VALID_SLACK_MS left on, the
  // manager must answer it at once, with it.
  const heldLeft = held?.expiresAt === undefined ? Infinity : held.expiresAt - Date.now();
  const valid = (status === 'fresh' || status === 'stale') && heldLeft >= VALID_SLACK_MS;
  try {
    const token = await manager.getToken();
    const took = performance.now() - started;
    if (result.calls === 0) result.firstMs = took;
    else result.latenciesMs.push(took);
    if (valid) {
      result.callsWhileValid++;
      result.maxWhileValidMs = Math.max(result.maxWhileValidMs, took);
    }
    if (token.expiresAt !== undefined) {
      const left = token.expiresAt - Date.now();
      // The manager serves a token until its last millisecond; one handed out with a millisecond left can be past
      // it when this continuation runs (a Sentinel failover keeps a 2-core machine busy). Expired by more than
      // EXPIRED_SLACK_MS when it reached the caller, it was served expired (calls come every few ms: a manager
      // that served expired tokens would give several, each later past expiry).
      if (left < -EXPIRED_SLACK_MS) result.expired++;
      result.minRemainingMs = Math.min(result.minRemainingMs, left);
    }
  } catch (err) {
    const code = (err as { code?: string }).code;
    result.errors.push(String(code ?? err));
    const message = `${String(code)}: ${String((err as Error).message).slice(0, 300)}`;
    if (result.messages.length < 8 && !result.messages.some((m) => m.endsWith(message))) {
      result.messages.push(`${Date.now() - config.startAt} ms ${message}`);
    }
    if (typeof code !== 'string' || !code.startsWith('ERR_')) result.uncoded.push(String(err).slice(0, 200));
    if (valid) {
      result.callsWhileValid++;
      result.maxWhileValidMs = Math.max(result.maxWhileValidMs, performance.now() - started);
      result.errorsWhileValid.push(String(code ?? err));
    }
  }
  result.calls++;
  await new Promise((r) => setTimeout(r, config.intervalMs));
}
await manager.close();
await closeStore();
process.stdout.write(`${JSON.stringify(result)}\n`);

/**
 * `npm run demo`: a real OAuth 2.0 authorization server (oidc-provider) on loopback issuing 6-second tokens,
 * two workers sharing one token through a FileStore (as two processes on one host would), a stream of
 * getToken() calls, an authorization-server outage ridden out on the still-valid token, and a restart that
 * continues with the stored token. Ends by itself after ~25 s (or on Ctrl-C) with a summary.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileStore, TokenManager, clientCredentials } from '../src/index.js';
import { startAuthorizationServer } from '../test/support/authorization-server.js';

const TOKEN_TTL_S = 6;
const RUN_MS = 25_000;
const OUTAGE_MS = 2_500;
const color = process.stdout.isTTY
  ? {
      dim: '\x1b[2m',
      red: '\x1b[31m',
      green: '\x1b[32m',
      yellow: '\x1b[33m',
      cyan: '\x1b[36m',
      bold: '\x1b[1m',
      off: '\x1b[0m',
    }
  : { dim: '', red: '', green: '', yellow: '', cyan: '', bold: '', off: '' };

const as = await startAuthorizationServer({ accessTokenTtl: TOKEN_TTL_S });
const started = Date.now();
const clock = () => `${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s`;
const fingerprint = (token: string) => createHash('sha256').update(token).digest('hex').slice(0, 8);
const say = (text: string) => console.log(`${color.dim}${clock()}${color.off}  ${text}`);

console.log(`${color.bold}tokenwarden demo${color.off}`);
console.log(`authorization server: oidc-provider at ${as.issuer}, ${TOKEN_TTL_S} s client-credentials tokens`);
const dir = await mkdtemp(join(tmpdir(), 'tokenwarden-demo-'));
console.log(`two workers share one FileStore (${dir}); each calls getToken() as fast as it can. Ctrl-C stops.\n`);

// One store shared by both workers, as by two processes on one host (across hosts: RedisStore, PostgresStore).
const store = new FileStore({ path: dir });
const options = {
  issuer: as.issuer,
  clientId: as.clients.svc.clientId,
  clientSecret: as.clients.svc.clientSecret,
  scope: 'read',
  allowInsecureRequests: true, // loopback http:, for the demo only
};
const workers = ['A', 'B'].map((name) => {
  const manager = new TokenManager({ source: clientCredentials(options), store });
  manager.on('token', (e) => {
    const left = ((e.expiresAt ?? 0) - Date.now()) / 1000;
    const how =
      e.from === 'source'
        ? `${color.green}obtained from the AS${color.off}`
        : `${color.cyan}adopted from the shared store${color.off}`;
    const fp = manager.peek().token ? fingerprint(manager.peek().token!.accessToken) : '?';
    say(
      `worker ${name}: token ${fp} ${how}, ${left.toFixed(1)} s left, stale in ${((e.staleAt - Date.now()) / 1000).toFixed(1)} s`,
    );
  });
  manager.on('refreshFailed', (e) => {
    const left =
      e.validUntil === undefined
        ? 'no valid token'
        : `still serving a token with ${((e.validUntil - Date.now()) / 1000).toFixed(1)} s left`;
    const retry = e.retryInMs === undefined ? '' : `, retry in ${(e.retryInMs / 1000).toFixed(1)} s`;
    say(`worker ${name}: ${color.yellow}refresh failed (${e.error.code})${retry}${color.off} — ${left}`);
  });
  manager.on('expired', () => say(`worker ${name}: ${color.red}token expired before a new one arrived${color.off}`));
  return { name, manager, calls: 0, failures: 0, expired: 0 };
});

let running = true;
let outageStarted: number | undefined;
const stop = () => {
  running = false;
};
process.once('SIGINT', stop);

async function work(worker: (typeof workers)[number]): Promise<void> {
  while (running) {
    try {
      const token = await worker.manager.getToken();
      worker.calls++;
      if ((token.expiresAt ?? Infinity) <= Date.now()) worker.expired++;
    } catch {
      worker.failures++;
    }
    if (worker.calls % 1000 === 0) await new Promise((r) => setImmediate(r));
  }
}

async function status(): Promise<void> {
  while (running) {
    await new Promise((r) => setTimeout(r, 1000));
    if (!running) break;
    const a = workers[0]!.manager.peek();
    const left = a.token?.expiresAt ? `${((a.token.expiresAt - Date.now()) / 1000).toFixed(1)} s left` : '';
    const calls = workers.reduce((n, w) => n + w.calls, 0);
    say(
      `${color.dim}status ${a.status.padEnd(7)} ${left.padEnd(11)} getToken() calls ${calls.toLocaleString('en')}, token requests to the AS ${as.counts.token}${color.off}`,
    );
  }
}

async function outage(): Promise<void> {
  // Start the outage just before the token turns stale, so the refresh attempts hit it.
  await new Promise((r) => setTimeout(r, 9_000));
  const info = workers[0]!.manager.peek().info;
  const wait = info ? Math.max(0, info.staleAt - Date.now() - 300) : 0;
  await new Promise((r) => setTimeout(r, wait));
  if (!running) return;
  outageStarted = Date.now();
  say(`${color.red}${color.bold}authorization server DOWN${color.off} (connections refused for ${OUTAGE_MS / 1000} s)`);
  await as.setFault('refuse');
  await new Promise((r) => setTimeout(r, OUTAGE_MS));
  await as.clearFault();
  say(`${color.green}${color.bold}authorization server back${color.off}`);
}

const timer = setTimeout(stop, RUN_MS);
await Promise.all([...workers.map(work), status(), outage()]);
clearTimeout(timer);

// A restart: a new manager on the same store continues with the stored token instead of asking the AS.
await Promise.all(workers.map((w) => w.manager.close()));
const requestsBefore = as.counts.token;
const restarted = new TokenManager({ source: clientCredentials(options), store });
const again = await restarted.getToken();
say(
  `after a restart: token ${fingerprint(again.accessToken)} read from the store, ${as.counts.token - requestsBefore} request(s) to the AS`,
);
await restarted.close();

const calls = workers.reduce((n, w) => n + w.calls, 0);
const failures = workers.reduce((n, w) => n + w.failures, 0);
const expired = workers.reduce((n, w) => n + w.expired, 0);
const seconds = (Date.now() - started) / 1000;
console.log(`\n${color.bold}summary${color.off} after ${seconds.toFixed(1)} s`);
console.log(
  `  getToken() calls          ${calls.toLocaleString('en')} (${Math.round(calls / seconds).toLocaleString('en')}/s)`,
);
console.log(
  `  token requests to the AS  ${as.counts.token} (ideal: about one per ${TOKEN_TTL_S / 2} s refresh window)`,
);
console.log(`  failed getToken() calls   ${failures}`);
console.log(`  expired tokens served     ${expired}`);
console.log(
  `  outage ridden out         ${outageStarted ? `${OUTAGE_MS / 1000} s, callers kept the still-valid token` : 'stopped before the outage'}`,
);
await store.close();
await rm(dir, { recursive: true, force: true });
await as.close();
process.exit(failures === 0 && expired === 0 ? 0 : 1);

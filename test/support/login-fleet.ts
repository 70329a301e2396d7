/**
 * A fleet of one login: `TokenManager`s (one per process) of the test authorization server's `app` client, each
 * on a store of its own over one shared backend, with the server's counts of refresh-token grants and
 * `invalid_grant` refusals — the setting of every "a store fault meets rotating refresh tokens" test.
 */
import { randomUUID } from 'node:crypto';
import { expect, onTestFinished } from 'vitest';
import { type RefreshTokenOptions, TokenManager, type TokenManagerOptions } from '../../src/index.js';
import type { TokenStore } from '../../src/stores/store.js';
import { appRefreshToken } from './app-client.js';
import type { TestAuthorizationServer } from './authorization-server.js';

/** A store the fleet closes when the test finishes. */
export type ClosableStore = TokenStore & { close(): Promise<void> };

/** The server's refresh-token grants (`spent`) and `invalid_grant` refusals (`rejected`) from now on. */
export interface ServerCounts {
  spent(): number;
  rejected(): number;
}

function serverCounts(as: TestAuthorizationServer): ServerCounts {
  const spentBefore = as.counts.byGrant['refresh_token'] ?? 0;
  const rejectedBefore = as.counts.errors['invalid_grant'] ?? 0;
  return {
    spent: () => (as.counts.byGrant['refresh_token'] ?? 0) - spentBefore,
    rejected: () => (as.counts.errors['invalid_grant'] ?? 0) - rejectedBefore,
  };
}

export interface LoginFleetOptions {
  /** Options of every manager. */
  manager?: Partial<TokenManagerOptions>;
  /** Options of the source of manager `which` (0, 1, …). */
  source?: (which: number) => Partial<RefreshTokenOptions>;
}

/**
 * `count` managers of one new login, manager `which` on the store `open(which)` makes; managers, then stores,
 * closed when the test finishes. Nothing is obtained yet; the counts start now.
 */
export async function loginFleet(
  as: TestAuthorizationServer,
  count: number,
  open: (which: number) => ClosableStore,
  options: LoginFleetOptions = {},
): Promise<{ managers: TokenManager[]; stores: ClosableStore[] } & ServerCounts> {
  const login = await as.login(`fleet-${randomUUID()}`);
  const rt = login['refresh_token'] as string;
  const stores = Array.from({ length: count }, (_, which) => open(which));
  const managers = stores.map(
    (store, which) =>
      new TokenManager({ ...options.manager, source: appRefreshToken(as, rt, options.source?.(which)), store }),
  );
  onTestFinished(async () => {
    await Promise.all(managers.map((m) => m.close()));
    await Promise.all(stores.map((s) => s.close()));
  });
  return { managers, stores, ...serverCounts(as) };
}

/**
 * Two managers (two processes) of one login sharing a backend: the stores connected, `a` holding the token of
 * one refresh, which `b` read from the store. The counts start after that refresh.
 */
export async function sharedPair(
  as: TestAuthorizationServer,
  open: (which: number) => ClosableStore,
  options: LoginFleetOptions = {},
): Promise<{ a: TokenManager; b: TokenManager } & ServerCounts> {
  const { managers, stores } = await loginFleet(as, 2, open, options);
  const [a, b] = managers as [TokenManager, TokenManager];
  await Promise.all(stores.map((s) => s.get('warm-up'))); // connected: the first call's time limit is the store's
  await a.refresh();
  expect((await b.getToken()).accessToken).toBe((await a.getToken()).accessToken); // b took it from the store
  return { a, b, ...serverCounts(as) };
}

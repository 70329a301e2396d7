/**
 * Many processes, one refresh token: every replica shares the token through Redis, refreshes once for the
 * whole fleet, and never spends a rotated refresh token twice.
 */
import { TokenManager, refreshToken } from 'tokenwarden';
import { RedisStore } from 'tokenwarden/redis';

const store = new RedisStore({
  url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
  prefix: 'my-service:tokens:',
  encryptionKey: process.env.TOKEN_ENCRYPTION_KEY, // 32 random bytes, base64: refresh tokens are encrypted at rest
});
const manager = new TokenManager({
  source: refreshToken({
    issuer: 'https://login.example.com',
    clientId: 'reporting',
    clientSecret: process.env.CLIENT_SECRET,
    refreshToken: process.env.INITIAL_REFRESH_TOKEN ?? '', // only the first process ever spends this one
  }),
  store,
});
manager.on('storeError', ({ operation, error }) => console.warn(`token store ${operation} failed: ${error.code}`));

process.once('SIGTERM', async () => {
  await manager.close(); // waits for a refresh in flight so the rotated refresh token reaches Redis
  await store.close();
});

const res = await manager.fetch('https://reports.example.com/daily');
console.log(res.status);

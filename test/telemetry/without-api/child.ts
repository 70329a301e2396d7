/**
 * Run by `../without-api.test.ts` in a process where `@opentelemetry/api` cannot be loaded: a manager gets a
 * token from the real authorization server, a verifier checks one, and a MetricsRegistry counts both.
 */
import { createRequire } from 'node:module';
import { TokenManager, clientCredentials } from '../../../src/index.js';
import { createVerifier } from '../../../src/server/index.js';
import { MetricsRegistry } from '../../../src/telemetry/index.js';
import { otelApi } from '../../../src/telemetry/otel.js';

const env = (name: string): string => process.env[name] ?? '';
let hidden = false;
try {
  createRequire(import.meta.url)('@opentelemetry/api');
} catch {
  hidden = await import('@opentelemetry/api').then(
    () => false,
    () => true,
  );
}
const registry = new MetricsRegistry();
const issuer = env('TW_ISSUER');
const manager = new TokenManager({
  source: clientCredentials({
    issuer,
    clientId: env('TW_CLIENT_ID'),
    clientSecret: env('TW_CLIENT_SECRET'),
    scope: 'read',
    allowInsecureRequests: true,
  }),
  name: 'bare',
});
const token = await manager.getToken();
const verify = createVerifier({ issuer, audience: env('TW_AUDIENCE'), allowInsecureRequests: true });
const valid = await verify(`Bearer ${env('TW_TOKEN')}`);
const again = await verify(`Bearer ${env('TW_TOKEN')}`);
const refused = await verify(`Bearer ${env('TW_TOKEN')}x`);
console.log(
  JSON.stringify({
    hidden,
    api: otelApi(),
    tokenType: token.tokenType,
    verified: [valid.ok, again.ok, refused.ok],
    text: registry.text(),
  }),
);
await manager.close();
registry.close();

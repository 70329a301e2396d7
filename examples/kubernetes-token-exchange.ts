/**
 * A Kubernetes pod that trades its projected service-account token for an API token (RFC 8693), with no
 * secret anywhere: the kubelet writes the token to a file and rotates it, and tokenwarden reads the file for
 * every exchange. The pod's spec mounts it with an audience the authorization server trusts:
 *
 *   volumes:
 *     - name: exchange-token
 *       projected:
 *         sources:
 *           - serviceAccountToken: { path: token, audience: https://login.example.com, expirationSeconds: 3600 }
 *   containers:
 *     - volumeMounts: [{ name: exchange-token, mountPath: /var/run/secrets/tokens, readOnly: true }]
 *
 * The same file can instead authenticate the client itself (`clientAssertion: { file }`, as Azure workload
 * identity's AZURE_FEDERATED_TOKEN_FILE does); both are shown. Calls to the authorization server honour the
 * cluster's HTTPS_PROXY / NO_PROXY.
 *
 *   ISSUER=https://login.example.com node --import tsx examples/kubernetes-token-exchange.ts
 */
import { TokenManager, clientCredentials, isTokenwardenError, tokenExchange } from 'tokenwarden';

const issuer = process.env.ISSUER ?? 'https://login.example.com';
const projected = { file: process.env.TOKEN_FILE ?? '/var/run/secrets/tokens/token' };

// 1. Token exchange: the service-account token is the subject; the pod's client is public here.
const orders = new TokenManager({
  source: tokenExchange({
    issuer,
    clientId: 'orders-worker',
    clientAuth: 'none',
    subjectToken: projected,
    subjectTokenType: 'urn:ietf:params:oauth:token-type:jwt',
    audience: 'https://orders.example.com',
    scope: 'orders:read',
    proxy: 'env',
  }),
});

// 2. Client credentials, the client authenticated by the same file (a federated client assertion).
const billing = new TokenManager({
  source: clientCredentials({
    issuer,
    clientId: 'orders-worker',
    clientAssertion: projected,
    scope: 'invoices:read',
    proxy: 'env',
  }),
});

try {
  const res = await orders.fetch('https://orders.example.com/v1/orders?status=open');
  console.log('orders:', res.status);
  const invoices = await billing.fetch('https://billing.example.com/v1/invoices');
  console.log('invoices:', invoices.status);
} catch (err) {
  // The file is missing or empty (not mounted?): ERR_CREDENTIAL names the path, never its content.
  if (isTokenwardenError(err, 'ERR_CREDENTIAL')) console.error(err.message);
  else throw err;
} finally {
  await Promise.all([orders.close(), billing.close()]);
}

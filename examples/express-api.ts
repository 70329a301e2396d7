/**
 * An API that accepts the tokens the examples above send: JWT access tokens checked against the issuer's
 * JWKS, scopes per route, RFC 6750 answers.
 */
import express from 'express';
import { createVerifier } from 'tokenwarden/server';
import { bearerAuth } from 'tokenwarden/express';

const verifier = createVerifier({
  issuer: 'https://login.example.com',
  audience: 'https://api.example.com',
  onError: (err) => console.warn(`token check unavailable: ${err.code}`), // 503s: the AS or its JWKS is down
});

const app = express();
app.get('/invoices', bearerAuth({ verifier, requiredScopes: ['invoices:read'] }), (req, res) => {
  res.json({ for: req.auth?.uid, scopes: req.auth?.credentials.scopes });
});
app.post('/invoices', bearerAuth({ verifier, requiredScopes: ['invoices:write'] }), (_req, res) => {
  res.status(201).end();
});
app.listen(3000);

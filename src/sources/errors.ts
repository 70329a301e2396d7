/**
 * Maps what `oauth4webapi` and `fetch` throw to {@link TokenwardenError}s with stable codes.
 *
 * @module
 */
import * as oauth from 'oauth4webapi';
import { type ErrorCode, TokenwardenError, sanitizeCause, truncate } from '../errors.js';

/**
 * Converts any error thrown while talking to an authorization server into a {@link TokenwardenError}.
 * `what` names the operation for the message ("token request", "discovery", …); `metadataCode` is used
 * for metadata problems (missing endpoints, issuer mismatch).
 */
export function toTokenwardenError(
  err: unknown,
  what: string,
  metadataCode: ErrorCode = 'ERR_DISCOVERY',
  retryAfterMs?: number,
): TokenwardenError {
  if (err instanceof TokenwardenError) return err;
  const retry = retryAfterMs === undefined ? {} : { retryAfterMs };
  if (err instanceof oauth.ResponseBodyError) {
    const description = err.error_description;
    return new TokenwardenError(
      'ERR_OAUTH',
      `${what} failed: the server answered ${err.status} ${truncate(err.error, 64)}${
        description ? ` (${truncate(description)})` : ''
      }`,
      {
        cause: oauthCause(err),
        error: err.error,
        ...(description !== undefined && { error_description: description }),
        status: err.status,
        ...retry,
      },
    );
  }
  if (err instanceof oauth.WWWAuthenticateChallengeError) {
    const params = err.cause[0]?.parameters ?? {};
    const error = params.error ?? 'invalid_client';
    return new TokenwardenError(
      'ERR_OAUTH',
      `${what} failed: the server answered ${err.status} ${truncate(error, 64)}`,
      {
        cause: oauthCause(err),
        error,
        ...(params.error_description !== undefined && { error_description: params.error_description }),
        status: err.status,
        ...retry,
      },
    );
  }
  if (err instanceof oauth.UnsupportedOperationError) {
    return new TokenwardenError('ERR_UNSUPPORTED', `${what} failed: ${truncate(err.message)}`, {
      cause: sanitizeCause(err),
    });
  }
  if (err instanceof oauth.OperationProcessingError) {
    const cause = err.cause;
    switch (err.code) {
      case oauth.RESPONSE_IS_NOT_CONFORM: {
        const status = cause instanceof Response ? cause.status : undefined;
        return new TokenwardenError(
          'ERR_HTTP_STATUS',
          `${what} failed: unexpected HTTP status${status === undefined ? '' : ` ${status}`} without an OAuth error body`,
          { cause: sanitizeResponseCause(err), ...(status !== undefined && { status }), ...retry },
        );
      }
      case oauth.HTTP_REQUEST_FORBIDDEN:
      case oauth.REQUEST_PROTOCOL_FORBIDDEN:
        return new TokenwardenError(
          'ERR_INSECURE_ISSUER',
          `${what} refused: only https: URLs are allowed (set allowInsecureRequests: true for local development)`,
          { cause: sanitizeResponseCause(err) },
        );
      case oauth.MISSING_SERVER_METADATA:
      case oauth.INVALID_SERVER_METADATA:
        return new TokenwardenError(metadataCode, `${what} failed: ${truncate(err.message)}`, {
          cause: sanitizeCause(err),
        });
      case oauth.JSON_ATTRIBUTE_COMPARISON:
        if (what === 'discovery') {
          return new TokenwardenError(
            'ERR_DISCOVERY',
            'discovery failed: the metadata names a different issuer than the one configured',
            { cause: sanitizeCause(err) },
          );
        }
        break;
      default:
        break;
    }
    return new TokenwardenError('ERR_INVALID_RESPONSE', `${what} failed: ${truncate(err.message)}`, {
      cause: sanitizeResponseCause(err),
      ...retry,
    });
  }
  if (err instanceof TypeError && typeof (err as { code?: unknown }).code === 'string') {
    // oauth4webapi's argument checks (CodedTypeError): a configuration problem.
    return new TokenwardenError('ERR_CONFIG', `${what} failed: ${truncate(err.message)}`, { cause: err });
  }
  return new TokenwardenError('ERR_NETWORK', `${what} failed: ${truncate(String((err as Error)?.message ?? err))}`, {
    cause: err,
  });
}

function oauthCause(err: Error & { response?: Response }): Error {
  // Keep the error (for its stack and OAuth fields) but not the Response object it references.
  Object.defineProperty(err, 'response', { value: undefined, enumerable: false });
  return err;
}

function sanitizeResponseCause(err: Error): unknown {
  const cause = (err as { cause?: unknown }).cause;
  if (cause instanceof Response) {
    Object.defineProperty(err, 'cause', {
      value: { status: cause.status, contentType: cause.headers.get('content-type') },
      enumerable: false,
      configurable: true,
    });
    return err;
  }
  return sanitizeCause(err);
}

/**
 * Network and TLS failures said in words: one list for the HTTP transport and the networked stores.
 *
 * @module
 */

/**
 * What an operator should know about a connection that could not be made or kept (the errno or TLS code of
 * the driver's error): the HTTP transport and every networked store say these in words.
 */
export const NETWORK_CODES: ReadonlyMap<string, string> = new Map(
  Object.entries({
    ENOTFOUND: 'the host name does not resolve (DNS)',
    EAI_AGAIN: 'the host name could not be resolved just now (DNS unavailable)',
    ECONNREFUSED: 'nothing listens at that address and port',
    ECONNRESET: 'the connection was reset',
    ETIMEDOUT: 'the connection timed out',
    EHOSTUNREACH: 'the host is unreachable',
    ENETUNREACH: 'the network is unreachable',
    EPIPE: 'the connection was closed by the server',
    UND_ERR_SOCKET: 'the server closed the connection before answering', // undici's "other side closed"
    DEPTH_ZERO_SELF_SIGNED_CERT: "the server's TLS certificate is self-signed and not trusted (ca)",
    SELF_SIGNED_CERT_IN_CHAIN: "the server's TLS certificate chain ends in an untrusted root (ca)",
    UNABLE_TO_VERIFY_LEAF_SIGNATURE: "the server's TLS certificate is not signed by a trusted authority (ca)",
    UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "the server's TLS certificate is not signed by a trusted authority (ca)",
    CERT_HAS_EXPIRED: "the server's TLS certificate has expired",
    ERR_TLS_CERT_ALTNAME_INVALID: "the server's TLS certificate does not name that host",
    ERR_SSL_WRONG_VERSION_NUMBER: 'TLS was asked of a server that does not speak it there (rediss://, ssl)',
    // The server's TLS alerts about the client's certificate (mutual TLS: tls_client_auth, a Redis or
    // PostgreSQL that verifies its clients).
    ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED: 'the server requires a client certificate (TLS cert and key)',
    ERR_SSL_TLSV1_ALERT_UNKNOWN_CA: "the server does not trust the client certificate's authority",
    ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE: 'the server refused the client certificate',
    ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED: 'the server refused the client certificate as expired',
  }),
);

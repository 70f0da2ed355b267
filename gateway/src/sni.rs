//! Sans-IO TLS ClientHello parser: SNI and ALPN, or not TLS, or need more bytes.

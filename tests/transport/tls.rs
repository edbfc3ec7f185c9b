//! TLS transport tests.

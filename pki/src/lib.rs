#![forbid(unsafe_code)]
//! Shared-trust PKI.

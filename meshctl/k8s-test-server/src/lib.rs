#![forbid(unsafe_code)]
//! TEST SERVER ONLY: a Kubernetes API server for tests.

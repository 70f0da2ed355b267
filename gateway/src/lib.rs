#![forbid(unsafe_code)]
//! East-west gateway library.

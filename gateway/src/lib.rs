#![forbid(unsafe_code)]
//! East-west gateway library: SNI auto-passthrough on 15443.

pub mod name;
pub mod sni;

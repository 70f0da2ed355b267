//! `check`'s rules: pure functions from gathered facts to report items, each failure with
//! a hint. No I/O and no `async` here, so the unit tests call them with hand-built facts.
//! `cluster`: one cluster's own checks; `pair`: one stored remote secret; `mesh`: the mesh
//! as a whole, and which pair checks can run at all; `expiry`: credentials and CA
//! certificates against the `--warn-before` horizon; `ambient`: ambient multi-network;
//! `gateway_grants`: the gateway's ClusterRole against what this meshctl writes.

pub mod ambient;
pub mod cluster;
pub mod expiry;
pub mod gateway_grants;
pub mod mesh;
pub mod pair;
pub mod rotation;

#[cfg(test)]
mod tests;

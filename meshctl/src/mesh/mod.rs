//! The mesh's objects and the steps that apply them, shared by the commands: the `cacerts`
//! Secret, istiod's namespace (network label, cluster name), the east-west gateway, the
//! remote secret (its shape, and the reader that mints its credential) and the reader role.
//! Commands in `cmd/` call these; nothing here imports a command.

pub mod cacerts;
pub mod gateway;
pub mod namespace;
pub mod reader;
pub mod reader_rules;
pub mod remote_secret;
pub mod rotation;

//! The mesh's objects and the steps that apply them, shared by the commands: the `cacerts`
//! Secret, istiod's namespace (network label, cluster name), the east-west gateway, the
//! remote secret (its shape, the reader that mints its credential, and reading and renewing
//! that credential), the reader role, the ambient announcements of peer gateways, and waiting
//! for objects being deleted before writing them again (`terminating`).
//! Commands in `cmd/` call these; nothing here imports a command.

pub mod ambient;
pub mod cacerts;
pub mod credentials;
pub mod gateway;
pub mod gateway_changes;
pub mod namespace;
pub mod origin;
pub mod reader;
pub mod reader_rules;
pub mod remote_secret;
pub mod rotation;
pub mod terminating;

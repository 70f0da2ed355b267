//! One module per subcommand: its clap `Args` and its `run`. A command parses and validates
//! its flags, calls `mesh` (the objects and steps) and `kube` (the cluster), and prints; no
//! command imports another.

pub mod cacerts;
pub mod certs;
pub mod check;
pub mod credentials;
pub mod gateway;
pub mod join;
pub mod label;
pub mod progress;
pub mod remote_secret;
pub mod rotate;

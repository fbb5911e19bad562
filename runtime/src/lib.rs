//! berth's built-in OCI runtime.
//!
//! A runc-compatible command line (`berth-runtime --root R create|start|state|kill|delete|
//! exec|pause|resume|update|run`) over a library that implements the Linux part of the OCI
//! runtime spec directly on system calls. The binary is single-threaded and short-lived: it
//! clones the container's init itself (no re-exec, no intermediate process) and exits once
//! the init is set up; the shim, as subreaper, inherits the init.
//!
//! Process roles: the runtime command ([`create`], [`exec`], [`ops`]), the container init
//! ([`init`]) and an exec'd process's child side ([`exec`]); they talk over [`channel`].

pub mod caps;
pub mod cgroups;
pub mod channel;
pub mod create;
pub mod error;
pub mod exec;
pub mod init;
pub mod log;
pub mod mounts;
pub mod ops;
pub mod process;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod sys;

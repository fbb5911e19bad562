//! Pod sandboxes: their namespaces (network through the network service, ipc and uts pinned by
//! bind mounts), records, status and lifecycle.
//!
//! [`record`] is the stored pod ([`Sandbox`]), [`store`] its table in the cri database
//! ([`Sandboxes`]), [`lifecycle`] runs, stops and removes pods, [`namespaces`] makes and pins
//! the ipc and uts namespaces, [`shm`] mounts the pod's shared /dev/shm tmpfs, [`status`]
//! answers PodSandboxStatus and ListPodSandbox, [`stats`] the pod stats and metrics RPCs, and
//! [`node`] the runtime-wide RPCs (Version, Status, RuntimeConfig, UpdateRuntimeConfig).

pub mod lifecycle;
pub mod namespaces;
pub mod node;
pub mod record;
pub mod shm;
pub mod stats;
pub mod status;
pub mod store;

pub use record::Sandbox;
pub use store::Sandboxes;

//! berth's gRPC APIs and the small runtime every berth service and client shares.
//!
//! Generated code lives in modules named after the protobuf packages (`berth::<service>::v1`,
//! and `runtime::v1` for the Kubernetes CRI). The runtime modules own what every service does
//! the same way: configuration, Unix-socket serving, namespaces, tracing, and client connections.

#![allow(missing_docs)]

pub mod client;
pub mod config;
pub mod daemon;
pub mod filters;
pub mod namespace;
pub mod server;
pub mod service;
pub mod telemetry;

pub use service::Service;

/// Generated code of berth's own protobuf packages.
pub mod berth {
    pub mod version {
        pub mod v1 {
            tonic::include_proto!("berth.version.v1");
        }
    }
    /// Messages shared by several packages: descriptors, platforms, mounts, exit status, stats.
    pub mod types {
        pub mod v1 {
            tonic::include_proto!("berth.types.v1");
        }
    }
    /// The content store: blobs by digest, resumable writes (served by the images service).
    pub mod content {
        pub mod v1 {
            tonic::include_proto!("berth.content.v1");
        }
    }
    /// Image records, pull, push, tag, import, export and unpack (served by the images service).
    pub mod images {
        pub mod v1 {
            tonic::include_proto!("berth.images.v1");
        }
    }
    /// Leases that keep content, ingests and snapshots alive during multi-step operations.
    pub mod leases {
        pub mod v1 {
            tonic::include_proto!("berth.leases.v1");
        }
    }
    /// Snapshots (layered filesystems) and the Diff service that applies and computes layers.
    pub mod snapshots {
        pub mod v1 {
            tonic::include_proto!("berth.snapshots.v1");
        }
    }
    /// Container records: image, OCI spec, rootfs snapshot, runtime, restart and log settings.
    pub mod containers {
        pub mod v1 {
            tonic::include_proto!("berth.containers.v1");
        }
    }
    /// Running containers: task lifecycle, exec, attach, logs, stats (served by the tasks service).
    pub mod tasks {
        pub mod v1 {
            tonic::include_proto!("berth.tasks.v1");
        }
    }
    /// Typed events of every service, and the publish/subscribe service that carries them.
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("berth.events.v1");
        }
    }
    /// Bridge networks, IPAM, network namespaces and container attachments.
    pub mod network {
        pub mod v1 {
            tonic::include_proto!("berth.network.v1");
        }
    }
    /// Named volumes that outlive containers.
    pub mod volumes {
        pub mod v1 {
            tonic::include_proto!("berth.volumes.v1");
        }
    }
    /// The API a berth-shim serves to the tasks service (one shim per container or pod).
    pub mod shim {
        pub mod v1 {
            tonic::include_proto!("berth.shim.v1");
        }
    }
}

/// The Kubernetes CRI v1 API (cri-api v0.36.3, `pkg/apis/runtime/v1/api.proto`).
#[allow(clippy::doc_lazy_continuation, clippy::doc_overindented_list_items)]
pub mod runtime {
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

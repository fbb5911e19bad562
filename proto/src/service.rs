//! The names of berth's services and where their sockets live.

use std::fmt;
use std::path::{Path, PathBuf};

/// One of the services berth runs, each on its own socket under the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Content store, images, registry client, unpack.
    Images,
    /// Snapshotters and the layer library.
    Snapshots,
    /// Containers, tasks, shims, logs, events.
    Tasks,
    /// Networks, IPAM, netns, ports, DNS.
    Network,
    /// Kubernetes CRI facade.
    Cri,
}

impl Service {
    /// Every service, in the order they depend on each other (callees first).
    pub const ALL: [Service; 5] = [
        Service::Snapshots,
        Service::Images,
        Service::Network,
        Service::Tasks,
        Service::Cri,
    ];

    /// Short name: directory name under the root, socket stem, binary suffix.
    pub fn name(self) -> &'static str {
        match self {
            Service::Images => "images",
            Service::Snapshots => "snapshots",
            Service::Tasks => "tasks",
            Service::Network => "network",
            Service::Cri => "cri",
        }
    }

    /// The socket of this service under a state directory.
    pub fn socket(self, state: &Path) -> PathBuf {
        state.join(format!("{}.sock", self.name()))
    }

    /// The binary that hosts this service alone.
    pub fn binary(self) -> String {
        format!("berth-{}", self.name())
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Service::ALL
            .into_iter()
            .find(|svc| svc.name() == s)
            .ok_or_else(|| {
                format!("unknown service {s:?}: expected images, snapshots, tasks, network or cri")
            })
    }
}

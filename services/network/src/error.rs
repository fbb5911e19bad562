//! The network service's one error type, its classification, and its gRPC status.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::model::Protocol;

/// How an [`Error`] is classified (and which gRPC code it becomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The named object does not exist.
    NotFound,
    /// The object already exists.
    AlreadyExists,
    /// The request itself is malformed.
    InvalidArgument,
    /// The request is valid but the current state forbids it.
    FailedPrecondition,
    /// Nothing free is left (addresses, subnets, ports).
    ResourceExhausted,
    /// A dependency of the service (a CNI plugin, the kernel) is not usable.
    Unavailable,
    /// A bug or an unexpected system failure.
    Internal,
}

/// Everything that can go wrong in the network service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No network has this name in the namespace.
    #[error("network {name:?} not found")]
    NetworkNotFound {
        /// The name asked for.
        name: String,
    },
    /// A network with this name exists.
    #[error("network {name:?} already exists")]
    NetworkExists {
        /// The name asked for.
        name: String,
    },
    /// A request field is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field (or flag) at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A subnet overlaps another network or a host route.
    #[error("subnet {subnet} overlaps {with}")]
    SubnetOverlap {
        /// The subnet asked for.
        subnet: Ipv4Net,
        /// What it overlaps.
        with: String,
    },
    /// Every subnet of the configured pools is taken.
    #[error("no free subnet left in the address pools (config key network.pools)")]
    PoolsExhausted,
    /// Every address of the network's range is allocated.
    #[error("network {network:?} is full: no free address left in {range}")]
    NetworkFull {
        /// Network name.
        network: String,
        /// The range addresses are allocated from.
        range: Ipv4Net,
    },
    /// A static address is already allocated.
    #[error("address {ip} is already in use on network {network:?} by {owner}")]
    AddressInUse {
        /// The address.
        ip: Ipv4Addr,
        /// Network name.
        network: String,
        /// Who holds it.
        owner: String,
    },
    /// The network has attachments.
    #[error("network {name:?} is in use by container(s) {containers}: disconnect them first")]
    NetworkInUse {
        /// Network name.
        name: String,
        /// The attached containers.
        containers: String,
    },
    /// The predefined network cannot be removed.
    #[error("network {name:?} is predefined and cannot be removed")]
    Predefined {
        /// Network name.
        name: String,
    },
    /// The container is already attached to the network.
    #[error("container {container:?} is already attached to network {network:?}")]
    AlreadyAttached {
        /// Container id.
        container: String,
        /// Network name.
        network: String,
    },
    /// A host port cannot be published.
    #[error("host port {ip}:{port}/{protocol} is already taken by {holder}")]
    PortInUse {
        /// Host address ("0.0.0.0" for every address).
        ip: Ipv4Addr,
        /// Host port.
        port: u16,
        /// Protocol.
        protocol: Protocol,
        /// Who holds it (a berth container or a process).
        holder: String,
    },
    /// No pinned netns exists for the container and none was given.
    #[error("no network namespace for {id:?}: create one with CreateNetns or pass netns_path")]
    NetnsNotFound {
        /// Sandbox or container id.
        id: String,
    },
    /// A netns is still attached to networks.
    #[error("network namespace of {id:?} is still attached to network(s) {networks}")]
    NetnsInUse {
        /// Sandbox or container id.
        id: String,
        /// Networks it is attached to.
        networks: String,
    },
    /// A path given as a netns is not one.
    #[error("{} is not a network namespace: {reason}", path.display())]
    NotANetns {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A netlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
    /// Applying the nftables ruleset failed.
    #[error("nftables table {table}: {source}")]
    Firewall {
        /// Table name.
        table: String,
        /// The error of `nft -j`.
        source: nftables::helper::NftablesError,
    },
    /// A system call or file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path (or interface) concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("database: {0}")]
    Database(#[from] redb::Error),
    /// A stored record could not be decoded.
    #[error("database record {key}: {source}")]
    Corrupt {
        /// Key of the record.
        key: String,
        /// The decoding error.
        source: serde_json::Error,
    },
    /// A CNI plugin failed or returned something unusable.
    #[error("cni plugin {plugin} ({command}): {message}")]
    Cni {
        /// Plugin type.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// The plugin's error (its CNI error message, or what was wrong with its output).
        message: String,
    },
    /// A CNI plugin binary was not found.
    #[error("cni plugin {plugin:?} not found in {dirs}")]
    CniPluginNotFound {
        /// Plugin type.
        plugin: String,
        /// The directories searched.
        dirs: String,
    },
}

impl Error {
    /// How this error is classified.
    pub fn kind(&self) -> Kind {
        match self {
            Error::NetworkNotFound { .. } | Error::NetnsNotFound { .. } => Kind::NotFound,
            Error::NetworkExists { .. } | Error::AlreadyAttached { .. } => Kind::AlreadyExists,
            Error::Invalid { .. } | Error::NotANetns { .. } => Kind::InvalidArgument,
            Error::SubnetOverlap { .. }
            | Error::AddressInUse { .. }
            | Error::NetworkInUse { .. }
            | Error::Predefined { .. }
            | Error::PortInUse { .. }
            | Error::NetnsInUse { .. } => Kind::FailedPrecondition,
            Error::PoolsExhausted | Error::NetworkFull { .. } => Kind::ResourceExhausted,
            Error::Cni { .. } | Error::CniPluginNotFound { .. } => Kind::Unavailable,
            Error::Netlink { .. }
            | Error::Firewall { .. }
            | Error::Io { .. }
            | Error::Database(_)
            | Error::Corrupt { .. } => Kind::Internal,
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Netlink`].
    pub fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Error {
        Error::Netlink {
            op: op.into(),
            source,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        let message = e.to_string();
        match e.kind() {
            Kind::NotFound => tonic::Status::not_found(message),
            Kind::AlreadyExists => tonic::Status::already_exists(message),
            Kind::InvalidArgument => tonic::Status::invalid_argument(message),
            Kind::FailedPrecondition => tonic::Status::failed_precondition(message),
            Kind::ResourceExhausted => tonic::Status::resource_exhausted(message),
            Kind::Unavailable => tonic::Status::unavailable(message),
            Kind::Internal => tonic::Status::internal(message),
        }
    }
}

/// The network service's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<berth_api::filters::FilterError> for Error {
    fn from(e: berth_api::filters::FilterError) -> Error {
        Error::invalid("filters", e.to_string())
    }
}

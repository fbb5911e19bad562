//! The images service's errors: one enum for the crate, classified by [`Error::kind`].

use std::path::PathBuf;

/// How an [`Error`] is classified; the gRPC adapter maps each kind to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The named object does not exist.
    NotFound,
    /// An object of that name or digest already exists.
    AlreadyExists,
    /// The request is malformed whatever the state.
    InvalidArgument,
    /// The request is well formed but the state does not allow it.
    FailedPrecondition,
    /// The object is busy or a remote end is unreachable; retrying later may work.
    Unavailable,
    /// A registry did not accept the credentials (or asked for some).
    Unauthenticated,
    /// A registry refused access with these credentials.
    PermissionDenied,
    /// A bug or an environment failure (disk, database).
    Internal,
}

/// What went wrong in the content store, the image store, the lease manager or GC.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A digest string is not `<algorithm>:<hex>` with a supported algorithm.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The rejected string.
        digest: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The namespace holds no blob with that digest.
    #[error("content {digest} not found")]
    ContentNotFound {
        /// Digest asked for.
        digest: String,
    },
    /// The namespace already holds a blob with that digest.
    #[error("content {digest} already exists")]
    ContentExists {
        /// Digest of the blob.
        digest: String,
    },
    /// No ingest has that ref in the namespace.
    #[error("ingest {reference:?} not found")]
    IngestNotFound {
        /// The ingest's ref.
        reference: String,
    },
    /// Another stream is writing the same ingest.
    #[error("ingest {reference:?} is being written by another client")]
    IngestLocked {
        /// The ingest's ref.
        reference: String,
    },
    /// A write did not start where the ingest's data ends.
    #[error("ingest {reference:?}: write at offset {offset}, but {written} bytes are written")]
    OffsetMismatch {
        /// The ingest's ref.
        reference: String,
        /// Offset of the write.
        offset: u64,
        /// Bytes already written.
        written: u64,
    },
    /// The data written exceeds or falls short of the announced total.
    #[error("ingest {reference:?}: size {size} does not match the expected {expected}")]
    SizeMismatch {
        /// The ingest's ref.
        reference: String,
        /// Bytes written (or that would be written).
        size: u64,
        /// Expected total.
        expected: u64,
    },
    /// The data's digest is not the expected one.
    #[error("ingest {reference:?}: digest {digest} does not match the expected {expected}")]
    DigestMismatch {
        /// The ingest's ref.
        reference: String,
        /// Digest of the data.
        digest: String,
        /// Digest the client announced.
        expected: String,
    },
    /// A request field is missing or malformed.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A list filter does not parse.
    #[error("invalid filter {filter:?}: {reason}")]
    InvalidFilter {
        /// The filter string.
        filter: String,
        /// Why it does not parse.
        reason: String,
    },
    /// An image reference does not parse.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference string.
        reference: String,
        /// Why it does not parse (Docker's wording).
        reason: String,
    },
    /// The namespace has no image of that name.
    #[error("image {name:?} not found")]
    ImageNotFound {
        /// Normalised name.
        name: String,
    },
    /// The namespace already has an image of that name.
    #[error("image {name:?} already exists")]
    ImageExists {
        /// Normalised name.
        name: String,
    },
    /// The namespace has no lease with that id.
    #[error("lease {id:?} not found")]
    LeaseNotFound {
        /// Lease id.
        id: String,
    },
    /// The namespace already has a lease with that id.
    #[error("lease {id:?} already exists")]
    LeaseExists {
        /// Lease id.
        id: String,
    },
    /// A registry request failed.
    #[error("{reference}: {source}")]
    Registry {
        /// The reference (or blob) asked for.
        reference: String,
        /// What the registry client reported.
        source: Box<oci_client::errors::OciDistributionError>,
    },
    /// An index lists no manifest for the platforms asked for.
    #[error("{reference}: no manifest for platform {platforms}")]
    NoMatchingPlatform {
        /// The reference pulled.
        reference: String,
        /// The platforms asked for, comma-separated.
        platforms: String,
    },
    /// A manifest or index from outside is not acceptable: too large, unknown media type, or
    /// content that contradicts its media type.
    #[error("manifest {digest}: {reason}")]
    BadManifest {
        /// Digest of the manifest.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A credentials file cannot be used.
    #[error("credentials file {}: {reason}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Plain HTTP was asked for a registry that is neither loopback nor marked insecure.
    #[error(
        "registry {registry} is not on loopback and not listed in [images] insecure_registries: plain HTTP refused"
    )]
    InsecureRegistry {
        /// The registry.
        registry: String,
    },
    /// An index cannot be pushed whole and more than one of its manifests was chosen.
    #[error(
        "index {digest} lists {listed} manifests but only {chosen} are chosen or present locally: push one platform (--platform) or pull them all first"
    )]
    IncompleteIndex {
        /// Digest of the index.
        digest: String,
        /// Manifests it lists.
        listed: usize,
        /// Manifests chosen and present.
        chosen: usize,
    },
    /// No credentials are stored for a registry.
    #[error("not logged in to {registry}")]
    NotLoggedIn {
        /// The registry.
        registry: String,
    },
    /// A call to the snapshots service failed.
    #[error("snapshots service: {op} {key:?}: {}", status.message())]
    Snapshots {
        /// The call (`prepare`, `commit`...).
        op: &'static str,
        /// The snapshot key or name concerned.
        key: String,
        /// What the service answered.
        status: Box<tonic::Status>,
    },
    /// The snapshots service cannot be reached.
    #[error("snapshots service unreachable: {reason}")]
    SnapshotsUnreachable {
        /// Why.
        reason: String,
    },
    /// A layer could not be applied onto its snapshot.
    #[error("layer {layer}: {source}")]
    Layer {
        /// Digest of the layer blob.
        layer: String,
        /// What the layer library reported.
        source: berth_snapshots::Error,
    },
    /// A layer's uncompressed content does not hash to the diff id its image config lists.
    #[error(
        "layer {layer}: uncompressed content hashes to {actual}, the image config says {expected}"
    )]
    DiffIdMismatch {
        /// Digest of the layer blob.
        layer: String,
        /// The config's diff id.
        expected: String,
        /// The digest of what the layer holds.
        actual: String,
    },
    /// A layer expands beyond the configured bound (`images.max_layer_size`).
    #[error(
        "layer {layer}: uncompressed size exceeds the limit of {limit} bytes (images.max_layer_size)"
    )]
    LayerTooLarge {
        /// Digest of the layer blob.
        layer: String,
        /// The limit.
        limit: u64,
    },
    /// A blob's media type is not one berth can handle there.
    #[error("{digest}: unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// Digest of the blob.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// An image archive (Import) is malformed: a bad entry name, a blob that does not match
    /// its digest or size, a truncated or missing entry, a descriptor pointing nowhere.
    #[error("archive entry {entry:?}: {reason}")]
    BadArchive {
        /// The archive entry (path in the tar) concerned.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A task on the blocking pool panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not decode (a bug or a corrupted database).
    #[error("corrupt metadata record {key:?}: {source}")]
    Corrupt {
        /// Key of the record.
        key: String,
        /// The decoding error.
        source: serde_json::Error,
    },
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> Kind {
        match self {
            Error::ContentNotFound { .. }
            | Error::IngestNotFound { .. }
            | Error::ImageNotFound { .. }
            | Error::LeaseNotFound { .. } => Kind::NotFound,
            Error::ContentExists { .. } | Error::ImageExists { .. } | Error::LeaseExists { .. } => {
                Kind::AlreadyExists
            }
            Error::InvalidDigest { .. }
            | Error::InvalidField { .. }
            | Error::InvalidFilter { .. }
            | Error::InvalidReference { .. }
            | Error::BadArchive { .. } => Kind::InvalidArgument,
            Error::OffsetMismatch { .. }
            | Error::SizeMismatch { .. }
            | Error::DigestMismatch { .. } => Kind::FailedPrecondition,
            Error::IngestLocked { .. } => Kind::Unavailable,
            Error::Registry { source, .. } => registry_kind(source),
            Error::NoMatchingPlatform { .. } | Error::NotLoggedIn { .. } => Kind::NotFound,
            Error::BadManifest { .. } => Kind::FailedPrecondition,
            Error::Credentials { .. }
            | Error::InsecureRegistry { .. }
            | Error::IncompleteIndex { .. } => Kind::FailedPrecondition,
            Error::Snapshots { status, .. } => status_kind(status.code()),
            Error::SnapshotsUnreachable { .. } => Kind::Unavailable,
            Error::Layer { source, .. } => match source.kind() {
                berth_snapshots::ErrorKind::Unavailable => Kind::Unavailable,
                berth_snapshots::ErrorKind::Internal => Kind::Internal,
                _ => Kind::FailedPrecondition,
            },
            Error::DiffIdMismatch { .. }
            | Error::LayerTooLarge { .. }
            | Error::UnsupportedMediaType { .. } => Kind::FailedPrecondition,
            Error::Io { .. } | Error::Task(_) | Error::Db(_) | Error::Corrupt { .. } => {
                Kind::Internal
            }
        }
    }

    /// An [`Error::Io`] about `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// An [`Error::InvalidField`].
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidField {
            field,
            reason: reason.into(),
        }
    }
}

/// How a status from another berth service is classified.
fn status_kind(code: tonic::Code) -> Kind {
    use tonic::Code as C;
    match code {
        C::NotFound => Kind::NotFound,
        C::AlreadyExists => Kind::AlreadyExists,
        C::InvalidArgument => Kind::InvalidArgument,
        C::FailedPrecondition => Kind::FailedPrecondition,
        C::Unavailable | C::DeadlineExceeded | C::ResourceExhausted => Kind::Unavailable,
        C::Unauthenticated => Kind::Unauthenticated,
        C::PermissionDenied => Kind::PermissionDenied,
        _ => Kind::Internal,
    }
}

/// How a registry failure is classified.
fn registry_kind(e: &oci_client::errors::OciDistributionError) -> Kind {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    match e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => Kind::Unauthenticated,
        E::ImageManifestNotFoundError(_) => Kind::NotFound,
        E::RegistryError { envelope, .. } => match envelope.errors.first().map(|e| &e.code) {
            Some(C::BlobUnknown | C::ManifestUnknown | C::NameUnknown | C::NotFound) => {
                Kind::NotFound
            }
            Some(C::Unauthorized) => Kind::Unauthenticated,
            Some(C::Denied) => Kind::PermissionDenied,
            Some(C::Toomanyrequests) => Kind::Unavailable,
            _ => Kind::FailedPrecondition,
        },
        E::ServerError { code, .. } => match code {
            401 => Kind::Unauthenticated,
            403 => Kind::PermissionDenied,
            404 => Kind::NotFound,
            _ => Kind::Unavailable,
        },
        E::RequestError(e) => match e.status().map(|s| s.as_u16()) {
            Some(401) => Kind::Unauthenticated,
            Some(403) => Kind::PermissionDenied,
            Some(404) => Kind::NotFound,
            _ => Kind::Unavailable,
        },
        // The blob stream checks the digest at its end.
        E::IoError(e)
            if e.get_ref()
                .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>()) =>
        {
            Kind::FailedPrecondition
        }
        E::IoError(_) => Kind::Unavailable,
        E::DigestError(_)
        | E::SpecViolationError(_)
        | E::ManifestParsingError(_)
        | E::UnsupportedMediaTypeError(_)
        | E::UnsupportedSchemaVersionError(_)
        | E::RegistryNoDigestError => Kind::FailedPrecondition,
        _ => Kind::Internal,
    }
}

/// redb reports each step with its own error type; all of them are database failures.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Result of the images service's domain operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<berth_api::filters::FilterError> for Error {
    fn from(e: berth_api::filters::FilterError) -> Error {
        Error::InvalidFilter {
            filter: e.filter,
            reason: e.reason,
        }
    }
}

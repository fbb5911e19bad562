//! The content store: immutable blobs addressed by digest, written through resumable ingests.
//!
//! Vocabulary:
//! - A **blob** is a byte string stored under its [`Digest`]. Blobs are shared on disk by all
//!   namespaces but **visible** only in the namespaces that committed them; each namespace has
//!   its own [`Info`] (creation time, labels) for a blob. Deleting a blob removes it from one
//!   namespace; its data goes once no namespace holds it.
//! - An **ingest** is an in-progress write, named by a client-chosen **ref** that is stable
//!   across retries. Its data survives a crash of the service (or of the client): a writer
//!   reopened on the same ref resumes at the ingest's current **offset** (the bytes on disk).
//!   Only one writer may hold a ref at a time.
//! - **Committing** an ingest checks its size against the expected **total** and its digest
//!   against the **expected** digest (when given), then moves the data into place atomically.
//!   A mismatch commits nothing and leaves the ingest as it was. Committing content the
//!   namespace already holds answers AlreadyExists (the data must still be written in full: a
//!   namespace can only gain a blob by proving it has the bytes).
//! - Writing under a **lease** adds the ingest, then the committed blob, to the lease.

mod local;

pub(crate) use local::{Record, size_in};

use std::collections::BTreeMap;
use std::fs::File;
use std::time::SystemTime;

pub use local::{LocalContent, LocalWriter};

use crate::digest::Digest;
use crate::error::Result;
use berth_api::filters::{self, Fields, Filters};

/// Largest chunk a single write or read moves (gRPC messages are at most 4 MiB).
pub const MAX_CHUNK: usize = 1 << 20;

/// Information about a blob in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was committed to the namespace.
    pub created_at: SystemTime,
    /// When its labels last changed.
    pub updated_at: SystemTime,
    /// User labels.
    pub labels: BTreeMap<String, String>,
}

/// State of an ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The client-chosen ref.
    pub reference: String,
    /// Bytes written so far: where the next write must start.
    pub offset: u64,
    /// The announced total size, if any.
    pub total: Option<u64>,
    /// The announced digest, if any.
    pub expected: Option<Digest>,
    /// When the ingest was created.
    pub started_at: SystemTime,
    /// When data was last written.
    pub updated_at: SystemTime,
}

/// What a writer is opened for.
#[derive(Debug, Clone, Default)]
pub struct WriteRequest {
    /// The ingest's ref.
    pub reference: String,
    /// Expected total size, if known.
    pub total: Option<u64>,
    /// Expected digest, if known.
    pub expected: Option<Digest>,
    /// Lease to add the ingest and the blob to.
    pub lease: Option<String>,
}

/// How an update changes a blob's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelUpdate {
    /// Replace all labels.
    All(BTreeMap<String, String>),
    /// Set these keys (Some) or remove them (None); others are kept.
    Keys(BTreeMap<String, Option<String>>),
}

impl LabelUpdate {
    /// The update described by field-mask `paths` (`labels`, `labels.<key>`; empty = `labels`).
    pub fn from_paths(labels: BTreeMap<String, String>, paths: &[String]) -> Result<LabelUpdate> {
        if paths.is_empty() || paths.iter().any(|p| p == "labels") {
            return Ok(LabelUpdate::All(labels));
        }
        let mut keys = BTreeMap::new();
        for path in paths {
            let key = path.strip_prefix("labels.").ok_or_else(|| {
                crate::error::Error::invalid(
                    "update_mask",
                    format!("cannot update {path:?}: only labels and labels.<key> are mutable"),
                )
            })?;
            keys.insert(key.to_owned(), labels.get(key).cloned());
        }
        Ok(LabelUpdate::Keys(keys))
    }

    /// Applies the update to `labels`.
    pub fn apply(self, labels: &mut BTreeMap<String, String>) {
        match self {
            LabelUpdate::All(all) => *labels = all,
            LabelUpdate::Keys(keys) => {
                for (k, v) in keys {
                    match v {
                        Some(v) => labels.insert(k, v),
                        None => labels.remove(&k),
                    };
                }
            }
        }
    }
}

/// An open blob: read it with `std::os::unix::fs::FileExt::read_at`.
pub struct Blob {
    /// The blob's file, opened read-only.
    pub file: File,
    /// Its size in bytes.
    pub size: u64,
}

/// Stores blobs by digest, per namespace, and the ingests that write them.
pub trait ContentStore: Send + Sync + 'static {
    /// The writer of one ingest.
    type Writer: Writer;

    /// Information about a blob. NotFound if the namespace does not hold it.
    fn info(&self, ns: &str, digest: &Digest) -> Result<Info>;
    /// Changes a blob's labels.
    fn update(&self, ns: &str, digest: &Digest, labels: LabelUpdate) -> Result<Info>;
    /// The blobs matching `filters` (fields `digest`, `size`, `labels.<key>`), by digest.
    fn list(&self, ns: &str, filters: &Filters) -> Result<Vec<Info>>;
    /// Removes a blob from the namespace (its data goes once no namespace holds it).
    fn delete(&self, ns: &str, digest: &Digest) -> Result<()>;
    /// Opens a blob for reading.
    fn open(&self, ns: &str, digest: &Digest) -> Result<Blob>;
    /// The state of an ingest. NotFound if no ingest has that ref.
    fn status(&self, ns: &str, reference: &str) -> Result<Status>;
    /// The ingests matching `filters` (fields `ref`, `expected`), by ref.
    fn list_statuses(&self, ns: &str, filters: &Filters) -> Result<Vec<Status>>;
    /// Opens the writer of an ingest, creating the ingest or resuming it. Unavailable if another
    /// writer holds the ref; AlreadyExists if the expected digest is already in the namespace.
    fn writer(&self, ns: &str, request: WriteRequest) -> Result<Self::Writer>;
    /// Cancels an ingest and removes its data. NotFound if there is none.
    fn abort(&self, ns: &str, reference: &str) -> Result<()>;
}

/// Writes one ingest; dropping it ends the write (the data stays, to be resumed).
pub trait Writer: Send + 'static {
    /// The ingest's current state.
    fn status(&self) -> Status;
    /// Digest of the data written so far.
    fn digest(&self) -> Digest;
    /// Announces (or corrects) the expected total and digest.
    fn expect(&mut self, total: Option<u64>, expected: Option<Digest>) -> Result<()>;
    /// Appends `data`, which must start at the current offset; offset 0 restarts the ingest.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// Verifies and commits the blob with `labels`; the ingest is gone afterwards.
    fn commit(&mut self, labels: BTreeMap<String, String>) -> Result<Info>;
}

impl Fields for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "digest" => Some(self.digest.to_string()),
            [f] if f == "size" => Some(self.size.to_string()),
            [f, rest @ ..] if f == "labels" => filters::label(&self.labels, rest).cloned(),
            _ => None,
        }
    }
}

impl Fields for Status {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "ref" => Some(self.reference.clone()),
            [f] if f == "expected" => self.expected.as_ref().map(Digest::to_string),
            _ => None,
        }
    }
}

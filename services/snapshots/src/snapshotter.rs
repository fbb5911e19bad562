//! The snapshotter domain: what a snapshot is, and what every snapshotter does with one.
//!
//! # Vocabulary
//!
//! - A **snapshot** is a filesystem tree built as a stack of layers. Each snapshot owns exactly
//!   one layer (its own directory); the layers below it belong to its ancestors.
//! - Snapshots live in a **namespace** (the gRPC `berth-namespace` of the call); keys, names and
//!   parents are looked up only inside it. Two namespaces may use the same key independently.
//! - A **key** names an active snapshot or a view; a **name** names a committed snapshot. Keys
//!   and names share one space per namespace. Both are 1–512 bytes without control characters,
//!   leading or trailing blanks, or path tricks (`.`/`..` components, a leading `/`, `//`).
//! - The **parent** of a snapshot is a committed snapshot (or none: an empty tree). A parent
//!   cannot be removed while it has children.
//!
//! # Kinds and lifecycle
//!
//! ```text
//!            prepare(key, parent)             commit(name, key)
//!   (none) ───────────────────────▶ Active ─────────────────────▶ Committed ──┐
//!      │       view(key, parent)                                    ▲  parent │
//!      └──────────────────────────▶ View                            └─────────┘
//!
//!   remove(key) takes any snapshot without children back to (none).
//! ```
//!
//! - [`Kind::Active`]: writable; its mounts show the parent's tree plus its own changes. Writes
//!   never reach the parent. Commit turns it into a committed snapshot under a new name (the key
//!   goes away, the layer stays where it is).
//! - [`Kind::View`]: a read-only view of the parent's tree; cannot be committed.
//! - [`Kind::Committed`]: immutable; has no mounts of its own (make a view of it); may be the
//!   parent of active snapshots and views.
//!
//! Every operation is atomic and durable when it returns: after a crash at any point, a
//! snapshot is either in its state before the operation or in its state after it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::mount::Mount;

/// Snapshot labels: free-form `key=value` metadata.
pub type Labels = BTreeMap<String, String>;

/// Label that asks for an overlay `volatile` mount on an active snapshot: writes are not
/// synced, and after a host crash the snapshot refuses to mount again. Only for throw-away
/// containers. Value `true`.
pub const LABEL_VOLATILE: &str = "berth.io/snapshot/volatile";

/// Longest key or name, in bytes.
pub const MAX_KEY_LEN: usize = 512;
/// Longest label, key plus value, in bytes.
pub const MAX_LABEL_LEN: usize = 4096;

/// The kind of a snapshot; see the module documentation for the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Writable, made by Prepare.
    Active,
    /// Read-only, made by View.
    View,
    /// Immutable, made by Commit; may be a parent.
    Committed,
}

impl Kind {
    /// Whether Commit accepts a snapshot of this kind.
    pub fn can_commit(self) -> bool {
        self == Kind::Active
    }

    /// Whether a snapshot of this kind may be the parent of new snapshots.
    pub fn can_be_parent(self) -> bool {
        self == Kind::Committed
    }

    /// Whether a snapshot of this kind has mounts.
    pub fn has_mounts(self) -> bool {
        self != Kind::Committed
    }

    /// The lowercase name used in filters and output (`active`, `view`, `committed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Key (active, view) or name (committed).
    pub name: String,
    /// The committed parent, if any.
    pub parent: Option<String>,
    /// The kind.
    pub kind: Kind,
    /// When it was created (for committed snapshots: when committed).
    pub created: SystemTime,
    /// When its labels last changed.
    pub updated: SystemTime,
    /// Its labels.
    pub labels: Labels,
}

impl berth_api::filters::Fields for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.name.clone()),
            [f] if f == "parent" => self.parent.clone(),
            [f] if f == "kind" => Some(self.kind.as_str().to_owned()),
            [f, key] if f == "labels" => self.labels.get(key).cloned(),
            _ => None,
        }
    }
}

/// Disk usage of a snapshot's own layer, counted like `du`: each inode once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of disk allocated (`st_blocks * 512`).
    pub size: u64,
    /// Inodes, the layer's root directory included.
    pub inodes: u64,
}

/// What a snapshotter does; implemented by [`crate::OverlaySnapshotter`] and
/// [`crate::CopySnapshotter`].
///
/// Methods block (they do filesystem work); call them from a blocking context.
pub trait Snapshotter: Send + Sync {
    /// The snapshotter's name (`overlay`, `copy`), as requests name it.
    fn name(&self) -> &'static str;

    /// Information about the snapshot `key`.
    fn stat(&self, namespace: &str, key: &str) -> Result<Info>;

    /// Changes labels of `key`: `fields` lists `labels` (replace all with `labels`) or
    /// `labels.<k>` (set `k` from `labels`, or remove it when absent); empty = replace all.
    fn update(&self, namespace: &str, key: &str, labels: Labels, fields: &[String])
    -> Result<Info>;

    /// Disk usage of the snapshot's own layer (cached for committed snapshots).
    fn usage(&self, namespace: &str, key: &str) -> Result<Usage>;

    /// Mounts that assemble an active snapshot or a view.
    fn mounts(&self, namespace: &str, key: &str) -> Result<Vec<Mount>>;

    /// Creates the active snapshot `key` on `parent` (None: empty) and returns its mounts.
    fn prepare(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>>;

    /// Creates the read-only view `key` of `parent` (None: empty) and returns its mounts.
    fn view(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>>;

    /// Commits the active snapshot `key` as `name` with `labels`; `key` goes away.
    fn commit(&self, namespace: &str, name: &str, key: &str, labels: Labels) -> Result<()>;

    /// Removes `key` and its layer. FailedPrecondition if it has children.
    fn remove(&self, namespace: &str, key: &str) -> Result<()>;

    /// Snapshots of `namespace` matching `filters` (containerd's syntax, see
    /// [`berth_api::filters`]; fields: `name`, `parent`, `kind`, `labels.<key>`), by name.
    fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Info>>;

    /// Removes on-disk data no snapshot refers to (left by crashes); returns how many
    /// directories went.
    fn cleanup(&self) -> Result<u64>;
}

/// Checks a key or name (see the module documentation).
pub fn validate_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        Some("it is empty")
    } else if key.len() > MAX_KEY_LEN {
        Some("it is longer than 512 bytes")
    } else if key.chars().any(char::is_control) {
        Some("it contains control characters")
    } else if key.trim() != key {
        Some("it starts or ends with blanks")
    } else if key.starts_with('/') {
        Some("it starts with '/'")
    } else if key
        .split('/')
        .enumerate()
        .any(|(i, c)| c == "." || c == ".." || (c.is_empty() && i > 0))
    {
        Some("it has an empty, '.' or '..' path component")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidKey {
            key: key.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks labels: non-empty keys without control characters, key plus value at most 4096 bytes.
pub fn validate_labels(labels: &Labels) -> Result<()> {
    for (key, value) in labels {
        let reason = if key.is_empty() {
            Some("the key is empty")
        } else if key.chars().any(char::is_control) {
            Some("the key contains control characters")
        } else if key.len() + value.len() > MAX_LABEL_LEN {
            Some("key and value are longer than 4096 bytes")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Error::InvalidLabel {
                key: key.clone(),
                reason,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in [
            "a",
            "sha256:0123abcd",
            "default/1/abc",
            "extract-123 sha256:x",
            "a.b",
            "..a",
            "ü",
        ] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        let long = "k".repeat(513);
        for bad in [
            "", " a", "a ", "/a", "a//b", "a/", "..", ".", "a/../b", "a/./b", "../x", "a\nb",
            "a\0b", &long,
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels() {
        let ok: Labels = [("a.b/c".to_owned(), "v".to_owned())].into();
        assert!(validate_labels(&ok).is_ok());
        for (k, v) in [("", "v"), ("a\n", "v"), ("k", &"v".repeat(4096) as &str)] {
            let bad: Labels = [(k.to_owned(), v.to_owned())].into();
            assert!(validate_labels(&bad).is_err(), "{k:?}");
        }
    }

    #[test]
    fn filter_fields() {
        use berth_api::filters::Filters;
        let info = Info {
            name: "a".into(),
            parent: Some("p".into()),
            kind: Kind::View,
            created: std::time::UNIX_EPOCH,
            updated: std::time::UNIX_EPOCH,
            labels: [("berth.io/x".to_owned(), "1".to_owned())].into(),
        };
        let matches = |f: &str| Filters::parse(&[f.to_owned()]).unwrap().matches(&info);
        assert!(matches("kind==view,parent==p,name==a"));
        assert!(matches(r#"labels."berth.io/x"==1"#));
        assert!(!matches("kind==committed"));
        assert!(!matches("labels.missing"));
    }

    #[test]
    fn kinds() {
        assert!(Kind::Active.can_commit() && !Kind::View.can_commit());
        assert!(Kind::Committed.can_be_parent() && !Kind::Active.can_be_parent());
        assert!(!Kind::Committed.has_mounts() && Kind::View.has_mounts());
    }
}

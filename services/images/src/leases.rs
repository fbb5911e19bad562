//! Leases: client-held references that keep resources from garbage collection.
//!
//! A **lease** is an id in a namespace, with labels and an optional expiry. It holds
//! **resources**: blobs (`content`, by digest), in-progress writes (`ingests`, by ref) and
//! snapshots (`snapshots/<snapshotter>`, by key). While a lease holds a resource, the garbage
//! collector keeps it even if no image reaches it. A client works under a lease by naming it in
//! its requests (gRPC metadata `berth-lease`): every blob and ingest those requests create is
//! added to the lease. Deleting the lease (or its expiry) releases everything it holds at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::db::{self, Db, LEASE_RESOURCES, LEASES};
use crate::digest::Digest;
use crate::error::{Error, Result};
use berth_api::filters::{self, Fields, Filters};

/// A lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Unique in its namespace.
    pub id: String,
    /// When it was created.
    pub created_at: SystemTime,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// When the garbage collector deletes it; None = never.
    pub expires_at: Option<SystemTime>,
}

/// What kind of resource a lease holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResourceKind {
    /// A blob of the content store, by digest.
    Content,
    /// An in-progress write of the content store, by ref.
    Ingest,
    /// A snapshot of the named snapshotter, by key.
    Snapshot(String),
}

impl ResourceKind {
    /// The wire name: `content`, `ingests` or `snapshots/<snapshotter>`.
    pub fn name(&self) -> String {
        match self {
            ResourceKind::Content => "content".into(),
            ResourceKind::Ingest => "ingests".into(),
            ResourceKind::Snapshot(s) => format!("snapshots/{s}"),
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Result<ResourceKind> {
        match name {
            "content" => Ok(ResourceKind::Content),
            "ingests" => Ok(ResourceKind::Ingest),
            _ => match name.strip_prefix("snapshots/") {
                Some(s) if !s.is_empty() && !s.contains(['/', '\0']) => {
                    Ok(ResourceKind::Snapshot(s.to_owned()))
                }
                _ => Err(Error::invalid(
                    "resource type",
                    format!(
                        "{name:?} is not \"content\", \"ingests\" or \"snapshots/<snapshotter>\""
                    ),
                )),
            },
        }
    }
}

/// A resource held by a lease.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Resource {
    /// What kind of resource.
    pub kind: ResourceKind,
    /// Its id: a digest, an ingest ref or a snapshot key.
    pub id: String,
}

impl Resource {
    /// A blob.
    pub fn content(digest: &Digest) -> Resource {
        Resource {
            kind: ResourceKind::Content,
            id: digest.to_string(),
        }
    }

    /// An ingest.
    pub fn ingest(reference: &str) -> Resource {
        Resource {
            kind: ResourceKind::Ingest,
            id: reference.to_owned(),
        }
    }

    fn check(&self) -> Result<()> {
        match self.kind {
            ResourceKind::Content => self.id.parse::<Digest>().map(drop),
            _ => db::check_id("resource id", &self.id),
        }
    }
}

/// Creates, lists and deletes leases and the resources they hold, in namespaces.
pub trait LeaseManager: Send + Sync + 'static {
    /// Creates a lease (an id is generated when `id` is None). AlreadyExists if the id is taken.
    fn create(
        &self,
        ns: &str,
        id: Option<&str>,
        labels: BTreeMap<String, String>,
        expires_at: Option<SystemTime>,
    ) -> Result<Lease>;
    /// Deletes a lease and releases its resources. NotFound if there is none.
    fn delete(&self, ns: &str, id: &str) -> Result<()>;
    /// The leases matching `filters` (fields `id`, `labels.<key>`), sorted by id.
    fn list(&self, ns: &str, filters: &Filters) -> Result<Vec<Lease>>;
    /// Adds a resource to a lease (no-op if it holds it already).
    fn add_resource(&self, ns: &str, id: &str, resource: &Resource) -> Result<()>;
    /// Removes a resource from a lease (no-op if it does not hold it).
    fn delete_resource(&self, ns: &str, id: &str, resource: &Resource) -> Result<()>;
    /// The resources a lease holds.
    fn resources(&self, ns: &str, id: &str) -> Result<Vec<Resource>>;
}

/// Leases kept in the service's metadata database.
pub struct DbLeases {
    db: Arc<Db>,
}

impl DbLeases {
    pub(crate) fn new(db: Arc<Db>) -> DbLeases {
        DbLeases { db }
    }
}

impl Fields for Lease {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "id" => Some(self.id.clone()),
            [f, rest @ ..] if f == "labels" => filters::label(&self.labels, rest).cloned(),
            _ => None,
        }
    }
}

fn generated_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("lease-{nanos:x}-{n}")
}

impl LeaseManager for DbLeases {
    fn create(
        &self,
        ns: &str,
        id: Option<&str>,
        labels: BTreeMap<String, String>,
        expires_at: Option<SystemTime>,
    ) -> Result<Lease> {
        let id = id.map(str::to_owned).unwrap_or_else(generated_id);
        db::check_id("lease id", &id)?;
        let lease = Lease {
            id,
            created_at: SystemTime::now(),
            labels,
            expires_at,
        };
        self.db.write(|tx| {
            let mut leases = tx.open_table(LEASES)?;
            let key = db::key(&[ns, &lease.id]);
            if leases.get(key.as_str())?.is_some() {
                return Err(Error::LeaseExists {
                    id: lease.id.clone(),
                });
            }
            db::put(&mut leases, &key, &lease)
        })?;
        Ok(lease)
    }

    fn delete(&self, ns: &str, id: &str) -> Result<()> {
        db::check_id("lease id", id)?;
        self.db.write(|tx| remove(tx, ns, id))
    }

    fn list(&self, ns: &str, filters: &Filters) -> Result<Vec<Lease>> {
        let tx = self.db.read()?;
        let table = tx.open_table(LEASES)?;
        Ok(db::scan::<Lease>(&table, &db::key(&[ns, ""]))?
            .into_iter()
            .map(|(_, l)| l)
            .filter(|l| filters.matches(l))
            .collect())
    }

    fn add_resource(&self, ns: &str, id: &str, resource: &Resource) -> Result<()> {
        resource.check()?;
        self.db.write(|tx| hold(tx, ns, id, resource))
    }

    fn delete_resource(&self, ns: &str, id: &str, resource: &Resource) -> Result<()> {
        resource.check()?;
        self.db.write(|tx| {
            exists(tx, ns, id)?;
            release(tx, ns, id, resource)
        })
    }

    fn resources(&self, ns: &str, id: &str) -> Result<Vec<Resource>> {
        db::check_id("lease id", id)?;
        let tx = self.db.read()?;
        if db::get::<Lease>(&tx.open_table(LEASES)?, &db::key(&[ns, id]))?.is_none() {
            return Err(Error::LeaseNotFound { id: id.to_owned() });
        }
        let table = tx.open_table(LEASE_RESOURCES)?;
        let prefix = db::key(&[ns, id, ""]);
        db::keys(&table, &prefix)?
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix)?.split_once('\0'))
            .map(|(kind, rid)| {
                Ok(Resource {
                    kind: ResourceKind::parse(kind)?,
                    id: rid.to_owned(),
                })
            })
            .collect()
    }
}

fn exists(tx: &redb::WriteTransaction, ns: &str, id: &str) -> Result<()> {
    db::check_id("lease id", id)?;
    match tx.open_table(LEASES)?.get(db::key(&[ns, id]).as_str())? {
        Some(_) => Ok(()),
        None => Err(Error::LeaseNotFound { id: id.to_owned() }),
    }
}

/// Adds `resource` to lease `id` inside `tx`; NotFound if there is no such lease.
pub(crate) fn hold(
    tx: &redb::WriteTransaction,
    ns: &str,
    id: &str,
    resource: &Resource,
) -> Result<()> {
    exists(tx, ns, id)?;
    let key = db::key(&[ns, id, &resource.kind.name(), &resource.id]);
    tx.open_table(LEASE_RESOURCES)?
        .insert(key.as_str(), [].as_slice())?;
    Ok(())
}

/// Removes `resource` from lease `id` inside `tx`.
pub(crate) fn release(
    tx: &redb::WriteTransaction,
    ns: &str,
    id: &str,
    resource: &Resource,
) -> Result<()> {
    let key = db::key(&[ns, id, &resource.kind.name(), &resource.id]);
    tx.open_table(LEASE_RESOURCES)?.remove(key.as_str())?;
    Ok(())
}

/// Deletes lease `id` and its resources inside `tx`; NotFound if there is none.
pub(crate) fn remove(tx: &redb::WriteTransaction, ns: &str, id: &str) -> Result<()> {
    if tx
        .open_table(LEASES)?
        .remove(db::key(&[ns, id]).as_str())?
        .is_none()
    {
        return Err(Error::LeaseNotFound { id: id.to_owned() });
    }
    let mut resources = tx.open_table(LEASE_RESOURCES)?;
    for key in db::keys(&resources, &db::key(&[ns, id, ""]))? {
        resources.remove(key.as_str())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases() -> (tempfile::TempDir, DbLeases) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        (dir, DbLeases::new(Arc::new(db)))
    }

    #[test]
    fn lifecycle_and_namespaces() {
        let (_d, l) = leases();
        let a = l.create("ns1", Some("a"), BTreeMap::new(), None).unwrap();
        assert_eq!(a.id, "a");
        assert!(matches!(
            l.create("ns1", Some("a"), BTreeMap::new(), None),
            Err(Error::LeaseExists { .. })
        ));
        l.create("ns2", Some("a"), BTreeMap::new(), None).unwrap();
        let generated = l.create("ns1", None, BTreeMap::new(), None).unwrap();
        assert!(generated.id.starts_with("lease-"));

        let digest = Digest::sha256(b"x");
        l.add_resource("ns1", "a", &Resource::content(&digest))
            .unwrap();
        l.add_resource("ns1", "a", &Resource::ingest("up-1"))
            .unwrap();
        assert_eq!(l.resources("ns1", "a").unwrap().len(), 2);
        assert!(l.resources("ns2", "a").unwrap().is_empty());
        l.delete_resource("ns1", "a", &Resource::ingest("up-1"))
            .unwrap();
        assert_eq!(
            l.resources("ns1", "a").unwrap(),
            [Resource::content(&digest)]
        );
        let bad = Resource {
            kind: ResourceKind::Content,
            id: "nope".into(),
        };
        assert!(l.add_resource("ns1", "a", &bad).is_err());
        assert!(matches!(
            l.add_resource("ns1", "zz", &Resource::ingest("r")),
            Err(Error::LeaseNotFound { .. })
        ));

        let f = Filters::parse(&["id==a".to_string()]).unwrap();
        assert_eq!(l.list("ns1", &f).unwrap().len(), 1);
        assert_eq!(l.list("ns1", &Filters::default()).unwrap().len(), 2);
        l.delete("ns1", "a").unwrap();
        assert!(matches!(
            l.resources("ns1", "a"),
            Err(Error::LeaseNotFound { .. })
        ));
        assert!(matches!(
            l.delete("ns1", "a"),
            Err(Error::LeaseNotFound { .. })
        ));
        assert_eq!(l.list("ns2", &Filters::default()).unwrap().len(), 1);
    }
}

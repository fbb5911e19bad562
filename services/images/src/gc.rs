//! Garbage collection of the content store: mark what is reachable, remove the rest.
//!
//! **Roots**, per namespace: every image's target, and every resource of a lease that has not
//! expired. From an image's target, the collector follows the descriptors inside OCI indexes
//! and manifests and Docker schema2 manifest lists and manifests (index -> manifests -> config
//! and layers); from any blob, the digests in its labels under [`GC_REF_PREFIX`]. A blob a lease
//! holds is kept by itself (its media type is unknown): a lease holds every blob it needs. Blobs of a namespace that
//! nothing reaches lose their record there; blob files no namespace records are deleted;
//! ingests that no lease holds and no writer is writing are removed; expired leases are
//! deleted. Marking and sweeping the records is one transaction, and commits wait while files
//! are removed, so a collection never races with a writer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

use crate::content::LocalContent;
use crate::db::{self, CONTENT, Db, IMAGES, INGESTS, LEASE_RESOURCES, LEASES};
use crate::digest::Digest;
use crate::error::Result;
use crate::images::Image;
use crate::leases::{self, Lease, ResourceKind};

/// Labels whose values are digests of blobs the labelled blob references.
pub const GC_REF_PREFIX: &str = "berth.io/gc.ref.content";

/// Media types whose blobs list other blobs.
const PARENT_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Largest index or manifest the collector parses.
const MAX_MANIFEST: u64 = 8 << 20;

/// What a collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Blobs removed from a namespace: `(namespace, digest)`.
    pub content: Vec<(String, Digest)>,
    /// Blob files deleted from disk.
    pub blobs: Vec<Digest>,
    /// Bytes those files held.
    pub freed: u64,
    /// Ingests removed: `(namespace, ref)`.
    pub ingests: Vec<(String, String)>,
    /// Expired leases deleted: `(namespace, id)`.
    pub leases: Vec<(String, String)>,
}

/// Collects garbage in the content store and the lease table.
#[derive(Clone)]
pub struct Collector {
    db: Arc<Db>,
    content: LocalContent,
}

#[derive(Deserialize)]
struct Children {
    #[serde(default)]
    manifests: Vec<Child>,
    config: Option<Child>,
    #[serde(default)]
    layers: Vec<Child>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Child {
    media_type: Option<String>,
    digest: String,
}

type Node = (String, Digest, Option<String>);

impl Collector {
    pub(crate) fn new(db: Arc<Db>, content: LocalContent) -> Collector {
        Collector { db, content }
    }

    /// Runs one collection.
    pub fn collect(&self) -> Result<Report> {
        let started = std::time::Instant::now();
        let report = self.content.exclusive(|| {
            let mut report = self.db.write(|tx| self.mark_and_sweep(tx))?;
            (report.blobs, report.freed) = self.content.sweep_files()?;
            Ok::<_, crate::error::Error>(report)
        })?;
        tracing::info!(
            content = report.content.len(),
            blobs = report.blobs.len(),
            freed = report.freed,
            ingests = report.ingests.len(),
            leases = report.leases.len(),
            elapsed = ?started.elapsed(),
            "garbage collected"
        );
        Ok(report)
    }

    fn mark_and_sweep(&self, tx: &redb::WriteTransaction) -> Result<Report> {
        let mut report = Report::default();
        let now = SystemTime::now();
        let mut live = HashSet::new();
        for (key, lease) in db::scan::<Lease>(&tx.open_table(LEASES)?, "")? {
            let Some((ns, id)) = key.split_once('\0') else {
                continue;
            };
            if lease.expires_at.is_some_and(|t| t <= now) {
                report.leases.push((ns.to_owned(), id.to_owned()));
            } else {
                live.insert((ns.to_owned(), id.to_owned()));
            }
        }

        let mut roots: Vec<Node> = Vec::new();
        let mut held_ingests = HashSet::new();
        for key in db::keys(&tx.open_table(LEASE_RESOURCES)?, "")? {
            let parts: Vec<&str> = key.splitn(4, '\0').collect();
            let [ns, id, kind, rid] = parts[..] else {
                continue;
            };
            if !live.contains(&(ns.to_owned(), id.to_owned())) {
                continue;
            }
            match ResourceKind::parse(kind) {
                Ok(ResourceKind::Content) => {
                    if let Ok(d) = rid.parse() {
                        roots.push((ns.to_owned(), d, None));
                    }
                }
                Ok(ResourceKind::Ingest) => {
                    held_ingests.insert((ns.to_owned(), rid.to_owned()));
                }
                _ => {}
            }
        }
        for (key, image) in db::scan::<Image>(&tx.open_table(IMAGES)?, "")? {
            if let Some((ns, _)) = key.split_once('\0') {
                roots.push((
                    ns.to_owned(),
                    image.target.digest,
                    Some(image.target.media_type),
                ));
            }
        }

        let mut content = tx.open_table(CONTENT)?;
        let mut labels: HashMap<(String, Digest), Vec<Digest>> = HashMap::new();
        for (key, record) in db::scan::<crate::content::Record>(&content, "")? {
            let Some((ns, d)) = key.split_once('\0') else {
                continue;
            };
            let refs = record
                .labels()
                .iter()
                .filter(|(k, _)| k.starts_with(GC_REF_PREFIX))
                .filter_map(|(_, v)| v.parse().ok())
                .collect();
            if let Ok(d) = d.parse() {
                labels.insert((ns.to_owned(), d), refs);
            }
        }

        let mut marked: HashSet<(String, Digest)> = HashSet::new();
        while let Some((ns, digest, media_type)) = roots.pop() {
            let node = (ns, digest);
            let Some(refs) = labels.get(&node) else {
                continue; // not in the namespace (e.g. another platform's manifest)
            };
            if !marked.insert(node.clone()) {
                continue;
            }
            let (ns, digest) = node;
            roots.extend(refs.iter().map(|d| (ns.clone(), d.clone(), None)));
            if media_type.is_some_and(|m| PARENT_TYPES.contains(&m.as_str())) {
                for child in self.children(&digest) {
                    roots.push((ns.clone(), child.0, child.1));
                }
            }
        }

        let mut unmarked: BTreeSet<(String, Digest)> = labels.into_keys().collect();
        unmarked.retain(|n| !marked.contains(n));
        for (ns, digest) in unmarked {
            content.remove(db::key(&[&ns, &digest.to_string()]).as_str())?;
            report.content.push((ns, digest));
        }

        let mut ingests = tx.open_table(INGESTS)?;
        for key in db::keys(&ingests, "")? {
            let Some((ns, reference)) = key.split_once('\0') else {
                continue;
            };
            let node = (ns.to_owned(), reference.to_owned());
            if !held_ingests.contains(&node) && !self.content.is_active(ns, reference) {
                ingests.remove(key.as_str())?;
                report.ingests.push(node);
            }
        }
        for (ns, id) in &report.leases {
            leases::remove(tx, ns, id)?;
        }
        Ok(report)
    }

    /// The descriptors an index or manifest blob lists (empty if it does not parse).
    fn children(&self, digest: &Digest) -> Vec<(Digest, Option<String>)> {
        let path = self.content.blob_path(digest);
        let mut data = Vec::new();
        let read =
            std::fs::File::open(&path).and_then(|f| f.take(MAX_MANIFEST).read_to_end(&mut data));
        if let Err(e) = read {
            tracing::warn!(%digest, error = %e, "cannot read manifest for garbage collection");
            return Vec::new();
        }
        let children: Children = match serde_json::from_slice(&data) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "unparsable manifest kept without its children");
                return Vec::new();
            }
        };
        children
            .manifests
            .into_iter()
            .chain(children.config)
            .chain(children.layers)
            .filter_map(|c| Some((c.digest.parse().ok()?, c.media_type)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::content::{ContentStore, WriteRequest, Writer};
    use crate::images::{DbImages, Descriptor, ImageStore};
    use crate::leases::{DbLeases, LeaseManager, Resource};

    struct Fixture {
        _dir: tempfile::TempDir,
        content: LocalContent,
        images: DbImages,
        leases: DbLeases,
        gc: Collector,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("meta.redb")).unwrap());
        let content = LocalContent::open(db.clone(), &dir.path().join("content")).unwrap();
        Fixture {
            images: DbImages::new(db.clone()),
            leases: DbLeases::new(db.clone()),
            gc: Collector::new(db, content.clone()),
            content,
            _dir: dir,
        }
    }

    impl Fixture {
        fn put(&self, ns: &str, data: &[u8], lease: Option<&str>) -> Descriptor {
            let mut w = self
                .content
                .writer(
                    ns,
                    WriteRequest {
                        reference: format!("ref-{}", Digest::sha256(data)),
                        lease: lease.map(str::to_owned),
                        ..Default::default()
                    },
                )
                .unwrap();
            w.write(0, data).unwrap();
            let info = w.commit(BTreeMap::new()).unwrap();
            Descriptor {
                media_type: String::new(),
                digest: info.digest,
                size: info.size,
                annotations: BTreeMap::new(),
                platform: None,
            }
        }

        fn json(d: &Descriptor, media_type: &str) -> serde_json::Value {
            serde_json::json!({"mediaType": media_type, "digest": d.digest.to_string(), "size": d.size})
        }

        /// An index -> manifest -> config + layer image in `ns`; returns every descriptor.
        fn image(&self, ns: &str, tag: &str, docker: bool) -> Vec<Descriptor> {
            let (index_type, manifest_type) = if docker {
                (PARENT_TYPES[2], PARENT_TYPES[3])
            } else {
                (PARENT_TYPES[0], PARENT_TYPES[1])
            };
            let config = self.put(ns, format!("config {tag}").as_bytes(), None);
            let layer = self.put(ns, format!("layer {tag}").as_bytes(), None);
            let manifest = serde_json::json!({
                "schemaVersion": 2, "mediaType": manifest_type,
                "config": Self::json(&config, "application/vnd.oci.image.config.v1+json"),
                "layers": [Self::json(&layer, "application/vnd.oci.image.layer.v1.tar+gzip")],
            });
            let manifest = self.put(ns, manifest.to_string().as_bytes(), None);
            let index = serde_json::json!({
                "schemaVersion": 2, "mediaType": index_type,
                "manifests": [Self::json(&manifest, manifest_type)],
            });
            let mut index = self.put(ns, index.to_string().as_bytes(), None);
            index.media_type = index_type.into();
            self.images
                .create(ns, tag, BTreeMap::new(), index.clone(), false)
                .unwrap();
            vec![index, manifest, config, layer]
        }

        fn digests(&self, ns: &str) -> BTreeSet<Digest> {
            self.content
                .list(ns, &Default::default())
                .unwrap()
                .into_iter()
                .map(|i| i.digest)
                .collect()
        }
    }

    #[test]
    fn removes_exactly_what_nothing_reaches() {
        let f = fixture();
        let a = f.image("ns", "a", false);
        let b = f.image("ns", "b", true);
        let loose = f.put("ns", b"loose", None);
        f.leases
            .create("ns", Some("l"), BTreeMap::new(), None)
            .unwrap();
        let leased = f.put("ns", b"leased", Some("l"));
        // The same image in another namespace, unreferenced there.
        f.put("other", b"config a", None);

        let report = f.gc.collect().unwrap();
        let want: BTreeSet<_> = a
            .iter()
            .chain(&b)
            .chain([&leased])
            .map(|d| d.digest.clone())
            .collect();
        assert_eq!(f.digests("ns"), want);
        assert!(f.digests("other").is_empty());
        assert_eq!(report.content.len(), 2);
        assert_eq!(report.blobs, std::slice::from_ref(&loose.digest));
        assert!(!f.content.blob_path(&loose.digest).exists());
        // The config shared with "other" stays on disk: "ns" still holds it.
        assert!(f.content.blob_path(&a[2].digest).exists());

        f.images.delete("ns", "a").unwrap();
        f.leases.delete("ns", "l").unwrap();
        let report = f.gc.collect().unwrap();
        let want: BTreeSet<_> = b.iter().map(|d| d.digest.clone()).collect();
        assert_eq!(f.digests("ns"), want);
        assert_eq!(report.blobs.len(), 5);
        for d in a.iter().chain([&leased]) {
            assert!(!f.content.blob_path(&d.digest).exists());
        }
    }

    #[test]
    fn ingests_survive_only_under_a_lease_or_a_writer() {
        let f = fixture();
        f.leases
            .create("ns", Some("l"), BTreeMap::new(), None)
            .unwrap();
        let open = |reference: &str, lease: Option<&str>| {
            let mut w = f
                .content
                .writer(
                    "ns",
                    WriteRequest {
                        reference: reference.into(),
                        lease: lease.map(str::to_owned),
                        ..Default::default()
                    },
                )
                .unwrap();
            w.write(0, b"partial").unwrap();
            w
        };
        drop(open("leased", Some("l")));
        drop(open("loose", None));
        let writing = open("writing", None);
        let report = f.gc.collect().unwrap();
        assert_eq!(report.ingests, [("ns".to_owned(), "loose".to_owned())]);
        let refs: Vec<String> = f
            .content
            .list_statuses("ns", &Default::default())
            .unwrap()
            .into_iter()
            .map(|s| s.reference)
            .collect();
        assert_eq!(refs, ["leased", "writing"]);
        drop(writing);
        // An expired lease is deleted and releases its ingest.
        f.leases.delete("ns", "l").unwrap();
        f.leases
            .create(
                "ns",
                Some("old"),
                BTreeMap::new(),
                Some(SystemTime::UNIX_EPOCH),
            )
            .unwrap();
        f.leases
            .add_resource("ns", "old", &Resource::ingest("leased"))
            .unwrap();
        let report = f.gc.collect().unwrap();
        assert_eq!(report.leases, [("ns".to_owned(), "old".to_owned())]);
        assert_eq!(report.ingests.len(), 2);
        assert!(
            f.content
                .list_statuses("ns", &Default::default())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn gc_labels_keep_referenced_blobs() {
        let f = fixture();
        let child = f.put("ns", b"child", None);
        let mut parent = f.put("ns", b"parent", None);
        f.content
            .update(
                "ns",
                &parent.digest,
                crate::content::LabelUpdate::All(BTreeMap::from([(
                    format!("{GC_REF_PREFIX}.0"),
                    child.digest.to_string(),
                )])),
            )
            .unwrap();
        parent.media_type = "application/octet-stream".into();
        f.images
            .create("ns", "p", BTreeMap::new(), parent, false)
            .unwrap();
        assert!(f.gc.collect().unwrap().content.is_empty());
    }
}

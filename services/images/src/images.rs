//! Image records: a name in a namespace pointing at a root descriptor in the content store.
//!
//! An **image** is a normalised reference (see [`crate::reference`]) mapped to a **target**: the
//! descriptor of an OCI index or manifest (or a Docker manifest list or manifest) that the
//! namespace holds in its content store. Records carry labels and creation/update times.
//! Deleting an image does not delete content: garbage collection removes what no image or lease
//! reaches anymore.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::content::{self, LabelUpdate};
use crate::db::{self, Db, IMAGES};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference;
use berth_api::filters::{self, Fields, Filters};

/// An OCI platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system (e.g. `linux`).
    pub os: String,
    /// CPU architecture (e.g. `amd64`).
    pub architecture: String,
    /// CPU variant (e.g. `v8`), or empty.
    pub variant: String,
    /// OS version, or empty.
    pub os_version: String,
}

/// A content descriptor: what a blob is and where to find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type of the blob.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// OCI annotations.
    pub annotations: BTreeMap<String, String>,
    /// Platform, for manifests listed in an index.
    pub platform: Option<Platform>,
}

/// A named image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Normalised reference, unique in the namespace.
    pub name: String,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Root of the image.
    pub target: Descriptor,
    /// When the record was created.
    pub created_at: SystemTime,
    /// When the record last changed.
    pub updated_at: SystemTime,
}

/// What an update changes.
#[derive(Debug, Clone)]
pub struct ImageUpdate {
    /// New labels, if they change.
    pub labels: Option<LabelUpdate>,
    /// New target, if it changes.
    pub target: Option<Descriptor>,
}

/// Records images by name, per namespace.
pub trait ImageStore: Send + Sync + 'static {
    /// The image named `name` (normalised first). NotFound if there is none.
    fn get(&self, ns: &str, name: &str) -> Result<Image>;
    /// The images matching `filters` (fields `name`, `labels.<key>`, `target.digest`,
    /// `target.media_type`), sorted by name.
    fn list(&self, ns: &str, filters: &Filters) -> Result<Vec<Image>>;
    /// Records an image whose target the namespace holds. AlreadyExists if the name is taken
    /// (unless `replace`), NotFound if the target is not in the content store.
    fn create(
        &self,
        ns: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        target: Descriptor,
        replace: bool,
    ) -> Result<Image>;
    /// Changes an image's labels and/or target.
    fn update(&self, ns: &str, name: &str, update: ImageUpdate) -> Result<Image>;
    /// Removes an image record. NotFound if there is none.
    fn delete(&self, ns: &str, name: &str) -> Result<()>;
}

/// Image records in the service's metadata database.
pub struct DbImages {
    db: Arc<Db>,
}

impl DbImages {
    pub(crate) fn new(db: Arc<Db>) -> DbImages {
        DbImages { db }
    }
}

impl Fields for Image {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.name.clone()),
            [f, rest @ ..] if f == "labels" => filters::label(&self.labels, rest).cloned(),
            [t, f] if t == "target" && f == "digest" => Some(self.target.digest.to_string()),
            [t, f] if t == "target" && (f == "media_type" || f == "mediatype") => {
                Some(self.target.media_type.clone())
            }
            _ => None,
        }
    }
}

/// Checks that `ns` holds the target blob with the descriptor's size.
fn check_target(tx: &redb::WriteTransaction, ns: &str, target: &Descriptor) -> Result<()> {
    if target.media_type.is_empty() {
        return Err(Error::invalid("target.media_type", "must not be empty"));
    }
    match content::size_in(tx, ns, &target.digest)? {
        None => Err(Error::ContentNotFound {
            digest: target.digest.to_string(),
        }),
        Some(size) if size != target.size => Err(Error::invalid(
            "target.size",
            format!(
                "{} does not match the size of {} ({size})",
                target.size, target.digest
            ),
        )),
        Some(_) => Ok(()),
    }
}

impl ImageStore for DbImages {
    fn get(&self, ns: &str, name: &str) -> Result<Image> {
        let name = reference::normalize(name)?;
        let tx = self.db.read()?;
        db::get(&tx.open_table(IMAGES)?, &db::key(&[ns, &name]))?
            .ok_or(Error::ImageNotFound { name })
    }

    fn list(&self, ns: &str, filters: &Filters) -> Result<Vec<Image>> {
        let tx = self.db.read()?;
        Ok(
            db::scan::<Image>(&tx.open_table(IMAGES)?, &db::key(&[ns, ""]))?
                .into_iter()
                .map(|(_, image)| image)
                .filter(|image| filters.matches(image))
                .collect(),
        )
    }

    fn create(
        &self,
        ns: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        target: Descriptor,
        replace: bool,
    ) -> Result<Image> {
        let name = reference::normalize(name)?;
        self.db.write(|tx| {
            check_target(tx, ns, &target)?;
            let mut table = tx.open_table(IMAGES)?;
            let key = db::key(&[ns, &name]);
            let now = SystemTime::now();
            let created_at = match db::get::<Image>(&table, &key)? {
                Some(old) if replace => old.created_at,
                Some(_) => return Err(Error::ImageExists { name: name.clone() }),
                None => now,
            };
            let image = Image {
                name: name.clone(),
                labels,
                target,
                created_at,
                updated_at: now,
            };
            db::put(&mut table, &key, &image)?;
            Ok(image)
        })
    }

    fn update(&self, ns: &str, name: &str, update: ImageUpdate) -> Result<Image> {
        let name = reference::normalize(name)?;
        self.db.write(|tx| {
            if let Some(target) = &update.target {
                check_target(tx, ns, target)?;
            }
            let mut table = tx.open_table(IMAGES)?;
            let key = db::key(&[ns, &name]);
            let mut image: Image = db::get(&table, &key)?
                .ok_or_else(|| Error::ImageNotFound { name: name.clone() })?;
            if let Some(labels) = update.labels {
                labels.apply(&mut image.labels);
            }
            if let Some(target) = update.target {
                image.target = target;
            }
            image.updated_at = SystemTime::now();
            db::put(&mut table, &key, &image)?;
            Ok(image)
        })
    }

    fn delete(&self, ns: &str, name: &str) -> Result<()> {
        let name = reference::normalize(name)?;
        self.db.write(|tx| {
            match tx
                .open_table(IMAGES)?
                .remove(db::key(&[ns, &name]).as_str())?
            {
                Some(_) => Ok(()),
                None => Err(Error::ImageNotFound { name: name.clone() }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{ContentStore, LocalContent, WriteRequest, Writer};

    fn setup() -> (tempfile::TempDir, LocalContent, DbImages, Descriptor) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("meta.redb")).unwrap());
        let content = LocalContent::open(db.clone(), &dir.path().join("content")).unwrap();
        let data = br#"{"schemaVersion":2}"#;
        let mut w = content
            .writer(
                "ns",
                WriteRequest {
                    reference: "m".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        w.write(0, data).unwrap();
        let info = w.commit(BTreeMap::new()).unwrap();
        let target = Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: info.digest,
            size: info.size,
            annotations: BTreeMap::new(),
            platform: None,
        };
        (dir, content, DbImages::new(db), target)
    }

    #[test]
    fn create_get_list_update_delete() {
        let (_d, _c, images, target) = setup();
        let img = images
            .create("ns", "busybox", BTreeMap::new(), target.clone(), false)
            .unwrap();
        assert_eq!(img.name, "docker.io/library/busybox:latest");
        assert_eq!(
            images
                .get("ns", "docker.io/library/busybox")
                .unwrap()
                .target,
            target
        );
        assert!(matches!(
            images.create(
                "ns",
                "busybox:latest",
                BTreeMap::new(),
                target.clone(),
                false
            ),
            Err(Error::ImageExists { .. })
        ));
        assert!(matches!(
            images.get("other", "busybox"),
            Err(Error::ImageNotFound { .. })
        ));
        // The target must be in the namespace's content store, with its size.
        assert!(matches!(
            images.create("other", "x", BTreeMap::new(), target.clone(), false),
            Err(Error::ContentNotFound { .. })
        ));
        let mut wrong = target.clone();
        wrong.size += 1;
        assert!(
            images
                .create("ns", "x", BTreeMap::new(), wrong, false)
                .is_err()
        );

        images
            .create(
                "ns",
                "localhost:5000/x:1",
                BTreeMap::new(),
                target.clone(),
                false,
            )
            .unwrap();
        let f = Filters::parse(&["name~=^localhost".into()]).unwrap();
        assert_eq!(images.list("ns", &f).unwrap().len(), 1);
        assert_eq!(images.list("ns", &Filters::default()).unwrap().len(), 2);

        let updated = images
            .update(
                "ns",
                "busybox",
                ImageUpdate {
                    labels: Some(LabelUpdate::All(BTreeMap::from([("a".into(), "b".into())]))),
                    target: None,
                },
            )
            .unwrap();
        assert_eq!(updated.labels["a"], "b");
        assert_eq!(updated.created_at, img.created_at);
        let f = Filters::parse(&["labels.a==b".into()]).unwrap();
        assert_eq!(images.list("ns", &f).unwrap().len(), 1);

        images.delete("ns", "busybox").unwrap();
        assert!(matches!(
            images.delete("ns", "busybox"),
            Err(Error::ImageNotFound { .. })
        ));
        assert!(matches!(
            images.get("ns", "Bad Name"),
            Err(Error::InvalidReference { .. })
        ));
    }
}

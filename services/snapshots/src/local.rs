//! The engine both snapshotters share: records in the metadata store, one directory per
//! snapshot, and crash repair. A [`Driver`] supplies what differs (how a new snapshot's
//! directory is filled, how a snapshot mounts).
//!
//! On disk, under the snapshotter's root:
//!
//! ```text
//! metadata.redb          the records (see store.rs)
//! snapshots/<id>/fs      each snapshot's own layer (plus work/ for overlay active snapshots)
//! staging/               directories being prepared, not yet known to the database
//! trash/                 directories of removed snapshots, being deleted
//! ```
//!
//! Every operation is one metadata transaction plus directory renames ordered so that a crash
//! at any point leaves either the old or the new state, and at worst a directory no record
//! names: Prepare fills `staging/…` and renames it to `snapshots/<id>` inside the transaction
//! that records `<id>`; Remove deletes the record, then renames the directory to `trash/` and
//! deletes it; Commit only changes records. At start (and on Cleanup) staging and trash are
//! emptied and every `snapshots/<id>` without a record is removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::Database;

use crate::error::{Error, Result};
use crate::failpoint;
use crate::fsutil;
use crate::mount::Mount;
use crate::snapshotter::{
    Info, Kind, LABEL_VOLATILE, Labels, Snapshotter, Usage, validate_key, validate_labels,
};
use crate::store::{self, Reader, Record, Writer};

/// What a snapshot's mounts are built from.
#[derive(Debug)]
pub struct Layers {
    /// The snapshot's kind.
    pub kind: Kind,
    /// Its own directory (`snapshots/<id>`, holding `fs` and maybe `work`).
    pub dir: PathBuf,
    /// The `fs` directories of its ancestors, nearest first.
    pub parents: Vec<PathBuf>,
    /// Whether the volatile label asks for an unsynced overlay.
    pub volatile: bool,
}

impl Layers {
    /// The snapshot's own layer.
    pub fn fs(&self) -> PathBuf {
        self.dir.join("fs")
    }

    /// The overlay work directory of an active snapshot.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
}

/// What differs between snapshotters.
pub trait Driver: Send + Sync + 'static {
    /// The snapshotter's name, as requests and the configuration name it.
    const NAME: &'static str;

    /// Checks once, at start, that `root` can host this driver.
    fn check(&self, root: &Path) -> Result<()>;

    /// Fills a new snapshot directory `dir` (which holds an empty `fs`) of `kind`, whose
    /// parent's layer is `parent`. Runs before the snapshot exists for anyone else.
    fn populate(&self, dir: &Path, kind: Kind, parent: Option<&Path>) -> Result<()>;

    /// The mounts of an active snapshot or view.
    fn mounts(&self, layers: &Layers) -> Vec<Mount>;
}

/// A snapshotter storing its layers under one root directory; see the module documentation.
pub struct Local<D: Driver> {
    driver: D,
    root: PathBuf,
    database: Arc<Database>,
    writer: Writer,
    staged: AtomicU64,
}

impl<D: Driver> Local<D> {
    /// Opens (creating if needed) the snapshotter at `root`, repairing what a crash left.
    pub fn open(root: &Path, driver: D) -> Result<Self> {
        for dir in ["snapshots", "staging", "trash"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(Error::io("create", &path))?;
        }
        let database = Arc::new(store::open(&root.join("metadata.redb"))?);
        let writer = Writer::start(database.clone())?;
        let local = Local {
            driver,
            root: root.to_owned(),
            database,
            writer,
            staged: AtomicU64::new(0),
        };
        let repaired = local.repair()?;
        if repaired > 0 {
            tracing::info!(removed = repaired, root = %root.display(), "removed directories left by an interrupted operation");
        }
        local.driver.check(root)?;
        Ok(local)
    }

    fn layer(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn layers(&self, record: &Record) -> Layers {
        Layers {
            kind: record.kind,
            dir: self.layer(record.id),
            parents: record
                .chain
                .iter()
                .map(|id| self.layer(*id).join("fs"))
                .collect(),
            volatile: record
                .labels
                .get(LABEL_VOLATILE)
                .is_some_and(|v| v == "true"),
        }
    }

    fn get(&self, namespace: &str, key: &str) -> Result<Record> {
        validate_key(key)?;
        Reader::begin(&self.database)?
            .get(namespace, key)?
            .ok_or_else(|| Error::NotFound {
                key: key.to_owned(),
            })
    }

    /// Start-up repair: empties staging and trash, removes layers no record names.
    fn repair(&self) -> Result<u64> {
        let mut removed = 0;
        for dir in ["staging", "trash"] {
            removed += self.empty(&self.root.join(dir))?;
        }
        let ids = Reader::begin(&self.database)?.ids()?;
        let layers = self.root.join("snapshots");
        for name in read_dir_names(&layers)? {
            if name.parse::<u64>().is_ok_and(|id| ids.contains(&id)) {
                continue;
            }
            let path = layers.join(&name);
            fsutil::remove_tree(&path).map_err(Error::io("remove orphan", &path))?;
            removed += 1;
        }
        for id in &ids {
            if !self.layer(*id).exists() {
                tracing::error!(
                    id,
                    "a snapshot's directory is missing: its record is kept, its data is lost"
                );
            }
        }
        Ok(removed)
    }

    /// Removes everything inside `dir`; returns how many entries went.
    fn empty(&self, dir: &Path) -> Result<u64> {
        let mut removed = 0;
        for name in read_dir_names(dir)? {
            let path = dir.join(&name);
            fsutil::remove_tree(&path).map_err(Error::io("remove", &path))?;
            removed += 1;
        }
        Ok(removed)
    }

    fn create(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
        kind: Kind,
    ) -> Result<Vec<Mount>> {
        validate_key(key)?;
        if let Some(p) = parent {
            validate_key(p)?;
        }
        validate_labels(&labels)?;
        // Fail fast, and find the parent's layer for drivers that copy it.
        let reader = Reader::begin(&self.database)?;
        if reader.get(namespace, key)?.is_some() {
            return Err(Error::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let parent_id = match parent {
            Some(p) => Some(usable_parent(reader.get(namespace, p)?, p)?.id),
            None => None,
        };
        drop(reader);

        let stage = self.root.join("staging").join(format!(
            "{}-{}",
            std::process::id(),
            self.staged.fetch_add(1, Ordering::Relaxed)
        ));
        let fs = stage.join("fs");
        std::fs::create_dir(&stage).map_err(Error::io("create", &stage))?;
        let parent_fs = parent_id.map(|id| self.layer(id).join("fs"));
        let filled = std::fs::create_dir(&fs)
            .map_err(Error::io("create", &fs))
            .and_then(|()| self.driver.populate(&stage, kind, parent_fs.as_deref()));
        if let Err(e) = filled {
            let _ = fsutil::remove_tree(&stage);
            return Err(e);
        }

        let (ns, name) = (namespace.to_owned(), key.to_owned());
        let parent_name = parent.map(str::to_owned);
        let layers_dir = self.root.join("snapshots");
        let staged = stage.clone();
        let result = self.writer.submit(move |batch| {
            if batch.get(&ns, &name)?.is_some() {
                return Err(Error::AlreadyExists { key: name });
            }
            let chain = match &parent_name {
                Some(p) => {
                    let record = usable_parent(batch.get(&ns, p)?, p)?;
                    if Some(record.id) != parent_id {
                        // Removed and made again since we looked: what we staged is stale.
                        return Err(Error::ParentNotFound { parent: p.clone() });
                    }
                    let mut chain = vec![record.id];
                    chain.extend(record.chain);
                    chain
                }
                None => Vec::new(),
            };
            let id = batch.next_id()?;
            let dest = layers_dir.join(id.to_string());
            std::fs::rename(&staged, &dest).map_err(Error::io("rename", &dest))?;
            batch.on_abort(move || {
                let _ = fsutil::remove_tree(&dest);
            });
            let now = store::now();
            let record = Record {
                id,
                kind,
                parent: parent_name.clone(),
                chain,
                labels,
                created: now,
                updated: now,
                usage: None,
            };
            batch.put(&ns, &name, &record)?;
            if let Some(p) = &parent_name {
                batch.link(&ns, p, &name)?;
            }
            failpoint::hit("prepare:before-commit");
            Ok(record)
        });
        match result {
            Ok(record) => Ok(self.driver.mounts(&self.layers(&record))),
            Err(e) => {
                let _ = fsutil::remove_tree(&stage);
                Err(e)
            }
        }
    }

    /// Deletes a removed snapshot's directory: first out of `snapshots/` (atomic), then for good.
    fn delete_layer(&self, id: u64) -> Result<()> {
        let trash = self.root.join("trash").join(id.to_string());
        match std::fs::rename(self.layer(id), &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("rename", &trash)(e)),
        }
        failpoint::hit("remove:after-rename");
        fsutil::remove_tree(&trash.join("fs")).map_err(Error::io("remove", &trash))?;
        failpoint::hit("remove:mid-delete");
        fsutil::remove_tree(&trash).map_err(Error::io("remove", &trash))
    }
}

/// The parent record, if it can be one.
fn usable_parent(record: Option<Record>, name: &str) -> Result<Record> {
    let record = record.ok_or_else(|| Error::ParentNotFound {
        parent: name.to_owned(),
    })?;
    if !record.kind.can_be_parent() {
        return Err(Error::ParentNotCommitted {
            parent: name.to_owned(),
            kind: record.kind,
        });
    }
    Ok(record)
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(Error::io("read directory", dir))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("read directory", dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// What an Update field list asks for.
enum LabelChange {
    ReplaceAll,
    Keys(Vec<String>),
}

fn label_change(fields: &[String]) -> Result<LabelChange> {
    if fields.is_empty() || fields.iter().any(|f| f == "labels") {
        return Ok(LabelChange::ReplaceAll);
    }
    fields
        .iter()
        .map(|f| match f.strip_prefix("labels.") {
            Some(k) if !k.is_empty() => Ok(k.to_owned()),
            _ => Err(Error::InvalidField { field: f.clone() }),
        })
        .collect::<Result<_>>()
        .map(LabelChange::Keys)
}

impl<D: Driver> Snapshotter for Local<D> {
    fn name(&self) -> &'static str {
        D::NAME
    }

    fn stat(&self, namespace: &str, key: &str) -> Result<Info> {
        Ok(self.get(namespace, key)?.info(key))
    }

    fn update(
        &self,
        namespace: &str,
        key: &str,
        labels: Labels,
        fields: &[String],
    ) -> Result<Info> {
        validate_key(key)?;
        let change = label_change(fields)?;
        let (ns, name) = (namespace.to_owned(), key.to_owned());
        self.writer.submit(move |batch| {
            let mut record = batch
                .get(&ns, &name)?
                .ok_or_else(|| Error::NotFound { key: name.clone() })?;
            match change {
                LabelChange::ReplaceAll => record.labels = labels,
                LabelChange::Keys(keys) => {
                    for k in keys {
                        match labels.get(&k) {
                            Some(v) => record.labels.insert(k, v.clone()),
                            None => record.labels.remove(&k),
                        };
                    }
                }
            }
            validate_labels(&record.labels)?;
            record.updated = store::now();
            batch.put(&ns, &name, &record)?;
            Ok(record.info(&name))
        })
    }

    fn usage(&self, namespace: &str, key: &str) -> Result<Usage> {
        let record = self.get(namespace, key)?;
        if let Some(usage) = record.usage {
            return Ok(usage);
        }
        let fs = self.layer(record.id).join("fs");
        fsutil::disk_usage(&fs).map_err(Error::io("measure", &fs))
    }

    fn mounts(&self, namespace: &str, key: &str) -> Result<Vec<Mount>> {
        let record = self.get(namespace, key)?;
        if !record.kind.has_mounts() {
            return Err(Error::NoMounts {
                key: key.to_owned(),
            });
        }
        Ok(self.driver.mounts(&self.layers(&record)))
    }

    fn prepare(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        self.create(namespace, key, parent, labels, Kind::Active)
    }

    fn view(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        self.create(namespace, key, parent, labels, Kind::View)
    }

    fn commit(&self, namespace: &str, name: &str, key: &str, labels: Labels) -> Result<()> {
        validate_key(name)?;
        validate_labels(&labels)?;
        let active = self.get(namespace, key)?;
        if !active.kind.can_commit() {
            return Err(Error::NotCommittable {
                key: key.to_owned(),
                kind: active.kind,
            });
        }
        // Measured before the transaction (it walks the whole layer); the layer is no longer
        // written to once its owner commits it.
        let fs = self.layer(active.id).join("fs");
        let usage = fsutil::disk_usage(&fs).map_err(Error::io("measure", &fs))?;
        let (ns, new, old) = (namespace.to_owned(), name.to_owned(), key.to_owned());
        self.writer.submit(move |batch| {
            let record = batch
                .get(&ns, &old)?
                .filter(|r| r.id == active.id)
                .ok_or_else(|| Error::NotFound { key: old.clone() })?;
            if batch.get(&ns, &new)?.is_some() {
                return Err(Error::AlreadyExists { key: new });
            }
            let now = store::now();
            let committed = Record {
                kind: Kind::Committed,
                labels,
                created: now,
                updated: now,
                usage: Some(usage),
                ..record
            };
            batch.delete(&ns, &old)?;
            batch.put(&ns, &new, &committed)?;
            if let Some(p) = &committed.parent {
                batch.unlink(&ns, p, &old)?;
                batch.link(&ns, p, &new)?;
            }
            failpoint::hit("commit:before-commit");
            Ok(())
        })?;
        failpoint::hit("commit:after-commit");
        Ok(())
    }

    fn remove(&self, namespace: &str, key: &str) -> Result<()> {
        validate_key(key)?;
        let (ns, name) = (namespace.to_owned(), key.to_owned());
        let id = self.writer.submit(move |batch| {
            let record = batch
                .get(&ns, &name)?
                .ok_or_else(|| Error::NotFound { key: name.clone() })?;
            let (count, child) = batch.children(&ns, &name)?;
            if let Some(child) = child {
                return Err(Error::HasChildren {
                    key: name,
                    count,
                    child,
                });
            }
            batch.delete(&ns, &name)?;
            if let Some(p) = &record.parent {
                batch.unlink(&ns, p, &name)?;
            }
            failpoint::hit("remove:before-commit");
            Ok(record.id)
        })?;
        failpoint::hit("remove:after-commit");
        // The snapshot is gone; what is left on disk is only an orphan for Cleanup.
        if let Err(e) = self.delete_layer(id) {
            tracing::warn!(error = %e, id, "snapshot removed, its directory not yet: Cleanup will finish");
        }
        Ok(())
    }

    fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Info>> {
        let filters =
            berth_api::filters::Filters::parse(filters).map_err(|e| Error::InvalidFilter {
                filter: e.filter,
                reason: e.reason,
            })?;
        Ok(Reader::begin(&self.database)?
            .list(namespace)?
            .into_iter()
            .map(|(name, record)| record.info(&name))
            .filter(|info| filters.matches(info))
            .collect())
    }

    fn cleanup(&self) -> Result<u64> {
        let layers = self.root.join("snapshots");
        let trash = self.root.join("trash");
        // Orphans are decided inside a transaction, so no Prepare can be half-way through.
        self.writer.submit(move |batch| {
            let ids = batch.ids()?;
            for name in read_dir_names(&layers)? {
                if name.parse::<u64>().is_ok_and(|id| ids.contains(&id)) {
                    continue;
                }
                let to = trash.join(format!("orphan-{name}-{}", store::now()));
                std::fs::rename(layers.join(&name), &to).map_err(Error::io("rename", &to))?;
            }
            failpoint::hit("cleanup:before-commit");
            Ok(())
        })?;
        self.empty(&self.root.join("trash"))
    }
}

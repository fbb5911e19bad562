//! The content store on the local file system, with its metadata in the service's database.
//!
//! Layout under the content root: `blobs/<algorithm>/<hex>` (committed blobs, shared by all
//! namespaces) and `ingest/<id>/data` (one directory per ingest, `id` = sha256 of namespace and
//! ref). Records: `content` (`ns\0digest` -> [`Record`]) and `ingests` (`ns\0ref` ->
//! [`IngestRecord`]). A commit fsyncs the data, renames it into `blobs/` (atomic), fsyncs the
//! directory, then records the blob and drops the ingest in one transaction; a crash in between
//! leaves an unrecorded blob file that garbage collection removes.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{Blob, ContentStore, Info, LabelUpdate, MAX_CHUNK, Status, WriteRequest, Writer};
use crate::db::{self, CONTENT, Db, INGESTS};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};
use crate::leases::{self, Resource};
use berth_api::filters::Filters;

/// A blob's per-namespace record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    size: u64,
    created_at: SystemTime,
    updated_at: SystemTime,
    labels: BTreeMap<String, String>,
}

impl Record {
    fn info(self, digest: Digest) -> Info {
        Info {
            digest,
            size: self.size,
            created_at: self.created_at,
            updated_at: self.updated_at,
            labels: self.labels,
        }
    }

    /// The blob's labels.
    pub(crate) fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
}

/// An ingest's record; its offset is the length of its data file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IngestRecord {
    started_at: SystemTime,
    total: Option<u64>,
    expected: Option<Digest>,
    lease: Option<String>,
}

/// The local content store; cheap to clone.
#[derive(Clone)]
pub struct LocalContent {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Db>,
    root: PathBuf,
    /// Keys (`ns\0ref`) of the ingests a writer holds.
    active: Mutex<HashSet<String>>,
    /// Held shared by commits, exclusively by whatever removes blob files.
    files: RwLock<()>,
}

impl LocalContent {
    /// Opens the store rooted at `root`, creating its directories.
    pub(crate) fn open(db: Arc<Db>, root: &Path) -> Result<LocalContent> {
        for dir in [root.join("blobs"), root.join("ingest")] {
            fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        }
        Ok(LocalContent {
            inner: Arc::new(Inner {
                db,
                root: root.to_owned(),
                active: Mutex::new(HashSet::new()),
                files: RwLock::new(()),
            }),
        })
    }

    /// Where a committed blob lives.
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.blob_path(digest)
    }

    fn ingest_dir(&self, ns: &str, reference: &str) -> PathBuf {
        let id = Digest::sha256(db::key(&[ns, reference]).as_bytes());
        self.inner.root.join("ingest").join(id.hex())
    }

    fn active(&self) -> MutexGuard<'_, HashSet<String>> {
        self.inner
            .active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True if a writer currently holds ingest `reference` of `ns`.
    pub(crate) fn is_active(&self, ns: &str, reference: &str) -> bool {
        self.active().contains(&db::key(&[ns, reference]))
    }

    /// Blocks commits while `f` removes blob or ingest files.
    pub(crate) fn exclusive<T>(&self, f: impl FnOnce() -> T) -> T {
        let _guard = self
            .inner
            .files
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f()
    }

    /// Removes the files of blobs no namespace records and the directories of ingests without a
    /// record; returns the blobs removed and the bytes they held. Call inside
    /// [`LocalContent::exclusive`].
    pub(crate) fn sweep_files(&self) -> Result<(Vec<Digest>, u64)> {
        let tx = self.inner.db.read()?;
        let content = tx.open_table(CONTENT)?;
        let mut held = HashSet::new();
        for entry in content.iter()? {
            let (k, _) = entry?;
            if let Some((_, d)) = k.value().rsplit_once('\0')
                && let Ok(d) = d.parse::<Digest>()
            {
                held.insert(d);
            }
        }
        let mut ingests = HashSet::new();
        for entry in tx.open_table(INGESTS)?.iter()? {
            let (k, _) = entry?;
            if let Some((ns, reference)) = k.value().split_once('\0') {
                ingests.insert(self.ingest_dir(ns, reference));
            }
        }
        drop(tx);

        let mut removed = Vec::new();
        let mut freed = 0;
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.inner.root.join("blobs").join(alg.name());
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry.map_err(Error::io(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let keep = format!("{}:{name}", alg.name())
                    .parse::<Digest>()
                    .is_ok_and(|d| held.contains(&d));
                if !keep {
                    let size = entry.metadata().map(|m| m.len()).unwrap_or_default();
                    fs::remove_file(entry.path()).map_err(Error::io(entry.path()))?;
                    freed += size;
                    if let Ok(d) = format!("{}:{name}", alg.name()).parse() {
                        removed.push(d);
                    }
                }
            }
        }
        let dir = self.inner.root.join("ingest");
        for entry in fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let path = entry.map_err(Error::io(&dir))?.path();
            if !ingests.contains(&path) {
                fs::remove_dir_all(&path).map_err(Error::io(&path))?;
            }
        }
        Ok((removed, freed))
    }

    fn record(&self, ns: &str, digest: &Digest) -> Result<Record> {
        let tx = self.inner.db.read()?;
        let table = tx.open_table(CONTENT)?;
        db::get(&table, &db::key(&[ns, &digest.to_string()]))?.ok_or_else(|| {
            Error::ContentNotFound {
                digest: digest.to_string(),
            }
        })
    }

    fn ingest_status(&self, ns: &str, reference: &str, record: IngestRecord) -> Status {
        let meta = fs::metadata(self.ingest_dir(ns, reference).join("data")).ok();
        Status {
            reference: reference.to_owned(),
            offset: meta.as_ref().map(|m| m.len()).unwrap_or_default(),
            total: record.total,
            expected: record.expected,
            started_at: record.started_at,
            updated_at: meta
                .and_then(|m| m.modified().ok())
                .unwrap_or(record.started_at),
        }
    }
}

impl Inner {
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }
}

/// The size of blob `digest` in `ns`, inside a write transaction; None if `ns` lacks it.
pub(crate) fn size_in(
    tx: &redb::WriteTransaction,
    ns: &str,
    digest: &Digest,
) -> Result<Option<u64>> {
    let table = tx.open_table(CONTENT)?;
    Ok(db::get::<Record>(&table, &db::key(&[ns, &digest.to_string()]))?.map(|r| r.size))
}

impl ContentStore for LocalContent {
    type Writer = LocalWriter;

    fn info(&self, ns: &str, digest: &Digest) -> Result<Info> {
        Ok(self.record(ns, digest)?.info(digest.clone()))
    }

    fn update(&self, ns: &str, digest: &Digest, labels: LabelUpdate) -> Result<Info> {
        let key = db::key(&[ns, &digest.to_string()]);
        let record = self.inner.db.write(|tx| {
            let mut table = tx.open_table(CONTENT)?;
            let mut record: Record =
                db::get(&table, &key)?.ok_or_else(|| Error::ContentNotFound {
                    digest: digest.to_string(),
                })?;
            labels.apply(&mut record.labels);
            record.updated_at = SystemTime::now();
            db::put(&mut table, &key, &record)?;
            Ok(record)
        })?;
        Ok(record.info(digest.clone()))
    }

    fn list(&self, ns: &str, filters: &Filters) -> Result<Vec<Info>> {
        let tx = self.inner.db.read()?;
        let table = tx.open_table(CONTENT)?;
        let mut out = Vec::new();
        for (digest, record) in db::scan::<Record>(&table, &db::key(&[ns, ""]))? {
            let info = record.info(digest.parse()?);
            if filters.matches(&info) {
                out.push(info);
            }
        }
        Ok(out)
    }

    fn delete(&self, ns: &str, digest: &Digest) -> Result<()> {
        let name = digest.to_string();
        self.exclusive(|| {
            let others = self.inner.db.write(|tx| {
                let mut table = tx.open_table(CONTENT)?;
                if table.remove(db::key(&[ns, &name]).as_str())?.is_none() {
                    return Err(Error::ContentNotFound {
                        digest: name.clone(),
                    });
                }
                let suffix = format!("\0{name}");
                let mut held = false;
                for entry in table.iter()? {
                    held |= entry?.0.value().ends_with(&suffix);
                }
                Ok(held)
            })?;
            if !others {
                let path = self.blob_path(digest);
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io(path)(e));
                    }
                    _ => {}
                }
            }
            Ok(())
        })
    }

    fn open(&self, ns: &str, digest: &Digest) -> Result<Blob> {
        self.record(ns, digest)?;
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(Error::io(&path))?;
        let size = file.metadata().map_err(Error::io(&path))?.len();
        Ok(Blob { file, size })
    }

    fn status(&self, ns: &str, reference: &str) -> Result<Status> {
        db::check_id("ref", reference)?;
        let tx = self.inner.db.read()?;
        let table = tx.open_table(INGESTS)?;
        let record: IngestRecord =
            db::get(&table, &db::key(&[ns, reference]))?.ok_or_else(|| Error::IngestNotFound {
                reference: reference.to_owned(),
            })?;
        Ok(self.ingest_status(ns, reference, record))
    }

    fn list_statuses(&self, ns: &str, filters: &Filters) -> Result<Vec<Status>> {
        let tx = self.inner.db.read()?;
        let table = tx.open_table(INGESTS)?;
        Ok(db::scan::<IngestRecord>(&table, &db::key(&[ns, ""]))?
            .into_iter()
            .map(|(reference, record)| self.ingest_status(ns, &reference, record))
            .filter(|s| filters.matches(s))
            .collect())
    }

    fn writer(&self, ns: &str, request: WriteRequest) -> Result<LocalWriter> {
        let reference = request.reference.clone();
        db::check_id("ref", &reference)?;
        if let Some(lease) = &request.lease {
            db::check_id("lease", lease)?;
        }
        if let Some(expected) = &request.expected
            && self.record(ns, expected).is_ok()
        {
            return Err(Error::ContentExists {
                digest: expected.to_string(),
            });
        }
        let key = db::key(&[ns, &reference]);
        // Garbage collection must not remove the ingest's record or directory while it is set up.
        let _files = self
            .inner
            .files
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !self.active().insert(key.clone()) {
            return Err(Error::IngestLocked { reference });
        }
        let hold = HeldRef {
            store: self.clone(),
            key: key.clone(),
        };
        let record = self.inner.db.write(|tx| {
            let mut table = tx.open_table(INGESTS)?;
            let mut record = db::get::<IngestRecord>(&table, &key)?.unwrap_or(IngestRecord {
                started_at: SystemTime::now(),
                total: None,
                expected: None,
                lease: None,
            });
            record.total = request.total.or(record.total);
            record.expected = request.expected.clone().or(record.expected);
            if let Some(lease) = &request.lease {
                leases::hold(tx, ns, lease, &Resource::ingest(&reference))?;
                record.lease = Some(lease.clone());
            }
            db::put(&mut table, &key, &record)?;
            Ok(record)
        })?;

        let dir = self.ingest_dir(ns, &reference);
        fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let path = dir.join("data");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Error::io(&path))?;
        let algorithm = record
            .expected
            .as_ref()
            .map_or(Algorithm::Sha256, Digest::algorithm);
        let (hasher, offset) = rehash(&mut file, algorithm).map_err(Error::io(&path))?;
        Ok(LocalWriter {
            ns: ns.to_owned(),
            reference,
            dir,
            file,
            offset,
            hasher,
            record,
            updated_at: SystemTime::now(),
            hold,
            done: false,
        })
    }

    fn abort(&self, ns: &str, reference: &str) -> Result<()> {
        db::check_id("ref", reference)?;
        let key = db::key(&[ns, reference]);
        if self.active().contains(&key) {
            return Err(Error::IngestLocked {
                reference: reference.to_owned(),
            });
        }
        self.inner.db.write(|tx| {
            let mut table = tx.open_table(INGESTS)?;
            let record: IngestRecord =
                db::get(&table, &key)?.ok_or_else(|| Error::IngestNotFound {
                    reference: reference.to_owned(),
                })?;
            table.remove(key.as_str())?;
            if let Some(lease) = &record.lease {
                leases::release(tx, ns, lease, &Resource::ingest(reference))?;
            }
            Ok(())
        })?;
        let dir = self.ingest_dir(ns, reference);
        fs::remove_dir_all(&dir).map_err(Error::io(&dir))
    }
}

/// Reads `file` from the start through a new hasher; returns it and the length, positioned at
/// the end.
fn rehash(file: &mut File, algorithm: Algorithm) -> std::io::Result<(Hasher, u64)> {
    let mut hasher = algorithm.hasher();
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0; MAX_CHUNK];
    let mut len = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher, len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// Marks an ingest as held by a writer until dropped.
struct HeldRef {
    store: LocalContent,
    key: String,
}

impl Drop for HeldRef {
    fn drop(&mut self) {
        self.store.active().remove(&self.key);
    }
}

/// The writer of one ingest of [`LocalContent`].
pub struct LocalWriter {
    ns: String,
    reference: String,
    dir: PathBuf,
    file: File,
    offset: u64,
    hasher: Hasher,
    record: IngestRecord,
    updated_at: SystemTime,
    hold: HeldRef,
    done: bool,
}

impl LocalWriter {
    fn data_path(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Writer for LocalWriter {
    fn status(&self) -> Status {
        Status {
            reference: self.reference.clone(),
            offset: self.offset,
            total: self.record.total,
            expected: self.record.expected.clone(),
            started_at: self.record.started_at,
            updated_at: self.updated_at,
        }
    }

    fn digest(&self) -> Digest {
        self.hasher.digest()
    }

    fn expect(&mut self, total: Option<u64>, expected: Option<Digest>) -> Result<()> {
        if (total.is_none() || total == self.record.total)
            && (expected.is_none() || expected == self.record.expected)
        {
            return Ok(());
        }
        let mut record = self.record.clone();
        record.total = total.or(record.total);
        record.expected = expected.or(record.expected);
        let key = db::key(&[&self.ns, &self.reference]);
        self.hold
            .store
            .inner
            .db
            .write(|tx| db::put(&mut tx.open_table(INGESTS)?, &key, &record))?;
        if let Some(e) = &record.expected
            && e.algorithm() != self.hasher.digest().algorithm()
        {
            let path = self.data_path();
            (self.hasher, self.offset) =
                rehash(&mut self.file, e.algorithm()).map_err(Error::io(path))?;
        }
        self.record = record;
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if data.len() > MAX_CHUNK {
            return Err(Error::invalid(
                "data",
                format!("chunk of {} bytes exceeds {MAX_CHUNK}", data.len()),
            ));
        }
        let path = self.data_path();
        if offset == 0 && self.offset > 0 {
            self.file.set_len(0).map_err(Error::io(&path))?;
            self.file
                .seek(SeekFrom::Start(0))
                .map_err(Error::io(&path))?;
            self.hasher = self.hasher.digest().algorithm().hasher();
            self.offset = 0;
        }
        if offset != self.offset {
            return Err(Error::OffsetMismatch {
                reference: self.reference.clone(),
                offset,
                written: self.offset,
            });
        }
        let end = offset + data.len() as u64;
        if let Some(total) = self.record.total
            && end > total
        {
            return Err(Error::SizeMismatch {
                reference: self.reference.clone(),
                size: end,
                expected: total,
            });
        }
        self.file.write_all(data).map_err(Error::io(&path))?;
        self.hasher.update(data);
        self.offset = end;
        self.updated_at = SystemTime::now();
        Ok(())
    }

    fn commit(&mut self, labels: BTreeMap<String, String>) -> Result<Info> {
        if let Some(total) = self.record.total
            && total != self.offset
        {
            return Err(Error::SizeMismatch {
                reference: self.reference.clone(),
                size: self.offset,
                expected: total,
            });
        }
        let digest = self.hasher.digest();
        if let Some(expected) = &self.record.expected
            && *expected != digest
        {
            return Err(Error::DigestMismatch {
                reference: self.reference.clone(),
                digest: digest.to_string(),
                expected: expected.to_string(),
            });
        }
        let data = self.data_path();
        self.file.sync_all().map_err(Error::io(&data))?;

        let store = &self.hold.store;
        let _files = store
            .inner
            .files
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let blob = store.blob_path(&digest);
        if !blob.exists() {
            let parent = blob.parent().unwrap_or(&store.inner.root);
            fs::create_dir_all(parent).map_err(Error::io(parent))?;
            fs::rename(&data, &blob).map_err(Error::io(&blob))?;
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(Error::io(parent))?;
        }
        let now = SystemTime::now();
        let record = Record {
            size: self.offset,
            created_at: now,
            updated_at: now,
            labels,
        };
        let existed = store.inner.db.write(|tx| {
            let ns = self.ns.as_str();
            tx.open_table(INGESTS)?
                .remove(db::key(&[ns, &self.reference]).as_str())?;
            let mut content = tx.open_table(CONTENT)?;
            let key = db::key(&[ns, &digest.to_string()]);
            let existed = content.get(key.as_str())?.is_some();
            if !existed {
                db::put(&mut content, &key, &record)?;
            }
            if let Some(lease) = &self.record.lease {
                leases::release(tx, ns, lease, &Resource::ingest(&self.reference))?;
                match leases::hold(tx, ns, lease, &Resource::content(&digest)) {
                    Err(Error::LeaseNotFound { .. }) | Ok(()) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(existed)
        })?;
        self.done = true;
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove committed ingest");
        }
        if existed {
            return Err(Error::ContentExists {
                digest: digest.to_string(),
            });
        }
        Ok(record.info(digest))
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Make what was written durable, so a resumed write starts from it after a crash.
        if !self.done
            && let Err(e) = self.file.sync_data()
        {
            tracing::warn!(reference = %self.reference, error = %e, "cannot sync ingest data");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, LocalContent) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("meta.redb")).unwrap());
        let store = LocalContent::open(db, &dir.path().join("content")).unwrap();
        (dir, store)
    }

    fn request(reference: &str, data: Option<&[u8]>) -> WriteRequest {
        WriteRequest {
            reference: reference.into(),
            total: data.map(|d| d.len() as u64),
            expected: data.map(Digest::sha256),
            lease: None,
        }
    }

    #[test]
    fn write_resume_commit_read() {
        let (_d, s) = store();
        let data = vec![7u8; 3 * MAX_CHUNK + 5];
        let mut w = s.writer("ns", request("r1", Some(&data))).unwrap();
        w.write(0, &data[..MAX_CHUNK]).unwrap();
        // A second writer of the same ref is refused while the first holds it.
        assert!(matches!(
            s.writer("ns", request("r1", None)),
            Err(Error::IngestLocked { .. })
        ));
        drop(w);
        assert_eq!(s.status("ns", "r1").unwrap().offset, MAX_CHUNK as u64);
        let mut w = s.writer("ns", request("r1", None)).unwrap();
        assert_eq!(w.status().offset, MAX_CHUNK as u64);
        assert!(matches!(
            w.write(5, b"x"),
            Err(Error::OffsetMismatch { written, .. }) if written == MAX_CHUNK as u64
        ));
        for (i, chunk) in data.chunks(MAX_CHUNK).enumerate().skip(1) {
            w.write((i * MAX_CHUNK) as u64, chunk).unwrap();
        }
        let info = w
            .commit(BTreeMap::from([("a".into(), "b".into())]))
            .unwrap();
        assert_eq!(info.digest, Digest::sha256(&data));
        assert_eq!(info.size, data.len() as u64);
        assert!(s.status("ns", "r1").is_err());
        assert!(s.info("other", &info.digest).is_err());
        let blob = s.open("ns", &info.digest).unwrap();
        assert_eq!(blob.size, data.len() as u64);
        assert_eq!(fs::read(s.blob_path(&info.digest)).unwrap(), data);
        // Writing it again answers AlreadyExists up front.
        assert!(matches!(
            s.writer("ns", request("r2", Some(&data))),
            Err(Error::ContentExists { .. })
        ));
    }

    #[test]
    fn mismatches_commit_nothing() {
        let (_d, s) = store();
        let mut req = request("r", Some(b"hello"));
        let mut w = s.writer("ns", req.clone()).unwrap();
        assert!(matches!(
            w.write(0, b"hello!"),
            Err(Error::SizeMismatch { .. })
        ));
        w.write(0, b"hell").unwrap();
        assert!(matches!(
            w.commit(BTreeMap::new()),
            Err(Error::SizeMismatch { .. })
        ));
        w.write(4, b"O").unwrap();
        assert!(matches!(
            w.commit(BTreeMap::new()),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(s.list("ns", &Filters::default()).unwrap().is_empty());
        assert_eq!(s.status("ns", "r").unwrap().offset, 5);
        // Restart from offset 0 fixes it.
        w.write(0, b"hello").unwrap();
        w.commit(BTreeMap::new()).unwrap();
        drop(w);
        // sha512 expectations are honoured.
        let mut h = Algorithm::Sha512.hasher();
        h.update(b"abc");
        req.reference = "r512".into();
        req.total = Some(3);
        req.expected = Some(h.digest());
        let mut w = s.writer("ns", req).unwrap();
        w.write(0, b"abc").unwrap();
        assert_eq!(w.commit(BTreeMap::new()).unwrap().digest, h.digest());
    }

    #[test]
    fn namespaces_share_data_and_delete_removes_last_copy() {
        let (_d, s) = store();
        let data = b"shared";
        for ns in ["a", "b"] {
            let mut w = s.writer(ns, request("r", Some(data))).unwrap();
            w.write(0, data).unwrap();
            w.commit(BTreeMap::new()).unwrap();
        }
        let d = Digest::sha256(data);
        s.delete("a", &d).unwrap();
        assert!(s.blob_path(&d).exists());
        assert!(matches!(
            s.delete("a", &d),
            Err(Error::ContentNotFound { .. })
        ));
        s.delete("b", &d).unwrap();
        assert!(!s.blob_path(&d).exists());
    }

    #[test]
    fn labels_and_filters() {
        let (_d, s) = store();
        let mut w = s.writer("ns", request("r", Some(b"x"))).unwrap();
        w.write(0, b"x").unwrap();
        let d = w
            .commit(BTreeMap::from([("k".into(), "v".into())]))
            .unwrap()
            .digest;
        let update = LabelUpdate::from_paths(
            BTreeMap::from([("n".into(), "1".into())]),
            &["labels.n".into(), "labels.k".into()],
        )
        .unwrap();
        let info = s.update("ns", &d, update).unwrap();
        assert_eq!(info.labels, BTreeMap::from([("n".into(), "1".into())]));
        assert!(LabelUpdate::from_paths(BTreeMap::new(), &["size".into()]).is_err());
        let f = Filters::parse(&["labels.n==1".into()]).unwrap();
        assert_eq!(s.list("ns", &f).unwrap().len(), 1);
        let f = Filters::parse(&["labels.n==2".into()]).unwrap();
        assert!(s.list("ns", &f).unwrap().is_empty());
    }

    #[test]
    fn abort_removes_the_ingest() {
        let (_d, s) = store();
        let mut w = s.writer("ns", request("r", None)).unwrap();
        w.write(0, b"partial").unwrap();
        assert!(matches!(
            s.abort("ns", "r"),
            Err(Error::IngestLocked { .. })
        ));
        drop(w);
        let f = Filters::parse(&["ref~=^r$".into()]).unwrap();
        assert_eq!(s.list_statuses("ns", &f).unwrap().len(), 1);
        s.abort("ns", "r").unwrap();
        assert!(matches!(
            s.status("ns", "r"),
            Err(Error::IngestNotFound { .. })
        ));
        assert!(matches!(
            s.abort("ns", "r"),
            Err(Error::IngestNotFound { .. })
        ));
        assert_eq!(
            fs::read_dir(s.inner.root.join("ingest")).unwrap().count(),
            0
        );
    }
}

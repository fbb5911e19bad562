//! The metadata store: snapshot records in a redb database, and the writer that commits them.
//!
//! Tables (keys are per namespace, like containerd's):
//!
//! - `snapshots`: `(namespace, key or name)` → JSON [`Record`].
//! - `children`: `(namespace, parent, child)` → `()`, so "has children?" is one range probe.
//! - `counters`: `"next_id"` → the next directory id (ids are never reused).
//!
//! All writes go through [`Writer`], one thread that groups the operations submitted while it
//! was committing into the next transaction (group commit): each operation still commits or
//! not as a whole, but concurrent callers share one durable fsync. An operation checks
//! everything before it writes; an error from the database itself aborts its whole group,
//! whose operations then all fail and have their directory changes undone.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, db};
use crate::snapshotter::{Info, Kind, Labels, Usage};

const SNAPSHOTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("children");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// Most operations one transaction groups.
const MAX_GROUP: usize = 256;

/// One snapshot as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Directory id: the snapshot's layer is `snapshots/<id>`.
    pub id: u64,
    pub kind: Kind,
    pub parent: Option<String>,
    /// Ids of the ancestors, nearest first (committed snapshots never change, so this stays
    /// true for as long as the record lives).
    pub chain: Vec<u64>,
    pub labels: Labels,
    /// Unix nanoseconds.
    pub created: u64,
    pub updated: u64,
    /// Cached at commit.
    pub usage: Option<Usage>,
}

impl Record {
    pub fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_owned(),
            parent: self.parent.clone(),
            kind: self.kind,
            created: from_nanos(self.created),
            updated: from_nanos(self.updated),
            labels: self.labels.clone(),
        }
    }
}

/// Now, in Unix nanoseconds.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

fn from_nanos(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Opens (creating if needed) the database at `path`, with every table present.
pub(crate) fn open(path: &Path) -> Result<Database> {
    let database = Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::DbInUse {
            path: path.to_owned(),
        },
        other => db(other),
    })?;
    let txn = database.begin_write().map_err(db)?;
    {
        txn.open_table(SNAPSHOTS).map_err(db)?;
        txn.open_table(CHILDREN).map_err(db)?;
        txn.open_table(COUNTERS).map_err(db)?;
    }
    txn.commit().map_err(db)?;
    Ok(database)
}

/// Reads the committed state.
pub(crate) struct Reader(ReadTransaction);

impl Reader {
    pub fn begin(database: &Database) -> Result<Reader> {
        Ok(Reader(database.begin_read().map_err(db)?))
    }

    pub fn get(&self, namespace: &str, key: &str) -> Result<Option<Record>> {
        let table = self.0.open_table(SNAPSHOTS).map_err(db)?;
        match table.get((namespace, key)).map_err(db)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Records of a namespace, by name.
    pub fn list(&self, namespace: &str) -> Result<Vec<(String, Record)>> {
        let table = self.0.open_table(SNAPSHOTS).map_err(db)?;
        let mut out = Vec::new();
        for item in table.range((namespace, "")..).map_err(db)? {
            let (k, v) = item.map_err(db)?;
            let (ns, name) = k.value();
            if ns != namespace {
                break;
            }
            out.push((name.to_owned(), decode(name, v.value())?));
        }
        Ok(out)
    }

    /// The directory ids of every record in every namespace.
    pub fn ids(&self) -> Result<HashSet<u64>> {
        all_ids(&self.0.open_table(SNAPSHOTS).map_err(db)?)
    }
}

fn all_ids(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
) -> Result<HashSet<u64>> {
    let mut ids = HashSet::new();
    for item in table.iter().map_err(db)? {
        let (k, v) = item.map_err(db)?;
        ids.insert(decode(k.value().1, v.value())?.id);
    }
    Ok(ids)
}

/// One operation's view of the group transaction it runs in.
pub(crate) struct Batch<'t> {
    txn: &'t WriteTransaction,
    undo: Vec<Box<dyn FnOnce() + Send>>,
}

impl Batch<'_> {
    pub fn get(&self, namespace: &str, key: &str) -> Result<Option<Record>> {
        let table = self.txn.open_table(SNAPSHOTS).map_err(db)?;
        match table.get((namespace, key)).map_err(db)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn put(&self, namespace: &str, key: &str, record: &Record) -> Result<()> {
        let bytes = serde_json::to_vec(record).map_err(|e| Error::Corrupt {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        let mut table = self.txn.open_table(SNAPSHOTS).map_err(db)?;
        table
            .insert((namespace, key), bytes.as_slice())
            .map_err(db)?;
        Ok(())
    }

    pub fn delete(&self, namespace: &str, key: &str) -> Result<()> {
        let mut table = self.txn.open_table(SNAPSHOTS).map_err(db)?;
        table.remove((namespace, key)).map_err(db)?;
        Ok(())
    }

    /// Records `child` as a child of `parent`.
    pub fn link(&self, namespace: &str, parent: &str, child: &str) -> Result<()> {
        let mut table = self.txn.open_table(CHILDREN).map_err(db)?;
        table.insert((namespace, parent, child), ()).map_err(db)?;
        Ok(())
    }

    pub fn unlink(&self, namespace: &str, parent: &str, child: &str) -> Result<()> {
        let mut table = self.txn.open_table(CHILDREN).map_err(db)?;
        table.remove((namespace, parent, child)).map_err(db)?;
        Ok(())
    }

    /// The number of children of `parent` and the first one's name.
    pub fn children(&self, namespace: &str, parent: &str) -> Result<(usize, Option<String>)> {
        let table = self.txn.open_table(CHILDREN).map_err(db)?;
        let (mut count, mut first) = (0, None);
        for item in table.range((namespace, parent, "")..).map_err(db)? {
            let (k, _) = item.map_err(db)?;
            let (ns, p, child) = k.value();
            if ns != namespace || p != parent {
                break;
            }
            count += 1;
            first.get_or_insert_with(|| child.to_owned());
        }
        Ok((count, first))
    }

    /// A fresh directory id.
    pub fn next_id(&self) -> Result<u64> {
        let mut table = self.txn.open_table(COUNTERS).map_err(db)?;
        let id = table
            .get("next_id")
            .map_err(db)?
            .map(|v| v.value())
            .unwrap_or(1);
        table.insert("next_id", id + 1).map_err(db)?;
        Ok(id)
    }

    /// The directory ids of every record in every namespace.
    pub fn ids(&self) -> Result<HashSet<u64>> {
        all_ids(&self.txn.open_table(SNAPSHOTS).map_err(db)?)
    }

    /// Registers how to take back a directory change if the group does not commit.
    pub fn on_abort(&mut self, undo: impl FnOnce() + Send + 'static) {
        self.undo.push(Box::new(undo));
    }
}

/// Delivers one operation's result once its group's fate is known.
type Delivery = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
/// One operation: runs in the group's transaction, returns how to deliver its result.
type Job = Box<dyn FnOnce(&mut Batch<'_>) -> (Delivery, bool) + Send>;

/// The single writer of the database (see the module documentation).
pub(crate) struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(database: Arc<Database>) -> Result<Writer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("snapshots-writer".into())
            .spawn(move || run(&database, &queue))
            .map_err(Error::io("start metadata writer thread", ""))?;
        Ok(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `op` in the next group transaction and returns its result once that committed.
    pub fn submit<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Batch<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |batch| {
            let result = op(batch);
            // A database error leaves the transaction unusable: the group must not commit.
            let poisoned = matches!(result, Err(Error::Db(_)));
            let deliver: Delivery = Box::new(move |outcome| {
                let _ = reply.send(match (outcome, result) {
                    (Ok(()), result) => result,
                    (Err(_), Err(e)) => Err(e),
                    (Err(reason), Ok(_)) => Err(Error::CommitFailed { reason }),
                });
            });
            (deliver, poisoned)
        });
        let jobs = self.jobs.as_ref().ok_or(Error::WriterGone)?;
        jobs.send(job).map_err(|_| Error::WriterGone)?;
        answer.recv().map_err(|_| Error::WriterGone)?
    }
}

impl Drop for Writer {
    /// Lets queued operations finish, then closes the database (so it can be opened again).
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(database: &Database, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let txn = match database.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                let reason = e.to_string();
                // Dropping a job drops its reply channel: the caller sees the writer gone.
                tracing::error!(error = %reason, "cannot begin a metadata transaction");
                drop(group);
                continue;
            }
        };
        let mut batch = Batch {
            txn: &txn,
            undo: Vec::new(),
        };
        let mut deliveries = Vec::with_capacity(group.len());
        let mut poisoned = false;
        for job in group {
            match std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut batch))) {
                Ok((deliver, bad)) => {
                    poisoned |= bad;
                    deliveries.push(deliver);
                }
                Err(_) => {
                    tracing::error!("a metadata operation panicked: aborting its group");
                    poisoned = true;
                }
            }
        }
        let undo = std::mem::take(&mut batch.undo);
        let outcome = if poisoned {
            let _ = txn.abort();
            Err("another operation of the same transaction failed".to_owned())
        } else {
            txn.commit().map_err(|e| e.to_string())
        };
        if outcome.is_err() {
            for u in undo.into_iter().rev() {
                u();
            }
        }
        for deliver in deliveries {
            deliver(outcome.clone());
        }
    }
}

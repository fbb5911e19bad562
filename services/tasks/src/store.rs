//! The tasks service's metadata database (`<tasks root>/meta.redb`): container records with a
//! per-namespace name index, and per-container task records (what recovery needs to find a
//! task's shim again, and the restart bookkeeping). Every write is one transaction.
//!
//! Containers are stored as their protobuf encoding (the record is the API's message, with
//! server-set times); task records as JSON of [`TaskRecord`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_api::berth::containers::v1::Container;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const CONTAINERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("containers");
const NAMES: TableDefinition<(&str, &str), &str> = TableDefinition::new("container_names");
const TASKS: TableDefinition<(&str, &str), &str> = TableDefinition::new("tasks");

/// How a process ended, as the service keeps it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exit {
    /// Exit code as a shell reports it (128 + signal when killed; 255 when unknown).
    pub code: u32,
    /// Signal that killed the process, 0 if none.
    pub signal: u32,
    /// When, in nanoseconds since the epoch.
    pub at_ns: i64,
    /// The OOM killer acted in the container's cgroup.
    pub oom_killed: bool,
}

/// An exec process of a live task, as far as recovery needs it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecRecord {
    /// Exec id.
    pub exec_id: String,
    /// Has a stdin FIFO.
    pub stdin: bool,
    /// Runs on a pty.
    pub terminal: bool,
}

/// A task that exists (its shim runs, or ran when the service last saw it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiveTask {
    /// The shim's directory (socket, pid, runtime state).
    pub shim_dir: PathBuf,
    /// The task's bundle directory.
    pub bundle: PathBuf,
    /// Runtime the shim runs the container with.
    pub runtime: String,
    /// The init process has a stdin FIFO.
    pub stdin: bool,
    /// The init process runs on a pty.
    pub terminal: bool,
    /// Sequence number of the last shim event handled.
    pub event_seq: u64,
    /// Networks the container was attached to.
    pub networks: Vec<String>,
    /// The pinned network namespace the task created, if any.
    pub netns: Option<String>,
    /// When the init process was started (ns since the epoch); None before Start.
    pub started_at_ns: Option<i64>,
    /// Exec processes created and not deleted.
    pub execs: Vec<ExecRecord>,
}

/// Per-container task bookkeeping; lives as long as the container record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The current task, if there is one.
    pub live: Option<LiveTask>,
    /// Restarts made by the restart policy since the last user start.
    pub restart_count: u32,
    /// The user stopped (killed) the container: policies do not restart it.
    pub stopped_by_user: bool,
    /// How the last task's init process ended.
    pub last_exit: Option<Exit>,
    /// Why the last exit status is not the process's own (e.g. its shim disappeared).
    pub exit_reason: Option<String>,
}

/// The database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

fn decode_container(ns: &str, id: &str, bytes: &[u8]) -> Result<Container> {
    Container::decode(bytes).map_err(|e| Error::Corrupt {
        key: format!("containers/{ns}/{id}"),
        reason: e.to_string(),
    })
}

fn decode_task(ns: &str, id: &str, text: &str) -> Result<TaskRecord> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt {
        key: format!("tasks/{ns}/{id}"),
        reason: e.to_string(),
    })
}

fn encode_task(record: &TaskRecord) -> String {
    // A struct of plain fields always serializes.
    serde_json::to_string(record).unwrap_or_default()
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(CONTAINERS)?;
        txn.open_table(NAMES)?;
        txn.open_table(TASKS)?;
        txn.commit()?;
        Ok(Store { db: Arc::new(db) })
    }

    /// The database handle, for modules that keep their own tables in it.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// One container.
    pub fn container(&self, ns: &str, id: &str) -> Result<Option<Container>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONTAINERS)?;
        match table.get((ns, id))? {
            Some(v) => Ok(Some(decode_container(ns, id, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every container of a namespace, by id.
    pub fn containers(&self, ns: &str) -> Result<Vec<Container>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONTAINERS)?;
        let mut out = Vec::new();
        for entry in table.range((ns, "")..)? {
            let (k, v) = entry?;
            let (kns, id) = k.value();
            if kns != ns {
                break;
            }
            out.push(decode_container(ns, id, v.value())?);
        }
        Ok(out)
    }

    /// Ids of a namespace's containers that start with `prefix`.
    pub fn ids_with_prefix(&self, ns: &str, prefix: &str) -> Result<Vec<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONTAINERS)?;
        let mut out = Vec::new();
        for entry in table.range((ns, prefix)..)? {
            let (k, _) = entry?;
            let (kns, id) = k.value();
            if kns != ns || !id.starts_with(prefix) {
                break;
            }
            out.push(id.to_owned());
        }
        Ok(out)
    }

    /// Id of the container named `name`.
    pub fn id_by_name(&self, ns: &str, name: &str) -> Result<Option<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(NAMES)?;
        Ok(table.get((ns, name))?.map(|v| v.value().to_owned()))
    }

    /// Records a new container (id and name must be free) with an empty task record.
    pub fn create_container(&self, ns: &str, c: &Container) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut containers = txn.open_table(CONTAINERS)?;
            if containers.get((ns, c.id.as_str()))?.is_some() {
                return Err(Error::ContainerExists { id: c.id.clone() });
            }
            let mut names = txn.open_table(NAMES)?;
            if !c.name.is_empty() {
                if let Some(holder) = names.get((ns, c.name.as_str()))? {
                    return Err(Error::NameInUse {
                        name: c.name.clone(),
                        holder: holder.value().to_owned(),
                    });
                }
                names.insert((ns, c.name.as_str()), c.id.as_str())?;
            }
            containers.insert((ns, c.id.as_str()), c.encode_to_vec().as_slice())?;
            let mut tasks = txn.open_table(TASKS)?;
            tasks.insert(
                (ns, c.id.as_str()),
                encode_task(&TaskRecord::default()).as_str(),
            )?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Replaces a container record, moving its name index entry if the name changed.
    pub fn update_container(&self, ns: &str, c: &Container) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut containers = txn.open_table(CONTAINERS)?;
            let old = match containers.get((ns, c.id.as_str()))? {
                Some(v) => decode_container(ns, &c.id, v.value())?,
                None => return Err(Error::ContainerNotFound { id: c.id.clone() }),
            };
            if old.name != c.name {
                let mut names = txn.open_table(NAMES)?;
                if !c.name.is_empty() {
                    if let Some(holder) = names.get((ns, c.name.as_str()))? {
                        return Err(Error::NameInUse {
                            name: c.name.clone(),
                            holder: holder.value().to_owned(),
                        });
                    }
                    names.insert((ns, c.name.as_str()), c.id.as_str())?;
                }
                if !old.name.is_empty() {
                    names.remove((ns, old.name.as_str()))?;
                }
            }
            containers.insert((ns, c.id.as_str()), c.encode_to_vec().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes a container record, its name and its task record.
    pub fn delete_container(&self, ns: &str, id: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut containers = txn.open_table(CONTAINERS)?;
            let old = match containers.remove((ns, id))? {
                Some(v) => decode_container(ns, id, v.value())?,
                None => return Err(Error::ContainerNotFound { id: id.to_owned() }),
            };
            if !old.name.is_empty() {
                txn.open_table(NAMES)?.remove((ns, old.name.as_str()))?;
            }
            txn.open_table(TASKS)?.remove((ns, id))?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The task record of a container (empty if the container has none).
    pub fn task(&self, ns: &str, id: &str) -> Result<TaskRecord> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TASKS)?;
        match table.get((ns, id))? {
            Some(v) => decode_task(ns, id, v.value()),
            None => Ok(TaskRecord::default()),
        }
    }

    /// Changes the task record of an existing container in one transaction; returns the new
    /// record. NotFound if the container is gone.
    pub fn update_task(
        &self,
        ns: &str,
        id: &str,
        change: impl FnOnce(&mut TaskRecord),
    ) -> Result<TaskRecord> {
        let txn = self.db.begin_write()?;
        let record = {
            let mut table = txn.open_table(TASKS)?;
            let mut record = match table.get((ns, id))? {
                Some(v) => decode_task(ns, id, v.value())?,
                None => return Err(Error::ContainerNotFound { id: id.to_owned() }),
            };
            change(&mut record);
            table.insert((ns, id), encode_task(&record).as_str())?;
            record
        };
        txn.commit()?;
        Ok(record)
    }

    /// Records `seq` as the last shim event handled for the live tasks `ids`, in one
    /// transaction that is not synced to disk on its own (the next durable commit persists
    /// it): after a crash, recovery may replay a few events the shim still keeps, which
    /// handling them again tolerates.
    pub fn record_event_seq(&self, ns: &str, ids: &[String], seq: u64) -> Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)
            .map_err(|e| Error::Database(e.into()))?;
        {
            let mut table = txn.open_table(TASKS)?;
            for id in ids {
                let found = table
                    .get((ns, id.as_str()))?
                    .map(|v| decode_task(ns, id, v.value()))
                    .transpose()?;
                if let Some(mut record) = found
                    && let Some(live) = &mut record.live
                {
                    live.event_seq = seq;
                    table.insert((ns, id.as_str()), encode_task(&record).as_str())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every task record with a live task, in every namespace.
    pub fn live_tasks(&self) -> Result<Vec<(String, String, TaskRecord)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TASKS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (ns, id) = k.value();
            let record = decode_task(ns, id, v.value())?;
            if record.live.is_some() {
                out.push((ns.to_owned(), id.to_owned(), record));
            }
        }
        Ok(out)
    }
}

//! The pod sandbox records in the cri service's redb database (`<root>/cri/meta.redb`): table
//! `sandboxes` (id → JSON of [`Sandbox`]) and `sandbox_names` (unique name → id), written
//! together in one transaction so a name never outlives its record.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use berth_api::Service;
use berth_api::client::Channel;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tonic::Status;

use super::record::Sandbox;

const SANDBOXES: TableDefinition<&str, &str> = TableDefinition::new("sandboxes");
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("sandbox_names");

fn db_err(e: impl Into<redb::Error>) -> Status {
    Status::internal(format!("cri database: {}", e.into()))
}

fn decode(id: &str, json: &str) -> Result<Sandbox, Status> {
    serde_json::from_str(json)
        .map_err(|e| Status::internal(format!("cri database: sandbox {id}: {e}")))
}

/// The stored pod sandboxes, and the in-memory coordination of the RPCs that change them:
/// names being reserved by a RunPodSandbox in flight, one lock per pod for Stop and Remove,
/// the pod CIDR the kubelet gave, and a channel to the network service.
pub struct Sandboxes {
    db: Arc<Database>,
    reserved: Mutex<HashSet<String>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pod_cidr: Mutex<String>,
    network: tokio::sync::OnceCell<Channel>,
}

/// A unique name held by a RunPodSandbox in flight; freed when dropped.
pub struct Reservation<'a> {
    sandboxes: &'a Sandboxes,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Ok(mut names) = self.sandboxes.reserved.lock() {
            names.remove(&self.name);
        }
    }
}

impl Sandboxes {
    /// The store over `db`, creating its tables.
    pub fn open(db: Arc<Database>) -> Result<Sandboxes, Status> {
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(SANDBOXES).map_err(db_err)?;
        txn.open_table(NAMES).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Sandboxes {
            db,
            reserved: Mutex::default(),
            locks: Mutex::default(),
            pod_cidr: Mutex::default(),
            network: tokio::sync::OnceCell::new(),
        })
    }

    /// A channel to `service` for the pod RPCs (made on first use; it reconnects by itself).
    pub async fn channel(&self, cri: &crate::Cri, service: Service) -> Result<Channel, Status> {
        match service {
            Service::Network => self
                .network
                .get_or_try_init(|| cri.connect(service))
                .await
                .cloned(),
            _ => cri.connect(service).await,
        }
    }

    /// Reserves the unique `name` for a RunPodSandbox; AlreadyExists (naming the holder) if a
    /// stored pod or a RunPodSandbox in flight has it.
    pub fn reserve(&self, name: &str) -> Result<Reservation<'_>, Status> {
        let mut names = self
            .reserved
            .lock()
            .map_err(|_| Status::internal("sandbox name reservations poisoned"))?;
        if names.contains(name) {
            return Err(already_exists(name, "a pod sandbox being created"));
        }
        if let Some(holder) = self.id_of_name(name)? {
            return Err(already_exists(name, &holder));
        }
        names.insert(name.to_owned());
        Ok(Reservation {
            sandboxes: self,
            name: name.to_owned(),
        })
    }

    /// Holds pod `id`'s lock (Stop and Remove of one pod run one at a time).
    pub async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = match self.locks.lock() {
            Ok(mut locks) => locks.entry(id.to_owned()).or_default().clone(),
            Err(_) => Arc::default(),
        };
        lock.lock_owned().await
    }

    /// Drops pod `id`'s lock after its removal.
    pub fn forget_lock(&self, id: &str) {
        if let Ok(mut locks) = self.locks.lock() {
            locks.remove(id);
        }
    }

    /// The pod CIDR last given by UpdateRuntimeConfig ("" if none).
    pub fn pod_cidr(&self) -> String {
        self.pod_cidr.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Records the pod CIDR given by UpdateRuntimeConfig.
    pub fn set_pod_cidr(&self, cidr: &str) {
        if let Ok(mut c) = self.pod_cidr.lock() {
            *c = cidr.to_owned();
        }
    }

    /// The sandbox whose id is `id` or starts with it (a unique prefix). NotFound names it;
    /// an ambiguous prefix is InvalidArgument; an empty one is InvalidArgument.
    pub fn get(&self, id: &str) -> Result<Sandbox, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("pod sandbox id is empty"));
        }
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SANDBOXES).map_err(db_err)?;
        let mut found = None;
        for entry in table.range(id..).map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            if !key.value().starts_with(id) {
                break;
            }
            if found.is_some() {
                return Err(Status::invalid_argument(format!(
                    "pod sandbox id prefix {id:?} is ambiguous: give more digits"
                )));
            }
            found = Some(decode(key.value(), value.value())?);
        }
        found.ok_or_else(|| Status::not_found(format!("pod sandbox {id:?} not found")))
    }

    /// The id of the sandbox holding the unique `name` (see [`Sandbox::name`]).
    pub fn id_of_name(&self, name: &str) -> Result<Option<String>, Status> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(NAMES).map_err(db_err)?;
        Ok(table
            .get(name)
            .map_err(db_err)?
            .map(|v| v.value().to_owned()))
    }

    /// Every sandbox, by id.
    pub fn list(&self) -> Result<Vec<Sandbox>, Status> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SANDBOXES).map_err(db_err)?;
        let mut all = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            all.push(decode(key.value(), value.value())?);
        }
        Ok(all)
    }

    /// Inserts a new sandbox; AlreadyExists (naming the holder) if its name is taken.
    pub fn create(&self, sandbox: &Sandbox) -> Result<(), Status> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut names = txn.open_table(NAMES).map_err(db_err)?;
            let name = sandbox.name();
            if let Some(holder) = names.get(name.as_str()).map_err(db_err)? {
                return Err(already_exists(&name, holder.value()));
            }
            names
                .insert(name.as_str(), sandbox.id.as_str())
                .map_err(db_err)?;
            let json = serde_json::to_string(sandbox)
                .map_err(|e| Status::internal(format!("encode sandbox: {e}")))?;
            txn.open_table(SANDBOXES)
                .map_err(db_err)?
                .insert(sandbox.id.as_str(), json.as_str())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Replaces a stored sandbox (same id and name).
    pub fn update(&self, sandbox: &Sandbox) -> Result<(), Status> {
        let json = serde_json::to_string(sandbox)
            .map_err(|e| Status::internal(format!("encode sandbox: {e}")))?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(SANDBOXES).map_err(db_err)?;
            if table.get(sandbox.id.as_str()).map_err(db_err)?.is_none() {
                return Err(Status::not_found(format!(
                    "pod sandbox {:?} not found",
                    sandbox.id
                )));
            }
            table
                .insert(sandbox.id.as_str(), json.as_str())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Deletes a sandbox and frees its name; nothing if it is not there.
    pub fn delete(&self, sandbox: &Sandbox) -> Result<(), Status> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            txn.open_table(SANDBOXES)
                .map_err(db_err)?
                .remove(sandbox.id.as_str())
                .map_err(db_err)?;
            let mut names = txn.open_table(NAMES).map_err(db_err)?;
            let name = sandbox.name();
            let holder = names
                .get(name.as_str())
                .map_err(db_err)?
                .map(|v| v.value().to_owned());
            if holder.as_deref() == Some(sandbox.id.as_str()) {
                names.remove(name.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }
}

/// AlreadyExists for a name held by sandbox `holder`, worded as containerd does.
pub fn already_exists(name: &str, holder: &str) -> Status {
    Status::already_exists(format!(
        "failed to reserve sandbox name {name:?}: name {name:?} is reserved for {holder:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::record::Metadata;
    use tonic::Code;

    fn store() -> Sandboxes {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        Sandboxes::open(Arc::new(db)).unwrap()
    }

    fn pod(id: &str, name: &str) -> Sandbox {
        Sandbox {
            id: id.to_owned(),
            metadata: Metadata {
                name: name.to_owned(),
                uid: "u".into(),
                namespace: "ns".into(),
                attempt: 0,
            },
            ..Default::default()
        }
    }

    #[test]
    fn get_by_unique_prefix_and_names_are_unique() {
        let s = store();
        s.create(&pod("abc1", "a")).unwrap();
        s.create(&pod("abd2", "b")).unwrap();
        assert_eq!(s.get("abc").unwrap().id, "abc1");
        assert_eq!(s.get("abd2").unwrap().id, "abd2");
        assert_eq!(s.get("ab").unwrap_err().code(), Code::InvalidArgument);
        let missing = s.get("zz").unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        assert!(missing.message().contains("zz"));
        let dup = s.create(&pod("xyz", "a")).unwrap_err();
        assert_eq!(dup.code(), Code::AlreadyExists);
        assert!(dup.message().contains("abc1"), "{}", dup.message());
        assert!(s.reserve("a_ns_u_0").is_err());
        let held = s.reserve("c_ns_u_0").unwrap();
        assert_eq!(
            s.reserve("c_ns_u_0").err().map(|e| e.code()),
            Some(Code::AlreadyExists)
        );
        drop(held);
        assert!(s.reserve("c_ns_u_0").is_ok());
        s.delete(&pod("abc1", "a")).unwrap();
        assert_eq!(s.list().unwrap().len(), 1);
        s.create(&pod("xyz", "a")).unwrap();
        assert_eq!(s.get("x").unwrap().metadata.name, "a");
    }
}

//! Named and anonymous volumes: directories under `<tasks root>/volumes/<ns>/<name>/_data`
//! that outlive containers, their metadata in the tasks database (own tables, one transaction
//! per write), the berth.volumes.v1 service ([`service`]), and the [`VolumeManager`] calls the
//! tasks service makes at task Create ([`VolumeManager::prepare_mounts`]: `volume` mounts of a
//! spec become bind mounts) and when a container record is deleted ([`VolumeManager::release`]).
//!
//! The manager's methods block (database commits, directory copies): async callers run them
//! with `tokio::task::spawn_blocking`.

mod fill;
pub mod service;
mod store;

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_api::berth::volumes::v1::{Volume, VolumeUsage};
use berth_api::filters::Filters;
use oci_spec::runtime::Spec;
use redb::{Database, ReadableDatabase, ReadableTable};

use store::{ANONYMOUS, Record, USERS, VOLUMES};

/// The only volume driver.
pub const LOCAL_DRIVER: &str = "local";

/// What can go wrong with volumes.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A name that is not a valid volume name.
    #[error("{0}")]
    InvalidName(String),
    /// Another bad request.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The request field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No such volume.
    #[error("volume {name} not found")]
    NotFound {
        /// The name.
        name: String,
    },
    /// The name is taken by a volume with other settings.
    #[error("volume {name} already exists with a different {what}")]
    Exists {
        /// The name.
        name: String,
        /// What differs (driver, options).
        what: &'static str,
    },
    /// The volume is mounted by containers.
    #[error(
        "volume {name} is in use by container {container} (remove the container first, or force)"
    )]
    InUse {
        /// The name.
        name: String,
        /// One container that uses it.
        container: String,
    },
    /// A stored record does not decode.
    #[error("corrupt volume record {key}: {reason}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The decode error.
        reason: String,
    },
    /// The database failed.
    #[error("volume database: {0}")]
    Database(#[from] redb::Error),
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

macro_rules! database_error {
    ($($t:ty),*) => {$(
        impl From<$t> for VolumeError {
            fn from(e: $t) -> VolumeError {
                VolumeError::Database(e.into())
            }
        }
    )*};
}
database_error!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<VolumeError> for tonic::Status {
    fn from(e: VolumeError) -> tonic::Status {
        let message = e.to_string();
        match e {
            VolumeError::InvalidName(_) | VolumeError::Invalid { .. } => {
                tonic::Status::invalid_argument(message)
            }
            VolumeError::NotFound { .. } => tonic::Status::not_found(message),
            VolumeError::Exists { .. } => tonic::Status::already_exists(message),
            VolumeError::InUse { .. } => tonic::Status::failed_precondition(message),
            VolumeError::Corrupt { .. } | VolumeError::Database(_) | VolumeError::Io { .. } => {
                tonic::Status::internal(message)
            }
        }
    }
}

/// Result of volume operations.
pub type Result<T> = std::result::Result<T, VolumeError>;

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let path = path.to_owned();
    move |source| VolumeError::Io { op, path, source }
}

/// Checks a volume name the way Docker does: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn validate_name(name: &str) -> std::result::Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && name.len() >= 2 && name.len() <= 255 {
        Ok(())
    } else {
        Err(format!(
            "invalid volume name {name:?}: use 2 to 255 of [a-zA-Z0-9_.-], starting with a letter or digit"
        ))
    }
}

/// Settings of a volume to create.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Driver; empty = "local".
    pub driver: String,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Driver options (none are supported by the local driver yet).
    pub options: BTreeMap<String, String>,
}

/// Owns the volumes of every namespace.
pub struct VolumeManager {
    db: Arc<Database>,
    root: PathBuf,
    /// Serializes writers so that checks (in use? exists?) and the changes they allow do not
    /// interleave with directory creation and removal.
    lock: Mutex<()>,
}

impl VolumeManager {
    /// Opens the volumes kept in `db` with their data under `<tasks_root>/volumes`.
    pub fn new(db: Arc<Database>, tasks_root: &Path) -> Result<VolumeManager> {
        let root = tasks_root.join("volumes");
        std::fs::create_dir_all(&root).map_err(io("create", &root))?;
        let txn = db.begin_write()?;
        store::init(&txn)?;
        txn.commit()?;
        Ok(VolumeManager {
            db,
            root,
            lock: Mutex::new(()),
        })
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // The lock guards no data: a panic elsewhere leaves nothing inconsistent behind it.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dir(&self, ns: &str, name: &str) -> PathBuf {
        self.root.join(ns).join(name)
    }

    /// Host path of a volume's data.
    pub fn mountpoint(&self, ns: &str, name: &str) -> PathBuf {
        self.dir(ns, name).join("_data")
    }

    fn to_api(&self, ns: &str, name: &str, r: &Record, usage: Option<VolumeUsage>) -> Volume {
        let created = UNIX_EPOCH + std::time::Duration::from_nanos(r.created_at_ns.max(0) as u64);
        Volume {
            name: name.to_owned(),
            driver: r.driver.clone(),
            mountpoint: self.mountpoint(ns, name).to_string_lossy().into_owned(),
            labels: r.labels.clone().into_iter().collect(),
            options: r.options.clone().into_iter().collect(),
            created_at: Some(created.into()),
            scope: "local".into(),
            usage,
        }
    }

    /// Creates a volume (`name` empty = an anonymous volume with a generated name); creating
    /// an identical one again returns the existing volume.
    pub fn create(&self, ns: &str, name: &str, opts: CreateOptions) -> Result<Volume> {
        let driver = if opts.driver.is_empty() {
            LOCAL_DRIVER.to_owned()
        } else {
            opts.driver.clone()
        };
        if driver != LOCAL_DRIVER {
            return Err(VolumeError::Invalid {
                field: "driver",
                reason: format!("unsupported volume driver {driver:?}: only \"local\" exists"),
            });
        }
        if !opts.options.is_empty() {
            return Err(VolumeError::Invalid {
                field: "options",
                reason:
                    "the local driver takes no options yet (type, device and o are not supported)"
                        .into(),
            });
        }
        let (name, anonymous) = if name.is_empty() {
            (random_name()?, true)
        } else {
            validate_name(name).map_err(VolumeError::InvalidName)?;
            (name.to_owned(), false)
        };
        let _guard = self.guard();
        let txn = self.db.begin_write()?;
        let record = {
            let mut table = txn.open_table(VOLUMES)?;
            let existing = match table.get((ns, name.as_str()))? {
                Some(v) => Some(store::decode(ns, &name, v.value())?),
                None => None,
            };
            if let Some(existing) = existing {
                if existing.driver != driver {
                    return Err(VolumeError::Exists {
                        name,
                        what: "driver",
                    });
                }
                if existing.options != opts.options {
                    return Err(VolumeError::Exists {
                        name,
                        what: "options",
                    });
                }
                return Ok(self.to_api(ns, &name, &existing, None));
            }
            let record = Record {
                driver,
                labels: opts.labels,
                options: opts.options,
                created_at_ns: now_ns(),
                anonymous,
            };
            self.make_dir(ns, &name)?;
            table.insert((ns, name.as_str()), store::encode(&record).as_str())?;
            record
        };
        if let Err(e) = txn.commit() {
            self.remove_dir(ns, &name);
            return Err(e.into());
        }
        Ok(self.to_api(ns, &name, &record, None))
    }

    fn make_dir(&self, ns: &str, name: &str) -> Result<()> {
        let data = self.mountpoint(ns, name);
        // A leftover directory of a volume whose record is gone holds nothing anyone owns.
        let dir = self.dir(ns, name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
        }
        std::fs::create_dir_all(&data).map_err(io("create", &data))?;
        Ok(())
    }

    fn remove_dir(&self, ns: &str, name: &str) {
        let dir = self.dir(ns, name);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %dir.display(), error = %e, "cannot remove volume data");
        }
    }

    /// One volume, with its usage.
    pub fn inspect(&self, ns: &str, name: &str) -> Result<Volume> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(VOLUMES)?;
        let record = match table.get((ns, name))? {
            Some(v) => store::decode(ns, name, v.value())?,
            None => {
                return Err(VolumeError::NotFound {
                    name: name.to_owned(),
                });
            }
        };
        let users = store::users_of(&txn.open_table(USERS)?, ns, name)?;
        let usage = VolumeUsage {
            size: fill::disk_usage(&self.mountpoint(ns, name)) as i64,
            ref_count: users.len() as i64,
        };
        Ok(self.to_api(ns, name, &record, Some(usage)))
    }

    /// The volumes of `ns` matching `filters` (fields: name, driver, mountpoint, scope,
    /// labels.<key>, anonymous, dangling), with their usage when `usage` is set.
    pub fn list(&self, ns: &str, filters: &Filters, usage: bool) -> Result<Vec<Volume>> {
        Ok(self
            .matching(ns, filters)?
            .into_iter()
            .map(|(name, record, users)| {
                let u = usage.then(|| VolumeUsage {
                    size: fill::disk_usage(&self.mountpoint(ns, &name)) as i64,
                    ref_count: users as i64,
                });
                self.to_api(ns, &name, &record, u)
            })
            .collect())
    }

    /// (name, record, number of users) of the volumes of `ns` that match.
    fn matching(&self, ns: &str, filters: &Filters) -> Result<Vec<(String, Record, usize)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(VOLUMES)?;
        let users = txn.open_table(USERS)?;
        let mut out = Vec::new();
        for entry in table.range((ns, "")..)? {
            let (k, v) = entry?;
            let (kns, name) = k.value();
            if kns != ns {
                break;
            }
            let record = store::decode(ns, name, v.value())?;
            let count = store::users_of(&users, ns, name)?.len();
            let mountpoint = self.mountpoint(ns, name);
            let matches = filters.matches_with(|path| {
                match path
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .as_slice()
                {
                    ["name"] => Some(name.to_owned()),
                    ["driver"] => Some(record.driver.clone()),
                    ["scope"] => Some("local".into()),
                    ["mountpoint"] => Some(mountpoint.to_string_lossy().into_owned()),
                    ["anonymous"] => Some(record.anonymous.to_string()),
                    ["dangling"] => Some((count == 0).to_string()),
                    ["labels", key] => record.labels.get(*key).cloned(),
                    _ => None,
                }
            });
            if matches {
                out.push((name.to_owned(), record, count));
            }
        }
        Ok(out)
    }

    /// Removes a volume and its data; FailedPrecondition while a container uses it unless
    /// `force` (then the uses are forgotten too).
    pub fn remove(&self, ns: &str, name: &str, force: bool) -> Result<()> {
        let _guard = self.guard();
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(VOLUMES)?;
            if table.get((ns, name))?.is_none() {
                return Err(VolumeError::NotFound {
                    name: name.to_owned(),
                });
            }
            let mut users = txn.open_table(USERS)?;
            let using = store::users_of(&users, ns, name)?;
            if let Some(container) = using.first()
                && !force
            {
                return Err(VolumeError::InUse {
                    name: name.to_owned(),
                    container: container.clone(),
                });
            }
            store::drop_users(&mut users, ns, name)?;
            table.remove((ns, name))?;
        }
        txn.commit()?;
        self.remove_dir(ns, name);
        Ok(())
    }

    /// Removes the unused volumes of `ns` matching `filters` (only anonymous ones unless
    /// `all`); returns their names and the bytes freed.
    pub fn prune(&self, ns: &str, filters: &Filters, all: bool) -> Result<(Vec<String>, u64)> {
        let _guard = self.guard();
        let victims: Vec<String> = self
            .matching(ns, filters)?
            .into_iter()
            .filter(|(_, record, users)| *users == 0 && (all || record.anonymous))
            .map(|(name, _, _)| name)
            .collect();
        if victims.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(VOLUMES)?;
            for name in &victims {
                table.remove((ns, name.as_str()))?;
            }
        }
        txn.commit()?;
        let mut freed = 0;
        for name in &victims {
            freed += fill::disk_usage(&self.dir(ns, name));
            self.remove_dir(ns, name);
        }
        Ok((victims, freed))
    }

    /// Turns every `volume` mount of `spec` into a bind mount of the volume's data, creating
    /// missing volumes (an empty source = an anonymous volume, the same one for every task of
    /// the container until [`VolumeManager::release`]) and recording that `container_id` uses
    /// them. A volume that is new, or still empty, is filled from `rootfs`
    /// at the mount's destination unless the mount has the `nocopy` option. On error nothing
    /// is created or recorded.
    pub fn prepare_mounts(
        &self,
        ns: &str,
        container_id: &str,
        spec: &mut Spec,
        rootfs: Option<&Path>,
    ) -> Result<()> {
        let Some(mounts) = spec.mounts().clone() else {
            return Ok(());
        };
        if !mounts.iter().any(|m| m.typ().as_deref() == Some("volume")) {
            return Ok(());
        }
        let _guard = self.guard();
        let mut created: Vec<String> = Vec::new();
        let result = self.prepare_locked(ns, container_id, mounts, rootfs, &mut created);
        match result {
            Ok(mounts) => {
                spec.set_mounts(Some(mounts));
                Ok(())
            }
            Err(e) => {
                for name in created {
                    self.remove_dir(ns, &name);
                }
                Err(e)
            }
        }
    }

    fn prepare_locked(
        &self,
        ns: &str,
        container_id: &str,
        mut mounts: Vec<oci_spec::runtime::Mount>,
        rootfs: Option<&Path>,
        created: &mut Vec<String>,
    ) -> Result<Vec<oci_spec::runtime::Mount>> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(VOLUMES)?;
            let mut users = txn.open_table(USERS)?;
            let mut anonymous_names = txn.open_table(ANONYMOUS)?;
            let mut used: HashSet<String> = HashSet::new();
            for m in mounts.iter_mut() {
                if m.typ().as_deref() != Some("volume") {
                    continue;
                }
                let source = m
                    .source()
                    .as_ref()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let (name, anonymous) = if source.is_empty() {
                    let dest = m.destination().to_string_lossy().into_owned();
                    let known = anonymous_names
                        .get((ns, container_id, dest.as_str()))?
                        .map(|v| v.value().to_owned());
                    let name = match known {
                        Some(name) => name,
                        None => {
                            let name = random_name()?;
                            anonymous_names
                                .insert((ns, container_id, dest.as_str()), name.as_str())?;
                            name
                        }
                    };
                    (name, true)
                } else {
                    validate_name(&source).map_err(VolumeError::InvalidName)?;
                    (source, false)
                };
                let exists = table.get((ns, name.as_str()))?.is_some();
                if !exists {
                    let record = Record {
                        driver: LOCAL_DRIVER.into(),
                        labels: BTreeMap::new(),
                        options: BTreeMap::new(),
                        created_at_ns: now_ns(),
                        anonymous,
                    };
                    self.make_dir(ns, &name)?;
                    created.push(name.clone());
                    table.insert((ns, name.as_str()), store::encode(&record).as_str())?;
                }
                let data = self.mountpoint(ns, &name);
                let mut options = m.options().clone().unwrap_or_default();
                let nocopy = options.iter().any(|o| o == "nocopy");
                if let Some(rootfs) = rootfs
                    && !nocopy
                    && is_empty_dir(&data)?
                    && let Err(e) = fill::fill(rootfs, m.destination(), &data)
                {
                    // Leave the volume as empty as it was.
                    let _ = std::fs::remove_dir_all(&data);
                    std::fs::create_dir_all(&data).map_err(io("create", &data))?;
                    return Err(io("fill volume", &data)(e));
                }
                options.retain(|o| o != "nocopy");
                if !options.iter().any(|o| o == "rbind" || o == "bind") {
                    options.insert(0, "rbind".into());
                }
                if !options.iter().any(|o| {
                    matches!(
                        o.as_str(),
                        "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
                    )
                }) {
                    options.push("rprivate".into());
                }
                m.set_typ(Some("bind".into()));
                m.set_source(Some(data));
                m.set_options(Some(options));
                if used.insert(name.clone()) {
                    users.insert((ns, name.as_str(), container_id), ())?;
                }
            }
        }
        txn.commit()?;
        Ok(mounts)
    }

    /// Forgets that `container_id` uses volumes; with `remove_anonymous`, also removes the
    /// anonymous volumes it used that no other container uses.
    pub fn release(&self, ns: &str, container_id: &str, remove_anonymous: bool) -> Result<()> {
        let _guard = self.guard();
        let txn = self.db.begin_write()?;
        let mut removed = Vec::new();
        {
            let mut users = txn.open_table(USERS)?;
            let mut table = txn.open_table(VOLUMES)?;
            let mut names = Vec::new();
            for entry in users.range((ns, "", "")..)? {
                let (k, _) = entry?;
                let (kns, name, id) = k.value();
                if kns != ns {
                    break;
                }
                if id == container_id {
                    names.push(name.to_owned());
                }
            }
            let mut anonymous_names = txn.open_table(ANONYMOUS)?;
            let mut destinations = Vec::new();
            for entry in anonymous_names.range((ns, container_id, "")..)? {
                let (k, _) = entry?;
                let (kns, id, dest) = k.value();
                if kns != ns || id != container_id {
                    break;
                }
                destinations.push(dest.to_owned());
            }
            for dest in destinations {
                anonymous_names.remove((ns, container_id, dest.as_str()))?;
            }
            for name in names {
                users.remove((ns, name.as_str(), container_id))?;
                if !remove_anonymous || !store::users_of(&users, ns, &name)?.is_empty() {
                    continue;
                }
                let anonymous = match table.get((ns, name.as_str()))? {
                    Some(v) => store::decode(ns, &name, v.value())?.anonymous,
                    None => false,
                };
                if anonymous {
                    table.remove((ns, name.as_str()))?;
                    removed.push(name);
                }
            }
        }
        txn.commit()?;
        for name in removed {
            self.remove_dir(ns, &name);
        }
        Ok(())
    }
}

fn is_empty_dir(path: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(path)
        .map_err(io("read", path))?
        .next()
        .is_none())
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// 64 random hex digits, the name of an anonymous volume.
fn random_name() -> Result<String> {
    let mut bytes = [0u8; 32];
    let path = Path::new("/dev/urandom");
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("read", path))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests;

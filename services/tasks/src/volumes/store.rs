//! The volumes' tables in the tasks database: one record per volume and one row per
//! (volume, container) use.

use std::collections::BTreeMap;

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Result, VolumeError};

/// (namespace, name) → JSON [`Record`].
pub(super) const VOLUMES: TableDefinition<(&str, &str), &str> = TableDefinition::new("volumes");
/// (namespace, volume name, container id) → empty: the volume is mounted by the container.
pub(super) const USERS: TableDefinition<(&str, &str, &str), ()> =
    TableDefinition::new("volume_users");

/// (namespace, container id, destination) → name of the anonymous volume the container
/// mounts there, so that each task of the container gets the same one.
pub(super) const ANONYMOUS: TableDefinition<(&str, &str, &str), &str> =
    TableDefinition::new("volume_anonymous");

/// What is kept of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    /// Driver ("local").
    pub driver: String,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Driver options.
    pub options: BTreeMap<String, String>,
    /// Creation time, ns since the epoch.
    pub created_at_ns: i64,
    /// Created for a container (an image VOLUME or a mount without a name), not by name.
    pub anonymous: bool,
}

pub(super) fn decode(ns: &str, name: &str, text: &str) -> Result<Record> {
    serde_json::from_str(text).map_err(|e| VolumeError::Corrupt {
        key: format!("volumes/{ns}/{name}"),
        reason: e.to_string(),
    })
}

pub(super) fn encode(record: &Record) -> String {
    // A struct of strings, maps and integers always serializes.
    serde_json::to_string(record).unwrap_or_default()
}

/// Ids of the containers using a volume.
pub(super) fn users_of<T>(table: &T, ns: &str, name: &str) -> Result<Vec<String>>
where
    T: ReadableTable<(&'static str, &'static str, &'static str), ()>,
{
    let mut out = Vec::new();
    for entry in table.range((ns, name, "")..)? {
        let (k, _) = entry?;
        let (kns, kname, id) = k.value();
        if kns != ns || kname != name {
            break;
        }
        out.push(id.to_owned());
    }
    Ok(out)
}

/// Deletes every use of a volume.
pub(super) fn drop_users(
    table: &mut Table<'_, (&'static str, &'static str, &'static str), ()>,
    ns: &str,
    name: &str,
) -> Result<()> {
    for id in users_of(table, ns, name)? {
        table.remove((ns, name, id.as_str()))?;
    }
    Ok(())
}

/// Creates the tables if they do not exist.
pub(super) fn init(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(VOLUMES)?;
    txn.open_table(USERS)?;
    txn.open_table(ANONYMOUS)?;
    Ok(())
}

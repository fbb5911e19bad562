//! Persistence of networks, attachments and address allocations in the service's redb database.
//!
//! Each operation's changes are one [`Change`] list committed in one write transaction: an
//! attachment and its address allocation are written (or removed) together, so a crash never
//! leaves one without the other. The `addresses` table is keyed by (network id, address) and a
//! second owner of an address aborts the transaction: no duplicate address, even across
//! restarts.

use std::net::Ipv4Addr;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::model::{Attachment, Network};

const NETWORKS: TableDefinition<&str, &str> = TableDefinition::new("networks");
const ATTACHMENTS: TableDefinition<&str, &str> = TableDefinition::new("attachments");
const ADDRESSES: TableDefinition<(&str, u32), &str> = TableDefinition::new("addresses");
const LAST: TableDefinition<&str, u32> = TableDefinition::new("ipam_last");

/// One change to the stored state.
#[derive(Debug)]
pub enum Change<'a> {
    /// Insert or replace a network.
    PutNetwork(&'a Network),
    /// Remove a network (its attachments must be gone).
    DeleteNetwork(&'a Network),
    /// Insert an attachment and allocate its address.
    PutAttachment(&'a Attachment),
    /// Remove an attachment and release its address.
    DeleteAttachment(&'a Attachment),
    /// Remember the last address handed out in a network.
    SetLast(&'a str, Ipv4Addr),
}

/// Everything stored, as loaded at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every network.
    pub networks: Vec<Network>,
    /// Every attachment.
    pub attachments: Vec<Attachment>,
    /// The last address handed out per network.
    pub last: Vec<(String, Ipv4Addr)>,
}

/// The network service's database.
pub struct Store {
    db: Database,
}

fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Database(e.into())
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(NETWORKS).map_err(db_err)?;
        txn.open_table(ATTACHMENTS).map_err(db_err)?;
        txn.open_table(ADDRESSES).map_err(db_err)?;
        txn.open_table(LAST).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Store { db })
    }

    /// Reads everything.
    pub fn load(&self) -> Result<Snapshot> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let mut snapshot = Snapshot::default();
        for entry in txn
            .open_table(NETWORKS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (key, value) = entry.map_err(db_err)?;
            snapshot.networks.push(decode(key.value(), value.value())?);
        }
        for entry in txn
            .open_table(ATTACHMENTS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (key, value) = entry.map_err(db_err)?;
            snapshot
                .attachments
                .push(decode(key.value(), value.value())?);
        }
        for entry in txn
            .open_table(LAST)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (key, value) = entry.map_err(db_err)?;
            snapshot
                .last
                .push((key.value().to_owned(), Ipv4Addr::from(value.value())));
        }
        Ok(snapshot)
    }

    /// Applies `changes` in one transaction: all of them or none.
    pub fn commit(&self, changes: &[Change<'_>]) -> Result<()> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut networks = txn.open_table(NETWORKS).map_err(db_err)?;
            let mut attachments = txn.open_table(ATTACHMENTS).map_err(db_err)?;
            let mut addresses = txn.open_table(ADDRESSES).map_err(db_err)?;
            let mut last = txn.open_table(LAST).map_err(db_err)?;
            for change in changes {
                match change {
                    Change::PutNetwork(n) => {
                        networks
                            .insert(n.id.as_str(), encode(&n.id, *n)?.as_str())
                            .map_err(db_err)?;
                    }
                    Change::DeleteNetwork(n) => {
                        networks.remove(n.id.as_str()).map_err(db_err)?;
                        last.remove(n.id.as_str()).map_err(db_err)?;
                    }
                    Change::PutAttachment(a) => {
                        let key = a.key();
                        let address = (a.network_id.as_str(), u32::from(a.ip));
                        if let Some(owner) = addresses.get(address).map_err(db_err)? {
                            let owner = owner.value().to_owned();
                            if owner != key {
                                return Err(Error::AddressInUse {
                                    ip: a.ip,
                                    network: a.network.clone(),
                                    owner,
                                });
                            }
                        }
                        addresses.insert(address, key.as_str()).map_err(db_err)?;
                        attachments
                            .insert(key.as_str(), encode(&key, *a)?.as_str())
                            .map_err(db_err)?;
                    }
                    Change::DeleteAttachment(a) => {
                        let key = a.key();
                        attachments.remove(key.as_str()).map_err(db_err)?;
                        let address = (a.network_id.as_str(), u32::from(a.ip));
                        let owned = addresses
                            .get(address)
                            .map_err(db_err)?
                            .is_some_and(|o| o.value() == key);
                        if owned {
                            addresses.remove(address).map_err(db_err)?;
                        }
                    }
                    Change::SetLast(network_id, ip) => {
                        last.insert(*network_id, u32::from(*ip)).map_err(db_err)?;
                    }
                }
            }
        }
        txn.commit().map_err(db_err)
    }
}

fn encode<T: serde::Serialize>(key: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::Corrupt {
        key: key.to_owned(),
        source,
    })
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> Result<T> {
    serde_json::from_str(value).map_err(|source| Error::Corrupt {
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    use super::*;
    use crate::model::DnsConfig;

    fn attachment(container: &str, ip: Ipv4Addr) -> Attachment {
        Attachment {
            namespace: "default".into(),
            network: "net".into(),
            network_id: "n1".into(),
            container_id: container.into(),
            netns_path: PathBuf::from("/x"),
            interface: "eth0".into(),
            host_interface: "bveth0".into(),
            ip,
            prefix_len: 24,
            gateway: None,
            mac: [2, 0, 0, 0, 0, 1],
            ports: Vec::new(),
            aliases: Vec::new(),
            dns: DnsConfig::default(),
            extra_hosts: Vec::new(),
            cni_result: None,
        }
    }

    #[test]
    fn an_address_has_one_owner_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let a = attachment("a", ip);
        {
            let store = Store::open(&path).unwrap();
            store
                .commit(&[Change::PutAttachment(&a), Change::SetLast("n1", ip)])
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.attachments, vec![a.clone()]);
        assert_eq!(loaded.last, vec![("n1".to_owned(), ip)]);
        let b = attachment("b", ip);
        let err = store.commit(&[Change::PutAttachment(&b)]).unwrap_err();
        assert!(matches!(err, Error::AddressInUse { .. }), "{err}");
        // The failed transaction wrote nothing.
        assert_eq!(store.load().unwrap().attachments.len(), 1);
        // Released with its attachment, the address can be taken again.
        store.commit(&[Change::DeleteAttachment(&a)]).unwrap();
        store.commit(&[Change::PutAttachment(&b)]).unwrap();
        assert_eq!(store.load().unwrap().attachments, vec![b]);
    }
}

//! The service's metadata database (redb): one file, one table per kind of record.
//!
//! Keys are `<namespace>\0<id>[\0<more>]` strings, so a namespace (or a lease) is one key range;
//! values are JSON. Ids given by clients are checked by [`check_id`] so they cannot contain the
//! separator. Every change is one write transaction.

use std::path::Path;

use redb::{ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// A table of JSON records under string keys.
pub(crate) type Def = TableDefinition<'static, &'static str, &'static [u8]>;

/// Blobs visible in a namespace: `ns\0digest` -> [`crate::content::Info`] (without digest).
pub(crate) const CONTENT: Def = TableDefinition::new("content");
/// In-progress writes: `ns\0ref` -> ingest record.
pub(crate) const INGESTS: Def = TableDefinition::new("ingests");
/// Images: `ns\0name` -> image record.
pub(crate) const IMAGES: Def = TableDefinition::new("images");
/// Leases: `ns\0id` -> lease record.
pub(crate) const LEASES: Def = TableDefinition::new("leases");
/// Resources held by leases: `ns\0id\0type\0resource` -> empty.
pub(crate) const LEASE_RESOURCES: Def = TableDefinition::new("lease_resources");

/// The open database.
pub(crate) struct Db {
    db: redb::Database,
}

impl Db {
    /// Opens (or creates) the database at `path` and makes sure every table exists.
    pub(crate) fn open(path: &Path) -> Result<Db> {
        let db = redb::Database::create(path)?;
        let tx = db.begin_write()?;
        for table in [CONTENT, INGESTS, IMAGES, LEASES, LEASE_RESOURCES] {
            tx.open_table(table)?;
        }
        tx.commit()?;
        Ok(Db { db })
    }

    /// Starts a read transaction.
    pub(crate) fn read(&self) -> Result<redb::ReadTransaction> {
        use redb::ReadableDatabase;
        Ok(self.db.begin_read()?)
    }

    /// Runs `f` in one write transaction, committed only if `f` succeeds.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        let tx = self.db.begin_write()?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }
}

/// The key of `parts` joined by NUL.
pub(crate) fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

/// Rejects an id that is empty, too long, or contains NUL.
pub(crate) fn check_id(field: &'static str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if id.len() > 1024 || id.contains('\0') {
        return Err(Error::invalid(
            field,
            "must be at most 1024 bytes without NUL characters",
        ));
    }
    Ok(())
}

/// Decodes the record under `key`, if any.
pub(crate) fn get<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>> {
    match table.get(key)? {
        None => Ok(None),
        Some(v) => decode(key, v.value()).map(Some),
    }
}

/// Encodes and stores `value` under `key`.
pub(crate) fn put<T: Serialize>(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    key: &str,
    value: &T,
) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|source| Error::Corrupt {
        key: key.to_owned(),
        source,
    })?;
    table.insert(key, bytes.as_slice())?;
    Ok(())
}

/// Every record whose key starts with `prefix`, as (the key after the prefix, record).
pub(crate) fn scan<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<(String, T)>> {
    let mut out = Vec::new();
    for entry in table.range(prefix..)? {
        let (k, v) = entry?;
        let Some(rest) = k.value().strip_prefix(prefix) else {
            break;
        };
        out.push((rest.to_owned(), decode(k.value(), v.value())?));
    }
    Ok(out)
}

/// The keys that start with `prefix`.
pub(crate) fn keys(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in table.range(prefix..)? {
        let (k, _) = entry?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push(k.value().to_owned());
    }
    Ok(out)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
        key: key.replace('\0', "/"),
        source,
    })
}

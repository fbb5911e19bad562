//! The kernel side of bridge networks: pinned network namespaces, links and addresses over
//! rtnetlink, the nftables table, host port reservations and sysctls.
//!
//! Nothing here shells out to `ip`; `nft` is driven with JSON through the nftables crate.

pub mod firewall;
pub mod link;
pub mod netns;
pub mod ports;

use std::path::Path;

use crate::error::{Error, Result};

/// Writes a sysctl under /proc/sys (e.g. `net/ipv4/ip_forward`), skipping the write when the
/// value is already set.
pub fn sysctl(key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|e| Error::io("write sysctl", path, e))
}

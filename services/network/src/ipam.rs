//! IP address management: which subnet a new network gets, which address a container gets.
//!
//! Addresses are handed out from a network's *range* (its `ip_range`, or the whole subnet),
//! never the subnet's network or broadcast address nor the gateway. Allocation is sequential:
//! the next free address after the last one handed out, wrapping around, so an address released
//! on detach is not reused at once (stale ARP entries and DNS caches age out first). The
//! allocations themselves are persisted with the attachment that owns them, in the same
//! database transaction, and the database refuses a second owner of one address.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::error::{Error, Result};
use crate::model::Network;

/// Allocates and releases the addresses of networks.
pub trait Ipam {
    /// Reserves `requested` (which must be free and inside the network's range) or, when
    /// unset, the next free address after the last allocation. `owner` names the attachment.
    fn allocate(
        &mut self,
        network: &Network,
        requested: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Ipv4Addr>;

    /// Returns `ip` to the free pool of the network; releasing a free address is a no-op.
    fn release(&mut self, network_id: &str, ip: Ipv4Addr);
}

/// The allocations of every network, in memory (loaded from and persisted to the database by
/// the caller).
#[derive(Debug, Default, Clone)]
pub struct AddressBook {
    used: HashMap<String, BTreeMap<u32, String>>,
    last: HashMap<String, u32>,
}

impl AddressBook {
    /// Records an existing allocation (when loading from the database).
    pub fn insert(&mut self, network_id: &str, ip: Ipv4Addr, owner: &str) {
        self.used
            .entry(network_id.to_owned())
            .or_default()
            .insert(u32::from(ip), owner.to_owned());
    }

    /// Records the last address handed out in a network (when loading).
    pub fn set_last(&mut self, network_id: &str, ip: Ipv4Addr) {
        self.last.insert(network_id.to_owned(), u32::from(ip));
    }

    /// The last address handed out in a network.
    pub fn last(&self, network_id: &str) -> Option<Ipv4Addr> {
        self.last.get(network_id).map(|ip| Ipv4Addr::from(*ip))
    }

    /// Who holds `ip` in a network.
    pub fn owner(&self, network_id: &str, ip: Ipv4Addr) -> Option<&str> {
        self.used
            .get(network_id)
            .and_then(|m| m.get(&u32::from(ip)))
            .map(String::as_str)
    }

    /// Forgets every allocation of a network (when it is removed).
    pub fn forget(&mut self, network_id: &str) {
        self.used.remove(network_id);
        self.last.remove(network_id);
    }
}

impl Ipam for AddressBook {
    fn allocate(
        &mut self,
        network: &Network,
        requested: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Ipv4Addr> {
        let range = network.range();
        let used = self.used.entry(network.id.clone()).or_default();
        let ip = match requested {
            Some(ip) => {
                if !range.contains(&ip) || !usable(network, ip) {
                    return Err(Error::invalid(
                        "ip",
                        format!(
                            "{ip} is not a usable address of network {:?} (range {range}, \
                             gateway {})",
                            network.name, network.gateway
                        ),
                    ));
                }
                if let Some(holder) = used.get(&u32::from(ip)) {
                    return Err(Error::AddressInUse {
                        ip,
                        network: network.name.clone(),
                        owner: holder.clone(),
                    });
                }
                ip
            }
            None => {
                let start = self
                    .last
                    .get(&network.id)
                    .copied()
                    .unwrap_or(u32::from(range.network()));
                next_free(network, start, |ip| used.contains_key(&ip)).ok_or_else(|| {
                    Error::NetworkFull {
                        network: network.name.clone(),
                        range,
                    }
                })?
            }
        };
        used.insert(u32::from(ip), owner.to_owned());
        self.last.insert(network.id.clone(), u32::from(ip));
        Ok(ip)
    }

    fn release(&mut self, network_id: &str, ip: Ipv4Addr) {
        if let Some(used) = self.used.get_mut(network_id) {
            used.remove(&u32::from(ip));
        }
    }
}

/// Whether `ip` may be given to a container: inside the subnet, not its network or broadcast
/// address, not the gateway.
fn usable(network: &Network, ip: Ipv4Addr) -> bool {
    let subnet = network.subnet;
    subnet.contains(&ip)
        && (subnet.prefix_len() >= 31 || (ip != subnet.network() && ip != subnet.broadcast()))
        && ip != network.gateway
}

/// The first usable address after `after` in the network's range, wrapping around once.
fn next_free(network: &Network, after: u32, used: impl Fn(u32) -> bool) -> Option<Ipv4Addr> {
    let range = network.range();
    let first = u32::from(range.network());
    let last = u32::from(range.broadcast());
    let size = u64::from(last - first) + 1;
    let start = if (first..=last).contains(&after) {
        after
    } else {
        last
    };
    let mut candidate = start;
    for _ in 0..size {
        candidate = if candidate >= last {
            first
        } else {
            candidate + 1
        };
        let ip = Ipv4Addr::from(candidate);
        if usable(network, ip) && !used(candidate) {
            return Some(ip);
        }
    }
    None
}

/// The first subnet of `pools` (each a base split into subnets of a prefix length) that
/// overlaps none of `taken`.
pub fn choose_subnet(pools: &[(Ipv4Net, u8)], taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    for (base, size) in pools {
        let Ok(subnets) = base.subnets(*size) else {
            continue;
        };
        for subnet in subnets {
            if !taken.iter().any(|t| overlaps(*t, subnet)) {
                return Some(subnet);
            }
        }
    }
    None
}

/// Whether two subnets share an address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::model::Driver;

    fn network(subnet: &str, range: Option<&str>) -> Network {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        Network {
            id: "n1".into(),
            namespace: "default".into(),
            name: "net".into(),
            driver: Driver::Bridge,
            subnet,
            gateway: subnet.hosts().next().unwrap(),
            ip_range: range.map(|r| r.parse().unwrap()),
            internal: false,
            icc: true,
            labels: Default::default(),
            options: Default::default(),
            bridge: "br".into(),
            mtu: 1500,
            created_at: SystemTime::UNIX_EPOCH,
            predefined: false,
            dns: true,
            cni_conflist: None,
        }
    }

    #[test]
    fn sequential_skips_gateway_and_does_not_reuse_at_once() {
        let n = network("10.9.0.0/29", None);
        let mut book = AddressBook::default();
        let a = book.allocate(&n, None, "a").unwrap();
        let b = book.allocate(&n, None, "b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(b, Ipv4Addr::new(10, 9, 0, 3));
        book.release(&n.id, a);
        let c = book.allocate(&n, None, "c").unwrap();
        assert_eq!(
            c,
            Ipv4Addr::new(10, 9, 0, 4),
            "released address is not reused at once"
        );
    }

    #[test]
    fn full_subnet_is_a_clear_error() {
        let n = network("10.9.0.0/30", None);
        let mut book = AddressBook::default();
        book.allocate(&n, None, "a").unwrap();
        let err = book.allocate(&n, None, "b").unwrap_err();
        assert!(matches!(err, Error::NetworkFull { .. }), "{err}");
        assert!(err.to_string().contains("full"), "{err}");
        // Releasing makes room again, after wrapping around.
        book.release(&n.id, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(
            book.allocate(&n, None, "b").unwrap(),
            Ipv4Addr::new(10, 9, 0, 2)
        );
    }

    #[test]
    fn static_addresses_are_checked() {
        let n = network("10.9.0.0/24", Some("10.9.0.128/25"));
        let mut book = AddressBook::default();
        let ip = Ipv4Addr::new(10, 9, 0, 200);
        assert_eq!(book.allocate(&n, Some(ip), "a").unwrap(), ip);
        let err = book.allocate(&n, Some(ip), "b").unwrap_err();
        assert!(
            err.to_string().contains("in use") && err.to_string().contains('a'),
            "{err}"
        );
        for bad in [
            Ipv4Addr::new(10, 9, 0, 5),
            Ipv4Addr::new(10, 9, 0, 1),
            Ipv4Addr::new(10, 9, 0, 255),
            Ipv4Addr::new(10, 8, 0, 5),
        ] {
            assert!(book.allocate(&n, Some(bad), "c").is_err(), "{bad}");
        }
        // Dynamic allocation stays inside the range.
        let next = book.allocate(&n, None, "d").unwrap();
        assert!(n.range().contains(&next), "{next}");
    }

    #[test]
    fn no_duplicates_over_many_allocations() {
        let n = network("10.9.0.0/24", None);
        let mut book = AddressBook::default();
        let mut seen = std::collections::HashSet::new();
        for i in 0..253 {
            let ip = book.allocate(&n, None, &format!("c{i}")).unwrap();
            assert!(seen.insert(ip), "duplicate {ip}");
            if i % 3 == 0 {
                book.release(&n.id, ip);
                seen.remove(&ip);
            }
        }
    }

    #[test]
    fn subnet_choice_avoids_taken_ranges() {
        let pools = [
            ("172.17.0.0/16".parse().unwrap(), 16),
            ("192.168.0.0/16".parse().unwrap(), 20),
        ];
        let taken: Vec<Ipv4Net> = vec!["172.17.5.0/24".parse().unwrap()];
        assert_eq!(
            choose_subnet(&pools, &taken),
            Some("192.168.0.0/20".parse().unwrap())
        );
        let taken: Vec<Ipv4Net> = vec![
            "172.17.0.0/16".parse().unwrap(),
            "192.168.0.0/17".parse().unwrap(),
        ];
        assert_eq!(
            choose_subnet(&pools, &taken),
            Some("192.168.128.0/20".parse().unwrap())
        );
        let all: Vec<Ipv4Net> = vec!["0.0.0.0/1".parse().unwrap(), "128.0.0.0/1".parse().unwrap()];
        assert_eq!(choose_subnet(&pools, &all), None);
    }
}

//! The network service's domain logic: networks, attachments and netns over the store, IPAM and
//! the kernel.
//!
//! Every mutating operation runs under one lock and follows the same order: check, change the
//! in-memory state, set up the kernel objects, then persist the change in one database
//! transaction; a failure at any step undoes the earlier steps, so a failed operation leaves
//! no link, rule, address, reservation or record behind. The database is the truth on start-up:
//! [`Manager::open`] rebuilds bridges, rules, port reservations and DNS names from it, and drops
//! attachments whose namespace vanished (e.g. after a reboot).

mod attachments;
mod cni;
mod networks;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ipnet::Ipv4Net;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::dns::{self, Names};
use crate::error::{Error, Result};
use crate::ipam::{self, AddressBook, Ipam};
use crate::kernel::firewall::{BridgeRules, Dnat, Firewall, Ruleset};
use crate::kernel::ports::Reservation;
use crate::kernel::{self, link};
use crate::model::{Attachment, DEFAULT_NETWORK, Driver, Network};
use crate::store::{Change, Store};

/// Service settings taken from the `[network]` configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bridge of the predefined network.
    pub default_bridge: String,
    /// Subnet pools: (base, prefix length of each subnet).
    pub pools: Vec<(Ipv4Net, u8)>,
    /// Default MTU.
    pub mtu: u32,
    /// nftables table name.
    pub nft_table: String,
    /// Upstream resolvers for names the embedded DNS does not know.
    pub dns_upstreams: Vec<SocketAddr>,
    /// Where CNI plugins are searched.
    pub cni_plugin_dirs: Vec<PathBuf>,
    /// Directory of pinned network namespaces.
    pub netns_dir: PathBuf,
    /// Directory for CNI plugin state (host-local IPAM).
    pub cni_state_dir: PathBuf,
}

impl Settings {
    /// Settings from the service configuration.
    pub fn from_config(config: &berth_api::config::Config) -> Result<Settings> {
        let n = &config.network;
        let pools = n
            .pools
            .iter()
            .map(|p| {
                p.base
                    .parse::<Ipv4Net>()
                    .map(|b| (b, p.size))
                    .map_err(|e| Error::invalid("network.pools", format!("{}: {e}", p.base)))
            })
            .collect::<Result<Vec<_>>>()?;
        let dns_upstreams = n
            .dns_upstreams
            .iter()
            .map(|s| {
                s.parse::<SocketAddr>()
                    .or_else(|_| {
                        s.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|e| Error::invalid("network.dns_upstreams", format!("{s}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Settings {
            default_bridge: n.default_bridge.clone(),
            pools,
            mtu: n.mtu,
            nft_table: n.nft_table.clone(),
            dns_upstreams,
            cni_plugin_dirs: n.cni_plugin_dirs.clone(),
            netns_dir: config.state.join("netns"),
            cni_state_dir: config.state.join("cni"),
        })
    }
}

/// What the lock protects.
#[derive(Default)]
struct State {
    networks: BTreeMap<String, Network>,
    attachments: BTreeMap<String, Attachment>,
    ipam: AddressBook,
    reservations: HashMap<String, Vec<Reservation>>,
    /// Networks whose bridge exists, with their DNS server task.
    active: HashMap<String, Option<JoinHandle<()>>>,
    /// The ruleset last written to the kernel.
    applied: Option<Ruleset>,
    /// Deletions of retired veths still running, by the netns their container end is in.
    retiring: HashMap<PathBuf, Vec<JoinHandle<()>>>,
}

impl State {
    /// The network `name` as seen from `namespace`.
    fn find(&self, namespace: &str, name: &str) -> Result<&Network> {
        self.networks
            .values()
            .find(|n| n.name == name && n.visible_in(namespace))
            .ok_or_else(|| Error::NetworkNotFound {
                name: name.to_owned(),
            })
    }

    fn attachments_of<'a>(&'a self, network_id: &'a str) -> impl Iterator<Item = &'a Attachment> {
        self.attachments
            .values()
            .filter(move |a| a.network_id == network_id)
    }

    fn ruleset(&self) -> Ruleset {
        let networks = self
            .networks
            .values()
            .filter(|n| n.driver == Driver::Bridge && self.active.contains_key(&n.id))
            .map(|n| BridgeRules {
                bridge: n.bridge.clone(),
                subnet: n.subnet,
                internal: n.internal,
            })
            .collect();
        let dnats = self
            .attachments
            .values()
            .filter(|a| {
                self.networks
                    .get(&a.network_id)
                    .is_some_and(|n| n.driver == Driver::Bridge)
            })
            .flat_map(|a| {
                a.ports.iter().map(|p| Dnat {
                    host_ip: p.host_ip,
                    host_port: p.host_port,
                    protocol: p.protocol,
                    ip: a.ip,
                    port: p.container_port,
                })
            })
            .collect();
        Ruleset { networks, dnats }
    }
}

/// The network service.
pub struct Manager {
    settings: Settings,
    store: Store,
    host: rtnetlink::Handle,
    firewall: Firewall,
    names: Names,
    state: Mutex<State>,
}

impl Manager {
    /// Opens the database under `root` and rebuilds the kernel state it describes. Must run
    /// inside a tokio runtime (it drives the host's netlink connection).
    pub async fn open(root: &Path, settings: Settings) -> Result<Manager> {
        std::fs::create_dir_all(root).map_err(|e| Error::io("create directory", root, e))?;
        let store = Store::open(&root.join("network.redb"))?;
        let snapshot = store.load()?;
        let mut state = State::default();
        for n in snapshot.networks {
            state.networks.insert(n.id.clone(), n);
        }
        for (id, ip) in snapshot.last {
            state.ipam.set_last(&id, ip);
        }
        for a in snapshot.attachments {
            state.ipam.insert(
                &a.network_id,
                a.ip,
                &format!("container {:?}", a.container_id),
            );
            state.attachments.insert(a.key(), a);
        }
        let manager = Manager {
            firewall: Firewall::new(&settings.nft_table),
            host: kernel::netns::connect()?,
            settings,
            store,
            names: Names::default(),
            state: Mutex::new(state),
        };
        manager.reconcile().await?;
        Ok(manager)
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Brings the kernel in line with the database after a (re)start.
    async fn reconcile(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        self.ensure_predefined(&mut st).await?;
        // Attachments whose namespace or host link vanished are gone for good.
        let stale: Vec<Attachment> = st
            .attachments
            .values()
            .filter(|a| !kernel::netns::is_netns(&a.netns_path))
            .cloned()
            .collect();
        for a in &stale {
            tracing::warn!(container = %a.container_id, network = %a.network,
                netns = %a.netns_path.display(), "network namespace is gone: dropping attachment");
            if !a.host_interface.is_empty() {
                link::delete(&self.host, &a.host_interface).await?;
            }
            self.store.commit(&[Change::DeleteAttachment(a)])?;
            st.attachments.remove(&a.key());
            st.ipam.release(&a.network_id, a.ip);
        }
        let networks: Vec<Network> = st.networks.values().cloned().collect();
        for n in &networks {
            let needed = n.driver == Driver::Bridge
                && (!n.predefined || st.attachments_of(&n.id).next().is_some());
            if !needed {
                continue;
            }
            self.activate(&mut st, n).await?;
            // Host ends left by a crash between link creation and commit.
            if let Some(index) = link::index(&self.host, &n.bridge).await? {
                let known: HashSet<&str> = st
                    .attachments_of(&n.id)
                    .map(|a| a.host_interface.as_str())
                    .collect();
                for port in link::bridge_ports(&self.host, index).await? {
                    if port.starts_with(VETH_PREFIX) && !known.contains(port.as_str()) {
                        tracing::warn!(link = %port, bridge = %n.bridge, "removing unknown veth");
                        link::delete(&self.host, &port).await?;
                    }
                }
            }
        }
        let attachments: Vec<Attachment> = st.attachments.values().cloned().collect();
        for a in attachments.iter().filter(|a| a.cni_result.is_some()) {
            if let Some(n) = st.networks.get(&a.network_id)
                && let Err(e) = self.check_cni_attachment(n, a).await
            {
                tracing::warn!(container = %a.container_id, network = %a.network, error = %e,
                    "cni CHECK failed after restart");
            }
        }
        for a in &attachments {
            if let Some(n) = st.networks.get(&a.network_id)
                && n.dns
            {
                self.names.add(&a.network_id, &dns_names(a), a.ip);
            }
            let mut held = Vec::new();
            for p in &a.ports {
                match kernel::ports::reserve(p.host_ip, p.host_port, p.protocol) {
                    Ok(r) => held.push(r),
                    Err(e) => tracing::warn!(container = %a.container_id, error = %e,
                        "published port could not be reserved again"),
                }
            }
            st.reservations.insert(a.key(), held);
        }
        if st.ruleset() == Ruleset::default() {
            // Nothing needs rules: remove a table a crash may have left, but do not make `nft`
            // a requirement of a start that has nothing to filter.
            if let Err(e) = self.sync_firewall(&mut st).await {
                tracing::warn!(error = %e, "could not clear the nftables table");
                st.applied = Some(Ruleset::default());
            }
            return Ok(());
        }
        self.sync_firewall(&mut st).await
    }

    /// Creates the predefined network's record on first start (no kernel object yet).
    async fn ensure_predefined(&self, st: &mut State) -> Result<()> {
        if let Some(n) = st.networks.values().find(|n| n.predefined).cloned() {
            if n.bridge != self.settings.default_bridge && st.attachments_of(&n.id).next().is_none()
            {
                let mut n = n;
                n.bridge = self.settings.default_bridge.clone();
                self.store.commit(&[Change::PutNetwork(&n)])?;
                st.networks.insert(n.id.clone(), n);
            }
            return Ok(());
        }
        let subnet = self.free_subnet(st, None).await?;
        let network = Network {
            id: random_id(),
            namespace: String::new(),
            name: DEFAULT_NETWORK.into(),
            driver: Driver::Bridge,
            subnet,
            gateway: first_host(subnet),
            ip_range: None,
            internal: false,
            icc: true,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
            bridge: self.settings.default_bridge.clone(),
            mtu: self.settings.mtu,
            created_at: SystemTime::now(),
            predefined: true,
            dns: false,
            cni_conflist: None,
        };
        self.store.commit(&[Change::PutNetwork(&network)])?;
        st.networks.insert(network.id.clone(), network);
        Ok(())
    }

    /// A subnet from the pools that overlaps no network (but `except`) and no host route.
    async fn free_subnet(&self, st: &State, except: Option<&str>) -> Result<Ipv4Net> {
        let mut taken = link::host_prefixes(&self.host).await?;
        taken.extend(
            st.networks
                .values()
                .filter(|n| Some(n.id.as_str()) != except)
                .map(|n| n.subnet),
        );
        ipam::choose_subnet(&self.settings.pools, &taken).ok_or(Error::PoolsExhausted)
    }

    /// Creates a bridge network's bridge (address, route_localnet, forwarding) and starts its
    /// DNS server; a no-op when active. The predefined network moves to a free subnet first if
    /// its own overlaps a host route (another engine took it meanwhile).
    async fn activate(&self, st: &mut State, network: &Network) -> Result<Network> {
        if st.active.contains_key(&network.id) {
            return Ok(network.clone());
        }
        let mut network = network.clone();
        if network.predefined && link::index(&self.host, &network.bridge).await?.is_none() {
            let host = link::host_prefixes(&self.host).await?;
            if host.iter().any(|h| ipam::overlaps(*h, network.subnet)) {
                let subnet = self.free_subnet(st, Some(&network.id)).await?;
                tracing::info!(old = %network.subnet, new = %subnet,
                    "subnet of the predefined network is taken on the host: moving it");
                network.subnet = subnet;
                network.gateway = first_host(subnet);
                self.store.commit(&[Change::PutNetwork(&network)])?;
                st.networks.insert(network.id.clone(), network.clone());
            }
        }
        let address = Ipv4Net::new(network.gateway, network.subnet.prefix_len())
            .map_err(|e| Error::invalid("subnet", e.to_string()))?;
        link::ensure_bridge(
            &self.host,
            &network.bridge,
            address,
            crate::model::mac_for(network.gateway),
            network.mtu,
        )
        .await?;
        let setup = || -> Result<()> {
            kernel::sysctl(
                &format!("net/ipv4/conf/{}/route_localnet", network.bridge),
                "1",
            )?;
            if !network.internal {
                kernel::sysctl("net/ipv4/ip_forward", "1")?;
            }
            Ok(())
        };
        if let Err(e) = setup() {
            let _ = link::delete(&self.host, &network.bridge).await;
            return Err(e);
        }
        let server = if network.dns {
            self.start_dns(&network)
        } else {
            None
        };
        st.active.insert(network.id.clone(), server);
        Ok(network)
    }

    /// Starts the embedded resolver on the gateway address; a failure to bind only disables
    /// name resolution on that network (logged).
    fn start_dns(&self, network: &Network) -> Option<JoinHandle<()>> {
        let address = SocketAddr::new(network.gateway.into(), 53);
        let socket = std::net::UdpSocket::bind(address).and_then(|s| {
            s.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(s)
        });
        match socket {
            Ok(socket) => Some(tokio::spawn(dns::serve(
                socket,
                self.names.clone(),
                network.id.clone(),
                self.settings.dns_upstreams.clone(),
            ))),
            Err(e) => {
                tracing::warn!(network = %network.name, %address, error = %e,
                    "embedded DNS disabled: cannot bind");
                None
            }
        }
    }

    /// Stops a network's DNS server and deletes its bridge.
    async fn deactivate(&self, st: &mut State, network: &Network) -> Result<()> {
        if let Some(Some(server)) = st.active.remove(&network.id) {
            server.abort();
        }
        link::delete(&self.host, &network.bridge).await
    }

    /// Deactivates the predefined network once nothing is attached to it.
    async fn release_predefined(&self, st: &mut State, network_id: &str) -> Result<()> {
        let Some(network) = st.networks.get(network_id).cloned() else {
            return Ok(());
        };
        if network.predefined && st.attachments_of(network_id).next().is_none() {
            self.deactivate(st, &network).await?;
            self.sync_firewall(st).await?;
        }
        Ok(())
    }

    /// Writes the ruleset the state calls for, unless the kernel already has it.
    async fn sync_firewall(&self, st: &mut State) -> Result<()> {
        let rules = st.ruleset();
        if st.applied.as_ref() == Some(&rules) {
            return Ok(());
        }
        let firewall = self.firewall.clone();
        let to_apply = rules.clone();
        tokio::task::spawn_blocking(move || firewall.apply(&to_apply))
            .await
            .map_err(|e| Error::io("apply", "nftables", std::io::Error::other(e.to_string())))??;
        st.applied = Some(rules);
        Ok(())
    }

    /// The pinned netns path of a sandbox.
    pub fn netns_path(&self, namespace: &str, sandbox_id: &str) -> PathBuf {
        self.settings.netns_dir.join(namespace).join(sandbox_id)
    }
}

/// Prefix of the host ends of veth pairs.
pub const VETH_PREFIX: &str = "bveth";

/// Names a container answers to on a network with DNS: its aliases, its id, its short id.
fn dns_names(a: &Attachment) -> Vec<String> {
    let mut names = a.aliases.clone();
    names.push(a.container_id.clone());
    if a.container_id.len() > 12 && a.container_id.is_char_boundary(12) {
        names.push(a.container_id[..12].to_owned());
    }
    names
}

/// The first host address of a subnet (the default gateway).
fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    subnet.hosts().next().unwrap_or(subnet.network())
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if filled.is_err() {
        // Fall back to time and pid: ids only need to be unique, not secret.
        let seed = format!(
            "{:?}{}{:?}",
            SystemTime::now(),
            std::process::id(),
            std::thread::current().id()
        );
        let digest = <sha2::Sha256 as sha2::Digest>::digest(seed.as_bytes());
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = digest[i % digest.len()];
        }
    }
    hex::encode(bytes)
}

/// A new network id: 64 hex digits.
fn random_id() -> String {
    random_hex(32)
}

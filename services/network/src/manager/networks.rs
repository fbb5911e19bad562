//! Creating, listing, inspecting and removing networks.

use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::ipam;
use crate::kernel::link;
use crate::model::{Attachment, DEFAULT_NETWORK, Driver, Network, NetworkSpec, validate_name};
use crate::store::Change;
use berth_api::filters::Filters;

use super::{Manager, State, first_host, random_id};

impl Manager {
    /// Creates a network in `namespace`.
    pub async fn create_network(&self, namespace: &str, spec: NetworkSpec) -> Result<Network> {
        validate_name("name", &spec.name)?;
        let driver = Driver::parse(&spec.driver)?;
        let mtu = match spec.options.get("mtu") {
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|m| (576..=65535).contains(m))
                .ok_or_else(|| {
                    Error::invalid("options", format!("mtu {v:?} is not 576..=65535"))
                })?,
            None => self.settings.mtu,
        };
        for key in spec.options.keys() {
            if !["mtu", "bridge.name"].contains(&key.as_str()) {
                return Err(Error::invalid(
                    "options",
                    format!("unknown option {key:?} (known: mtu, bridge.name)"),
                ));
            }
        }
        if driver == Driver::Cni && spec.cni_conflist.is_none() {
            return Err(Error::invalid(
                "cni_conflist",
                "a cni network needs a conflist",
            ));
        }
        if driver == Driver::Bridge && spec.cni_conflist.is_some() {
            return Err(Error::invalid(
                "cni_conflist",
                "only a cni network takes a conflist",
            ));
        }
        let mut st = self.state.lock().await;
        if spec.name == DEFAULT_NETWORK || st.find(namespace, &spec.name).is_ok() {
            return Err(Error::NetworkExists { name: spec.name });
        }
        let id = random_id();
        let bridge = match spec.options.get("bridge.name") {
            Some(name) => {
                let ok = !name.is_empty()
                    && name.len() <= 15
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    return Err(Error::invalid(
                        "options",
                        format!("bridge.name {name:?} is not an interface name (1-15 characters)"),
                    ));
                }
                if st.networks.values().any(|n| &n.bridge == name)
                    || link::index(&self.host, name).await?.is_some()
                {
                    return Err(Error::invalid(
                        "options",
                        format!("interface {name:?} already exists"),
                    ));
                }
                name.clone()
            }
            None => format!("berth-{}", &id[..9]),
        };
        let network = match driver {
            Driver::Bridge => {
                self.plan_bridge(&st, namespace, &spec, id, bridge, mtu)
                    .await?
            }
            Driver::Cni => {
                let network = crate::cni::plan_network(namespace, &spec, id, mtu)?;
                self.check_free(&st, network.subnet).await?;
                // berth removes a cni network's bridge with it: it must not be someone else's.
                if !network.bridge.is_empty()
                    && (st.networks.values().any(|n| n.bridge == network.bridge)
                        || link::index(&self.host, &network.bridge).await?.is_some())
                {
                    return Err(Error::invalid(
                        "cni_conflist",
                        format!("bridge {:?} already exists", network.bridge),
                    ));
                }
                network
            }
        };
        st.networks.insert(network.id.clone(), network.clone());
        let result = async {
            if network.driver == Driver::Bridge {
                self.activate(&mut st, &network).await?;
                self.sync_firewall(&mut st).await?;
            }
            self.store.commit(&[Change::PutNetwork(&network)])
        }
        .await;
        if let Err(e) = result {
            st.networks.remove(&network.id);
            if network.driver == Driver::Bridge {
                let _ = self.deactivate(&mut st, &network).await;
                let _ = self.sync_firewall(&mut st).await;
            }
            return Err(e);
        }
        tracing::info!(network = %network.name, subnet = %network.subnet, bridge = %network.bridge, "network created");
        Ok(network)
    }

    /// Checks and completes the addressing of a new bridge network.
    async fn plan_bridge(
        &self,
        st: &State,
        namespace: &str,
        spec: &NetworkSpec,
        id: String,
        bridge: String,
        mtu: u32,
    ) -> Result<Network> {
        let subnet = match spec.subnet {
            Some(subnet) => {
                if subnet != subnet.trunc() {
                    return Err(Error::invalid(
                        "subnet",
                        format!(
                            "{subnet} has host bits set: did you mean {}?",
                            subnet.trunc()
                        ),
                    ));
                }
                if subnet.prefix_len() > 30 {
                    return Err(Error::invalid(
                        "subnet",
                        format!("{subnet} is too small: at most /30"),
                    ));
                }
                self.check_free(st, subnet).await?;
                subnet
            }
            None => self.free_subnet(st, None).await?,
        };
        let gateway = match spec.gateway {
            Some(gw) => {
                if !subnet.contains(&gw) || gw == subnet.network() || gw == subnet.broadcast() {
                    return Err(Error::invalid(
                        "gateway",
                        format!("{gw} is not a host address of subnet {subnet}"),
                    ));
                }
                gw
            }
            None => first_host(subnet),
        };
        if let Some(range) = spec.ip_range
            && (range != range.trunc() || !subnet.contains(&range))
        {
            return Err(Error::invalid(
                "ip_range",
                format!("{range} is not a subnet inside {subnet}"),
            ));
        }
        Ok(Network {
            id,
            namespace: namespace.to_owned(),
            name: spec.name.clone(),
            driver: Driver::Bridge,
            subnet,
            gateway,
            ip_range: spec.ip_range,
            internal: spec.internal,
            icc: spec.icc,
            labels: spec.labels.clone(),
            options: spec.options.clone(),
            bridge,
            mtu,
            created_at: SystemTime::now(),
            predefined: false,
            dns: true,
            cni_conflist: None,
        })
    }

    /// Fails when `subnet` overlaps another network or a route or address on the host.
    async fn check_free(&self, st: &State, subnet: ipnet::Ipv4Net) -> Result<()> {
        if let Some(other) = st
            .networks
            .values()
            .find(|n| ipam::overlaps(n.subnet, subnet))
        {
            return Err(Error::SubnetOverlap {
                subnet,
                with: format!("network {:?} ({})", other.name, other.subnet),
            });
        }
        let host = link::host_prefixes(&self.host).await?;
        if let Some(route) = host.iter().find(|h| ipam::overlaps(**h, subnet)) {
            return Err(Error::SubnetOverlap {
                subnet,
                with: format!("{route}, a route or address already on the host"),
            });
        }
        Ok(())
    }

    /// Removes a network without attachments.
    pub async fn remove_network(&self, namespace: &str, name: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let network = st.find(namespace, name)?.clone();
        self.remove_locked(&mut st, &network).await
    }

    async fn remove_locked(&self, st: &mut State, network: &Network) -> Result<()> {
        if network.predefined {
            return Err(Error::Predefined {
                name: network.name.clone(),
            });
        }
        let attached: Vec<&str> = st
            .attachments_of(&network.id)
            .map(|a| a.container_id.as_str())
            .collect();
        if !attached.is_empty() {
            return Err(Error::NetworkInUse {
                name: network.name.clone(),
                containers: attached.join(", "),
            });
        }
        st.networks.remove(&network.id);
        let result = async {
            match network.driver {
                Driver::Bridge => {
                    self.deactivate(st, network).await?;
                    self.sync_firewall(st).await?;
                }
                Driver::Cni => self.remove_cni_leftovers(network).await?,
            }
            self.store.commit(&[Change::DeleteNetwork(network)])
        }
        .await;
        if let Err(e) = result {
            // Put the record back; the next start re-creates what is missing.
            st.networks.insert(network.id.clone(), network.clone());
            return Err(e);
        }
        st.ipam.forget(&network.id);
        self.names.forget(&network.id);
        tracing::info!(network = %network.name, "network removed");
        Ok(())
    }

    /// Removes every network of `namespace` that matches `filters` and has no attachment.
    pub async fn prune_networks(&self, namespace: &str, filters: &[String]) -> Result<Vec<String>> {
        let filters = Filters::parse(filters)?;
        let mut st = self.state.lock().await;
        let candidates: Vec<Network> = st
            .networks
            .values()
            .filter(|n| n.namespace == namespace && !n.predefined)
            .filter(|n| st.attachments_of(&n.id).next().is_none())
            .filter(|n| filters.matches_with(|path| field(n, path)))
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for n in candidates {
            self.remove_locked(&mut st, &n).await?;
            removed.push(n.name);
        }
        Ok(removed)
    }

    /// The networks visible in `namespace` that match `filters`, with their attachment counts.
    pub async fn list_networks(
        &self,
        namespace: &str,
        filters: &[String],
    ) -> Result<Vec<(Network, usize)>> {
        let filters = Filters::parse(filters)?;
        let st = self.state.lock().await;
        let mut found: Vec<(Network, usize)> = st
            .networks
            .values()
            .filter(|n| n.visible_in(namespace))
            .filter(|n| filters.matches_with(|path| field(n, path)))
            .map(|n| (n.clone(), st.attachments_of(&n.id).count()))
            .collect();
        found.sort_by(|a, b| (!a.0.predefined, &a.0.name).cmp(&(!b.0.predefined, &b.0.name)));
        Ok(found)
    }

    /// A network and its attachments (of every namespace for the predefined network, shown
    /// only for `namespace`).
    pub async fn inspect_network(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Network, Vec<Attachment>)> {
        let st = self.state.lock().await;
        let network = st.find(namespace, name)?.clone();
        let attachments = st
            .attachments_of(&network.id)
            .filter(|a| a.namespace == namespace)
            .cloned()
            .collect();
        Ok((network, attachments))
    }
}

/// The value of a filter field path on a network.
fn field(n: &Network, path: &[String]) -> Option<String> {
    match path {
        [f] => match f.as_str() {
            "id" => Some(n.id.clone()),
            "name" => Some(n.name.clone()),
            "driver" => Some(n.driver.name().to_owned()),
            "subnet" => Some(n.subnet.to_string()),
            "gateway" => Some(n.gateway.to_string()),
            "internal" => Some(n.internal.to_string()),
            "icc" => Some(n.icc.to_string()),
            "bridge" => Some(n.bridge.clone()),
            "predefined" => Some(n.predefined.to_string()),
            _ => None,
        },
        [l, key] if l == "labels" => n.labels.get(key).cloned(),
        [o, key] if o == "options" => n.options.get(key).cloned(),
        _ => None,
    }
}

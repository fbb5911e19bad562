//! Attaching to CNI networks: the plugins do the plumbing and the addressing; berth records the
//! result (for DEL and CHECK) and the address (so no duplicate is ever recorded).

use std::path::PathBuf;

use crate::cni::{self, Conflist, Invocation, Runner};
use crate::error::{Error, Result};
use crate::model::{AttachSpec, Attachment, DnsConfig, Network, attachment_key, mac_for};
use crate::store::Change;

use super::{Manager, State};

impl Manager {
    fn cni_runner(&self) -> Runner {
        Runner {
            dirs: self.settings.cni_plugin_dirs.clone(),
            state_dir: self.settings.cni_state_dir.clone(),
        }
    }

    fn conflist(network: &Network) -> Result<Conflist> {
        Conflist::parse(network.cni_conflist.as_deref().unwrap_or_default())
    }

    /// Runs the network's plugins (ADD) for a container and records the attachment.
    pub(super) async fn attach_cni(
        &self,
        st: &mut State,
        namespace: &str,
        network: &Network,
        spec: &AttachSpec,
        netns_path: PathBuf,
        interface: String,
    ) -> Result<Attachment> {
        let list = Self::conflist(network)?;
        if spec.ip.is_some() || spec.mac.is_some() {
            return Err(Error::invalid(
                "ip",
                "a cni network's plugins choose addresses: no static ip or mac",
            ));
        }
        if !spec.ports.is_empty() && !list.maps_ports() {
            return Err(Error::invalid(
                "ports",
                format!(
                    "network {:?} has no plugin with the portMappings capability",
                    network.name
                ),
            ));
        }
        let (ports, reservations) = self.publish(st, network, &spec.ports)?;
        // portmap binds nothing itself: hand it the ports we hold and keep holding them.
        let args = cni::cni_args(namespace, &spec.container_id);
        let inv = Invocation {
            container_id: &spec.container_id,
            netns: &netns_path,
            ifname: &interface,
            args: &args,
            ports: &ports,
        };
        let runner = self.cni_runner();
        let result = runner.add(&list, &inv).await?;
        let undo = async |e: Error| {
            let _ = runner.del(&list, &inv, Some(&result)).await;
            Err(e)
        };
        let addressing = match cni::addressing(&result, &interface) {
            Ok(a) => a,
            Err(e) => return undo(e).await,
        };
        let attachment = Attachment {
            namespace: namespace.to_owned(),
            network: network.name.clone(),
            network_id: network.id.clone(),
            container_id: spec.container_id.clone(),
            netns_path: netns_path.clone(),
            interface: interface.clone(),
            host_interface: String::new(),
            ip: addressing.ip,
            prefix_len: addressing.prefix_len,
            gateway: addressing.gateway,
            mac: addressing.mac.unwrap_or_else(|| mac_for(addressing.ip)),
            ports: ports.to_vec(),
            aliases: spec.aliases.clone(),
            dns: if !spec.dns.is_empty() {
                spec.dns.clone()
            } else if !addressing.dns.is_empty() {
                DnsConfig {
                    servers: addressing.dns.clone(),
                    ..Default::default()
                }
            } else {
                super::attachments::host_resolv_conf()
            },
            extra_hosts: spec.extra_hosts.clone(),
            cni_result: Some(result.to_string()),
        };
        if let Err(e) = self.store.commit(&[Change::PutAttachment(&attachment)]) {
            return undo(e).await;
        }
        let key = attachment_key(namespace, &spec.container_id, &network.id);
        st.ipam.insert(
            &network.id,
            attachment.ip,
            &format!("container {:?}", spec.container_id),
        );
        st.attachments.insert(key.clone(), attachment.clone());
        st.reservations.insert(key, reservations);
        tracing::info!(container = %attachment.container_id, network = %network.name,
            ip = %attachment.ip, "attached through cni");
        Ok(attachment)
    }

    /// Runs the network's plugins (DEL) for a container.
    pub(super) async fn detach_cni(&self, network: &Network, a: &Attachment) -> Result<()> {
        let list = Self::conflist(network)?;
        let result: Option<serde_json::Value> = a
            .cni_result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok());
        let args = cni::cni_args(&a.namespace, &a.container_id);
        let inv = Invocation {
            container_id: &a.container_id,
            netns: &a.netns_path,
            ifname: &a.interface,
            args: &args,
            ports: &a.ports,
        };
        self.cni_runner().del(&list, &inv, result.as_ref()).await
    }

    /// Runs the network's plugins (CHECK) for an attachment: is it still as ADD left it?
    pub(super) async fn check_cni_attachment(
        &self,
        network: &Network,
        a: &Attachment,
    ) -> Result<()> {
        let list = Self::conflist(network)?;
        let result: serde_json::Value = a
            .cni_result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or_default();
        let args = cni::cni_args(&a.namespace, &a.container_id);
        let inv = Invocation {
            container_id: &a.container_id,
            netns: &a.netns_path,
            ifname: &a.interface,
            args: &args,
            ports: &a.ports,
        };
        self.cni_runner().check(&list, &inv, &result).await
    }

    /// What a CNI network leaves when its last container is gone: the bridge its bridge plugin
    /// created and host-local's allocation directory.
    pub(super) async fn remove_cni_leftovers(&self, network: &Network) -> Result<()> {
        if !network.bridge.is_empty() {
            crate::kernel::link::delete(&self.host, &network.bridge).await?;
        }
        let list = Self::conflist(network)?;
        let dir = self
            .settings
            .cni_state_dir
            .join("networks")
            .join(&list.name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove cni state", dir, e)),
        }
    }
}

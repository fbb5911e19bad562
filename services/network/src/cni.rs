//! CNI mode: networks backed by CNI plugins run from a conflist, per the CNI spec (1.0): the
//! plugins of the list run in order for ADD, each getting the previous one's result as
//! `prevResult`, and in reverse order for DEL and CHECK with the attachment's final result.
//! Parameters travel in `CNI_*` environment variables and the network configuration on stdin;
//! the result (or a CNI error) comes back on stdout. A failed ADD is undone with DEL of every
//! plugin of the list, so a failed attach leaves nothing behind.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::model::{Driver, Network, NetworkSpec, PortMapping};

/// How long one plugin call may take.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed conflist.
#[derive(Debug, Clone)]
pub struct Conflist {
    /// The whole list as given.
    pub raw: Value,
    /// Network name in the list.
    pub name: String,
    /// CNI version.
    pub version: String,
    /// The plugin configurations, in order.
    pub plugins: Vec<Value>,
}

impl Conflist {
    /// Parses and checks a conflist.
    pub fn parse(text: &str) -> Result<Conflist> {
        let bad = |reason: String| Error::invalid("cni_conflist", reason);
        let raw: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let name = raw["name"]
            .as_str()
            .ok_or_else(|| bad("no \"name\"".into()))?
            .to_owned();
        let version = raw["cniVersion"]
            .as_str()
            .ok_or_else(|| bad("no \"cniVersion\"".into()))?
            .to_owned();
        let plugins = raw["plugins"]
            .as_array()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| bad("no \"plugins\" list".into()))?
            .clone();
        for p in &plugins {
            let ok = p["type"]
                .as_str()
                .is_some_and(|t| !t.is_empty() && !t.contains('/'));
            if !ok {
                return Err(bad(format!("plugin without a valid \"type\": {p}")));
            }
        }
        Ok(Conflist {
            raw,
            name,
            version,
            plugins,
        })
    }

    /// The subnet of the first plugin's IPAM (`ipam.subnet` or `ipam.ranges[0][0].subnet`).
    pub fn subnet(&self) -> Option<Ipv4Net> {
        self.plugins.iter().find_map(|p| {
            let ipam = &p["ipam"];
            ipam["subnet"]
                .as_str()
                .or_else(|| ipam["ranges"][0][0]["subnet"].as_str())
                .and_then(|s| s.parse().ok())
        })
    }

    /// The bridge a `bridge` plugin creates.
    pub fn bridge(&self) -> Option<String> {
        self.plugins
            .iter()
            .find(|p| p["type"] == "bridge")
            .map(|p| p["bridge"].as_str().unwrap_or("cni0").to_owned())
    }

    /// Whether a plugin takes port mappings (`capabilities.portMappings`).
    pub fn maps_ports(&self) -> bool {
        self.plugins
            .iter()
            .any(|p| p["capabilities"]["portMappings"] == true)
    }
}

/// Checks a CNI network's conflist and builds its record.
pub fn plan_network(namespace: &str, spec: &NetworkSpec, id: String, mtu: u32) -> Result<Network> {
    let text = spec.cni_conflist.as_deref().unwrap_or_default();
    let list = Conflist::parse(text)?;
    let subnet = list.subnet().ok_or_else(|| {
        Error::invalid(
            "cni_conflist",
            "the first IPAM of the list names no IPv4 subnet (ipam.subnet or ipam.ranges)",
        )
    })?;
    Ok(Network {
        id,
        namespace: namespace.to_owned(),
        name: spec.name.clone(),
        driver: Driver::Cni,
        subnet,
        gateway: subnet.hosts().next().unwrap_or(subnet.network()),
        ip_range: None,
        internal: spec.internal,
        icc: true,
        labels: spec.labels.clone(),
        options: spec.options.clone(),
        bridge: list.bridge().unwrap_or_default(),
        mtu,
        created_at: SystemTime::now(),
        predefined: false,
        dns: false,
        cni_conflist: Some(text.to_owned()),
    })
}

/// One plugin invocation's parameters.
pub struct Invocation<'a> {
    /// Container id.
    pub container_id: &'a str,
    /// Netns path.
    pub netns: &'a Path,
    /// Interface name.
    pub ifname: &'a str,
    /// Extra `CNI_ARGS` pairs.
    pub args: &'a [(String, String)],
    /// Published ports (runtimeConfig.portMappings).
    pub ports: &'a [PortMapping],
}

/// Runs the CNI plugins of a network.
#[derive(Debug, Clone)]
pub struct Runner {
    /// Directories searched for plugin binaries.
    pub dirs: Vec<PathBuf>,
    /// Where host-local IPAM keeps its state when the conflist does not say.
    pub state_dir: PathBuf,
}

impl Runner {
    /// ADD through the whole list; returns the final result. Undoes everything on failure.
    pub async fn add(&self, list: &Conflist, inv: &Invocation<'_>) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            match self.exec("ADD", list, plugin, inv, prev.as_ref()).await {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    let _ = self.del(list, inv, prev.as_ref()).await;
                    return Err(e);
                }
            }
        }
        prev.ok_or_else(|| Error::invalid("cni_conflist", "no plugins"))
    }

    /// CHECK through the whole list against the attachment's result.
    pub async fn check(&self, list: &Conflist, inv: &Invocation<'_>, result: &Value) -> Result<()> {
        for plugin in &list.plugins {
            self.exec("CHECK", list, plugin, inv, Some(result)).await?;
        }
        Ok(())
    }

    /// DEL through the list in reverse order; every plugin runs even when one fails (the first
    /// error is returned).
    pub async fn del(
        &self,
        list: &Conflist,
        inv: &Invocation<'_>,
        result: Option<&Value>,
    ) -> Result<()> {
        let mut first = None;
        for plugin in list.plugins.iter().rev() {
            if let Err(e) = self.exec("DEL", list, plugin, inv, result).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn find(&self, plugin: &str) -> Result<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::CniPluginNotFound {
                plugin: plugin.to_owned(),
                dirs: self
                    .dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The configuration one plugin gets on stdin.
    fn config(
        &self,
        list: &Conflist,
        plugin: &Value,
        inv: &Invocation<'_>,
        prev: Option<&Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = json!(list.name);
        conf["cniVersion"] = json!(list.version);
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        if conf["ipam"]["type"] == "host-local" && conf["ipam"]["dataDir"].is_null() {
            conf["ipam"]["dataDir"] = json!(self.state_dir.join("networks"));
        }
        if plugin["capabilities"]["portMappings"] == true {
            let mappings: Vec<Value> = inv
                .ports
                .iter()
                .map(|p| {
                    json!({
                        "hostPort": p.host_port,
                        "containerPort": p.container_port,
                        "protocol": p.protocol.to_string(),
                        "hostIP": if p.host_ip.is_unspecified() { String::new() } else { p.host_ip.to_string() },
                    })
                })
                .collect();
            conf["runtimeConfig"] = json!({ "portMappings": mappings });
        }
        conf
    }

    async fn exec(
        &self,
        command: &'static str,
        list: &Conflist,
        plugin: &Value,
        inv: &Invocation<'_>,
        prev: Option<&Value>,
    ) -> Result<Value> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_owned();
        let binary = self.find(&kind)?;
        let fail = |message: String| Error::Cni {
            plugin: kind.clone(),
            command,
            message,
        };
        let stdin = serde_json::to_vec(&self.config(list, plugin, inv, prev))
            .map_err(|e| fail(e.to_string()))?;
        let mut args = vec!["IgnoreUnknown=1".to_owned()];
        args.extend(inv.args.iter().map(|(k, v)| format!("{k}={v}")));
        let path = std::env::join_paths(&self.dirs).map_err(|e| fail(e.to_string()))?;
        let mut child = tokio::process::Command::new(&binary)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", inv.container_id)
            .env("CNI_NETNS", inv.netns)
            .env("CNI_IFNAME", inv.ifname)
            .env("CNI_ARGS", args.join(";"))
            .env("CNI_PATH", path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", binary.display())))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(&stdin)
                .await
                .map_err(|e| fail(format!("writing its stdin: {e}")))?;
        }
        let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| fail(format!("no answer within {PLUGIN_TIMEOUT:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            let message = match &parsed {
                Some(err) if err["msg"].is_string() => format!(
                    "error {}: {}{}",
                    err["code"],
                    err["msg"].as_str().unwrap_or_default(),
                    err["details"]
                        .as_str()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ),
                _ => format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            };
            return Err(fail(message));
        }
        if command != "ADD" {
            return Ok(Value::Null);
        }
        match parsed {
            Some(result) if result.is_object() => Ok(result),
            _ => Err(fail(format!(
                "returned something that is not a CNI result: {:?}",
                String::from_utf8_lossy(&out.stdout)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))),
        }
    }
}

/// What berth keeps of an ADD result: the container's address, gateway and MAC.
#[derive(Debug, PartialEq, Eq)]
pub struct Addressing {
    /// Address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Gateway, if the result names one.
    pub gateway: Option<Ipv4Addr>,
    /// MAC of the container interface, if the result names it.
    pub mac: Option<[u8; 6]>,
    /// DNS servers of the result.
    pub dns: Vec<String>,
}

/// Reads the first IPv4 address of a result.
pub fn addressing(result: &Value, ifname: &str) -> Result<Addressing> {
    let bad = |reason: &str| Error::Cni {
        plugin: "(chain)".into(),
        command: "ADD",
        message: format!("result {reason}: {result}"),
    };
    let ips = result["ips"].as_array().ok_or_else(|| bad("has no ips"))?;
    let (net, gateway) = ips
        .iter()
        .find_map(|ip| {
            let net: Ipv4Net = ip["address"].as_str()?.parse().ok()?;
            let gw = ip["gateway"].as_str().and_then(|g| g.parse().ok());
            Some((net, gw))
        })
        .ok_or_else(|| bad("has no IPv4 address"))?;
    let mac = result["interfaces"].as_array().and_then(|ifs| {
        ifs.iter()
            .find(|i| i["name"] == ifname && i["sandbox"].as_str().is_some_and(|s| !s.is_empty()))
            .and_then(|i| i["mac"].as_str())
            .and_then(|m| crate::model::parse_mac(m).ok())
    });
    let dns = result["dns"]["nameservers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Addressing {
        ip: net.addr(),
        prefix_len: net.prefix_len(),
        gateway,
        mac,
        dns,
    })
}

/// The `CNI_ARGS` berth passes besides `IgnoreUnknown=1`: the container's namespace and id.
pub fn cni_args(namespace: &str, container_id: &str) -> Vec<(String, String)> {
    vec![
        ("BERTH_NAMESPACE".into(), namespace.into()),
        ("BERTH_CONTAINER_ID".into(), container_id.into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_checks() {
        let ok = r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","bridge":"br9","ipam":{"type":"host-local","ranges":[[{"subnet":"10.9.0.0/24"}]]}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
        let list = Conflist::parse(ok).unwrap();
        assert_eq!(list.subnet(), Some("10.9.0.0/24".parse().unwrap()));
        assert_eq!(list.bridge().as_deref(), Some("br9"));
        assert!(list.maps_ports());
        for bad in [
            "nope",
            r#"{"name":"n","plugins":[{"type":"x"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
        ] {
            assert!(Conflist::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn result_addressing() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "br0", "mac": "aa:bb:cc:dd:ee:ff"},
                           {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/x"}],
            "ips": [{"address": "10.9.0.2/24", "gateway": "10.9.0.1", "interface": 1}],
        });
        let a = addressing(&result, "eth0").unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(a.prefix_len, 24);
        assert_eq!(a.gateway, Some(Ipv4Addr::new(10, 9, 0, 1)));
        assert_eq!(a.mac, Some([2, 0, 0, 0, 0, 1]));
        assert!(addressing(&json!({"ips": []}), "eth0").is_err());
        assert!(addressing(&json!("garbage"), "eth0").is_err());
    }
}

//! The parts of an OCI runtime spec the shim reads itself: the runtime reads the whole
//! config.json; the shim only needs the process (to check its command and terminal), the root
//! path, the mount destinations, and a shape check of LinuxResources for Update. Kept to these
//! few serde types rather than a full spec crate: the shim's binary size is its memory
//! footprint (a full spec model and its regex dependency would double it).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A config.json, as far as the shim reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// Required by the OCI spec.
    #[allow(dead_code)]
    pub oci_version: String,
    pub process: Option<Process>,
    pub root: Option<Root>,
    #[serde(default)]
    pub mounts: Vec<MountPoint>,
}

/// The process of a spec (or of an exec).
#[derive(Debug, Default, Deserialize)]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
}

/// The root filesystem of a spec.
#[derive(Debug, Deserialize)]
pub struct Root {
    pub path: PathBuf,
}

/// A mount of a spec (only where it goes).
#[derive(Debug, Deserialize)]
pub struct MountPoint {
    pub destination: PathBuf,
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<Spec, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&data).map_err(|e| format!("config.json: {e}"))
}

/// Parses an exec's process JSON, sets its `terminal`, and returns it with the JSON to hand
/// to the runtime (unknown fields kept as they are).
pub fn exec_process(data: &[u8], terminal: bool) -> Result<(Process, Vec<u8>), String> {
    let mut value: serde_json::Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let object = value
        .as_object_mut()
        .ok_or("not a JSON object".to_owned())?;
    object.insert("terminal".into(), terminal.into());
    let process: Process = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let json = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    Ok((process, json))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Memory {
    limit: Option<i64>,
    reservation: Option<i64>,
    swap: Option<i64>,
    kernel: Option<i64>,
    kernel_tcp: Option<i64>,
    swappiness: Option<u64>,
    disable_oom_killer: Option<bool>,
    use_hierarchy: Option<bool>,
    check_before_update: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Cpu {
    shares: Option<u64>,
    quota: Option<i64>,
    burst: Option<u64>,
    period: Option<u64>,
    realtime_runtime: Option<i64>,
    realtime_period: Option<u64>,
    cpus: Option<String>,
    mems: Option<String>,
    idle: Option<i64>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Pids {
    limit: i64,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Resources {
    memory: Option<Memory>,
    cpu: Option<Cpu>,
    pids: Option<Pids>,
    #[serde(flatten)]
    others: serde_json::Map<String, serde_json::Value>,
}

/// Checks that `data` is an OCI LinuxResources object (the limits Update supports are typed;
/// other members pass through to the runtime).
pub fn check_resources(data: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<Resources>(data)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_process_keeps_unknown_fields() {
        let (p, json) =
            exec_process(br#"{"args":["sh"],"cwd":"/","user":{"uid":0}}"#, true).expect("valid");
        assert_eq!(p.args, ["sh"]);
        assert!(p.terminal);
        let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(v["user"]["uid"], 0);
        assert!(exec_process(b"[1]", false).is_err());
    }

    #[test]
    fn resources_shape() {
        assert!(check_resources(br#"{"memory":{"limit":1048576},"devices":[]}"#).is_ok());
        assert!(check_resources(br#"{"memory":5}"#).is_err());
        assert!(check_resources(b"[]").is_err());
    }
}

//! Capabilities, seccomp, no-new-privileges, devices and masked paths of a container.
//!
//! The default seccomp profile (`seccomp_default.json`) is Docker's default profile (moby,
//! Apache-2.0) in Docker's profile format, reduced to the x86_64 and aarch64 architectures;
//! user profiles in the same format go through the same conversion.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxDevice, LinuxDeviceBuilder,
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscallBuilder,
};
use serde::Deserialize;

use super::{RunOptions, SpecError};

/// Docker's default capabilities.
pub(super) const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability up to CAP_CHECKPOINT_RESTORE (41, Linux 5.9+), indexed by number.
const ALL_CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's masked paths (bind-mounted over with /dev/null or an empty tmpfs).
pub(super) const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub(super) const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Docker's default profile in Docker's format.
const DEFAULT_PROFILE: &str = include_str!("seccomp_default.json");

/// Device nodes every container may use (major, minor; -1 = any): null, zero, full, random,
/// urandom, tty, console, ptmx, the pty slaves, and tun.
const ALLOWED_CHAR_DEVICES: [(i64, i64); 10] = [
    (1, 3),
    (1, 5),
    (1, 7),
    (1, 8),
    (1, 9),
    (5, 0),
    (5, 1),
    (5, 2),
    (136, -1),
    (10, 200),
];

/// The security-related parts of a spec, derived from the options.
pub(super) struct Security {
    pub capabilities: LinuxCapabilities,
    pub seccomp: Option<LinuxSeccomp>,
    pub no_new_privileges: bool,
    pub devices: Vec<LinuxDevice>,
    pub device_rules: Vec<LinuxDeviceCgroup>,
}

impl Security {
    pub fn from_options(opts: &RunOptions) -> Result<Security, SpecError> {
        let caps = if opts.privileged {
            all_caps()
        } else {
            capabilities(&opts.cap_add, &opts.cap_drop)?
        };
        let mut no_new_privileges = false;
        let mut seccomp_opt: Option<&str> = None;
        for opt in &opts.security_opt {
            let (key, value) = opt
                .split_once(['=', ':'])
                .map_or((opt.as_str(), None), |(k, v)| (k, Some(v)));
            match (key, value) {
                ("no-new-privileges", None | Some("true")) => no_new_privileges = true,
                ("no-new-privileges", Some("false")) => no_new_privileges = false,
                ("seccomp", Some(v)) if !v.is_empty() => seccomp_opt = Some(v),
                // berth applies no AppArmor or SELinux profile: asking for none is satisfied.
                ("apparmor", Some("unconfined")) | ("label", Some("disable")) => {}
                ("apparmor" | "label", _) => {
                    return Err(SpecError::SecurityOpt {
                        option: short(opt),
                        reason: "AppArmor and SELinux profiles are not supported \
                                 (only apparmor=unconfined and label=disable)"
                            .into(),
                    });
                }
                _ => {
                    return Err(SpecError::SecurityOpt {
                        option: short(opt),
                        reason: "expected no-new-privileges[:true|false], seccomp=unconfined or \
                                 seccomp=<profile JSON>"
                            .into(),
                    });
                }
            }
        }
        let seccomp =
            match seccomp_opt {
                Some("unconfined") => None,
                _ if opts.privileged => None,
                Some(profile) => Some(convert_profile(profile, &caps).map_err(|reason| {
                    SpecError::SecurityOpt {
                        option: short(&format!("seccomp={profile}")),
                        reason,
                    }
                })?),
                None => Some(default_profile(&caps)),
            };
        let mut device_rules = vec![rule(false, None, None, None, "rwm")];
        let mut devices = Vec::new();
        if opts.privileged {
            device_rules.push(rule(true, None, None, None, "rwm"));
            host_devices(Path::new("/dev"), &mut devices);
        } else {
            device_rules.push(rule(true, Some(LinuxDeviceType::C), None, None, "m"));
            device_rules.push(rule(true, Some(LinuxDeviceType::B), None, None, "m"));
            for (major, minor) in ALLOWED_CHAR_DEVICES {
                let minor = (minor >= 0).then_some(minor);
                device_rules.push(rule(
                    true,
                    Some(LinuxDeviceType::C),
                    Some(major),
                    minor,
                    "rwm",
                ));
            }
        }
        for d in &opts.devices {
            let (device, access) = user_device(d)?;
            device_rules.push(rule(
                true,
                Some(device.typ()),
                Some(device.major()),
                Some(device.minor()),
                &access,
            ));
            devices.retain(|x: &LinuxDevice| x.path() != device.path());
            devices.push(device);
        }
        let set: HashSet<Capability> = caps;
        let capabilities = LinuxCapabilitiesBuilder::default()
            .bounding(set.clone())
            .effective(set.clone())
            .permitted(set)
            .inheritable(HashSet::new())
            .ambient(HashSet::new())
            .build()
            .expect("capabilities are complete");
        Ok(Security {
            capabilities,
            seccomp,
            no_new_privileges,
            devices,
            device_rules,
        })
    }
}

/// A security option shortened for an error message (a profile can be long).
fn short(opt: &str) -> String {
    if opt.len() > 60 {
        let end = (0..=60)
            .rev()
            .find(|&i| opt.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}...", &opt[..end])
    } else {
        opt.to_owned()
    }
}

fn rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .access(access.to_owned());
    if let Some(t) = typ {
        b = b.typ(t);
    }
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    b.build().expect("a device rule is complete")
}

/// `NET_ADMIN`, `net_admin`, `CAP_NET_ADMIN` → the capability.
fn parse_cap(name: &str) -> Result<Capability, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if !ALL_CAPS.contains(&bare) {
        return Err(SpecError::Capability { name: name.into() });
    }
    Capability::from_str(bare).map_err(|_| SpecError::Capability { name: name.into() })
}

/// "ALL": every capability the host lets berth hold (its bounding set, as Docker uses the
/// capabilities the daemon has), so that a sandboxed host without some of them still runs
/// privileged containers.
fn all_caps() -> HashSet<Capability> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) != 0)
        .filter_map(|(_, c)| Capability::from_str(c).ok())
        .collect()
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// Docker's rules: ALL in cap_add grants every capability (minus cap_drop); ALL in cap_drop
/// starts from none (plus cap_add); otherwise the defaults plus cap_add minus cap_drop.
fn capabilities(add: &[String], drop: &[String]) -> Result<HashSet<Capability>, SpecError> {
    let adds: Vec<Capability> = add
        .iter()
        .filter(|c| !is_all(c))
        .map(|c| parse_cap(c))
        .collect::<Result<_, _>>()?;
    let drops: Vec<Capability> = drop
        .iter()
        .filter(|c| !is_all(c))
        .map(|c| parse_cap(c))
        .collect::<Result<_, _>>()?;
    let mut caps: HashSet<Capability> = if add.iter().any(|c| is_all(c)) {
        all_caps()
    } else if drop.iter().any(|c| is_all(c)) {
        return Ok(adds.into_iter().collect());
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|c| parse_cap(c))
            .collect::<Result<_, _>>()?
    };
    caps.extend(adds);
    for d in drops {
        caps.remove(&d);
    }
    Ok(caps)
}

/// `host[:container[:perms]]` → the device node (from the host's) and its cgroup access.
fn user_device(spec: &str) -> Result<(LinuxDevice, String), SpecError> {
    let bad = |reason: String| SpecError::Device {
        device: spec.into(),
        reason,
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, container, perms) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, p] if !p.starts_with('/') => (*h, *h, *p),
        [h, c] => (*h, *c, "rwm"),
        [h, c, p] => (*h, *c, *p),
        _ => {
            return Err(bad(
                "expected host path[:container path[:permissions]]".into()
            ));
        }
    };
    if !host.starts_with('/') || !container.starts_with('/') {
        return Err(bad("device paths must be absolute".into()));
    }
    if perms.is_empty() || !perms.chars().all(|c| "rwm".contains(c)) {
        return Err(bad(format!(
            "permissions {perms:?} are not a subset of \"rwm\""
        )));
    }
    let meta = std::fs::metadata(host).map_err(|e| bad(format!("cannot stat {host}: {e}")))?;
    let typ = if meta.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if meta.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(bad(format!("{host} is not a device node")));
    };
    Ok((device_node(container, typ, &meta), perms.to_owned()))
}

fn device_node(path: &str, typ: LinuxDeviceType, meta: &std::fs::Metadata) -> LinuxDevice {
    let rdev = meta.rdev();
    LinuxDeviceBuilder::default()
        .path(path)
        .typ(typ)
        .major(libc::major(rdev) as i64)
        .minor(libc::minor(rdev) as i64)
        .file_mode(meta.mode() & 0o777)
        .uid(meta.uid())
        .gid(meta.gid())
        .build()
        .expect("a device node is complete")
}

/// Every device node under the host's /dev (privileged containers), except pty slaves and
/// the directories the runtime mounts itself.
fn host_devices(dir: &Path, out: &mut Vec<LinuxDevice>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            if !matches!(
                path.to_str(),
                Some("/dev/pts" | "/dev/shm" | "/dev/mqueue" | "/dev/fd")
            ) {
                host_devices(&path, out);
            }
        } else if let Some(p) = path.to_str().filter(|p| *p != "/dev/console") {
            if ft.is_char_device() {
                out.push(device_node(p, LinuxDeviceType::C, &meta));
            } else if ft.is_block_device() {
                out.push(device_node(p, LinuxDeviceType::B, &meta));
            }
        }
    }
}

/// A seccomp profile in Docker's format.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<Arch>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    syscalls: Vec<Rule>,
    #[serde(default)]
    flags: Vec<oci_spec::runtime::LinuxSeccompFilterFlag>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    listener_metadata: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Option<Vec<Arch>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<RuleArg>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleArg {
    index: usize,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: LinuxSeccompOperator,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// Docker's (Go) name of the architecture berth runs on.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// The native architecture and the ones it also runs, as seccomp names.
fn native_arches(profile: &Profile) -> Vec<Arch> {
    let native = match std::env::consts::ARCH {
        "x86_64" => Arch::ScmpArchX86_64,
        "aarch64" => Arch::ScmpArchAarch64,
        _ => return profile.architectures.clone(),
    };
    if !profile.architectures.is_empty() {
        return profile.architectures.clone();
    }
    let mut arches = vec![native];
    if let Some(m) = profile.arch_map.iter().find(|m| m.architecture == native) {
        arches.extend(m.sub_architectures.clone().unwrap_or_default());
    }
    arches
}

fn kernel_at_least(min: &str) -> Result<bool, String> {
    let parse = |s: &str| -> Option<(u32, u32)> {
        let mut it = s.split(['.', '-']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    let want = parse(min).ok_or_else(|| format!("invalid minKernel {min:?}"))?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Ok(parse(release.trim()).is_none_or(|have| have >= want))
}

/// Converts a Docker-format profile into the OCI form for a process with `caps`: rules whose
/// `includes`/`excludes` do not match the capabilities, the architecture or the kernel are dropped.
fn convert_profile(json: &str, caps: &HashSet<Capability>) -> Result<LinuxSeccomp, String> {
    let profile: Profile = serde_json::from_str(json)
        .map_err(|e| format!("not a seccomp profile in Docker's format: {e}"))?;
    convert(&profile, caps)
}

/// Docker's default profile for a process with `caps` (the profile is parsed once).
fn default_profile(caps: &HashSet<Capability>) -> LinuxSeccomp {
    static PROFILE: std::sync::OnceLock<Profile> = std::sync::OnceLock::new();
    let profile = PROFILE.get_or_init(|| {
        serde_json::from_str(DEFAULT_PROFILE).expect("the built-in seccomp profile parses")
    });
    convert(profile, caps).expect("the built-in seccomp profile converts")
}

fn convert(profile: &Profile, caps: &HashSet<Capability>) -> Result<LinuxSeccomp, String> {
    let has_cap = |name: &str| parse_cap(name).is_ok_and(|c| caps.contains(&c));
    let arch = go_arch();
    let architectures = native_arches(profile);
    let mut syscalls = Vec::new();
    for rule in &profile.syscalls {
        let inc = &rule.includes;
        let exc = &rule.excludes;
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == arch) {
            continue;
        }
        if !inc.caps.is_empty() && !inc.caps.iter().all(|c| has_cap(c)) {
            continue;
        }
        if let Some(min) = &inc.min_kernel
            && !kernel_at_least(min)?
        {
            continue;
        }
        if exc.arches.iter().any(|a| a == arch) || exc.caps.iter().any(|c| has_cap(c)) {
            continue;
        }
        if let Some(min) = &exc.min_kernel
            && kernel_at_least(min)?
        {
            continue;
        }
        let mut names = rule.names.clone();
        names.extend(rule.name.clone());
        if names.is_empty() {
            return Err("a syscall rule has no names".into());
        }
        let args = rule
            .args
            .iter()
            .map(|a| {
                if a.index > 5 {
                    return Err(format!("syscall argument index {} is above 5", a.index));
                }
                Ok(LinuxSeccompArgBuilder::default()
                    .index(a.index)
                    .value(a.value)
                    .value_two(a.value_two)
                    .op(a.op)
                    .build()
                    .expect("a seccomp argument is complete"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut b = LinuxSyscallBuilder::default()
            .names(names)
            .action(rule.action);
        if let Some(e) = rule.errno_ret {
            b = b.errno_ret(e);
        }
        if !args.is_empty() {
            b = b.args(args);
        }
        syscalls.push(b.build().expect("a syscall rule is complete"));
    }
    let mut b = LinuxSeccompBuilder::default()
        .default_action(profile.default_action)
        .architectures(architectures)
        .syscalls(syscalls);
    if let Some(e) = profile.default_errno_ret {
        b = b.default_errno_ret(e);
    }
    if !profile.flags.is_empty() {
        b = b.flags(profile.flags.clone());
    }
    if let Some(p) = &profile.listener_path {
        b = b.listener_path(p.clone());
    }
    if let Some(m) = &profile.listener_metadata {
        b = b.listener_metadata(m.clone());
    }
    Ok(b.build().expect("a seccomp profile is complete"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_follows_capabilities() {
        let default = capabilities(&[], &[]).unwrap();
        let p = convert_profile(DEFAULT_PROFILE, &default).unwrap();
        let allowed = |name: &str| {
            p.syscalls().as_ref().unwrap().iter().any(|s| {
                s.names().iter().any(|n| n == name)
                    && s.action() == LinuxSeccompAction::ScmpActAllow
            })
        };
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert!(allowed("read") && allowed("chroot"));
        assert!(!allowed("mount") && !allowed("reboot"));
        let admin = capabilities(&["SYS_ADMIN".into()], &[]).unwrap();
        let p = convert_profile(DEFAULT_PROFILE, &admin).unwrap();
        assert!(
            p.syscalls()
                .as_ref()
                .unwrap()
                .iter()
                .any(|s| s.names().iter().any(|n| n == "mount"))
        );
    }

    #[test]
    fn profile_errors_are_reported() {
        let caps = HashSet::new();
        assert!(convert_profile("{", &caps).is_err());
        assert!(convert_profile(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#, &caps).is_err());
        let bad_index = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],
            "action":"SCMP_ACT_ERRNO","args":[{"index":9,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#;
        assert!(
            convert_profile(bad_index, &caps)
                .unwrap_err()
                .contains("index 9")
        );
    }
}

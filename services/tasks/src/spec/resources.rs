//! Resource limits of a container: cgroup resources, rlimits and sysctls.

use std::collections::{BTreeMap, HashMap};

use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxDeviceCgroup, LinuxMemoryBuilder, LinuxPidsBuilder,
    LinuxResources, LinuxResourcesBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
};

use super::{RunOptions, SpecError};

/// Docker's smallest memory limit.
const MIN_MEMORY: i64 = 6 * 1024 * 1024;
/// The CFS period `cpus` is expressed over (100 ms).
const CPU_PERIOD: u64 = 100_000;
/// Docker's default `RLIMIT_NOFILE` (soft and hard).
const DEFAULT_NOFILE: u64 = 1_048_576;

fn err(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::Resource {
        field,
        reason: reason.into(),
    }
}

/// The cgroup resources asked for, with the device rules.
pub(super) fn resources(
    opts: &RunOptions,
    devices: Vec<LinuxDeviceCgroup>,
) -> Result<LinuxResources, SpecError> {
    let mut r = LinuxResourcesBuilder::default()
        .devices(devices)
        .build()
        .expect("resources are complete");

    let mut memory = LinuxMemoryBuilder::default().build().expect("empty memory");
    let mut any_memory = false;
    if let Some(m) = opts.memory {
        if m < MIN_MEMORY {
            return Err(err(
                "memory",
                format!("{m} bytes is below the minimum of 6 MiB"),
            ));
        }
        memory.set_limit(Some(m));
        any_memory = true;
    }
    if let Some(res) = opts.memory_reservation {
        if res < 0 {
            return Err(err("memory_reservation", format!("{res} is negative")));
        }
        if opts.memory.is_some_and(|m| res > m) {
            return Err(err(
                "memory_reservation",
                "the memory reservation must be smaller than the memory limit",
            ));
        }
        memory.set_reservation(Some(res));
        any_memory = true;
    }
    if let Some(swap) = opts.memory_swap.filter(|s| *s != 0) {
        let Some(m) = opts.memory else {
            return Err(err(
                "memory_swap",
                "a memory+swap limit needs a memory limit too",
            ));
        };
        if swap != -1 && swap < m {
            return Err(err(
                "memory_swap",
                "the memory+swap limit must be at least the memory limit (or -1 for unlimited swap)",
            ));
        }
        if swap < -1 {
            return Err(err("memory_swap", format!("{swap} is negative")));
        }
        memory.set_swap(Some(swap));
    }
    if any_memory {
        r.set_memory(Some(memory));
    }

    let mut cpu = LinuxCpuBuilder::default().build().expect("empty cpu");
    let mut any_cpu = false;
    if let Some(shares) = opts.cpu_shares.filter(|s| *s != 0) {
        if !(2..=262_144).contains(&shares) {
            return Err(err("cpu_shares", format!("{shares} is outside 2..=262144")));
        }
        cpu.set_shares(Some(shares));
        any_cpu = true;
    }
    if let Some(cpus) = opts.cpus {
        let available = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if !cpus.is_finite() || cpus < 0.01 || cpus > available {
            return Err(err(
                "cpus",
                format!("{cpus} is outside 0.01..={available} (the CPUs available)"),
            ));
        }
        cpu.set_quota(Some((cpus * CPU_PERIOD as f64).round() as i64));
        cpu.set_period(Some(CPU_PERIOD));
        any_cpu = true;
    }
    if let Some(set) = &opts.cpuset_cpus {
        if !valid_cpuset(set) {
            return Err(err(
                "cpuset_cpus",
                format!("{set:?} is not a CPU list like 0-2,4"),
            ));
        }
        cpu.set_cpus(Some(set.clone()));
        any_cpu = true;
    }
    if any_cpu {
        r.set_cpu(Some(cpu));
    }

    if let Some(limit) = opts.pids_limit {
        let limit = if limit <= 0 { -1 } else { limit };
        r.set_pids(Some(
            LinuxPidsBuilder::default()
                .limit(limit)
                .build()
                .expect("pids are complete"),
        ));
    }
    if let Some(weight) = opts.blkio_weight.filter(|w| *w != 0) {
        if !(10..=1000).contains(&weight) {
            return Err(err(
                "blkio_weight",
                format!("{weight} is outside 10..=1000"),
            ));
        }
        r.set_block_io(Some(
            LinuxBlockIoBuilder::default()
                .weight(weight)
                .build()
                .expect("block io is complete"),
        ));
    }
    Ok(r)
}

/// `0-3,5,7-8`.
fn valid_cpuset(s: &str) -> bool {
    !s.is_empty()
        && s.split(',').all(|part| match part.split_once('-') {
            Some((a, b)) => {
                matches!((a.parse::<u32>(), b.parse::<u32>()), (Ok(a), Ok(b)) if a <= b)
            }
            None => part.parse::<u32>().is_ok(),
        })
}

fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("rlimit_").unwrap_or(&lower);
    Some(match bare {
        "as" => PosixRlimitType::RlimitAs,
        "core" => PosixRlimitType::RlimitCore,
        "cpu" => PosixRlimitType::RlimitCpu,
        "data" => PosixRlimitType::RlimitData,
        "fsize" => PosixRlimitType::RlimitFsize,
        "locks" => PosixRlimitType::RlimitLocks,
        "memlock" => PosixRlimitType::RlimitMemlock,
        "msgqueue" => PosixRlimitType::RlimitMsgqueue,
        "nice" => PosixRlimitType::RlimitNice,
        "nofile" => PosixRlimitType::RlimitNofile,
        "nproc" => PosixRlimitType::RlimitNproc,
        "rss" => PosixRlimitType::RlimitRss,
        "rtprio" => PosixRlimitType::RlimitRtprio,
        "rttime" => PosixRlimitType::RlimitRttime,
        "sigpending" => PosixRlimitType::RlimitSigpending,
        "stack" => PosixRlimitType::RlimitStack,
        _ => return None,
    })
}

fn limit_value(s: &str) -> Option<u64> {
    match s {
        "-1" | "unlimited" => Some(u64::MAX),
        _ => s.parse().ok(),
    }
}

/// Docker's `RLIMIT_NOFILE` (1048576), clamped to the hard limit this host grants (raising
/// it needs CAP_SYS_RESOURCE); None when that is what a container inherits anyway.
fn default_nofile() -> Option<PosixRlimit> {
    let current = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = current.maximum.unwrap_or(u64::MAX);
    let value = DEFAULT_NOFILE.min(hard);
    if current.current == Some(value) && current.maximum == Some(value) {
        return None;
    }
    Some(
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(value)
            .hard(value)
            .build()
            .expect("an rlimit is complete"),
    )
}

/// The rlimits: Docker's `RLIMIT_NOFILE` default, replaced or completed by the user's ulimits.
pub(super) fn rlimits(ulimits: &[String]) -> Result<Vec<PosixRlimit>, SpecError> {
    let mut out: Vec<PosixRlimit> = default_nofile().into_iter().collect();
    let mut seen = Vec::new();
    for u in ulimits {
        let bad = |reason: &str| SpecError::Ulimit {
            value: u.clone(),
            reason: reason.into(),
        };
        let (name, values) = u
            .split_once('=')
            .ok_or_else(|| bad("expected name=soft[:hard]"))?;
        let typ = rlimit_type(name).ok_or_else(|| bad("unknown resource name"))?;
        let (soft, hard) = match values.split_once(':') {
            Some((s, h)) => (limit_value(s), limit_value(h)),
            None => (limit_value(values), limit_value(values)),
        };
        let (Some(soft), Some(hard)) = (soft, hard) else {
            return Err(bad("limits must be numbers, -1 or unlimited"));
        };
        if soft > hard {
            return Err(bad("the soft limit is above the hard limit"));
        }
        if seen.contains(&typ) {
            return Err(bad("this resource is limited twice"));
        }
        seen.push(typ);
        out.retain(|r| r.typ() != typ);
        out.push(
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(soft)
                .hard(hard)
                .build()
                .expect("an rlimit is complete"),
        );
    }
    Ok(out)
}

/// Validates namespaced sysctls (Docker's list); `net.*` only with a network namespace.
pub(super) fn sysctls(
    sysctls: &BTreeMap<String, String>,
    host_network: bool,
) -> Result<HashMap<String, String>, SpecError> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    for name in sysctls.keys() {
        let bad = |reason: &str| SpecError::Sysctl {
            name: name.clone(),
            reason: reason.into(),
        };
        if IPC.contains(&name.as_str()) || name.starts_with("fs.mqueue.") {
            continue;
        }
        if name.starts_with("net.") {
            if host_network {
                return Err(bad("net.* sysctls cannot be set with host networking"));
            }
            continue;
        }
        return Err(bad(
            "not a namespaced sysctl (allowed: net.*, fs.mqueue.*, kernel.msg*, kernel.sem, kernel.shm*)",
        ));
    }
    Ok(sysctls
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

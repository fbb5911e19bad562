//! Linux capabilities: names, and applying the five sets to the calling process.

use crate::error::{Error, Result};
use crate::spec::Capabilities;

/// Capability names in number order (CAP_CHOWN = 0).
pub const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The number of a capability name (`CAP_SYS_ADMIN`), None if unknown.
pub fn number(name: &str) -> Option<u32> {
    NAMES.iter().position(|n| *n == name).map(|n| n as u32)
}

/// The highest capability this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(NAMES.len() as u32 - 1)
}

/// A capability set as a bit mask.
pub fn mask(names: &[String]) -> u64 {
    names
        .iter()
        .filter_map(|n| number(n))
        .fold(0, |m, c| m | (1u64 << c))
}

/// The five sets as masks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sets {
    /// Bounding.
    pub bounding: u64,
    /// Effective.
    pub effective: u64,
    /// Inheritable.
    pub inheritable: u64,
    /// Permitted.
    pub permitted: u64,
    /// Ambient.
    pub ambient: u64,
}

impl Sets {
    /// From the spec's names; no capabilities object means no capabilities at all.
    pub fn from_spec(c: Option<&Capabilities>) -> Sets {
        let Some(c) = c else {
            return Sets::default();
        };
        Sets {
            bounding: mask(&c.bounding),
            effective: mask(&c.effective),
            inheritable: mask(&c.inheritable),
            permitted: mask(&c.permitted),
            ambient: mask(&c.ambient),
        }
    }

    /// Drops what is not in the bounding set (needs CAP_SETPCAP: call before switching user).
    pub fn apply_bounding(&self) -> Result<()> {
        for cap in 0..=last_cap() {
            if self.bounding & (1u64 << cap) == 0 {
                // SAFETY: prctl with integer arguments only.
                let rc =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
                if rc != 0 {
                    let e = nix::errno::Errno::last();
                    // EINVAL: a capability this kernel does not have.
                    if e != nix::errno::Errno::EINVAL {
                        return Err(Error::sys(format!(
                            "drop {} from the bounding set",
                            NAMES[cap as usize]
                        ))(e));
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps only what the runtime itself holds (a capability it lacks cannot be given);
    /// says which were left out.
    pub fn limit_to_own(&mut self) {
        let header = libc_cap_header();
        let mut data = [
            CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
            CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        // SAFETY: capget writes two data structs laid out as the kernel's (version 3).
        let rc = unsafe { libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) };
        if rc != 0 {
            return;
        }
        let own = data[0].permitted as u64 | ((data[1].permitted as u64) << 32);
        let wanted =
            self.bounding | self.effective | self.permitted | self.inheritable | self.ambient;
        let missing = wanted & !own;
        if missing != 0 {
            let names: Vec<&str> = (0..64)
                .filter(|c| missing & (1u64 << c) != 0)
                .filter_map(|c| NAMES.get(c as usize).copied())
                .collect();
            crate::log::warn(&format!(
                "capabilities the runtime does not hold are left out: {}",
                names.join(", ")
            ));
        }
        for set in [
            &mut self.bounding,
            &mut self.effective,
            &mut self.permitted,
            &mut self.inheritable,
            &mut self.ambient,
        ] {
            *set &= own;
        }
    }

    /// Sets effective, permitted and inheritable, then raises the ambient ones.
    pub fn apply_sets(&self) -> Result<()> {
        let header = libc_cap_header();
        let data = [
            CapData {
                effective: self.effective as u32,
                permitted: self.permitted as u32,
                inheritable: self.inheritable as u32,
            },
            CapData {
                effective: (self.effective >> 32) as u32,
                permitted: (self.permitted >> 32) as u32,
                inheritable: (self.inheritable >> 32) as u32,
            },
        ];
        // SAFETY: capset reads one header and two data structs laid out as the kernel's
        // `__user_cap_header_struct` / `__user_cap_data_struct` (version 3).
        let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
        if rc != 0 {
            return Err(Error::sys("capset")(nix::errno::Errno::last()));
        }
        // The kernel allows raising only what is both permitted and inheritable; like runc,
        // other ambient capabilities are left out rather than failing the start.
        let raisable = self.ambient & self.permitted & self.inheritable;
        for cap in 0..=last_cap() {
            if raisable & (1u64 << cap) != 0 {
                // SAFETY: prctl with integer arguments only.
                let rc = unsafe {
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        cap as libc::c_ulong,
                        0,
                        0,
                    )
                };
                if rc != 0 {
                    return Err(
                        Error::sys(format!("raise ambient {}", NAMES[cap as usize]))(
                            nix::errno::Errno::last(),
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn libc_cap_header() -> CapHeader {
    CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(super::number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(super::number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(super::number("CAP_NOPE"), None);
    }
}

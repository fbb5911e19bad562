//! berth-runtime (the built-in OCI runtime) end to end, against Debian's runc.
//!
//! - The conformance matrix: each configuration runs a probe script under berth-runtime and
//!   under runc, from the same bundle and the same busybox rootfs, one after the other with
//!   the same id and cgroup path; what the probe sees from inside (capabilities, seccomp and
//!   no_new_privs from /proc/self/status, `id`, hostname, the mount table with mount ids and
//!   device numbers stripped, cgroup limits, ulimits, masked and read-only paths, a denied
//!   system call's errno, device nodes, ...) must be the same. Each configuration also checks
//!   one expected value, so two equally wrong runtimes do not pass.
//! - Bad input: a clear error before anything starts, and nothing left behind.
//! - Hostile rootfs: symlinked /proc, /dev and mount targets pointing outside, a container
//!   trying to write the runtime's executable through /proc/<pid>/exe.
//! - 500 create/delete cycles leave no cgroup, mount, process or state behind.
//! - The shim drives berth-runtime (`--runtime builtin`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_runtime::caps;
use berth_tests::cleanup::{cgroups_named, clean_up_after};
use berth_tests::fixtures::bundle::{busybox_rootfs, runc_spec, write_bundle};
use berth_tests::harness::{bin, mounts_under, processes_mentioning};
use serde_json::{Value, json};

/// The probe every configuration runs; each section's output is compared.
const PROBE: &str = r#"
echo '== status'; grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/self/status
echo '== id'; id
echo '== hostname'; hostname; cat /proc/sys/kernel/domainname
echo '== cwd'; pwd
echo '== umask'; umask
echo '== env'; env | grep -v -E '^(PWD|SHLVL|_)=' | sort
echo '== ulimits'; ulimit -a
echo '== oom'; cat /proc/self/oom_score_adj
echo '== mounts'; cat /proc/self/mountinfo
echo '== cgroup'; cat /proc/self/cgroup
for f in memory/memory.limit_in_bytes memory/memory.soft_limit_in_bytes memory/memory.memsw.limit_in_bytes pids/pids.max cpu/cpu.shares cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us cpuset/cpuset.cpus blkio/blkio.weight devices/devices.list; do
  echo "$f: $(cat /sys/fs/cgroup/$f 2>&1 | tr '\n' ' ')"
done
echo '== masked'; for p in /proc/kcore /proc/keys /proc/timer_list /sys/firmware /proc/acpi; do echo "$p: $(cat $p 2>&1 | head -c 40 | tr -c '[:print:]' '.')"; ls $p 2>&1 | head -3; done
echo '== readonly'; for p in /proc/sys/kernel/hostname /proc/sysrq-trigger /proc/sys/net/ipv4/ip_forward; do (echo x > $p) 2>&1 | sed 's/^sh: //'; done
echo '== rootfs'; touch /probe-file 2>&1; rm -f /probe-file
echo '== devices'; for d in /dev/* /dev/pts/*; do stat -c '%n %F %t:%T %a %u:%g' $d 2>&1; done; readlink /dev/fd /dev/stdin /dev/ptmx
echo '== syscall'; mkdir /tmp/probe-dir 2>&1; rmdir /tmp/probe-dir 2>/dev/null
echo '== net'; cat /proc/net/dev | sed 1,2d | cut -d: -f1 | sort; readlink /proc/self/ns/net >/dev/null && echo netns-ok
echo '== sysctl'; cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmax
echo '== exe'; for p in /proc/[0-9]*; do e=$(readlink $p/exe 2>/dev/null); case "$e" in ""|/bin/busybox) continue;; esac; (exec 3< $p/exe) 2>/dev/null && echo "opened $p/exe ($e)"; done; echo done
"#;

/// Docker's default capabilities.
const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn caps(names: &[&str]) -> Value {
    json!({
        "bounding": names, "effective": names, "permitted": names,
        "inheritable": [], "ambient": [],
    })
}

/// Docker's default seccomp profile for amd64 and the default capabilities, made from the
/// profile Debian ships for podman (`/usr/share/containers/seccomp.json`, containers-common).
fn default_seccomp() -> Result<Value> {
    let path = "/usr/share/containers/seccomp.json";
    let text =
        std::fs::read(path).with_context(|| format!("{path} (install containers-common)"))?;
    let profile: Value = serde_json::from_slice(&text)?;
    let has = |c: &Value| c.as_str().is_some_and(|c| DEFAULT_CAPS.contains(&c));
    let mut rules = Vec::new();
    for rule in profile["syscalls"].as_array().into_iter().flatten() {
        let inc = &rule["includes"];
        let exc = &rule["excludes"];
        if let Some(arches) = inc["arches"].as_array()
            && !arches.iter().any(|a| a == "amd64")
        {
            continue;
        }
        if let Some(c) = inc["caps"].as_array()
            && !c.iter().all(has)
        {
            continue;
        }
        if let Some(c) = exc["caps"].as_array()
            && c.iter().any(has)
        {
            continue;
        }
        if let Some(arches) = exc["arches"].as_array()
            && arches.iter().any(|a| a == "amd64")
        {
            continue;
        }
        let mut r = json!({ "names": rule["names"], "action": rule["action"] });
        if let Some(args) = rule.get("args").filter(|a| a.is_array()) {
            r["args"] = args.clone();
        }
        if let Some(e) = rule.get("errnoRet") {
            r["errnoRet"] = e.clone();
        }
        rules.push(r);
    }
    Ok(json!({
        "defaultAction": profile["defaultAction"],
        "defaultErrnoRet": profile["defaultErrnoRet"],
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules,
    }))
}

/// Both runtimes' binaries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rt {
    Berth,
    Runc,
}

impl Rt {
    fn binary(self) -> PathBuf {
        match self {
            Rt::Berth => bin("berth-runtime"),
            Rt::Runc => PathBuf::from("runc"),
        }
    }
}

/// A temp dir with a busybox rootfs, bundles and runtime roots.
struct Fixture {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
}

impl Fixture {
    fn new() -> Result<Fixture> {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-rt-")
            .tempdir()?;
        let rootfs = busybox_rootfs(dir.path(), "image")?;
        Ok(Fixture { dir, rootfs })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn prefix(&self) -> String {
        self.path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn cgroup_path(&self, id: &str) -> String {
        format!("/{}-{id}", self.prefix())
    }

    fn state_root(&self, rt: Rt) -> PathBuf {
        self.path().join(format!("state-{rt:?}"))
    }

    /// A bundle for `id` running `args` with the base spec edited by `tweak`.
    fn bundle(&self, id: &str, args: &[&str], tweak: impl FnOnce(&mut Value)) -> Result<PathBuf> {
        let bundle = self.path().join("bundles").join(id);
        let mut spec = runc_spec().clone();
        spec["process"]["args"] = json!(args);
        spec["process"]["terminal"] = json!(false);
        spec["root"] = json!({ "path": self.rootfs, "readonly": false });
        spec["hostname"] = json!("conformance");
        spec["linux"]["cgroupsPath"] = json!(self.cgroup_path(id));
        tweak(&mut spec);
        write_bundle(&bundle, &spec)?;
        Ok(bundle)
    }

    /// `rt run` of the bundle; the container's output.
    fn run(&self, rt: Rt, id: &str, bundle: &Path) -> Result<Output> {
        let out = Command::new(rt.binary())
            .arg("--root")
            .arg(self.state_root(rt))
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("{rt:?} run"))?;
        Ok(out)
    }

    /// Nothing left: cgroup, mount, process, runtime state.
    fn assert_clean(&self) -> Result<()> {
        let cgroups = cgroups_named(&self.prefix());
        ensure!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
        let mounts = mounts_under(self.path())?;
        ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
        let procs = processes_mentioning(self.path());
        ensure!(procs.is_empty(), "processes left: {procs:?}");
        let state = self.state_root(Rt::Berth);
        let left: Vec<_> = std::fs::read_dir(&state)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        ensure!(left.is_empty(), "runtime state left: {left:?}");
        Ok(())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        clean_up_after(self.path());
    }
}

/// The probe's output with what legitimately differs between two runs removed: mount ids,
/// device numbers of anonymous filesystems, and the propagation fields of mountinfo.
fn normalize(out: &str) -> String {
    let mut lines = Vec::new();
    let mut in_mounts = false;
    for line in out.lines() {
        if line.starts_with("== ") {
            in_mounts = line == "== mounts";
            lines.push(line.to_owned());
            continue;
        }
        if in_mounts {
            let Some((left, right)) = line.split_once(" - ") else {
                lines.push(line.to_owned());
                continue;
            };
            let f: Vec<&str> = left.split(' ').collect();
            // id parent major:minor root mountpoint options [optional fields]
            lines.push(format!("{} {} {} - {right}", f[3], f[4], f[5]));
        } else {
            lines.push(line.to_owned());
        }
    }
    lines.join("\n")
}

/// The section `name` of a probe's output.
fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = format!("== {name}\n");
    let Some(i) = out.find(&start) else {
        return "";
    };
    let rest = &out[i + start.len()..];
    &rest[..rest.find("\n== ").map_or(rest.len(), |j| j + 1)]
}

type Tweak = Box<dyn Fn(&mut Value, &Fixture)>;

struct Case {
    name: &'static str,
    tweak: Tweak,
    /// (section, text it must contain).
    expect: Vec<(&'static str, String)>,
}

fn case(
    name: &'static str,
    expect: &[(&'static str, &str)],
    tweak: impl Fn(&mut Value, &Fixture) + 'static,
) -> Case {
    Case {
        name,
        tweak: Box::new(tweak),
        expect: expect.iter().map(|(s, t)| (*s, t.to_string())).collect(),
    }
}

fn matrix() -> Result<Vec<Case>> {
    let seccomp = default_seccomp()?;
    Ok(vec![
        case(
            "default",
            &[
                ("status", "CapEff:\t0000000020000420"),
                ("id", "uid=0(root)"),
            ],
            |_, _| {},
        ),
        case(
            "user-groups",
            &[("id", "uid=1000 gid=1000 groups=")],
            |s, _| {
                s["process"]["user"] =
                    json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20, 1000]});
            },
        ),
        case(
            "readonly-rootfs",
            &[("rootfs", "Read-only file system")],
            |s, _| {
                s["root"]["readonly"] = json!(true);
            },
        ),
        case(
            "cap-add-drop",
            &[("status", "CapBnd:\t00000000202004c1")],
            |s, _| {
                // add SYS_ADMIN, CHOWN, SETGID, SETUID; drop KILL.
                s["process"]["capabilities"] = caps(&[
                    "CAP_AUDIT_WRITE",
                    "CAP_NET_BIND_SERVICE",
                    "CAP_SYS_ADMIN",
                    "CAP_CHOWN",
                    "CAP_SETGID",
                    "CAP_SETUID",
                ]);
            },
        ),
        case(
            "default-14-caps",
            &[("status", "CapEff:\t00000000a80425fb")],
            |s, _| {
                s["process"]["capabilities"] = caps(&DEFAULT_CAPS);
            },
        ),
        case(
            "privileged",
            &[
                ("status", &format!("CapEff:\t{:016x}", own_caps())),
                ("masked", "/proc/keys: "),
            ],
            |s, _| {
                // Every capability this host gives root (this VM's root lacks CAP_SYS_RESOURCE).
                let own = own_caps();
                let all: Vec<&str> = caps::NAMES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| own & (1u64 << i) != 0)
                    .map(|(_, c)| *c)
                    .collect();
                s["process"]["capabilities"] = caps(&all);
                s["linux"]["maskedPaths"] = json!([]);
                s["linux"]["readonlyPaths"] = json!([]);
                s["linux"]["resources"] = json!({"devices": [{"allow": true, "access": "rwm"}]});
                let sys = s["mounts"].as_array_mut().expect("mounts");
                for m in sys.iter_mut() {
                    if m["destination"] == "/sys" || m["destination"] == "/sys/fs/cgroup" {
                        m["options"] = json!(["nosuid", "noexec", "nodev", "rw"]);
                    }
                }
            },
        ),
        case(
            "limits",
            &[
                ("cgroup", "memory/memory.limit_in_bytes: 67108864"),
                ("cgroup", "pids/pids.max: 32"),
                ("cgroup", "cpu/cpu.cfs_quota_us: 50000"),
            ],
            |s, _| {
                s["linux"]["resources"] = json!({
                    "devices": [{"allow": false, "access": "rwm"}],
                    "memory": {"limit": 67108864, "reservation": 33554432, "swap": 134217728},
                    "pids": {"limit": 32},
                    "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
                    "blockIO": {"weight": 300},
                });
            },
        ),
        case(
            "tmpfs",
            &[
                (
                    "mounts",
                    "/scratch rw,nosuid,nodev,relatime - tmpfs tmpfs rw,size=1024k",
                ),
                (
                    "mounts",
                    "/scratch-ro ro,relatime - tmpfs tmpfs rw,size=64k",
                ),
            ],
            |s, _| {
                push_mount(
                    s,
                    json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=1m", "mode=1777"]}),
                );
                push_mount(
                    s,
                    json!({"destination": "/scratch-ro", "type": "tmpfs", "source": "tmpfs", "options": ["ro", "size=64k"]}),
                );
            },
        ),
        case(
            "bind-ro-rw",
            &[
                ("mounts", "/data rw,relatime"),
                ("mounts", "/data-ro ro,nosuid,nodev,noexec,relatime"),
            ],
            |s, fx| {
                let src = fx.path().join("bind-src");
                let _ = std::fs::create_dir_all(&src);
                push_mount(
                    s,
                    json!({"destination": "/data", "type": "bind", "source": src, "options": ["rbind", "rw"]}),
                );
                push_mount(
                    s,
                    json!({"destination": "/data-ro", "type": "bind", "source": src, "options": ["bind", "ro", "nosuid", "nodev", "noexec", "rprivate"]}),
                );
                push_mount(
                    s,
                    json!({"destination": "/etc/probe-hosts", "type": "bind", "source": "/etc/hosts", "options": ["bind", "ro"]}),
                );
            },
        ),
        case(
            "hostname-env",
            &[("hostname", "berth-host\n"), ("env", "FOO=bar baz")],
            |s, _| {
                s["hostname"] = json!("berth-host");
                s["process"]["env"] = json!(["PATH=/bin:/usr/bin", "FOO=bar baz", "TERM=xterm"]);
            },
        ),
        case("cwd", &[("cwd", "/tmp")], |s, _| {
            s["process"]["cwd"] = json!("/tmp");
        }),
        case(
            "rlimits",
            &[("ulimits", "(-n) 256"), ("ulimits", "(-u) 100")],
            |s, _| {
                s["process"]["rlimits"] = json!([
                    {"type": "RLIMIT_NOFILE", "soft": 256, "hard": 512},
                    {"type": "RLIMIT_NPROC", "soft": 100, "hard": 200},
                    {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
                ]);
            },
        ),
        case(
            "seccomp-default",
            &[("status", "Seccomp:\t2"), ("syscall", "")],
            move |s, _| {
                s["process"]["capabilities"] = caps(&DEFAULT_CAPS);
                s["linux"]["seccomp"] = seccomp.clone();
            },
        ),
        case(
            "seccomp-deny",
            &[("syscall", "Permission denied")],
            |s, _| {
                s["linux"]["seccomp"] = json!({
                    "defaultAction": "SCMP_ACT_ALLOW",
                    "architectures": ["SCMP_ARCH_X86_64"],
                    "syscalls": [
                        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                        {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                         "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_NE"}]},
                    ],
                });
            },
        ),
        case(
            "no-new-privileges",
            &[("status", "NoNewPrivs:\t1")],
            |s, _| {
                s["process"]["noNewPrivileges"] = json!(true);
                s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["mkdirat", "mkdir"], "action": "SCMP_ACT_ERRNO"}]});
            },
        ),
        case("new-privileges", &[("status", "NoNewPrivs:\t0")], |s, _| {
            s["process"]["noNewPrivileges"] = json!(false);
        }),
        case(
            "masked-readonly",
            &[
                ("readonly", "Read-only file system"),
                ("masked", "/proc/timer_list: \n"),
            ],
            |s, _| {
                s["linux"]["maskedPaths"] = json!([
                    "/proc/kcore",
                    "/proc/keys",
                    "/proc/timer_list",
                    "/sys/firmware",
                    "/proc/acpi",
                    "/proc/missing"
                ]);
                s["linux"]["readonlyPaths"] =
                    json!(["/proc/sys", "/proc/sysrq-trigger", "/proc/bus"]);
            },
        ),
        case(
            "userns",
            &[
                ("status", "CapEff:\t0000000020000420"),
                ("id", "uid=0(root)"),
            ],
            |s, _| {
                add_ns(s, "user");
                s["linux"]["uidMappings"] =
                    json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
                s["linux"]["gidMappings"] =
                    json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
            },
        ),
        case(
            "device",
            &[(
                "devices",
                "/dev/probe-null character special file 1:3 640 7:8",
            )],
            |s, _| {
                s["linux"]["devices"] = json!([{"type": "c", "path": "/dev/probe-null", "major": 1, "minor": 3, "fileMode": 416, "uid": 7, "gid": 8}]);
            },
        ),
        case("sysctl", &[("sysctl", "1\n1048576")], |s, _| {
            s["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmax": "1048576"});
        }),
        case("umask-oom", &[("umask", "0077"), ("oom", "500")], |s, _| {
            s["process"]["user"]["umask"] = json!(0o077);
            s["process"]["oomScoreAdj"] = json!(500);
        }),
        case("cgroupns", &[("cgroup", "0::/\n")], |s, _| {
            add_ns(s, "cgroup");
        }),
        case("no-pid-ns", &[("exe", "done")], |s, _| {
            let ns = s["linux"]["namespaces"].as_array_mut().expect("namespaces");
            ns.retain(|n| n["type"] != "pid");
        }),
    ])
}

/// The test process's permitted capabilities.
fn own_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

fn push_mount(s: &mut Value, m: Value) {
    s["mounts"].as_array_mut().expect("mounts").push(m);
}

fn add_ns(s: &mut Value, kind: &str) {
    s["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .push(json!({"type": kind}));
}

/// Runs one configuration under both runtimes; a description of every difference.
fn conform(fx: &Fixture, c: &Case) -> Result<Vec<String>> {
    let id = c.name;
    let bundle = fx.bundle(id, &["sh", "-c", PROBE], |s| (c.tweak)(s, fx))?;
    let mut outs = Vec::new();
    for rt in [Rt::Berth, Rt::Runc] {
        let out = fx.run(rt, id, &bundle)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "{}: {rt:?} failed ({}): {}{}",
            c.name,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdout
        );
        outs.push(normalize(&stdout));
    }
    let mut problems = Vec::new();
    if outs[0] != outs[1] {
        let a: Vec<&str> = outs[0].lines().collect();
        let b: Vec<&str> = outs[1].lines().collect();
        let only_a: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
        let only_b: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).collect();
        let first = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        problems.push(format!(
            "{}: berth-runtime and runc differ\n  berth only: {only_a:#?}\n  runc only: {only_b:#?}\n  \
             first difference at line {first}: {:?} vs {:?}",
            c.name,
            a.get(first),
            b.get(first)
        ));
    }
    for (sec, text) in &c.expect {
        if !section(&outs[0], sec).contains(text.as_str()) {
            problems.push(format!(
                "{}: section {sec} lacks {text:?}:\n{}",
                c.name,
                section(&outs[0], sec)
            ));
        }
    }
    if section(&outs[0], "exe").contains("opened") {
        problems.push(format!(
            "{}: a container opened a host executable: {}",
            c.name,
            section(&outs[0], "exe")
        ));
    }
    Ok(problems)
}

#[test]
fn conformance_matrix() -> Result<()> {
    let fx = Fixture::new()?;
    let cases = matrix()?;
    ensure!(cases.len() >= 20, "only {} configurations", cases.len());
    let mut problems = Vec::new();
    for c in &cases {
        match conform(&fx, c) {
            Ok(p) => problems.extend(p),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    fx.assert_clean()?;
    if !problems.is_empty() {
        bail!("{} problem(s):\n{}", problems.len(), problems.join("\n\n"));
    }
    Ok(())
}

/// A network namespace made by the test (with `ip netns`), deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Result<Netns> {
        let out = Command::new("ip").args(["netns", "add", &name]).output()?;
        ensure!(out.status.success(), "ip netns add: {out:?}");
        Ok(Netns(name))
    }
    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .output();
    }
}

#[test]
fn joined_netns() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let fx = Fixture::new()?;
    let ns = Netns::new(format!("{}-ns", fx.prefix()))?;
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "ip", "link", "add", "probe0", "type", "veth", "peer", "name",
            "probe1",
        ])
        .output()?;
    ensure!(out.status.success(), "ip link add: {out:?}");
    let ino = std::fs::metadata(ns.path())?.ino();
    let path = ns.path();
    let bundle = fx.bundle(
        "netns",
        &[
            "sh",
            "-c",
            "cat /proc/net/dev | sed 1,2d | cut -d: -f1 | sort; stat -L -c %i /proc/self/ns/net",
        ],
        move |s| {
            let list = s["linux"]["namespaces"].as_array_mut().expect("namespaces");
            for n in list.iter_mut() {
                if n["type"] == "network" {
                    n["path"] = json!(path);
                }
            }
        },
    )?;
    let mut outs = Vec::new();
    for rt in [Rt::Berth, Rt::Runc] {
        let out = fx.run(rt, "netns", &bundle)?;
        ensure!(out.status.success(), "{rt:?}: {out:?}");
        outs.push(String::from_utf8(out.stdout)?);
    }
    ensure!(
        outs[0] == outs[1],
        "berth {:?} vs runc {:?}",
        outs[0],
        outs[1]
    );
    ensure!(
        outs[0].contains("probe0"),
        "the joined netns's link is missing: {}",
        outs[0]
    );
    ensure!(
        outs[0].trim_end().ends_with(&ino.to_string()),
        "netns inode: {} vs {ino}",
        outs[0]
    );
    fx.assert_clean()
}

/// Runs `berth-runtime create` on a broken spec: it must fail with `expect` in its error and
/// leave nothing behind.
fn refuse(fx: &Fixture, id: &str, expect: &str, tweak: impl FnOnce(&mut Value)) -> Result<()> {
    let bundle = fx.bundle(id, &["true"], tweak)?;
    let log = fx.path().join(format!("{id}.log"));
    let out = Command::new(bin("berth-runtime"))
        .arg("--root")
        .arg(fx.state_root(Rt::Berth))
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "create", "--bundle"])
        .arg(&bundle)
        .arg(id)
        // A container's stdio is the runtime's: no pipe a surviving init could hold open.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(!out.success(), "{id}: create succeeded");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let msg: Value = serde_json::from_str(text.lines().last().unwrap_or("{}"))?;
    ensure!(msg["level"] == "error", "{id}: log {text:?}");
    let msg = msg["msg"].as_str().unwrap_or_default();
    ensure!(msg.contains(expect), "{id}: error {msg:?} lacks {expect:?}");
    fx.assert_clean().with_context(|| format!("after {id}"))
}

#[test]
fn bad_input() -> Result<()> {
    let fx = Fixture::new()?;
    refuse(&fx, "no-root", "root: missing", |s| {
        s.as_object_mut().expect("object").remove("root");
    })?;
    refuse(&fx, "root-missing", "is not a directory", |s| {
        s["root"]["path"] = json!("/nonexistent/rootfs");
    })?;
    refuse(&fx, "bad-ns", "unknown variant `foo`", |s| add_ns(s, "foo"))?;
    refuse(&fx, "bad-cap", "unknown capability \"CAP_NOPE\"", |s| {
        s["process"]["capabilities"]["bounding"] = json!(["CAP_NOPE"]);
    })?;
    refuse(&fx, "bad-seccomp", "unknown variant `SCMP_ACT_NOPE`", |s| {
        s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_NOPE"});
    })?;
    refuse(&fx, "overlap", "overlap another mapping", |s| {
        add_ns(s, "user");
        s["linux"]["uidMappings"] = json!([
            {"containerID": 0, "hostID": 100000, "size": 1000},
            {"containerID": 500, "hostID": 300000, "size": 10}]);
        s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 1000}]);
    })?;
    refuse(
        &fx,
        "bad-cwd",
        "/nonexistent is not a directory in the image",
        |s| {
            s["process"]["cwd"] = json!("/nonexistent");
        },
    )?;
    refuse(&fx, "bad-user", "user \"ghost\" does not exist", |s| {
        s["process"]["user"]["username"] = json!("ghost");
    })?;
    refuse(
        &fx,
        "bad-device",
        "char device 250:250 (/dev/ghost) does not exist",
        |s| {
            s["linux"]["devices"] =
                json!([{"type": "c", "path": "/dev/ghost", "major": 250, "minor": 250}]);
        },
    )?;
    refuse(&fx, "bad-exe", "executable \"/bin/nope\" not found", |s| {
        s["process"]["args"] = json!(["/bin/nope"]);
    })?;
    refuse(&fx, "bad-rlimit", "unknown rlimit", |s| {
        s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOPE", "soft": 1, "hard": 1}]);
    })?;
    refuse(&fx, "bad-netns", "does not exist", |s| {
        for n in s["linux"]["namespaces"]
            .as_array_mut()
            .expect("ns")
            .iter_mut()
        {
            if n["type"] == "network" {
                n["path"] = json!("/run/netns/berth-no-such-netns");
            }
        }
    })?;
    Ok(())
}

/// A rootfs copy whose entries can be replaced by symlinks.
fn hostile_rootfs(fx: &Fixture, name: &str) -> Result<PathBuf> {
    let root = fx.path().join(name);
    let out = Command::new("cp")
        .arg("-a")
        .arg(&fx.rootfs)
        .arg(&root)
        .output()?;
    ensure!(out.status.success(), "cp: {out:?}");
    Ok(root)
}

#[test]
fn hostile_rootfs_stays_inside() -> Result<()> {
    let fx = Fixture::new()?;
    let outside = fx.path().join("outside");
    std::fs::create_dir_all(&outside)?;
    std::fs::write(outside.join("marker"), "host")?;
    let check_outside = || -> Result<()> {
        let entries: Vec<_> = std::fs::read_dir(&outside)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        ensure!(
            entries == vec![std::ffi::OsString::from("marker")],
            "outside changed: {entries:?}"
        );
        let mounts = mounts_under(&outside)?;
        ensure!(mounts.is_empty(), "mounted outside: {mounts:?}");
        Ok(())
    };

    // /proc as a symlink to a host directory: refused, nothing mounted there.
    let root = hostile_rootfs(&fx, "root-proc")?;
    std::fs::remove_dir(root.join("proc"))?;
    std::os::unix::fs::symlink(&outside, root.join("proc"))?;
    let bundle = fx.bundle("proc-link", &["true"], |s| s["root"]["path"] = json!(root))?;
    let out = fx.run(Rt::Berth, "proc-link", &bundle)?;
    ensure!(!out.status.success(), "a symlinked /proc was accepted");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("is a symlink"),
        "{out:?}"
    );
    check_outside()?;

    // /dev and a bind target as symlinks pointing outside (absolute and ../): they resolve
    // inside the rootfs.
    let root = hostile_rootfs(&fx, "root-dev")?;
    std::fs::remove_dir(root.join("dev"))?;
    std::os::unix::fs::symlink(&outside, root.join("dev"))?;
    std::os::unix::fs::symlink(
        "../../../../../../../..".to_owned() + &outside.display().to_string(),
        root.join("data"),
    )?;
    let src = fx.path().join("bind-src");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("payload"), "x")?;
    let bundle = fx.bundle("dev-link", &["sh", "-c", "ls /data; ls /dev/null"], |s| {
        s["root"]["path"] = json!(root);
        push_mount(
            s,
            json!({"destination": "/data", "type": "bind", "source": src, "options": ["rbind"]}),
        );
    })?;
    let out = fx.run(Rt::Berth, "dev-link", &bundle)?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("payload"),
        "{out:?}"
    );
    check_outside()?;
    ensure!(
        root.join(outside.strip_prefix("/")?)
            .join("payload")
            .exists()
            || root.join(outside.strip_prefix("/")?).exists(),
        "the symlinks' targets were not created inside the rootfs"
    );

    // The runtime's executable cannot be written from a container that shares the host's pid
    // namespace (it sees the runtime process), even with every capability but CAP_SYS_PTRACE.
    let exe = bin("berth-runtime");
    let before = std::fs::read(&exe)?;
    let bundle = fx.bundle(
        "exe-write",
        &["sh", "-c", "for p in /proc/[0-9]*; do e=$(readlink $p/exe 2>/dev/null); case \"$e\" in \"\"|/bin/busybox) continue;; esac; (exec 3< $p/exe) 2>/dev/null && echo opened $p $e; (echo x >> $p/exe) 2>/dev/null && echo wrote $p; done; echo done"],
        |s| {
            let ns = s["linux"]["namespaces"].as_array_mut().expect("namespaces");
            ns.retain(|n| n["type"] != "pid");
            let all: Vec<&str> = caps::NAMES.iter().copied().filter(|c| *c != "CAP_SYS_PTRACE").collect();
            s["process"]["capabilities"] = caps(&all);
        },
    )?;
    let out = fx.run(Rt::Berth, "exe-write", &bundle)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success() && stdout.contains("done"), "{out:?}");
    ensure!(
        !stdout.contains("wrote") && !stdout.contains("opened"),
        "a container reached a host executable: {stdout}"
    );
    ensure!(std::fs::read(&exe)? == before, "berth-runtime changed");
    fx.assert_clean()
}

#[test]
fn create_delete_cycles() -> Result<()> {
    let fx = Fixture::new()?;
    let bundle = fx.bundle("cycle", &["true"], |s| {
        s["root"]["readonly"] = json!(true);
    })?;
    // The inits outlive `create`: adopt them, to reap them.
    nix::sys::prctl::set_child_subreaper(true)?;
    let state = fx.state_root(Rt::Berth);
    let start = Instant::now();
    let runtime = bin("berth-runtime");
    for i in 0..500 {
        let out = Command::new(&runtime)
            .arg("--root")
            .arg(&state)
            .args(["create", "--bundle"])
            .arg(&bundle)
            .arg("cycle")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        ensure!(out.success(), "create #{i}: {out:?}");
        let out = Command::new(&runtime)
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force", "cycle"])
            .output()?;
        ensure!(out.status.success(), "delete #{i}: {out:?}");
    }
    let elapsed = start.elapsed();
    eprintln!("500 create/delete cycles: {elapsed:?}");
    // The inits are children of this test process: reap them, then nothing may be left.
    while nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        .is_ok_and(|s| s != nix::sys::wait::WaitStatus::StillAlive)
    {}
    fx.assert_clean()
}

/// Runs berth-runtime `args` with state under `state` and its log in `log` (emptied first),
/// inside `sh -c <wrap>` in a private mount namespace if given. Stdout is captured for `state`
/// only (the init keeps the runtime's stdio as its own); the returned stderr is the log.
fn logged_runtime(state: &Path, log: &Path, wrap: Option<&str>, args: &[&str]) -> Result<Output> {
    let _ = std::fs::remove_file(log);
    let mut cmd = match wrap {
        Some(wrap) => {
            let mut c = Command::new("unshare");
            c.args(["-m", "--propagation", "private", "sh", "-c", wrap, "sh"])
                .arg(bin("berth-runtime"));
            c
        }
        None => Command::new(bin("berth-runtime")),
    };
    let mut out = cmd
        .arg("--root")
        .arg(state)
        .arg("--log")
        .arg(log)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .stdout(if args[0] == "state" {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .output()?;
    out.stderr = std::fs::read(log).unwrap_or_default();
    Ok(out)
}

/// A lifecycle through the runtime's commands: create, state, start, exec, pause, update,
/// resume, kill, delete.
#[test]
fn lifecycle_commands() -> Result<()> {
    let fx = Fixture::new()?;
    nix::sys::prctl::set_child_subreaper(true)?;
    let bundle = fx.bundle("life", &["sleep", "30"], |_| {})?;
    let state = fx.state_root(Rt::Berth);
    let log = fx.path().join("life.log");
    let rt = |args: &[&str]| logged_runtime(&state, &log, None, args);
    let ok = |args: &[&str]| -> Result<String> {
        let out = rt(args)?;
        ensure!(out.status.success(), "{args:?}: {out:?}");
        Ok(String::from_utf8(out.stdout)?)
    };
    let status = |want: &str| -> Result<()> {
        let v: Value = serde_json::from_str(&ok(&["state", "life"])?)?;
        ensure!(v["status"] == want, "status {v} (wanted {want})");
        Ok(())
    };
    let pid_file = fx.path().join("life.pid");
    ok(&[
        "create",
        "--bundle",
        bundle.to_str().unwrap_or_default(),
        "--pid-file",
        pid_file.to_str().unwrap_or_default(),
        "life",
    ])?;
    status("created")?;
    let out = rt(&[
        "create",
        "--bundle",
        bundle.to_str().unwrap_or_default(),
        "life",
    ])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{out:?}"
    );
    ok(&["start", "life"])?;
    status("running")?;
    let process = fx.path().join("exec.json");
    std::fs::write(
        &process,
        serde_json::to_vec(&json!({
            "args": ["sh", "-c", "echo exec-ran > /tmp/probe; grep NoNewPrivs /proc/self/status > /tmp/probe2"],
            "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0},
            "noNewPrivileges": true,
        }))?,
    )?;
    let exec_pid = fx.path().join("exec.pid");
    ok(&[
        "exec",
        "--process",
        process.to_str().unwrap_or_default(),
        "--detach",
        "--pid-file",
        exec_pid.to_str().unwrap_or_default(),
        "life",
    ])?;
    let epid: i32 = std::fs::read_to_string(&exec_pid)?.trim().parse()?;
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(epid), None);
    let init: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    let probe = std::fs::read_to_string(format!("/proc/{init}/root/tmp/probe"))?;
    ensure!(probe == "exec-ran\n", "{probe:?}");
    ok(&["pause", "life"])?;
    status("paused")?;
    let res = fx.path().join("res.json");
    std::fs::write(
        &res,
        br#"{"pids": {"limit": 50}, "memory": {"limit": 100000000}}"#,
    )?;
    ok(&[
        "update",
        "--resources",
        res.to_str().unwrap_or_default(),
        "life",
    ])?;
    let pids = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/pids{}/pids.max",
        fx.cgroup_path("life")
    ))?;
    ensure!(pids.trim() == "50", "pids.max {pids}");
    ok(&["resume", "life"])?;
    status("running")?;
    let out = rt(&["delete", "life"])?;
    ensure!(!out.status.success(), "deleted a running container");
    ok(&["kill", "life", "KILL"])?;
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(init as i32), None);
    status("stopped")?;
    ok(&["delete", "life"])?;
    let out = rt(&["state", "life"])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{out:?}"
    );
    fx.assert_clean()
}

/// The shim runs containers with berth-runtime when no runtime is named: create, start, a
/// terminal exec, exit codes, delete; nothing left once the shim is gone.
#[tokio::test(flavor = "current_thread")]
async fn shim_default_is_builtin() -> Result<()> {
    use berth_api::berth::shim::v1 as api;
    let fx = Fixture::new()?;
    let id = "via-shim";
    let bundle = fx.bundle(id, &["sh", "-c", "sleep 0.3; exit 7"], |_| {})?;
    let dir = fx.path().join("shim");
    let out = Command::new(bin("berth-shim"))
        .args(["--namespace", "test", "--id", id, "--socket-dir"])
        .arg(&dir)
        .output()?;
    ensure!(out.status.success(), "berth-shim: {out:?}");
    let shim_pid: i32 = std::fs::read_to_string(dir.join("shim.pid"))?
        .trim()
        .parse()?;
    let channel = berth_api::client::connect(&dir.join("shim.sock"), "test").await?;
    let mut client = api::shim_client::ShimClient::new(channel);
    client
        .create(api::CreateRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        })
        .await?;
    // berth-runtime's own state record (runc's has no start_time).
    let state: Value = serde_json::from_slice(&std::fs::read(
        dir.join("runtime").join(id).join("state.json"),
    )?)?;
    ensure!(
        state["start_time"].is_u64(),
        "not berth-runtime's state: {state}"
    );
    client
        .start(api::StartRequest {
            id: id.into(),
            exec_id: String::new(),
        })
        .await?;
    let out_file = fx.path().join("exec.out");
    let mut process = runc_spec()["process"].clone();
    process["args"] = json!(["sh", "-c", "tty; exit 3"]);
    process["terminal"] = json!(true);
    client
        .exec(api::ExecRequest {
            id: id.into(),
            exec_id: "tty".into(),
            terminal: true,
            stdout: out_file.display().to_string(),
            spec: serde_json::to_vec(&process)?,
            ..Default::default()
        })
        .await?;
    client
        .start(api::StartRequest {
            id: id.into(),
            exec_id: "tty".into(),
        })
        .await?;
    let wait = |exec_id: &'static str| api::WaitRequest {
        id: id.into(),
        exec_id: exec_id.into(),
    };
    let exec_exit = client.wait(wait("tty")).await?.into_inner().exit_status;
    ensure!(
        exec_exit.map(|e| e.exit_code) == Some(3),
        "exec exit {exec_exit:?}"
    );
    let tty = std::fs::read_to_string(&out_file)?;
    ensure!(tty.starts_with("/dev/pts/"), "exec output {tty:?}");
    let exit = client.wait(wait("")).await?.into_inner().exit_status;
    ensure!(exit.map(|e| e.exit_code) == Some(7), "init exit {exit:?}");
    client
        .delete(api::DeleteRequest {
            id: id.into(),
            exec_id: String::new(),
        })
        .await?;
    // The shim may already be on its way out with its last container deleted.
    let _ = client
        .shutdown(api::ShutdownRequest {
            id: id.into(),
            now: true,
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while (dir.exists() || std::fs::metadata(format!("/proc/{shim_pid}")).is_ok())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(!dir.exists(), "shim directory left");
    fx.assert_clean()
}

/// The cgroup v2 code path on a v2-only view of this host: every command runs in a private
/// mount namespace where /sys/fs/cgroup is the cgroup2 hierarchy alone (it holds no memory or
/// cpu controller here, so limits are covered by the unit tests; membership, freezing and
/// removal are real).
#[test]
fn cgroup_v2_only_view() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true)?;
    let fx = Fixture::new()?;
    let id = "v2";
    let bundle = fx.bundle(id, &["sleep", "30"], |s| {
        s["linux"]["resources"] = json!({"pids": {"limit": 20}});
    })?;
    let state = fx.state_root(Rt::Berth);
    let log = fx.path().join("v2.log");
    let wrap = "umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$@\"";
    let rt = |args: &[&str]| -> Result<String> {
        let out = logged_runtime(&state, &log, Some(wrap), args)?;
        ensure!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let status = || -> Result<String> {
        let v: Value = serde_json::from_str(&rt(&["state", id])?)?;
        Ok(v["status"].as_str().unwrap_or_default().to_owned())
    };
    let group =
        Path::new("/sys/fs/cgroup/unified").join(fx.cgroup_path(id).trim_start_matches('/'));
    let bundle = bundle.display().to_string();
    // pids is bound to v1 here: a v2 pids limit must fail clearly, and leave nothing.
    let out = rt(&["create", "--bundle", &bundle, id]);
    ensure!(
        out.as_ref()
            .is_err_and(|e| e.to_string().contains("pids.max")),
        "{out:?}"
    );
    fx.assert_clean()?;
    let spec_path = Path::new(&bundle).join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&spec_path)?)?;
    spec["linux"]["resources"] = json!({});
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    rt(&["create", "--bundle", &bundle, id])?;
    let procs = std::fs::read_to_string(group.join("cgroup.procs"))?;
    ensure!(procs.lines().count() == 1, "cgroup.procs {procs:?}");
    rt(&["start", id])?;
    ensure!(status()? == "running");
    rt(&["pause", id])?;
    ensure!(std::fs::read_to_string(group.join("cgroup.freeze"))?.trim() == "1");
    ensure!(status()? == "paused");
    rt(&["resume", id])?;
    ensure!(status()? == "running");
    rt(&["delete", "--force", id])?;
    while nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        .is_ok_and(|s| s != nix::sys::wait::WaitStatus::StillAlive)
    {}
    ensure!(!group.exists(), "{} left", group.display());
    fx.assert_clean()
}

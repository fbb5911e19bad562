//! The builder's specs run under runc: what a process sees inside matches Docker's defaults.

use std::path::Path;
use std::process::Command;

use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

use super::*;

/// A busybox rootfs with a user `app` (1000:1000) in group `staff` (50).
fn rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/usr/bin/busybox", bin.join("busybox")).unwrap();
    for applet in ["sh", "id", "cat", "grep", "wc", "mkdir", "hostname", "head"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    for d in ["etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
    )
    .unwrap();
}

/// Runs `script` under runc with a spec built from `opts`; returns (exit ok, stdout).
fn run(opts: RunOptions, script: &str) -> (bool, String) {
    let bundle = tempfile::tempdir().unwrap();
    rootfs(&bundle.path().join("rootfs"));
    let image = ImageConfigurationBuilder::default()
        .config(
            ConfigBuilder::default()
                .cmd(vec!["sh".to_string(), "-c".to_string(), script.to_string()])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut spec = build(&image, &opts).unwrap();
    crate::user::apply(&bundle.path().join("rootfs"), &mut spec).unwrap();
    let id = format!(
        "berth-spec-{}-{}",
        std::process::id(),
        bundle.path().file_name().unwrap().to_string_lossy()
    );
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_cgroups_path(Some(format!("/{id}").into()));
    std::fs::write(
        bundle.path().join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    let state = bundle.path().join("runc-state");
    let out = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    // `runc run` deletes the container (and its cgroup) when the process exits.
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["delete", "--force", &id])
        .output();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn default_spec_runs_with_dockers_confinement() {
    let (ok, out) = run(
        RunOptions {
            hostname: Some("web".into()),
            ..Default::default()
        },
        "id; grep -E '^(CapBnd|CapEff|Seccomp|NoNewPrivs):' /proc/self/status; \
         echo masked=$(cat /proc/timer_list /proc/interrupts | wc -c); hostname; \
         (echo 1 > /proc/sys/kernel/domainname) 2>/dev/null && echo sys=rw || echo sys=ro; \
         echo nofile=$(ulimit -n); mkdir /dev/shm/x && echo shm=ok",
    );
    assert!(ok, "{out}");
    assert!(out.contains("uid=0(root) gid=0(root)"), "{out}");
    // Docker's 14 default capabilities.
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
    assert!(out.contains("masked=0"), "{out}");
    assert!(out.contains("\nweb\n"), "{out}");
    assert!(out.contains("sys=ro"), "{out}");
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let expected = 1_048_576.min(nofile.maximum.unwrap_or(u64::MAX));
    assert!(out.contains(&format!("nofile={expected}")), "{out}");
    assert!(out.contains("shm=ok"), "{out}");
}

#[test]
fn user_caps_and_seccomp_options_apply() {
    let profile = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#;
    let (ok, out) = run(
        RunOptions {
            user: Some("app".into()),
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["CAP_KILL".into()],
            security_opt: vec!["no-new-privileges".into(), format!("seccomp={profile}")],
            read_only: true,
            ..Default::default()
        },
        "id; grep -E '^(CapBnd|NoNewPrivs):' /proc/self/status; \
         mkdir /tmp/x 2>&1 || echo mkdir=denied",
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("uid=1000(app) gid=1000(app) groups=50(staff)"),
        "{out}"
    );
    assert!(out.contains("CapBnd:\t0000000000000020"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("mkdir=denied"), "{out}");

    // (runc sets rlimits with prlimit from outside: with a non-root user that needs
    // CAP_SYS_RESOURCE, which this host may not grant; root here.)
    let (ok, out) = run(
        RunOptions {
            ulimits: vec!["nofile=100:200".into(), "nproc=50".into()],
            ..Default::default()
        },
        "echo nofile=$(ulimit -n) hard=$(ulimit -Hn) nproc=$(ulimit -u)",
    );
    assert!(ok, "{out}");
    assert!(out.contains("nofile=100 hard=200 nproc=50"), "{out}");

    let (ok, out) = run(
        RunOptions {
            privileged: true,
            ..Default::default()
        },
        "grep -E '^(Seccomp|CapBnd):' /proc/self/status",
    );
    assert!(ok, "{out}");
    assert!(out.contains("Seccomp:\t0"), "{out}");
    // Every capability the host has.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let own = status.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
    assert!(out.contains(own), "{out}");
}

#[test]
fn bind_and_tmpfs_mounts_apply() {
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("file"), "from the host").unwrap();
    let (ok, out) = run(
        RunOptions {
            mounts: vec![
                MountSpec::Bind {
                    source: host.path().to_string_lossy().into_owned(),
                    target: "/host".into(),
                    readonly: true,
                    propagation: None,
                },
                MountSpec::Tmpfs {
                    target: "/scratch".into(),
                    size: Some(1 << 20),
                    mode: Some(0o700),
                },
            ],
            shm_size: Some(2 << 20),
            ..Default::default()
        },
        "cat /host/file; echo; (touch /host/x 2>/dev/null && echo host=rw) || echo host=ro; \
         touch /scratch/y && grep -E ' /(scratch|dev/shm) ' /proc/mounts",
    );
    assert!(ok, "{out}");
    assert!(out.contains("from the host\nhost=ro"), "{out}");
    assert!(!host.path().join("x").exists());
    let scratch = out
        .lines()
        .find(|l| l.contains(" /scratch "))
        .unwrap_or_default();
    assert!(
        scratch.contains("size=1024k") && scratch.contains("mode=700"),
        "{out}"
    );
    let shm = out
        .lines()
        .find(|l| l.contains(" /dev/shm "))
        .unwrap_or_default();
    assert!(shm.contains("size=2048k"), "{out}");
}

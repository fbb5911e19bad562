use oci_spec::image::{ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder};
use oci_spec::runtime::{Capability, LinuxNamespaceType, PosixRlimitType, Spec};

use super::*;

fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfiguration {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut config = ConfigBuilder::default()
        .env(s(&["A=image", "B=image"]))
        .working_dir("/srv")
        .labels(
            [
                ("l".to_string(), "image".to_string()),
                (GROUP_ADD_ANNOTATION.to_string(), "disk".to_string()),
            ]
            .into_iter()
            .collect::<HashMap<_, _>>(),
        )
        .volumes(s(&["/data", "/cache"]))
        .exposed_ports(s(&["80/tcp", "53/udp"]))
        .stop_signal("SIGQUIT")
        .build()
        .unwrap();
    if !entrypoint.is_empty() {
        config.set_entrypoint(Some(s(entrypoint)));
    }
    if !cmd.is_empty() {
        config.set_cmd(Some(s(cmd)));
    }
    ImageConfigurationBuilder::default()
        .config(config)
        .build()
        .unwrap()
}

fn args(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().args().clone().unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Default options changed by `set`.
fn with(set: impl FnOnce(&mut RunOptions)) -> RunOptions {
    let mut opts = RunOptions::default();
    set(&mut opts);
    opts
}

/// Asserts that [`build`] refuses each of `bads`, put in the options by `set`, with an error
/// `rejected` accepts.
fn assert_each_rejected(
    img: &ImageConfiguration,
    bads: &[&str],
    set: impl Fn(&mut RunOptions, Vec<String>),
    rejected: impl Fn(&SpecError) -> bool,
) {
    for bad in bads {
        let got = build(img, &with(|o| set(o, strings(&[bad]))));
        assert!(got.as_ref().err().is_some_and(&rejected), "{bad}: {got:?}");
    }
}

#[test]
fn entrypoint_and_cmd_merge_like_docker() {
    let img = image(&["/entry"], &["a", "b"]);
    let spec = build(&img, &RunOptions::default()).unwrap();
    assert_eq!(args(&spec), strings(&["/entry", "a", "b"]));

    let opts = RunOptions {
        cmd: strings(&["x"]),
        ..Default::default()
    };
    assert_eq!(
        args(&build(&img, &opts).unwrap()),
        strings(&["/entry", "x"])
    );

    // A user entrypoint drops the image's Cmd.
    let opts = RunOptions {
        entrypoint: Some(strings(&["/other"])),
        ..Default::default()
    };
    assert_eq!(args(&build(&img, &opts).unwrap()), strings(&["/other"]));

    // An empty entrypoint clears it; the user cmd runs alone.
    let opts = RunOptions {
        entrypoint: Some(vec![]),
        cmd: strings(&["/bin/sh", "-c", "true"]),
        ..Default::default()
    };
    assert_eq!(
        args(&build(&img, &opts).unwrap()),
        strings(&["/bin/sh", "-c", "true"])
    );

    let cmd_only = image(&[], &["/bin/sh"]);
    assert_eq!(
        args(&build(&cmd_only, &RunOptions::default()).unwrap()),
        strings(&["/bin/sh"])
    );
    let opts = RunOptions {
        entrypoint: Some(vec![]),
        ..Default::default()
    };
    assert!(matches!(build(&img, &opts), Err(SpecError::NoCommand)));
    assert!(matches!(
        build(&image(&[], &[]), &RunOptions::default()),
        Err(SpecError::NoCommand)
    ));
}

#[test]
fn env_merges_with_user_winning_and_a_default_path() {
    let img = image(&[], &["sh"]);
    let opts = RunOptions {
        env: strings(&["B=user", "C=user", "A"]),
        tty: true,
        hostname: Some("web".into()),
        ..Default::default()
    };
    let spec = build(&img, &opts).unwrap();
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    assert!(env.contains(&format!("PATH={DEFAULT_PATH}")));
    assert!(env.contains(&"B=user".to_string()));
    assert!(env.contains(&"C=user".to_string()));
    assert!(env.contains(&"TERM=xterm".to_string()));
    assert!(env.contains(&"HOSTNAME=web".to_string()));
    assert!(!env.iter().any(|e| e.starts_with("A=")), "{env:?}");

    let opts = RunOptions {
        env: strings(&["PATH=/only"]),
        ..Default::default()
    };
    let env = build(&img, &opts)
        .unwrap()
        .process()
        .clone()
        .unwrap()
        .env()
        .clone()
        .unwrap();
    assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
    assert!(env.contains(&"PATH=/only".to_string()));

    assert_each_rejected(
        &img,
        &["=x", "A B=1", ""],
        |o, v| o.env = v,
        |e| matches!(e, SpecError::Invalid { field: "env", .. }),
    );
}

#[test]
fn workdir_user_and_annotations() {
    let img = image(&[], &["sh"]);
    let spec = build(&img, &RunOptions::default()).unwrap();
    let p = spec.process().clone().unwrap();
    assert_eq!(p.cwd(), &PathBuf::from("/srv"));
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    let ann = spec.annotations().clone().unwrap();
    assert_eq!(ann[STOP_SIGNAL_ANNOTATION], "SIGQUIT");
    assert_eq!(ann[EXPOSED_PORTS_ANNOTATION], "53/udp,80/tcp");
    assert_eq!(ann[IMAGE_VOLUMES_ANNOTATION], "/cache,/data");
    assert_eq!(ann["l"], "image");
    assert!(!ann.contains_key(USER_ANNOTATION));
    assert!(
        !ann.contains_key(GROUP_ADD_ANNOTATION),
        "an image label set it"
    );

    let opts = RunOptions {
        workdir: Some("/a/../b/./c".into()),
        user: Some("1000:1001".into()),
        group_add: strings(&["27", "audio"]),
        labels: [("l".to_string(), "user".to_string())]
            .into_iter()
            .collect(),
        stop_signal: Some("9".into()),
        ..Default::default()
    };
    let spec = build(&img, &opts).unwrap();
    let p = spec.process().clone().unwrap();
    assert_eq!(p.cwd(), &PathBuf::from("/b/c"));
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 1001));
    assert_eq!(p.user().additional_gids().clone().unwrap(), vec![27]);
    let ann = spec.annotations().clone().unwrap();
    assert_eq!(ann["l"], "user");
    assert_eq!(ann[STOP_SIGNAL_ANNOTATION], "SIGKILL");
    assert_eq!(ann[GROUP_ADD_ANNOTATION], "audio");
    assert!(!ann.contains_key(USER_ANNOTATION));

    for user in ["app", "app:staff", "1000", "1000:staff"] {
        let opts = RunOptions {
            user: Some(user.into()),
            ..Default::default()
        };
        let spec = build(&img, &opts).unwrap();
        assert_eq!(spec.annotations().clone().unwrap()[USER_ANNOTATION], user);
        assert_eq!(spec.process().clone().unwrap().user().uid(), 0);
    }
    for (field, opts) in [
        ("workdir", with(|o| o.workdir = Some("rel".into()))),
        ("user", with(|o| o.user = Some(":1".into()))),
        (
            "stop signal",
            with(|o| o.stop_signal = Some("SIGNOPE".into())),
        ),
        ("hostname", with(|o| o.hostname = Some("bad_host".into()))),
        ("init", with(|o| o.init = true)),
        (
            "label",
            with(|o| o.labels = [(USER_ANNOTATION.to_string(), "0".to_string())].into()),
        ),
    ] {
        match build(&img, &opts) {
            Err(SpecError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn defaults_match_docker() {
    let spec = build(&image(&[], &["sh"]), &RunOptions::default()).unwrap();
    let p = spec.process().clone().unwrap();
    let caps = p.capabilities().clone().unwrap();
    let bounding = caps.bounding().clone().unwrap();
    assert_eq!(bounding.len(), 14);
    assert!(bounding.contains(&Capability::NetBindService));
    assert!(!bounding.contains(&Capability::SysAdmin));
    assert!(caps.inheritable().clone().unwrap().is_empty());
    // Docker's RLIMIT_NOFILE, clamped to what the host grants, or inherited when equal.
    let host = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let expected = 1_048_576.min(host.maximum.unwrap_or(u64::MAX));
    match p
        .rlimits()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.typ() == PosixRlimitType::RlimitNofile)
    {
        Some(nofile) => assert_eq!((nofile.soft(), nofile.hard()), (expected, expected)),
        None => assert_eq!(
            (host.current, host.maximum),
            (Some(expected), Some(expected))
        ),
    }
    let linux = spec.linux().clone().unwrap();
    assert!(linux.seccomp().is_some());
    assert!(
        linux
            .masked_paths()
            .clone()
            .unwrap()
            .contains(&"/proc/kcore".into())
    );
    assert!(
        linux
            .readonly_paths()
            .clone()
            .unwrap()
            .contains(&"/proc/sys".into())
    );
    let ns: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    for t in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
    ] {
        assert!(ns.contains(&t), "{t:?}");
    }
    let mounts = spec.mounts().clone().unwrap();
    let dests: Vec<_> = mounts
        .iter()
        .map(|m| m.destination().to_string_lossy().into_owned())
        .collect();
    for d in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ] {
        assert!(dests.contains(&d.to_string()), "{d}");
    }
    // Image volumes become anonymous volumes.
    let data = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/data"))
        .unwrap();
    assert_eq!(data.typ().as_deref(), Some("volume"));
    assert_eq!(data.source().as_deref(), Some(Path::new("")));
    assert_eq!(spec.root().clone().unwrap().path(), Path::new("rootfs"));
}

#[test]
fn privileged_and_capabilities() {
    let img = image(&[], &["sh"]);
    let opts = RunOptions {
        privileged: true,
        ..Default::default()
    };
    let spec = build(&img, &opts).unwrap();
    let linux = spec.linux().clone().unwrap();
    assert!(linux.seccomp().is_none());
    assert!(linux.masked_paths().is_none());
    let caps = spec
        .process()
        .clone()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    assert!(
        caps.bounding()
            .clone()
            .unwrap()
            .contains(&Capability::SysAdmin)
    );

    let caps = |add: &[&str], drop: &[&str]| {
        let opts = RunOptions {
            cap_add: strings(add),
            cap_drop: strings(drop),
            ..Default::default()
        };
        build(&img, &opts).map(|s| {
            s.process()
                .clone()
                .unwrap()
                .capabilities()
                .clone()
                .unwrap()
                .bounding()
                .clone()
                .unwrap()
        })
    };
    let c = caps(&["net_admin", "CAP_SYS_TIME"], &["CHOWN"]).unwrap();
    assert!(c.contains(&Capability::NetAdmin) && c.contains(&Capability::SysTime));
    assert!(!c.contains(&Capability::Chown));
    assert_eq!(c.len(), 15);
    let c = caps(&["NET_BIND_SERVICE"], &["ALL"]).unwrap();
    assert_eq!(
        c.into_iter().collect::<Vec<_>>(),
        vec![Capability::NetBindService]
    );
    let c = caps(&["ALL"], &["SYS_ADMIN"]).unwrap();
    assert!(c.len() > 30 && !c.contains(&Capability::SysAdmin));
    assert!(
        matches!(caps(&["NOT_A_CAP"], &[]), Err(SpecError::Capability { name }) if name == "NOT_A_CAP")
    );
    assert!(matches!(
        caps(&[], &["CAP_BOGUS"]),
        Err(SpecError::Capability { .. })
    ));

    // seccomp=unconfined and a custom profile.
    let opts = RunOptions {
        security_opt: strings(&["seccomp=unconfined", "no-new-privileges"]),
        ..Default::default()
    };
    let spec = build(&img, &opts).unwrap();
    assert!(spec.linux().clone().unwrap().seccomp().is_none());
    assert_eq!(
        spec.process().clone().unwrap().no_new_privileges(),
        Some(true)
    );
    let profile = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#;
    let opts = RunOptions {
        security_opt: vec![format!("seccomp={profile}")],
        ..Default::default()
    };
    let seccomp = build(&img, &opts)
        .unwrap()
        .linux()
        .clone()
        .unwrap()
        .seccomp()
        .clone()
        .unwrap();
    assert_eq!(
        seccomp.syscalls().clone().unwrap()[0].names(),
        &strings(&["mkdir"])
    );
    let opts = RunOptions {
        security_opt: strings(&["apparmor=unconfined", "label=disable"]),
        ..Default::default()
    };
    assert!(build(&img, &opts).is_ok());
    assert_each_rejected(
        &img,
        &[
            "seccomp={",
            "apparmor=docker-default",
            "label=type:svirt_t",
            "no-new-privileges:maybe",
            "bogus",
        ],
        |o, v| o.security_opt = v,
        |e| matches!(e, SpecError::SecurityOpt { .. }),
    );
}

#[test]
fn resources_and_bad_values() {
    let img = image(&[], &["sh"]);
    let opts = RunOptions {
        memory: Some(parse_bytes("64m").unwrap()),
        memory_swap: Some(-1),
        memory_reservation: Some(parse_bytes("32m").unwrap()),
        cpus: Some(0.5),
        cpu_shares: Some(512),
        cpuset_cpus: Some("0".into()),
        pids_limit: Some(100),
        blkio_weight: Some(300),
        oom_score_adj: Some(500),
        ulimits: strings(&["nofile=1024:2048", "RLIMIT_NPROC=64"]),
        sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let spec = build(&img, &opts).unwrap();
    let r = spec.linux().clone().unwrap().resources().clone().unwrap();
    let mem = r.memory().unwrap();
    assert_eq!(mem.limit(), Some(64 << 20));
    assert_eq!(mem.swap(), Some(-1));
    let cpu = r.cpu().clone().unwrap();
    assert_eq!((cpu.quota(), cpu.period()), (Some(50_000), Some(100_000)));
    assert_eq!(r.pids().unwrap().limit(), 100);
    let rl = spec.process().clone().unwrap().rlimits().clone().unwrap();
    let nofile = rl
        .iter()
        .find(|r| r.typ() == PosixRlimitType::RlimitNofile)
        .unwrap();
    assert_eq!((nofile.soft(), nofile.hard()), (1024, 2048));
    assert!(
        rl.iter()
            .any(|r| r.typ() == PosixRlimitType::RlimitNproc && r.soft() == 64)
    );
    assert_eq!(spec.process().clone().unwrap().oom_score_adj(), Some(500));

    let check = |set: fn(&mut RunOptions), field: &str| match build(&img, &with(set)) {
        Err(SpecError::Resource { field: f, .. }) => assert_eq!(f, field),
        other => panic!("{field}: {other:?}"),
    };
    check(|o| o.memory = Some(1024), "memory");
    check(
        |o| {
            o.memory = Some(64 << 20);
            o.memory_swap = Some(32 << 20);
        },
        "memory_swap",
    );
    check(|o| o.memory_swap = Some(64 << 20), "memory_swap");
    check(
        |o| {
            o.memory = Some(64 << 20);
            o.memory_reservation = Some(128 << 20);
        },
        "memory_reservation",
    );
    check(|o| o.cpus = Some(0.0), "cpus");
    check(|o| o.cpus = Some(100_000.0), "cpus");
    check(|o| o.cpuset_cpus = Some("1-".into()), "cpuset_cpus");
    check(|o| o.blkio_weight = Some(5), "blkio_weight");
    check(|o| o.oom_score_adj = Some(2000), "oom_score_adj");
    check(|o| o.shm_size = Some(0), "shm_size");
    assert_each_rejected(
        &img,
        &["nofile", "bogus=1", "nofile=2:1", "nofile=x", "nofile=1:x"],
        |o, v| o.ulimits = v,
        |e| matches!(e, SpecError::Ulimit { .. }),
    );
    let opts = RunOptions {
        sysctls: [("kernel.hostname".to_string(), "x".to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    assert!(matches!(build(&img, &opts), Err(SpecError::Sysctl { .. })));
    let opts = RunOptions {
        host_network: true,
        sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    assert!(matches!(build(&img, &opts), Err(SpecError::Sysctl { .. })));

    assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
    assert_eq!(parse_bytes("1.5KiB").unwrap(), 1536);
    assert_eq!(parse_bytes("100").unwrap(), 100);
    assert!(parse_bytes("12x").is_err());
    assert!(parse_bytes("m").is_err());
}

#[test]
fn user_mounts_and_image_volumes() {
    let img = image(&[], &["sh"]);
    let opts = RunOptions {
        mounts: vec![
            MountSpec::Bind {
                source: "/srv/host".into(),
                target: "/data/sub".into(),
                readonly: true,
                propagation: None,
            },
            MountSpec::Volume {
                name: "cache-vol".into(),
                target: "/cache/".into(),
                readonly: false,
                nocopy: true,
            },
            MountSpec::Tmpfs {
                target: "/dev/shm".into(),
                size: Some(1 << 20),
                mode: Some(0o700),
            },
        ],
        ..Default::default()
    };
    let spec = build(&img, &opts).unwrap();
    let mounts = spec.mounts().clone().unwrap();
    let find = |d: &str| {
        mounts
            .iter()
            .filter(|m| m.destination() == Path::new(d))
            .collect::<Vec<_>>()
    };
    let bind = find("/data/sub");
    assert_eq!(
        bind[0].options().clone().unwrap(),
        strings(&["rbind", "ro", "rprivate"])
    );
    let cache = find("/cache");
    assert_eq!(cache.len(), 1);
    assert_eq!(cache[0].source().as_deref(), Some(Path::new("cache-vol")));
    assert_eq!(
        cache[0].options().clone().unwrap(),
        strings(&["rw", "nocopy"])
    );
    let shm = find("/dev/shm");
    assert_eq!(
        shm.len(),
        1,
        "the user's tmpfs replaces the default /dev/shm"
    );
    assert!(
        shm[0]
            .options()
            .clone()
            .unwrap()
            .contains(&"mode=700".to_string())
    );
    // The image's /data volume is still anonymous and mounted before /data/sub.
    let pos = |d: &str| {
        mounts
            .iter()
            .position(|m| m.destination() == Path::new(d))
            .unwrap()
    };
    assert!(pos("/data") < pos("/data/sub"));

    let bad_mount = |m: MountSpec| {
        let opts = RunOptions {
            mounts: vec![m],
            ..Default::default()
        };
        assert!(matches!(build(&img, &opts), Err(SpecError::Mount { .. })));
    };
    bad_mount(MountSpec::Bind {
        source: "rel".into(),
        target: "/x".into(),
        readonly: false,
        propagation: None,
    });
    bad_mount(MountSpec::Bind {
        source: "/x".into(),
        target: "x".into(),
        readonly: false,
        propagation: None,
    });
    bad_mount(MountSpec::Bind {
        source: "/x".into(),
        target: "/x".into(),
        readonly: false,
        propagation: Some("weird".into()),
    });
    bad_mount(MountSpec::Volume {
        name: "bad/name".into(),
        target: "/x".into(),
        readonly: false,
        nocopy: false,
    });
    bad_mount(MountSpec::Tmpfs {
        target: "/".into(),
        size: None,
        mode: None,
    });
    bad_mount(MountSpec::Tmpfs {
        target: "/t".into(),
        size: Some(-1),
        mode: None,
    });
    let opts = RunOptions {
        mounts: vec![
            MountSpec::Tmpfs {
                target: "/t".into(),
                size: None,
                mode: None,
            },
            MountSpec::Tmpfs {
                target: "/t/".into(),
                size: None,
                mode: None,
            },
        ],
        ..Default::default()
    };
    assert!(
        matches!(build(&img, &opts), Err(SpecError::Mount { reason, .. }) if reason.contains("duplicate"))
    );
}

#[test]
fn devices_and_host_network() {
    let img = image(&[], &["sh"]);
    let opts = RunOptions {
        devices: strings(&["/dev/null:/dev/mynull:rw"]),
        host_network: true,
        ..Default::default()
    };
    let spec = build(&img, &opts).unwrap();
    let linux = spec.linux().clone().unwrap();
    let dev = &linux.devices().clone().unwrap()[0];
    assert_eq!(dev.path(), Path::new("/dev/mynull"));
    assert_eq!((dev.major(), dev.minor()), (1, 3));
    let ns: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert!(!ns.contains(&LinuxNamespaceType::Network) && !ns.contains(&LinuxNamespaceType::Uts));
    assert_each_rejected(
        &img,
        &[
            "/dev/nope",
            "/etc/passwd",
            "/dev/null:/dev/x:rwx",
            "dev/null",
            "/a:/b:rw:x",
        ],
        |o, v| o.devices = v,
        |e| matches!(e, SpecError::Device { .. }),
    );
}

#[test]
fn spec_round_trips_as_json() {
    let spec = build(&image(&["/e"], &[]), &RunOptions::default()).unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    let back: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
}

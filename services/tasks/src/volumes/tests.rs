use std::os::unix::fs::{MetadataExt, PermissionsExt};

use oci_spec::runtime::Mount;

use super::*;
use crate::spec::{MountSpec, RunOptions};

struct Fixture {
    dir: tempfile::TempDir,
    manager: VolumeManager,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::create(dir.path().join("meta.redb")).unwrap());
    let manager = VolumeManager::new(db, dir.path()).unwrap();
    Fixture { dir, manager }
}

fn no_filters() -> Filters {
    Filters::parse(&[]).unwrap()
}

fn spec_with(mounts: Vec<MountSpec>) -> Spec {
    let image = oci_spec::image::ImageConfigurationBuilder::default()
        .config(
            oci_spec::image::ConfigBuilder::default()
                .cmd(vec!["sh".to_string()])
                .volumes(vec!["/image-vol".to_string()])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    crate::spec::build(
        &image,
        &RunOptions {
            mounts,
            ..Default::default()
        },
    )
    .unwrap()
}

fn volume_mount(name: &str, target: &str, nocopy: bool) -> MountSpec {
    MountSpec::Volume {
        name: name.into(),
        target: target.into(),
        readonly: false,
        nocopy,
    }
}

fn mount_at<'a>(spec: &'a Spec, dest: &str) -> &'a Mount {
    spec.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new(dest))
        .unwrap()
}

#[test]
fn names_are_validated_like_docker() {
    for ok in ["ab", "data", "my_vol.1-x", "0abc"] {
        assert!(validate_name(ok).is_ok(), "{ok}");
    }
    for bad in ["", "a", "-x", ".x", "a/b", "a b", "é1", &"x".repeat(256)] {
        assert!(validate_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn create_inspect_list_remove() {
    let f = fixture();
    let m = &f.manager;
    let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    let v = m
        .create(
            "ns1",
            "data",
            CreateOptions {
                labels: labels.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(v.driver, "local");
    assert!(Path::new(&v.mountpoint).is_dir());
    assert!(v.mountpoint.ends_with("volumes/ns1/data/_data"));
    // Identical again: the existing volume; another namespace is independent.
    assert_eq!(
        m.create("ns1", "data", CreateOptions::default())
            .unwrap()
            .labels,
        v.labels
    );
    m.create("ns2", "data", CreateOptions::default()).unwrap();
    let anon = m.create("ns1", "", CreateOptions::default()).unwrap();
    assert_eq!(anon.name.len(), 64);

    std::fs::write(Path::new(&v.mountpoint).join("f"), vec![1u8; 10_000]).unwrap();
    let inspected = m.inspect("ns1", "data").unwrap();
    let usage = inspected.usage.unwrap();
    assert!(usage.size >= 10_000, "{usage:?}");
    assert_eq!(usage.ref_count, 0);

    let list = |filters: &[&str]| {
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        let mut names: Vec<String> = m
            .list("ns1", &Filters::parse(&filters).unwrap(), false)
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        names.sort();
        names
    };
    assert_eq!(list(&[]).len(), 2);
    assert_eq!(list(&["labels.app==web"]), ["data"]);
    assert_eq!(list(&["name~=^da"]), ["data"]);
    assert_eq!(list(&["anonymous==true"]), std::slice::from_ref(&anon.name));
    assert_eq!(list(&["dangling==true"]).len(), 2);

    for (name, opts, code) in [
        ("x", CreateOptions::default(), tonic::Code::InvalidArgument),
        (
            "data",
            CreateOptions {
                driver: "nfs".into(),
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
        ),
        (
            "other",
            CreateOptions {
                options: [("type".to_string(), "tmpfs".to_string())].into(),
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
        ),
    ] {
        let e = m.create("ns1", name, opts).unwrap_err();
        assert_eq!(tonic::Status::from(e).code(), code, "{name}");
    }
    let e = m.inspect("ns1", "nope").unwrap_err();
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::NotFound);

    m.remove("ns1", "data", false).unwrap();
    assert!(!Path::new(&v.mountpoint).exists());
    let e = m.remove("ns1", "data", false).unwrap_err();
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::NotFound);
    assert!(m.inspect("ns2", "data").is_ok());
}

#[test]
fn volumes_in_use_and_prune() {
    let f = fixture();
    let m = &f.manager;
    m.create("ns", "named", CreateOptions::default()).unwrap();
    m.create("ns", "idle", CreateOptions::default()).unwrap();
    let mut spec = spec_with(vec![volume_mount("named", "/data", false)]);
    m.prepare_mounts("ns", "c1", &mut spec, None).unwrap();
    // The image volume became an anonymous volume, bind-mounted.
    let anon = mount_at(&spec, "/image-vol");
    assert_eq!(anon.typ().as_deref(), Some("bind"));
    assert!(
        anon.options()
            .as_ref()
            .unwrap()
            .contains(&"rbind".to_string())
    );
    let anon_name = anon
        .source()
        .as_ref()
        .unwrap()
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(anon_name.len(), 64);
    assert_eq!(
        mount_at(&spec, "/data").source().as_ref().unwrap(),
        &m.mountpoint("ns", "named")
    );

    let e = m.remove("ns", "named", false).unwrap_err();
    assert!(e.to_string().contains("c1"), "{e}");
    assert_eq!(
        tonic::Status::from(e).code(),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        m.inspect("ns", "named").unwrap().usage.unwrap().ref_count,
        1
    );

    // Prune: unused anonymous volumes only (none yet), then every unused one with all.
    let (pruned, _) = m.prune("ns", &no_filters(), false).unwrap();
    assert!(pruned.is_empty());
    let (pruned, _) = m.prune("ns", &no_filters(), true).unwrap();
    assert_eq!(pruned, ["idle"]);

    // Released without removing anonymous volumes: they are then prunable.
    m.release("ns", "c1", false).unwrap();
    assert_eq!(
        m.inspect("ns", "named").unwrap().usage.unwrap().ref_count,
        0
    );
    let (pruned, _) = m.prune("ns", &no_filters(), false).unwrap();
    assert_eq!(pruned, std::slice::from_ref(&anon_name));
    assert!(!m.mountpoint("ns", &anon_name).exists());

    // release(remove_anonymous) drops the anonymous volume and keeps the named one.
    let mut spec = spec_with(vec![volume_mount("named", "/data", false)]);
    m.prepare_mounts("ns", "c2", &mut spec, None).unwrap();
    let anon2 = mount_at(&spec, "/image-vol").source().clone().unwrap();
    m.release("ns", "c2", true).unwrap();
    assert!(!anon2.exists());
    assert!(m.inspect("ns", "named").is_ok());

    // Force removes a volume in use.
    let mut spec = spec_with(vec![volume_mount("named", "/data", false)]);
    m.prepare_mounts("ns", "c3", &mut spec, None).unwrap();
    m.remove("ns", "named", true).unwrap();
    assert!(m.inspect("ns", "named").is_err());
    m.release("ns", "c3", true).unwrap();
    let left: Vec<_> = m.list("ns", &no_filters(), false).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn new_volumes_are_filled_from_the_image() {
    let f = fixture();
    let m = &f.manager;
    let rootfs = f.dir.path().join("rootfs");
    let app = rootfs.join("app");
    std::fs::create_dir_all(app.join("sub")).unwrap();
    std::fs::write(app.join("file"), "content").unwrap();
    std::fs::set_permissions(app.join("file"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(app.join("file"), Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", app.join("abs-link")).unwrap();
    xattr::set(app.join("file"), "user.berth", b"value").unwrap();
    // Hostile: a symlinked directory pointing outside the rootfs, and a mount target that
    // is itself such a symlink.
    let outside = f.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "host secret").unwrap();
    std::os::unix::fs::symlink(&outside, app.join("escape")).unwrap();
    std::os::unix::fs::symlink(&outside, rootfs.join("evil")).unwrap();

    let mut spec = spec_with(vec![
        volume_mount("appdata", "/app", false),
        volume_mount("evil", "/evil", false),
        volume_mount("skip", "/app/sub", true),
    ]);
    m.prepare_mounts("ns", "c1", &mut spec, Some(&rootfs))
        .unwrap();
    let data = m.mountpoint("ns", "appdata");
    assert_eq!(
        std::fs::read_to_string(data.join("file")).unwrap(),
        "content"
    );
    let meta = std::fs::metadata(data.join("file")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o7777, 0o751);
    assert_eq!(
        xattr::get(data.join("file"), "user.berth")
            .unwrap()
            .as_deref(),
        Some(&b"value"[..])
    );
    assert_eq!(
        std::fs::read_link(data.join("abs-link")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert!(
        std::fs::symlink_metadata(data.join("escape"))
            .unwrap()
            .is_symlink()
    );
    assert!(data.join("sub").is_dir());
    // The /evil target resolved inside the rootfs (to <rootfs>/<outside path>, absent): empty.
    assert_eq!(
        std::fs::read_dir(m.mountpoint("ns", "evil"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(m.mountpoint("ns", "skip"))
            .unwrap()
            .count(),
        0
    );
    let opts = mount_at(&spec, "/app/sub").options().clone().unwrap();
    assert!(!opts.contains(&"nocopy".to_string()), "{opts:?}");

    // A volume that already has content is not filled again.
    std::fs::write(app.join("file"), "changed").unwrap();
    let mut spec = spec_with(vec![volume_mount("appdata", "/app", false)]);
    m.prepare_mounts("ns", "c2", &mut spec, Some(&rootfs))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join("file")).unwrap(),
        "content"
    );
}

#[test]
fn a_failed_prepare_leaves_nothing() {
    let f = fixture();
    let m = &f.manager;
    let mut spec = spec_with(vec![volume_mount("fresh", "/a", false)]);
    // Sneak a bad name past the builder, after a valid new volume.
    let mut mounts = spec.mounts().clone().unwrap();
    let mut bad = mounts.last().unwrap().clone();
    bad.set_destination(PathBuf::from("/b"));
    bad.set_source(Some(PathBuf::from("bad/name")));
    mounts.push(bad);
    spec.set_mounts(Some(mounts));
    let before = spec.clone();
    let e = m.prepare_mounts("ns", "c1", &mut spec, None).unwrap_err();
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
    assert_eq!(spec, before);
    assert!(m.list("ns", &no_filters(), false).unwrap().is_empty());
    let dirs: Vec<_> = std::fs::read_dir(f.dir.path().join("volumes/ns"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(dirs.is_empty(), "{dirs:?}");
}

#[test]
fn each_task_of_a_container_gets_the_same_anonymous_volume() {
    let f = fixture();
    let m = &f.manager;
    let source = |spec: &Spec| mount_at(spec, "/image-vol").source().clone().unwrap();
    let mut first = spec_with(vec![]);
    m.prepare_mounts("ns", "c1", &mut first, None).unwrap();
    let mut again = spec_with(vec![]);
    m.prepare_mounts("ns", "c1", &mut again, None).unwrap();
    assert_eq!(source(&first), source(&again));
    let mut other = spec_with(vec![]);
    m.prepare_mounts("ns", "c2", &mut other, None).unwrap();
    assert_ne!(source(&first), source(&other));
    assert_eq!(m.list("ns", &no_filters(), false).unwrap().len(), 2);
    m.release("ns", "c1", true).unwrap();
    m.release("ns", "c2", true).unwrap();
    assert!(m.list("ns", &no_filters(), false).unwrap().is_empty());
    // A container created again under the same id starts with a new anonymous volume.
    let mut fresh = spec_with(vec![]);
    m.prepare_mounts("ns", "c1", &mut fresh, None).unwrap();
    assert_ne!(source(&first), source(&fresh));
}

#[test]
fn deeply_nested_image_directories_are_copied() {
    let f = fixture();
    let m = &f.manager;
    let rootfs = f.dir.path().join("rootfs");
    let mut deep = rootfs.join("app");
    for _ in 0..300 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("leaf"), "bottom").unwrap();
    let mut spec = spec_with(vec![volume_mount("deep", "/app", false)]);
    m.prepare_mounts("ns", "c1", &mut spec, Some(&rootfs))
        .unwrap();
    let copied = m
        .mountpoint("ns", "deep")
        .join(deep.strip_prefix(rootfs.join("app")).unwrap());
    assert_eq!(
        std::fs::read_to_string(copied.join("leaf")).unwrap(),
        "bottom"
    );
    let usage = m.inspect("ns", "deep").unwrap().usage.unwrap();
    assert!(usage.size > 300 * 512, "{usage:?}");
}

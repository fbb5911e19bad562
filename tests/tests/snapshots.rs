//! End-to-end tests of the snapshots service: real binaries, real overlay mounts, the layer
//! library on real snapshots, crash injection with kill -9.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_api::berth::snapshots::v1::{self as pb, snapshots_client::SnapshotsClient};
use berth_api::client::{self, Channel};
use berth_snapshots::layer;
use berth_snapshots::mount::{Mount, Mounted};
use berth_tests::fixtures::images::{self, LayerBuilder};
use berth_tests::tree;
use berth_tests::{Berth, Mode, Options};
use sha2::{Digest, Sha256};
use tonic::Code;

type Client = SnapshotsClient<Channel>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(berth: &Berth, namespace: &str) -> Client {
    SnapshotsClient::new(
        client::connect(&berth.socket("snapshots"), namespace)
            .await
            .unwrap(),
    )
}

/// A directory for temporary mounts; the suite's leak check knows the prefix.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-test-mnt-")
        .tempdir()
        .unwrap()
}

fn mounts_of(mounts: Vec<berth_api::berth::types::v1::Mount>) -> Vec<Mount> {
    mounts.into_iter().map(Mount::from).collect()
}

async fn prepare(c: &mut Client, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
    let r = c
        .prepare(pb::PrepareSnapshotRequest {
            key: key.into(),
            parent: parent.into(),
            ..Default::default()
        })
        .await?;
    Ok(mounts_of(r.into_inner().mounts))
}

async fn view(c: &mut Client, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
    let r = c
        .view(pb::ViewSnapshotRequest {
            key: key.into(),
            parent: parent.into(),
            ..Default::default()
        })
        .await?;
    Ok(mounts_of(r.into_inner().mounts))
}

async fn mounts(c: &mut Client, key: &str) -> Result<Vec<Mount>, tonic::Status> {
    let r = c
        .mounts(pb::MountsRequest {
            key: key.into(),
            ..Default::default()
        })
        .await?;
    Ok(mounts_of(r.into_inner().mounts))
}

async fn commit(c: &mut Client, name: &str, key: &str) -> Result<(), tonic::Status> {
    c.commit(pb::CommitSnapshotRequest {
        name: name.into(),
        key: key.into(),
        ..Default::default()
    })
    .await
    .map(drop)
}

async fn remove(c: &mut Client, key: &str) -> Result<(), tonic::Status> {
    c.remove(pb::RemoveSnapshotRequest {
        key: key.into(),
        ..Default::default()
    })
    .await
    .map(drop)
}

async fn stat(c: &mut Client, key: &str) -> Result<pb::Info, tonic::Status> {
    let r = c
        .stat(pb::StatSnapshotRequest {
            key: key.into(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().info.unwrap())
}

async fn list(c: &mut Client, filters: &[&str]) -> Vec<pb::Info> {
    let mut stream = c
        .list(pb::ListSnapshotsRequest {
            filters: filters.iter().map(|f| (*f).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        all.extend(batch.info);
    }
    all
}

async fn names(c: &mut Client, filters: &[&str]) -> Vec<String> {
    list(c, filters).await.into_iter().map(|i| i.name).collect()
}

async fn usage(c: &mut Client, key: &str) -> (i64, i64) {
    let u = c
        .usage(pb::UsageRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (u.size, u.inodes)
}

async fn cleanup(c: &mut Client) -> u64 {
    c.cleanup(pb::CleanupRequest::default())
        .await
        .unwrap()
        .into_inner()
        .removed
}

/// Prepares `key` on `parent`, applies the layer `tar` with the layer library, commits as
/// `name`; returns the diff id.
async fn commit_layer(
    c: &mut Client,
    scratch: &Path,
    name: &str,
    parent: &str,
    tar: &[u8],
) -> String {
    let key = format!("{name}-extract");
    let m = prepare(c, &key, parent).await.unwrap();
    let applied = layer::apply_to_mounts(&m, tar, scratch).unwrap();
    commit(c, name, &key).await.unwrap();
    applied.diff_id
}

/// Mounts a temporary view of `parent`, runs `check` on it, removes the view.
async fn with_view<T>(
    c: &mut Client,
    scratch: &Path,
    parent: &str,
    check: impl FnOnce(&Path) -> T,
) -> T {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let key = format!("view-{n}-of-{parent}");
    let m = view(c, &key, parent).await.unwrap();
    let result = {
        let mounted = Mounted::temporary(&m, scratch).unwrap();
        check(mounted.path())
    };
    remove(c, &key).await.unwrap();
    result
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("the call must fail").code()
}

/// The overlay snapshotter's directories.
fn overlay_root(berth: &Berth) -> PathBuf {
    berth.root().join("snapshots/overlay")
}

fn entries(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Exactly one layer directory per record, nothing staged or in the trash.
fn assert_no_orphans(root: &Path, records: usize) {
    assert_eq!(
        entries(&root.join("snapshots")),
        records,
        "layer directories vs records"
    );
    assert_eq!(entries(&root.join("staging")), 0, "staging");
    assert_eq!(entries(&root.join("trash")), 0, "trash");
}

/// Everything a layer round trip must keep (see [`tree::listing`]), mtimes included.
fn listing(root: &Path) -> BTreeMap<String, String> {
    tree::listing(root, true)
}

fn assert_same_tree(want: &Path, got: &Path) {
    tree::assert_same_tree(want, got, true);
}

fn ctl_ok(berth: &Berth, args: &[&str]) -> String {
    let out = berth.run_ctl(args).unwrap();
    assert!(
        out.status.success(),
        "berthctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ctl_err(berth: &Berth, args: &[&str]) -> String {
    let out = berth.run_ctl(args).unwrap();
    assert!(!out.status.success(), "berthctl {args:?} must fail");
    assert_ne!(out.status.code(), Some(101), "must not panic");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn berthctl_snapshot_commands_in_ctr_order() {
    let berth = Berth::start(Mode::AllInOne).unwrap();
    let scratch = scratch();
    let target = scratch.path().join("target");
    fs::create_dir(&target).unwrap();

    ctl_ok(&berth, &["snapshot", "prepare", "base"]);
    ctl_ok(
        &berth,
        &["snapshot", "mount", "base", target.to_str().unwrap()],
    );
    fs::write(target.join("hello"), "hello\n").unwrap();
    fs::create_dir(target.join("dir")).unwrap();
    berth_snapshots::mount::unmount(&target).unwrap();
    ctl_ok(
        &berth,
        &["snapshot", "commit", "base-1", "base", "--label", "layer=1"],
    );
    ctl_ok(&berth, &["snapshot", "prepare", "work", "base-1"]);
    ctl_ok(&berth, &["snapshot", "view", "look", "base-1"]);

    let ls = ctl_ok(&berth, &["snapshot", "ls"]);
    let rows: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["KEY", "PARENT", "KIND"], "{ls}");
    assert!(rows.contains(&vec!["base-1", "committed"]), "{ls}");
    assert!(rows.contains(&vec!["work", "base-1", "active"]), "{ls}");
    assert!(rows.contains(&vec!["look", "base-1", "view"]), "{ls}");
    let json: serde_json::Value = serde_json::from_str(&ctl_ok(
        &berth,
        &["-o", "json", "snapshot", "ls", "--filter", "kind==view"],
    ))
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["name"], "look");

    let info: serde_json::Value =
        serde_json::from_str(&ctl_ok(&berth, &["snapshot", "info", "base-1"])).unwrap();
    assert_eq!(info["kind"], "committed");
    assert_eq!(info["labels"]["layer"], "1");
    let tree = ctl_ok(&berth, &["snapshot", "tree"]);
    assert!(tree.contains("base-1\n \\_ look\n \\_ work\n"), "{tree}");

    let usage = ctl_ok(&berth, &["snapshot", "usage", "--bytes", "base-1"]);
    let row: Vec<&str> = usage.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0], "base-1");
    assert_eq!(row[2], "3", "root, hello and dir: {usage}");

    let cmds = ctl_ok(&berth, &["snapshot", "mounts", "/mnt/x", "work"]);
    assert!(
        cmds.starts_with("mount -t overlay overlay /mnt/x -o index=off,lowerdir="),
        "{cmds}"
    );
    let cmds = ctl_ok(&berth, &["snapshot", "mounts", "/mnt/x", "look"]);
    assert!(
        cmds.starts_with("mount -t bind ") && cmds.contains("-o ro,rbind"),
        "{cmds}"
    );

    let labelled = ctl_ok(&berth, &["snapshot", "label", "base-1", "layer=", "team=a"]);
    let labelled: serde_json::Value = serde_json::from_str(&labelled).unwrap();
    assert_eq!(labelled["labels"], serde_json::json!({"team": "a"}));

    // ctr's argument order, and one clear line when something is wrong.
    let err = ctl_err(&berth, &["snapshot", "rm", "base-1"]);
    assert!(
        err.contains("parent") && err.contains("remove them first"),
        "{err}"
    );
    let err = ctl_err(&berth, &["snapshot", "commit", "x", "look"]);
    assert!(
        err.contains("only an active snapshot can be committed"),
        "{err}"
    );
    let err = ctl_err(&berth, &["snapshot", "info", "nope"]);
    assert!(err.contains("not found"), "{err}");
    let err = ctl_err(&berth, &["snapshot", "prepare", "../etc"]);
    assert!(err.contains("invalid snapshot key"), "{err}");
    let err = ctl_err(&berth, &["snapshot", "--snapshotter", "zfs", "ls"]);
    assert!(err.contains("\"zfs\" is not served here"), "{err}");

    // diff of an active snapshot against its parent, written as a layer file.
    ctl_ok(
        &berth,
        &["snapshot", "mount", "work", target.to_str().unwrap()],
    );
    fs::write(target.join("added"), "new").unwrap();
    fs::remove_file(target.join("hello")).unwrap();
    berth_snapshots::mount::unmount(&target).unwrap();
    let file = scratch.path().join("layer.tar");
    let out = berth
        .run_ctl(&["snapshot", "diff", "work", "--file", file.to_str().unwrap()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tar = fs::read(&file).unwrap();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with(&digest));
    let names: Vec<String> = tar::Archive::new(tar.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["added", ".wh.hello"]);
    // The temporary view diff made is gone again.
    assert_eq!(ctl_ok(&berth, &["snapshot", "ls"]).lines().count(), 4);

    ctl_ok(&berth, &["snapshot", "rm", "work", "look", "base-1"]);
    assert_eq!(ctl_ok(&berth, &["snapshot", "ls"]).lines().count(), 1);
    assert_eq!(
        ctl_ok(&berth, &["snapshot", "cleanup"]).trim(),
        "removed 0 directories"
    );
    assert_no_orphans(&overlay_root(&berth), 0);
    berth.stop().unwrap();
}

#[test]
fn bad_input_gets_precise_statuses_and_leaves_nothing_half_made() {
    let berth = Berth::start(Mode::AllInOne).unwrap();
    runtime().block_on(async {
        let mut c = connect(&berth, "default").await;
        prepare(&mut c, "base", "").await.unwrap();
        commit(&mut c, "committed", "base").await.unwrap();
        prepare(&mut c, "active", "committed").await.unwrap();
        view(&mut c, "view", "committed").await.unwrap();

        assert_eq!(
            code(prepare(&mut c, "x", "no-such-parent").await),
            Code::NotFound
        );
        assert_eq!(
            code(view(&mut c, "x", "no-such-parent").await),
            Code::NotFound
        );
        assert_eq!(
            code(prepare(&mut c, "x", "active").await),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(prepare(&mut c, "x", "view").await),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(commit(&mut c, "c2", "view").await),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(commit(&mut c, "c2", "committed").await),
            Code::FailedPrecondition
        );
        assert_eq!(code(commit(&mut c, "c2", "nope").await), Code::NotFound);
        assert_eq!(
            code(commit(&mut c, "view", "active").await),
            Code::AlreadyExists
        );
        assert_eq!(
            code(remove(&mut c, "committed").await),
            Code::FailedPrecondition
        );
        assert_eq!(code(remove(&mut c, "nope").await), Code::NotFound);
        assert_eq!(
            code(mounts(&mut c, "committed").await),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(prepare(&mut c, "active", "").await),
            Code::AlreadyExists
        );
        assert_eq!(
            code(prepare(&mut c, "committed", "").await),
            Code::AlreadyExists
        );
        let long = "k".repeat(600);
        for bad in [
            "",
            "../../etc",
            "/abs",
            "a//b",
            "a/./b",
            "a/..",
            " pad",
            "nl\n",
            long.as_str(),
        ] {
            assert_eq!(
                code(prepare(&mut c, bad, "").await),
                Code::InvalidArgument,
                "{bad:?}"
            );
            if !bad.is_empty() {
                let on_bad_parent = prepare(&mut c, "ok-key", bad).await;
                assert_eq!(code(on_bad_parent), Code::InvalidArgument, "{bad:?}");
            }
            assert_eq!(
                code(stat(&mut c, bad).await),
                Code::InvalidArgument,
                "{bad:?}"
            );
        }
        let wrong = c
            .prepare(pb::PrepareSnapshotRequest {
                snapshotter: "btrfs".into(),
                key: "x".into(),
                ..Default::default()
            })
            .await;
        assert_eq!(code(wrong), Code::InvalidArgument);
        let no_info = c.update(pb::UpdateSnapshotRequest::default()).await;
        assert_eq!(code(no_info), Code::InvalidArgument);
        let bad_field = c
            .update(pb::UpdateSnapshotRequest {
                info: Some(pb::Info {
                    name: "active".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["parent".into()],
                }),
                ..Default::default()
            })
            .await;
        assert_eq!(code(bad_field), Code::InvalidArgument);
        let bad_filter = c
            .list(pb::ListSnapshotsRequest {
                filters: vec!["labels.\"x==1".into()],
                ..Default::default()
            })
            .await;
        assert_eq!(code(bad_filter), Code::InvalidArgument);
        let bad_label = c
            .prepare(pb::PrepareSnapshotRequest {
                key: "x".into(),
                labels: [(String::new(), "v".into())].into(),
                ..Default::default()
            })
            .await;
        assert_eq!(code(bad_label), Code::InvalidArgument);
        let mut bad_ns = connect(&berth, "default").await;
        let mut request = tonic::Request::new(pb::StatSnapshotRequest {
            key: "active".into(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("berth-namespace", "Bad_NS".parse().unwrap());
        assert_eq!(code(bad_ns.stat(request).await), Code::InvalidArgument);

        assert_eq!(names(&mut c, &[]).await, ["active", "committed", "view"]);
        assert_no_orphans(&overlay_root(&berth), 3);
    });
    berth.stop().unwrap();
}

#[test]
fn concurrent_prepare_of_one_key_exactly_one_wins() {
    let berth = Berth::start(Mode::AllInOne).unwrap();
    runtime().block_on(async {
        let c = connect(&berth, "default").await;
        for round in 0..3 {
            let key = format!("race-{round}");
            let calls: Vec<_> = (0..24)
                .map(|_| {
                    let mut c = c.clone();
                    let key = key.clone();
                    tokio::spawn(async move { prepare(&mut c, &key, "").await })
                })
                .collect();
            let mut ok = 0;
            for call in calls {
                match call.await.unwrap() {
                    Ok(_) => ok += 1,
                    Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status}"),
                }
            }
            assert_eq!(ok, 1, "exactly one Prepare of {key} wins");
        }
        assert_no_orphans(&overlay_root(&berth), 3);
    });
    berth.stop().unwrap();
}

#[test]
fn writes_in_an_active_snapshot_never_reach_its_parents() {
    let berth = Berth::start(Mode::AllInOne).unwrap();
    let scratch = scratch();
    runtime().block_on(async {
        let mut c = connect(&berth, "default").await;
        let mut base = LayerBuilder::new("base");
        base.file("etc/conf", 0o644, "base conf\n")
            .file("data/a", 0o600, "a")
            .dir("data/sub", 0o750)
            .file("data/sub/b", 0o644, "b")
            .symlink("link", "etc/conf");
        commit_layer(
            &mut c,
            scratch.path(),
            "base",
            "",
            &base.build().unwrap().tar,
        )
        .await;
        let mut mid = LayerBuilder::new("mid");
        mid.file("etc/mid", 0o644, "mid\n");
        commit_layer(
            &mut c,
            scratch.path(),
            "mid",
            "base",
            &mid.build().unwrap().tar,
        )
        .await;
        let base_before = with_view(&mut c, scratch.path(), "base", listing).await;
        let mid_before = with_view(&mut c, scratch.path(), "mid", listing).await;

        let m = prepare(&mut c, "rw", "mid").await.unwrap();
        let sibling = prepare(&mut c, "sibling", "mid").await.unwrap();
        {
            let rw = Mounted::temporary(&m, scratch.path()).unwrap();
            let p = rw.path();
            fs::write(p.join("etc/conf"), "changed\n").unwrap();
            fs::write(p.join("etc/mid"), "changed mid\n").unwrap();
            fs::remove_dir_all(p.join("data/sub")).unwrap();
            fs::set_permissions(p.join("data/a"), fs::Permissions::from_mode(0o4777)).unwrap();
            fs::rename(p.join("data/a"), p.join("moved-a")).unwrap();
            fs::remove_file(p.join("link")).unwrap();
            fs::write(p.join("new"), "new").unwrap();
            xattr::set(p.join("etc/mid"), "user.x", b"1").unwrap();
            let other = Mounted::temporary(&sibling, scratch.path()).unwrap();
            assert_eq!(
                listing(other.path()),
                mid_before,
                "a sibling sees none of it"
            );
        }
        assert_eq!(
            with_view(&mut c, scratch.path(), "base", listing).await,
            base_before
        );
        assert_eq!(
            with_view(&mut c, scratch.path(), "mid", listing).await,
            mid_before
        );
        // ... while the active snapshot keeps them across mounts.
        let again =
            Mounted::temporary(&mounts(&mut c, "rw").await.unwrap(), scratch.path()).unwrap();
        assert_eq!(
            fs::read_to_string(again.path().join("moved-a")).unwrap(),
            "a"
        );
        assert!(!again.path().join("data/a").exists());
        drop(again);
        for key in ["rw", "sibling", "mid", "base"] {
            remove(&mut c, key).await.unwrap();
        }
        assert_no_orphans(&overlay_root(&berth), 0);
    });
    berth.stop().unwrap();
}

/// Unpacks the `layered` fixture into a chain with the layer library, checking each diff id,
/// and checks the merged tree through a mounted view (whiteouts and the opaque directory
/// included). `through_mount` applies through a mounted overlay instead of into the upper.
async fn unpack_layered(
    c: &mut Client,
    scratch: &Path,
    prefix: &str,
    through_mount: bool,
) -> String {
    let mut parent = String::new();
    for (i, l) in images::layered_layers().unwrap().iter().enumerate() {
        let name = format!("{prefix}-{i}");
        let key = format!("{name}-extract");
        let m = prepare(c, &key, &parent).await.unwrap();
        let applied = if through_mount {
            let mounted = Mounted::temporary(&m, scratch).unwrap();
            layer::apply(
                mounted.path(),
                l.tar.as_slice(),
                &layer::ApplyOptions::default(),
            )
            .unwrap()
        } else {
            layer::apply_to_mounts(&m, l.tar.as_slice(), scratch).unwrap()
        };
        assert_eq!(applied.diff_id, l.diff_id, "layer {i}");
        commit(c, &name, &key).await.unwrap();
        parent = name;
    }
    with_view(c, scratch, &parent, |root| {
        images::check_layered_rootfs(root).unwrap()
    })
    .await;
    parent
}

#[test]
fn layered_image_whiteouts_and_opaque_dirs_hold_in_the_mounted_view() {
    let berth = Berth::start(Mode::AllInOne).unwrap();
    let scratch = scratch();
    runtime().block_on(async {
        let mut c = connect(&berth, "default").await;
        let top = unpack_layered(&mut c, scratch.path(), "upper", false).await;
        unpack_layered(&mut c, scratch.path(), "merged", true).await;
        // Overlay form on disk: layer 3 holds a whiteout device and an opaque directory.
        let m = prepare(&mut c, "probe", &top).await.unwrap();
        let layer3 = m[0].lowerdirs()[0].clone();
        let wh = fs::symlink_metadata(layer3.join("etc/to-delete")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert_eq!(
            xattr::get(layer3.join("opt/opaque"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
        // Usage of the whole image is cached on its layers.
        assert!(usage(&mut c, "upper-0").await.1 > 50);
    });
    berth.stop().unwrap();
}

#[test]
fn a_chain_of_130_layers_mounts_and_reads_right() {
    const DEPTH: usize = 130;
    let berth = Berth::start(Mode::AllInOne).unwrap();
    let scratch = scratch();
    runtime().block_on(async {
        let mut c = connect(&berth, "default").await;
        let mut parent = String::new();
        for i in 0..DEPTH {
            let mut l = LayerBuilder::new("chain");
            l.file("top", 0o644, format!("{i}")).file(
                &format!("layers/{i:03}"),
                0o644,
                format!("{i}"),
            );
            if i % 10 == 5 {
                l.whiteout(&format!("layers/{:03}", i - 1));
            }
            if i == 64 {
                l.opaque("layers").file("layers/opaque", 0o644, "64");
            }
            let name = format!("chain-{i:03}");
            commit_layer(
                &mut c,
                scratch.path(),
                &name,
                &parent,
                &l.build().unwrap().tar,
            )
            .await;
            parent = name;
        }
        let m = prepare(&mut c, "top", &parent).await.unwrap();
        assert_eq!(m[0].lowerdirs().len(), DEPTH);
        // Far beyond what one mount(2) option page can carry.
        assert!(m[0].option("lowerdir").unwrap().len() > 4096);
        let check = |root: &Path| {
            assert_eq!(
                fs::read_to_string(root.join("top")).unwrap(),
                format!("{}", DEPTH - 1)
            );
            let mut present: Vec<String> = fs::read_dir(root.join("layers"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            present.sort();
            let mut want: Vec<String> = (64..DEPTH)
                .filter(|i| i % 10 != 4)
                .map(|i| format!("{i:03}"))
                .collect();
            want.push("opaque".into());
            want.sort();
            assert_eq!(
                present, want,
                "opaque at 64 hides 0..64; every x4 above is whited out"
            );
        };
        {
            let mounted = Mounted::temporary(&m, scratch.path()).unwrap();
            check(mounted.path());
            fs::write(mounted.path().join("written"), "w").unwrap();
        }
        with_view(&mut c, scratch.path(), &parent, check).await;
        let again =
            Mounted::temporary(&mounts(&mut c, "top").await.unwrap(), scratch.path()).unwrap();
        assert_eq!(
            fs::read_to_string(again.path().join("written")).unwrap(),
            "w"
        );
    });
    berth.stop().unwrap();
}

fn du(path: &Path, args: &[&str]) -> i64 {
    let out = Command::new("du").args(args).arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn usage_matches_du() {
    let berth = Berth::start(Mode::AllInOne).unwrap();
    let scratch = scratch();
    runtime().block_on(async {
        let mut c = connect(&berth, "default").await;
        let mut base = LayerBuilder::new("base");
        base.file("lower", 0o644, vec![3u8; 50_000])
            .file("gone", 0o644, "x");
        commit_layer(
            &mut c,
            scratch.path(),
            "base",
            "",
            &base.build().unwrap().tar,
        )
        .await;
        let m = prepare(&mut c, "u", "base").await.unwrap();
        {
            let mounted = Mounted::temporary(&m, scratch.path()).unwrap();
            let p = mounted.path();
            fs::create_dir_all(p.join("a/b/c")).unwrap();
            for (i, size) in [0usize, 1, 4095, 4097, 123_456, 1_000_000]
                .iter()
                .enumerate()
            {
                fs::write(p.join(format!("a/f{i}")), vec![7u8; *size]).unwrap();
            }
            fs::hard_link(p.join("a/f5"), p.join("a/b/hard")).unwrap();
            std::os::unix::fs::symlink("f1", p.join("a/sym")).unwrap();
            let sparse = fs::File::create(p.join("sparse")).unwrap();
            sparse.set_len(10_000_000).unwrap();
            fs::remove_file(p.join("gone")).unwrap();
            fs::write(p.join("lower"), "copied up and shrunk").unwrap();
        }
        let upper = m[0].upperdir().unwrap();
        let want = (
            du(&upper, &["-s", "--block-size=1"]),
            du(&upper, &["-s", "--inodes"]),
        );
        assert_eq!(usage(&mut c, "u").await, want);
        commit(&mut c, "uc", "u").await.unwrap();
        assert_eq!(usage(&mut c, "uc").await, want, "cached at commit");
        let base_fs = prepare(&mut c, "on-base", "base").await.unwrap()[0].lowerdirs()[0].clone();
        let want = (
            du(&base_fs, &["-s", "--block-size=1"]),
            du(&base_fs, &["-s", "--inodes"]),
        );
        assert_eq!(usage(&mut c, "base").await, want);
    });
    berth.stop().unwrap();
}

#[test]
fn apply_of_compare_onto_the_parent_reproduces_the_snapshot() {
    let berth = Berth::start(Mode::AllInOne).unwrap();
    let scratch = scratch();
    runtime().block_on(async {
        let mut c = connect(&berth, "default").await;
        let image = unpack_layered(&mut c, scratch.path(), "img", false).await;
        let m = prepare(&mut c, "changed", &image).await.unwrap();
        {
            let mounted = Mounted::temporary(&m, scratch.path()).unwrap();
            let p = mounted.path();
            fs::remove_file(p.join("etc/passwd")).unwrap();
            fs::remove_dir_all(p.join("usr/sbin")).unwrap();
            // Opaque: every entry of /opt goes, new ones come.
            for e in fs::read_dir(p.join("opt")).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() && !path.is_symlink() {
                    fs::remove_dir_all(path).unwrap();
                } else {
                    fs::remove_file(path).unwrap();
                }
            }
            fs::write(p.join("opt/fresh"), "fresh").unwrap();
            fs::write(p.join("etc/motd"), "rewritten\n").unwrap();
            fs::set_permissions(p.join("etc/motd"), fs::Permissions::from_mode(0o640)).unwrap();
            fs::create_dir(p.join("srv")).unwrap();
            fs::write(p.join("srv/data"), vec![5u8; 70_000]).unwrap();
            fs::hard_link(p.join("srv/data"), p.join("srv/data2")).unwrap();
            fs::hard_link(p.join("bin/busybox"), p.join("srv/busybox")).unwrap();
            std::os::unix::fs::symlink("../srv/data", p.join("etc/rel")).unwrap();
            xattr::set(p.join("srv/data"), "user.k", b"v").unwrap();
            rustix_chown(&p.join("srv/data"), 1234, 5678);
        }
        let file = scratch.path().join("diff.tar");
        let out = berth
            .run_ctl(&[
                "snapshot",
                "diff",
                "changed",
                "--file",
                file.to_str().unwrap(),
            ])
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tar = fs::read(&file).unwrap();
        let entries: Vec<String> = tar::Archive::new(tar.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(
            entries.contains(&"opt/.wh..wh..opq".to_owned()),
            "{entries:?}"
        );
        assert!(
            entries.contains(&"etc/.wh.passwd".to_owned()),
            "{entries:?}"
        );
        assert!(entries.contains(&"usr/.wh.sbin".to_owned()), "{entries:?}");

        let diff_id = commit_layer(&mut c, scratch.path(), "replayed", &image, &tar).await;
        assert_eq!(
            diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
        let want = Mounted::temporary(
            &berth_snapshots::mount::read_only(&mounts(&mut c, "changed").await.unwrap()),
            scratch.path(),
        )
        .unwrap();
        with_view(&mut c, scratch.path(), "replayed", |got| {
            assert_same_tree(want.path(), got)
        })
        .await;
    });
    berth.stop().unwrap();
}

fn rustix_chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

/// A tar entry with a raw name, link and type, as a hostile archive writes it.
fn raw(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// One raw tar entry: type, name, link name, data.
type RawEntry<'a> = (tar::EntryType, String, String, &'a [u8]);

/// Archives that try to create, overwrite or delete `outside` (an absolute path); the
/// `lower-*` cases go through `lower-esc`, a symlink to `outside` in the layer below.
fn hostile_corpus(outside: &str) -> Vec<(String, Vec<u8>)> {
    use tar::EntryType::{Directory, Fifo, Link, Regular, Symlink};
    let up = "../".repeat(10);
    let rel = outside.trim_start_matches('/');
    let cases: Vec<(&str, Vec<RawEntry>)> = vec![
        (
            "dotdot",
            vec![(Regular, format!("{up}{rel}/pwned"), String::new(), b"x")],
        ),
        (
            "absolute",
            vec![(Regular, format!("{outside}/pwned"), String::new(), b"x")],
        ),
        (
            "symlink-dir-absolute",
            vec![
                (Symlink, "esc".into(), outside.into(), b""),
                (Regular, "esc/pwned".into(), String::new(), b"x"),
            ],
        ),
        (
            "symlink-dir-relative",
            vec![
                (Symlink, "esc".into(), format!("{up}{rel}"), b""),
                (Regular, "esc/pwned".into(), String::new(), b"x"),
            ],
        ),
        (
            "symlink-then-overwrite",
            vec![
                (Symlink, "victim".into(), format!("{outside}/keep"), b""),
                (Regular, "victim".into(), String::new(), b"overwritten"),
            ],
        ),
        (
            "hardlink-absolute",
            vec![(Link, "hl".into(), format!("{outside}/keep"), b"")],
        ),
        (
            "hardlink-dotdot",
            vec![(Link, "hl".into(), format!("{up}{rel}/keep"), b"")],
        ),
        (
            "hardlink-via-symlink",
            vec![
                (Symlink, "esc".into(), outside.into(), b""),
                (Link, "hl".into(), "esc/keep".into(), b""),
                (Regular, "hl".into(), String::new(), b"overwritten"),
            ],
        ),
        (
            "whiteout-dotdot",
            vec![(Regular, "a/.wh...".into(), String::new(), b"")],
        ),
        (
            "whiteout-via-symlink",
            vec![
                (Symlink, "esc".into(), outside.into(), b""),
                (Regular, "esc/.wh.keep".into(), String::new(), b""),
            ],
        ),
        (
            "whiteout-escaping",
            vec![(Regular, format!("{up}{rel}/.wh.keep"), String::new(), b"")],
        ),
        (
            "opaque-via-symlink",
            vec![
                (Symlink, "esc".into(), outside.into(), b""),
                (Regular, "esc/.wh..wh..opq".into(), String::new(), b""),
            ],
        ),
        (
            "dir-replacing-symlink",
            vec![
                (Symlink, "d".into(), outside.into(), b""),
                (Directory, "d".into(), String::new(), b""),
                (Regular, "d/pwned".into(), String::new(), b"x"),
            ],
        ),
        (
            "fifo-via-symlink",
            vec![
                (Symlink, "esc".into(), outside.into(), b""),
                (Fifo, "esc/fifo".into(), String::new(), b""),
            ],
        ),
        (
            "lower-symlink-parent",
            vec![(Regular, "lower-esc/pwned".into(), String::new(), b"x")],
        ),
        (
            "lower-symlink-hardlink",
            vec![
                (Link, "hl".into(), "lower-esc/keep".into(), b""),
                (Regular, "hl".into(), String::new(), b"overwritten"),
            ],
        ),
        (
            "lower-symlink-whiteout",
            vec![(Regular, "lower-esc/.wh.keep".into(), String::new(), b"")],
        ),
        (
            "lower-symlink-opaque",
            vec![(Regular, "lower-esc/.wh..wh..opq".into(), String::new(), b"")],
        ),
    ];
    cases
        .into_iter()
        .map(|(name, entries)| {
            let mut b = tar::Builder::new(Vec::new());
            for (kind, path, link, data) in entries {
                raw(&mut b, kind, &path, &link, data);
            }
            (name.to_owned(), b.into_inner().unwrap())
        })
        .collect()
}

#[test]
fn hostile_layers_never_touch_anything_outside_the_snapshot() {
    let berth = Berth::start(Mode::AllInOne).unwrap();
    let scratch = scratch();
    let outside = scratch.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), "keep").unwrap();
    runtime().block_on(async {
        let mut c = connect(&berth, "default").await;
        let mut base = LayerBuilder::new("base");
        base.file("keep", 0o644, "base")
            .dir("a", 0o755)
            .symlink("lower-esc", outside.to_str().unwrap());
        commit_layer(
            &mut c,
            scratch.path(),
            "base",
            "",
            &base.build().unwrap().tar,
        )
        .await;
        let base_before = with_view(&mut c, scratch.path(), "base", listing).await;
        let outside_before = listing(&outside);
        for (name, tar) in hostile_corpus(outside.to_str().unwrap()) {
            for through_mount in [false, true] {
                let m = prepare(&mut c, "victim", "base").await.unwrap();
                let result = if through_mount {
                    let mounted = Mounted::temporary(&m, scratch.path()).unwrap();
                    layer::apply(
                        mounted.path(),
                        tar.as_slice(),
                        &layer::ApplyOptions::default(),
                    )
                } else {
                    layer::apply_to_mounts(&m, tar.as_slice(), scratch.path())
                };
                if let Err(e) = result {
                    assert_eq!(
                        e.kind(),
                        berth_snapshots::ErrorKind::InvalidArgument,
                        "{name}: {e}"
                    );
                }
                assert_eq!(listing(&outside), outside_before, "{name} reached outside");
                assert_eq!(fs::read_to_string(outside.join("keep")).unwrap(), "keep");
                remove(&mut c, "victim").await.unwrap();
            }
        }
        assert_eq!(
            with_view(&mut c, scratch.path(), "base", listing).await,
            base_before
        );
        assert_no_orphans(&overlay_root(&berth), 1);
    });
    berth.stop().unwrap();
}

/// Kills the snapshots service with SIGKILL and waits until it is gone.
fn kill_snapshots(berth: &Berth) {
    let pid = snapshots_pid(berth).expect("snapshots is running");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_gone(pid);
}

fn snapshots_pid(berth: &Berth) -> Option<u32> {
    berth
        .pids()
        .unwrap()
        .into_iter()
        .find(|(name, _)| name == "snapshots")
        .and_then(|(_, pid)| pid)
}

fn wait_gone(pid: u32) {
    berth_tests::harness::wait_exited(pid, Duration::from_secs(10)).unwrap();
}

/// Starts the snapshots service again, with `failpoint` armed if given.
fn restart(berth: &Berth, failpoint: Option<&str>) {
    let options = Options {
        env: failpoint
            .map(|p| vec![(berth_snapshots::FAILPOINT_ENV.to_owned(), p.to_owned())])
            .unwrap_or_default(),
        ..Default::default()
    };
    let out = berth.up(&options).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A layer of `files` small files.
fn many_files(files: usize) -> Vec<u8> {
    let mut l = LayerBuilder::new("many");
    for i in 0..files {
        l.file(&format!("d{}/f{i}", i % 16), 0o644, format!("file {i}\n"));
    }
    l.build().unwrap().tar
}

fn count_files(root: &Path) -> usize {
    (0..16)
        .map(|d| {
            fs::read_dir(root.join(format!("d{d}")))
                .map(|r| r.count())
                .unwrap_or(0)
        })
        .sum()
}

/// Deterministic spread of delays (microseconds) for the random-point kills.
fn delays(n: usize, max_us: u64) -> impl Iterator<Item = Duration> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Duration::from_micros(x % max_us)
    })
}

/// Where a Commit of `key` as `name` stands: false = not done, true = done; panics on anything
/// in between.
async fn commit_state(c: &mut Client, scratch: &Path, key: &str, name: &str, files: usize) -> bool {
    let active = stat(c, key).await;
    let committed = stat(c, name).await;
    let done = match (&active, &committed) {
        (Ok(a), Err(e)) if e.code() == Code::NotFound => {
            assert_eq!(a.kind, pb::Kind::Active as i32);
            let m = mounts(c, key).await.unwrap();
            let mounted = Mounted::temporary(&m, scratch).unwrap();
            assert_eq!(count_files(mounted.path()), files, "active {key} intact");
            false
        }
        (Err(e), Ok(n)) if e.code() == Code::NotFound => {
            assert_eq!(n.kind, pb::Kind::Committed as i32);
            assert_eq!(n.parent, "base");
            let count = with_view(c, scratch, name, count_files).await;
            assert_eq!(count, files, "committed {name} intact");
            true
        }
        other => panic!("half-committed: {key}: {other:?}"),
    };
    assert_eq!(names(c, &["kind==view"]).await, Vec::<String>::new());
    done
}

#[test]
fn kill_9_during_commit_leaves_it_done_or_not_done() {
    const FILES: usize = 100;
    let berth = Berth::start(Mode::Separate).unwrap();
    let scratch = scratch();
    let root = overlay_root(&berth);
    let rt = runtime();
    let layer = many_files(FILES);
    // How long one Commit takes here: the kills below land anywhere in it.
    let took = rt.block_on(async {
        let mut c = connect(&berth, "default").await;
        prepare(&mut c, "base-key", "").await.unwrap();
        commit(&mut c, "base", "base-key").await.unwrap();
        let m = prepare(&mut c, "timed", "base").await.unwrap();
        layer::apply_to_mounts(&m, layer.as_slice(), scratch.path()).unwrap();
        let t = Instant::now();
        commit(&mut c, "timed-done", "timed").await.unwrap();
        t.elapsed()
    });
    let mut outcomes = [0, 0];
    // Chosen points, then random ones.
    let points = ["commit:before-commit", "commit:after-commit"];
    let plan: Vec<(Option<&str>, Duration)> = points
        .iter()
        .flat_map(|p| [(Some(*p), Duration::ZERO); 2])
        .chain(delays(20, took.as_micros() as u64 + 1).map(|d| (None, d)))
        .collect();
    for (round, (failpoint, delay)) in plan.into_iter().enumerate() {
        // base and timed-done, then one per earlier round.
        let records = 2 + round;
        let (key, name) = (format!("k{round}"), format!("n{round}"));
        rt.block_on(async {
            let mut c = connect(&berth, "default").await;
            let m = prepare(&mut c, &key, "base").await.unwrap();
            layer::apply_to_mounts(&m, layer.as_slice(), scratch.path()).unwrap();
        });
        let mut pid = snapshots_pid(&berth).unwrap();
        if let Some(point) = failpoint {
            kill_snapshots(&berth);
            restart(&berth, Some(point));
            pid = snapshots_pid(&berth).unwrap();
        }
        let result = rt.block_on(async {
            let mut c = connect(&berth, "default").await;
            let call = tokio::spawn(async move { commit(&mut c, &name, &key).await });
            if failpoint.is_none() {
                // A precise sleep (tokio timers tick in milliseconds); the call runs on the
                // other worker thread meanwhile.
                std::thread::sleep(delay);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            call.await.unwrap()
        });
        if failpoint.is_some() {
            assert!(result.is_err(), "the failpoint must kill the service");
        }
        wait_gone(pid);
        restart(&berth, None);
        // Start-up repaired everything: nothing for Cleanup to do.
        assert_no_orphans(&root, records + 1);
        let (key, name) = (format!("k{round}"), format!("n{round}"));
        let done = rt.block_on(async {
            let mut c = connect(&berth, "default").await;
            let done = commit_state(&mut c, scratch.path(), &key, &name, FILES).await;
            if result.is_ok() {
                assert!(done, "Commit answered OK, so it must be durable");
            }
            assert_eq!(cleanup(&mut c).await, 0);
            done
        });
        match failpoint {
            Some("commit:before-commit") => assert!(!done),
            Some(_) => assert!(done),
            None => {}
        }
        outcomes[done as usize] += 1;
    }
    eprintln!(
        "commit kills: {} left undone, {} done",
        outcomes[0], outcomes[1]
    );
    berth.stop().unwrap();
}

#[test]
fn kill_9_during_remove_leaves_it_done_or_not_done() {
    const FILES: usize = 300;
    let berth = Berth::start(Mode::Separate).unwrap();
    let scratch = scratch();
    let root = overlay_root(&berth);
    let rt = runtime();
    let layer = many_files(FILES);
    // How long one Remove takes here, and the part of it up to its commit (the Remove of an
    // empty snapshot): the kills below land anywhere in both.
    let (took, until_commit) = rt.block_on(async {
        let mut c = connect(&berth, "default").await;
        prepare(&mut c, "base-key", "").await.unwrap();
        commit(&mut c, "base", "base-key").await.unwrap();
        commit_layer(&mut c, scratch.path(), "timed", "base", &layer).await;
        prepare(&mut c, "empty", "").await.unwrap();
        let t = Instant::now();
        remove(&mut c, "timed").await.unwrap();
        let took = t.elapsed();
        let t = Instant::now();
        remove(&mut c, "empty").await.unwrap();
        (took, t.elapsed())
    });
    let points = [
        "remove:before-commit",
        "remove:after-commit",
        "remove:after-rename",
        "remove:mid-delete",
    ];
    let plan: Vec<(Option<&str>, Duration)> = points
        .iter()
        .map(|p| (Some(*p), Duration::ZERO))
        .chain(delays(10, until_commit.as_micros() as u64 + 1).map(|d| (None, d)))
        .chain(delays(10, took.as_micros() as u64 + 1).map(|d| (None, d)))
        .collect();
    let mut outcomes = [0, 0];
    for (round, (failpoint, delay)) in plan.into_iter().enumerate() {
        let name = format!("victim{round}");
        rt.block_on(async {
            let mut c = connect(&berth, "default").await;
            commit_layer(&mut c, scratch.path(), &name, "base", &layer).await;
        });
        let mut pid = snapshots_pid(&berth).unwrap();
        if let Some(point) = failpoint {
            kill_snapshots(&berth);
            restart(&berth, Some(point));
            pid = snapshots_pid(&berth).unwrap();
        }
        let victim = name.clone();
        let result = rt.block_on(async {
            let mut c = connect(&berth, "default").await;
            let call = tokio::spawn(async move { remove(&mut c, &victim).await });
            if failpoint.is_none() {
                // A precise sleep (tokio timers tick in milliseconds); the call runs on the
                // other worker thread meanwhile.
                std::thread::sleep(delay);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            call.await.unwrap()
        });
        if failpoint.is_some() {
            assert!(result.is_err(), "the failpoint must kill the service");
        }
        wait_gone(pid);
        restart(&berth, None);
        let removed = rt.block_on(async {
            let mut c = connect(&berth, "default").await;
            let removed = match stat(&mut c, &name).await {
                Ok(info) => {
                    assert_eq!(info.kind, pb::Kind::Committed as i32);
                    let count = with_view(&mut c, scratch.path(), &name, count_files).await;
                    assert_eq!(count, FILES, "{name} is either gone or whole");
                    false
                }
                Err(e) => {
                    assert_eq!(e.code(), Code::NotFound);
                    true
                }
            };
            if result.is_ok() {
                assert!(removed, "Remove answered OK, so it must be durable");
            }
            let records = list(&mut c, &[]).await.len();
            assert_no_orphans(&root, records);
            assert_eq!(cleanup(&mut c).await, 0);
            if !removed {
                remove(&mut c, &name).await.unwrap();
            }
            removed
        });
        match failpoint {
            Some("remove:before-commit") => assert!(!removed),
            Some(_) => assert!(removed),
            None => {}
        }
        outcomes[removed as usize] += 1;
    }
    eprintln!(
        "remove kills: {} left undone, {} done",
        outcomes[0], outcomes[1]
    );
    berth.stop().unwrap();
}

#[test]
fn copy_driver_serves_the_same_model_without_overlay() {
    let berth = Berth::start_with(
        Mode::AllInOne,
        Options {
            config: Some("[snapshots]\ndriver = \"copy\"\n".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let scratch = scratch();
    runtime().block_on(async {
        let mut c = connect(&berth, "default").await;
        let top = unpack_layered(&mut c, scratch.path(), "img", false).await;
        let m = prepare(&mut c, "rw", &top).await.unwrap();
        assert_eq!(
            (m[0].fs_type.as_str(), m[0].is_read_only()),
            ("bind", false)
        );
        {
            let mounted = Mounted::temporary(&m, scratch.path()).unwrap();
            images::check_layered_rootfs(mounted.path()).unwrap();
            fs::write(mounted.path().join("etc/motd"), "mine").unwrap();
        }
        with_view(&mut c, scratch.path(), &top, |root| {
            images::check_layered_rootfs(root).unwrap()
        })
        .await;
        let overlay = c
            .stat(pb::StatSnapshotRequest {
                snapshotter: "overlay".into(),
                key: "rw".into(),
            })
            .await;
        assert_eq!(code(overlay), Code::InvalidArgument);
        assert_eq!(code(remove(&mut c, &top).await), Code::FailedPrecondition);
        remove(&mut c, "rw").await.unwrap();
        let root = berth.root().join("snapshots/copy");
        assert_no_orphans(&root, 3);
    });
    berth.stop().unwrap();
}

#[test]
fn namespaces_keep_keys_apart_and_volatile_is_a_label() {
    let berth = Berth::start(Mode::AllInOne).unwrap();
    let scratch = scratch();
    runtime().block_on(async {
        let mut a = connect(&berth, "team-a").await;
        let mut b = connect(&berth, "team-b").await;
        prepare(&mut a, "same", "").await.unwrap();
        commit(&mut a, "base", "same").await.unwrap();
        prepare(&mut b, "same", "").await.unwrap();
        assert_eq!(code(prepare(&mut b, "x", "base").await), Code::NotFound);
        assert_eq!(names(&mut a, &[]).await, ["base"]);
        assert_eq!(names(&mut b, &[]).await, ["same"]);
        let out = berth.run_ctl(&["-n", "team-b", "snapshot", "ls"]).unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("same"));

        let r = a
            .prepare(pb::PrepareSnapshotRequest {
                key: "scratchy".into(),
                parent: "base".into(),
                labels: [("berth.io/snapshot/volatile".to_owned(), "true".to_owned())].into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let m = mounts_of(r.into_inner().mounts);
        assert!(m[0].has_flag("volatile"), "{m:?}");
        let mounted = Mounted::temporary(&m, scratch.path()).unwrap();
        fs::write(mounted.path().join("f"), "x").unwrap();
        drop(mounted);
        let info = stat(&mut a, "scratchy").await.unwrap();
        assert_eq!(info.labels["berth.io/snapshot/volatile"], "true");
    });
    berth.stop().unwrap();
}

#[test]
fn bad_snapshots_config_names_the_key() {
    let dir = tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("config.toml");
    fs::write(&config, "[snapshots]\ndriver = \"zfs\"\n").unwrap();
    let out = Command::new(berth_tests::harness::bin("berthd"))
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("snapshots.driver") && err.contains("zfs"),
        "{err}"
    );
    assert!(!dir.path().join("root").exists());
}

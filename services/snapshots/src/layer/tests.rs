//! Tests of the layer library on real directories and real overlay mounts.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::*;
use crate::fsutil;
use crate::mount::{Mount, Mounted};

/// Everything about a tree that a layer round trip must keep, one line per path.
pub(crate) fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for path in names {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&path).unwrap();
            let t = m.file_type();
            let mut line = format!(
                "mode={:o} uid={} gid={} mtime={}.{:09}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec()
            );
            if t.is_file() {
                let data = fs::read(&path).unwrap();
                line += &format!(
                    " size={} sha={}",
                    data.len(),
                    hex::encode(Sha256::digest(&data))
                );
                if m.nlink() > 1 {
                    let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                    line += &format!(" link={first}");
                }
            } else if t.is_symlink() {
                line += &format!(" -> {}", fs::read_link(&path).unwrap().display());
            } else if t.is_char_device() || t.is_block_device() {
                line += &format!(" rdev={}", m.rdev());
            } else if t.is_dir() {
                stack.push(path.clone());
            }
            let parent = fsutil::open_dir(path.parent().unwrap()).unwrap();
            let xattrs = fsutil::xattrs_at(parent.as_fd(), path.file_name().unwrap()).unwrap();
            for (k, v) in xattrs {
                line += &format!(" {k}={}", String::from_utf8_lossy(&v));
            }
            out.insert(rel, line);
        }
    }
    out
}

fn assert_same_tree(want: &Path, got: &Path) {
    let (a, b) = (listing(want), listing(got));
    let mut diffs = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => diffs.push(format!("missing {k}: {v}")),
            Some(w) if w != v => diffs.push(format!("differs {k}:\n   want {v}\n    got {w}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(format!("extra {k}: {}", b[k]));
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
}

/// A tar entry written with raw names, as a hostile archive would be.
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &str,
    link: &str,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    if !link.is_empty() {
        h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn tar_of(entries: &[(tar::EntryType, &str, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (kind, name, link, data) in entries {
        raw_entry(&mut b, *kind, name, link, data);
    }
    b.into_inner().unwrap()
}

use tar::EntryType as T;

/// The hostile archives: each tries to create, overwrite or delete something outside.
pub(crate) fn hostile_corpus() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "dotdot",
            tar_of(&[(T::Regular, "../outside/pwned", "", b"x")]),
        ),
        (
            "deep-dotdot",
            tar_of(&[(T::Regular, "a/b/../../../outside/pwned", "", b"x")]),
        ),
        (
            "absolute",
            tar_of(&[(T::Regular, "/outside/pwned", "", b"x")]),
        ),
        (
            "symlink-parent-absolute",
            tar_of(&[
                (T::Symlink, "escape", "/outside", b""),
                (T::Regular, "escape/pwned", "", b"x"),
            ]),
        ),
        (
            "symlink-parent-relative",
            tar_of(&[
                (T::Symlink, "escape", "../../../../../../../outside", b""),
                (T::Regular, "escape/pwned", "", b"x"),
            ]),
        ),
        (
            "symlink-chain",
            tar_of(&[
                (T::Symlink, "a", "b", b""),
                (T::Symlink, "b", "/../../outside", b""),
                (T::Directory, "a/sub", "", b""),
                (T::Regular, "a/sub/pwned", "", b"x"),
            ]),
        ),
        (
            "symlink-then-file-same-name",
            tar_of(&[
                (T::Symlink, "victim", "/outside/keep", b""),
                (T::Regular, "victim", "", b"overwritten?"),
            ]),
        ),
        (
            "hardlink-absolute",
            tar_of(&[(T::Link, "stolen", "/outside/keep", b"")]),
        ),
        (
            "hardlink-dotdot",
            tar_of(&[(T::Link, "stolen", "../outside/keep", b"")]),
        ),
        (
            "hardlink-through-symlink",
            tar_of(&[
                (T::Symlink, "escape", "/outside", b""),
                (T::Link, "stolen", "escape/keep", b""),
                (T::Regular, "stolen", "", b"overwritten?"),
            ]),
        ),
        (
            "hardlink-to-symlink-then-write",
            tar_of(&[
                (T::Symlink, "sym", "/outside/keep", b""),
                (T::Link, "hl", "sym", b""),
                (T::Regular, "hl", "", b"overwritten?"),
            ]),
        ),
        (
            "whiteout-dotdot",
            tar_of(&[(T::Regular, "a/.wh...", "", b"")]),
        ),
        (
            "whiteout-through-symlink",
            tar_of(&[
                (T::Symlink, "escape", "/outside", b""),
                (T::Regular, "escape/.wh.keep", "", b""),
            ]),
        ),
        (
            "whiteout-parent-dotdot",
            tar_of(&[(T::Regular, "../outside/.wh.keep", "", b"")]),
        ),
        (
            "opaque-through-symlink",
            tar_of(&[
                (T::Symlink, "escape", "/outside", b""),
                (T::Regular, "escape/.wh..wh..opq", "", b""),
            ]),
        ),
        (
            "dir-over-symlink",
            tar_of(&[
                (T::Symlink, "d", "/outside", b""),
                (T::Directory, "d", "", b""),
                (T::Regular, "d/pwned", "", b"x"),
            ]),
        ),
        (
            "device-through-symlink",
            tar_of(&[
                (T::Symlink, "escape", "/outside", b""),
                (T::Fifo, "escape/fifo", "", b""),
            ]),
        ),
    ]
}

/// Applies every hostile archive (in both whiteout modes) into a target beside a directory
/// `outside` holding `keep`, and checks nothing outside the target changed.
#[test]
fn hostile_archives_stay_inside_the_target() {
    for mode in [Whiteouts::Delete, Whiteouts::Overlay] {
        for (name, tar) in hostile_corpus() {
            let dir = tempfile::tempdir().unwrap();
            let outside = dir.path().join("outside");
            let target = dir.path().join("target");
            fs::create_dir_all(&outside).unwrap();
            fs::create_dir_all(&target).unwrap();
            fs::write(outside.join("keep"), "keep").unwrap();
            let before = listing(dir.path());
            let options = ApplyOptions {
                whiteouts: mode,
                parents: Vec::new(),
            };
            let result = apply(&target, tar.as_slice(), &options);
            let after: BTreeMap<_, _> = listing(dir.path())
                .into_iter()
                .filter(|(k, _)| !k.starts_with("target"))
                .collect();
            let before: BTreeMap<_, _> = before
                .into_iter()
                .filter(|(k, _)| !k.starts_with("target"))
                .collect();
            assert_eq!(before, after, "{name} ({mode:?}) changed something outside");
            assert_eq!(fs::read_to_string(outside.join("keep")).unwrap(), "keep");
            if let Err(e) = &result {
                assert!(
                    matches!(e.kind(), crate::ErrorKind::InvalidArgument),
                    "{name}: {e}"
                );
            }
        }
    }
}

#[test]
fn dotdot_is_refused_and_absolute_lands_inside() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = hostile_corpus();
    let tar = |n: &str| {
        corpus
            .iter()
            .find(|(name, _)| *name == n)
            .unwrap()
            .1
            .clone()
    };
    let err = apply(
        dir.path(),
        tar("dotdot").as_slice(),
        &ApplyOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains(".."), "{err}");
    apply(
        dir.path(),
        tar("absolute").as_slice(),
        &ApplyOptions::default(),
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(dir.path().join("outside/pwned")).unwrap(),
        "x"
    );
    let inner = tempfile::tempdir().unwrap();
    fs::create_dir(inner.path().join("outside")).unwrap();
    apply(
        inner.path(),
        tar("symlink-parent-absolute").as_slice(),
        &ApplyOptions::default(),
    )
    .unwrap();
    // The symlink resolved inside the target: the file is at <target>/outside/pwned.
    assert_eq!(
        fs::read_to_string(inner.path().join("outside/pwned")).unwrap(),
        "x"
    );
}

#[test]
fn diff_id_covers_the_whole_stream() {
    let mut tar = tar_of(&[(T::Regular, "a", "", b"hello")]);
    tar.extend_from_slice(&[0u8; 4096]); // extra padding after the end-of-archive marker
    let dir = tempfile::tempdir().unwrap();
    let applied = apply(dir.path(), tar.as_slice(), &ApplyOptions::default()).unwrap();
    assert_eq!(
        applied.diff_id,
        format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
    );
    assert_eq!(applied.size, tar.len() as u64);
}

#[test]
fn truncated_and_garbage_archives_are_invalid() {
    let tar = tar_of(&[(T::Regular, "a", "", &[7u8; 5000])]);
    let dir = tempfile::tempdir().unwrap();
    let err = apply(dir.path(), &tar[..1500], &ApplyOptions::default()).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
    let err = apply(dir.path(), &[1u8; 2048][..], &ApplyOptions::default()).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
}

/// A lower tree with a bit of everything.
fn make_lower(root: &Path) {
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::create_dir_all(root.join("opt/opaque/sub")).unwrap();
    fs::create_dir_all(root.join("opt/gone/deep")).unwrap();
    fs::create_dir_all(root.join("var/tmp")).unwrap();
    fs::set_permissions(root.join("var/tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(root.join("etc/motd"), "hello\n").unwrap();
    fs::write(root.join("etc/conf.d/a"), "a\n").unwrap();
    fs::write(root.join("etc/to-delete"), "bye\n").unwrap();
    fs::write(root.join("opt/opaque/lower-a"), "la").unwrap();
    fs::write(root.join("opt/opaque/sub/lower-c"), "lc").unwrap();
    fs::write(root.join("opt/gone/deep/f"), "f").unwrap();
    fs::write(root.join("opt/becomes-dir"), "file").unwrap();
    fs::create_dir(root.join("opt/becomes-file")).unwrap();
    fs::write(root.join("opt/becomes-file/x"), "x").unwrap();
    fs::write(root.join("opt/same-size"), "aaaa").unwrap();
    std::os::unix::fs::symlink("motd", root.join("etc/link")).unwrap();
    fs::write(root.join("opt/linked"), "shared").unwrap();
    fs::create_dir(root.join("untouched")).unwrap();
    fs::write(root.join("untouched/file"), "u").unwrap();
    fs::hard_link(root.join("opt/linked"), root.join("opt/linked2")).unwrap();
    // Second-resolution mtimes, as after unpacking a layer: contents must be compared.
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1_700_000_000,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1_700_000_000,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        root.join("opt/same-size"),
        &t,
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
}

/// Changes the upper copy in every way a layer must carry.
fn mutate_upper(root: &Path) {
    fs::write(root.join("etc/motd"), "changed\n").unwrap();
    fs::set_permissions(root.join("etc/motd"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(root.join("etc/to-delete")).unwrap();
    fs::remove_dir_all(root.join("opt/gone")).unwrap();
    // Opaque: every lower entry of opt/opaque goes, new ones come.
    fs::remove_dir_all(root.join("opt/opaque")).unwrap();
    fs::create_dir(root.join("opt/opaque")).unwrap();
    fs::write(root.join("opt/opaque/upper"), "u").unwrap();
    fs::create_dir(root.join("opt/opaque/sub2")).unwrap();
    fs::write(root.join("opt/opaque/sub2/new"), "n").unwrap();
    fs::remove_file(root.join("opt/becomes-dir")).unwrap();
    fs::create_dir(root.join("opt/becomes-dir")).unwrap();
    fs::write(root.join("opt/becomes-dir/inside"), "i").unwrap();
    fs::remove_dir_all(root.join("opt/becomes-file")).unwrap();
    fs::write(root.join("opt/becomes-file"), "now a file").unwrap();
    // Same size, same second: only the contents tell.
    fs::write(root.join("opt/same-size"), "bbbb").unwrap();
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1_700_000_000,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1_700_000_000,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        root.join("opt/same-size"),
        &t,
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    fs::remove_file(root.join("etc/link")).unwrap();
    std::os::unix::fs::symlink("./conf.d//a", root.join("etc/link")).unwrap();
    std::os::unix::fs::symlink("/etc/motd", root.join("abs-link")).unwrap();
    fs::write(root.join("opt/suid"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("opt/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    rustix::fs::chown(
        root.join("opt/suid"),
        Some(rustix::fs::Uid::from_raw(1000)),
        Some(rustix::fs::Gid::from_raw(1001)),
    )
    .unwrap();
    fs::set_permissions(root.join("opt/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    rustix::fs::setxattr(
        root.join("opt/suid"),
        "user.k",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        root.join("etc"),
        "user.dir",
        b"d",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    // A new name for an unchanged multiply-linked file, and a new link group.
    fs::hard_link(root.join("opt/linked"), root.join("etc/linked3")).unwrap();
    // A new link to a file whose directory does not change otherwise.
    fs::hard_link(
        root.join("untouched/file"),
        root.join("var/linked-untouched"),
    )
    .unwrap();
    fs::write(root.join("opt/h1"), "h").unwrap();
    fs::hard_link(root.join("opt/h1"), root.join("var/h2")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("dev-null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("var/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    fs::write(root.join("var/tmp/new"), vec![9u8; 200_000]).unwrap();
}

#[test]
fn apply_of_compare_reproduces_upper_on_a_copy_of_lower() {
    let dir = tempfile::tempdir().unwrap();
    let (lower, upper, result) = (
        dir.path().join("lower"),
        dir.path().join("upper"),
        dir.path().join("result"),
    );
    for d in [&lower, &upper, &result] {
        fs::create_dir(d).unwrap();
    }
    make_lower(&lower);
    fsutil::copy_tree(&lower, &upper).unwrap();
    assert_same_tree(&lower, &upper);
    mutate_upper(&upper);
    let mut tar = Vec::new();
    let compared = compare(&lower, &upper, &mut tar).unwrap();
    assert_eq!(compared.size, tar.len() as u64);

    // The layer has an opaque marker for opt/opaque and whiteouts for deleted paths.
    let names: Vec<String> = tar::Archive::new(tar.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    for want in [
        "opt/opaque/.wh..wh..opq",
        "etc/.wh.to-delete",
        "opt/.wh.gone",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n.contains("lower-a")), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("etc/conf.d")),
        "{names:?}"
    );

    fsutil::copy_tree(&lower, &result).unwrap();
    let applied = apply(&result, tar.as_slice(), &ApplyOptions::default()).unwrap();
    assert_eq!(applied.diff_id, compared.diff_id);
    assert_same_tree(&upper, &result);

    // Nothing changed: an empty layer.
    let mut empty = Vec::new();
    compare(&upper, &result, &mut empty).unwrap();
    assert_eq!(empty.len(), 1024, "only the end-of-archive blocks");
}

#[test]
fn overlay_form_round_trip_through_a_real_mount() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    for d in ["lower", "upper", "layer", "work", "merged"] {
        fs::create_dir(p(d)).unwrap();
    }
    make_lower(&p("lower"));
    fsutil::copy_tree(&p("lower"), &p("upper")).unwrap();
    mutate_upper(&p("upper"));
    let mut tar = Vec::new();
    compare(&p("lower"), &p("upper"), &mut tar).unwrap();

    let options = ApplyOptions {
        whiteouts: Whiteouts::Overlay,
        parents: vec![p("lower")],
    };
    apply(&p("layer"), tar.as_slice(), &options).unwrap();
    // Overlay form on disk: a 0:0 device for a deletion, the opaque xattr on a directory.
    let wh = fs::symlink_metadata(p("layer/etc/to-delete")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let opaque = rustix::fs::getxattr(
        p("layer/opt/opaque"),
        "trusted.overlay.opaque",
        &mut [0u8; 8],
    );
    assert_eq!(opaque.unwrap(), 1);
    assert!(!p("layer/opt/opaque/.wh..wh..opq").exists());

    let m = Mount::overlay(&[p("layer"), p("lower")], None, &["index=off"]);
    let merged = Mounted::at(&[m], &p("merged")).unwrap();
    assert_same_tree(&p("upper"), merged.path());
}

#[test]
fn overlay_apply_gives_implied_parents_their_lower_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let (lower, layer) = (dir.path().join("lower"), dir.path().join("layer"));
    fs::create_dir_all(lower.join("tmp")).unwrap();
    fs::create_dir(&layer).unwrap();
    fs::set_permissions(lower.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    let tar = tar_of(&[(T::Regular, "tmp/x", "", b"x")]);
    let options = ApplyOptions {
        whiteouts: Whiteouts::Overlay,
        parents: vec![lower.clone()],
    };
    apply(&layer, tar.as_slice(), &options).unwrap();
    let mode = fs::metadata(layer.join("tmp")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o1777);
}

#[test]
fn whiteout_then_directory_is_opaque_in_overlay_form() {
    let dir = tempfile::tempdir().unwrap();
    let tar = tar_of(&[
        (T::Regular, ".wh.d", "", b""),
        (T::Directory, "d", "", b""),
        (T::Regular, "d/new", "", b"n"),
    ]);
    let options = ApplyOptions {
        whiteouts: Whiteouts::Overlay,
        parents: Vec::new(),
    };
    apply(dir.path(), tar.as_slice(), &options).unwrap();
    let mut buf = [0u8; 4];
    let n = rustix::fs::getxattr(dir.path().join("d"), "trusted.overlay.opaque", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
}

#[test]
fn forged_overlay_xattrs_are_dropped() {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc".as_slice()),
        ("SCHILY.xattr.user.ok", b"1".as_slice()),
    ])
    .unwrap();
    raw_entry(&mut b, T::Directory, "d", "", b"");
    let tar = b.into_inner().unwrap();
    let dir = tempfile::tempdir().unwrap();
    apply(dir.path(), tar.as_slice(), &ApplyOptions::default()).unwrap();
    let fd = fsutil::open_dir(&dir.path().join("d")).unwrap();
    let xattrs = fsutil::xattrs_fd(fd.as_fd()).unwrap();
    assert_eq!(xattrs, vec![("user.ok".to_owned(), b"1".to_vec())]);
    let redirect = rustix::fs::getxattr(
        dir.path().join("d"),
        "trusted.overlay.redirect",
        &mut [0u8; 16],
    );
    assert!(redirect.is_err());
}

use std::os::fd::AsFd;

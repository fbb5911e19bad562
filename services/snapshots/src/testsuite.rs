//! One conformance suite run against every snapshotter (on real mounts: tests run as root).

use std::fs;
use std::path::Path;
use std::sync::Arc;

use crate::error::ErrorKind;
use crate::mount::Mounted;
use crate::snapshotter::{Kind, Labels, Snapshotter};
use crate::{CopySnapshotter, OverlaySnapshotter, copy, overlay};

const NS: &str = "default";

fn kind_of<T: std::fmt::Debug>(r: crate::Result<T>) -> ErrorKind {
    r.expect_err("must fail").kind()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Makes `key` on `parent`, writes `files` into it through its mounts and commits it as `name`.
fn layer(
    s: &dyn Snapshotter,
    scratch: &Path,
    name: &str,
    parent: Option<&str>,
    files: &[(&str, &str)],
) {
    let key = format!("{name}-active");
    let mounts = s.prepare(NS, &key, parent, Labels::new()).unwrap();
    {
        let m = Mounted::temporary(&mounts, scratch).unwrap();
        for (path, data) in files {
            let p = m.path().join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        }
    }
    s.commit(NS, name, &key, Labels::new()).unwrap();
}

fn lifecycle(s: &dyn Snapshotter, scratch: &Path) {
    layer(
        s,
        scratch,
        "base",
        None,
        &[("etc/motd", "base"), ("keep", "k")],
    );
    assert_eq!(s.stat(NS, "base").unwrap().kind, Kind::Committed);
    assert!(s.stat(NS, "base-active").is_err());

    // Writes in an active snapshot never reach its parent.
    let mounts = s.prepare(NS, "work", Some("base"), Labels::new()).unwrap();
    {
        let m = Mounted::temporary(&mounts, scratch).unwrap();
        assert_eq!(
            fs::read_to_string(m.path().join("etc/motd")).unwrap(),
            "base"
        );
        fs::write(m.path().join("etc/motd"), "changed").unwrap();
        fs::remove_file(m.path().join("keep")).unwrap();
        fs::write(m.path().join("new"), "n").unwrap();
    }
    let view = s.view(NS, "look", Some("base"), Labels::new()).unwrap();
    {
        let m = Mounted::temporary(&view, scratch).unwrap();
        assert_eq!(
            fs::read_to_string(m.path().join("etc/motd")).unwrap(),
            "base"
        );
        assert!(m.path().join("keep").exists());
        assert!(!m.path().join("new").exists());
        let err = fs::write(m.path().join("x"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    }
    // Mounts again show the same writes.
    {
        let m = Mounted::temporary(&s.mounts(NS, "work").unwrap(), scratch).unwrap();
        assert_eq!(
            fs::read_to_string(m.path().join("etc/motd")).unwrap(),
            "changed"
        );
        assert!(!m.path().join("keep").exists());
    }
    s.commit(NS, "top", "work", labels(&[("a", "1")])).unwrap();
    let top = s.stat(NS, "top").unwrap();
    assert_eq!(
        (top.kind, top.parent.as_deref()),
        (Kind::Committed, Some("base"))
    );
    assert_eq!(top.labels, labels(&[("a", "1")]));
    let view2 = s.view(NS, "look2", Some("top"), Labels::new()).unwrap();
    {
        let m = Mounted::temporary(&view2, scratch).unwrap();
        assert_eq!(
            fs::read_to_string(m.path().join("etc/motd")).unwrap(),
            "changed"
        );
        assert!(!m.path().join("keep").exists());
    }
    let names: Vec<String> = s
        .list(NS, &[])
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["base", "look", "look2", "top"]);

    assert_eq!(kind_of(s.remove(NS, "base")), ErrorKind::FailedPrecondition);
    for key in ["look2", "top", "look", "base"] {
        s.remove(NS, key).unwrap();
    }
    assert!(s.list(NS, &[]).unwrap().is_empty());
}

fn bad_input(s: &dyn Snapshotter, scratch: &Path) {
    layer(s, scratch, "p", None, &[("f", "x")]);
    s.prepare(NS, "active", Some("p"), Labels::new()).unwrap();
    s.view(NS, "v", Some("p"), Labels::new()).unwrap();
    let k = |r: crate::Result<Vec<crate::mount::Mount>>| kind_of(r);
    assert_eq!(
        k(s.prepare(NS, "x", Some("nope"), Labels::new())),
        ErrorKind::NotFound
    );
    assert_eq!(
        k(s.prepare(NS, "x", Some("active"), Labels::new())),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        k(s.view(NS, "x", Some("v"), Labels::new())),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        k(s.prepare(NS, "active", Some("p"), Labels::new())),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        k(s.prepare(NS, "p", None, Labels::new())),
        ErrorKind::AlreadyExists
    );
    for bad in ["", "../x", "/abs", "a//b", "a\nb", "a/./b"] {
        assert_eq!(
            k(s.prepare(NS, bad, None, Labels::new())),
            ErrorKind::InvalidArgument,
            "{bad:?}"
        );
        assert_eq!(
            kind_of(s.stat(NS, bad)),
            ErrorKind::InvalidArgument,
            "{bad:?}"
        );
    }
    assert_eq!(
        kind_of(s.commit(NS, "c", "v", Labels::new())),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind_of(s.commit(NS, "c", "p", Labels::new())),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind_of(s.commit(NS, "p", "active", Labels::new())),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind_of(s.commit(NS, "c", "nope", Labels::new())),
        ErrorKind::NotFound
    );
    assert_eq!(k(s.mounts(NS, "p")), ErrorKind::FailedPrecondition);
    assert_eq!(kind_of(s.remove(NS, "nope")), ErrorKind::NotFound);
    assert_eq!(kind_of(s.remove(NS, "p")), ErrorKind::FailedPrecondition);
    let bad_label = labels(&[("", "x")]);
    assert_eq!(
        k(s.prepare(NS, "l", None, bad_label)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind_of(s.update(NS, "p", Labels::new(), &["kind".into()])),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind_of(s.list(NS, &["name~=(".into()])),
        ErrorKind::InvalidArgument
    );
    // Nothing half-made: the failed calls left exactly what the good ones made.
    let names: Vec<String> = s
        .list(NS, &[])
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["active", "p", "v"]);
    for key in ["active", "v", "p"] {
        s.remove(NS, key).unwrap();
    }
}

fn namespaces_labels_filters(s: &dyn Snapshotter, scratch: &Path) {
    layer(s, scratch, "shared", None, &[]);
    assert_eq!(kind_of(s.stat("other", "shared")), ErrorKind::NotFound);
    assert_eq!(
        kind_of(s.prepare("other", "x", Some("shared"), Labels::new())),
        ErrorKind::NotFound
    );
    s.prepare("other", "shared", None, labels(&[("team", "b")]))
        .unwrap();
    assert_eq!(s.stat("other", "shared").unwrap().kind, Kind::Active);
    assert_eq!(s.stat(NS, "shared").unwrap().kind, Kind::Committed);

    s.prepare(
        NS,
        "c1",
        Some("shared"),
        labels(&[("app", "web"), ("tier", "1")]),
    )
    .unwrap();
    s.view(NS, "c2", Some("shared"), labels(&[("app", "db")]))
        .unwrap();
    let names = |filters: &[&str]| -> Vec<String> {
        let f: Vec<String> = filters.iter().map(|s| (*s).to_owned()).collect();
        s.list(NS, &f)
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect()
    };
    assert_eq!(names(&["kind==view"]), ["c2"]);
    assert_eq!(names(&["parent==shared"]), ["c1", "c2"]);
    assert_eq!(
        names(&["labels.app==web", "kind==committed"]),
        ["c1", "shared"]
    );
    assert_eq!(names(&["labels.app~=^d,kind==view"]), ["c2"]);

    let before = s.stat(NS, "c1").unwrap();
    let info = s
        .update(
            NS,
            "c1",
            labels(&[("app", "api")]),
            &["labels.app".into(), "labels.tier".into()],
        )
        .unwrap();
    assert_eq!(info.labels, labels(&[("app", "api")]));
    assert!(info.updated > before.updated);
    let info = s.update(NS, "c1", labels(&[("x", "y")]), &[]).unwrap();
    assert_eq!(info.labels, labels(&[("x", "y")]));
    assert_eq!(
        kind_of(s.update(NS, "nope", Labels::new(), &[])),
        ErrorKind::NotFound
    );
    for (ns, key) in [(NS, "c1"), (NS, "c2"), (NS, "shared"), ("other", "shared")] {
        s.remove(ns, key).unwrap();
    }
}

fn usage(s: &dyn Snapshotter, scratch: &Path) {
    let mounts = s.prepare(NS, "u", None, Labels::new()).unwrap();
    {
        let m = Mounted::temporary(&mounts, scratch).unwrap();
        fs::write(m.path().join("big"), vec![1u8; 100_000]).unwrap();
        fs::create_dir(m.path().join("d")).unwrap();
    }
    let active = s.usage(NS, "u").unwrap();
    assert_eq!(active.inodes, 3);
    assert!(active.size >= 100_000, "{active:?}");
    s.commit(NS, "uc", "u", Labels::new()).unwrap();
    assert_eq!(s.usage(NS, "uc").unwrap(), active);
    s.remove(NS, "uc").unwrap();
}

fn concurrent_prepare_of_one_key(s: Arc<dyn Snapshotter>) {
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || s.prepare(NS, "race", None, Labels::new()).map(drop))
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    for r in results.iter().filter(|r| r.is_err()) {
        assert_eq!(r.as_ref().unwrap_err().kind(), ErrorKind::AlreadyExists);
    }
    s.remove(NS, "race").unwrap();
    // Many concurrent prepares and removes share transactions and all land.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let key = format!("k{t}-{i}");
                    s.prepare(NS, &key, None, Labels::new()).unwrap();
                    s.remove(NS, &key).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(s.list(NS, &[]).unwrap().is_empty());
}

fn cleanup_and_reopen<S: Snapshotter>(open: impl Fn() -> S, root: &Path, scratch: &Path) {
    let s = open();
    layer(&s, scratch, "kept", None, &[("f", "x")]);
    s.prepare(NS, "kept-active", Some("kept"), Labels::new())
        .unwrap();
    let orphan = root.join("snapshots/999999");
    fs::create_dir_all(orphan.join("fs/deep")).unwrap();
    fs::create_dir_all(root.join("trash/7/fs")).unwrap();
    assert_eq!(s.cleanup().unwrap(), 2);
    assert!(!orphan.exists());
    assert_eq!(fs::read_dir(root.join("snapshots")).unwrap().count(), 2);
    // Leftovers of a crash are removed on open too; the records survive.
    fs::create_dir_all(root.join("snapshots/888888/fs")).unwrap();
    fs::create_dir_all(root.join("staging/1-1/fs")).unwrap();
    drop(s);
    let s = open();
    assert!(!root.join("snapshots/888888").exists());
    assert_eq!(fs::read_dir(root.join("staging")).unwrap().count(), 0);
    assert_eq!(
        s.stat(NS, "kept-active").unwrap().parent.as_deref(),
        Some("kept")
    );
    let m = Mounted::temporary(&s.mounts(NS, "kept-active").unwrap(), scratch).unwrap();
    assert_eq!(fs::read_to_string(m.path().join("f")).unwrap(), "x");
    drop(m);
    s.remove(NS, "kept-active").unwrap();
    s.remove(NS, "kept").unwrap();
    assert_eq!(fs::read_dir(root.join("snapshots")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(root.join("trash")).unwrap().count(), 0);
}

fn suite<S: Snapshotter + 'static>(open: impl Fn(&Path) -> S) {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    let root = dir.path().join("root");
    {
        let s = open(&root);
        lifecycle(&s, &scratch);
        bad_input(&s, &scratch);
        namespaces_labels_filters(&s, &scratch);
        usage(&s, &scratch);
        concurrent_prepare_of_one_key(Arc::new(s));
    }
    cleanup_and_reopen(|| open(&root), &root, &scratch);
}

#[test]
fn overlay_snapshotter() {
    suite(|root| OverlaySnapshotter::open(root, overlay::OverlayDriver).unwrap());
}

#[test]
fn copy_snapshotter() {
    suite(|root| CopySnapshotter::open(root, copy::CopyDriver).unwrap());
}

#[test]
fn overlay_mounts_have_the_right_shape() {
    let dir = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(dir.path(), overlay::OverlayDriver).unwrap();
    let scratch = dir.path();
    layer(&s, scratch, "l1", None, &[]);
    layer(&s, scratch, "l2", Some("l1"), &[]);
    let base = s.prepare(NS, "a0", None, Labels::new()).unwrap();
    assert_eq!(
        (base[0].fs_type.as_str(), base[0].is_read_only()),
        ("bind", false)
    );
    let one = s.view(NS, "v1", Some("l1"), Labels::new()).unwrap();
    assert_eq!(
        (one[0].fs_type.as_str(), one[0].is_read_only()),
        ("bind", true)
    );
    let two = s.view(NS, "v2", Some("l2"), Labels::new()).unwrap();
    assert_eq!(two[0].fs_type, "overlay");
    assert!(two[0].is_read_only());
    let lowers = two[0].lowerdirs();
    assert_eq!(lowers.len(), 2);
    assert!(lowers[0].starts_with(dir.path()) && lowers[0] != lowers[1]);
    let volatile = labels(&[(crate::snapshotter::LABEL_VOLATILE, "true")]);
    let rw = s.prepare(NS, "a2", Some("l2"), volatile).unwrap();
    assert!(
        rw[0].has_flag("volatile") && rw[0].has_flag("index=off"),
        "{rw:?}"
    );
    assert_eq!(rw[0].lowerdirs(), lowers);
    assert!(rw[0].upperdir().is_some());
}

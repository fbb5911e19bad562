//! End-to-end tests of image archives (save, load, import) and of the image commands around
//! them (history, prune, rmi -f, images -a), against the real binaries and Debian's skopeo.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use berth_api::berth::images::v1 as images_pb;
use berth_api::berth::images::v1::images_client::ImagesClient;
use berth_tests::fixtures::images::{self, BUSYBOX_TAG, ImageLayout, LAYERED_TAG, sha256_digest};
use berth_tests::harness::{ctl, fails, ok};
use berth_tests::{Berth, Mode};
use serde_json::Value;

/// berthctl with `input` on stdin.
fn ctl_stdin(berth: &Berth, args: &[&str], input: &[u8]) -> Output {
    let mut child = berth
        .ctl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running berthctl");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(["--insecure-policy"])
        .args(args)
        .output()
        .expect("running skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Digests the namespace's content store lists.
fn listed(berth: &Berth) -> BTreeSet<String> {
    ctl(berth, &["content", "ls", "-q"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `image inspect` of one image.
fn inspect(berth: &Berth, name: &str) -> Value {
    let out = ctl(berth, &["image", "inspect", name]);
    let mut all: Vec<Value> = serde_json::from_str(&out).unwrap();
    all.remove(0)
}

/// Names of the recorded images, sorted.
fn names(berth: &Berth) -> Vec<String> {
    let out = ctl(berth, &["-o", "json", "images", "-a"]);
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut names: Vec<String> = rows
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Loads both fixture images from an OCI layout directory.
fn load_fixtures(berth: &Berth, dir: &Path) -> ImageLayout {
    let layout = images::build_all(&dir.join("layout")).unwrap();
    let out = ctl(berth, &["load", path(&layout.path)]);
    assert!(out.contains("Loaded image: busybox:latest"), "{out}");
    assert!(out.contains("Loaded image: layered:latest"), "{out}");
    layout
}

/// Removes every image and collects: the content store is empty again.
fn remove_all(berth: &Berth) {
    ctl(berth, &["rmi", "busybox", "layered"]);
    ctl(berth, &["content", "prune"]);
    assert!(listed(berth).is_empty(), "{:?}", listed(berth));
}

#[test]
fn save_load_round_trip_keeps_every_digest_in_both_formats() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let dir = tempfile::tempdir()?;
    let layout = load_fixtures(&berth, dir.path());
    let all: BTreeSet<String> = layout
        .blobs(BUSYBOX_TAG)
        .union(&layout.blobs(LAYERED_TAG))
        .cloned()
        .collect();
    assert_eq!(listed(&berth), all);

    for format in ["oci", "docker"] {
        let file = dir.path().join(format!("{format}.tar"));
        ctl(
            &berth,
            &[
                "save",
                "--format",
                format,
                "-f",
                path(&file),
                "busybox",
                "layered",
            ],
        );
        // The archive holds each blob once, under blobs/sha256, plus the metadata files.
        let mut archive = tar::Archive::new(std::fs::File::open(&file)?);
        let mut entries = BTreeSet::new();
        for e in archive.entries()? {
            entries.insert(e?.path()?.to_string_lossy().into_owned());
        }
        for d in &all {
            assert!(
                entries.contains(&format!("blobs/sha256/{}", &d[7..])),
                "{format}: {d} missing from {entries:?}"
            );
        }
        for f in ["oci-layout", "index.json", "manifest.json"] {
            assert!(entries.contains(f), "{format}: no {f} in {entries:?}");
        }
        assert_eq!(entries.contains("repositories"), format == "docker");
        let manifest: Value = {
            let mut archive = tar::Archive::new(std::fs::File::open(&file)?);
            let mut found = None;
            for e in archive.entries()? {
                let mut e = e?;
                if e.path()?.to_str() == Some("manifest.json") {
                    found = Some(serde_json::from_reader(&mut e)?);
                }
            }
            found.unwrap()
        };
        let layered = manifest
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["RepoTags"][0] == "layered:latest")
            .expect("layered in manifest.json");
        assert_eq!(
            layered["Config"],
            format!(
                "blobs/sha256/{}",
                &layout.image(LAYERED_TAG).config.digest[7..]
            )
        );
        assert_eq!(layered["Layers"].as_array().unwrap().len(), 3);

        remove_all(&berth);
        let out = ctl(&berth, &["load", "-i", path(&file)]);
        assert!(out.contains("Loaded image: busybox:latest"), "{out}");
        assert!(out.contains("Loaded image: layered:latest"), "{out}");
        assert_eq!(listed(&berth), all, "{format}: every blob is back");
        for tag in [BUSYBOX_TAG, LAYERED_TAG] {
            let image = inspect(&berth, tag);
            assert_eq!(image["Target"]["digest"], layout.image(tag).manifest.digest);
            assert_eq!(image["Id"], layout.image(tag).config.digest);
        }
    }

    // save to stdout, load from stdin (and gzip-compressed, as docker load accepts).
    let out = berth.ctl().args(["save", "layered"]).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tar = out.stdout;
    remove_all(&berth);
    let out = ok(ctl_stdin(&berth, &["load"], &tar));
    assert_eq!(out.trim(), "Loaded image: layered:latest");
    assert_eq!(listed(&berth), layout.blobs(LAYERED_TAG));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar)?;
    ctl(&berth, &["rmi", "layered"]);
    ctl(&berth, &["content", "prune"]);
    ok(ctl_stdin(&berth, &["load", "-q"], &gz.finish()?));
    assert_eq!(listed(&berth), layout.blobs(LAYERED_TAG));

    // Bad requests: a precise one-line error each.
    let err = fails(berth.run_ctl(&["save", "-f", path(&dir.path().join("x.tar")), "nope"])?);
    assert!(err.contains("not found"), "{err}");
    assert!(!dir.path().join("x.tar").exists(), "no half-written file");
    berth.stop()
}

#[test]
fn skopeo_archives_load_into_berth_and_berth_archives_are_read_by_skopeo() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let dir = tempfile::tempdir()?;
    let layout = images::build_all(&dir.path().join("layout"))?;
    let layered = layout.image(LAYERED_TAG);

    // skopeo's oci-archive: the manifest is copied as is.
    let oci_archive = dir.path().join("skopeo-oci.tar");
    skopeo(&[
        "copy",
        &layout.skopeo_ref(LAYERED_TAG),
        &format!("oci-archive:{}:localhost/sk/layered:v1", path(&oci_archive)),
    ]);
    let out = ctl(&berth, &["load", "-i", path(&oci_archive)]);
    assert!(out.contains("localhost/sk/layered:v1"), "{out}");
    let image = inspect(&berth, "localhost/sk/layered:v1");
    assert_eq!(image["Target"]["digest"], layered.manifest.digest);

    // skopeo's oci: directory.
    let oci_dir = dir.path().join("skopeo-oci");
    skopeo(&[
        "copy",
        &layout.skopeo_ref(BUSYBOX_TAG),
        &format!("oci:{}:localhost/sk/busybox:v1", path(&oci_dir)),
    ]);
    ctl(&berth, &["load", path(&oci_dir)]);
    let image = inspect(&berth, "localhost/sk/busybox:v1");
    assert_eq!(
        image["Target"]["digest"],
        layout.image(BUSYBOX_TAG).manifest.digest
    );

    // skopeo's docker-archive: layers are written uncompressed, so they are the diff ids; the
    // config is kept byte for byte.
    let docker_archive = dir.path().join("skopeo-docker.tar");
    skopeo(&[
        "copy",
        &layout.skopeo_ref(LAYERED_TAG),
        &format!(
            "docker-archive:{}:localhost/sk/docker:v2",
            path(&docker_archive)
        ),
    ]);
    ctl(&berth, &["load", "-i", path(&docker_archive)]);
    let image = inspect(&berth, "localhost/sk/docker:v2");
    assert_eq!(image["Id"], layered.config.digest);
    assert_eq!(
        image["Target"]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let layers: Vec<&str> = image["Manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(layers, layered.diff_ids());
    // The same archive extracted to a directory loads too.
    let extracted = dir.path().join("extracted");
    tar::Archive::new(std::fs::File::open(&docker_archive)?).unpack(&extracted)?;
    ctl(&berth, &["-n", "dir", "load", path(&extracted)]);
    let out = ctl(
        &berth,
        &["-n", "dir", "image", "inspect", "localhost/sk/docker:v2"],
    );
    let from_dir: Value = serde_json::from_str(&out)?;
    assert_eq!(from_dir[0]["Target"], image["Target"]);
    // What berth recorded from it is read back by skopeo with the same config and layers.
    let again = dir.path().join("again-docker.tar");
    ctl(
        &berth,
        &[
            "save",
            "--format",
            "docker",
            "-f",
            path(&again),
            "localhost/sk/docker:v2",
        ],
    );
    let config = skopeo(&[
        "inspect",
        "--config",
        "--raw",
        &format!("docker-archive:{}", path(&again)),
    ]);
    assert_eq!(sha256_digest(config.as_bytes()), layered.config.digest);

    // berth's OCI archive, read by skopeo: same manifest and config digests.
    let ours = dir.path().join("berth-oci.tar");
    ctl(
        &berth,
        &["save", "-f", path(&ours), "localhost/sk/layered:v1"],
    );
    let raw = skopeo(&["inspect", "--raw", &format!("oci-archive:{}", path(&ours))]);
    assert_eq!(sha256_digest(raw.as_bytes()), layered.manifest.digest);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}:v1", path(&ours)),
    ]);
    assert_eq!(sha256_digest(raw.as_bytes()), layered.manifest.digest);
    let copied = dir.path().join("copied");
    skopeo(&[
        "copy",
        &format!("oci-archive:{}", path(&ours)),
        &format!("oci:{}:x", path(&copied)),
    ]);
    let index: Value = serde_json::from_slice(&std::fs::read(copied.join("index.json"))?)?;
    assert_eq!(index["manifests"][0]["digest"], layered.manifest.digest);

    // berth's docker-archive, read by skopeo: the config is identical; skopeo presents the
    // layers by their diff ids.
    let ours = dir.path().join("berth-docker.tar");
    ctl(
        &berth,
        &[
            "save",
            "--format",
            "docker",
            "-f",
            path(&ours),
            "localhost/sk/layered:v1",
        ],
    );
    let source = format!("docker-archive:{}", path(&ours));
    let config = skopeo(&["inspect", "--config", "--raw", &source]);
    assert_eq!(sha256_digest(config.as_bytes()), layered.config.digest);
    let info: Value = serde_json::from_str(&skopeo(&["inspect", &source]))?;
    assert_eq!(
        info["Layers"],
        serde_json::json!(layered.diff_ids()),
        "{info}"
    );
    // manifest.json's RepoTags name the image.
    let named = format!("{source}:localhost/sk/layered:v1");
    let config = skopeo(&["inspect", "--config", "--raw", &named]);
    assert_eq!(sha256_digest(config.as_bytes()), layered.config.digest);
    // skopeo copies it (to its dir: transport, which keeps the manifest's format).
    let copied = dir.path().join("copied-docker");
    skopeo(&["copy", &source, &format!("dir:{}", path(&copied))]);
    let manifest: Value = serde_json::from_slice(&std::fs::read(copied.join("manifest.json"))?)?;
    assert_eq!(manifest["config"]["digest"], layered.config.digest);
    berth.stop()
}

#[test]
fn import_of_a_rootfs_tarball_applies_changes_like_docker() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let dir = tempfile::tempdir()?;
    let layer = images::busybox_layer()?;
    let gz = dir.path().join("rootfs.tar.gz");
    std::fs::write(&gz, &layer.gz)?;
    let out = ctl(
        &berth,
        &[
            "import",
            "--change",
            r#"CMD ["sh", "-c", "echo hi"]"#,
            "-c",
            "ENTRYPOINT /bin/env",
            "-c",
            "ENV A=1 B=\"two words\"",
            "-c",
            "ENV C 3",
            "-c",
            "EXPOSE 8080 53/udp",
            "-c",
            "WORKDIR /srv",
            "-c",
            "LABEL org.example=yes",
            "-c",
            "USER nobody",
            "-m",
            "from a tarball",
            path(&gz),
            "localhost/imported:1",
        ],
    );
    let image = inspect(&berth, "localhost/imported:1");
    assert_eq!(out.trim(), image["Id"], "prints the image ID");
    let config = &image["Config"];
    let expected = serde_json::json!({
        "Cmd": ["sh", "-c", "echo hi"],
        "Entrypoint": ["/bin/sh", "-c", "/bin/env"],
        "Env": ["A=1", "B=two words", "C=3"],
        "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
        "WorkingDir": "/srv",
        "Labels": {"org.example": "yes"},
        "User": "nobody",
    });
    assert_eq!(config["config"], expected);
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([layer.diff_id])
    );
    assert_eq!(config["history"][0]["comment"], "from a tarball");
    // The layer is the tarball itself.
    assert_eq!(image["Manifest"]["layers"][0]["digest"], layer.digest);
    assert_eq!(
        image["Manifest"]["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let history = ctl(&berth, &["image", "history", "localhost/imported:1"]);
    assert!(history.contains("from a tarball"), "{history}");

    // From stdin, uncompressed, without a name: an untagged image.
    let out = ok(ctl_stdin(&berth, &["import", "-"], &layer.tar));
    let id = out.trim().to_owned();
    let dangling = ctl(&berth, &["images", "--filter", "dangling=true", "-q"]);
    assert_eq!(dangling.trim(), &id[7..19], "{dangling}");

    // Bad input: a clear error and nothing recorded.
    let before = listed(&berth);
    let err = fails(berth.run_ctl(&["import", "-c", "RUN make", path(&gz)])?);
    assert!(err.contains("RUN is not supported"), "{err}");
    let not_tar = dir.path().join("not.tar");
    std::fs::write(&not_tar, vec![b'x'; 4096])?;
    let err = fails(berth.run_ctl(&["import", path(&not_tar), "x:1"])?);
    assert!(err.contains("is not a plain or gzip tar archive"), "{err}");
    assert_eq!(listed(&berth), before);
    berth.stop()
}

/// The entries of a tar archive: (header, data).
fn entries(tar: &[u8]) -> Vec<(tar::Header, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (e.header().clone(), data)
        })
        .collect()
}

/// A tar of `entries`; names are written raw, so hostile ones stay hostile.
fn build(entries: &[(tar::Header, Vec<u8>)]) -> Vec<u8> {
    let mut out = tar::Builder::new(Vec::new());
    for (h, data) in entries {
        let mut h = h.clone();
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.append(&h, data.as_slice()).unwrap();
    }
    out.into_inner().unwrap()
}

fn name_of(h: &tar::Header) -> String {
    String::from_utf8_lossy(&h.path_bytes()).into_owned()
}

fn rename(h: &mut tar::Header, name: &str) {
    let bytes = &mut h.as_old_mut().name;
    bytes.fill(0);
    bytes[..name.len()].copy_from_slice(name.as_bytes());
}

#[test]
fn corrupt_archives_are_rejected_and_leave_nothing_behind() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let dir = tempfile::tempdir()?;
    let layout = load_fixtures(&berth, dir.path());
    let file = dir.path().join("layered.tar");
    ctl(&berth, &["image", "save", "-f", path(&file), "layered"]);
    ctl(&berth, &["rmi", "layered"]);
    ctl(&berth, &["content", "prune"]);
    let before = listed(&berth);
    assert_eq!(before, layout.blobs(BUSYBOX_TAG));
    let good = entries(&std::fs::read(&file)?);
    let layered = layout.image(LAYERED_TAG);
    let top = &layered.layers[2].descriptor.digest;
    let top_entry = format!("blobs/sha256/{}", &top[7..]);
    let at = |name: &str| good.iter().position(|(h, _)| name_of(h) == name).unwrap();

    let mut cases: Vec<(&str, Vec<u8>, String)> = Vec::new();
    // A blob whose content does not match its name (same size).
    let mut bad = good.clone();
    let i = at(&top_entry);
    let last = bad[i].1.len() - 1;
    bad[i].1[last] ^= 0xff;
    cases.push(("bad digest", build(&bad), top_entry.clone()));
    // Truncated in the middle of the top layer.
    let whole = build(&good);
    let offset = {
        let mut archive = tar::Archive::new(whole.as_slice());
        let e = archive
            .entries()?
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().to_str() == Some(top_entry.as_str()))
            .unwrap();
        e.raw_file_position() as usize
    };
    cases.push((
        "truncated",
        whole[..offset + 100].to_vec(),
        top_entry.clone(),
    ));
    // Entry names that escape.
    for evil in ["../escape", "/etc/evil", "blobs/../../evil"] {
        let mut bad = good.clone();
        let mut h = tar::Header::new_gnu();
        rename(&mut h, evil);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        bad.insert(0, (h, b"x".to_vec()));
        cases.push(("path escape", build(&bad), evil.to_owned()));
    }
    // A blob the manifest lists is missing.
    let mut bad = good.clone();
    bad.remove(at(&top_entry));
    cases.push(("missing blob", build(&bad), top_entry.clone()));
    // index.json points at a manifest the archive does not have.
    let mut bad = good.clone();
    let i = at("index.json");
    let nowhere = sha256_digest(b"nowhere");
    let text = String::from_utf8(bad[i].1.clone())?.replace(&layered.manifest.digest, &nowhere);
    bad[i].1 = text.into_bytes();
    cases.push((
        "index pointing nowhere",
        build(&bad),
        format!("blobs/sha256/{}", &nowhere[7..]),
    ));
    // Not an archive at all.
    cases.push(("garbage", vec![b'x'; 3000], "not a tar archive".into()));

    for (what, archive, entry) in cases {
        let path = dir.path().join("bad.tar");
        std::fs::write(&path, &archive)?;
        let err = fails(berth.run_ctl(&["load", "-i", path.to_str().unwrap()])?);
        assert!(err.contains(&entry), "{what}: {err} should name {entry}");
        assert_eq!(
            names(&berth),
            ["docker.io/library/busybox:latest"],
            "{what}"
        );
        ctl(&berth, &["content", "prune"]);
        assert_eq!(
            listed(&berth),
            before,
            "{what}: content ls unchanged after GC"
        );
        let ingests = ctl(&berth, &["content", "ingests"]);
        assert!(ingests.lines().count() <= 1, "{what}: {ingests}");
    }
    // The good archive still loads.
    ctl(&berth, &["image", "load", "-i", path(&file)]);
    assert_eq!(names(&berth).len(), 2);
    berth.stop()
}

#[test]
fn history_prune_rmi_force_and_images_all_behave_like_docker() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let dir = tempfile::tempdir()?;
    let layout = load_fixtures(&berth, dir.path());
    let layered = layout.image(LAYERED_TAG);
    let id = &layered.config.digest[7..19];

    // history: newest first, the image ID on the top row only.
    let out = ctl(&berth, &["image", "history", "layered"]);
    let lines: Vec<&str> = out.lines().collect();
    for h in ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"] {
        assert!(lines[0].contains(h), "{out}");
    }
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[1].starts_with(id), "{out}");
    assert!(lines[2].starts_with("<missing>") && lines[3].starts_with("<missing>"));
    let bottom = &layered.layers[0].created_by;
    let shown: String = bottom.chars().take(20).collect();
    assert!(lines[3].contains(&shown), "{out}");
    let quiet = ctl(&berth, &["image", "history", "-q", "layered"]);
    assert_eq!(quiet.lines().next(), Some(id));

    // rmi by ID of an image with two names needs -f, then removes both.
    ctl(&berth, &["tag", "layered", "localhost/second:1"]);
    let err = fails(berth.run_ctl(&["rmi", id])?);
    assert!(err.contains("must be forced"), "{err}");
    let out = ctl(&berth, &["rmi", "-f", id]);
    assert!(out.contains("Untagged: layered:latest"), "{out}");
    assert!(out.contains("Untagged: localhost/second:1"), "{out}");
    assert!(
        out.contains(&format!("Deleted: {}", layered.manifest.digest)),
        "{out}"
    );
    assert_eq!(names(&berth), ["docker.io/library/busybox:latest"]);
    assert_eq!(listed(&berth), layout.blobs(BUSYBOX_TAG));
    let err = fails(berth.run_ctl(&["rmi", "nothing-here"])?);
    assert!(err.contains("not found"), "{err}");
    let err = fails(berth.run_ctl(&["rmi", "abcdef"])?);
    assert!(err.contains("No such image: abcdef"), "{err}");

    // A digest-only name is dangling once no tag names the image; prune removes it.
    let manifest = &layout.image(BUSYBOX_TAG).manifest.digest;
    let by_digest = format!("localhost/bb@{manifest}");
    ctl(&berth, &["tag", "busybox", &by_digest]);
    let all = ctl(&berth, &["images", "-a"]);
    assert_eq!(all.lines().count(), 3, "{all}");
    assert_eq!(ctl(&berth, &["images"]), all);
    ctl(&berth, &["rmi", "busybox"]);
    let dangling = ctl(&berth, &["images", "--filter", "dangling=true"]);
    assert!(dangling.contains("localhost/bb"), "{dangling}");
    // Without -f and without a terminal to confirm on, nothing is removed.
    ctl(&berth, &["image", "prune"]);
    assert_eq!(names(&berth).len(), 1);
    let out = ctl(&berth, &["image", "prune", "-f"]);
    assert!(out.contains("Deleted Images:"), "{out}");
    assert!(out.contains(&format!("Untagged: {by_digest}")), "{out}");
    assert!(out.contains("Total reclaimed space"), "{out}");
    assert!(!out.contains("Total reclaimed space: 0B"), "{out}");
    assert!(names(&berth).is_empty());
    assert!(listed(&berth).is_empty());

    // prune -a removes every image no container uses.
    load_fixtures(&berth, dir.path());
    let out = ctl(&berth, &["image", "prune", "-f"]);
    assert!(
        !out.contains("Deleted Images"),
        "tagged images are not dangling: {out}"
    );
    assert_eq!(names(&berth).len(), 2);
    // A container's image is kept by prune -a, and rmi needs -f for it.
    ctl(&berth, &["create", "--name", "user", "busybox", "true"]);
    let out = ctl(&berth, &["image", "prune", "-a", "-f"]);
    assert!(out.contains("Untagged: layered:latest"), "{out}");
    assert!(!out.contains("busybox"), "{out}");
    assert_eq!(names(&berth), ["docker.io/library/busybox:latest"]);
    let err = fails(berth.run_ctl(&["rmi", "busybox"])?);
    assert!(
        err.contains("must force") && err.contains("is using"),
        "{err}"
    );
    let out = ctl(&berth, &["rmi", "-f", "busybox"]);
    assert!(out.contains("Untagged: busybox:latest"), "{out}");
    assert!(names(&berth).is_empty());
    ctl(&berth, &["rm", "user"]);
    ctl(&berth, &["content", "prune"]);
    assert!(listed(&berth).is_empty());
    berth.stop()
}

#[test]
fn multi_platform_images_export_the_platforms_present() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let dir = tempfile::tempdir()?;
    let layout = images::busybox_layout(&dir.path().join("layout"))?;
    let amd64 = layout.image(BUSYBOX_TAG).manifest.clone();
    // An index whose arm64 manifest is not here, as a pull of the host's platform leaves it.
    let absent = sha256_digest(b"an arm64 manifest that was never pulled");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": images::MEDIA_TYPE_INDEX,
        "manifests": [
            {"mediaType": amd64.media_type, "digest": amd64.digest, "size": amd64.size,
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": images::MEDIA_TYPE_MANIFEST, "digest": absent, "size": 500,
             "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    });
    let index = serde_json::to_vec(&index)?;
    let index_digest = sha256_digest(&index);
    std::fs::write(layout.blob_path(&index_digest), &index)?;
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": images::MEDIA_TYPE_INDEX, "digest": index_digest, "size": index.len(),
        "annotations": {"org.opencontainers.image.ref.name": "localhost/multi:1"},
    }]});
    std::fs::write(layout.path.join("index.json"), serde_json::to_vec(&top)?)?;

    // Loading needs only the platforms asked for.
    let err = fails(berth.run_ctl(&["load", "--platform", "linux/arm64", path(&layout.path)])?);
    assert!(err.contains(&absent[7..]), "{err}");
    ctl(&berth, &["load", path(&layout.path)]);
    let image = inspect(&berth, "localhost/multi:1");
    assert_eq!(image["Target"]["digest"], index_digest);

    // OCI: the index is kept (its digest too) with the host's platform.
    let oci = dir.path().join("multi.tar");
    ctl(&berth, &["save", "-f", path(&oci), "localhost/multi:1"]);
    let raw = skopeo(&["inspect", "--raw", &format!("oci-archive:{}", path(&oci))]);
    assert_eq!(sha256_digest(raw.as_bytes()), index_digest);
    let copied = dir.path().join("copied");
    skopeo(&[
        "copy",
        &format!("oci-archive:{}", path(&oci)),
        &format!("oci:{}:x", path(&copied)),
    ]);
    ctl(&berth, &["-n", "other", "load", "-i", path(&oci)]);
    let image: Value = serde_json::from_str(&ctl(
        &berth,
        &["-n", "other", "image", "inspect", "localhost/multi:1"],
    ))?;
    assert_eq!(image[0]["Target"]["digest"], index_digest);
    // Every platform: the missing one makes it fail, naming it.
    let err = fails(berth.run_ctl(&[
        "save",
        "--all-platforms",
        "-f",
        path(&dir.path().join("all.tar")),
        "localhost/multi:1",
    ])?);
    assert!(err.contains(&absent), "{err}");
    let err = fails(berth.run_ctl(&[
        "save",
        "--platform",
        "linux/s390x",
        "-f",
        path(&dir.path().join("none.tar")),
        "localhost/multi:1",
    ])?);
    assert!(err.contains("linux/s390x"), "{err}");

    // docker-archive: one platform, recorded as its manifest.
    let docker = dir.path().join("multi-docker.tar");
    ctl(
        &berth,
        &[
            "save",
            "--format",
            "docker",
            "-f",
            path(&docker),
            "localhost/multi:1",
        ],
    );
    ctl(&berth, &["-n", "third", "load", "-i", path(&docker)]);
    let image: Value = serde_json::from_str(&ctl(
        &berth,
        &["-n", "third", "image", "inspect", "localhost/multi:1"],
    ))?;
    assert_eq!(image[0]["Target"]["digest"], amd64.digest);
    berth.stop()
}

/// Sends `archive` to the Import RPC in 1 MiB messages.
async fn grpc_import(
    berth: &Berth,
    options: images_pb::ImportOptions,
    archive: Vec<u8>,
) -> Result<images_pb::ImportResponse, tonic::Status> {
    let channel = berth_api::client::connect(&berth.socket("images"), "default")
        .await
        .unwrap();
    let mut messages = vec![images_pb::ImportRequest {
        options: Some(options),
        data: Vec::new(),
    }];
    for chunk in archive.chunks(1 << 20) {
        messages.push(images_pb::ImportRequest {
            options: None,
            data: chunk.to_vec(),
        });
    }
    ImagesClient::new(channel)
        .import(tokio_stream::iter(messages))
        .await
        .map(tonic::Response::into_inner)
}

#[test]
fn import_rpc_answers_invalid_argument_and_unpacks_on_request() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let dir = tempfile::tempdir()?;
    let layout = load_fixtures(&berth, dir.path());
    let file = dir.path().join("layered.tar");
    ctl(&berth, &["save", "-f", path(&file), "layered"]);
    remove_all(&berth);
    let archive = std::fs::read(&file)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // A bad archive is InvalidArgument, naming the entry.
    let status = runtime
        .block_on(grpc_import(
            &berth,
            images_pb::ImportOptions::default(),
            archive[..archive.len() / 2].to_vec(),
        ))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("archive entry "), "{status:?}");
    // Asking for an OCI layout when the archive has no index.json is too.
    let docker_only: Vec<_> = entries(&archive)
        .into_iter()
        .filter(|(h, _)| name_of(h) != "index.json")
        .collect();
    let status = runtime
        .block_on(grpc_import(
            &berth,
            images_pb::ImportOptions {
                format: images_pb::ArchiveFormat::OciLayout as i32,
                ..Default::default()
            },
            build(&docker_only),
        ))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("index.json"), "{status:?}");
    // Imported without index.json, the same archive is a docker-archive: the image gets a
    // manifest of berth's making over the same config and layers.
    let response = runtime.block_on(grpc_import(
        &berth,
        images_pb::ImportOptions::default(),
        build(&docker_only),
    ))?;
    let target = response.images[0].target.clone().unwrap();
    assert_eq!(
        target.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        inspect(&berth, "layered")["Id"],
        layout.image(LAYERED_TAG).config.digest
    );
    ctl(&berth, &["rmi", "layered"]);
    ctl(&berth, &["content", "prune"]);
    assert!(listed(&berth).is_empty());

    // unpack = true leaves the image's snapshot chain committed.
    let response = runtime.block_on(grpc_import(
        &berth,
        images_pb::ImportOptions {
            unpack: true,
            labels: [("team".to_owned(), "a".to_owned())].into(),
            ..Default::default()
        },
        archive,
    ))?;
    assert_eq!(response.images.len(), 1);
    assert_eq!(response.images[0].name, "docker.io/library/layered:latest");
    assert_eq!(response.images[0].labels["team"], "a");
    let target = response.images[0].target.clone().unwrap();
    assert_eq!(target.digest, layout.image(LAYERED_TAG).manifest.digest);
    assert!(target.annotations.is_empty(), "{target:?}");
    let snapshots = ctl(&berth, &["snapshot", "ls"]);
    let layered = layout.image(LAYERED_TAG);
    let mut chain = layered.layers[0].diff_id.clone();
    for l in &layered.layers[1..] {
        chain = sha256_digest(format!("{chain} {}", l.diff_id).as_bytes());
    }
    assert!(snapshots.contains(&chain), "{snapshots}");
    drop(runtime); // closes the connection, so the service stops without waiting for it
    berth.stop()
}

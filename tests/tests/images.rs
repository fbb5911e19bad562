//! End-to-end tests of the images service: content store, leases, garbage collection and image
//! records, through berthctl and gRPC against the real binaries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use berth_api::berth::content::v1 as content;
use berth_api::berth::content::v1::content_client::ContentClient;
use berth_api::berth::images::v1 as images_pb;
use berth_api::berth::images::v1::images_client::ImagesClient;
use berth_api::berth::leases::v1 as leases;
use berth_api::berth::leases::v1::leases_client::LeasesClient;
use berth_api::berth::snapshots::v1 as snapshots_pb;
use berth_api::berth::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::client::Channel;
use berth_tests::fixtures::images::{
    self, BUSYBOX_TAG, ImageLayout, LAYERED_TAG, LayerBuilder, LayoutWriter, sha256_digest,
};
use berth_tests::fixtures::registry::Registry;
use berth_tests::harness::{ctl, fails};
use berth_tests::images_api::{connect, pull, runtime};
use berth_tests::tree;
use berth_tests::{Berth, Mode, Options};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

const MIB: usize = 1 << 20;

/// Digests the namespace's content store lists.
fn listed(berth: &Berth, ns: &str) -> BTreeSet<String> {
    ctl(berth, &["-n", ns, "content", "ls", "-q"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Digests of the blob files on disk.
fn on_disk(berth: &Berth) -> BTreeSet<String> {
    let dir = berth.root().join("images/content/blobs/sha256");
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default()
}

/// Every blob file re-hashes to its name.
fn check_blobs_verify(berth: &Berth) {
    for digest in on_disk(berth) {
        let hex = &digest["sha256:".len()..];
        let data =
            std::fs::read(berth.root().join("images/content/blobs/sha256").join(hex)).unwrap();
        assert_eq!(sha256_digest(&data), digest);
    }
}

/// A Write stream driven one message at a time.
struct WriteStream {
    tx: mpsc::Sender<content::WriteContentRequest>,
    rx: tonic::Streaming<content::WriteContentResponse>,
}

impl WriteStream {
    async fn open(channel: Channel, lease: Option<&str>) -> WriteStream {
        let (tx, rx) = mpsc::channel(1);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(lease) = lease {
            request
                .metadata_mut()
                .insert("berth-lease", lease.parse().unwrap());
        }
        let rx = ContentClient::new(channel)
            .write(request)
            .await
            .expect("write stream")
            .into_inner();
        WriteStream { tx, rx }
    }

    async fn send(
        &mut self,
        msg: content::WriteContentRequest,
    ) -> Result<content::WriteContentResponse, tonic::Status> {
        self.tx.send(msg).await.unwrap();
        match self.rx.next().await {
            Some(r) => r,
            None => Err(tonic::Status::unknown("stream ended")),
        }
    }
}

fn msg(
    action: content::WriteAction,
    reference: &str,
    offset: usize,
    data: &[u8],
) -> content::WriteContentRequest {
    content::WriteContentRequest {
        action: action as i32,
        r#ref: reference.into(),
        offset: offset as i64,
        data: data.to_vec(),
        ..Default::default()
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

#[test]
fn load_list_tag_rmi_and_gc_remove_exactly_unreferenced_blobs() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let dir = tempfile::tempdir()?;
    let layout = images::build_all(dir.path())?;
    let out = ctl(&berth, &["load", dir.path().to_str().unwrap()]);
    assert!(out.contains("Loaded image: busybox:latest"), "{out}");
    assert!(out.contains("Loaded image: layered:latest"), "{out}");

    let bb = layout.blobs(BUSYBOX_TAG);
    let ly = layout.blobs(LAYERED_TAG);
    let all: BTreeSet<_> = bb.union(&ly).cloned().collect();
    assert_eq!(all.len(), 7, "the busybox layer is shared");
    assert_eq!(listed(&berth, "default"), all);
    assert_eq!(on_disk(&berth), all);
    // Loading again changes nothing.
    ctl(&berth, &["load", dir.path().to_str().unwrap()]);
    assert_eq!(listed(&berth, "default"), all);

    // `images`: Docker's columns; IMAGE ID is the config digest.
    let table = ctl(&berth, &["images"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("REPOSITORY"), "{table}");
    for h in ["TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(lines[0].contains(h), "{table}");
    }
    let config_id = &layout.image(BUSYBOX_TAG).config.digest[7..19];
    let row = lines
        .iter()
        .find(|l| l.starts_with("busybox "))
        .expect(&table);
    assert!(row.contains("latest") && row.contains(config_id), "{row}");
    let quiet = ctl(&berth, &["images", "-q"]);
    assert_eq!(quiet.lines().count(), 2, "{quiet}");
    let digests = ctl(
        &berth,
        &["images", "--digests", "--filter", "reference=lay*"],
    );
    assert_eq!(digests.lines().count(), 2, "{digests}");
    assert!(
        digests.contains(&layout.image(LAYERED_TAG).manifest.digest),
        "{digests}"
    );

    // A second name keeps busybox's blobs alive after its first name goes.
    ctl(&berth, &["tag", "busybox", "localhost:5000/bb:v1"]);
    let out = ctl(&berth, &["rmi", "busybox"]);
    assert!(out.contains("Untagged: busybox:latest"), "{out}");
    assert_eq!(listed(&berth, "default"), all);
    // Removing the last name collects exactly busybox's own blobs (not the shared layer).
    ctl(&berth, &["rmi", "localhost:5000/bb:v1"]);
    assert_eq!(listed(&berth, "default"), ly);
    assert_eq!(on_disk(&berth), ly);

    // `content prune` removes exactly a blob nothing references.
    let loose = dir.path().join("loose");
    std::fs::write(&loose, b"nothing references me")?;
    let digest = ctl(&berth, &["content", "ingest", loose.to_str().unwrap()]);
    assert_eq!(digest.trim(), sha256_digest(b"nothing references me"));
    let out = ctl(&berth, &["content", "prune"]);
    assert!(out.contains(digest.trim()), "{out}");
    assert_eq!(listed(&berth, "default"), ly);
    assert_eq!(on_disk(&berth), ly);
    check_blobs_verify(&berth);

    ctl(&berth, &["rmi", "layered"]);
    assert!(listed(&berth, "default").is_empty());
    assert!(on_disk(&berth).is_empty());
    berth.stop()
}

#[test]
fn references_normalise_and_malformed_ones_say_why() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let dir = tempfile::tempdir()?;
    let layout = images::busybox_layout(dir.path())?;
    ctl(&berth, &["load", dir.path().to_str().unwrap()]);
    let manifest = &layout.image(BUSYBOX_TAG).manifest.digest;

    for name in [
        "busybox",
        "busybox:latest",
        "library/busybox",
        "docker.io/library/busybox:latest",
    ] {
        let out = ctl(&berth, &["image", "inspect", name]);
        let v: serde_json::Value = serde_json::from_str(&out)?;
        assert_eq!(v[0]["Name"], "docker.io/library/busybox:latest", "{name}");
        assert_eq!(v[0]["Target"]["digest"], manifest.as_str());
        assert_eq!(v[0]["Id"], layout.image(BUSYBOX_TAG).config.digest.as_str());
    }
    ctl(&berth, &["tag", "busybox", "localhost:5000/x"]);
    ctl(&berth, &["tag", "busybox", &format!("busybox@{manifest}")]);
    ctl(
        &berth,
        &[
            "tag",
            "busybox",
            &format!("127.0.0.1:5000/a/b:v2@{manifest}"),
        ],
    );
    let json = ctl(&berth, &["-o", "json", "images"]);
    let names: BTreeSet<String> = serde_json::from_str::<serde_json::Value>(&json)?
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    let want: BTreeSet<String> = [
        "docker.io/library/busybox:latest".to_owned(),
        "localhost:5000/x:latest".to_owned(),
        format!("docker.io/library/busybox@{manifest}"),
        format!("127.0.0.1:5000/a/b:v2@{manifest}"),
    ]
    .into();
    assert_eq!(names, want);
    let dangling = ctl(&berth, &["images", "--filter", "dangling=true"]);
    assert_eq!(dangling.lines().count(), 2, "{dangling}");
    assert!(dangling.contains("<none>"), "{dangling}");

    for (args, why) in [
        (
            vec!["tag", "busybox", "BusyBox"],
            "repository name must be lowercase",
        ),
        (vec!["tag", "busybox", "a b"], "invalid reference format"),
        (
            vec!["tag", "busybox", "x@sha256:1234"],
            "invalid reference format",
        ),
        (vec!["image", "inspect", ":tag"], "invalid reference format"),
        (vec!["rmi", "nosuch"], "not found"),
        (vec!["tag", "nosuch", "y"], "not found"),
        (vec!["images", "--filter", "size=1"], "invalid filter"),
    ] {
        let err = fails(berth.run_ctl(&args)?);
        assert!(err.contains(why), "{args:?}: {err}");
    }
    berth.stop()
}

#[test]
fn ingest_killed_with_sigkill_resumes_from_its_durable_offset() -> anyhow::Result<()> {
    // One process per service, so that only the images service is killed.
    let berth = Berth::start(Mode::Separate)?;
    let blob = data(5 * MIB + 123, 7);
    let digest = sha256_digest(&blob);
    let rt = runtime();
    let killed = rt.block_on(async {
        let mut w = WriteStream::open(connect(&berth).await, None).await;
        let mut first = msg(content::WriteAction::Write, "big-blob", 0, &blob[..MIB]);
        first.total = blob.len() as i64;
        first.expected = digest.clone();
        assert_eq!(w.send(first).await.unwrap().offset, MIB as i64);
        for i in 1..3 {
            let r = w
                .send(msg(
                    content::WriteAction::Write,
                    "",
                    i * MIB,
                    &blob[i * MIB..(i + 1) * MIB],
                ))
                .await
                .unwrap();
            assert_eq!(r.offset, ((i + 1) * MIB) as i64);
        }
        // kill -9 the images service in the middle of the stream.
        let pid = berth
            .pids()
            .unwrap()
            .into_iter()
            .find(|(s, _)| s == "images")
            .and_then(|(_, p)| p)
            .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let after = w
            .send(msg(
                content::WriteAction::Write,
                "",
                3 * MIB,
                &blob[3 * MIB..4 * MIB],
            ))
            .await;
        assert!(after.is_err(), "the stream must break");
        pid
    });
    berth_tests::harness::wait_exited(killed, std::time::Duration::from_secs(10))?;
    let out = berth.up(&Options::default())?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The ingest survived with its durable offset and expectations.
    let ingests = ctl(&berth, &["-o", "json", "content", "ingests"]);
    let v: serde_json::Value = serde_json::from_str(&ingests)?;
    assert_eq!(v[0]["ref"], "big-blob", "{ingests}");
    assert_eq!(v[0]["offset"], 3 * MIB, "{ingests}");
    assert_eq!(v[0]["expected"], digest.as_str());

    rt.block_on(async {
        let mut w = WriteStream::open(connect(&berth).await, None).await;
        let stat = w
            .send(msg(content::WriteAction::Stat, "big-blob", 0, &[]))
            .await
            .unwrap();
        assert_eq!(stat.offset, 3 * MIB as i64);
        assert_eq!(stat.total, blob.len() as i64);
        // Only the missing bytes are sent.
        let mut offset = 3 * MIB;
        for chunk in blob[3 * MIB..].chunks(MIB) {
            let action = if offset + chunk.len() == blob.len() {
                content::WriteAction::Commit
            } else {
                content::WriteAction::Write
            };
            let r = w.send(msg(action, "", offset, chunk)).await.unwrap();
            offset += chunk.len();
            assert_eq!(r.offset, offset as i64);
            if action == content::WriteAction::Commit {
                assert_eq!(r.digest, digest);
            }
        }
    });
    assert_eq!(listed(&berth, "default"), BTreeSet::from([digest.clone()]));
    assert!(ctl(&berth, &["-o", "json", "content", "ingests"]).trim() == "[]");

    // Ranged reads stream the right bytes, in chunks of at most 1 MiB.
    let whole = berth.run_ctl(&["content", "get", &digest])?;
    assert!(whole.status.success());
    assert_eq!(whole.stdout, blob);
    let part = berth.run_ctl(&[
        "content", "get", &digest, "--offset", "1048000", "--size", "2000000",
    ])?;
    assert_eq!(part.stdout, &blob[1_048_000..3_048_000]);
    rt.block_on(async {
        let mut stream = ContentClient::new(connect(&berth).await)
            .read(content::ReadContentRequest {
                digest: digest.clone(),
                offset: 5,
                size: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut next = 5;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            assert_eq!(chunk.offset, next as i64);
            assert!(chunk.data.len() <= MIB);
            next += chunk.data.len();
        }
        assert_eq!(next, blob.len());
    });
    check_blobs_verify(&berth);
    // Close the test's connections before stopping berth (open streams delay its drain).
    drop(rt);
    berth.stop()
}

#[test]
fn digest_or_size_mismatch_commits_nothing() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("blob");
    std::fs::write(&file, b"the real content")?;
    let f = file.to_str().unwrap();
    let wrong = sha256_digest(b"other content");
    let err =
        fails(berth.run_ctl(&["content", "ingest", f, "--ref", "r1", "--expected", &wrong])?);
    assert!(err.contains("does not match the expected"), "{err}");
    let err = fails(berth.run_ctl(&["content", "ingest", f, "--ref", "r2", "--total", "3"])?);
    assert!(err.contains("size"), "{err}");
    assert!(listed(&berth, "default").is_empty());
    assert!(on_disk(&berth).is_empty());
    // The failed ingests stay (to be fixed or aborted), and abort removes them.
    let ingests = ctl(&berth, &["content", "ingests"]);
    assert!(
        ingests.contains("r1") && ingests.contains("r2"),
        "{ingests}"
    );
    ctl(&berth, &["content", "abort", "r1"]);
    ctl(&berth, &["content", "abort", "r2"]);
    let err = fails(berth.run_ctl(&["content", "abort", "r2"])?);
    assert!(err.contains("not found"), "{err}");

    // Bad input over gRPC: each a precise status, nothing committed.
    let rt = runtime();
    rt.block_on(async {
        let channel = connect(&berth).await;
        let mut w = WriteStream::open(channel.clone(), None).await;
        let e = w
            .send(msg(content::WriteAction::Unspecified, "x", 0, b"a"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

        let mut w = WriteStream::open(channel.clone(), None).await;
        let e = w
            .send(msg(content::WriteAction::Write, "", 0, b"a"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

        let mut w = WriteStream::open(channel.clone(), None).await;
        let e = w
            .send(msg(
                content::WriteAction::Write,
                "big",
                0,
                &vec![0; MIB + 1],
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

        let mut w = WriteStream::open(channel.clone(), None).await;
        w.send(msg(content::WriteAction::Write, "gap", 0, b"abc"))
            .await
            .unwrap();
        let e = w
            .send(msg(content::WriteAction::Write, "", 10, b"d"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");

        // A second writer of a ref in use is refused.
        let mut a = WriteStream::open(channel.clone(), None).await;
        a.send(msg(content::WriteAction::Stat, "busy", 0, &[]))
            .await
            .unwrap();
        let mut b = WriteStream::open(channel.clone(), None).await;
        let e = b
            .send(msg(content::WriteAction::Stat, "busy", 0, &[]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
        drop(a);

        let mut c = ContentClient::new(channel);
        for digest in ["sha256:zz", "md5:00", "", "sha256:../../etc"] {
            let e = c
                .info(content::InfoRequest {
                    digest: digest.into(),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{digest}: {e}");
        }
        let e = c
            .info(content::InfoRequest {
                digest: sha256_digest(b"nope"),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = c
            .list(content::ListContentRequest {
                filters: vec!["labels.\"x".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    });
    assert!(listed(&berth, "default").is_empty());
    drop(rt);
    berth.stop()
}

#[test]
fn leases_keep_content_and_ingests_until_deleted() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let rt = runtime();
    let held = b"held by a lease".to_vec();
    let digest = sha256_digest(&held);
    rt.block_on(async {
        let channel = connect(&berth).await;
        let mut l = LeasesClient::new(channel.clone());
        let lease = l
            .create(leases::CreateRequest {
                id: "pull-1".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .lease
            .unwrap();
        assert_eq!(lease.id, "pull-1");
        let e = l
            .create(leases::CreateRequest {
                id: "pull-1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists);

        let mut w = WriteStream::open(channel.clone(), Some("pull-1")).await;
        w.send(msg(content::WriteAction::Commit, "held", 0, &held))
            .await
            .unwrap();
        let mut w = WriteStream::open(channel.clone(), Some("pull-1")).await;
        w.send(msg(content::WriteAction::Write, "partial-held", 0, b"part"))
            .await
            .unwrap();
        drop(w);
        let mut w = WriteStream::open(channel.clone(), None).await;
        w.send(msg(
            content::WriteAction::Write,
            "partial-loose",
            0,
            b"part",
        ))
        .await
        .unwrap();
        drop(w);
        // Writing under a lease that does not exist is refused.
        let mut w = WriteStream::open(channel.clone(), Some("nope")).await;
        let e = w
            .send(msg(content::WriteAction::Stat, "x", 0, &[]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e}");

        let resources = l
            .list_resources(leases::ListResourcesRequest {
                id: "pull-1".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .resources;
        let got: BTreeSet<(String, String)> =
            resources.into_iter().map(|r| (r.r#type, r.id)).collect();
        let want: BTreeSet<(String, String)> = [
            ("content".to_owned(), digest.clone()),
            ("ingests".to_owned(), "partial-held".to_owned()),
        ]
        .into();
        assert_eq!(got, want);
    });
    // Give the writers' streams time to end on the server.
    std::thread::sleep(std::time::Duration::from_millis(200));
    ctl(&berth, &["content", "prune"]);
    assert_eq!(listed(&berth, "default"), BTreeSet::from([digest.clone()]));
    let ingests = ctl(&berth, &["content", "ingests"]);
    assert!(
        ingests.contains("partial-held") && !ingests.contains("partial-loose"),
        "{ingests}"
    );

    rt.block_on(async {
        LeasesClient::new(connect(&berth).await)
            .delete(leases::DeleteRequest {
                id: "pull-1".into(),
                sync: true,
            })
            .await
            .unwrap();
    });
    assert!(listed(&berth, "default").is_empty());
    assert!(on_disk(&berth).is_empty());
    assert!(!ctl(&berth, &["content", "ingests"]).contains("partial-held"));
    drop(rt);
    berth.stop()
}

#[test]
fn namespaces_see_only_their_own_images_and_content() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let dir = tempfile::tempdir()?;
    let layout = images::busybox_layout(dir.path())?;
    let path = dir.path().to_str().unwrap();
    ctl(&berth, &["-n", "team-a", "load", path]);
    assert_eq!(listed(&berth, "team-a"), layout.blobs(BUSYBOX_TAG));
    assert!(listed(&berth, "default").is_empty());
    assert_eq!(ctl(&berth, &["images", "-q"]).trim(), "");
    let err = fails(berth.run_ctl(&["image", "inspect", "busybox"])?);
    assert!(err.contains("not found"), "{err}");
    // The same image in a second namespace shares the data on disk.
    ctl(&berth, &["-n", "team-b", "load", path]);
    assert_eq!(on_disk(&berth), layout.blobs(BUSYBOX_TAG));
    ctl(&berth, &["-n", "team-a", "rmi", "busybox"]);
    assert!(listed(&berth, "team-a").is_empty());
    assert_eq!(on_disk(&berth), layout.blobs(BUSYBOX_TAG));
    ctl(&berth, &["-n", "team-b", "rmi", "busybox"]);
    assert!(on_disk(&berth).is_empty());
    check_dir_empty(&berth.root().join("images/content/ingest"));
    berth.stop()
}

fn check_dir_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    assert!(left.is_empty(), "{} holds {left:?}", dir.display());
}

/// A registry holding the fixture images: `busybox:latest` and `layered:v1`.
fn registry_with_fixtures(
    dir: &Path,
    auth: Option<(&str, &str)>,
) -> anyhow::Result<(Registry, ImageLayout)> {
    let layout = images::build_all(dir)?;
    let registry = match auth {
        Some((user, pass)) => Registry::start_with_auth(user, pass)?,
        None => Registry::start()?,
    };
    registry.push_layout(dir, BUSYBOX_TAG, "busybox:latest")?;
    registry.push_layout(dir, LAYERED_TAG, "layered:v1")?;
    Ok((registry, layout))
}

#[test]
fn pull_stores_verified_blobs_records_the_image_and_skips_present_blobs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (registry, layout) = registry_with_fixtures(dir.path(), None)?;
    let berth = Berth::start(Mode::AllInOne)?;
    let reference = format!("{}/busybox:latest", registry.addr());

    let out = ctl(&berth, &["pull", &reference]);
    let manifest = &layout.image(BUSYBOX_TAG).manifest.digest;
    assert!(out.contains(&format!("Digest: {manifest}")), "{out}");
    assert!(out.contains("Download complete"), "{out}");
    assert_eq!(out.lines().last(), Some(reference.as_str()), "{out}");
    assert_eq!(listed(&berth, "default"), layout.blobs(BUSYBOX_TAG));
    check_blobs_verify(&berth);
    let v: serde_json::Value =
        serde_json::from_str(&ctl(&berth, &["image", "inspect", &reference]))?;
    assert_eq!(v[0]["Target"]["digest"], manifest.as_str());
    assert_eq!(v[0]["Id"], layout.image(BUSYBOX_TAG).config.digest.as_str());

    // Again: nothing is downloaded.
    let out = ctl(&berth, &["pull", &reference]);
    assert!(out.contains("Image is up to date"), "{out}");
    assert!(!out.contains("Download complete"), "{out}");

    // The layered image shares the busybox layer: it is skipped.
    let rt = runtime();
    let (progress, image) = rt.block_on(async {
        pull(
            connect(&berth).await,
            &format!("{}/layered:v1", registry.addr()),
            None,
        )
        .await
    });
    let image = image.expect("pull layered");
    assert_eq!(
        image.target.unwrap().digest,
        layout.image(LAYERED_TAG).manifest.digest
    );
    let base = &layout.image(BUSYBOX_TAG).layers[0].descriptor.digest;
    let exists = images_pb::ProgressStatus::Exists as i32;
    let downloaded = images_pb::ProgressStatus::Downloaded as i32;
    assert!(
        progress
            .iter()
            .any(|p| &p.r#ref == base && p.status == exists)
    );
    assert!(
        !progress
            .iter()
            .any(|p| &p.r#ref == base && p.status == downloaded)
    );
    for upper in &layout.image(LAYERED_TAG).layers[1..] {
        assert!(
            progress
                .iter()
                .any(|p| p.r#ref == upper.descriptor.digest && p.status == downloaded)
        );
    }
    let all: BTreeSet<_> = layout
        .blobs(BUSYBOX_TAG)
        .union(&layout.blobs(LAYERED_TAG))
        .cloned()
        .collect();
    assert_eq!(listed(&berth, "default"), all);

    // Nothing is left behind: the pulls' leases are gone, so removing the images frees all.
    let leases = rt.block_on(async {
        LeasesClient::new(connect(&berth).await)
            .list(leases::ListRequest::default())
            .await
            .unwrap()
            .into_inner()
            .leases
    });
    assert!(leases.is_empty(), "{leases:?}");
    ctl(
        &berth,
        &[
            "rmi",
            &reference,
            &format!("{}/layered:v1", registry.addr()),
        ],
    );
    assert!(on_disk(&berth).is_empty());
    drop(rt);
    berth.stop()
}

#[test]
fn pull_resumes_a_partial_blob_and_reports_registry_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (registry, layout) = registry_with_fixtures(dir.path(), Some(("berth", "s3cret")))?;
    let berth = Berth::start(Mode::AllInOne)?;
    let reference = format!("{}/busybox:latest", registry.addr());
    let layer = &layout.image(BUSYBOX_TAG).layers[0].descriptor;
    let data = std::fs::read(layout.blob_path(&layer.digest))?;
    let half = data.len() / 2;
    let rt = runtime();
    rt.block_on(async {
        let channel = connect(&berth).await;
        // An interrupted download of the layer, as a killed pull leaves it.
        let mut w = WriteStream::open(channel.clone(), None).await;
        let mut first = msg(
            content::WriteAction::Write,
            &format!("pull-{}", layer.digest),
            0,
            &data[..half.min(MIB)],
        );
        first.total = data.len() as i64;
        first.expected = layer.digest.clone();
        w.send(first).await.unwrap();
        if half > MIB {
            w.send(msg(content::WriteAction::Write, "", MIB, &data[MIB..half]))
                .await
                .unwrap();
        }
        drop(w);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;

        // Without credentials the registry refuses.
        let (_, e) = pull(channel.clone(), &reference, None).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::Unauthenticated);
        let (_, e) = pull(channel.clone(), &reference, Some(("berth", "wrong"))).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::Unauthenticated);

        let (progress, image) = pull(channel.clone(), &reference, Some(("berth", "s3cret"))).await;
        image.expect("pull with credentials");
        let first = progress
            .iter()
            .find(|p| {
                p.r#ref == layer.digest && p.status == images_pb::ProgressStatus::Downloading as i32
            })
            .expect("the layer was downloaded");
        assert_eq!(
            first.offset, half as i64,
            "the download resumed where the ingest ended"
        );

        let missing = format!("{}/nosuch:latest", registry.addr());
        let (_, e) = pull(channel.clone(), &missing, Some(("berth", "s3cret"))).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::NotFound);
        let (_, e) = pull(channel.clone(), "127.0.0.1:1/x:latest", None).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::Unavailable);
        let (_, e) = pull(channel, "Bad/Reference", None).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::InvalidArgument);
    });
    assert_eq!(listed(&berth, "default"), layout.blobs(BUSYBOX_TAG));
    check_blobs_verify(&berth);
    let err = fails(berth.run_ctl(&["pull", &format!("{}/nosuch", registry.addr())])?);
    assert!(err.contains("nosuch"), "{err}");
    drop(rt);
    berth.stop()
}

/// An image with one 4 MiB layer of noise (gzip cannot shrink it), tagged `big`.
fn big_layout(dir: &Path) -> anyhow::Result<ImageLayout> {
    images::noise_layout(dir, 4 * MIB, 0x9e37_79b9_7f4a_7c15_u64)
}

#[test]
fn pull_killed_midway_resumes_without_downloading_what_was_durable() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = big_layout(dir.path())?;
    let registry = Registry::start()?;
    registry.push_layout(dir.path(), "big", "big:latest")?;
    let reference = format!("{}/big:latest", registry.addr());
    let layer = &layout.image("big").layers[0].descriptor;
    assert!(
        layer.size > 3 * MIB as u64,
        "the layer spans several chunks"
    );

    // One process per service; the images service kills itself (SIGKILL) after 2 MiB.
    let kill_at = 2 * MIB;
    let options = Options {
        env: vec![("BERTH_FAILPOINT_PULL_KILL_AT".into(), kill_at.to_string())],
        ..Default::default()
    };
    let berth = Berth::start_with(Mode::Separate, options)?;
    let rt = runtime();
    let images_pid = berth
        .pids()?
        .into_iter()
        .find(|(s, _)| s == "images")
        .and_then(|(_, p)| p)
        .expect("images pid");
    let (_, result) = rt.block_on(async { pull(connect(&berth).await, &reference, None).await });
    assert!(result.is_err(), "the service died mid-pull");
    // Restart the images service (without the failpoint) once every thread of it is gone.
    berth_tests::harness::wait_exited(images_pid, std::time::Duration::from_secs(10))?;
    let out = berth.up(&Options::default())?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ingests: serde_json::Value =
        serde_json::from_str(&ctl(&berth, &["-o", "json", "content", "ingests"]))?;
    let partial = ingests
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["ref"] == format!("pull-{}", layer.digest))
        .unwrap_or_else(|| panic!("no partial layer ingest: {ingests}"));
    let durable = partial["offset"].as_u64().unwrap();
    assert!(durable >= kill_at as u64, "{partial}");

    let (progress, result) =
        rt.block_on(async { pull(connect(&berth).await, &reference, None).await });
    let image = result.expect("the retried pull completes");
    assert_eq!(
        image.target.unwrap().digest,
        layout.image("big").manifest.digest
    );
    let first = progress
        .iter()
        .find(|p| {
            p.r#ref == layer.digest && p.status == images_pb::ProgressStatus::Downloading as i32
        })
        .expect("the layer download resumed");
    assert_eq!(
        first.offset as u64, durable,
        "resumed at the durable offset"
    );
    assert_eq!(listed(&berth, "default"), layout.blobs("big"));
    check_blobs_verify(&berth);
    drop(rt);
    berth.stop()
}

// ---------------------------------------------------------------------------------------------
// Unpack
// ---------------------------------------------------------------------------------------------

/// Asserts that `got` holds the same tree as `want`, which is not trivially small.
fn assert_same_tree(want: &Path, got: &Path) {
    let paths = tree::assert_same_tree(want, got, false);
    assert!(paths > 100, "{} lists only {paths} paths", want.display());
}

/// The chain ids of a stack of diff ids, bottom first (OCI image spec).
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match chain.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

async fn unpack(channel: Channel, name: &str) -> Result<images_pb::UnpackResponse, tonic::Status> {
    ImagesClient::new(channel)
        .unpack(images_pb::UnpackRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every snapshot of the namespace: name -> kind.
async fn snapshots(berth: &Berth) -> BTreeMap<String, i32> {
    let channel = berth_api::client::connect(&berth.socket("snapshots"), "default")
        .await
        .unwrap();
    let mut stream = SnapshotsClient::new(channel)
        .list(snapshots_pb::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut all = BTreeMap::new();
    while let Some(batch) = stream.next().await {
        for info in batch.unwrap().info {
            all.insert(info.name, info.kind);
        }
    }
    all
}

/// Mounts a read-only view of the committed snapshot `name` on a new directory in `scratch`.
async fn view(berth: &Berth, name: &str, scratch: &Path) -> berth_snapshots::mount::Mounted {
    let channel = berth_api::client::connect(&berth.socket("snapshots"), "default")
        .await
        .unwrap();
    let mounts = SnapshotsClient::new(channel)
        .view(snapshots_pb::ViewSnapshotRequest {
            key: format!("view-{name}"),
            parent: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    let mounts: Vec<berth_snapshots::mount::Mount> = mounts
        .into_iter()
        .map(berth_snapshots::mount::Mount::from)
        .collect();
    berth_snapshots::mount::Mounted::temporary(&mounts, scratch).unwrap()
}

#[test]
fn unpack_equals_umoci_file_by_file_and_reuses_existing_chains() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let dir = tempfile::tempdir()?;
    let layout = images::build_all(&dir.path().join("layout"))?;
    ctl(&berth, &["load", layout.path.to_str().unwrap()]);
    let layered = chain_ids(&layout.image(LAYERED_TAG).diff_ids());
    let busybox = chain_ids(&layout.image(BUSYBOX_TAG).diff_ids());
    assert_eq!(busybox[0], layered[0], "the base layer is shared");

    let rt = runtime();
    rt.block_on(async {
        // What a crash between Prepare and Commit leaves: removed by the next unpack.
        let snapshots_channel = berth_api::client::connect(&berth.socket("snapshots"), "default")
            .await
            .unwrap();
        SnapshotsClient::new(snapshots_channel)
            .prepare(snapshots_pb::PrepareSnapshotRequest {
                key: "extract-1-interrupted".into(),
                labels: [("berth.io/snapshot/unpack".to_owned(), layered[0].clone())].into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let channel = connect(&berth).await;
        // Two unpacks of one image at once: one makes every layer, the other waits and reuses.
        let (a, b) = tokio::join!(
            unpack(channel.clone(), "layered"),
            unpack(channel.clone(), "layered")
        );
        let (a, b) = (a.expect("unpack"), b.expect("concurrent unpack"));
        assert_eq!(a.chain_id, layered[2]);
        assert_eq!(b.chain_id, layered[2]);
        assert!(
            a.existed != b.existed,
            "exactly one made the chain: {a:?} {b:?}"
        );
        // busybox's only layer is layered's first: nothing to do.
        let bb = unpack(channel.clone(), "busybox:latest").await.unwrap();
        assert_eq!(
            (bb.chain_id.as_str(), bb.existed),
            (busybox[0].as_str(), true)
        );

        let committed = snapshots_pb::Kind::Committed as i32;
        let all = snapshots(&berth).await;
        let want: BTreeMap<String, i32> = layered.iter().map(|c| (c.clone(), committed)).collect();
        assert_eq!(
            all, want,
            "one committed snapshot per chain id, nothing else"
        );

        // The config records the snapshot it keeps alive.
        let config = &layout.image(LAYERED_TAG).config.digest;
        let info = ContentClient::new(channel.clone())
            .info(content::InfoRequest {
                digest: config.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap();
        assert_eq!(
            info.labels.get("berth.io/gc.ref.snapshot.overlay"),
            Some(&layered[2])
        );

        // The merged view equals umoci's unpack of the same image, and the fixture's spec.
        let scratch = tempfile::tempdir().unwrap();
        let mounted = view(&berth, &layered[2], scratch.path()).await;
        images::check_layered_rootfs(mounted.path()).unwrap();
        let reference = dir.path().join("umoci");
        layout.umoci_unpack(LAYERED_TAG, &reference).unwrap();
        assert_same_tree(&reference, mounted.path());
        drop(mounted);

        let missing = unpack(channel.clone(), "nosuch").await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound, "{missing}");
        let empty = unpack(channel, "").await.unwrap_err();
        assert_eq!(empty.code(), tonic::Code::InvalidArgument, "{empty}");
    });
    drop(rt);
    berth.stop()
}

/// Writes an image tagged `tag` whose layers are `blobs` (media type, blob) with these diff ids.
fn write_raw_image(
    dir: &Path,
    tag: &str,
    blobs: &[(&str, Vec<u8>)],
    diff_ids: &[String],
) -> anyhow::Result<ImageLayout> {
    let (arch, os) = images::host_platform();
    let w = LayoutWriter::open(dir)?;
    let layers: Vec<images::Descriptor> = blobs
        .iter()
        .map(|(m, data)| w.write_blob(m, data))
        .collect::<anyhow::Result<_>>()?;
    let config = serde_json::json!({
        "architecture": arch, "os": os, "config": images::fixture_config(),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = w.write_blob(images::MEDIA_TYPE_CONFIG, &serde_json::to_vec(&config)?)?;
    let desc = |d: &images::Descriptor| serde_json::json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": images::MEDIA_TYPE_MANIFEST,
        "config": desc(&config),
        "layers": layers.iter().map(desc).collect::<Vec<_>>(),
    });
    let manifest = w.write_blob(images::MEDIA_TYPE_MANIFEST, &serde_json::to_vec(&manifest)?)?;
    // Write index.json and oci-layout, then tag the raw manifest there.
    w.finish()?;
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path)?)?;
    let entries = index["manifests"].as_array_mut().unwrap();
    entries.retain(|m| m["annotations"][images::ANNOTATION_REF_NAME] != tag);
    entries.push(serde_json::json!({
        "mediaType": images::MEDIA_TYPE_MANIFEST,
        "digest": manifest.digest, "size": manifest.size,
        "annotations": {images::ANNOTATION_REF_NAME: tag},
        "platform": {"architecture": arch, "os": os},
    }));
    std::fs::write(&index_path, serde_json::to_vec(&index)?)?;
    Ok(ImageLayout {
        path: dir.to_owned(),
        images: Default::default(),
    })
}

fn zstd(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("zstd")
        .args(["-q", "-c", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running zstd (apt-get install zstd)");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn unpack_reads_gzip_zstd_and_plain_layers_and_refuses_lying_or_oversized_ones()
-> anyhow::Result<()> {
    let options = Options {
        config: Some("[images]\nmax_layer_size = 3000000\n".into()),
        ..Default::default()
    };
    let berth = Berth::start_with(Mode::AllInOne, options)?;
    let dir = tempfile::tempdir()?;
    let layout_dir = dir.path().join("layout");
    let base = images::busybox_layer()?;
    let [l2, l3]: [images::Layer; 2] = images::layered_upper_layers()?.try_into().unwrap();
    let diff_ids = vec![base.diff_id.clone(), l2.diff_id.clone(), l3.diff_id.clone()];
    // The layered image again, its layers compressed three ways.
    write_raw_image(
        &layout_dir,
        "mixed",
        &[
            (images::MEDIA_TYPE_LAYER_GZIP, base.gz.clone()),
            ("application/vnd.oci.image.layer.v1.tar+zstd", zstd(&l2.tar)),
            ("application/vnd.oci.image.layer.v1.tar", l3.tar.clone()),
        ],
        &diff_ids,
    )?;
    // A config whose last diff id lies.
    let mut lying = diff_ids.clone();
    lying[2] = sha256_digest(b"not this layer");
    write_raw_image(
        &layout_dir,
        "liar",
        &[
            (images::MEDIA_TYPE_LAYER_GZIP, base.gz.clone()),
            (images::MEDIA_TYPE_LAYER_GZIP, l2.gz.clone()),
            (images::MEDIA_TYPE_LAYER_GZIP, l3.gz.clone()),
        ],
        &lying,
    )?;
    // 4 MiB of zeros: 4 KiB of gzip that expands beyond the 3 MB bound.
    let mut bomb = LayerBuilder::new("bomb");
    bomb.file("zeros", 0o644, vec![0u8; 4 * MIB]);
    let bomb = bomb.build()?;
    assert!(bomb.gz.len() < 64 << 10);
    write_raw_image(
        &layout_dir,
        "bomb",
        &[(images::MEDIA_TYPE_LAYER_GZIP, bomb.gz.clone())],
        std::slice::from_ref(&bomb.diff_id),
    )?;
    // A layer of an unknown media type.
    write_raw_image(
        &layout_dir,
        "odd",
        &[("application/vnd.example.layer.v1.tar+lz4", l2.tar.clone())],
        std::slice::from_ref(&l2.diff_id),
    )?;
    ctl(&berth, &["load", layout_dir.to_str().unwrap()]);

    let chain = chain_ids(&diff_ids);
    let rt = runtime();
    rt.block_on(async {
        let channel = connect(&berth).await;
        let mixed = unpack(channel.clone(), "mixed")
            .await
            .expect("unpack mixed");
        assert_eq!(mixed.chain_id, chain[2]);
        let scratch = tempfile::tempdir().unwrap();
        let mounted = view(&berth, &chain[2], scratch.path()).await;
        images::check_layered_rootfs(mounted.path()).unwrap();
        drop(mounted);

        let before = snapshots(&berth).await;
        let e = unpack(channel.clone(), "liar").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
        assert!(
            e.message().contains(&l3.diff_id) && e.message().contains(&lying[2]),
            "{e}"
        );
        let e = unpack(channel.clone(), "bomb").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
        assert!(e.message().contains("max_layer_size"), "{e}");
        let e = unpack(channel.clone(), "odd").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
        assert!(e.message().contains("unsupported media type"), "{e}");
        // The failures left no snapshot behind (the view of the test aside).
        assert_eq!(snapshots(&berth).await, before);
    });
    drop(rt);
    berth.stop()
}

//! End-to-end tests of the images service against registries: push (checked with skopeo),
//! pull of what skopeo pushed, credentials (login/logout, config.json), plain HTTP policy,
//! search, and registry faults served by a small in-test HTTP server on 127.0.0.1.

use std::collections::BTreeSet;
use std::path::Path;

use berth_api::berth::images::v1 as images_pb;
use berth_tests::fixtures::images::{self, BUSYBOX_TAG, ImageLayout, LAYERED_TAG};
use berth_tests::fixtures::registry::Registry;
use berth_tests::harness::{ctl, fails};
use berth_tests::images_api::{connect, pull, push, runtime};
use berth_tests::{Berth, Mode};

const MIB: usize = 1 << 20;

/// The manifest digest tagged `tag` in a layout skopeo wrote, and every blob file in it.
fn skopeo_layout(dir: &Path, tag: &str) -> (String, BTreeSet<String>) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"][images::ANNOTATION_REF_NAME] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let files = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    (manifest, files)
}

fn count(
    progress: &[images_pb::Progress],
    digest: &str,
    status: images_pb::ProgressStatus,
) -> usize {
    progress
        .iter()
        .filter(|p| p.r#ref == digest && p.status == status as i32)
        .count()
}

/// An image with one 5 MiB layer of noise (gzip cannot shrink it), tagged `big`: its layer is
/// pushed in chunks.
fn big_layout(dir: &Path) -> anyhow::Result<ImageLayout> {
    images::noise_layout(dir, 5 * MIB, 0x2545_f491_4f6c_dd1d_u64)
}

/// Push from berth, pull with skopeo (and the reverse), against `registry`.
fn push_and_pull_round_trip(registry: &Registry) -> anyhow::Result<()> {
    let creds = registry.creds();
    let berth = Berth::start(Mode::AllInOne)?;
    let dir = tempfile::tempdir()?;
    let layout = images::build_all(&dir.path().join("fixtures"))?;
    let big = big_layout(&dir.path().join("big"))?;
    ctl(&berth, &["load", layout.path.to_str().unwrap()]);
    ctl(&berth, &["load", big.path.to_str().unwrap()]);
    let addr = registry.addr();
    let target = format!("{addr}/pushed/layered:v1");
    let mut user_args = Vec::new();
    if let Some((u, p)) = creds {
        user_args = vec![
            "-u".to_owned(),
            u.to_owned(),
            "--password".to_owned(),
            p.to_owned(),
        ];
    }
    let user: Vec<&str> = user_args.iter().map(String::as_str).collect();

    // berthctl push: every blob uploaded, then the manifest under the tag.
    let mut args = vec!["push", "layered:latest", &target];
    args.extend(&user);
    let out = ctl(&berth, &args);
    let manifest = &layout.image(LAYERED_TAG).manifest.digest;
    assert!(out.contains(&format!("digest: {manifest}")), "{out}");
    assert!(out.contains("Pushed"), "{out}");
    assert_eq!(registry.manifest_digest("pushed/layered:v1")?, *manifest);
    let copy = dir.path().join("skopeo");
    registry.pull_layout("pushed/layered:v1", &copy, "copy")?;
    let (digest, files) = skopeo_layout(&copy, "copy");
    assert_eq!(digest, *manifest);
    assert_eq!(
        files,
        layout.blobs(LAYERED_TAG),
        "skopeo got exactly the image's blobs"
    );

    let rt = runtime();
    rt.block_on(async {
        let channel = connect(&berth).await;
        // Again: the registry has every blob (HEAD), nothing is uploaded.
        let (progress, pushed) = push(channel.clone(), "layered:latest", &target, creds).await;
        assert_eq!(pushed.expect("second push").digest, *manifest);
        for blob in layout.blobs(LAYERED_TAG).iter().filter(|b| *b != manifest) {
            assert_eq!(
                count(&progress, blob, images_pb::ProgressStatus::Exists),
                1,
                "{blob}"
            );
            assert_eq!(
                count(&progress, blob, images_pb::ProgressStatus::Uploading),
                0,
                "{blob}"
            );
        }

        // A layer over 2 MiB goes up in chunks (PATCH requests), with progress along the way.
        let big_target = format!("{addr}/pushed/big:latest");
        let (progress, pushed) = push(channel.clone(), "big:latest", &big_target, creds).await;
        let layer = &big.image("big").layers[0].descriptor;
        assert_eq!(
            pushed.expect("push big").digest,
            big.image("big").manifest.digest
        );
        assert!(
            count(
                &progress,
                &layer.digest,
                images_pb::ProgressStatus::Uploading
            ) >= 5
        );
        assert!(registry.log_tail(400).contains("PATCH"), "chunked upload");

        // The reverse: skopeo pushes, berth pulls the same digests.
        registry.push_layout(&layout.path, BUSYBOX_TAG, "skopeo/busybox:latest")?;
        let pulled = pull(
            channel.clone(),
            &format!("{addr}/skopeo/busybox:latest"),
            creds,
        )
        .await
        .1
        .expect("pull what skopeo pushed");
        assert_eq!(
            pulled.target.unwrap().digest,
            layout.image(BUSYBOX_TAG).manifest.digest
        );

        // Pulled from skopeo/busybox, pushed to another repository of the same registry: the
        // layer is mounted across repositories, not uploaded.
        let (progress, pushed) = push(
            channel.clone(),
            &format!("{addr}/skopeo/busybox:latest"),
            &format!("{addr}/mounted/busybox:latest"),
            creds,
        )
        .await;
        pushed.expect("push with a cross-repository mount");
        let base = &layout.image(BUSYBOX_TAG).layers[0].descriptor.digest;
        assert_eq!(count(&progress, base, images_pb::ProgressStatus::Pushed), 1);
        assert_eq!(
            count(&progress, base, images_pb::ProgressStatus::Uploading),
            0
        );
        assert!(
            registry.log_tail(400).contains("mount="),
            "a mount request was made"
        );
        assert_eq!(
            registry.manifest_digest("mounted/busybox:latest")?,
            layout.image(BUSYBOX_TAG).manifest.digest
        );

        if creds.is_some() {
            let (_, e) = push(channel.clone(), "layered:latest", &target, None).await;
            assert_eq!(e.unwrap_err().code(), tonic::Code::Unauthenticated);
            let (_, e) = push(
                channel.clone(),
                "layered:latest",
                &target,
                Some(("berth", "wrong")),
            )
            .await;
            assert_eq!(e.unwrap_err().code(), tonic::Code::Unauthenticated);
        }
        let (_, e) = push(channel, "nosuch:latest", &target, creds).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::NotFound);
        anyhow::Ok(())
    })?;
    drop(rt);
    berth.stop()
}

#[test]
fn push_then_skopeo_pull_and_the_reverse_keep_every_digest_anonymous() -> anyhow::Result<()> {
    push_and_pull_round_trip(&Registry::start()?)
}

#[test]
fn push_then_skopeo_pull_and_the_reverse_keep_every_digest_with_basic_auth() -> anyhow::Result<()> {
    push_and_pull_round_trip(&Registry::start_with_auth("berth", "s3cret")?)
}

#[test]
fn login_checks_and_stores_credentials_that_pull_push_and_search_then_use() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let registry = Registry::start_with_auth("berth", "s3cret")?;
    let addr = registry.addr();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("docker/config.json");
    let options = berth_tests::Options {
        config: Some(format!(
            "[images]\ncredentials_file = \"{}\"\n",
            file.display()
        )),
        ..Default::default()
    };
    let berth = Berth::start_with(Mode::AllInOne, options)?;
    let layout = images::build_all(&dir.path().join("fixtures"))?;
    ctl(&berth, &["load", layout.path.to_str().unwrap()]);
    let target = format!("{addr}/stored/layered:v1");

    // Not logged in: the registry refuses.
    let err = fails(berth.run_ctl(&["push", "layered:latest", &target])?);
    assert!(err.contains(&addr), "{err}");
    // Wrong password: refused, nothing stored.
    let err = fails(berth.run_ctl(&["login", &addr, "-u", "berth", "-p", "wrong"])?);
    assert!(err.to_lowercase().contains("auth"), "{err}");
    assert!(!file.exists());

    let out = ctl(&berth, &["login", &addr, "-u", "berth", "-p", "s3cret"]);
    assert!(out.contains("Login Succeeded"), "{out}");
    assert_eq!(
        std::fs::metadata(&file)?.permissions().mode() & 0o777,
        0o600
    );
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
    assert!(stored["auths"][&addr]["auth"].is_string(), "{stored}");
    assert!(!stored.to_string().contains("s3cret"), "not in clear text");

    // Push, pull and search use the stored credentials.
    let out = ctl(&berth, &["push", "layered:latest", &target]);
    let manifest = &layout.image(LAYERED_TAG).manifest.digest;
    assert!(out.contains(manifest.as_str()), "{out}");
    assert_eq!(registry.manifest_digest("stored/layered:v1")?, *manifest);
    ctl(
        &berth,
        &["push", "busybox:latest", &format!("{addr}/other/busybox:1")],
    );
    let out = ctl(&berth, &["pull", "--no-unpack", &target]);
    assert!(out.contains(&format!("Digest: {manifest}")), "{out}");
    let found = ctl(&berth, &["search", &addr, "lay"]);
    let rows: Vec<&str> = found.lines().collect();
    assert_eq!(rows, ["NAME", &format!("{addr}/stored/layered")], "{found}");
    let all = ctl(&berth, &["-o", "json", "search", &addr]);
    let all: Vec<String> = serde_json::from_str(&all)?;
    assert_eq!(
        all,
        [
            format!("{addr}/other/busybox"),
            format!("{addr}/stored/layered")
        ]
    );

    // Logout: the registry refuses again; a second logout has nothing to remove.
    let out = ctl(&berth, &["logout", &addr]);
    assert!(out.contains(&addr), "{out}");
    let err = fails(berth.run_ctl(&["pull", "--no-unpack", &target])?);
    assert!(err.contains("stored/layered"), "{err}");
    let err = fails(berth.run_ctl(&["logout", &addr])?);
    assert!(err.contains("not logged in"), "{err}");
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
    assert_eq!(stored["auths"], serde_json::json!({}));
    berth.stop()
}

#[test]
fn plain_http_is_refused_for_registries_not_on_loopback_or_marked_insecure() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    // Refused before any request is made: nothing leaves the host.
    for args in [
        vec!["pull", "--plain-http", "registry.example.invalid/app:1"],
        vec![
            "login",
            "registry.example.invalid",
            "-u",
            "a",
            "-p",
            "b",
            "--plain-http",
        ],
        vec!["search", "registry.example.invalid", "--plain-http"],
    ] {
        let err = fails(berth.run_ctl(&args)?);
        assert!(err.contains("insecure_registries"), "{args:?}: {err}");
    }
    berth.stop()
}

// ---------------------------------------------------------------------------------------------
// Registry faults, served by a tiny HTTP server on 127.0.0.1
// ---------------------------------------------------------------------------------------------

/// What the fault server answers to one request.
enum Reply {
    /// A complete response.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Headers announcing `announced` bytes, then `body`, then the connection closes.
    Truncated { announced: usize, body: Vec<u8> },
    /// Headers announcing `announced` bytes, then `body`, then silence until the server stops.
    Stall { announced: usize, body: Vec<u8> },
}

impl Reply {
    fn status(status: u16) -> Reply {
        let body = match status {
            401 => br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
            403 => br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#.to_vec(),
            404 => br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_vec(),
            429 => br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#.to_vec(),
            _ => b"internal error".to_vec(),
        };
        Reply::Full {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body,
        }
    }

    fn json(media_type: &str, body: Vec<u8>) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![("Content-Type".into(), media_type.into())],
            body,
        }
    }

    fn blob(body: Vec<u8>) -> Reply {
        Reply::json("application/octet-stream", body)
    }
}

type Handler = dyn Fn(&str, &str) -> Reply + Send + Sync;

/// A registry that answers what a test decides, on a loopback port; `/v2/` always answers 200.
struct FaultRegistry {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultRegistry {
    fn start(handler: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> FaultRegistry {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let handler: std::sync::Arc<Handler> = std::sync::Arc::new(handler);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut workers = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (handler, flag) = (handler.clone(), flag.clone());
                        workers.push(std::thread::spawn(move || serve(stream, &*handler, &flag)));
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        FaultRegistry {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}", self.addr)
    }
}

impl Drop for FaultRegistry {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves one connection (one request: every reply closes the connection).
fn serve(mut stream: std::net::TcpStream, handler: &Handler, stop: &std::sync::atomic::AtomicBool) {
    use std::io::{Read, Write};
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let reply = if path == "/v2/" {
        Reply::json("application/json", b"{}".to_vec())
    } else {
        handler(method, path)
    };
    let head_only = method == "HEAD";
    let write_head = |stream: &mut std::net::TcpStream,
                      status: u16,
                      headers: &[(String, String)],
                      len: usize| {
        let mut text =
            format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nConnection: close\r\n");
        for (k, v) in headers {
            text += &format!("{k}: {v}\r\n");
        }
        text += "\r\n";
        stream.write_all(text.as_bytes())
    };
    let _ = match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => write_head(&mut stream, status, &headers, body.len()).and_then(|()| {
            if head_only {
                Ok(())
            } else {
                stream.write_all(&body)
            }
        }),
        Reply::Truncated { announced, body } => {
            write_head(&mut stream, 200, &[], announced).and_then(|()| stream.write_all(&body))
        }
        Reply::Stall { announced, body } => {
            let r =
                write_head(&mut stream, 200, &[], announced).and_then(|()| stream.write_all(&body));
            let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < until
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r
        }
    };
    let _ = stream.flush();
}

/// The busybox fixture's manifest, config and layer, for the fault server to serve.
struct Served {
    manifest: Vec<u8>,
    manifest_digest: String,
    config: Vec<u8>,
    config_digest: String,
    layer: Vec<u8>,
    layer_digest: String,
}

fn served(layout: &ImageLayout) -> Served {
    let image = layout.image(BUSYBOX_TAG);
    let read = |d: &str| std::fs::read(layout.blob_path(d)).unwrap();
    Served {
        manifest: read(&image.manifest.digest),
        manifest_digest: image.manifest.digest.clone(),
        config: read(&image.config.digest),
        config_digest: image.config.digest.clone(),
        layer: read(&image.layers[0].descriptor.digest),
        layer_digest: image.layers[0].descriptor.digest.clone(),
    }
}

/// Pulls `reference` and checks that it fails with `code` and a message containing `says`,
/// recording no image and committing no blob of the image but the `allowed` ones.
fn pull_fails(
    berth: &Berth,
    rt: &tokio::runtime::Runtime,
    reference: &str,
    code: tonic::Code,
    says: &str,
    allowed: &[&str],
) {
    let started = std::time::Instant::now();
    let e = rt
        .block_on(async { pull(connect(berth).await, reference, None).await })
        .1
        .expect_err(reference);
    assert_eq!(e.code(), code, "{reference}: {e}");
    assert!(e.message().contains(says), "{reference}: {e}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "bounded"
    );
    let images = ctl(berth, &["images", "-q"]);
    assert!(images.trim().is_empty(), "no image recorded: {images}");
    let content = ctl(berth, &["content", "ls", "-q"]);
    for blob in content.lines() {
        assert!(allowed.contains(&blob), "{reference}: {blob} was committed");
    }
}

#[test]
fn registry_faults_fail_pulls_cleanly_with_precise_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = images::busybox_layout(dir.path())?;
    let s = std::sync::Arc::new(served(&layout));
    let options = berth_tests::Options {
        config: Some("[images]\nread_timeout = 2\n".into()),
        ..Default::default()
    };
    let berth = Berth::start_with(Mode::AllInOne, options)?;
    let rt = runtime();
    let manifest_type = images::MEDIA_TYPE_MANIFEST;

    // Each repository of the fault server is one fault.
    let srv = s.clone();
    let registry = FaultRegistry::start(move |_, path| {
        let s = &srv;
        let parts: Vec<&str> = path.trim_start_matches("/v2/").split('/').collect();
        let (repo, kind, name) = match parts[..] {
            [repo, kind, name] => (repo, kind, name),
            _ => return Reply::status(404),
        };
        let good_manifest = || Reply::json(manifest_type, s.manifest.clone());
        let blob = |name: &str| {
            if name == s.config_digest {
                Reply::blob(s.config.clone())
            } else if name == s.layer_digest {
                Reply::blob(s.layer.clone())
            } else {
                Reply::status(404)
            }
        };
        match (repo, kind) {
            ("s401" | "s403" | "s404" | "s429" | "s500", "manifests") => {
                Reply::status(repo[1..].parse().unwrap())
            }
            (_, "manifests") if repo == "liar" => {
                // An image manifest that calls itself an index.
                let text = String::from_utf8(s.manifest.clone()).unwrap();
                let lie = text.replace(manifest_type, images::MEDIA_TYPE_INDEX);
                assert_ne!(lie, text);
                Reply::json(images::MEDIA_TYPE_INDEX, lie.into_bytes())
            }
            (_, "manifests") if repo == "huge" => {
                let mut body = s.manifest.clone();
                body.pop(); // the closing brace
                body.extend_from_slice(b", \"annotations\": {\"pad\": \"");
                body.extend(std::iter::repeat_n(b'x', 5 * MIB));
                body.extend_from_slice(b"\"}}");
                Reply::json(manifest_type, body)
            }
            (_, "manifests") => good_manifest(),
            ("baddigest", "blobs") if name == s.layer_digest => {
                let mut wrong = s.layer.clone();
                let last = wrong.len() - 1;
                wrong[last] ^= 0xff;
                Reply::blob(wrong)
            }
            ("badsize", "blobs") if name == s.layer_digest => {
                let mut longer = s.layer.clone();
                longer.extend_from_slice(b"trailing bytes");
                Reply::blob(longer)
            }
            ("truncated", "blobs") if name == s.layer_digest => Reply::Truncated {
                announced: s.layer.len(),
                body: s.layer[..s.layer.len() / 2].to_vec(),
            },
            ("stall", "blobs") if name == s.layer_digest => Reply::Stall {
                announced: s.layer.len(),
                body: s.layer[..s.layer.len() / 3].to_vec(),
            },
            (_, "blobs") => blob(name),
            _ => Reply::status(404),
        }
    });

    use tonic::Code;
    let config = s.config_digest.as_str();
    let fault = |repo: &str, code, says: &str, allowed: &[&str]| {
        pull_fails(
            &berth,
            &rt,
            &registry.reference(&format!("{repo}:1")),
            code,
            says,
            allowed,
        );
    };
    for (repo, code, says) in [
        ("s401", Code::Unauthenticated, "s401"),
        ("s403", Code::PermissionDenied, "s403"),
        ("s404", Code::NotFound, "s404"),
        ("s429", Code::Unavailable, "s429"),
        ("s500", Code::Unavailable, "s500"),
        (
            "liar",
            Code::FailedPrecondition,
            "does not match its content",
        ),
        ("huge", Code::FailedPrecondition, "exceeds the limit"),
    ] {
        fault(repo, code, says, &[]);
    }
    // Blob faults: the config may be committed (it is correct), never the layer.
    for (repo, code, says) in [
        ("baddigest", Code::FailedPrecondition, "digest"),
        ("badsize", Code::FailedPrecondition, "size"),
        ("truncated", Code::Unavailable, &s.layer_digest[..]),
        ("stall", Code::Unavailable, &s.layer_digest[..]),
    ] {
        fault(repo, code, says, &[config]);
    }
    // The same image from a well-behaved repository completes, resuming what was left.
    let image = rt
        .block_on(async { pull(connect(&berth).await, &registry.reference("good:1"), None).await })
        .1;
    assert_eq!(
        image.expect("good pull").target.unwrap().digest,
        s.manifest_digest
    );
    drop(registry);
    drop(rt);
    berth.stop()
}

#[test]
fn pulls_go_through_configured_mirrors_first_and_skip_failing_ones() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = images::busybox_layout(dir.path())?;
    let mirror = Registry::start()?;
    mirror.push_layout(dir.path(), BUSYBOX_TAG, "library/app:1")?;
    let origin = Registry::start()?; // holds nothing: only the mirror can serve the image
    let dead = format!(
        "127.0.0.1:{}",
        berth_tests::fixtures::registry::free_port()?
    );
    let options = berth_tests::Options {
        config: Some(format!(
            "[images.mirrors]\n\"{}\" = [\"{dead}\", \"{}\"]\n",
            origin.addr(),
            mirror.addr()
        )),
        ..Default::default()
    };
    let berth = Berth::start_with(Mode::AllInOne, options)?;
    let reference = format!("{}/library/app:1", origin.addr());
    let out = ctl(&berth, &["pull", "--no-unpack", &reference]);
    let manifest = &layout.image(BUSYBOX_TAG).manifest.digest;
    assert!(out.contains(&format!("Digest: {manifest}")), "{out}");
    // Recorded under the name asked for, not the mirror's.
    assert_eq!(ctl(&berth, &["images", "-q"]).lines().count(), 1);
    ctl(&berth, &["image", "inspect", &reference]);
    // Without the image anywhere, the origin's answer is the error.
    let err = fails(berth.run_ctl(&["pull", &format!("{}/library/none:1", origin.addr())])?);
    assert!(err.contains(&origin.addr()), "{err}");
    berth.stop()
}

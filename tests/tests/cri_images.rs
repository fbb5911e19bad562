//! End-to-end tests of the CRI ImageService: pulls from real registries on loopback (one of
//! them with basic auth, one serving as the configured mirror of `registry.k8s.io`), image
//! status, list and stream with filters, removal (idempotent), ImageFsInfo, and bad references.

use std::path::Path;

use base64::Engine as _;
use berth_api::runtime::v1 as cri;
use berth_tests::Mode;
use berth_tests::cri::{BUSYBOX_IMAGE, CriBerth};
use berth_tests::fixtures::images::{self, ImageLayout, LayoutWriter};
use berth_tests::fixtures::registry::Registry;
use serde_json::{Value, json};
use tonic::Code;

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

/// A layout with the busybox layer under tag `user` whose config runs as `user`.
fn user_layout(dir: &Path, user: &str) -> anyhow::Result<ImageLayout> {
    let mut config = images::fixture_config();
    config["User"] = json!(user);
    let mut w = LayoutWriter::open(dir)?;
    w.add_image("user", &[images::busybox_layer()?], config)?;
    w.finish()
}

fn pull(
    env: &CriBerth,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    let mut client = env.images().unwrap();
    env.block_on(client.pull_image(cri::PullImageRequest {
        image: spec(image),
        auth,
        sandbox_config: None,
    }))
    .map(|r| r.into_inner().image_ref)
}

fn status(
    env: &CriBerth,
    image: &str,
    verbose: bool,
) -> Result<cri::ImageStatusResponse, tonic::Status> {
    let mut client = env.images().unwrap();
    env.block_on(client.image_status(cri::ImageStatusRequest {
        image: spec(image),
        verbose,
    }))
    .map(|r| r.into_inner())
}

fn remove(env: &CriBerth, image: &str) -> Result<(), tonic::Status> {
    let mut client = env.images().unwrap();
    env.block_on(client.remove_image(cri::RemoveImageRequest { image: spec(image) }))
        .map(|_| ())
}

fn list(env: &CriBerth, filter: Option<&str>) -> Vec<cri::Image> {
    let mut client = env.images().unwrap();
    let filter = filter.map(|f| cri::ImageFilter { image: spec(f) });
    env.block_on(client.list_images(cri::ListImagesRequest { filter }))
        .unwrap()
        .into_inner()
        .images
}

/// Pulls by name from a plain registry and from `registry.k8s.io` through its configured
/// loopback mirror; status by name, id and repo digest (verbose info too), list and stream with
/// and without filters, ImageFsInfo, removal, and every bad reference.
#[test]
fn pull_status_list_remove() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = images::build_all(&dir.path().join("layout")).unwrap();
    registry
        .push_layout(&layout.path, images::BUSYBOX_TAG, "library/busybox:1.0")
        .unwrap();
    registry
        .push_layout(&layout.path, images::LAYERED_TAG, "pause:3.9")
        .unwrap();
    let addr = registry.addr();
    let mirrors = format!("[images.mirrors]\n\"registry.k8s.io\" = [\"{addr}\"]\n");
    let env = CriBerth::start(Mode::AllInOne, "10.208.0.0", &mirrors).unwrap();
    let busybox = layout.image(images::BUSYBOX_TAG);
    let layered = layout.image(images::LAYERED_TAG);

    // A plain pull: the returned ref is the image id, the config digest.
    let name = format!("{addr}/library/busybox:1.0");
    assert_eq!(pull(&env, &name, None).unwrap(), busybox.config.digest);

    // registry.k8s.io comes from the loopback mirror (nothing leaves the host).
    let pause = "registry.k8s.io/pause:3.9";
    assert_eq!(pull(&env, pause, None).unwrap(), layered.config.digest);
    assert!(
        registry.log_tail(200).contains("/v2/pause/manifests/3.9"),
        "the mirror did not serve the pull:\n{}",
        registry.log_tail(30)
    );

    // Status by name, by id, by bare hex id and by repo digest all find the same image.
    let by_name = status(&env, &name, false)
        .unwrap()
        .image
        .expect("image by name");
    assert_eq!(by_name.id, busybox.config.digest);
    assert!(by_name.repo_tags.contains(&name), "{by_name:?}");
    // The busybox image loaded by the helper has the same config: one image, every name.
    assert!(
        by_name.repo_tags.contains(&BUSYBOX_IMAGE.to_owned()),
        "{by_name:?}"
    );
    let repo_digest = format!("{addr}/library/busybox@{}", busybox.manifest.digest);
    assert!(by_name.repo_digests.contains(&repo_digest), "{by_name:?}");
    assert_eq!(by_name.uid, None);
    assert_eq!(by_name.username, "");
    assert!(by_name.size > 0 && !by_name.pinned);
    let hex = busybox.config.digest.trim_start_matches("sha256:");
    for r in [
        busybox.config.digest.as_str(),
        hex,
        repo_digest.as_str(),
        "busybox",
    ] {
        let found = status(&env, r, false).unwrap().image;
        assert_eq!(
            found.map(|i| i.id),
            Some(busybox.config.digest.clone()),
            "{r}"
        );
    }
    let pause_status = status(&env, pause, true).unwrap();
    let info: Value = serde_json::from_str(&pause_status.info["info"]).unwrap();
    assert_eq!(info["id"], layered.config.digest);
    assert_eq!(info["manifest"], layered.manifest.digest);
    assert_eq!(
        info["imageSpec"]["rootfs"]["diff_ids"],
        json!(layered.diff_ids())
    );
    assert!(info["chainID"].as_str().unwrap().starts_with("sha256:"));
    assert!(status(&env, &name, false).unwrap().info.is_empty());

    // Unknown images: no image, no error.
    let unknown = status(&env, "registry.k8s.io/nothing:here", false).unwrap();
    assert!(unknown.image.is_none());

    // List and stream, with and without a filter.
    let all = list(&env, None);
    let ids: Vec<&str> = all.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{all:?}");
    assert!(
        ids.contains(&busybox.config.digest.as_str())
            && ids.contains(&layered.config.digest.as_str())
    );
    let only = list(&env, Some(pause));
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].id, layered.config.digest);
    assert_eq!(only[0].repo_tags, vec![pause.to_owned()]);
    assert!(list(&env, Some("registry.k8s.io/nothing:here")).is_empty());
    let mut client = env.images().unwrap();
    let streamed: Vec<cri::Image> = env.block_on(async {
        let mut s = client
            .stream_images(cri::StreamImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(page) = s.message().await.unwrap() {
            out.extend(page.images);
        }
        out
    });
    assert_eq!(streamed, all);

    // ImageFsInfo: the snapshotter's directory and the content store, both in use.
    let fs = env
        .block_on(client.image_fs_info(cri::ImageFsInfoRequest {}))
        .unwrap()
        .into_inner();
    let snapshots = &fs.image_filesystems[0];
    let mountpoint = &snapshots.fs_id.as_ref().unwrap().mountpoint;
    assert!(mountpoint.ends_with("snapshots/overlay"), "{mountpoint}");
    assert!(Path::new(mountpoint).is_dir());
    assert!(snapshots.used_bytes.unwrap().value > 1 << 20, "{fs:?}");
    assert!(snapshots.inodes_used.unwrap().value > 10, "{fs:?}");
    let content = &fs.image_filesystems[1];
    let content_dir = &content.fs_id.as_ref().unwrap().mountpoint;
    assert!(content_dir.ends_with("images/content"), "{content_dir}");
    assert!(Path::new(content_dir).is_dir());
    let blobs: u64 = [busybox, layered]
        .iter()
        .flat_map(|i| {
            i.layers
                .iter()
                .map(|l| (&l.descriptor.digest, l.descriptor.size))
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .values()
        .sum();
    assert!(content.used_bytes.unwrap().value >= blobs, "{fs:?}");
    assert_eq!(fs.container_filesystems.len(), 1);
    assert!(snapshots.timestamp > 0);

    // Bad references: InvalidArgument naming the reference.
    for bad in ["", "UPPER/Case:1", "a b", "registry.k8s.io/pause:bad:tag"] {
        let e = pull(&env, bad, None).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "pull {bad:?}: {e:?}");
        let e = status(&env, bad, false).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "status {bad:?}: {e:?}");
        let e = remove(&env, bad).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "remove {bad:?}: {e:?}");
    }
    let e = pull(&env, &busybox.config.digest, None).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // A name the registry does not have.
    let e = pull(&env, &format!("{addr}/library/missing:1"), None).unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("missing"), "{e:?}");

    // Remove by name: every name of the image goes; again and unknown ones are no-ops.
    remove(&env, pause).unwrap();
    assert!(status(&env, pause, false).unwrap().image.is_none());
    assert!(
        status(&env, &layered.config.digest, false)
            .unwrap()
            .image
            .is_none()
    );
    remove(&env, pause).unwrap();
    remove(&env, "registry.k8s.io/nothing:here").unwrap();
    remove(&env, &busybox.config.digest).unwrap();
    assert!(list(&env, None).is_empty());
    env.stop().unwrap();
}

/// A registry with basic auth: refused without credentials, pulled with username/password and
/// with the `auth` field (base64 of user:password); the image config's User gives uid or name.
#[test]
fn pull_with_auth() {
    let registry = Registry::start_with_auth("cri", "s3cret").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let numeric = user_layout(&dir.path().join("numeric"), "1234:5").unwrap();
    let named = user_layout(&dir.path().join("named"), "nobody").unwrap();
    registry
        .push_layout(&numeric.path, "user", "app/numeric:v1")
        .unwrap();
    registry
        .push_layout(&named.path, "user", "app/named:v1")
        .unwrap();
    let env = CriBerth::start(Mode::AllInOne, "10.209.0.0", "").unwrap();
    let addr = registry.addr();
    let numeric_ref = format!("{addr}/app/numeric:v1");
    let named_ref = format!("{addr}/app/named:v1");

    let e = pull(&env, &numeric_ref, None).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let wrong = cri::AuthConfig {
        username: "cri".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let e = pull(&env, &numeric_ref, Some(wrong)).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(status(&env, &numeric_ref, false).unwrap().image.is_none());

    let password = cri::AuthConfig {
        username: "cri".into(),
        password: "s3cret".into(),
        server_address: addr.clone(),
        ..Default::default()
    };
    let id = pull(&env, &numeric_ref, Some(password)).unwrap();
    assert_eq!(id, numeric.image("user").config.digest);
    let image = status(&env, &numeric_ref, false).unwrap().image.unwrap();
    assert_eq!(image.uid, Some(cri::Int64Value { value: 1234 }));
    assert_eq!(image.username, "");

    let encoded = base64::engine::general_purpose::STANDARD.encode("cri:s3cret");
    let auth = cri::AuthConfig {
        auth: encoded,
        ..Default::default()
    };
    let id = pull(&env, &named_ref, Some(auth)).unwrap();
    assert_eq!(id, named.image("user").config.digest);
    let image = status(&env, &id, false).unwrap().image.unwrap();
    assert_eq!((image.uid, image.username.as_str()), (None, "nobody"));

    let garbage = cri::AuthConfig {
        auth: "not base64!".into(),
        ..Default::default()
    };
    let e = pull(&env, &named_ref, Some(garbage)).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    env.stop().unwrap();
}

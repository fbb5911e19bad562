//! End-to-end tests of what a container takes from its image's filesystem at task Create:
//! volumes (the berth.volumes.v1 service on tasks.sock, and volume mounts filled from the image)
//! and users given by name. Containers run through the tasks API with specs made by
//! `berth_tasks::spec::build`, on real shims over runc on busybox snapshots.
//!
//! Each test runs its own berth with its own cgroup parent (`berth-test-vol-<tag>`, removed
//! when the test stops).

use anyhow::{Context, Result, ensure};
use berth_api::berth::containers::v1::{self as cpb, containers_client::ContainersClient};
use berth_api::berth::snapshots::v1::{self as spb, snapshots_client::SnapshotsClient};
use berth_api::berth::tasks::v1::{self as tpb, tasks_client::TasksClient};
use berth_api::berth::volumes::v1::{self as vpb, volumes_client::VolumesClient};
use berth_api::client::{self, Channel};
use berth_tasks::spec::{self, MountSpec, RunOptions};
use berth_tests::cleanup::{clean_up_instance, remove_cgroup_parent};
use berth_tests::fixtures::images::{self, LayerBuilder};
use berth_tests::snapshots_api::commit_layer;
use berth_tests::{Berth, Mode, Options};
use oci_spec::image::{ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder};
use tonic::Code;

const NS: &str = "default";
/// The snapshot of the test image: busybox plus `/srv/data` (and a user `app`).
const IMAGE: &str = "volumes-image";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn rand_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("/dev/urandom");
    hex::encode(b)
}

/// A berth of one test, with its own cgroup parent.
struct Env {
    berth: Option<Berth>,
    cgroup_parent: String,
}

impl Env {
    fn start() -> Result<Env> {
        let cgroup_parent = format!("berth-test-vol-{}", rand_hex::<3>());
        let options = Options {
            config: Some(format!("[tasks]\ncgroup_parent = \"{cgroup_parent}\"\n")),
            ..Default::default()
        };
        Ok(Env {
            berth: Some(Berth::start_with(Mode::AllInOne, options)?),
            cgroup_parent,
        })
    }

    fn berth(&self) -> &Berth {
        self.berth.as_ref().expect("berth running")
    }

    async fn clients(&self) -> Result<Clients> {
        let tasks = client::connect(&self.berth().socket("tasks"), NS).await?;
        let snapshots = client::connect(&self.berth().socket("snapshots"), NS).await?;
        Ok(Clients {
            containers: ContainersClient::new(tasks.clone()),
            tasks: TasksClient::new(tasks.clone()),
            volumes: VolumesClient::new(tasks),
            snapshots: SnapshotsClient::new(snapshots),
        })
    }

    /// Stops berth (with the harness's leak check) and removes the cgroup parent, which must
    /// hold no container cgroup any more.
    fn stop(mut self) -> Result<()> {
        self.berth.take().expect("berth running").stop()?;
        remove_cgroup_parent(&self.cgroup_parent)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(berth) = self.berth.take() {
            // The test failed: remove what it left.
            clean_up_instance(berth, &self.cgroup_parent, None);
        }
    }
}

struct Clients {
    containers: ContainersClient<Channel>,
    tasks: TasksClient<Channel>,
    volumes: VolumesClient<Channel>,
    snapshots: SnapshotsClient<Channel>,
}

/// The test image as snapshots, and its configuration (with an image VOLUME `/cache`).
async fn image(c: &mut Clients) -> Result<ImageConfiguration> {
    commit_layer(
        &mut c.snapshots,
        "volumes-base",
        "",
        &images::busybox_layer()?.tar,
    )
    .await?;
    let data = LayerBuilder::new("data")
        .dir("srv", 0o755)
        .dir("srv/data", 0o750)
        .file("srv/data/hello", 0o640, "hello from the image\n")
        .dir("srv/data/sub", 0o755)
        .file("srv/data/sub/deep", 0o600, "deep\n")
        .symlink("srv/data/link", "/etc/passwd")
        .dir("cache", 0o755)
        .file("cache/seed", 0o644, "seed\n")
        .file(
            "etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/tmp:/bin/sh\n",
        )
        .file(
            "etc/group",
            0o644,
            "root:x:0:\nstaff:x:50:app\naudio:x:29:\napp:x:1000:\n",
        )
        .build()?;
    commit_layer(&mut c.snapshots, IMAGE, "volumes-base", &data.tar).await?;
    Ok(ImageConfigurationBuilder::default()
        .config(
            ConfigBuilder::default()
                .env(vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string()])
                .cmd(vec!["sh".to_string()])
                .volumes(vec!["/cache".to_string()])
                .build()?,
        )
        .build()?)
}

fn volume(name: &str, target: &str) -> MountSpec {
    MountSpec::Volume {
        name: name.into(),
        target: target.into(),
        readonly: false,
        nocopy: false,
    }
}

/// Records a container running `script` with `mounts` on a new snapshot of [`IMAGE`], runs it
/// to its end and returns its exit code (the container stays, stopped).
async fn run(
    c: &mut Clients,
    image: &ImageConfiguration,
    id: &str,
    script: &str,
    mounts: Vec<MountSpec>,
) -> Result<u32> {
    let opts = RunOptions {
        mounts,
        ..Default::default()
    };
    run_with(c, image, id, script, opts).await
}

/// [`run`] with any options.
async fn run_with(
    c: &mut Clients,
    image: &ImageConfiguration,
    id: &str,
    script: &str,
    opts: RunOptions,
) -> Result<u32> {
    let opts = RunOptions {
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        ..opts
    };
    let spec = spec::build(image, &opts)?;
    c.snapshots
        .prepare(spb::PrepareSnapshotRequest {
            key: id.into(),
            parent: IMAGE.into(),
            ..Default::default()
        })
        .await?;
    c.containers
        .create(cpb::CreateContainerRequest {
            container: Some(cpb::Container {
                id: id.into(),
                snapshot_key: id.into(),
                spec: serde_json::to_vec(&spec)?,
                ..Default::default()
            }),
        })
        .await?;
    c.tasks
        .create(tpb::CreateTaskRequest {
            container_id: id.into(),
            ..Default::default()
        })
        .await?;
    c.tasks
        .start(tpb::StartRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await?;
    let exit = c
        .tasks
        .wait(tpb::WaitRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await?
        .into_inner()
        .exit_status
        .context("exit status")?;
    Ok(exit.exit_code)
}

/// Deletes the (stopped) task and the container.
async fn remove(c: &mut Clients, id: &str) -> Result<()> {
    c.tasks
        .delete(tpb::DeleteTaskRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await?;
    c.containers
        .delete(cpb::DeleteContainerRequest { id: id.into() })
        .await?;
    Ok(())
}

async fn inspect(c: &mut Clients, name: &str) -> Result<vpb::Volume, tonic::Status> {
    c.volumes
        .inspect(vpb::InspectVolumeRequest { name: name.into() })
        .await
        .map(|r| r.into_inner().volume.unwrap_or_default())
}

async fn remove_volume(c: &mut Clients, name: &str, force: bool) -> Result<(), tonic::Status> {
    c.volumes
        .remove(vpb::RemoveVolumeRequest {
            name: name.into(),
            force,
        })
        .await
        .map(|_| ())
}

async fn names(c: &mut Clients, filters: &[&str]) -> Result<Vec<String>> {
    let mut names: Vec<String> = c
        .volumes
        .list(vpb::ListVolumesRequest {
            filters: filters.iter().map(|s| s.to_string()).collect(),
            usage: false,
        })
        .await?
        .into_inner()
        .volumes
        .into_iter()
        .map(|v| v.name)
        .collect();
    names.sort();
    Ok(names)
}

#[test]
fn volume_service_crud_and_bad_input() -> Result<()> {
    let env = Env::start()?;
    runtime().block_on(async {
        let mut c = env.clients().await?;
        let created = c
            .volumes
            .create(vpb::CreateVolumeRequest {
                name: "web-data".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .volume
            .context("volume")?;
        assert_eq!(created.driver, "local");
        ensure!(
            std::path::Path::new(&created.mountpoint).is_dir(),
            "mountpoint {} missing",
            created.mountpoint
        );
        ensure!(
            created
                .mountpoint
                .starts_with(&*env.berth().root().to_string_lossy()),
            "mountpoint {} outside the root",
            created.mountpoint
        );
        let anon = c
            .volumes
            .create(vpb::CreateVolumeRequest::default())
            .await?
            .into_inner()
            .volume
            .context("volume")?;
        assert_eq!(anon.name.len(), 64);
        assert_eq!(names(&mut c, &["labels.app==web"]).await?, ["web-data"]);
        assert_eq!(names(&mut c, &["dangling==true"]).await?.len(), 2);

        for (req, code) in [
            (
                vpb::CreateVolumeRequest {
                    name: "-bad".into(),
                    ..Default::default()
                },
                Code::InvalidArgument,
            ),
            (
                vpb::CreateVolumeRequest {
                    name: "web-data".into(),
                    driver: "nfs".into(),
                    ..Default::default()
                },
                Code::InvalidArgument,
            ),
        ] {
            let got = c.volumes.create(req.clone()).await.unwrap_err();
            assert_eq!(got.code(), code, "{req:?}: {got:?}");
        }
        let bad_filter = c
            .volumes
            .list(vpb::ListVolumesRequest {
                filters: vec!["labels.\"x==".into()],
                usage: false,
            })
            .await
            .unwrap_err();
        assert_eq!(bad_filter.code(), Code::InvalidArgument);
        assert_eq!(
            inspect(&mut c, "nope").await.unwrap_err().code(),
            Code::NotFound
        );

        // Prune: the anonymous one by default, the named one with all.
        let pruned = c
            .volumes
            .prune(vpb::PruneVolumesRequest::default())
            .await?
            .into_inner();
        assert_eq!(pruned.names, std::slice::from_ref(&anon.name));
        remove_volume(&mut c, "web-data", false).await?;
        ensure!(
            !std::path::Path::new(&created.mountpoint).exists(),
            "data of a removed volume left"
        );
        assert!(names(&mut c, &[]).await?.is_empty());
        anyhow::Ok(())
    })?;
    env.stop()
}

#[test]
fn named_volumes_outlive_containers_and_start_with_the_image_content() -> Result<()> {
    let env = Env::start()?;
    runtime().block_on(async {
        let mut c = env.clients().await?;
        let image = image(&mut c).await?;
        c.volumes
            .create(vpb::CreateVolumeRequest {
                name: "keep".into(),
                ..Default::default()
            })
            .await?;

        // `filled` does not exist yet: created at task Create and filled from /srv/data.
        let first = rand_hex::<32>();
        let code = run(
            &mut c,
            &image,
            &first,
            "cat /srv/data/hello > /keep/copied && echo persisted > /keep/note \
             && test -f /srv/data/sub/deep && test -L /srv/data/link && test -f /cache/seed",
            vec![volume("keep", "/keep"), volume("filled", "/srv/data")],
        )
        .await?;
        assert_eq!(code, 0, "first container");

        let filled = inspect(&mut c, "filled").await?;
        let data = std::path::Path::new(&filled.mountpoint);
        assert_eq!(
            std::fs::read_to_string(data.join("hello"))?,
            "hello from the image\n"
        );
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(data)?.permissions())
                & 0o7777,
            0o750,
            "the volume takes the image directory's mode"
        );
        assert_eq!(
            std::fs::read_link(data.join("link"))?,
            std::path::Path::new("/etc/passwd")
        );
        assert_eq!(filled.usage.unwrap_or_default().ref_count, 1);

        // In use: rm fails naming the container, and nothing is removed.
        let err = remove_volume(&mut c, "keep", false).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains(&first), "{}", err.message());
        inspect(&mut c, "keep").await?;
        let pruned = c
            .volumes
            .prune(vpb::PruneVolumesRequest {
                all: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(
            pruned.names.is_empty(),
            "pruned in-use volumes: {:?}",
            pruned.names
        );

        remove(&mut c, &first).await?;
        assert_eq!(
            inspect(&mut c, "keep")
                .await?
                .usage
                .unwrap_or_default()
                .ref_count,
            0
        );

        // A second container sees what the first wrote, here read-only; a `nocopy` volume
        // over an image directory starts empty.
        let second = rand_hex::<32>();
        let code = run(
            &mut c,
            &image,
            &second,
            "grep -q persisted /data/note && grep -q 'hello from the image' /data/copied \
             && ! touch /data/new 2>/dev/null && test -z \"$(ls -A /srv/data)\"",
            vec![
                MountSpec::Volume {
                    name: "keep".into(),
                    target: "/data".into(),
                    readonly: true,
                    nocopy: false,
                },
                MountSpec::Volume {
                    name: "empty".into(),
                    target: "/srv/data".into(),
                    readonly: false,
                    nocopy: true,
                },
            ],
        )
        .await?;
        assert_eq!(
            code, 0,
            "the second container must see the first one's data, read-only"
        );
        remove(&mut c, &second).await?;

        for name in ["keep", "filled", "empty"] {
            remove_volume(&mut c, name, false).await?;
        }
        // Whatever anonymous /cache volumes the containers left are unused now.
        c.volumes.prune(vpb::PruneVolumesRequest::default()).await?;
        assert!(names(&mut c, &[]).await?.is_empty());
        anyhow::Ok(())
    })?;
    env.stop()
}

#[test]
fn users_named_in_the_image_are_resolved_at_create() -> Result<()> {
    let env = Env::start()?;
    runtime().block_on(async {
        let mut c = env.clients().await?;
        let image = image(&mut c).await?;
        for (user, groups, expect) in [
            // uid, gid, then every group id sorted.
            ("app", vec![], "1000 1000 50 1000"),
            ("app:audio", vec!["staff".to_string(), "7".to_string()], "1000 29 7 29 50"),
            ("1000", vec![], "1000 1000 50 1000"),
        ] {
            let id = rand_hex::<32>();
            let opts = RunOptions {
                user: Some(user.into()),
                group_add: groups,
                ..Default::default()
            };
            let script = format!(
                "test \"$(id -u) $(id -g) $(id -G | tr ' ' '\\n' | sort -n | tr '\\n' ' ')\" = '{expect} '"
            );
            let code = run_with(&mut c, &image, &id, &script, opts).await?;
            assert_eq!(code, 0, "user {user}: expected uid gid groups {expect}");
            remove(&mut c, &id).await?;
        }

        // A user the image does not have: Create fails, naming it, and leaves no task.
        let id = rand_hex::<32>();
        let opts = RunOptions {
            user: Some("ghost".into()),
            ..Default::default()
        };
        let err = run_with(&mut c, &image, &id, "true", opts)
            .await
            .unwrap_err();
        let status = err.downcast_ref::<tonic::Status>().context("a gRPC status")?;
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("ghost"), "{}", status.message());
        let task = c
            .tasks
            .get(tpb::GetTaskRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            })
            .await;
        assert_eq!(task.unwrap_err().code(), Code::NotFound);
        c.containers
            .delete(cpb::DeleteContainerRequest { id })
            .await?;
        anyhow::Ok(())
    })?;
    env.stop()
}

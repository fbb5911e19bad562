//! Connections to the berth services a build (or a commit) talks to, and the lease that keeps
//! what it writes alive until the image records hold it.

use std::collections::HashMap;
use std::path::Path;

use berth_api::berth::containers::v1::containers_client::ContainersClient;
use berth_api::berth::content::v1::content_client::ContentClient;
use berth_api::berth::images::v1::images_client::ImagesClient;
use berth_api::berth::leases::v1 as lpb;
use berth_api::berth::leases::v1::leases_client::LeasesClient;
use berth_api::berth::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::berth::tasks::v1::tasks_client::TasksClient;
use berth_api::client::Channel;
use berth_api::{Service, client};

use crate::error::{Error, Result};

/// Clients of the images (content, images, leases), snapshots and tasks (containers, tasks)
/// services, all in one namespace. Cheap to clone.
#[derive(Clone)]
pub struct Clients {
    /// The content store.
    pub content: ContentClient<Channel>,
    /// Image records, pull, unpack.
    pub images: ImagesClient<Channel>,
    /// Leases of the content store.
    pub leases: LeasesClient<Channel>,
    /// Snapshots.
    pub snapshots: SnapshotsClient<Channel>,
    /// Container records.
    pub containers: ContainersClient<Channel>,
    /// Tasks.
    pub tasks: TasksClient<Channel>,
}

impl Clients {
    /// Connects to every service; `socket` says where each one listens.
    pub async fn connect(
        socket: impl Fn(Service) -> std::path::PathBuf,
        namespace: &str,
    ) -> Result<Clients> {
        let open = |service: Service| {
            let path = socket(service);
            async move {
                client::connect(&path, namespace)
                    .await
                    .map_err(|e| Error::Rpc {
                        op: format!("{service} service is not reachable"),
                        status: tonic::Status::unavailable(e.to_string()),
                    })
            }
        };
        let images = open(Service::Images).await?;
        let snapshots = open(Service::Snapshots).await?;
        let tasks = open(Service::Tasks).await?;
        Ok(Clients {
            content: ContentClient::new(images.clone()),
            images: ImagesClient::new(images.clone()),
            leases: LeasesClient::new(images),
            snapshots: SnapshotsClient::new(snapshots),
            containers: ContainersClient::new(tasks.clone()),
            tasks: TasksClient::new(tasks),
        })
    }

    /// Connects to services all listening under one state directory.
    pub async fn connect_state(state_dir: &Path, namespace: &str) -> Result<Clients> {
        Clients::connect(|s| s.socket(state_dir), namespace).await
    }
}

/// A lease of the content store: content written under it survives garbage collection until
/// it is released. Release it explicitly (dropping it leaves it to expire).
pub struct Lease {
    /// The lease id, for the `berth-lease` metadata.
    pub id: String,
}

/// How long a lease lives if its holder dies without releasing it.
const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

impl Lease {
    /// Creates a lease that expires in an hour unless released first.
    pub async fn create(clients: &mut Clients, purpose: &str) -> Result<Lease> {
        let expires = std::time::SystemTime::now() + LEASE_TTL;
        let lease = clients
            .leases
            .create(lpb::CreateRequest {
                id: String::new(),
                labels: HashMap::from([("berth.io/purpose".to_owned(), purpose.to_owned())]),
                expires_at: Some(prost_types::Timestamp::from(expires)),
            })
            .await
            .map_err(Error::rpc("create a lease"))?
            .into_inner()
            .lease
            .ok_or_else(|| {
                Error::BadContent("the leases service answered without a lease".into())
            })?;
        Ok(Lease { id: lease.id })
    }

    /// `request` with this lease in its metadata.
    pub fn attach<T>(&self, mut request: tonic::Request<T>) -> tonic::Request<T> {
        if let Ok(value) = self.id.parse() {
            request
                .metadata_mut()
                .insert(berth_api::namespace::LEASE_HEADER, value);
        }
        request
    }

    /// Deletes the lease: what it held is kept only if something else references it.
    pub async fn release(self, clients: &mut Clients) -> Result<()> {
        clients
            .leases
            .delete(lpb::DeleteRequest {
                id: self.id.clone(),
                sync: false,
            })
            .await
            .map_err(Error::rpc(format!("delete lease {}", self.id)))?;
        Ok(())
    }
}

//! Driving the images service over gRPC from tests: a connection to an instance's images
//! socket, and the streaming Pull and Push RPCs collected into their progress and result.

use berth_api::berth::images::v1 as pb;
use berth_api::berth::images::v1::images_client::ImagesClient;
use berth_api::berth::types::v1::Descriptor;
use berth_api::client::Channel;
use tokio_stream::StreamExt;

use crate::Berth;

/// A current-thread tokio runtime for a test's gRPC calls.
///
/// # Panics
/// If the runtime cannot be built.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A channel to `berth`'s images service, in the `default` namespace.
///
/// # Panics
/// If the service does not answer.
pub async fn connect(berth: &Berth) -> Channel {
    berth_api::client::connect(&berth.socket("images"), "default")
        .await
        .unwrap()
}

/// Registry options with basic auth `creds` (user, password), if any.
pub fn registry_options(creds: Option<(&str, &str)>) -> Option<pb::RegistryOptions> {
    Some(pb::RegistryOptions {
        auth: creds.map(|(u, p)| pb::RegistryAuth {
            username: u.into(),
            password: p.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Reads a Pull or Push stream until its result: `split` parts each message into its
/// progress and its result, if set (`missing` is the error if the stream ends without one).
async fn collect<M, T>(
    started: Result<tonic::Response<tonic::Streaming<M>>, tonic::Status>,
    split: impl Fn(M) -> (Vec<pb::Progress>, Option<T>),
    missing: &str,
) -> (Vec<pb::Progress>, Result<T, tonic::Status>) {
    let mut progress = Vec::new();
    let mut stream = match started {
        Ok(s) => s.into_inner(),
        Err(e) => return (progress, Err(e)),
    };
    while let Some(message) = stream.next().await {
        match message {
            Ok(m) => {
                let (p, result) = split(m);
                progress.extend(p);
                if let Some(result) = result {
                    return (progress, Ok(result));
                }
            }
            Err(e) => return (progress, Err(e)),
        }
    }
    (progress, Err(tonic::Status::unknown(missing)))
}

/// Pulls `reference` (no unpack) with `creds`; returns every progress message and the image.
pub async fn pull(
    channel: Channel,
    reference: &str,
    creds: Option<(&str, &str)>,
) -> (Vec<pb::Progress>, Result<pb::Image, tonic::Status>) {
    let request = pb::PullRequest {
        reference: reference.into(),
        registry: registry_options(creds),
        ..Default::default()
    };
    collect(
        ImagesClient::new(channel).pull(request).await,
        |m| (m.progress, m.image),
        "no image",
    )
    .await
}

/// Pushes the image `name` to `reference` with `creds`; returns every progress message and
/// the pushed descriptor.
pub async fn push(
    channel: Channel,
    name: &str,
    reference: &str,
    creds: Option<(&str, &str)>,
) -> (Vec<pb::Progress>, Result<Descriptor, tonic::Status>) {
    let request = pb::PushRequest {
        name: name.into(),
        reference: reference.into(),
        registry: registry_options(creds),
        ..Default::default()
    };
    collect(
        ImagesClient::new(channel).push(request).await,
        |m| (m.progress, m.pushed),
        "no descriptor",
    )
    .await
}

//! `commit`: a new image from a container's changes, as `docker commit` makes it.
//!
//! The container's changes to its image ([`changes::compare`], without the runtime's mount
//! points) become one layer on top of the image's layers, stored with the image-writing
//! helpers of [`crate::image`] under a lease; the config is the image's, updated with the
//! container's own settings (command, entrypoint, environment, working directory, labels, and
//! a user given at run time), then the `--change` instructions (parsed with
//! [`dockerfile::parse_instruction`]); a history entry records the container's command as
//! `created_by`, the message as `comment` and the author. A container with no changes adds
//! an `empty_layer` history entry and no layer. A running container is frozen meanwhile when
//! asked (and thawed whatever happens). Nothing is named before everything is stored.

use std::collections::BTreeMap;
use std::time::SystemTime;

use berth_api::berth::containers::v1::Container;
use berth_api::berth::images::v1 as ipb;
use berth_api::berth::tasks::v1 as tpb;
use berth_api::berth::types::v1::{Descriptor, TaskStatus};
use serde_json::{Value, json};

use crate::changes::{self, Exclusions};
use crate::clients::{Clients, Lease};
use crate::config;
use crate::dockerfile;
use crate::error::{Error, Result};
use crate::image::{self, ImageState};
use crate::rootfs;

/// The instructions `--change` accepts, as Docker's `commit` does.
pub const CHANGE_INSTRUCTIONS: [&str; 10] = [
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "LABEL",
    "ONBUILD",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// What to commit and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The history entry's comment (`-m`).
    pub message: String,
    /// The image's author (`-a`).
    pub author: String,
    /// Dockerfile instructions applied to the config (`-c`).
    pub changes: Vec<String>,
    /// Freeze a running container while its changes are read.
    pub pause: bool,
    /// The container's own settings, Docker's `inspect` `Config` form (`Cmd`, `Entrypoint`,
    /// `Env`, `WorkingDir`, `User`, `Labels`); null fields keep the image's.
    pub container_config: Value,
    /// Name of the new image (`repository[:tag]`); None names it by its digest.
    pub reference: Option<String>,
}

/// The committed image.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The image id: its config's digest.
    pub id: String,
    /// The image record.
    pub image: ipb::Image,
}

/// Parses the `--change` instructions, refusing the ones `commit` does not take.
pub fn parse_changes(changes: &[String]) -> Result<Vec<dockerfile::Instruction>> {
    changes
        .iter()
        .map(|text| {
            let instruction = dockerfile::parse_instruction(text, 1)
                .map_err(|e| Error::Invalid(format!("invalid change {text:?}: {}", e.message)))?;
            let keyword = instruction.kind.keyword();
            if !CHANGE_INSTRUCTIONS.contains(&keyword) {
                return Err(Error::Invalid(format!(
                    "{keyword} is not a valid change command: use one of {}",
                    CHANGE_INSTRUCTIONS.join(", ")
                )));
            }
            Ok(instruction)
        })
        .collect()
}

/// Commits `container` (see the module documentation).
pub async fn commit(
    clients: &mut Clients,
    container: &Container,
    options: &Options,
) -> Result<Committed> {
    let instructions = parse_changes(&options.changes)?;
    let mut state = base_image(clients, container).await?;
    let running = matches!(
        task_status(clients, container).await?,
        Some(TaskStatus::Running)
    );
    let pause = options.pause && running;
    let lease = Lease::create(clients, "commit").await?;
    if pause {
        let paused = clients
            .tasks
            .pause(tpb::PauseTaskRequest {
                container_id: container.id.clone(),
            })
            .await
            .map_err(Error::rpc(format!("pause container {}", container.id)));
        if let Err(e) = paused {
            let _ = lease.release(clients).await;
            return Err(e);
        }
    }
    let layer = changes_layer(clients, container, &lease).await;
    if pause {
        let resumed = clients
            .tasks
            .resume(tpb::ResumeTaskRequest {
                container_id: container.id.clone(),
            })
            .await
            .map_err(Error::rpc(format!("unpause container {}", container.id)));
        if let (Ok(_), Err(e)) = (&layer, resumed) {
            let _ = lease.release(clients).await;
            return Err(e);
        }
    }
    let result = match layer {
        Ok(layer) => {
            finish(
                clients,
                container,
                options,
                &instructions,
                &mut state,
                layer,
                &lease,
            )
            .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = lease.release(clients).await {
        tracing::warn!(error = %e, "cannot release the commit's lease");
    }
    result
}

/// The image the container was made from (a `FROM scratch` state if it was made from none).
async fn base_image(clients: &mut Clients, container: &Container) -> Result<ImageState> {
    if container.image.is_empty() && container.image_digest.is_empty() {
        return Ok(ImageState::scratch());
    }
    let target = match clients
        .images
        .get(ipb::GetImageRequest {
            name: container.image.clone(),
        })
        .await
    {
        Ok(r) => r.into_inner().image.and_then(|i| i.target),
        Err(s) if s.code() == tonic::Code::NotFound || s.code() == tonic::Code::InvalidArgument => {
            None
        }
        Err(s) => return Err(Error::rpc(format!("get image {}", container.image))(s)),
    };
    // The record may have moved on (re-tagged): the digest the container was made from wins.
    let target = match (&target, container.image_digest.is_empty()) {
        (Some(t), false) if t.digest != container.image_digest => None,
        _ => target,
    };
    let target = target.unwrap_or_else(|| Descriptor {
        digest: container.image_digest.clone(),
        ..Default::default()
    });
    if target.digest.is_empty() {
        return Err(Error::NotFound(format!(
            "image {} of container {} no longer exists",
            container.image, container.id
        )));
    }
    Ok(image::read_image(clients, &target).await?.0)
}

async fn task_status(clients: &mut Clients, container: &Container) -> Result<Option<TaskStatus>> {
    match clients
        .tasks
        .get(tpb::GetTaskRequest {
            container_id: container.id.clone(),
            exec_id: String::new(),
        })
        .await
    {
        Ok(r) => Ok(r.into_inner().task.map(|t| t.status())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(Error::rpc(format!("get container {}'s task", container.id))(s)),
    }
}

/// The container's changes as a stored layer (None when there are none).
async fn changes_layer(
    clients: &mut Clients,
    container: &Container,
    lease: &Lease,
) -> Result<Option<image::Layer>> {
    let exclusions = Exclusions::from_spec(&container.spec);
    let (reader, writer) = std::io::pipe().map_err(Error::io("create a pipe for", "the layer"))?;
    let mut reading = clients.clone();
    let produce = rootfs::with_trees(&mut reading, container, move |lower, upper| {
        changes::compare(lower, upper, writer, &exclusions)
    });
    let scratch = std::env::temp_dir();
    let store = image::store_layer(clients, reader, &scratch, Some(lease));
    let (changes, layer) = tokio::join!(produce, store);
    // The comparison's error first: a failed one leaves a truncated layer behind.
    let changes = changes?;
    let layer = layer?;
    Ok((!changes.is_empty()).then_some(layer))
}

async fn finish(
    clients: &mut Clients,
    container: &Container,
    options: &Options,
    instructions: &[dockerfile::Instruction],
    state: &mut ImageState,
    layer: Option<image::Layer>,
    lease: &Lease,
) -> Result<Committed> {
    merge_container_config(state, &options.container_config);
    for (n, instruction) in instructions.iter().enumerate() {
        let cmd_set = instructions[..n]
            .iter()
            .any(|i| matches!(i.kind, dockerfile::Kind::Cmd(_)));
        let vars: BTreeMap<String, String> = env_of(state);
        let kind = instruction.expand(&vars).map_err(|e| {
            Error::Invalid(format!(
                "invalid change {:?}: {}",
                instruction.text, e.message
            ))
        })?;
        config::apply(state, &kind, cmd_set).map_err(Error::Invalid)?;
    }
    let created = image::timestamp(SystemTime::now());
    let spec: Value = serde_json::from_slice(&container.spec).unwrap_or_default();
    let created_by = spec["process"]["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    match &layer {
        Some(layer) => state.add_layer(layer, &created, &created_by, &options.message),
        None => state.add_history(&created, &created_by, &options.message, true),
    }
    if !options.author.is_empty() {
        state.config["author"] = json!(options.author);
        if let Some(entry) = state.config["history"]
            .as_array_mut()
            .and_then(|h| h.last_mut())
        {
            entry["author"] = json!(options.author);
        }
    }
    let manifest = image::write_image(clients, state, Some(lease)).await?;
    let name = match &options.reference {
        Some(reference) => reference.clone(),
        None => format!("commit@{}", manifest.digest),
    };
    let record = image::tag(clients, &name, &manifest, Default::default()).await?;
    Ok(Committed {
        id: state.config_digest(),
        image: record,
    })
}

/// The image's `Env` as variables for the changes' substitution.
fn env_of(state: &ImageState) -> BTreeMap<String, String> {
    state.config["config"]["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (e.to_owned(), String::new()),
        })
        .collect()
}

/// Takes the container's own settings over the image's.
fn merge_container_config(state: &mut ImageState, container: &Value) {
    let config = state.runtime_config();
    for key in ["Cmd", "Entrypoint", "Env", "WorkingDir", "User"] {
        match &container[key] {
            Value::Null => {}
            Value::String(s) if s.is_empty() => {}
            v => {
                config.insert(key.into(), v.clone());
            }
        }
    }
    if let Some(labels) = container["Labels"].as_object().filter(|l| !l.is_empty()) {
        let merged = config.entry("Labels").or_insert_with(|| json!({}));
        if !merged.is_object() {
            *merged = json!({});
        }
        for (k, v) in labels {
            merged[k] = v.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_checked_and_applied_like_docker() {
        let e = parse_changes(&["RUN true".into()]).unwrap_err().to_string();
        assert!(e.contains("RUN is not a valid change command"), "{e}");
        let e = parse_changes(&["NOPE x".into()]).unwrap_err().to_string();
        assert!(e.contains("invalid change"), "{e}");
        let changes: Vec<String> = [
            "ENV A=1 B=two",
            "ENV A=$B-x",
            "CMD echo $A",
            "ENTRYPOINT [\"/bin/tini\", \"--\"]",
            "EXPOSE 80/udp 8080",
            "LABEL a=b \"c d\"=e",
            "USER nobody",
            "VOLUME /data",
            "WORKDIR /srv",
            "WORKDIR app",
            "ONBUILD RUN echo child",
            "STOPSIGNAL SIGINT",
        ]
        .map(String::from)
        .to_vec();
        let mut state = ImageState::scratch();
        for instruction in parse_changes(&changes).unwrap() {
            let kind = instruction.expand(&env_of(&state)).unwrap();
            config::apply(&mut state, &kind, true).unwrap();
        }
        let c = &state.config["config"];
        assert_eq!(c["Env"], json!(["A=two-x", "B=two"]));
        assert_eq!(c["Cmd"], json!(["/bin/sh", "-c", "echo $A"]));
        assert_eq!(c["Entrypoint"], json!(["/bin/tini", "--"]));
        assert_eq!(c["ExposedPorts"], json!({"80/udp": {}, "8080/tcp": {}}));
        assert_eq!(c["Labels"], json!({"a": "b", "c d": "e"}));
        assert_eq!(c["User"], json!("nobody"));
        assert_eq!(c["Volumes"], json!({"/data": {}}));
        assert_eq!(c["WorkingDir"], json!("/srv/app"));
        assert_eq!(c["OnBuild"], json!(["RUN echo child"]));
        assert_eq!(c["StopSignal"], json!("SIGINT"));
    }

    #[test]
    fn the_container_settings_override_the_image() {
        let mut state = ImageState::scratch();
        state.config["config"] = json!({"Cmd": ["sh"], "Env": ["PATH=/bin"], "Labels": {"x": "1"}});
        merge_container_config(
            &mut state,
            &json!({"Cmd": ["touch", "/a"], "Entrypoint": null, "Env": ["PATH=/bin", "K=v"],
                    "WorkingDir": "", "Labels": {"y": "2"}}),
        );
        let c = &state.config["config"];
        assert_eq!(c["Cmd"], json!(["touch", "/a"]));
        assert!(c.get("Entrypoint").is_none());
        assert_eq!(c["Env"], json!(["PATH=/bin", "K=v"]));
        assert_eq!(c["Labels"], json!({"x": "1", "y": "2"}));
    }
}

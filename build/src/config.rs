//! Image config changes made by Dockerfile metadata instructions, shared by builds and by
//! `commit --change`.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::dockerfile::{self, Kind};
use crate::image::ImageState;

/// Applies a metadata instruction (CMD, ENV, LABEL, WORKDIR, ...) to `image`'s config as Docker's
/// builder does; instructions that change files (RUN, COPY, ADD) and ARG leave it as it is.
/// `cmd_set` says whether CMD was set earlier in the same stage (or change list): as in Docker,
/// ENTRYPOINT drops only a CMD inherited from the base.
pub fn apply(image: &mut ImageState, kind: &Kind, cmd_set: bool) -> Result<(), String> {
    let shell = shell_of(image);
    let config = image.runtime_config();
    let command = |c: &dockerfile::Command| -> Value {
        match c {
            dockerfile::Command::Exec(args) => json!(args),
            dockerfile::Command::Shell(line) => {
                let mut argv = shell.clone();
                argv.push(line.clone());
                json!(argv)
            }
        }
    };
    match kind {
        Kind::Cmd(c) => {
            config.insert("Cmd".into(), command(c));
        }
        Kind::Entrypoint(c) => {
            config.insert("Entrypoint".into(), command(c));
            if !cmd_set {
                config.remove("Cmd");
            }
        }
        Kind::Env(pairs) => {
            let mut env: Vec<String> = config
                .get("Env")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect();
            for (k, v) in pairs {
                let entry = format!("{k}={v}");
                match env
                    .iter_mut()
                    .find(|e| e.split_once('=').map_or(e.as_str(), |p| p.0) == k)
                {
                    Some(e) => *e = entry,
                    None => env.push(entry),
                }
            }
            config.insert("Env".into(), json!(env));
        }
        Kind::Label(pairs) => {
            let labels = config.entry("Labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            for (k, v) in pairs {
                labels[k] = json!(v);
            }
        }
        Kind::Maintainer(m) => {
            image.config["author"] = json!(m);
        }
        Kind::Expose(ports) => {
            let exposed = config.entry("ExposedPorts").or_insert_with(|| json!({}));
            if !exposed.is_object() {
                *exposed = json!({});
            }
            for p in ports {
                exposed[p] = json!({});
            }
        }
        Kind::Workdir(dir) => {
            let current = config
                .get("WorkingDir")
                .and_then(Value::as_str)
                .filter(|w| !w.is_empty())
                .unwrap_or("/")
                .to_owned();
            let joined = if dir.starts_with('/') {
                PathBuf::from(dir)
            } else {
                PathBuf::from(current).join(dir)
            };
            config.insert("WorkingDir".into(), json!(joined.to_string_lossy()));
        }
        Kind::User(u) => {
            config.insert("User".into(), json!(u));
        }
        Kind::Volume(paths) => {
            let volumes = config.entry("Volumes").or_insert_with(|| json!({}));
            if !volumes.is_object() {
                *volumes = json!({});
            }
            for p in paths {
                volumes[p] = json!({});
            }
        }
        Kind::Onbuild(trigger) => {
            let list = config.entry("OnBuild").or_insert_with(|| json!([]));
            if !list.is_array() {
                *list = json!([]);
            }
            if let Some(a) = list.as_array_mut() {
                a.push(json!(trigger));
            }
        }
        Kind::Stopsignal(s) => {
            config.insert("StopSignal".into(), json!(s));
        }
        Kind::Healthcheck(h) => {
            let mut check = json!({"Test": h.test()});
            if let dockerfile::Healthcheck::Check {
                interval,
                timeout,
                start_period,
                start_interval,
                retries,
                ..
            } = h
            {
                let ns = |d: &Option<std::time::Duration>| d.map(|d| d.as_nanos() as u64);
                if let Some(v) = ns(interval) {
                    check["Interval"] = json!(v);
                }
                if let Some(v) = ns(timeout) {
                    check["Timeout"] = json!(v);
                }
                if let Some(v) = ns(start_period) {
                    check["StartPeriod"] = json!(v);
                }
                if let Some(v) = ns(start_interval) {
                    check["StartInterval"] = json!(v);
                }
                if let Some(r) = retries {
                    check["Retries"] = json!(r);
                }
            }
            config.insert("Healthcheck".into(), check);
        }
        Kind::Shell(argv) => {
            if argv.is_empty() {
                return Err("SHELL requires at least one argument".into());
            }
            config.insert("Shell".into(), json!(argv));
        }
        Kind::From { .. } => return Err("FROM cannot be used here".into()),
        Kind::Run(_) | Kind::Copy(_) | Kind::Add(_) | Kind::Arg(_) => {}
    }
    Ok(())
}

/// The shell for shell-form commands: the config's `Shell`, else `/bin/sh -c`.
pub fn shell_of(image: &ImageState) -> Vec<String> {
    image.config["config"]["Shell"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoint_drops_only_an_inherited_cmd() {
        let entrypoint = Kind::Entrypoint(dockerfile::Command::Exec(vec!["/bin/tini".into()]));
        for (cmd_set, kept) in [(false, false), (true, true)] {
            let mut image = ImageState::scratch();
            image.config["config"] = json!({"Cmd": ["sh"]});
            apply(&mut image, &entrypoint, cmd_set).unwrap();
            assert_eq!(image.config["config"]["Cmd"] == json!(["sh"]), kept);
            assert_eq!(image.config["config"]["Entrypoint"], json!(["/bin/tini"]));
        }
    }
}

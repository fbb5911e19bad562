//! Container records: validation, update masks and list filters (the domain rules of the
//! Containers API; the store keeps them, the manager enforces lifecycles).

use berth_api::berth::containers::v1::Container;
use berth_api::filters::Fields;

use crate::error::{Error, Result};

/// Longest container id.
pub const MAX_ID_LEN: usize = 76;

/// Checks an id (container or exec): `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 76 characters.
pub fn validate_id(field: &'static str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{id:?} is not a valid id: use letters, digits, '_', '.' and '-', starting \
                 with a letter or digit, at most {MAX_ID_LEN} characters"
            ),
        ))
    }
}

/// Checks a container name (Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, a leading '/' is
/// dropped); empty = no name.
pub fn normalize_name(name: &str) -> Result<String> {
    let name = name.strip_prefix('/').unwrap_or(name);
    if name.is_empty() {
        return Ok(String::new());
    }
    validate_id("name", name)
        .map_err(|_| {
            Error::invalid(
                "name",
                format!(
                    "{name:?} is not a valid container name: use [a-zA-Z0-9][a-zA-Z0-9_.-]*, \
                     at most {MAX_ID_LEN} characters"
                ),
            )
        })
        .map(|()| name.to_owned())
}

/// Checks the fields a client sets.
pub fn validate(c: &Container) -> Result<()> {
    if !c.sandbox_id.is_empty() {
        // It names the pod's shim directory.
        validate_id("sandbox_id", &c.sandbox_id)?;
    }
    if !c.spec.is_empty() {
        let value: serde_json::Value = serde_json::from_slice(&c.spec)
            .map_err(|e| Error::invalid("spec", format!("not JSON: {e}")))?;
        if !value.is_object() {
            return Err(Error::invalid("spec", "not a JSON object"));
        }
    }
    if let Some(rt) = &c.runtime
        && !matches!(rt.name.as_str(), "" | "runc" | "crun" | "builtin")
    {
        return Err(Error::invalid(
            "runtime.name",
            format!("{:?} is not a runtime: use runc, crun or builtin", rt.name),
        ));
    }
    Ok(())
}

/// Applies the `update_mask` paths of an update to `current`.
pub fn apply_mask(current: &mut Container, new: Container, paths: &[String]) -> Result<()> {
    let all = [
        "name",
        "labels",
        "image",
        "image_digest",
        "runtime",
        "spec",
        "snapshotter",
        "snapshot_key",
        "restart_policy",
        "log_config",
        "extensions",
    ];
    let paths: Vec<String> = if paths.is_empty() {
        all.iter().map(|s| s.to_string()).collect()
    } else {
        paths.to_vec()
    };
    let mut new = new;
    for path in &paths {
        match path.as_str() {
            "name" => current.name = normalize_name(&new.name)?,
            "labels" => current.labels = std::mem::take(&mut new.labels),
            "image" => current.image = new.image.clone(),
            "image_digest" => current.image_digest = new.image_digest.clone(),
            "runtime" => current.runtime = new.runtime.clone(),
            "spec" => current.spec = new.spec.clone(),
            "snapshotter" => current.snapshotter = new.snapshotter.clone(),
            "snapshot_key" => current.snapshot_key = new.snapshot_key.clone(),
            "restart_policy" => current.restart_policy = new.restart_policy,
            "log_config" => current.log_config = new.log_config.clone(),
            "extensions" => current.extensions = std::mem::take(&mut new.extensions),
            "id" | "created_at" | "updated_at" => {
                return Err(Error::invalid(
                    "update_mask",
                    format!("{path} cannot be changed"),
                ));
            }
            p => {
                if let Some(key) = p.strip_prefix("labels.") {
                    match new.labels.get(key) {
                        Some(v) => {
                            current.labels.insert(key.to_owned(), v.clone());
                        }
                        None => {
                            current.labels.remove(key);
                        }
                    }
                } else if let Some(key) = p.strip_prefix("extensions.") {
                    match new.extensions.get(key) {
                        Some(v) => {
                            current.extensions.insert(key.to_owned(), v.clone());
                        }
                        None => {
                            current.extensions.remove(key);
                        }
                    }
                } else {
                    return Err(Error::invalid(
                        "update_mask",
                        format!("unknown field {p:?}: use one of {}", all.join(", ")),
                    ));
                }
            }
        }
    }
    validate(current)
}

/// A container as list filters see it.
pub struct Filterable<'a>(pub &'a Container);

impl Fields for Filterable<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let c = self.0;
        let first = path.first()?.as_str();
        let rest = &path[1..];
        let value = match (first, rest) {
            ("id", []) => c.id.clone(),
            ("name", []) => c.name.clone(),
            ("image", []) => c.image.clone(),
            ("image_digest", []) => c.image_digest.clone(),
            ("runtime", []) | ("runtime", [_]) => c
                .runtime
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            ("snapshotter", []) => c.snapshotter.clone(),
            ("snapshot_key", []) => c.snapshot_key.clone(),
            ("sandbox_id", []) => c.sandbox_id.clone(),
            ("labels", [key]) => c.labels.get(key)?.clone(),
            _ => return None,
        };
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "0abc", "web_1.x-y", &"f".repeat(64), &"a".repeat(76)] {
            assert!(validate_id("id", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a b", "a/b", &"a".repeat(77), "é"] {
            assert!(validate_id("id", bad).is_err(), "{bad}");
        }
        assert_eq!(normalize_name("/web").unwrap(), "web");
        assert!(normalize_name("we b").is_err());
    }

    #[test]
    fn masks() {
        let mut c = Container {
            id: "x".into(),
            name: "a".into(),
            labels: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        let new = Container {
            name: "b".into(),
            labels: [("j".to_string(), "w".to_string())].into(),
            ..Default::default()
        };
        apply_mask(&mut c, new.clone(), &["labels.j".into(), "labels.k".into()]).unwrap();
        assert_eq!(c.labels, [("j".to_string(), "w".to_string())].into());
        assert_eq!(c.name, "a");
        apply_mask(&mut c, new.clone(), &["name".into()]).unwrap();
        assert_eq!(c.name, "b");
        assert!(apply_mask(&mut c, new.clone(), &["id".into()]).is_err());
        assert!(apply_mask(&mut c, new, &["bogus".into()]).is_err());
    }
}

//! Call metadata every service reads: the `berth-namespace` of a call (every object lives in a
//! namespace, like containerd's) and the `berth-lease` it works under.

use tonic::metadata::MetadataMap;

/// gRPC metadata key that carries the namespace of a call.
pub const HEADER: &str = "berth-namespace";
/// gRPC metadata key naming the lease a call works under: what it creates is kept while the
/// lease lives.
pub const LEASE_HEADER: &str = "berth-lease";
/// The namespace used when a call names none.
pub const DEFAULT: &str = "default";
/// Longest accepted namespace name.
pub const MAX_LEN: usize = 76;

/// Checks a namespace name: dot-separated DNS labels (lowercase letters, digits, inner `-`),
/// at most 76 characters, e.g. `default`, `k8s.io`, `team-a`.
pub fn validate(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > MAX_LEN || !name.split('.').all(label_ok) {
        return Err(format!(
            "invalid namespace {name:?}: use lowercase letters, digits, '-' and '.' \
             (DNS labels, at most {MAX_LEN} characters), e.g. \"default\" or \"k8s.io\""
        ));
    }
    Ok(())
}

/// The namespace of a call: its `berth-namespace` metadata, or `default` when absent.
pub fn of(metadata: &MetadataMap) -> Result<String, tonic::Status> {
    match metadata.get(HEADER) {
        None => Ok(DEFAULT.to_owned()),
        Some(v) => {
            let name = v.to_str().map_err(|_| {
                tonic::Status::invalid_argument("invalid namespace: metadata is not ASCII")
            })?;
            validate(name).map_err(tonic::Status::invalid_argument)?;
            Ok(name.to_owned())
        }
    }
}

/// Server interceptor that rejects a call whose namespace is invalid before any service sees it.
#[allow(clippy::result_large_err)]
pub fn check(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    of(request.metadata())?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn names() {
        for ok in ["default", "k8s.io", "a", "team-a", "x1.y2"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(77);
        for bad in [
            "",
            "Default",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "a/b",
            "..",
            long.as_str(),
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}

//! Image references, normalised as Docker does.
//!
//! `busybox` is `docker.io/library/busybox:latest`, `user/app` is `docker.io/user/app:latest`,
//! `localhost:5000/x` is `localhost:5000/x:latest`, `name@sha256:...` keeps only the digest,
//! and `name:tag@sha256:...` keeps both. Parsing is oci-spec's port of Docker's distribution
//! reference grammar; this module adds Docker's extra checks and wording.

use oci_spec::distribution::{ParseError, Reference};

use crate::error::{Error, Result};

/// Parses `reference` and returns its normalised form.
pub fn normalize(reference: &str) -> Result<String> {
    parse(reference).map(|r| r.whole())
}

/// Parses `reference` into its parts, normalised.
pub fn parse(reference: &str) -> Result<Reference> {
    let invalid = |reason: String| Error::InvalidReference {
        reference: reference.to_owned(),
        reason,
    };
    if reference.len() == 64 && reference.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            "cannot specify 64-byte hexadecimal strings as a name".into(),
        ));
    }
    match Reference::try_from(reference) {
        Ok(r) => Ok(r),
        // Docker's wording for a name that only fails because of its case.
        Err(ParseError::ReferenceInvalidFormat)
            if reference.to_lowercase() != reference
                && Reference::try_from(name_lowercased(reference).as_str()).is_ok() =>
        {
            Err(invalid(ParseError::NameContainsUppercase.to_string()))
        }
        Err(e) => Err(invalid(e.to_string())),
    }
}

/// `reference` with its name (not its tag or digest) lowercased.
fn name_lowercased(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name[slash..].find(':') {
        Some(i) => name.split_at(slash + i),
        None => (name, ""),
    };
    let mut out = name.to_lowercase() + tag;
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalises_like_docker() {
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest".to_owned()),
            ("busybox:1.36", "docker.io/library/busybox:1.36".to_owned()),
            (
                "library/busybox",
                "docker.io/library/busybox:latest".to_owned(),
            ),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".to_owned(),
            ),
            (
                "index.docker.io/user/app",
                "docker.io/user/app:latest".to_owned(),
            ),
            ("localhost:5000/x", "localhost:5000/x:latest".to_owned()),
            ("localhost/x:t", "localhost/x:t".to_owned()),
            ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest".to_owned()),
            (
                &format!("busybox@{D}"),
                format!("docker.io/library/busybox@{D}"),
            ),
            (
                &format!("busybox:1@{D}"),
                format!("docker.io/library/busybox:1@{D}"),
            ),
        ] {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn malformed_references_say_why() {
        for (input, why) in [
            ("", "at least one component"),
            ("BusyBox", "must be lowercase"),
            ("localhost:5000/App:v1", "must be lowercase"),
            ("busybox:", "invalid reference format"),
            ("a b", "invalid reference format"),
            ("busybox@sha256:abc", "invalid reference format"),
            (
                &format!("busybox@sha256:{}", "a".repeat(40)),
                "digest length",
            ),
            (
                &format!("busybox@md5:{}", "a".repeat(32)),
                "unsupported digest algorithm",
            ),
            (&D[7..], "64-byte hexadecimal"),
        ] {
            let err = normalize(input).unwrap_err();
            assert!(matches!(err, Error::InvalidReference { .. }), "{input}");
            assert!(err.to_string().contains(why), "{input}: {err}");
        }
    }
}

//! How the images service reaches registries: protocol (HTTPS, or plain HTTP for loopback and
//! insecure registries), credentials (from the request, else a docker-style `config.json`) and
//! mirrors, all from the `[images]` section of the configuration.
//!
//! The credentials file is the one `docker login` and `berthctl login` write:
//! `{"auths": {"<registry>": {"auth": "<base64 of user:password>"}}}` (keys may also be URLs,
//! e.g. `https://index.docker.io/v1/`). Credential helpers (`credsStore`) are not run.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Credentials for a registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    #[default]
    Anonymous,
    /// HTTP basic authentication (also used at the token endpoint of a bearer challenge).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A bearer token sent as is.
    Token(String),
}

impl Auth {
    fn registry_auth(&self) -> RegistryAuth {
        match self {
            Auth::Anonymous => RegistryAuth::Anonymous,
            Auth::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Auth::Token(t) => RegistryAuth::Bearer(t.clone()),
        }
    }
}

/// Registry settings of the images service.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    /// Registries reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Mirrors per registry, tried in order before it.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Credentials file; None = `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    pub credentials_file: Option<PathBuf>,
    /// How long a registry may stay silent before a request fails.
    pub timeout: Duration,
    /// Serialises changes to the credentials file.
    file_lock: Arc<Mutex<()>>,
}

/// Most catalog pages a search reads.
const MAX_CATALOG_PAGES: usize = 100;
/// Repositories asked for per catalog page.
const CATALOG_PAGE: usize = 100;

/// A client for one registry with the credentials to use there.
pub struct Remote {
    /// The registry client.
    pub client: Client,
    /// Credentials for it.
    pub auth: RegistryAuth,
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerAuth {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    identitytoken: String,
    #[serde(default)]
    registrytoken: String,
}

/// Whether `registry` (`host[:port]`) is on the loopback interface.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The registry host a credentials-file key names: `https://index.docker.io/v1/` ->
/// `docker.io`, `http://host:5000/v2/` -> `host:5000`.
fn key_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    }
}

impl Registries {
    /// The settings of `config`'s `[images]` section.
    pub fn from_config(config: &berth_api::config::ImagesConfig) -> Self {
        Registries {
            insecure: config.insecure_registries.clone(),
            mirrors: config.mirrors.clone(),
            credentials_file: config.credentials_file.clone(),
            timeout: Duration::from_secs(config.read_timeout),
            file_lock: Arc::default(),
        }
    }

    /// Where credentials are read from.
    pub fn credentials_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.credentials_file {
            return Some(p.clone());
        }
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
    }

    /// The credentials the credentials file holds for `registry`, if any.
    pub fn stored_credentials(&self, registry: &str) -> Result<Auth> {
        let Some(path) = self.credentials_path() else {
            return Ok(Auth::Anonymous);
        };
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Auth::Anonymous),
            Err(e) => return Err(Error::io(&path)(e)),
        };
        let bad = |reason: String| Error::Credentials {
            path: path.clone(),
            reason,
        };
        let config: DockerConfig =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let Some(entry) = config
            .auths
            .iter()
            .find(|(k, _)| key_host(k) == registry)
            .map(|(_, v)| v)
        else {
            return Ok(Auth::Anonymous);
        };
        if !entry.registrytoken.is_empty() {
            return Ok(Auth::Token(entry.registrytoken.clone()));
        }
        if !entry.identitytoken.is_empty() {
            return Err(bad(format!(
                "{registry}: identity tokens are not supported; log in with a password"
            )));
        }
        if !entry.username.is_empty() {
            return Ok(Auth::Basic {
                username: entry.username.clone(),
                password: entry.password.clone(),
            });
        }
        if entry.auth.is_empty() {
            return Ok(Auth::Anonymous);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(entry.auth.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| {
                bad(format!(
                    "{registry}: \"auth\" is not base64 of user:password"
                ))
            })?;
        let (username, password) = decoded.split_once(':').ok_or_else(|| {
            bad(format!(
                "{registry}: \"auth\" lacks the ':' of user:password"
            ))
        })?;
        Ok(Auth::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Whether `registry` is reached over plain HTTP.
    pub fn plain_http(&self, registry: &str) -> bool {
        is_loopback(registry) || self.insecure.iter().any(|r| r == registry)
    }

    /// A client for the registry of `reference`. `plain_http` asks for plain HTTP, which only
    /// loopback and insecure registries accept; `auth` Anonymous falls back to the
    /// credentials file; `monolithic` uploads blobs in one request instead of chunks.
    pub fn remote(
        &self,
        reference: &Reference,
        auth: &Auth,
        plain_http: bool,
        monolithic: bool,
    ) -> Result<Remote> {
        let registry = reference.registry();
        let http = self.plain_http(registry);
        if plain_http && !http {
            return Err(Error::InsecureRegistry {
                registry: registry.to_owned(),
            });
        }
        let config = ClientConfig {
            protocol: if http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            platform_resolver: None,
            connect_timeout: Some(self.timeout),
            read_timeout: Some(self.timeout),
            no_proxy: Some("127.0.0.1,localhost,::1".into()),
            use_monolithic_push: monolithic,
            ..ClientConfig::default()
        };
        let auth = match auth {
            Auth::Anonymous => self.stored_credentials(registry)?,
            other => other.clone(),
        };
        Ok(Remote {
            client: Client::new(config),
            auth: auth.registry_auth(),
        })
    }

    /// Runs `change` on the credentials file's JSON and writes it back; returns its path.
    fn edit_credentials(
        &self,
        change: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>) -> Result<()>,
    ) -> Result<PathBuf> {
        let path = self.credentials_path().ok_or_else(|| {
            Error::invalid(
                "credentials_file",
                "no credentials file: set [images] credentials_file or HOME",
            )
        })?;
        let _held = self.file_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut json: serde_json::Value = match std::fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text).map_err(|e| Error::Credentials {
                path: path.clone(),
                reason: format!("not JSON: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
            Err(e) => return Err(Error::io(&path)(e)),
        };
        let root = json.as_object_mut().ok_or_else(|| Error::Credentials {
            path: path.clone(),
            reason: "not a JSON object".into(),
        })?;
        let auths = root
            .entry("auths")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .ok_or_else(|| Error::Credentials {
                path: path.clone(),
                reason: "\"auths\" is not an object".into(),
            })?;
        change(auths)?;
        let text = serde_json::to_vec_pretty(&json).map_err(|e| Error::Credentials {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_private(&path, &text)?;
        Ok(path)
    }

    /// Checks `username`/`password` against `registry` and stores them; returns the file.
    pub async fn login(
        &self,
        registry: &str,
        username: &str,
        password: &str,
        plain_http: bool,
    ) -> Result<PathBuf> {
        let registry = registry_host(registry)?;
        if username.is_empty() || username.contains(':') {
            return Err(Error::invalid(
                "auth.username",
                "must be set and contain no ':'",
            ));
        }
        let auth = Auth::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let probe = Reference::with_tag(registry.clone(), "library/berth-login".into(), "x".into());
        let remote = self.remote(&probe, &auth, plain_http, false)?;
        let error = |source| Error::Registry {
            reference: registry.clone(),
            source: Box::new(source),
        };
        // A token endpoint checks the credentials here; a basic-auth registry on the first
        // authenticated request.
        remote
            .client
            .auth(&probe, &remote.auth, oci_client::RegistryOperation::Pull)
            .await
            .map_err(error)?;
        if let Err(e) = remote
            .client
            .catalog(&probe, &remote.auth, Some(1), None)
            .await
        {
            let e = error(e);
            // A registry may refuse its catalog to anyone; only an authentication failure counts.
            if e.kind() == crate::error::Kind::Unauthenticated {
                return Err(e);
            }
        }
        let entry =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.edit_credentials(|auths| {
                auths.retain(|k, _| key_host(k) != registry);
                auths.insert(file_key(&registry), serde_json::json!({ "auth": entry }));
                Ok(())
            })
        })
        .await?
    }

    /// Forgets the stored credentials of `registry`.
    pub fn logout(&self, registry: &str) -> Result<()> {
        let registry = registry_host(registry)?;
        self.edit_credentials(|auths| {
            let before = auths.len();
            auths.retain(|k, _| key_host(k) != registry);
            if auths.len() == before {
                return Err(Error::NotLoggedIn {
                    registry: registry.clone(),
                });
            }
            Ok(())
        })
        .map(|_| ())
    }

    /// The repositories of `registry`'s catalog whose name contains `term`, sorted, at most
    /// `limit`.
    pub async fn search(
        &self,
        registry: &str,
        term: &str,
        auth: &Auth,
        plain_http: bool,
        limit: usize,
    ) -> Result<Vec<String>> {
        let registry = registry_host(registry)?;
        let probe =
            Reference::with_tag(registry.clone(), "library/berth-search".into(), "x".into());
        let remote = self.remote(&probe, auth, plain_http, false)?;
        let mut found = Vec::new();
        let mut last: Option<String> = None;
        for _ in 0..MAX_CATALOG_PAGES {
            let page = remote
                .client
                .catalog(&probe, &remote.auth, Some(CATALOG_PAGE), last.as_deref())
                .await
                .map_err(|source| Error::Registry {
                    reference: format!("{registry} catalog"),
                    source: Box::new(source),
                })?;
            let done = page.repositories.len() < CATALOG_PAGE;
            last = page.repositories.last().cloned();
            found.extend(page.repositories.into_iter().filter(|r| r.contains(term)));
            if done || last.is_none() {
                break;
            }
        }
        found.sort();
        found.dedup();
        found.truncate(limit);
        Ok(found)
    }

    /// The registries to try for `reference`, in order: its mirrors, then itself (each as the
    /// same repository and tag or digest on that registry).
    pub fn candidates(&self, reference: &Reference) -> Vec<Reference> {
        let mut out: Vec<Reference> = self
            .mirrors
            .get(reference.registry())
            .into_iter()
            .flatten()
            .map(|mirror| rehost(reference, mirror))
            .collect();
        out.push(reference.clone());
        out
    }
}

/// The registry a user names: `https://host/v2/` -> `host`; Docker Hub's URLs -> `docker.io`.
pub fn registry_host(name: &str) -> Result<String> {
    let host = key_host(name.trim());
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
    if !ok {
        return Err(Error::invalid(
            "registry",
            format!("{name:?} is not a registry host[:port]"),
        ));
    }
    Ok(host.to_owned())
}

/// The key a credentials file uses for `registry` (Docker's for Docker Hub).
fn file_key(registry: &str) -> String {
    match registry {
        "docker.io" => "https://index.docker.io/v1/".into(),
        r => r.into(),
    }
}

/// Writes `data` to `path` atomically (temp + fsync + rename), readable by its owner only.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(Error::io(dir))?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io(&tmp))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

/// Maps a registry client error about `reference` (followed by `what`, e.g. `@digest`) to an
/// [`Error::Registry`].
pub(crate) fn registry_error(
    reference: &Reference,
    what: &str,
) -> impl Fn(oci_client::errors::OciDistributionError) -> Error + use<> {
    let reference = format!("{}{what}", reference.whole());
    move |source| Error::Registry {
        reference: reference.clone(),
        source: Box::new(source),
    }
}

/// `reference` on another registry.
pub fn rehost(reference: &Reference, registry: &str) -> Reference {
    let (registry, repository) = (registry.to_owned(), reference.repository().to_owned());
    match (reference.tag(), reference.digest()) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.to_owned(), d.to_owned())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.to_owned()),
        (Some(t), None) => Reference::with_tag(registry, repository, t.to_owned()),
        (None, None) => Reference::with_tag(registry, repository, "latest".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries() {
        for r in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.0.0.2",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["docker.io", "example.com:5000", "10.0.0.1:5000"] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn credentials_come_from_a_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}},
                "http://reg.example:5000/v2/": {{"username": "bob", "password": "pw"}},
                "broken.example": {{"auth": "!!"}}}}}}"#
            ),
        )
        .unwrap();
        let r = Registries {
            credentials_file: Some(path),
            ..Default::default()
        };
        assert_eq!(
            r.stored_credentials("docker.io").unwrap(),
            Auth::Basic {
                username: "alice".into(),
                password: "pa:ss".into()
            }
        );
        assert_eq!(
            r.stored_credentials("reg.example:5000").unwrap(),
            Auth::Basic {
                username: "bob".into(),
                password: "pw".into()
            }
        );
        assert_eq!(
            r.stored_credentials("other.example").unwrap(),
            Auth::Anonymous
        );
        let err = r.stored_credentials("broken.example").unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
    }

    #[test]
    fn plain_http_only_for_loopback_and_insecure_registries() {
        let r = Registries {
            insecure: vec!["reg.example:5000".into()],
            credentials_file: Some("/nonexistent/config.json".into()),
            ..Default::default()
        };
        let local: Reference = "127.0.0.1:5000/a:1".parse().unwrap();
        let listed: Reference = "reg.example:5000/a:1".parse().unwrap();
        let other: Reference = "other.example/a:1".parse().unwrap();
        assert!(r.remote(&local, &Auth::Anonymous, true, false).is_ok());
        assert!(r.remote(&listed, &Auth::Anonymous, true, false).is_ok());
        let err = r
            .remote(&other, &Auth::Anonymous, true, false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("insecure_registries"), "{err}");
        assert!(r.remote(&other, &Auth::Anonymous, false, false).is_ok());
    }

    #[test]
    fn mirrors_come_first() {
        let r = Registries {
            mirrors: BTreeMap::from([(
                "docker.io".to_owned(),
                vec!["m1.example".to_owned(), "m2.example:5000".to_owned()],
            )]),
            ..Default::default()
        };
        let reference: Reference = "docker.io/library/busybox:1.36".parse().unwrap();
        let all: Vec<String> = r
            .candidates(&reference)
            .iter()
            .map(Reference::whole)
            .collect();
        assert_eq!(
            all,
            [
                "m1.example/library/busybox:1.36",
                "m2.example:5000/library/busybox:1.36",
                "docker.io/library/busybox:1.36"
            ]
        );
    }
}

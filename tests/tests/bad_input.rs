//! Bad configuration, unreachable sockets, invalid namespaces and unwritable roots: each is one
//! clear line, a non-zero exit, no panic, and nothing half-created.

use std::path::Path;
use std::process::{Command, Output};

use berth_tests::harness::bin;
use berth_tests::{Berth, Mode};

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "must fail");
    assert_ne!(out.status.code(), Some(101), "must not panic");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Runs berthd on `config` text under a fresh temp dir; returns its output and the temp dir.
fn berthd_with_config(config: &str, extra: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir()
        .unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(bin("berthd"))
        .arg("--config")
        .arg(&file)
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .args(extra)
        .output()
        .unwrap();
    (out, dir)
}

fn nothing_created(dir: &Path) {
    for sub in ["root", "state"] {
        assert!(!dir.join(sub).exists(), "{sub} was created");
    }
}

#[test]
fn unknown_config_key_names_key_and_file() {
    let (out, dir) = berthd_with_config("[log]\nformatt = \"json\"\n", &[]);
    let err = one_line_error(&out);
    assert!(err.contains("formatt"), "{err}");
    assert!(
        err.contains(&dir.path().join("config.toml").display().to_string()),
        "{err}"
    );
    nothing_created(dir.path());
}

#[test]
fn bad_config_values_name_the_key() {
    for (text, key) in [
        ("[log]\nformat = \"xml\"\n", "log.format"),
        ("[log]\nlevel = \"x=y=z\"\n", "log.level"),
        ("[otlp]\nendpoint = \"not a url\"\n", "otlp.endpoint"),
        ("shutdown_timeout = \"ten\"\n", "shutdown_timeout"),
        ("socket_group = \"no-such-group-berth\"\n", "socket_group"),
        ("root = [1]\n", "root"),
        ("not toml at all", "config.toml"),
    ] {
        let (out, dir) = berthd_with_config(text, &[]);
        let err = one_line_error(&out);
        assert!(err.contains(key), "{text:?}: {err}");
        nothing_created(dir.path());
    }
}

#[test]
fn bad_flag_values_name_the_flag() {
    let (out, dir) = berthd_with_config("", &["--log-format", "xml"]);
    let err = one_line_error(&out);
    assert!(err.contains("--log-format"), "{err}");
    nothing_created(dir.path());
    let (out, dir) = berthd_with_config("", &["--services", "images,bogus"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
    nothing_created(dir.path());
}

#[test]
fn unwritable_root_is_refused_before_any_socket_exists() {
    let dir = tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir()
        .unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = Command::new(bin("berth-snapshots"))
        .arg("--root")
        .arg(file.join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let err = one_line_error(&out);
    assert!(
        err.contains("not writable") && err.contains("a-file"),
        "{err}"
    );
    assert!(!dir.path().join("state").exists(), "state dir created");
}

#[test]
fn unreachable_sockets_are_named() {
    let dir = tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir()
        .unwrap();
    let out = Command::new(bin("berthctl"))
        .arg("--state-dir")
        .arg(dir.path())
        .arg("info")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 5, "{err}");
    for service in berth_tests::harness::SERVICES {
        let sock = dir.path().join(format!("{service}.sock"));
        assert!(err.contains(&sock.display().to_string()), "{err}");
    }
    let out = Command::new(bin("berthctl"))
        .args(["--address", "images=/nonexistent/berth/images.sock", "info"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/berth/images.sock"));
}

#[test]
fn invalid_namespace_is_refused_by_client_and_server() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let out = berth.run_ctl(&["--namespace", "Bad_NS", "info"])?;
    let err = one_line_error(&out);
    assert!(err.contains("invalid namespace \"Bad_NS\""), "{err}");

    // A client that skips validation still gets InvalidArgument from every service.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        for service in berth_tests::harness::SERVICES {
            let channel = berth_api::client::connect(&berth.socket(service), "default").await?;
            let mut client =
                berth_api::berth::version::v1::version_client::VersionClient::new(channel);
            let mut request = tonic::Request::new(berth_api::berth::version::v1::VersionRequest {});
            request
                .metadata_mut()
                .insert("berth-namespace", "Bad..NS".parse()?);
            let status = client.version(request).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{service}");
            assert!(status.message().contains("invalid namespace"), "{status:?}");
            let ok = client
                .version(berth_api::berth::version::v1::VersionRequest {})
                .await?;
            assert_eq!(ok.into_inner().service, service);
        }
        anyhow::Ok(())
    })?;
    // Close the connections before stopping, as any finished client would.
    drop(runtime);
    berth.stop()
}

//! The network service, measured against Debian's CNI bridge plugin in the same run:
//!
//! 1. Attach + detach latency of one container on an existing, pinned netns (veth pair,
//!    address, routes, DNS entry), median of `BENCH_ROUNDS` (default 50), through the gRPC API;
//!    and the same cycle with netns creation and removal included.
//! 2. Debian's `bridge` + `host-local` plugins called directly (ADD then DEL) with an equivalent
//!    conflist on an existing netns, median of the same number of rounds. Target: berth at most
//!    half of CNI's time.
//! 3. 250 containers attached to one bridge: attach time of the 1st and the 250th (flat).
//!
//! `cargo build --release --workspace && cargo bench -p berth-tests --bench network`, as root.
//! Not part of CI. Only addresses of the networks created here are used; nothing is sent.
//! Environment: `BENCH_ROUNDS`, `BENCH_CONTAINERS` (default 250), `BERTH_BIN_DIR`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use berth_api::berth::network::v1::{self as pb, networks_client::NetworksClient};
use berth_api::client::{self, Channel};
use berth_tests::bench::{env_or, median, ms, summary};
use berth_tests::{Berth, Mode, Options};

type Client = NetworksClient<Channel>;

/// Removes what the bench made, also when it fails.
struct Guard {
    tag: String,
    state: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mounts) = berth_tests::harness::mounts_under(&self.state) {
            for m in mounts {
                let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let out = Command::new("ip").args(["-o", "link", "show"]).output();
        let prefix = format!("berth-b{}", self.tag);
        if let Ok(out) = out {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = line
                    .split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n))
                    && name.starts_with(&prefix)
                {
                    let _ = Command::new("ip").args(["link", "del", name]).output();
                }
            }
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &format!("berth_b{}", self.tag)])
            .output();
    }
}

async fn netns(c: &mut Client, id: &str) -> Result<String> {
    Ok(c.create_netns(pb::CreateNetnsRequest {
        sandbox_id: id.into(),
    })
    .await?
    .into_inner()
    .netns_path)
}

async fn attach(c: &mut Client, network: &str, id: &str) -> Result<()> {
    c.attach(pb::AttachRequest {
        network: network.into(),
        container_id: id.into(),
        aliases: vec![format!("{id}-alias")],
        ..Default::default()
    })
    .await?;
    Ok(())
}

async fn detach(c: &mut Client, network: &str, id: &str) -> Result<()> {
    c.detach(pb::DetachRequest {
        network: network.into(),
        container_id: id.into(),
    })
    .await?;
    Ok(())
}

/// One CNI plugin call, as a runtime makes it.
fn cni(command: &str, conf: &str, netns: &str, id: &str) -> Result<()> {
    let mut child = Command::new("/usr/lib/cni/bridge")
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "cni {command}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    ensure!(
        Path::new("/usr/lib/cni/bridge").exists(),
        "install containernetworking-plugins"
    );
    let rounds: usize = env_or("BENCH_ROUNDS", 50);
    let containers: usize = env_or("BENCH_CONTAINERS", 250);
    let tag = format!("{:05x}", std::process::id() & 0xf_ffff);
    let config = format!(
        "[network]\ndefault_bridge = \"berth-b{tag}0\"\nnft_table = \"berth_b{tag}\"\n\
         pools = [{{ base = \"10.215.0.0/16\", size = 24 }}]\n"
    );
    let berth = Berth::start_with(
        Mode::AllInOne,
        Options {
            config: Some(config),
            ..Default::default()
        },
    )?;
    let guard = Guard {
        tag: tag.clone(),
        state: berth.state(),
    };
    let mut c = NetworksClient::new(client::connect(&berth.socket("network"), "default").await?);
    c.create(pb::CreateNetworkRequest {
        name: "bench".into(),
        subnet: "10.216.0.0/16".into(),
        icc: true,
        options: [("bridge.name".to_owned(), format!("berth-b{tag}a"))].into(),
        ..Default::default()
    })
    .await?;

    // 1. berth attach + detach on an existing netns, and with the netns.
    netns(&mut c, "one").await?;
    attach(&mut c, "bench", "one").await?; // warm-up
    detach(&mut c, "bench", "one").await?;
    let (mut berth_times, mut berth_attach, mut berth_detach) =
        (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        attach(&mut c, "bench", "one").await?;
        let attached = t.elapsed();
        detach(&mut c, "bench", "one").await?;
        berth_attach.push(attached);
        berth_detach.push(t.elapsed() - attached);
        berth_times.push(t.elapsed());
    }
    c.remove_netns(pb::RemoveNetnsRequest {
        sandbox_id: "one".into(),
    })
    .await?;
    let mut with_netns = Vec::new();
    for i in 0..rounds {
        let id = format!("n{i}");
        let t = Instant::now();
        netns(&mut c, &id).await?;
        attach(&mut c, "bench", &id).await?;
        detach(&mut c, "bench", &id).await?;
        c.remove_netns(pb::RemoveNetnsRequest { sandbox_id: id })
            .await?;
        with_netns.push(t.elapsed());
    }

    // 2. Debian's CNI bridge + host-local on an existing netns.
    let cni_dir = tempfile::Builder::new().prefix("berth-test-").tempdir()?;
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"benchcni","type":"bridge","bridge":"berth-b{tag}c","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.217.0.0/16"}}]],"dataDir":"{}"}}}}"#,
        cni_dir.path().display()
    );
    let cni_netns = netns(&mut c, "cni").await?;
    cni("ADD", &conf, &cni_netns, "cni")?; // warm-up (creates the bridge)
    cni("DEL", &conf, &cni_netns, "cni")?;
    let (mut add_times, mut del_times, mut cni_times) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        cni("ADD", &conf, &cni_netns, "cni")?;
        let added = t.elapsed();
        cni("DEL", &conf, &cni_netns, "cni")?;
        add_times.push(added);
        del_times.push(t.elapsed() - added);
        cni_times.push(t.elapsed());
    }
    c.remove_netns(pb::RemoveNetnsRequest {
        sandbox_id: "cni".into(),
    })
    .await?;
    let _ = Command::new("ip")
        .args(["link", "del", &format!("berth-b{tag}c")])
        .output();

    // 3. Many containers on one bridge.
    let mut attach_times = Vec::new();
    for i in 0..containers {
        let id = format!("m{i}");
        netns(&mut c, &id).await?;
        let t = Instant::now();
        attach(&mut c, "bench", &id).await?;
        attach_times.push(t.elapsed());
    }
    let t = Instant::now();
    for i in 0..containers {
        let id = format!("m{i}");
        detach(&mut c, "bench", &id).await?;
        c.remove_netns(pb::RemoveNetnsRequest { sandbox_id: id })
            .await?;
    }
    let teardown = t.elapsed();
    c.remove(pb::RemoveNetworkRequest {
        name: "bench".into(),
    })
    .await?;

    let b = median(&berth_times);
    let k = median(&cni_times);
    println!("attach+detach on an existing netns, median of {rounds}:");
    println!(
        "  berth            {:8.2} ms   (attach {:.2} ms, detach {:.2} ms)",
        ms(b),
        ms(median(&berth_attach)),
        ms(median(&berth_detach))
    );
    println!(
        "  cni bridge       {:8.2} ms   (ADD {:.2} ms, DEL {:.2} ms)",
        ms(k),
        ms(median(&add_times)),
        ms(median(&del_times))
    );
    println!(
        "  berth / cni      {:8.2}   (target <= 0.5)",
        b.as_secs_f64() / k.as_secs_f64()
    );
    summary(
        "network attach+detach vs CNI ADD+DEL",
        ms(b),
        ms(k),
        "ms",
        "<= 0.5",
    );
    println!(
        "  berth incl. netns create+remove: {:.2} ms",
        ms(median(&with_netns))
    );
    println!("{containers} containers on one bridge:");
    println!(
        "  attach #1 {:.2} ms, #{containers} {:.2} ms, median {:.2} ms; detach+netns rm of all {:.2} s",
        ms(attach_times[0]),
        ms(attach_times[containers - 1]),
        ms(median(&attach_times)),
        teardown.as_secs_f64()
    );
    drop(c);
    berth.stop()?;
    drop(guard);
    Ok(())
}

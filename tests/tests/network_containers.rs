//! Networking through real containers: `berthctl run` with user networks, aliases, icc=false,
//! internal networks, published ports (`-p`, `-P`, `berthctl port`), a restart of the network
//! service, the host/none/container:<name> modes and a CNI-backed network.
//!
//! Each test runs its own berth with its own bridges, nft table, address pool and cgroup
//! parent, and removes every kernel object it made, also when it fails. Traffic only goes to
//! loopback, to the host's own address and to addresses inside the networks the tests create;
//! every wait and request loop is bounded.

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_tests::cleanup;
use berth_tests::fixtures::images;
use berth_tests::fixtures::registry::free_port;
use berth_tests::harness::{self, mounts_under};
use berth_tests::host::{files_under, host_address, host_wget, network_leftovers, wget_body};
use berth_tests::{Berth, Mode, Options};

/// Serves `/www/index.html` (the container's name) with busybox httpd on port 80.
const HTTPD: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www";

/// A berth instance of one test with the busybox image loaded, and a guard that removes what
/// the test made when it fails.
struct Env {
    berth: Option<Berth>,
    tag: String,
    pool: String,
    options: Options,
    scratch: tempfile::TempDir,
}

impl Env {
    /// Starts berth in `mode`; `pool` is a /16 base only this test uses; `extra` are more
    /// `[network]` lines.
    fn start(mode: Mode, pool: &str, extra: &str) -> Result<Env> {
        let tag = format!("{:06x}", harness::rand_u32() & 0xff_ffff);
        let config = format!(
            "[network]\ndefault_bridge = \"berth-n{tag}0\"\nnft_table = \"berth_n{tag}\"\n\
             pools = [{{ base = \"{pool}/16\", size = 24 }}]\n{extra}\
             [tasks]\ncgroup_parent = \"berth-test-{tag}\"\n"
        );
        let options = Options {
            config: Some(config),
            ..Default::default()
        };
        let berth = Berth::start_with(mode, options.clone())?;
        let scratch = tempfile::Builder::new().prefix("berth-test-").tempdir()?;
        let layout = scratch.path().join("layout");
        images::busybox_layout(&layout)?;
        let env = Env {
            berth: Some(berth),
            tag,
            pool: pool.trim_end_matches(".0.0").to_owned(),
            options,
            scratch,
        };
        env.ok(&["load", layout.to_str().context("utf-8 path")?])?;
        Ok(env)
    }

    fn berth(&self) -> &Berth {
        self.berth.as_ref().expect("berth running")
    }

    fn ctl(&self, args: &[&str]) -> Result<Output> {
        self.berth().run_ctl(args)
    }

    /// Runs berthctl, which must succeed; returns its trimmed stdout.
    fn ok(&self, args: &[&str]) -> Result<String> {
        Ok(self.berth().ctl_ok(args)?.trim().to_owned())
    }

    /// `network create` with a bridge named after the test (`suffix`: one letter).
    fn network(&self, name: &str, suffix: char, args: &[&str]) -> Result<()> {
        let bridge = format!("bridge.name=berth-n{}{suffix}", self.tag);
        let mut all = vec!["network", "create", "--opt", &bridge];
        all.extend_from_slice(args);
        all.push(name);
        self.ok(&all).map(drop)
    }

    /// `run -d --name NAME ARGS busybox CMD...`.
    fn run(&self, name: &str, args: &[&str], cmd: &[&str]) -> Result<()> {
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        all.push("busybox");
        all.extend_from_slice(cmd);
        self.ok(&all).map(drop)
    }

    /// A container running busybox httpd (serving its hostname, which is its name).
    fn httpd(&self, name: &str, args: &[&str]) -> Result<()> {
        let mut all = vec!["--hostname", name];
        all.extend_from_slice(args);
        self.run(name, &all, &["sh", "-c", HTTPD])?;
        // Wait until it listens (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.ok(&["exec", name, "netstat", "-ltn"])?;
            if out.contains(":80 ") {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "httpd in {name} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A container that only sleeps.
    fn idle(&self, name: &str, args: &[&str]) -> Result<()> {
        self.run(name, args, &["sleep", "600"])
    }

    /// busybox wget of `url` inside container `from` (bounded by `timeout`: busybox's own
    /// `wget -T` crashes); the body, or None when it failed.
    fn wget(&self, from: &str, url: &str) -> Result<Option<String>> {
        let out = self.ctl(&["exec", from, "timeout", "3", "wget", "-q", "-O-", url])?;
        Ok(wget_body(&format!("wget {url} in {from}"), &out))
    }

    /// The IPv4 address of `container`'s eth0 (as the container sees it).
    fn ip(&self, container: &str) -> Result<Ipv4Addr> {
        let out = self.ok(&["exec", container, "ip", "-4", "-o", "addr", "show", "eth0"])?;
        let addr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .with_context(|| format!("no address on eth0: {out}"))?;
        Ok(addr.split('/').next().unwrap_or(addr).parse()?)
    }

    /// The services' logs (for failure messages).
    fn logs(&self) -> String {
        let mut text = String::new();
        for e in std::fs::read_dir(self.berth().state().join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
        text
    }

    fn cgroup_parent(&self) -> String {
        format!("berth-test-{}", self.tag)
    }

    /// Kernel objects of this test still on the host: links, the nft table, addresses of the
    /// pool, netns pins.
    fn leftovers(&self) -> Result<Vec<String>> {
        let mut left = network_leftovers(
            &format!("berth-n{}", self.tag),
            &format!("berth_n{}", self.tag),
            &self.pool,
        )?;
        let netns = self.berth().state().join("netns");
        for ns in files_under(&netns) {
            left.push(format!("netns {}", ns.display()));
        }
        left.extend(
            mounts_under(&self.berth().state())?
                .into_iter()
                .filter(|m| m.contains("/netns/"))
                .map(|m| format!("mount {m}")),
        );
        Ok(left)
    }

    /// Removes every container and network, checks that no kernel object of the test is left,
    /// and stops berth with the harness's leak check.
    fn stop(mut self) -> Result<()> {
        for id in self.ok(&["ps", "-aq", "--no-trunc"])?.lines() {
            self.ok(&["rm", "-f", id])?;
        }
        for n in self.ok(&["network", "ls", "-q"])?.lines() {
            if n != "bridge" {
                self.ok(&["network", "rm", n])?;
            }
        }
        let left = self.leftovers()?;
        ensure!(left.is_empty(), "left behind: {left:#?}\n{}", self.logs());
        let berth = self.berth.take().expect("berth running");
        cleanup::stop_instance(berth, &self.cgroup_parent())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(berth) = self.berth.take() {
            // The test failed: remove what it left.
            cleanup::clean_up_instance(
                berth,
                &self.cgroup_parent(),
                Some((
                    &format!("berth-n{}", self.tag),
                    &format!("berth_n{}", self.tag),
                )),
            );
        }
    }
}

#[test]
fn containers_reach_each_other_by_name_and_networks_isolate() -> Result<()> {
    let env = Env::start(Mode::AllInOne, "10.221.0.0", "")?;
    env.network("front", 'a', &["--subnet", "10.221.1.0/24"])?;
    env.network("back", 'b', &["--subnet", "10.221.2.0/24"])?;
    env.network("vault", 'c', &["--subnet", "10.221.3.0/24", "--internal"])?;
    env.network(
        "quiet",
        'd',
        &["--subnet", "10.221.4.0/24", "--icc", "false"],
    )?;

    env.httpd("web", &["--network", "front", "--network-alias", "www"])?;
    env.idle("client", &["--network", "front"])?;
    env.idle("other", &["--network", "back"])?;

    // By name and by alias, inside the network.
    assert_eq!(
        env.wget("client", "http://web/")?.as_deref(),
        Some("web"),
        "{}",
        env.logs()
    );
    assert_eq!(env.wget("client", "http://www/")?.as_deref(), Some("web"));
    // Not from another network: neither by name nor by address.
    let web = env.ip("web")?;
    assert_eq!(env.wget("other", "http://web/")?, None);
    assert_eq!(env.wget("other", &format!("http://{web}/"))?, None);

    // icc=false: the name resolves, but no traffic flows within the network.
    env.httpd("q1", &["--network", "quiet"])?;
    env.idle("q2", &["--network", "quiet"])?;
    let q1 = env.ip("q1")?;
    let lookup = env.ok(&["exec", "q2", "nslookup", "q1"])?;
    assert!(lookup.contains(&q1.to_string()), "{lookup}");
    assert_eq!(env.wget("q2", "http://q1/")?, None);
    assert_eq!(env.wget("q2", &format!("http://{q1}/"))?, None);
    // The container itself still answers on its own address.
    assert_eq!(
        env.wget("q1", &format!("http://{q1}/"))?.as_deref(),
        Some("q1")
    );

    // Internal: only the subnet's route, no route out (no traffic is sent to find out).
    env.idle("vault", &["--network", "vault"])?;
    let routes = env.ok(&["exec", "vault", "ip", "-4", "route", "show"])?;
    assert!(!routes.contains("default"), "{routes}");
    assert!(routes.contains("10.221.3.0/24"), "{routes}");
    let out = env.ctl(&["exec", "vault", "ip", "route", "get", "192.0.2.200"])?;
    assert!(!out.status.success(), "a route out of an internal network");
    let out = env.ok(&["exec", "client", "ip", "route", "get", "192.0.2.200"])?;
    assert!(
        out.contains("via 10.221.1.1"),
        "a normal network routes out: {out}"
    );
    env.stop()
}

#[test]
fn published_ports_answer_on_loopback_and_the_host_address() -> Result<()> {
    let env = Env::start(Mode::AllInOne, "10.222.0.0", "")?;
    let (_, host) = host_address()?;
    let port = free_port()?;
    env.httpd("web", &["-p", &format!("{port}:80")])?;
    for addr in [Ipv4Addr::LOCALHOST, host] {
        assert_eq!(
            host_wget(&format!("http://{addr}:{port}/"))?.as_deref(),
            Some("web"),
            "{addr}:{port}"
        );
    }

    // -P publishes the exposed port on a free host port that `port` reports.
    env.httpd("auto", &["-P", "--expose", "80"])?;
    let mapped = env.ok(&["port", "auto", "80/tcp"])?;
    let picked: u16 = mapped
        .rsplit(':')
        .next()
        .context("host port")?
        .parse()
        .with_context(|| mapped.clone())?;
    assert!(picked > 0 && picked != port, "{mapped}");
    let all = env.ok(&["port", "auto"])?;
    assert_eq!(all, format!("80/tcp -> 0.0.0.0:{picked}"));
    for addr in [Ipv4Addr::LOCALHOST, host] {
        assert_eq!(
            host_wget(&format!("http://{addr}:{picked}/"))?.as_deref(),
            Some("auto"),
            "{addr}:{picked}"
        );
    }

    env.ok(&["rm", "-f", "web"])?;
    assert_eq!(host_wget(&format!("http://127.0.0.1:{port}/"))?, None);
    env.stop()
}

#[test]
fn a_network_service_restart_keeps_containers_connected_and_leaves_nothing() -> Result<()> {
    let env = Env::start(Mode::Separate, "10.223.0.0", "")?;
    env.network("front", 'a', &["--subnet", "10.223.1.0/24"])?;
    let port = free_port()?;
    env.httpd("web", &["--network", "front", "-p", &format!("{port}:80")])?;
    env.idle("client", &["--network", "front"])?;
    let web = env.ip("web")?;
    // By address and through the published port; by name too while the resolver (which lives
    // in the network service) runs.
    let serves = |by_name: bool| -> Result<()> {
        let mut urls = vec![format!("http://{web}/")];
        if by_name {
            urls.push("http://web/".to_owned());
        }
        for url in urls {
            assert_eq!(
                env.wget("client", &url)?.as_deref(),
                Some("web"),
                "{url}: {}",
                env.logs()
            );
        }
        assert_eq!(
            host_wget(&format!("http://127.0.0.1:{port}/"))?.as_deref(),
            Some("web")
        );
        Ok(())
    };
    serves(true)?;

    // Kill the network service: the kernel objects stay, so traffic keeps flowing.
    let pid = env.berth().service_pid("network")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    harness::wait_exited(pid, Duration::from_secs(10))?;
    serves(false)?;
    let up = env.berth().up(&env.options)?;
    ensure!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // Back up: the same connectivity, names, rules and reservations.
    serves(true)?;
    assert_eq!(
        env.ok(&["port", "web"])?,
        format!("80/tcp -> 0.0.0.0:{port}")
    );
    env.idle("late", &["--network", "front"])?;
    let ips = [web, env.ip("client")?, env.ip("late")?];
    assert!(
        ips[2] != ips[0] && ips[2] != ips[1],
        "no duplicate address after the restart: {ips:?}"
    );
    assert_eq!(env.wget("late", "http://web/")?.as_deref(), Some("web"));

    // Removing every container and network leaves nothing (checked in stop).
    env.stop()
}

#[test]
fn host_none_and_container_modes() -> Result<()> {
    let env = Env::start(Mode::AllInOne, "10.224.0.0", "")?;
    let (interface, host) = host_address()?;

    env.idle("hostnet", &["--network", "host"])?;
    let links = env.ok(&["exec", "hostnet", "ip", "-o", "link", "show"])?;
    assert!(links.contains(&format!(": {interface}:")), "{links}");
    let addrs = env.ok(&["exec", "hostnet", "ip", "-4", "-o", "addr"])?;
    assert!(addrs.contains(&format!("inet {host}/")), "{addrs}");

    env.idle("alone", &["--network", "none"])?;
    let links = env.ok(&["exec", "alone", "ip", "-o", "link", "show"])?;
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains(": lo:"), "{links}");

    env.httpd("web", &[])?;
    env.idle("joined", &["--network", "container:web"])?;
    let web = env.ip("web")?;
    let theirs = env.ok(&["exec", "web", "ip", "-o", "link", "show"])?;
    let ours = env.ok(&["exec", "joined", "ip", "-o", "link", "show"])?;
    assert_eq!(ours, theirs);
    let addrs = env.ok(&["exec", "joined", "ip", "-4", "-o", "addr", "show", "eth0"])?;
    assert!(addrs.contains(&format!("inet {web}/")), "{addrs}");
    // The same namespace: web's httpd answers on the joined container's loopback.
    assert_eq!(
        env.wget("joined", "http://127.0.0.1/")?.as_deref(),
        Some("web")
    );
    env.stop()
}

#[test]
fn a_cni_network_attaches_a_container_that_reaches_its_gateway() -> Result<()> {
    ensure!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "Debian's containernetworking-plugins are not installed (tests/run.sh installs them)"
    );
    let env = Env::start(
        Mode::AllInOne,
        "10.225.0.0",
        "cni_plugin_dirs = [\"/usr/lib/cni\"]\n",
    )?;
    let conflist = format!(
        r#"{{"cniVersion":"1.0.0","name":"cnic","plugins":[
            {{"type":"bridge","bridge":"berth-n{}c","isGateway":true,"ipMasq":false,
              "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.225.1.0/24"}}]],
              "routes":[{{"dst":"0.0.0.0/0"}}]}}}}]}}"#,
        env.tag
    );
    let file = env.scratch.path().join("cnic.conflist");
    std::fs::write(&file, conflist)?;
    env.ok(&[
        "network",
        "create",
        "--driver",
        "cni",
        "--cni-conflist",
        file.to_str().context("utf-8 path")?,
        "cnic",
    ])?;
    env.idle("c1", &["--network", "cnic"])?;
    let ip = env.ip("c1")?;
    assert!(ip.to_string().starts_with("10.225.1."), "{ip}");
    let routes = env.ok(&["exec", "c1", "ip", "-4", "route", "show"])?;
    assert!(routes.contains("default via 10.225.1.1"), "{routes}");
    let ping = env.ok(&["exec", "c1", "ping", "-c", "1", "-W", "2", "10.225.1.1"])?;
    assert!(ping.contains("1 packets received"), "{ping}");
    env.stop()
}

//! End-to-end tests of the network service: real bridges, veth pairs, network namespaces,
//! nftables rules and the embedded DNS, driven through berthctl.
//!
//! Containers do not exist yet, so a "container" here is a network namespace the service pins
//! (`network connect` creates it) with busybox running inside through nsenter: the same kernel
//! networking containers get. Traffic only goes to loopback, to the host's own address and to
//! addresses inside the networks these tests create; name lookups run in a private mount
//! namespace whose /etc/resolv.conf names the network's embedded resolver only.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use berth_tests::harness;
use berth_tests::host::{host_address, host_wget, links_with, wget_body};
use berth_tests::{Berth, Mode, Options};
use serde_json::Value;

/// A berth instance with its own bridge names, nft table and address pool, plus a guard that
/// removes every kernel object the test made, also when it fails.
struct Net {
    berth: Option<Berth>,
    tag: String,
    scratch: tempfile::TempDir,
    children: Vec<Child>,
    options: Options,
}

impl Net {
    /// Starts berth; `pool` is a /16 base (e.g. "10.211.0.0") only this test uses.
    fn start(mode: Mode, pool: &str) -> anyhow::Result<Net> {
        Net::start_with(mode, pool, "")
    }

    /// Like [`Net::start`], with more `[network]` configuration lines.
    fn start_with(mode: Mode, pool: &str, extra: &str) -> anyhow::Result<Net> {
        let tag = format!("{:06x}", harness::rand_u32() & 0xff_ffff);
        let config = format!(
            "[network]\ndefault_bridge = \"berth-t{tag}0\"\nnft_table = \"berth_t{tag}\"\n\
             pools = [{{ base = \"{pool}/16\", size = 24 }}]\n{extra}"
        );
        let options = Options {
            config: Some(config),
            ..Default::default()
        };
        let berth = Berth::start_with(mode, options.clone())?;
        Ok(Net {
            berth: Some(berth),
            tag,
            scratch: tempfile::Builder::new().prefix("berth-test-").tempdir()?,
            children: Vec::new(),
            options,
        })
    }

    fn berth(&self) -> &Berth {
        self.berth.as_ref().expect("berth running")
    }

    /// Runs berthctl; fails with its stderr when it fails.
    fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.berth().run_ctl(args)?;
        ensure!(
            out.status.success(),
            "berthctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs berthctl expecting failure; returns its stderr.
    fn ctl_err(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.berth().run_ctl(args)?;
        ensure!(
            !out.status.success(),
            "berthctl {args:?} should have failed"
        );
        Ok(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }

    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let text = self.ctl(&all)?;
        serde_json::from_str(&text).with_context(|| format!("json of {args:?}: {text}"))
    }

    /// `network create NAME ARGS`, with a bridge named after the test (`suffix`: one letter).
    fn create(&self, name: &str, suffix: char, args: &[&str]) -> anyhow::Result<String> {
        let bridge = format!("bridge.name=berth-t{}{suffix}", self.tag);
        let mut all = vec!["network", "create", "--opt", &bridge];
        all.extend_from_slice(args);
        all.push(name);
        self.ctl(&all)
    }

    /// `network connect`, returning the attachment.
    fn connect(&self, network: &str, container: &str, extra: &[&str]) -> anyhow::Result<Attached> {
        let mut args = vec!["network", "connect", network, container];
        args.extend_from_slice(extra);
        let a = self.json(&args)?;
        let ip = a["ip"]
            .as_str()
            .and_then(|ip| ip.split('/').next())
            .context("ip")?
            .parse()?;
        let netns = PathBuf::from(a["netns_path"].as_str().context("netns_path")?);
        let dns = a["dns"]["servers"][0]
            .as_str()
            .unwrap_or("127.0.0.1")
            .to_owned();
        let resolv = self
            .scratch
            .path()
            .join(format!("resolv-{container}-{network}"));
        std::fs::write(&resolv, format!("nameserver {dns}\n"))?;
        Ok(Attached {
            ip,
            netns,
            resolv,
            json: a,
        })
    }

    /// Starts busybox httpd on port 80 in `at`'s netns, serving `body`.
    fn httpd(&mut self, at: &Attached, body: &str) -> anyhow::Result<()> {
        let dir = self
            .scratch
            .path()
            .join(format!("www-{}", self.children.len()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("index.html"), body)?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", at.netns.display()))
            .args(["busybox", "httpd", "-f", "-p", "80", "-h"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.children.push(child);
        // Wait until it listens (bounded).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = in_netns(&at.netns, "busybox netstat -ltn")?;
            if String::from_utf8_lossy(&out.stdout).contains(":80 ") {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "httpd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The services' logs (for failure messages).
    fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(entries) = std::fs::read_dir(self.berth().state().join("logs")) {
            for e in entries.flatten() {
                text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        text
    }

    /// Stops berth and checks that no link, table, netns or mount of this test is left.
    fn stop(mut self) -> anyhow::Result<()> {
        self.kill_children();
        let table = Command::new("nft")
            .args(["list", "table", "ip", &format!("berth_t{}", self.tag)])
            .output()?;
        ensure!(
            !table.status.success(),
            "nft table left: {}\n{}",
            String::from_utf8_lossy(&table.stdout),
            self.logs()
        );
        let links = links_with(&format!("berth-t{}", self.tag))?;
        ensure!(links.is_empty(), "links left: {links:?}");
        // Clean: nothing for the guard to do.
        let berth = self.berth.take().expect("berth running");
        berth.stop()
    }

    fn kill_children(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.kill_children();
        let Some(berth) = self.berth.take() else {
            return;
        };
        // The test failed: remove what it left (netns pins, bridges, the nft table).
        if let Ok(mounts) = harness::mounts_under(&berth.state()) {
            for m in mounts {
                let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        drop(berth);
        for link in links_with(&format!("berth-t{}", self.tag)).unwrap_or_default() {
            let _ = Command::new("ip").args(["link", "del", &link]).output();
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &format!("berth_t{}", self.tag)])
            .output();
    }
}

/// One attachment as the test uses it.
struct Attached {
    ip: Ipv4Addr,
    netns: PathBuf,
    resolv: PathBuf,
    json: Value,
}

impl Attached {
    /// busybox wget of `url` from inside this netns, with this network's resolver only (bounded
    /// by `timeout`: busybox 1.35's own `wget -T` crashes).
    fn wget(&self, url: &str) -> anyhow::Result<Option<String>> {
        let script = format!(
            "mount --bind {} /etc/resolv.conf && exec timeout 3 busybox wget -q -O- {url}",
            self.resolv.display()
        );
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args([
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .output()?;
        Ok(wget_body(&format!("wget {url}"), &out))
    }
}

/// Runs a shell command in a netns (no name lookups).
fn in_netns(netns: &Path, cmd: &str) -> anyhow::Result<Output> {
    Ok(Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["sh", "-c", cmd])
        .output()?)
}

/// A host subnet route (to prove overlapping subnets are refused).
fn host_route() -> anyhow::Result<String> {
    let out = Command::new("ip").args(["-4", "route", "show"]).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("default") && !l.contains("berth"))
        .find_map(|l| {
            l.split_whitespace()
                .next()
                .filter(|d| d.contains('/'))
                .map(str::to_owned)
        })
        .context("no host subnet route")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[test]
fn names_resolve_within_a_network_and_networks_are_isolated() -> anyhow::Result<()> {
    let mut net = Net::start(Mode::AllInOne, "10.211.0.0")?;
    net.create(
        "front",
        'a',
        &["--subnet", "10.211.1.0/24", "--label", "app=web"],
    )?;
    net.create("back", 'b', &["--subnet", "10.211.2.0/24"])?;
    net.create("vault", 'c', &["--subnet", "10.211.3.0/24", "--internal"])?;
    net.create(
        "quiet",
        'd',
        &["--subnet", "10.211.4.0/24", "--icc", "false"],
    )?;

    let web = net.connect("front", "web", &["--alias", "www"])?;
    let client = net.connect("front", "client", &[])?;
    let other = net.connect("back", "other", &[])?;
    net.httpd(&web, "hello from web")?;
    assert_eq!(web.json["interface"], "eth0");
    assert_eq!(web.json["mac"].as_str().unwrap(), {
        let o = web.ip.octets();
        format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    });
    let link = in_netns(
        &web.netns,
        "ip -o link show eth0; ip route; ip -o addr show lo",
    )?;
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains("mtu 1500") && link.contains("default via 10.211.1.1"),
        "{link}"
    );
    assert!(link.contains("127.0.0.1"), "loopback up: {link}");

    // By name and by alias, inside the network.
    assert_eq!(
        client.wget("http://web/")?.as_deref(),
        Some("hello from web"),
        "{}",
        net.logs()
    );
    assert_eq!(
        client.wget("http://www/")?.as_deref(),
        Some("hello from web")
    );
    // Not from another network: neither by name nor by address.
    assert_eq!(other.wget("http://web/")?, None);
    assert_eq!(other.wget(&format!("http://{}/", web.ip))?, None);

    // Internal: no route out at all (only the subnet).
    let vault = net.connect("vault", "vault", &[])?;
    let routes = in_netns(&vault.netns, "ip -4 route show; ip route get 192.0.2.200")?;
    let text = String::from_utf8_lossy(&routes.stdout);
    assert!(
        !text.contains("default"),
        "internal has no default route: {text}"
    );
    assert!(
        !routes.status.success(),
        "no route out of an internal network"
    );
    let ok = in_netns(&client.netns, "ip route get 192.0.2.200")?;
    assert!(ok.status.success(), "a normal network has a route out");
    assert!(vault.json["gateway"].as_str().unwrap_or("").is_empty());

    // icc=false: containers of one network cannot talk to each other; names still resolve.
    let q1 = net.connect("quiet", "q1", &[])?;
    let q2 = net.connect("quiet", "q2", &[])?;
    net.httpd(&q1, "q1")?;
    assert_eq!(q2.wget(&format!("http://{}/", q1.ip))?, None);
    let lookup = in_netns(
        &q2.netns,
        &format!(
            "busybox nslookup q1 {}",
            q1.json["dns"]["servers"][0].as_str().unwrap_or("")
        ),
    )?;
    assert!(
        String::from_utf8_lossy(&lookup.stdout).contains(&q1.ip.to_string()),
        "{}",
        String::from_utf8_lossy(&lookup.stdout)
    );

    // Names follow disconnect and connect.
    net.ctl(&["network", "disconnect", "front", "web"])?;
    assert_eq!(client.wget("http://www/")?, None);
    let web2 = net.connect(
        "front",
        "web",
        &["--alias", "www", "--ip", &web.ip.to_string()],
    )?;
    assert_eq!(web2.ip, web.ip);
    assert_eq!(
        client.wget("http://www/")?.as_deref(),
        Some("hello from web")
    );

    // ls, filters, inspect.
    let names = net.ctl(&["network", "ls", "-q", "-f", "labels.app==web"])?;
    assert_eq!(names, "front");
    let inspect = net.json(&["network", "inspect", "front"])?;
    assert_eq!(inspect[0]["containers"].as_array().map(Vec::len), Some(2));
    assert_eq!(inspect[0]["dns_server"], "10.211.1.1");

    // Everything goes away again.
    let err = net.ctl_err(&["network", "rm", "front"])?;
    assert!(err.contains("in use") && err.contains("client"), "{err}");
    for (network, c) in [
        ("front", "web"),
        ("front", "client"),
        ("back", "other"),
        ("vault", "vault"),
        ("quiet", "q1"),
        ("quiet", "q2"),
    ] {
        net.ctl(&["network", "disconnect", network, c])?;
        net.ctl(&["network", "netns", "rm", c])?;
    }
    net.ctl(&["network", "rm", "front", "back"])?;
    let pruned = net.ctl(&["network", "prune"])?;
    assert_eq!(pruned.lines().count(), 2, "{pruned}");
    assert_eq!(net.ctl(&["network", "ls", "-q"])?, "bridge");
    net.stop()
}

#[test]
fn published_ports_answer_on_loopback_and_the_host_address_and_survive_a_restart()
-> anyhow::Result<()> {
    let mut net = Net::start(Mode::Separate, "10.212.0.0")?;
    let port = free_port()?;
    let published = format!("{port}:80");
    // The predefined network: its bridge appears with the first attachment.
    let web = net.connect("bridge", "web", &["-p", &published, "-p", "80"])?;
    assert!(web.ip.to_string().starts_with("10.212."), "{}", web.ip);
    net.httpd(&web, "published")?;
    let (_, host) = host_address()?;
    assert_eq!(
        host_wget(&format!("http://127.0.0.1:{port}/"))?.as_deref(),
        Some("published")
    );
    assert_eq!(
        host_wget(&format!("http://{host}:{port}/"))?.as_deref(),
        Some("published")
    );

    // A free port was picked for "-p 80", and `port` reports both.
    let ports = net.json(&["port", "web"])?;
    let ports = ports.as_array().context("port list")?;
    assert_eq!(ports.len(), 2, "{ports:?}");
    let picked = ports
        .iter()
        .filter_map(|p| p["host_port"].as_u64())
        .find(|p| *p != u64::from(port))
        .context("picked port")?;
    assert!(picked > 0);
    assert_eq!(
        net.ctl(&["port", "web", "80/tcp"])?.lines().count(),
        2,
        "both mappings of container port 80"
    );
    assert_eq!(
        host_wget(&format!("http://127.0.0.1:{picked}/"))?.as_deref(),
        Some("published")
    );

    // A taken host port is refused, naming the holder, and leaves nothing behind.
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    let taken = holder.local_addr()?.port();
    let err = net.ctl_err(&[
        "network",
        "connect",
        "bridge",
        "late",
        "-p",
        &format!("{taken}:80"),
    ])?;
    assert!(
        err.contains(&format!("process {}", std::process::id())),
        "names the holder: {err}"
    );
    let err = net.ctl_err(&["network", "connect", "bridge", "late", "-p", &published])?;
    assert!(err.contains("\"web\""), "names the container: {err}");
    let inspect = net.json(&["network", "inspect", "bridge"])?;
    assert_eq!(inspect[0]["containers"].as_array().map(Vec::len), Some(1));
    net.ctl(&["network", "netns", "rm", "late"])?;

    // Restart the network service alone: attachments, rules and the reservation stay.
    let network_pid = net.berth().service_pid("network")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(network_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    harness::wait_exited(network_pid, Duration::from_secs(10))?;
    assert_eq!(
        host_wget(&format!("http://127.0.0.1:{port}/"))?.as_deref(),
        Some("published")
    );
    let up = net.berth().up(&net.options)?;
    ensure!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert_eq!(
        host_wget(&format!("http://127.0.0.1:{port}/"))?.as_deref(),
        Some("published")
    );
    assert_eq!(
        net.json(&["port", "web"])?.as_array().map(Vec::len),
        Some(2)
    );
    let err = net.ctl_err(&["network", "connect", "bridge", "late", "-p", &published])?;
    assert!(err.contains("\"web\""), "{err}");
    net.ctl(&["network", "netns", "rm", "late"])?;
    // No duplicate address after the restart.
    let second = net.connect("bridge", "second", &[])?;
    assert_ne!(second.ip, web.ip);

    net.ctl(&["network", "disconnect", "bridge", "web"])?;
    net.ctl(&["network", "disconnect", "bridge", "second"])?;
    assert_eq!(host_wget(&format!("http://127.0.0.1:{port}/"))?, None);
    for c in ["web", "second"] {
        net.ctl(&["network", "netns", "rm", c])?;
    }
    let err = net.ctl_err(&["network", "rm", "bridge"])?;
    assert!(err.contains("predefined"), "{err}");
    net.stop()
}

#[test]
fn bad_input_is_refused_precisely_and_leaves_nothing() -> anyhow::Result<()> {
    let net = Net::start(Mode::AllInOne, "10.213.0.0")?;
    net.create("a", 'a', &["--subnet", "10.213.1.0/24"])?;
    let route = host_route()?;
    for (args, needle) in [
        (
            vec!["--subnet", "10.213.1.128/25", "b"],
            "overlaps network \"a\"",
        ),
        (vec!["--subnet", route.as_str(), "b"], "already on the host"),
        (
            vec!["--subnet", "10.213.2.0/24", "--gateway", "10.213.3.1", "b"],
            "gateway",
        ),
        (vec!["--subnet", "10.213.2.5/24", "b"], "host bits"),
        (vec!["--subnet", "nonsense", "b"], "subnet"),
        (
            vec![
                "--subnet",
                "10.213.2.0/24",
                "--ip-range",
                "10.213.9.0/25",
                "b",
            ],
            "ip_range",
        ),
        (vec!["a"], "already exists"),
        (vec!["bad/name"], "not a valid name"),
        (vec!["--driver", "macvlan", "b"], "unknown driver"),
    ] {
        let mut all = vec!["network", "create"];
        all.extend(args.iter().copied());
        let err = net.ctl_err(&all)?;
        assert!(err.contains(needle), "{all:?}: {err}");
    }
    // A /30 holds one container: the second attach is a clear error.
    net.create("tiny", 'b', &["--subnet", "10.213.5.0/30"])?;
    let one = net.connect("tiny", "one", &[])?;
    assert_eq!(one.ip, Ipv4Addr::new(10, 213, 5, 2));
    let err = net.ctl_err(&["network", "connect", "tiny", "two"])?;
    assert!(err.contains("full"), "{err}");
    let err = net.ctl_err(&["network", "connect", "a", "two", "--ip", "10.213.7.7"])?;
    assert!(err.contains("not a usable address"), "{err}");
    net.ctl(&["network", "connect", "a", "x", "--ip", "10.213.1.9"])?;
    let err = net.ctl_err(&["network", "connect", "a", "two", "--ip", "10.213.1.9"])?;
    assert!(err.contains("in use") && err.contains("x"), "{err}");
    let err = net.ctl_err(&["network", "connect", "nope", "two"])?;
    assert!(err.contains("not found"), "{err}");
    net.create("int", 'c', &["--internal", "--subnet", "10.213.6.0/24"])?;
    let err = net.ctl_err(&["network", "connect", "int", "two", "-p", "8080:80"])?;
    assert!(err.contains("internal"), "{err}");
    let err = net.ctl_err(&["network", "connect", "a", "two", "-p", "80-81:80"])?;
    assert!(err.contains("differ"), "{err}");
    let err = net.ctl_err(&["network", "connect", "a", "x"])?;
    assert!(err.contains("already attached"), "{err}");
    let err = net.ctl_err(&["network", "netns", "rm", "x"])?;
    assert!(err.contains("still attached"), "{err}");

    // Failed attaches left no link or address behind: "two" has a netns with only loopback.
    let netns = net.berth().state().join("netns/default/two");
    let links = in_netns(&netns, "ip -o link show")?;
    assert_eq!(
        String::from_utf8_lossy(&links.stdout).lines().count(),
        1,
        "only lo"
    );
    let attached = net.json(&["network", "inspect", "a", "tiny", "int"])?;
    let count: usize = attached
        .as_array()
        .context("inspect")?
        .iter()
        .map(|n| n["containers"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(count, 2, "only one and x are attached");

    net.ctl(&["network", "disconnect", "tiny", "one"])?;
    net.ctl(&["network", "disconnect", "a", "x"])?;
    // Detach is idempotent.
    net.ctl(&["network", "disconnect", "a", "x"])?;
    for c in ["one", "two", "x"] {
        net.ctl(&["network", "netns", "rm", c])?;
    }
    net.ctl(&["network", "rm", "a", "tiny", "int"])?;
    net.stop()
}

#[test]
fn cni_mode_attaches_with_debian_plugins_and_undoes_failures() -> anyhow::Result<()> {
    ensure!(
        Path::new("/usr/lib/cni/bridge").exists(),
        "Debian's containernetworking-plugins are not installed (tests/run.sh installs them)"
    );
    // A plugin that answers garbage, beside Debian's.
    let plugins = tempfile::Builder::new().prefix("berth-test-").tempdir()?;
    let garbage = plugins.path().join("garbage");
    std::fs::write(&garbage, "#!/bin/sh\ncat >/dev/null\necho not-json\n")?;
    std::fs::set_permissions(
        &garbage,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let extra = format!(
        "cni_plugin_dirs = [\"/usr/lib/cni\", \"{}\"]\n",
        plugins.path().display()
    );
    let net = Net::start_with(Mode::AllInOne, "10.214.0.0", &extra)?;
    let conflist = |name: &str, bridge: char, subnet: &str, more: &str| {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[
                {{"type":"bridge","bridge":"berth-t{tag}{bridge}","isGateway":true,"ipMasq":false,
                  "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{subnet}"}}]]}}}}{more}]}}"#,
            tag = net.tag
        )
    };
    let write = |file: &str, text: String| -> anyhow::Result<String> {
        let path = net.scratch.path().join(file);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let good = write("good.conflist", conflist("good", 'c', "10.214.1.0/24", ""))?;
    let bad = write(
        "bad.conflist",
        conflist("bad", 'd', "10.214.2.0/24", r#",{"type":"garbage"}"#),
    )?;
    let missing = write(
        "missing.conflist",
        conflist(
            "missing",
            'e',
            "10.214.3.0/24",
            r#",{"type":"no-such-plugin"}"#,
        ),
    )?;
    for (name, file) in [
        ("cninet", &good),
        ("cnibad", &bad),
        ("cnimissing", &missing),
    ] {
        net.ctl(&[
            "network",
            "create",
            "--driver",
            "cni",
            "--cni-conflist",
            file,
            name,
        ])?;
    }
    let err = net.ctl_err(&[
        "network",
        "create",
        "--driver",
        "cni",
        "--cni-conflist",
        &good,
        "again",
    ])?;
    assert!(err.contains("overlaps"), "{err}");

    // The bridge and host-local plugins attach the container; it reaches the gateway.
    let c1 = net.connect("cninet", "c1", &[])?;
    assert!(c1.ip.to_string().starts_with("10.214.1."), "{}", c1.ip);
    assert_eq!(c1.json["gateway"], "10.214.1.1");
    let ping = in_netns(&c1.netns, "busybox ping -c 1 -W 2 10.214.1.1")?;
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // A restart keeps the attachment and runs CHECK through the list.
    net.ctl(&["system", "down"])?;
    let up = net.berth().up(&net.options)?;
    ensure!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let inspect = net.json(&["network", "inspect", "cninet"])?;
    assert_eq!(inspect[0]["containers"][0]["ip"], c1.json["ip"]);
    assert!(!net.logs().contains("CHECK failed"), "{}", net.logs());
    let ping = in_netns(&c1.netns, "busybox ping -c 1 -W 2 10.214.1.1")?;
    assert!(ping.status.success(), "after restart");

    // A plugin answering garbage, or missing: precise errors, nothing left in the netns.
    let err = net.ctl_err(&["network", "connect", "cnibad", "c2"])?;
    assert!(
        err.contains("garbage") && err.contains("not a CNI result"),
        "{err}"
    );
    let err = net.ctl_err(&["network", "connect", "cnimissing", "c2"])?;
    assert!(
        err.contains("no-such-plugin") && err.contains("not found"),
        "{err}"
    );
    let c2_netns = net.berth().state().join("netns/default/c2");
    let links = in_netns(&c2_netns, "ip -o link show")?;
    assert_eq!(
        String::from_utf8_lossy(&links.stdout).lines().count(),
        1,
        "only lo: {}",
        String::from_utf8_lossy(&links.stdout)
    );

    net.ctl(&["network", "disconnect", "cninet", "c1"])?;
    let links = in_netns(&c1.netns, "ip -o link show")?;
    assert_eq!(String::from_utf8_lossy(&links.stdout).lines().count(), 1);
    for c in ["c1", "c2"] {
        net.ctl(&["network", "netns", "rm", c])?;
    }
    net.ctl(&["network", "rm", "cninet", "cnibad", "cnimissing"])?;
    net.stop()
}

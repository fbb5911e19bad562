//! Looking at the host from a test: its links, its own address, and HTTP requests from it
//! (to loopback or the host's own address only).

use std::net::Ipv4Addr;
use std::process::{Command, Output};

use anyhow::bail;

/// Host links whose name starts with `prefix`.
pub fn links_with(prefix: &str) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// The host's own IPv4 address and its interface (the first global one berth did not create).
pub fn host_address() -> anyhow::Result<(String, Ipv4Addr)> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().nth(1).unwrap_or("");
        if name.starts_with("berth") {
            continue;
        }
        if let Some(addr) = line.split_whitespace().skip_while(|w| *w != "inet").nth(1) {
            return Ok((
                name.to_owned(),
                addr.split('/').next().unwrap_or("").parse()?,
            ));
        }
    }
    bail!("no global IPv4 address on the host")
}

/// busybox wget of `url` from the host, bounded to 3 s (loopback or the host's own address
/// only): the body, trimmed, or `None` when the request failed.
pub fn host_wget(url: &str) -> anyhow::Result<Option<String>> {
    let out = Command::new("timeout")
        .args(["3", "busybox", "wget", "-q", "-O-", url])
        .output()?;
    Ok(wget_body(&format!("wget {url}"), &out))
}

/// The trimmed stdout of a finished wget (`what` names it), or `None` when it failed; a
/// failure is logged with its stderr.
pub fn wget_body(what: &str, out: &Output) -> Option<String> {
    if !out.status.success() {
        eprintln!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Files (and links, not followed) under `dir`, recursively; nothing when `dir` is missing.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            files.extend(files_under(&e.path()));
        } else {
            files.push(e.path());
        }
    }
    files
}

/// Network objects of a test instance still on the host: links named `link_prefix*`, the nft
/// table `nft_table`, and addresses in the pool whose dotted text starts with `pool_prefix`.
pub fn network_leftovers(
    link_prefix: &str,
    nft_table: &str,
    pool_prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let mut left: Vec<String> = links_with(link_prefix)?
        .into_iter()
        .map(|l| format!("link {l}"))
        .collect();
    let table = Command::new("nft")
        .args(["list", "table", "ip", nft_table])
        .output()?;
    if table.status.success() {
        left.push(format!(
            "nft table: {}",
            String::from_utf8_lossy(&table.stdout)
        ));
    }
    let addrs = Command::new("ip").args(["-4", "-o", "addr"]).output()?;
    for line in String::from_utf8_lossy(&addrs.stdout).lines() {
        if line.contains(&format!(" {pool_prefix}.")) {
            left.push(format!("address {line}"));
        }
    }
    Ok(left)
}

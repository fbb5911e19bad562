//! `berth-shim`: one supervising process per container (or pod).
//!
//! ```text
//! berth-shim --namespace NS --id ID --socket-dir DIR [--bundle PATH] [--runtime NAME]
//!            [--runtime-root DIR] [--log FILE] [--debug]
//! ```
//!
//! Starts the shim daemon detached (see [`start`]) serving `berth.shim.v1.Shim` on
//! `DIR/shim.sock`, prints its address (`unix://DIR/shim.sock`) and exits 0; `DIR` also
//! receives `address`, `shim.pid` and the exit records. On failure it prints one line to
//! stderr and exits 1, leaving nothing behind.
//!
//! Process roles: [`start`] (the starter), [`daemon`] (the shim), the runtime commands and
//! container processes it spawns and reaps ([`runtime`], [`reaper`]), and a pod's init
//! (`berth-shim pod-init`, [`podinit`]).

mod backend;
mod cgroup;
mod channel;
mod command;
mod daemon;
mod error;
mod events;
mod io;
mod logs;
mod mount;
mod podinit;
mod reaper;
mod runtime;
mod service;
mod shim;
mod spec;
mod start;
mod sys;
mod task;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: berth-shim --namespace NS --id ID --socket-dir DIR [--bundle PATH] \
                     [--runtime builtin|runc|crun|PATH] [--runtime-root DIR] [--log FILE] [--debug]";

fn parse(mut args: impl Iterator<Item = String>) -> Result<daemon::Options, String> {
    let mut namespace = None;
    let mut id = None;
    let mut dir = None;
    let mut options = daemon::Options {
        namespace: String::new(),
        id: String::new(),
        bundle: None,
        dir: PathBuf::new(),
        // berth's own runtime (berth-runtime next to this executable) unless one is named.
        runtime: "builtin".to_owned(),
        runtime_root: None,
        log: None,
        debug: false,
    };
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if name == "--debug" {
            options.debug = true;
            continue;
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match name.as_str() {
            "--namespace" => namespace = Some(value()?),
            "--id" => id = Some(value()?),
            "--socket-dir" => dir = Some(PathBuf::from(value()?)),
            "--bundle" => options.bundle = Some(PathBuf::from(value()?)),
            "--runtime" => options.runtime = value()?,
            "--runtime-root" => options.runtime_root = Some(PathBuf::from(value()?)),
            "--log" => options.log = Some(PathBuf::from(value()?)),
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    options.namespace = namespace.ok_or_else(|| format!("--namespace is required\n{USAGE}"))?;
    options.id = id.ok_or_else(|| format!("--id is required\n{USAGE}"))?;
    options.dir = dir.ok_or_else(|| format!("--socket-dir is required\n{USAGE}"))?;
    Ok(options)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().is_some_and(|a| a == podinit::COMMAND) {
        podinit::run();
    }
    if args.peek().is_some_and(|a| a == "--version" || a == "-V") {
        println!(
            "berth-shim {} ({})",
            berth_api::server::VERSION,
            berth_api::server::REVISION
        );
        return ExitCode::SUCCESS;
    }
    if args.peek().is_some_and(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("berth-shim: {e}");
            return ExitCode::from(2);
        }
    };
    match start::run(options) {
        Ok(address) => {
            println!("{address}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth-shim: {e}");
            ExitCode::FAILURE
        }
    }
}

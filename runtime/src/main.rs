//! `berth-runtime`: the built-in OCI runtime's command line (the subset of runc's that
//! berth's shim uses, plus `run`).
//!
//! ```text
//! berth-runtime [--root DIR] [--log FILE] [--log-format json|text] COMMAND ...
//!   create [--bundle DIR] [--pid-file FILE] [--console-socket SOCK] ID
//!   start ID | state ID | pause ID | resume ID
//!   kill [--all] ID [SIGNAL]
//!   delete [--force] ID
//!   exec --process FILE [--detach] [--pid-file FILE] [--console-socket SOCK] ID
//!   update --resources FILE|- ID
//!   run [--bundle DIR] ID        (create, start, wait, delete; exits with the status)
//! ```
//! Errors go to the log file (JSON lines with `--log-format json`) or stderr; exit status 1.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_runtime::error::{Error, Result};
use berth_runtime::{create, exec, ops};

const USAGE: &str = "usage: berth-runtime [--root DIR] [--log FILE] [--log-format json|text] \
                     create|start|state|kill|delete|exec|pause|resume|update|run ... ID";

struct Args {
    flags: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

/// Flags that take a value.
const VALUED: &[&str] = &[
    "--root",
    "--log",
    "--log-format",
    "--bundle",
    "-b",
    "--pid-file",
    "--console-socket",
    "--process",
    "-p",
    "--resources",
    "-r",
    "--criu",
];

fn split(args: impl Iterator<Item = String>) -> Result<Args> {
    let mut out = Args {
        flags: Vec::new(),
        positional: Vec::new(),
    };
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        if a.starts_with('-') && a.len() > 1 {
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (a.clone(), None),
            };
            let name = if name.starts_with("--") || name.len() == 2 {
                name
            } else {
                format!("-{name}")
            };
            if VALUED.contains(&name.as_str()) {
                let v = match inline {
                    Some(v) => v,
                    None => args
                        .next()
                        .ok_or_else(|| Error::Usage(format!("{name} needs a value")))?,
                };
                out.flags.push((name, Some(v)));
            } else {
                out.flags.push((name, None));
            }
        } else {
            out.positional.push(a);
        }
    }
    Ok(out)
}

impl Args {
    fn value(&self, names: &[&str]) -> Option<String> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| names.contains(&n.as_str()))
            .and_then(|(_, v)| v.clone())
    }
    fn has(&self, names: &[&str]) -> bool {
        self.flags.iter().any(|(n, _)| names.contains(&n.as_str()))
    }
}

fn run(args: Args) -> Result<ExitCode> {
    let root = PathBuf::from(
        args.value(&["--root"])
            .unwrap_or_else(|| "/run/berth-runtime".into()),
    );
    if let Some(log) = args.value(&["--log"]) {
        berth_runtime::log::init(
            PathBuf::from(log),
            args.value(&["--log-format"]).as_deref() == Some("json"),
        );
    }
    let mut pos = args.positional.iter();
    let command = pos
        .next()
        .ok_or_else(|| Error::Usage(USAGE.into()))?
        .clone();
    let id = pos
        .next()
        .cloned()
        .ok_or_else(|| Error::Usage(format!("{command}: a container id is required\n{USAGE}")))?;
    let extra: Vec<&String> = pos.collect();
    let bundle = || {
        PathBuf::from(
            args.value(&["--bundle", "-b"])
                .unwrap_or_else(|| ".".into()),
        )
    };
    match command.as_str() {
        "create" => {
            create::create(
                &root,
                &create::CreateOpts {
                    id,
                    bundle: bundle(),
                    pid_file: args.value(&["--pid-file"]).map(PathBuf::from),
                    console_socket: args.value(&["--console-socket"]).map(PathBuf::from),
                },
            )?;
        }
        "run" => {
            let created = create::create(
                &root,
                &create::CreateOpts {
                    id: id.clone(),
                    bundle: bundle(),
                    pid_file: args.value(&["--pid-file"]).map(PathBuf::from),
                    console_socket: args.value(&["--console-socket"]).map(PathBuf::from),
                },
            )?;
            ops::start(&root, &id)?;
            let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(created.pid), None)
                .map_err(Error::sys("wait for the init"))?;
            ops::delete(&root, &id, true)?;
            let code = match status {
                nix::sys::wait::WaitStatus::Exited(_, c) => c as u8,
                nix::sys::wait::WaitStatus::Signaled(_, s, _) => 128 + s as u8,
                _ => 1,
            };
            return Ok(ExitCode::from(code));
        }
        "start" => ops::start(&root, &id)?,
        "state" => {
            let v = ops::state(&root, &id)?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        "kill" => {
            let sig = ops::parse_signal(extra.first().map(|s| s.as_str()).unwrap_or("SIGTERM"))?;
            ops::kill(&root, &id, sig, args.has(&["--all", "-a"]))?;
        }
        "delete" => ops::delete(&root, &id, args.has(&["--force", "-f"]))?,
        "pause" => ops::pause(&root, &id)?,
        "resume" => ops::resume(&root, &id)?,
        "update" => {
            let file = args
                .value(&["--resources", "-r"])
                .ok_or_else(|| Error::Usage("update needs --resources".into()))?;
            let data = if file == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(Error::io("stdin"))?
                    .into_bytes()
            } else {
                std::fs::read(&file).map_err(Error::io(&file))?
            };
            ops::update(&root, &id, &data)?;
        }
        "exec" => {
            let process = args
                .value(&["--process", "-p"])
                .ok_or_else(|| Error::Usage("exec needs --process".into()))?;
            exec::exec(
                &root,
                &exec::ExecOpts {
                    id,
                    process: PathBuf::from(process),
                    pid_file: args.value(&["--pid-file"]).map(PathBuf::from),
                    console_socket: args.value(&["--console-socket"]).map(PathBuf::from),
                },
            )?;
        }
        other => return Err(Error::Usage(format!("unknown command {other:?}\n{USAGE}"))),
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().is_some_and(|a| a == "--version" || a == "-v") {
        println!("berth-runtime {}\nspec: 1.0.2", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if argv.first().is_some_and(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match split(argv.into_iter()).and_then(run) {
        Ok(code) => code,
        Err(e) => {
            berth_runtime::log::error(&e.to_string());
            ExitCode::FAILURE
        }
    }
}

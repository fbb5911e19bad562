//! `berthctl completion bash|zsh|fish`: shell completion scripts generated from the command
//! definitions, so they always match the flags.

use std::io::Write;
use std::process::ExitCode;

use clap_complete::Shell;

/// `berthctl completion` arguments.
#[derive(clap::Args)]
pub struct CompletionArgs {
    /// Shell to generate the script for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Prints the completion script of `command` for the chosen shell.
pub fn print(args: CompletionArgs, command: &mut clap::Command) -> anyhow::Result<ExitCode> {
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, command, name, &mut script);
    match std::io::stdout().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

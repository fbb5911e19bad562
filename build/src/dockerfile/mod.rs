//! Dockerfile front end: parses a Dockerfile into stages and instructions the way Docker's
//! reference (and BuildKit's `frontend/dockerfile` parser) documents it, and applies the builder's
//! variable substitution where Docker allows it.
//!
//! Parsing ([`parse`]) is purely syntactic: no variable is expanded, so the result can be cached and
//! shown as written. Expansion happens when a step runs, with the variables in effect at that step
//! ([`Instruction::expand`], [`Stage::base`]); `RUN`, `CMD` and `ENTRYPOINT` are never expanded by the
//! builder (the shell does it at run time), `ONBUILD` triggers neither.

mod lexer;
mod parser;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

pub use parser::{parse, parse_instruction};

/// A syntax or substitution error, located at a (1-based) line of the Dockerfile.
///
/// Displays as `Dockerfile:LINE: message`; callers that know the real file name replace the
/// prefix with [`ParseError::display_with`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile:{line}: {message}")]
pub struct ParseError {
    /// 1-based line the error concerns (the first line of the instruction).
    pub line: usize,
    /// What is wrong, lowercase, without the location.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(line: usize, message: impl Into<String>) -> Self {
        ParseError {
            line,
            message: message.into(),
        }
    }

    /// The error as `FILE:LINE: message`, for a Dockerfile known by another name.
    pub fn display_with(&self, file: &str) -> String {
        format!("{file}:{}: {}", self.line, self.message)
    }
}

/// A non-fatal remark made while parsing (an ignored `# syntax=` directive, for instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// 1-based line the remark concerns.
    pub line: usize,
    /// The remark, lowercase.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dockerfile:{}: {}", self.line, self.message)
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`\` unless a `# escape=` directive says otherwise).
    pub escape: char,
    /// The `ARG`s declared before the first `FROM` (usable only in `FROM` lines, and inside a stage
    /// after a bare `ARG NAME` re-declares them).
    pub args: Vec<ArgDecl>,
    /// The build stages, in file order (`COPY --from=0` is the first).
    pub stages: Vec<Stage>,
    /// Non-fatal remarks, to be shown to the user.
    pub warnings: Vec<Warning>,
}

/// One build stage: a `FROM` line and the instructions up to the next `FROM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// The `AS name`, lowercased as Docker does.
    pub name: Option<String>,
    /// The image reference as written (unexpanded); `scratch` for an empty base.
    pub base: String,
    /// The `--platform` flag as written (unexpanded).
    pub platform: Option<String>,
    /// 1-based line of the `FROM`.
    pub line: usize,
    /// The `FROM` line as written, continuations joined.
    pub text: String,
    /// The Dockerfile's escape character, used when expanding.
    pub escape: char,
    /// The instructions of the stage, `FROM` excluded.
    pub instructions: Vec<Instruction>,
}

/// One instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line where the instruction starts.
    pub line: usize,
    /// The instruction as written on its (logical) line, continuations joined, heredoc bodies not
    /// included (they are in `kind`); what history entries and progress lines show.
    pub text: String,
    /// The Dockerfile's escape character, used when expanding.
    pub escape: char,
    /// What the instruction does, unexpanded.
    pub kind: Kind,
}

/// A declared build argument (`ARG name[=default]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    /// The argument's name.
    pub name: String,
    /// The default value (raw until expanded).
    pub default: Option<String>,
}

/// The exec form (JSON array) or the shell form of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `["executable", "arg", ...]`: run as is, no shell.
    Exec(Vec<String>),
    /// `command line`: passed as one argument to the stage's `SHELL` (`/bin/sh -c` by default).
    Shell(String),
}

/// `RUN --network=` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// `default`: whatever the build was asked to use.
    Default,
    /// `none`: no network.
    None,
    /// `host`: the host's network namespace.
    Host,
}

/// An inline file written with a heredoc (`<<EOF` ... `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, quotes removed (`EOF`); `COPY` uses it as the file name.
    pub name: String,
    /// The body, with a final newline; leading tabs already removed for `<<-`.
    pub content: String,
    /// Whether the builder expands variables in the body (delimiter not quoted).
    pub expand: bool,
}

/// A `RUN` instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// What to run. For a heredoc as BuildKit does it: a command that is just `<<EOF` runs the
    /// body with the shell; several heredocs or a heredoc fed to a command give the shell the
    /// command line followed by the bodies (the shell reads them).
    pub command: Command,
    /// A heredoc body starting with `#!` that is the whole command: the executor must write it as
    /// an executable file at `/dev/pipes/<name>` (read-only mount) and `command` runs that path.
    pub script: Option<Heredoc>,
    /// `--network=`, when given.
    pub network: Option<Network>,
}

/// One source of a `COPY`/`ADD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A path in the context (or the `--from` stage/image), or for `ADD` a URL.
    Path(String),
    /// An inline file.
    Heredoc(Heredoc),
}

/// A `COPY` or `ADD` instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// The sources, in order (at least one).
    pub sources: Vec<Source>,
    /// The destination; a trailing `/` means a directory.
    pub dest: String,
    /// `--from=` stage name, stage index or image (COPY only; never expanded, as in Docker).
    pub from: Option<String>,
    /// `--chown=user[:group]`.
    pub chown: Option<String>,
    /// `--chmod=` octal mode.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--checksum=sha256:...` for an `ADD` of a URL.
    pub checksum: Option<String>,
}

/// A `HEALTHCHECK` instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any check inherited from the base image.
    None,
    /// `HEALTHCHECK [options] CMD ...`.
    Check {
        /// The command to run (`CMD` in the image config for exec form, `CMD-SHELL` for shell form).
        command: Command,
        /// `--interval` (zero or absent: the default).
        interval: Option<Duration>,
        /// `--timeout`.
        timeout: Option<Duration>,
        /// `--start-period`.
        start_period: Option<Duration>,
        /// `--start-interval`.
        start_interval: Option<Duration>,
        /// `--retries`.
        retries: Option<u32>,
    },
}

impl Healthcheck {
    /// The `Test` field of the image config: `["NONE"]`, `["CMD", args...]` or
    /// `["CMD-SHELL", command]`.
    pub fn test(&self) -> Vec<String> {
        match self {
            Healthcheck::None => vec!["NONE".to_string()],
            Healthcheck::Check {
                command: Command::Exec(args),
                ..
            } => std::iter::once("CMD".to_string())
                .chain(args.iter().cloned())
                .collect(),
            Healthcheck::Check {
                command: Command::Shell(line),
                ..
            } => {
                vec!["CMD-SHELL".to_string(), line.clone()]
            }
        }
    }
}

/// What an instruction does. Fields hold the text as written until [`Instruction::expand`] has
/// substituted variables and removed quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `FROM` (only seen from [`parse_instruction`]; [`parse`] turns it into a [`Stage`]).
    From {
        /// Image reference.
        image: String,
        /// `AS name`, lowercased.
        name: Option<String>,
        /// `--platform`.
        platform: Option<String>,
    },
    /// `RUN`.
    Run(Run),
    /// `CMD`.
    Cmd(Command),
    /// `ENTRYPOINT`.
    Entrypoint(Command),
    /// `ENV key=value ...` (or the legacy `ENV key value`), in order.
    Env(Vec<(String, String)>),
    /// `ARG name[=default] ...`.
    Arg(Vec<ArgDecl>),
    /// `LABEL key=value ...`, in order.
    Label(Vec<(String, String)>),
    /// `MAINTAINER name` (deprecated; sets the author).
    Maintainer(String),
    /// `EXPOSE port[/proto] ...`; after expansion each entry is one `port/proto` (ranges unrolled,
    /// protocol defaulting to `tcp`), as the image config's `ExposedPorts` keys.
    Expose(Vec<String>),
    /// `WORKDIR path`.
    Workdir(String),
    /// `USER user[:group]`.
    User(String),
    /// `VOLUME path ...` or `VOLUME ["path", ...]`.
    Volume(Vec<String>),
    /// `ADD`.
    Add(Copy),
    /// `COPY`.
    Copy(Copy),
    /// `ONBUILD instruction`: the trigger's text, stored as is in the image config.
    Onbuild(String),
    /// `STOPSIGNAL signal`.
    Stopsignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `SHELL ["executable", "parameters"]`.
    Shell(Vec<String>),
}

impl Kind {
    /// The instruction keyword, upper case (`RUN`, `COPY`, ...).
    pub fn keyword(&self) -> &'static str {
        match self {
            Kind::From { .. } => "FROM",
            Kind::Run(_) => "RUN",
            Kind::Cmd(_) => "CMD",
            Kind::Entrypoint(_) => "ENTRYPOINT",
            Kind::Env(_) => "ENV",
            Kind::Arg(_) => "ARG",
            Kind::Label(_) => "LABEL",
            Kind::Maintainer(_) => "MAINTAINER",
            Kind::Expose(_) => "EXPOSE",
            Kind::Workdir(_) => "WORKDIR",
            Kind::User(_) => "USER",
            Kind::Volume(_) => "VOLUME",
            Kind::Add(_) => "ADD",
            Kind::Copy(_) => "COPY",
            Kind::Onbuild(_) => "ONBUILD",
            Kind::Stopsignal(_) => "STOPSIGNAL",
            Kind::Healthcheck(_) => "HEALTHCHECK",
            Kind::Shell(_) => "SHELL",
        }
    }
}

impl Instruction {
    /// The instruction with the builder's variable substitution and quote removal done, using
    /// `vars` (the stage's `ENV` and the `ARG`s in effect). Only the instructions Docker expands are
    /// changed (`ADD COPY ENV ARG EXPOSE LABEL STOPSIGNAL USER VOLUME WORKDIR`); the others are
    /// returned as they are. Within one `ENV` or `LABEL` every word sees the same `vars`, so in
    /// `ENV a=1 b=$a`, `$a` is the value from before the instruction; `ARG` defaults see the
    /// arguments before them (see [`Instruction::resolve_args`] for the values with build args).
    pub fn expand(&self, vars: &BTreeMap<String, String>) -> Result<Kind, ParseError> {
        parser::expand(self, vars)
    }
}

impl Instruction {
    /// The values an `ARG` instruction gives its arguments, in order, as Docker decides them:
    /// a `--build-arg` value first, else the default expanded with `vars` and the arguments
    /// before it in the instruction, else (bare `ARG NAME`) the value of the meta `ARG` of that
    /// name. `None`: declared without any value. Empty for other instructions.
    pub fn resolve_args(
        &self,
        vars: &BTreeMap<String, String>,
        build_args: &BTreeMap<String, String>,
        meta_args: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, Option<String>)>, ParseError> {
        parser::resolve_args(self, vars, build_args, meta_args)
    }
}

impl Stage {
    /// The base image reference with the meta `ARG`s (those declared before the first `FROM`, see
    /// [`Dockerfile::meta_args`]) substituted.
    pub fn base(&self, args: &BTreeMap<String, String>) -> Result<String, ParseError> {
        parser::expand_word(&self.base, args, self.escape, self.line)
    }

    /// The `--platform` flag with the meta `ARG`s substituted, if given.
    pub fn platform(&self, args: &BTreeMap<String, String>) -> Result<Option<String>, ParseError> {
        self.platform
            .as_deref()
            .map(|p| parser::expand_word(p, args, self.escape, self.line))
            .transpose()
    }
}

impl Dockerfile {
    /// The values of the meta `ARG`s: each declared default (expanded with the ones before it),
    /// overridden by `build_args` (`--build-arg`). Arguments declared without a default and not
    /// given are absent, and so are build args not declared before the first `FROM`. Docker's
    /// automatic platform args (`BUILDPLATFORM`, `TARGETPLATFORM`, `TARGETOS`, `TARGETARCH`, ...)
    /// are usable in `FROM` without a declaration: the caller adds them to the result.
    pub fn meta_args(
        &self,
        build_args: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ParseError> {
        parser::meta_args(self, build_args)
    }

    /// The index of the stage named `name` (case-insensitive) or numbered `name` (`COPY --from=0`).
    pub fn find_stage(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        if let Some(i) = self
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            return Some(i);
        }
        name.parse::<usize>()
            .ok()
            .filter(|i| *i < self.stages.len())
    }
}

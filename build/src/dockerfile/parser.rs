//! Turns Dockerfile text into stages and instructions, and expands instructions.
//!
//! Reading goes in two steps, like Docker's: [`Reader`] turns physical lines into logical
//! instructions (parser directives, comments, continuations, heredoc bodies), then
//! [`instruction`] parses the flags and arguments of one logical line into a [`Kind`].

use std::collections::BTreeMap;
use std::time::Duration;

use super::lexer::{parse_words, process_heredoc, process_word, process_words};
use super::{
    ArgDecl, Command, Copy, Dockerfile, Healthcheck, Heredoc, Instruction, Kind, Network,
    ParseError, Run, Source, Stage, Warning,
};

const DEFAULT_ESCAPE: char = '\\';

/// Parses a whole Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let mut reader = Reader::new(text, true);
    let mut dockerfile = Dockerfile {
        escape: DEFAULT_ESCAPE,
        args: Vec::new(),
        stages: Vec::new(),
        warnings: Vec::new(),
    };
    let mut any = false;
    while let Some(logical) = reader.next_instruction()? {
        any = true;
        let ins = instruction(&logical, reader.escape, &mut reader.warnings)?;
        match ins.kind {
            Kind::From {
                image,
                name,
                platform,
            } => {
                if let Some(name) = &name
                    && dockerfile
                        .stages
                        .iter()
                        .any(|s| s.name.as_ref() == Some(name))
                {
                    return Err(ParseError::new(
                        ins.line,
                        format!("duplicate stage name {name:?}"),
                    ));
                }
                dockerfile.stages.push(Stage {
                    name,
                    base: image,
                    platform,
                    line: ins.line,
                    text: ins.text,
                    escape: ins.escape,
                    instructions: Vec::new(),
                });
            }
            Kind::Arg(args) if dockerfile.stages.is_empty() => dockerfile.args.extend(args),
            _ => match dockerfile.stages.last_mut() {
                Some(stage) => stage.instructions.push(ins),
                None => {
                    return Err(ParseError::new(
                        ins.line,
                        format!(
                            "{} before the first FROM: a Dockerfile must start with FROM (only ARG may come before it)",
                            ins.kind.keyword()
                        ),
                    ));
                }
            },
        }
    }
    if !any {
        return Err(ParseError::new(
            reader.line.max(1),
            "file with no instructions",
        ));
    }
    if dockerfile.stages.is_empty() {
        return Err(ParseError::new(
            reader.line.max(1),
            "no FROM: the Dockerfile has no stage to build",
        ));
    }
    dockerfile.escape = reader.escape;
    dockerfile.warnings = reader.warnings;
    Ok(dockerfile)
}

/// Parses one instruction on its own (an `ONBUILD` trigger of a parent image, for instance):
/// continuations and heredocs are allowed, parser directives are not looked for, the escape
/// character is `\`, and every error is reported at `line`.
pub fn parse_instruction(text: &str, line: usize) -> Result<Instruction, ParseError> {
    let at = |e: ParseError| ParseError::new(line, e.message);
    let mut reader = Reader::new(text, false);
    let Some(logical) = reader.next_instruction().map_err(at)? else {
        return Err(ParseError::new(line, "empty instruction"));
    };
    let mut ins = instruction(&logical, DEFAULT_ESCAPE, &mut reader.warnings).map_err(at)?;
    if reader.next_instruction().map_err(at)?.is_some() {
        return Err(ParseError::new(
            line,
            "expected one instruction, found several",
        ));
    }
    ins.line = line;
    Ok(ins)
}

/// One instruction as read from the file: continuations joined, heredoc bodies attached.
#[derive(Debug)]
struct Logical {
    line: usize,
    text: String,
    heredocs: Vec<RawHeredoc>,
}

/// A heredoc as read: `content` is the body as written (not yet chomped).
#[derive(Debug, Clone)]
struct RawHeredoc {
    name: String,
    content: String,
    chomp: bool,
    expand: bool,
}

/// Reads logical instructions out of the physical lines.
struct Reader<'a> {
    lines: std::str::SplitInclusive<'a, char>,
    /// Number of physical lines consumed.
    line: usize,
    escape: char,
    /// Still looking for parser directives (only at the very top of the file).
    directives: bool,
    seen_directives: Vec<String>,
    warnings: Vec<Warning>,
}

impl<'a> Reader<'a> {
    fn new(text: &'a str, directives: bool) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Reader {
            lines: text.split_inclusive('\n'),
            line: 0,
            escape: DEFAULT_ESCAPE,
            directives,
            seen_directives: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn next_line(&mut self) -> Option<&'a str> {
        let l = self.lines.next()?;
        self.line += 1;
        Some(l)
    }

    /// Looks for a parser directive on a line of the top of the file.
    fn directive(&mut self, line: &str) -> Result<(), ParseError> {
        if !self.directives {
            return Ok(());
        }
        let Some(rest) = line.strip_prefix('#') else {
            self.directives = false;
            return Ok(());
        };
        let rest = rest.trim_start();
        let Some((key, value)) = rest.split_once('=') else {
            self.directives = false;
            return Ok(());
        };
        let key = key.trim_end();
        let value = value.trim();
        let valid_key = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && key.chars().all(|c| c.is_ascii_alphanumeric());
        let key = key.to_ascii_lowercase();
        if !valid_key || value.is_empty() || !matches!(key.as_str(), "syntax" | "escape" | "check")
        {
            self.directives = false;
            return Ok(());
        }
        if self.seen_directives.contains(&key) {
            return Err(ParseError::new(
                self.line,
                format!("only one {key} parser directive can be used"),
            ));
        }
        self.seen_directives.push(key.clone());
        match key.as_str() {
            "escape" => {
                self.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(ParseError::new(
                            self.line,
                            format!("invalid escape token '{other}' does not match ` or \\"),
                        ));
                    }
                }
            }
            "syntax" => self.warnings.push(Warning {
                line: self.line,
                message: format!("the syntax directive is ignored (syntax={value}): berth uses its own Dockerfile front end"),
            }),
            _ => {}
        }
        Ok(())
    }

    /// Removes a line continuation (the escape character, then only spaces or tabs) from the end
    /// of `line`; returns the line and whether the instruction goes on.
    fn continuation<'l>(&self, line: &'l str) -> (&'l str, bool) {
        let trimmed = line.trim_end_matches([' ', '\t']);
        match trimmed.strip_suffix(self.escape) {
            Some(before) if !before.ends_with(self.escape) => (before, true),
            _ => (line, false),
        }
    }

    fn next_instruction(&mut self) -> Result<Option<Logical>, ParseError> {
        loop {
            let Some(raw) = self.next_line() else {
                return Ok(None);
            };
            let line = trim_newline(raw).trim_start();
            self.directive(line)?;
            if line.starts_with('#') {
                continue;
            }
            let start = self.line;
            let (first, mut goes_on) = self.continuation(line);
            if !goes_on && first.is_empty() {
                continue;
            }
            let mut text = first.to_string();
            let mut empty_continuation = false;
            while goes_on {
                let Some(raw) = self.next_line() else { break };
                let line = trim_newline(raw);
                if line.trim_start().starts_with('#') {
                    continue;
                }
                if line.trim().is_empty() {
                    empty_continuation = true;
                    continue;
                }
                let (part, more) = self.continuation(line);
                text.push_str(part);
                goes_on = more;
            }
            if empty_continuation {
                self.warnings.push(Warning {
                    line: start,
                    message: "empty continuation line (Docker will make this an error in a future release)".into(),
                });
            }
            let heredocs = if may_have_heredocs(&text, self.escape) {
                self.heredoc_bodies(&text, start)?
            } else {
                Vec::new()
            };
            return Ok(Some(Logical {
                line: start,
                text: text.trim().to_string(),
                heredocs,
            }));
        }
    }

    /// Reads the bodies of the heredocs the line opens, in order.
    fn heredoc_bodies(&mut self, text: &str, start: usize) -> Result<Vec<RawHeredoc>, ParseError> {
        let mut docs = Vec::new();
        for word in heredoc_words(text) {
            let Some(mut doc) = heredoc_marker(&word) else {
                continue;
            };
            let mut terminated = false;
            while let Some(raw) = self.next_line() {
                let candidate = trim_newline(raw);
                let candidate = if doc.chomp {
                    candidate.trim_start_matches('\t')
                } else {
                    candidate
                };
                if candidate == doc.name {
                    terminated = true;
                    break;
                }
                doc.content.push_str(raw);
            }
            if !terminated {
                return Err(ParseError::new(
                    start,
                    format!(
                        "unterminated heredoc: no line {:?} ends it before the end of the file",
                        doc.name
                    ),
                ));
            }
            docs.push(doc);
        }
        Ok(docs)
    }
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

/// Whether the logical line is an instruction that may carry heredocs (`RUN`, `COPY`, `ADD`, also
/// behind `ONBUILD`) in shell form, and mentions `<<`.
fn may_have_heredocs(text: &str, escape: char) -> bool {
    if !text.contains("<<") {
        return false;
    }
    let (mut keyword, mut rest) = split_keyword(text);
    if keyword.eq_ignore_ascii_case("ONBUILD") {
        (keyword, rest) = split_keyword(rest);
    }
    let allowed = ["RUN", "COPY", "ADD"]
        .iter()
        .any(|k| keyword.eq_ignore_ascii_case(k));
    allowed && !matches!(json_array(extract_flags(rest, escape).1), Ok(Some(_)))
}

/// Splits `KEYWORD rest` at the first run of whitespace.
fn split_keyword(text: &str) -> (&str, &str) {
    let text = text.trim();
    match text.find(is_space) {
        Some(i) => (&text[..i], text[i..].trim_start_matches(is_space)),
        None => (text, ""),
    }
}

/// Go's `reWhitespace`: `[\t\v\f\r ]`.
fn is_space(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

fn split_whitespace(text: &str) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    text.split(is_space)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// The shell words of a line as the heredoc detection sees them: split on unquoted whitespace,
/// quotes and escapes kept, and `<<` followed by blanks kept together with the next word.
fn heredoc_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            word.push(c);
            if c == q {
                quote = None;
            } else if c == '\\'
                && q == '"'
                && let Some(n) = chars.next()
            {
                word.push(n);
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                word.push(c);
            }
            '\\' => {
                word.push(c);
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            '<' if chars.peek() == Some(&'<') => {
                chars.next();
                word.push_str("<<");
                while let Some(&b) = chars.peek().filter(|b| matches!(b, ' ' | '\t' | '\r')) {
                    word.push(b);
                    chars.next();
                }
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Recognises a heredoc marker word, `[fd]<<[-][blanks]WORD`, where WORD is one shell word that
/// may be (partly) quoted: quoting disables expansion of the body.
fn heredoc_marker(word: &str) -> Option<RawHeredoc> {
    let fd_end = word
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(word.len());
    let rest = word[fd_end..].strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = rest.trim_start();
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    // One word once quotes and escapes are removed; expansion only if nothing was quoted.
    let mut name = String::new();
    let mut quoted = false;
    let mut chars = rest.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                quoted = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => name.extend(chars.next()),
            (None, c) if c.is_whitespace() => return None,
            (_, c) => name.push(c),
        }
    }
    if quote.is_some() || name.is_empty() {
        return None;
    }
    Some(RawHeredoc {
        name,
        content: String::new(),
        chomp,
        expand: !quoted,
    })
}

/// Removes leading tabs from every line (`<<-`).
fn chomp(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

/// Splits the leading `--flag[=value]` words off the arguments, as Docker does (quotes and
/// escapes in flag words are removed; a `--` word ends the flags).
fn extract_flags(rest: &str, escape: char) -> (Vec<String>, &str) {
    let mut flags = Vec::new();
    let mut pos = 0;
    loop {
        while pos < rest.len() && rest[pos..].starts_with(char::is_whitespace) {
            pos += rest[pos..].chars().next().map_or(1, char::len_utf8);
        }
        if !rest[pos..].starts_with("--") {
            return (flags, &rest[pos..]);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut chars = rest[pos..].char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match quote {
                Some(q) if c == q => quote = None,
                None if c.is_whitespace() => {
                    end = pos + i;
                    break;
                }
                None if c == '\'' || c == '"' => quote = Some(c),
                _ if c == escape => {
                    if let Some((_, n)) = chars.next() {
                        word.push(n);
                    }
                }
                _ => word.push(c),
            }
        }
        pos = end;
        if word == "--" {
            return (flags, &rest[pos..]);
        }
        flags.push(word);
        if pos >= rest.len() {
            return (flags, "");
        }
    }
}

/// The type of a flag an instruction accepts.
#[derive(Clone, Copy, PartialEq)]
enum FlagType {
    Bool,
    String,
}

/// Parsed flags of one instruction.
struct Flags {
    values: BTreeMap<&'static str, String>,
}

impl Flags {
    /// Checks `words` against the flags `allowed` (name, type); `unsupported` are flags Docker
    /// knows that berth's builder does not implement.
    fn parse(
        keyword: &str,
        words: &[String],
        allowed: &[(&'static str, FlagType)],
        unsupported: &[&str],
    ) -> Result<Flags, String> {
        let mut values = BTreeMap::new();
        for word in words {
            let Some(body) = word.strip_prefix("--") else {
                return Err(format!("arg should start with -- : {word}"));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(known, ty)) = allowed.iter().find(|(n, _)| *n == name) else {
                if unsupported.contains(&name) {
                    return Err(format!(
                        "{keyword} --{name} is not supported by berth's builder"
                    ));
                }
                return Err(format!("unknown flag: --{name}"));
            };
            if values.contains_key(known) {
                return Err(format!("duplicate flag specified: --{name}"));
            }
            let value = match (ty, value) {
                (FlagType::Bool, Some("")) | (FlagType::String, None) => {
                    return Err(format!("missing a value on flag: --{name}"));
                }
                (FlagType::Bool, None) => "true".to_string(),
                (FlagType::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "true" => "true".to_string(),
                    "false" => "false".to_string(),
                    _ => {
                        return Err(format!(
                            "expecting boolean value for flag --{name}, not: {v}"
                        ));
                    }
                },
                (FlagType::String, Some(v)) => v.to_string(),
            };
            values.insert(known, value);
        }
        Ok(Flags { values })
    }

    fn string(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    fn bool(&self, name: &str) -> bool {
        self.values.get(name).is_some_and(|v| v == "true")
    }
}

/// Parses `rest` as a JSON array of strings. `Ok(None)`: not a JSON array (shell form);
/// `Err`: a JSON array with something other than strings (an error in Docker too).
fn json_array(rest: &str) -> Result<Option<Vec<String>>, String> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(rest) else {
        return Ok(None);
    };
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            other => Err(format!("when using JSON array syntax, arrays must be comprised of strings only (found {other})")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Exec form if `rest` is a JSON array of strings, shell form otherwise; a line that starts with
/// `[` but is not valid JSON is shell form (as in Docker) and gets a warning.
fn exec_or_shell(
    keyword: &str,
    rest: &str,
    line: usize,
    warnings: &mut Vec<Warning>,
) -> Result<Command, String> {
    match json_array(rest)? {
        Some(args) => Ok(Command::Exec(args)),
        None => {
            if rest.trim_start().starts_with('[') {
                warnings.push(Warning {
                    line,
                    message: format!(
                        "{keyword} arguments start with '[' but are not a valid JSON array of strings: using the shell form (exec form needs double quotes)"
                    ),
                });
            }
            Ok(Command::Shell(rest.to_string()))
        }
    }
}

/// The words of `ADD`/`COPY`/`VOLUME`: a JSON array, or whitespace-separated words.
fn json_or_words(rest: &str) -> Result<Vec<String>, String> {
    Ok(json_array(rest)?.unwrap_or_else(|| split_whitespace(rest)))
}

/// `KEY=value ...` or the legacy `KEY value` of `ENV` and `LABEL`, raw.
fn name_values(keyword: &str, rest: &str, escape: char) -> Result<Vec<(String, String)>, String> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Err(format!("{keyword} requires at least one argument"));
    };
    let pairs = if !first.contains('=') {
        let mut parts = rest.splitn(2, is_space);
        let key = parts.next().unwrap_or_default();
        let value = parts
            .next()
            .map(|v| v.trim_start_matches(is_space))
            .unwrap_or_default();
        if value.is_empty() {
            return Err(format!(
                "{keyword} must have two arguments ({keyword} {key} value, or {keyword} {key}=value)"
            ));
        }
        vec![(key.to_string(), value.to_string())]
    } else {
        words
            .iter()
            .map(|w| match w.split_once('=') {
                Some((k, v)) => Ok((k.to_string(), v.to_string())),
                None => Err(format!(
                    "syntax error - can't find = in {w:?}. Must be of the form: name=value"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    if pairs.iter().any(|(k, _)| k.is_empty()) {
        return Err(format!("{keyword} names can not be blank"));
    }
    Ok(pairs)
}

const KEYWORDS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Parses one logical instruction.
fn instruction(
    logical: &Logical,
    escape: char,
    warnings: &mut Vec<Warning>,
) -> Result<Instruction, ParseError> {
    let line = logical.line;
    let kind = kind(&logical.text, &logical.heredocs, escape, line, warnings)
        .map_err(|m| ParseError::new(line, m))?;
    Ok(Instruction {
        line,
        text: logical.text.clone(),
        escape,
        kind,
    })
}

fn no_flags(keyword: &str, flags: &[String]) -> Result<(), String> {
    Flags::parse(keyword, flags, &[], &[]).map(|_| ())
}

fn kind(
    text: &str,
    heredocs: &[RawHeredoc],
    escape: char,
    line: usize,
    warnings: &mut Vec<Warning>,
) -> Result<Kind, String> {
    let (keyword, rest) = split_keyword(text);
    let upper = keyword.to_ascii_uppercase();
    let (flags, rest) = extract_flags(rest, escape);
    let rest = rest.trim();
    let at_least_one = || format!("{upper} requires at least one argument");
    let exactly_one = || format!("{upper} requires exactly one argument");
    Ok(match upper.as_str() {
        "FROM" => {
            let flags = Flags::parse(&upper, &flags, &[("platform", FlagType::String)], &[])?;
            let words = split_whitespace(rest);
            let name = match words.as_slice() {
                [_] => None,
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
                    let lower = name.to_ascii_lowercase();
                    let mut chars = lower.chars();
                    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
                        && chars.all(|c| {
                            c.is_ascii_lowercase()
                                || c.is_ascii_digit()
                                || matches!(c, '-' | '_' | '.')
                        });
                    if !valid {
                        return Err(format!(
                            "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
                        ));
                    }
                    Some(lower)
                }
                _ => {
                    return Err(
                        "FROM requires either one or three arguments (FROM image [AS name])".into(),
                    );
                }
            };
            Kind::From {
                image: words[0].clone(),
                name,
                platform: flags.string("platform"),
            }
        }
        "RUN" => {
            let parsed = Flags::parse(
                &upper,
                &flags,
                &[("network", FlagType::String)],
                &["mount", "security", "device"],
            )?;
            let network = match parsed.string("network").as_deref() {
                None => None,
                Some("default") => Some(Network::Default),
                Some("none") => Some(Network::None),
                Some("host") => Some(Network::Host),
                Some(other) => {
                    return Err(format!(
                        "invalid network mode {other:?} (none, host or default)"
                    ));
                }
            };
            if rest.is_empty() {
                return Err(at_least_one());
            }
            let command = exec_or_shell(&upper, rest, line, warnings)?;
            let (command, script) = resolve_run_heredocs(command, heredocs);
            Kind::Run(Run {
                command,
                script,
                network,
            })
        }
        "CMD" | "ENTRYPOINT" => {
            no_flags(&upper, &flags)?;
            if rest.is_empty() {
                return Err(at_least_one());
            }
            let command = exec_or_shell(&upper, rest, line, warnings)?;
            if upper == "CMD" {
                Kind::Cmd(command)
            } else {
                Kind::Entrypoint(command)
            }
        }
        "SHELL" => {
            no_flags(&upper, &flags)?;
            match json_array(rest)? {
                Some(args) if args.is_empty() => return Err(at_least_one()),
                Some(args) => Kind::Shell(args),
                None if rest.is_empty() => return Err(at_least_one()),
                None => return Err("SHELL requires the arguments to be in JSON form".into()),
            }
        }
        "ENV" => {
            no_flags(&upper, &flags)?;
            Kind::Env(name_values(&upper, rest, escape)?)
        }
        "LABEL" => {
            no_flags(&upper, &flags)?;
            Kind::Label(name_values(&upper, rest, escape)?)
        }
        "ARG" => {
            no_flags(&upper, &flags)?;
            let words = parse_words(rest, escape);
            if words.is_empty() {
                return Err(at_least_one());
            }
            let args = words
                .into_iter()
                .map(|w| match w.split_once('=') {
                    Some(("", _)) => Err("ARG names can not be blank".to_string()),
                    Some((k, v)) => Ok(ArgDecl {
                        name: k.to_string(),
                        default: Some(v.to_string()),
                    }),
                    None => Ok(ArgDecl {
                        name: w,
                        default: None,
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Kind::Arg(args)
        }
        "MAINTAINER" | "WORKDIR" | "USER" | "STOPSIGNAL" => {
            no_flags(&upper, &flags)?;
            if rest.is_empty() {
                return Err(exactly_one());
            }
            let value = rest.to_string();
            match upper.as_str() {
                "MAINTAINER" => Kind::Maintainer(value),
                "WORKDIR" => Kind::Workdir(value),
                "USER" => Kind::User(value),
                _ => Kind::Stopsignal(value),
            }
        }
        "EXPOSE" => {
            no_flags(&upper, &flags)?;
            let ports = split_whitespace(rest);
            if ports.is_empty() {
                return Err(at_least_one());
            }
            Kind::Expose(ports)
        }
        "VOLUME" => {
            no_flags(&upper, &flags)?;
            let volumes: Vec<String> = json_or_words(rest)?
                .into_iter()
                .map(|v| v.trim().to_string())
                .collect();
            if volumes.is_empty() {
                return Err(at_least_one());
            }
            if volumes.iter().any(String::is_empty) {
                return Err("VOLUME specified can not be an empty string".into());
            }
            Kind::Volume(volumes)
        }
        "ADD" | "COPY" => {
            let is_add = upper == "ADD";
            let parsed = if is_add {
                Flags::parse(
                    &upper,
                    &flags,
                    &[
                        ("chown", FlagType::String),
                        ("chmod", FlagType::String),
                        ("link", FlagType::Bool),
                        ("checksum", FlagType::String),
                    ],
                    &["keep-git-dir", "unpack", "exclude"],
                )?
            } else {
                Flags::parse(
                    &upper,
                    &flags,
                    &[
                        ("chown", FlagType::String),
                        ("chmod", FlagType::String),
                        ("link", FlagType::Bool),
                        ("from", FlagType::String),
                    ],
                    &["parents", "exclude"],
                )?
            };
            let words = json_or_words(rest)?;
            let json = matches!(json_array(rest), Ok(Some(_)));
            let Some((dest, sources)) = words.split_last().filter(|(_, s)| !s.is_empty()) else {
                return Err(format!(
                    "{upper} requires at least two arguments, but only one was provided. Destination could not be determined"
                ));
            };
            if !json && heredoc_marker(dest).is_some() {
                return Err(format!("{upper} cannot accept a heredoc as a destination"));
            }
            let sources = sources
                .iter()
                .map(|s| match heredoc_marker(s).filter(|_| !json) {
                    Some(marker) => {
                        let body = heredocs
                            .iter()
                            .find(|h| h.name == marker.name)
                            .map(|h| h.content.as_str())
                            .unwrap_or("");
                        let content = if marker.chomp {
                            chomp(body)
                        } else {
                            body.to_string()
                        };
                        Source::Heredoc(Heredoc {
                            name: marker.name,
                            content,
                            expand: marker.expand,
                        })
                    }
                    None => Source::Path(s.clone()),
                })
                .collect();
            let from = parsed.string("from");
            if let Some(from) = &from {
                if from.is_empty() {
                    return Err("COPY --from needs a stage name, a stage index or an image".into());
                }
                if process_word(from, &BTreeMap::new(), escape).as_deref() != Ok(from.as_str()) {
                    return Err(
                        "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround".into(),
                    );
                }
            }
            let copy = Copy {
                sources,
                dest: dest.clone(),
                from,
                chown: parsed.string("chown"),
                chmod: parsed.string("chmod"),
                link: parsed.bool("link"),
                checksum: parsed.string("checksum"),
            };
            if is_add {
                Kind::Add(copy)
            } else {
                Kind::Copy(copy)
            }
        }
        "ONBUILD" => {
            no_flags(&upper, &flags)?;
            if rest.is_empty() {
                return Err(at_least_one());
            }
            // The trigger is the text after ONBUILD (flags included), heredoc bodies appended as
            // Docker stores them, so that it parses again on its own in a child build.
            let (_, trigger) = split_keyword(text);
            let (inner, _) = split_keyword(trigger);
            match inner.to_ascii_uppercase().as_str() {
                "ONBUILD" => {
                    return Err("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into());
                }
                i @ ("MAINTAINER" | "FROM") => {
                    return Err(format!("{i} isn't allowed as an ONBUILD trigger"));
                }
                _ => {}
            }
            kind(trigger, heredocs, escape, line, warnings)?;
            let mut stored = trigger.to_string();
            for doc in heredocs {
                stored.push('\n');
                stored.push_str(&doc.content);
                stored.push_str(&doc.name);
            }
            Kind::Onbuild(stored)
        }
        "HEALTHCHECK" => {
            let (typ, command) = split_keyword(rest);
            match typ.to_ascii_uppercase().as_str() {
                "" => return Err(at_least_one()),
                "NONE" => {
                    if !command.is_empty() || !flags.is_empty() {
                        return Err("HEALTHCHECK NONE takes no arguments".into());
                    }
                    Kind::Healthcheck(Healthcheck::None)
                }
                "CMD" => {
                    let parsed = Flags::parse(
                        &upper,
                        &flags,
                        &[
                            ("interval", FlagType::String),
                            ("timeout", FlagType::String),
                            ("start-period", FlagType::String),
                            ("start-interval", FlagType::String),
                            ("retries", FlagType::String),
                        ],
                        &[],
                    )?;
                    if command.is_empty()
                        || matches!(json_array(command), Ok(Some(ref a)) if a.is_empty())
                    {
                        return Err("missing command after HEALTHCHECK CMD".into());
                    }
                    let command = exec_or_shell(&upper, command, line, warnings)?;
                    let interval = |name: &str| -> Result<Option<Duration>, String> {
                        match parsed.string(name) {
                            None => Ok(None),
                            Some(v) => health_interval(name, &v),
                        }
                    };
                    let retries = match parsed.string("retries") {
                        None => None,
                        Some(v) => {
                            let n: i64 = v
                                .parse()
                                .map_err(|_| format!("--retries: invalid number {v:?}"))?;
                            if n < 0 {
                                return Err(format!("--retries cannot be negative ({n})"));
                            }
                            Some(
                                u32::try_from(n)
                                    .map_err(|_| format!("--retries: {n} is out of range"))?,
                            )
                        }
                    };
                    Kind::Healthcheck(Healthcheck::Check {
                        command,
                        interval: interval("interval")?,
                        timeout: interval("timeout")?,
                        start_period: interval("start-period")?,
                        start_interval: interval("start-interval")?,
                        retries,
                    })
                }
                _ => return Err(format!("unknown type {typ:?} in HEALTHCHECK (try CMD)")),
            }
        }
        "" => return Err("empty instruction".into()),
        _ => {
            let hint = KEYWORDS
                .iter()
                .map(|k| (distance(k, &upper), k))
                .filter(|(d, _)| *d <= 2)
                .min()
                .map(|(_, k)| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            return Err(format!("unknown instruction: {keyword}{hint}"));
        }
    })
}

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `RUN` with heredocs, as BuildKit runs it: a command that is only `<<EOF` runs the body (a
/// `#!` body as a script file), any other command gets the bodies appended for the shell to read.
fn resolve_run_heredocs(command: Command, heredocs: &[RawHeredoc]) -> (Command, Option<Heredoc>) {
    let Command::Shell(line) = &command else {
        return (command, None);
    };
    let Some(first) = heredocs.first() else {
        return (command, None);
    };
    if heredocs.len() == 1 && heredoc_marker(line).is_some() {
        let content = if first.chomp {
            chomp(&first.content)
        } else {
            first.content.clone()
        };
        if content.starts_with("#!") {
            let path = format!("/dev/pipes/{}", first.name);
            return (
                Command::Exec(vec![path]),
                Some(Heredoc {
                    name: first.name.clone(),
                    content,
                    expand: false,
                }),
            );
        }
        return (Command::Shell(content), None);
    }
    let mut full = line.clone();
    for doc in heredocs {
        full.push('\n');
        full.push_str(&doc.content);
        full.push_str(&doc.name);
    }
    (Command::Shell(full), None)
}

/// A `HEALTHCHECK` duration option: Go duration syntax, zero meaning the default, at least 1ms.
fn health_interval(name: &str, value: &str) -> Result<Option<Duration>, String> {
    let nanos = go_duration(value).map_err(|e| format!("--{name}: {e}"))?;
    match nanos {
        0 => Ok(None),
        n if n < 1_000_000 => Err(format!("interval \"{name}\" cannot be less than 1ms")),
        n => Ok(Some(Duration::from_nanos(n as u64))),
    }
}

/// Parses a Go duration (`300ms`, `1.5h`, `2h45m`, `-1s`) into nanoseconds.
pub(super) fn go_duration(s: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            u => return Err(format!("time: unknown unit {u:?} in duration {s:?}")),
        };
        rest = &rest[unit_end..];
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        let mut value = whole.checked_mul(unit).ok_or_else(invalid)?;
        let mut scale = unit;
        for d in frac.chars().take(30) {
            scale /= 10;
            value += i128::from(d.to_digit(10).unwrap_or(0)) * scale;
        }
        total = total
            .checked_add(value)
            .filter(|t| *t <= i128::from(i64::MAX))
            .ok_or_else(invalid)?;
    }
    Ok(if negative { -total } else { total })
}

fn word(
    w: &str,
    vars: &BTreeMap<String, String>,
    escape: char,
    line: usize,
) -> Result<String, ParseError> {
    process_word(w, vars, escape).map_err(|m| ParseError::new(line, m))
}

/// Expands a stage's `FROM` words.
pub(super) fn expand_word(
    w: &str,
    vars: &BTreeMap<String, String>,
    escape: char,
    line: usize,
) -> Result<String, ParseError> {
    word(w, vars, escape, line)
}

pub(super) fn expand(
    ins: &Instruction,
    vars: &BTreeMap<String, String>,
) -> Result<Kind, ParseError> {
    let (line, escape) = (ins.line, ins.escape);
    let w = |s: &str| word(s, vars, escape, line);
    let pairs = |p: &[(String, String)]| -> Result<Vec<(String, String)>, ParseError> {
        p.iter().map(|(k, v)| Ok((w(k)?, w(v)?))).collect()
    };
    Ok(match &ins.kind {
        Kind::Env(p) => Kind::Env(pairs(p)?),
        Kind::Label(p) => Kind::Label(pairs(p)?),
        Kind::Arg(args) => {
            // Each default sees the arguments declared before it in the same instruction.
            let mut scope = vars.clone();
            let mut out = Vec::new();
            for a in args {
                let default = a
                    .default
                    .as_deref()
                    .map(|d| word(d, &scope, escape, line))
                    .transpose()?;
                if let Some(d) = &default {
                    scope.insert(a.name.clone(), d.clone());
                }
                out.push(ArgDecl {
                    name: a.name.clone(),
                    default,
                });
            }
            Kind::Arg(out)
        }
        Kind::Expose(ports) => {
            let mut out = Vec::new();
            for p in ports {
                for p in process_words(p, vars, escape).map_err(|m| ParseError::new(line, m))? {
                    out.extend(expose_port(&p).map_err(|m| ParseError::new(line, m))?);
                }
            }
            Kind::Expose(out)
        }
        Kind::Workdir(p) => Kind::Workdir(w(p)?),
        Kind::User(u) => {
            let u = w(u)?;
            if u.is_empty() {
                return Err(ParseError::new(
                    line,
                    "USER is empty after variable substitution",
                ));
            }
            Kind::User(u)
        }
        Kind::Stopsignal(s) => {
            let s = w(s)?;
            check_signal(&s).map_err(|m| ParseError::new(line, m))?;
            Kind::Stopsignal(s)
        }
        Kind::Volume(v) => {
            let v = v.iter().map(|v| w(v)).collect::<Result<Vec<_>, _>>()?;
            if v.iter().any(String::is_empty) {
                return Err(ParseError::new(
                    line,
                    "VOLUME specified can not be an empty string",
                ));
            }
            Kind::Volume(v)
        }
        Kind::Add(c) => Kind::Add(expand_copy(c, vars, escape, line)?),
        Kind::Copy(c) => Kind::Copy(expand_copy(c, vars, escape, line)?),
        other => other.clone(),
    })
}

fn expand_copy(
    c: &Copy,
    vars: &BTreeMap<String, String>,
    escape: char,
    line: usize,
) -> Result<Copy, ParseError> {
    let w = |s: &str| word(s, vars, escape, line);
    let opt = |s: &Option<String>| s.as_deref().map(w).transpose();
    let sources = c
        .sources
        .iter()
        .map(|s| match s {
            Source::Path(p) => Ok(Source::Path(w(p)?)),
            Source::Heredoc(h) if h.expand => Ok(Source::Heredoc(Heredoc {
                content: process_heredoc(&h.content, vars).map_err(|m| ParseError::new(line, m))?,
                ..h.clone()
            })),
            Source::Heredoc(h) => Ok(Source::Heredoc(h.clone())),
        })
        .collect::<Result<_, ParseError>>()?;
    Ok(Copy {
        sources,
        dest: w(&c.dest)?,
        from: c.from.clone(),
        chown: opt(&c.chown)?,
        chmod: opt(&c.chmod)?,
        link: c.link,
        checksum: opt(&c.checksum)?,
    })
}

/// One `EXPOSE` word (`80`, `80/udp`, `8000-8010`, or Docker's tolerated `[ip:]host:container`)
/// as `port/proto` entries.
fn expose_port(raw: &str) -> Result<Vec<String>, String> {
    let container = raw.rsplit(':').next().unwrap_or(raw);
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    let invalid = |why: &str| format!("invalid port: {raw:?}: {why}");
    if port.is_empty() {
        return Err(invalid("no port specified"));
    }
    let proto = match proto.to_ascii_lowercase().as_str() {
        "" => "tcp".to_string(),
        p @ ("tcp" | "udp" | "sctp") => p.to_string(),
        _ => return Err(invalid(&format!("invalid proto: {proto}"))),
    };
    let number = |p: &str| -> Result<u32, String> {
        p.parse::<u32>()
            .ok()
            .filter(|n| *n <= 65535)
            .ok_or_else(|| format!("invalid containerPort: {port}"))
    };
    let (start, end) = match port.split_once('-') {
        Some((a, b)) if a != b => (number(a)?, number(b)?),
        Some((a, _)) => (number(a)?, number(a)?),
        None => (number(port)?, number(port)?),
    };
    if end < start {
        return Err(format!("invalid port range: {port}"));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// Accepts what Docker's `signal.ParseSignal` accepts: a number or a signal name (with or
/// without `SIG`).
fn check_signal(s: &str) -> Result<(), String> {
    const NAMES: [&str; 34] = [
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return if n == 0 || n > 64 {
            Err(format!("invalid signal: {s}"))
        } else {
            Ok(())
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let rt = |base: &str, sign: char| {
        name.strip_prefix(base)
            .and_then(|r| r.strip_prefix(sign))
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n <= 15)
    };
    if NAMES.contains(&name)
        || name == "RTMIN"
        || name == "RTMAX"
        || rt("RTMIN", '+')
        || rt("RTMAX", '-')
    {
        Ok(())
    } else {
        Err(format!("invalid signal: {s}"))
    }
}

pub(super) fn meta_args(
    df: &Dockerfile,
    build_args: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ParseError> {
    let mut values = BTreeMap::new();
    let line = df.stages.first().map_or(1, |s| s.line);
    for arg in &df.args {
        if let Some(v) = build_args.get(&arg.name) {
            values.insert(arg.name.clone(), v.clone());
        } else if let Some(default) = &arg.default {
            let v = word(default, &values, df.escape, line)?;
            values.insert(arg.name.clone(), v);
        }
    }
    Ok(values)
}

pub(super) fn resolve_args(
    ins: &Instruction,
    vars: &BTreeMap<String, String>,
    build_args: &BTreeMap<String, String>,
    meta: &BTreeMap<String, String>,
) -> Result<Vec<(String, Option<String>)>, ParseError> {
    let Kind::Arg(args) = &ins.kind else {
        return Ok(Vec::new());
    };
    let mut scope = vars.clone();
    let mut out = Vec::new();
    for a in args {
        let value = match (build_args.get(&a.name), &a.default) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(default)) => Some(word(default, &scope, ins.escape, ins.line)?),
            (None, None) => meta.get(&a.name).cloned(),
        };
        if let Some(v) = &value {
            scope.insert(a.name.clone(), v.clone());
        }
        out.push((a.name.clone(), value));
    }
    Ok(out)
}

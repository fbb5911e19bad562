//! `.dockerignore` matching with Docker's rules (moby's `ignorefile` reader and `patternmatcher`):
//!
//! - one pattern per line; a line *starting* with `#` is a comment; blank lines are skipped;
//!   surrounding whitespace is trimmed; a leading `!` makes an exception (re-includes);
//! - patterns are cleaned like Go's `filepath.Clean` (`./a//b/` is `a/b`, `a/../b` is `b`) and a
//!   leading `/` is dropped: patterns are relative to the context root, there is no
//!   "directory only" form;
//! - `*` matches any run of characters but `/`, `?` one character but `/`, `[...]` a character
//!   class (`[^...]` negated, ranges, `\` escapes), `\` escapes the next character, `**` any
//!   number of directories (`**/x` is `x` at any depth, `a/**` everything under `a`, a leading
//!   `**` makes the pattern a plain suffix test as in Docker);
//! - a pattern excludes the paths it matches and everything under them; patterns apply in order
//!   and the last one that matches a path or one of its parent directories decides, so a `!`
//!   exception can re-include a file under an excluded directory.
//!
//! Written here rather than taken from `globset`/`ignore`: those implement gitignore semantics
//! (directory-only patterns with a trailing `/`, patterns without `/` matching at any depth,
//! no parent-directory rule with "last match wins" across exceptions), which differ from
//! Docker's in exactly the cases a `.dockerignore` relies on.

use std::path::{Component, Path};

/// A `.dockerignore` pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(".dockerignore:{line}: {message}")]
pub struct PatternError {
    /// 1-based line of the pattern.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The compiled patterns of a `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// `!pattern`: re-includes.
    exception: bool,
    test: Test,
}

/// How a pattern is tested, as Docker's pattern matcher classifies it.
#[derive(Debug, Clone)]
enum Test {
    /// No wildcard: the path must be equal.
    Exact(String),
    /// `stem**`: the path starts with `stem`.
    Prefix(String),
    /// `**rest` with no other wildcard: the path ends with `rest` (or equals it without its `/`).
    Suffix(String),
    /// Anything else.
    Glob(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Lit(char),
    /// `*`: any run of non-`/` characters.
    Star,
    /// `?`: one non-`/` character.
    Quest,
    /// `**/` (or `**` followed by more pattern): nothing, or anything ending with `/`.
    AnyDirs,
    /// `**` at the end: anything.
    AnyRest,
    /// `[...]`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Matcher {
    /// Compiles the text of a `.dockerignore` file.
    pub fn from_dockerignore(text: &str) -> Result<Matcher, PatternError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            if raw.starts_with('#') {
                continue;
            }
            let mut pattern = raw.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(PatternError {
                        line: i + 1,
                        message: "illegal exclusion pattern: \"!\"".into(),
                    });
                }
            }
            let mut cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let test = compile(&cleaned).map_err(|message| PatternError {
                line: i + 1,
                message: format!("{message} in pattern {pattern:?}"),
            })?;
            patterns.push(Pattern { exception, test });
        }
        Ok(Matcher { patterns })
    }

    /// Whether the matcher has no pattern at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `path` (relative to the context root) is excluded from the context: the last
    /// pattern that matches the path or one of its parent directories decides, a `!` pattern
    /// re-including. The root itself (`""`, `.`) is never excluded.
    pub fn excluded(&self, path: &Path) -> bool {
        let Some(path) = relative(path) else {
            return false;
        };
        let ancestors: Vec<&str> = path
            .match_indices('/')
            .map(|(i, _)| &path[..i])
            .chain(std::iter::once(path.as_str()))
            .collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // Only a pattern that could change the outcome needs testing.
            if pattern.exception != excluded {
                continue;
            }
            if ancestors.iter().any(|p| pattern.test.matches(p)) {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// Whether a `!` exception could re-include something under the directory `dir`, so that a
    /// walk must descend into `dir` even though it is excluded; when false, everything under
    /// `dir` has the same fate as `dir` and the walk can skip it.
    pub fn might_include_under(&self, dir: &Path) -> bool {
        let Some(dir) = relative(dir) else {
            return self.patterns.iter().any(|p| p.exception);
        };
        let prefix = format!("{dir}/");
        self.patterns
            .iter()
            .filter(|p| p.exception)
            .any(|p| p.test.could_match_under(&prefix))
    }
}

/// The path as a clean, `/`-separated relative string; `None` for the context root.
fn relative(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Go's `filepath.Clean` for `/`-separated paths.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Compiles a cleaned pattern, classifying it as Docker does.
fn compile(pattern: &str) -> Result<Test, String> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Glob,
    }
    let mut kind = Kind::Exact;
    let mut tokens = Vec::new();
    let mut chars = pattern.chars().peekable();
    let mut first = true;
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        kind = Kind::Glob;
                    }
                    tokens.push(Token::AnyRest);
                } else {
                    kind = Kind::Glob;
                    tokens.push(Token::AnyDirs);
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                kind = Kind::Glob;
                tokens.push(Token::Star);
            }
            '?' => {
                kind = Kind::Glob;
                tokens.push(Token::Quest);
            }
            '\\' => match chars.next() {
                Some(e) => {
                    kind = Kind::Glob;
                    tokens.push(Token::Lit(e));
                }
                None => return Err("syntax error: trailing \\".into()),
            },
            '[' => {
                kind = Kind::Glob;
                tokens.push(class(&mut chars)?);
            }
            c => tokens.push(Token::Lit(c)),
        }
        first = false;
    }
    Ok(match kind {
        Kind::Exact => Test::Exact(pattern.to_string()),
        Kind::Prefix => Test::Prefix(pattern[..pattern.len() - 2].to_string()),
        Kind::Suffix => Test::Suffix(pattern[2..].to_string()),
        Kind::Glob => Test::Glob(tokens),
    })
}

/// A character class after its `[`, with Go's `filepath.Match` syntax.
fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Token, String> {
    let bad = || "syntax error in character class".to_string();
    let negated = chars.peek() == Some(&'^');
    if negated {
        chars.next();
    }
    let mut ranges = Vec::new();
    let one = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Result<char, String> {
        match chars.next() {
            None | Some('-' | ']') => Err(bad()),
            Some('\\') => chars.next().ok_or_else(bad),
            Some(c) => Ok(c),
        }
    };
    loop {
        if chars.peek() == Some(&']') && !ranges.is_empty() {
            chars.next();
            return Ok(Token::Class { negated, ranges });
        }
        let lo = one(chars)?;
        let hi = if chars.peek() == Some(&'-') {
            chars.next();
            let hi = one(chars)?;
            if hi < lo {
                return Err(bad());
            }
            hi
        } else {
            lo
        };
        ranges.push((lo, hi));
    }
}

impl Test {
    fn matches(&self, path: &str) -> bool {
        match self {
            Test::Exact(p) => path == p,
            Test::Prefix(stem) => path.starts_with(stem.as_str()),
            Test::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Test::Glob(tokens) => {
                let states = run(tokens, path);
                states.contains(&State {
                    token: tokens.len(),
                    inside: false,
                })
            }
        }
    }

    /// Whether the pattern could match some path starting with `prefix` (which ends with `/`).
    fn could_match_under(&self, prefix: &str) -> bool {
        match self {
            Test::Exact(p) => p.starts_with(prefix),
            Test::Prefix(stem) => stem.starts_with(prefix) || prefix.starts_with(stem.as_str()),
            Test::Suffix(_) => true,
            Test::Glob(tokens) => !run(tokens, prefix).is_empty(),
        }
    }
}

/// A position of the glob automaton: before token `token`; `inside` when within the `.*/` of an
/// [`Token::AnyDirs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct State {
    token: usize,
    inside: bool,
}

/// Runs the glob automaton over `input`: the states alive afterwards (empty when no extension of
/// `input` can match).
fn run(tokens: &[Token], input: &str) -> Vec<State> {
    let mut states = closure(
        tokens,
        vec![State {
            token: 0,
            inside: false,
        }],
    );
    for c in input.chars() {
        let mut next = Vec::new();
        for s in &states {
            let Some(token) = tokens.get(s.token) else {
                continue;
            };
            let after = State {
                token: s.token + 1,
                inside: false,
            };
            match token {
                Token::Lit(l) if *l == c => next.push(after),
                Token::Quest if c != '/' => next.push(after),
                Token::Star if c != '/' => next.push(*s),
                Token::AnyRest => next.push(*s),
                Token::AnyDirs => {
                    next.push(State {
                        token: s.token,
                        inside: true,
                    });
                    if c == '/' {
                        next.push(after);
                    }
                }
                Token::Class { negated, ranges }
                    if ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated =>
                {
                    next.push(after);
                }
                _ => {}
            }
        }
        states = closure(tokens, next);
        if states.is_empty() {
            break;
        }
    }
    states
}

/// Adds the states reachable without consuming input (past `*`, `**` and `**/`).
fn closure(tokens: &[Token], mut states: Vec<State>) -> Vec<State> {
    let mut i = 0;
    while i < states.len() {
        let s = states[i];
        if !s.inside
            && matches!(
                tokens.get(s.token),
                Some(Token::Star | Token::AnyRest | Token::AnyDirs)
            )
        {
            let after = State {
                token: s.token + 1,
                inside: false,
            };
            if !states.contains(&after) {
                states.push(after);
            }
        }
        i += 1;
    }
    states.sort();
    states.dedup();
    states
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(text: &str) -> Matcher {
        Matcher::from_dockerignore(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    /// Checks `(path, excluded)` pairs against the patterns in `text`.
    fn check(text: &str, cases: &[(&str, bool)]) {
        let m = matcher(text);
        for (path, want) in cases {
            assert_eq!(
                m.excluded(Path::new(path)),
                *want,
                "patterns {text:?}, path {path:?}"
            );
        }
    }

    #[test]
    fn docs_examples() {
        check(
            "# comment\n*/temp*\n*/*/temp*\ntemp?\n",
            &[
                ("somedir/temporary.txt", true),
                ("somedir/temp", true),
                ("somedir/temp/inner/file", true),
                ("somedir/subdir/temporary.txt", true),
                ("tempa", true),
                ("tempb", true),
                ("temp", false),
                ("tempab", false),
                ("temporary.txt", false),
                ("a/b/c/temp", false),
                ("# comment", false),
            ],
        );
        check(
            "**/*.go\n",
            &[
                ("main.go", true),
                ("a/b/c.go", true),
                ("a/b/c.gox", false),
                ("go", false),
            ],
        );
        check(
            "*.md\n!README.md\n",
            &[("a.md", true), ("README.md", false), ("docs/x.md", false)],
        );
        check(
            "*.md\n!README*.md\nREADME-secret.md\n",
            &[
                ("CHANGES.md", true),
                ("README.md", false),
                ("README-x.md", false),
                ("README-secret.md", true),
            ],
        );
        check(
            "*.md\nREADME-secret.md\n!README*.md\n",
            &[("CHANGES.md", true), ("README-secret.md", false)],
        );
    }

    #[test]
    fn directories_and_exceptions() {
        let text = "node_modules\nbuild/\n!build/keep\nbuild/keep/tmp\n";
        check(
            text,
            &[
                ("node_modules", true),
                ("node_modules/x/y.js", true),
                ("src/node_modules", false),
                ("build", true),
                ("build/out.o", true),
                ("build/keep", false),
                ("build/keep/a.txt", false),
                ("build/keep/tmp", true),
                ("build/keep/tmp/x", true),
                ("buildx", false),
            ],
        );
        let m = matcher(text);
        assert!(m.might_include_under(Path::new("build")));
        assert!(!m.might_include_under(Path::new("node_modules")));
        assert!(!m.might_include_under(Path::new("build/keep/tmp")));

        let m = matcher("*\n!**/keep.txt\n!src/*.rs\n!lib[0-9]/a\n");
        assert!(m.excluded(Path::new("anything")));
        assert!(!m.excluded(Path::new("deep/down/keep.txt")));
        assert!(!m.excluded(Path::new("src/main.rs")));
        assert!(m.excluded(Path::new("src/sub/main.rs")));
        for (dir, want) in [("deep", true), ("src", true), ("lib1", true), ("x/y", true)] {
            assert_eq!(m.might_include_under(Path::new(dir)), want, "{dir}");
        }
        let m = matcher("*\n!src/*.rs\n!lib[0-9]/a\n!docs/**\n!a**\n");
        for (dir, want) in [
            ("src", true),
            ("lib1", true),
            ("libx", false),
            ("docs", true),
            ("doc", false),
            ("abc", true),
            ("b", false),
            ("src/sub", false),
        ] {
            assert_eq!(m.might_include_under(Path::new(dir)), want, "{dir}");
        }
        // Without exceptions nothing under an excluded directory can come back.
        assert!(!matcher("a\n").might_include_under(Path::new("a")));
    }

    #[test]
    fn cleaning_comments_and_whitespace() {
        check(
            "/abs\n./dot\ntrail/\nup/../over\n  spaced  \n #not-a-comment\n\n\t\n! /neg\n",
            &[
                ("abs", true),
                ("dot", true),
                ("trail", true),
                ("trail/x", true),
                ("over", true),
                ("up", false),
                ("spaced", true),
                ("#not-a-comment", true),
                ("neg", false),
            ],
        );
        check("a//b\n", &[("a/b", true), ("a", false)]);
        // Input paths are cleaned too; the root is never excluded.
        check("a/b\n*\n", &[("./a/b", true), ("", false), (".", false)]);
        // CRLF and a byte order mark.
        check("\u{feff}x\r\ny\r\n", &[("x", true), ("y", true)]);
        // A trailing comment on a line is part of the pattern.
        check("foo # bar\n", &[("foo", false), ("foo # bar", true)]);
    }

    #[test]
    fn wildcards() {
        let cases: &[(&str, &[(&str, bool)])] = &[
            (
                "a/**",
                &[("a", false), ("a/b", true), ("a/b/c", true), ("ab", false)],
            ),
            (
                "a/**/b",
                &[
                    ("a/b", true),
                    ("a/x/b", true),
                    ("a/x/y/b", true),
                    ("a/xb", false),
                ],
            ),
            ("**", &[("x", true), ("x/y", true)]),
            (
                "**/x",
                &[("x", true), ("a/x", true), ("a/b/x", true), ("ax", false)],
            ),
            // A leading `**` without a slash is a plain suffix test in Docker.
            ("**x", &[("ax", true), ("a/bx", true)]),
            ("*", &[("a", true), ("a/b", true)]),
            ("a/*", &[("a/b", true), ("a/b/c", true), ("a", false)]),
            ("a?c", &[("abc", true), ("a/c", false), ("ac", false)]),
            (
                "file[0-9].txt",
                &[("file1.txt", true), ("filex.txt", false)],
            ),
            ("file[^0-9]", &[("filex", true), ("file1", false)]),
            // `!` does not negate a class (Go's syntax is `^`): `[!x]` is `!` or `x`.
            (
                "[a-c]*[!x]",
                &[("a!", true), ("bx", true), ("by", false), ("d!", false)],
            ),
            ("\\*", &[("*", true), ("a", false)]),
            ("a\\?", &[("a?", true), ("ab", false)]),
            (
                "x.y+z(1)|{2}$",
                &[("x.y+z(1)|{2}$", true), ("xay+z(1)|{2}$", false)],
            ),
            (
                "*.txt",
                &[("a.txt", true), ("d/a.txt", false), ("d", false)],
            ),
        ];
        for (pattern, paths) in cases {
            check(pattern, paths);
        }
    }

    #[test]
    fn bad_patterns() {
        for (text, line, message) in [
            ("ok\n!\n", 2, "illegal exclusion pattern"),
            ("[\n", 1, "syntax error in character class"),
            ("a\nb[z-a]\n", 2, "syntax error in character class"),
            ("[]a]\n", 1, "syntax error in character class"),
            ("x\\", 1, "trailing"),
        ] {
            let e = Matcher::from_dockerignore(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}");
            assert!(e.message.contains(message), "{text:?}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!(".dockerignore:{line}: ")),
                "{e}"
            );
        }
        assert!(matcher("").is_empty());
        assert!(matcher("# only\n\n").is_empty());
    }

    #[test]
    fn random_patterns_never_panic() {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces = [
            "*", "**", "?", "[", "]", "^", "-", "\\", "/", "!", "a", "b", ".", "..", "#", " ",
            "\n", "é",
        ];
        let paths = ["a", "a/b", "b/a/b", "ab", ".a", "a/é", "x/y/z"];
        for _ in 0..3000 {
            let text: String = (0..next() % 12)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            if let Ok(m) = Matcher::from_dockerignore(&text) {
                for p in paths {
                    let _ = m.excluded(Path::new(p));
                    let _ = m.might_include_under(Path::new(p));
                }
            }
        }
    }
}

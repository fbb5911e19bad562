//! Docker's shell-like word processing, as its builder does it (not a shell):
//!
//! - [`process_word`]: variable substitution (`$V`, `${V}`, `${V:-w}`, `${V-w}`, `${V:+w}`,
//!   `${V+w}`, `${V:?msg}`, `${V?msg}`, `${V#p}`, `${V##p}`, `${V%p}`, `${V%%p}`, `${V/p/r}`,
//!   `${V//p/r}`), the escape character, single quotes taken literally, double quotes expanding
//!   variables, and quote removal. Whitespace is kept: the result is one word.
//! - [`process_heredoc`]: the substitution applied to an unquoted heredoc body (escape `\`,
//!   quotes kept as they are).
//! - [`parse_words`]: the raw splitting of `ENV`/`LABEL`/`ARG` arguments into words, quotes and
//!   escapes kept for the later expansion.

use std::collections::BTreeMap;

/// Expands `word` with `vars` and removes quotes and escapes, using `escape` as escape character.
pub(crate) fn process_word(
    word: &str,
    vars: &BTreeMap<String, String>,
    escape: char,
) -> Result<String, String> {
    let mut lex = Lex {
        chars: word.chars().collect(),
        pos: 0,
        escape,
        vars,
        quotes: true,
        depth: 0,
    };
    lex.until(None, false, None)
        .map_err(|e| format!("failed to process {word:?}: {e}"))
}

/// Like [`process_word`], then split into words on whitespace that was neither quoted nor
/// escaped (`EXPOSE $PORTS` with `PORTS="80 443"` gives two words).
pub(crate) fn process_words(
    word: &str,
    vars: &BTreeMap<String, String>,
    escape: char,
) -> Result<Vec<String>, String> {
    let mut lex = Lex {
        chars: word.chars().collect(),
        pos: 0,
        escape,
        vars,
        quotes: true,
        depth: 0,
    };
    let mut words = Words::default();
    lex.until(None, false, Some(&mut words))
        .map_err(|e| format!("failed to process {word:?}: {e}"))?;
    Ok(words.finish())
}

/// Word splitting alongside [`Lex::until`].
#[derive(Default)]
struct Words {
    words: Vec<String>,
    current: String,
    in_word: bool,
}

impl Words {
    /// A character that splits on whitespace.
    fn split_char(&mut self, c: char) {
        if c.is_whitespace() {
            if self.in_word && !self.current.is_empty() {
                self.words.push(std::mem::take(&mut self.current));
                self.in_word = false;
            }
        } else {
            self.raw_char(c);
        }
    }

    fn raw_char(&mut self, c: char) {
        self.current.push(c);
        self.in_word = true;
    }

    fn raw_str(&mut self, s: &str) {
        self.current.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.words.push(self.current);
        }
        self.words
    }
}

/// Expands variables in a heredoc body: `\` escapes, quotes are ordinary characters.
pub(crate) fn process_heredoc(
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut lex = Lex {
        chars: text.chars().collect(),
        pos: 0,
        escape: '\\',
        vars,
        quotes: false,
        depth: 0,
    };
    lex.until(None, false, None)
        .map_err(|e| format!("failed to process heredoc: {e}"))
}

const MISSING_BRACE: &str = "syntax error: missing '}'";

struct Lex<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    vars: &'a BTreeMap<String, String>,
    /// Whether `'` and `"` quote (false for heredoc bodies).
    quotes: bool,
    /// Nesting of `${...}` being processed.
    depth: usize,
}

const MAX_DEPTH: usize = 64;

impl Lex<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Processes up to `stop` (consumed) or the end. With `raw_escapes`, escape characters are
    /// kept in the output (for patterns, which interpret them themselves).
    fn until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
        mut words: Option<&mut Words>,
    ) -> Result<String, String> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.pos += 1;
                return Ok(out);
            }
            let (piece, split) = match c {
                '$' => (self.dollar()?, true),
                '\'' if self.quotes => (self.single_quoted()?, false),
                '"' if self.quotes => (self.double_quoted(raw_escapes)?, false),
                _ => {
                    self.pos += 1;
                    if c == self.escape {
                        if raw_escapes {
                            out.push(c);
                            if let Some(w) = words.as_deref_mut() {
                                w.raw_char(c);
                            }
                        }
                        match self.next() {
                            Some(escaped) => (escaped.to_string(), false),
                            None => break,
                        }
                    } else {
                        (c.to_string(), true)
                    }
                }
            };
            if let Some(w) = words.as_deref_mut() {
                if split {
                    piece.chars().for_each(|c| w.split_char(c));
                } else {
                    w.raw_str(&piece);
                }
            }
            out.push_str(&piece);
        }
        match stop {
            Some(stop) => Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            )),
            None => Ok(out),
        }
    }

    fn single_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    );
                }
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self, raw_escapes: bool) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    );
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) => {
                    self.pos += 1;
                    if c == self.escape {
                        if raw_escapes {
                            out.push(c);
                        }
                        match self.peek() {
                            None => continue,
                            // Only these can be escaped inside double quotes; otherwise the
                            // escape character stays.
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.pos += 1;
                                out.push(n);
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        if let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    self.pos += 1;
                    name.push(d);
                }
                return name;
            }
            if matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                name.push(c);
                return name;
            }
        }
        while let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
            self.pos += 1;
            name.push(c);
        }
        name
    }

    fn dollar(&mut self) -> Result<String, String> {
        // `${a:-${b:-...}}` recurses: bound it so that hostile input cannot exhaust the stack.
        if self.depth >= MAX_DEPTH {
            return Err("variable substitution nested too deeply".into());
        }
        self.depth += 1;
        let result = self.substitution();
        self.depth -= 1;
        result
    }

    fn substitution(&mut self) -> Result<String, String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.vars.get(&name).cloned().unwrap_or_default());
        }
        self.pos += 1;
        match self.peek() {
            None => return Err(MISSING_BRACE.into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.name();
        let value = self.vars.get(&name);
        let Some(op) = self.next() else {
            return Err(MISSING_BRACE.into());
        };
        match op {
            '}' => Ok(value.cloned().unwrap_or_default()),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let null_is_unset = op == ':';
                let op = if null_is_unset {
                    self.next().ok_or(MISSING_BRACE)?
                } else {
                    op
                };
                if null_is_unset && matches!(op, '#' | '%') {
                    return Err(format!("unsupported modifier (:{op}) in substitution"));
                }
                let word = self.argument('}', matches!(op, '#' | '%'), MISSING_BRACE)?;
                let unset =
                    value.is_none() || (null_is_unset && value.is_some_and(String::is_empty));
                match op {
                    '-' => Ok(if unset {
                        word
                    } else {
                        value.cloned().unwrap_or_default()
                    }),
                    '+' => Ok(if unset { String::new() } else { word }),
                    '?' => {
                        if unset {
                            let message = match (word.is_empty(), value.is_none()) {
                                (false, _) => word,
                                (true, true) => "is not allowed to be unset".into(),
                                (true, false) => "is not allowed to be empty".into(),
                            };
                            Err(format!("{name}: {message}"))
                        } else {
                            Ok(value.cloned().unwrap_or_default())
                        }
                    }
                    '#' | '%' => {
                        let value = value.cloned().unwrap_or_default();
                        let (greedy, pattern) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        let pattern = Glob::new(&pattern)?;
                        Ok(if op == '#' {
                            pattern.trim_prefix(&value, greedy)
                        } else {
                            pattern.trim_suffix(&value, greedy)
                        })
                    }
                    other => {
                        let prefix = if null_is_unset { ":" } else { "" };
                        Err(format!(
                            "unsupported modifier ({prefix}{other}) in substitution"
                        ))
                    }
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let pattern = self.argument('/', true, "syntax error: missing '/' in ${}")?;
                let replacement = self.argument('}', true, MISSING_BRACE)?;
                let value = value.cloned().unwrap_or_default();
                Ok(Glob::new(&pattern)?.replace(&value, &replacement, all))
            }
            other => Err(format!("unsupported modifier ({other}) in substitution")),
        }
    }

    /// The word of a `${name<op>word}` up to `stop` (consumed). Patterns (`#`, `%`, `/`) keep
    /// their escapes (`raw`) so that `\*` stays a literal star.
    fn argument(&mut self, stop: char, raw: bool, missing: &str) -> Result<String, String> {
        match self.until(Some(stop), raw, None) {
            Err(_) if self.peek().is_none() => Err(missing.to_string()),
            other => other,
        }
    }
}

/// A shell pattern of `${V#p}`-style substitutions: `*`, `?`, and `\` escaping `*`, `?`, `\`.
struct Glob(Vec<GlobToken>);

#[derive(Clone, Copy, PartialEq)]
enum GlobToken {
    Any,
    One,
    Lit(char),
}

impl Glob {
    fn new(pattern: &str) -> Result<Glob, String> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => GlobToken::Any,
                '?' => GlobToken::One,
                '\\' => match chars.next() {
                    // `}` and `/` are escaped for the `${}` syntax, not for the pattern.
                    None => GlobToken::Lit('\\'),
                    Some(e @ ('}' | '/' | '*' | '?' | '\\')) => GlobToken::Lit(e),
                    Some(e) => {
                        return Err(format!(
                            "invalid pattern ({pattern}) in substitution: invalid escape '\\{e}'"
                        ));
                    }
                },
                c => GlobToken::Lit(c),
            });
        }
        Ok(Glob(tokens))
    }

    /// For every `n` in `0..=s.len()`, whether the pattern matches all of `s[..n]` (one pass).
    fn prefix_matches(tokens: &[GlobToken], s: &[char]) -> Vec<bool> {
        // reachable[j]: the tokens so far can match s[..j].
        let mut reachable = vec![false; s.len() + 1];
        reachable[0] = true;
        for token in tokens {
            let mut next = vec![false; s.len() + 1];
            for j in 0..=s.len() {
                next[j] = match token {
                    GlobToken::Any => reachable[j] || (j > 0 && next[j - 1]),
                    GlobToken::One => j > 0 && reachable[j - 1],
                    GlobToken::Lit(c) => j > 0 && reachable[j - 1] && s[j - 1] == *c,
                };
            }
            reachable = next;
        }
        reachable
    }

    /// The shortest (or, `greedy`, longest) `n` such that the pattern matches `s[..n]`.
    fn prefix_len(tokens: &[GlobToken], s: &[char], greedy: bool) -> Option<usize> {
        let matches = Glob::prefix_matches(tokens, s);
        if greedy {
            matches.iter().rposition(|m| *m)
        } else {
            matches.iter().position(|m| *m)
        }
    }

    fn trim_prefix(&self, value: &str, greedy: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        match Glob::prefix_len(&self.0, &chars, greedy) {
            Some(n) => chars[n..].iter().collect(),
            None => value.to_string(),
        }
    }

    fn trim_suffix(&self, value: &str, greedy: bool) -> String {
        // A suffix of the value is a prefix of the reversed value, for the reversed pattern.
        let mut reversed: Vec<char> = value.chars().collect();
        reversed.reverse();
        let tokens: Vec<GlobToken> = self.0.iter().rev().copied().collect();
        match Glob::prefix_len(&tokens, &reversed, greedy) {
            Some(n) => reversed[n..].iter().rev().collect(),
            None => value.to_string(),
        }
    }

    /// Replaces the first (or every) leftmost-longest match of the pattern in `value`; an empty
    /// match right after a previous match does not count (as in Go's regexp).
    fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        let mut last_end = None;
        while i <= chars.len() {
            if (last_end.is_none() || all)
                && let Some(n) = Glob::prefix_len(&self.0, &chars[i..], true)
                && !(n == 0 && last_end == Some(i))
            {
                out.push_str(replacement);
                last_end = Some(i + n);
                if n > 0 {
                    i += n;
                    continue;
                }
            }
            if let Some(c) = chars.get(i) {
                out.push(*c);
            }
            i += 1;
        }
        out
    }
}

/// Splits `ENV`/`LABEL`/`ARG` arguments into words on unquoted whitespace, keeping quotes and
/// escapes in the words (they are removed when the word is expanded).
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            None => {
                if c.is_whitespace() {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                    continue;
                }
                in_word = true;
                if c == '\'' || c == '"' {
                    quote = Some(c);
                }
                if c == escape {
                    if let Some(n) = chars.next() {
                        word.push(c);
                        word.push(n);
                    }
                    continue;
                }
                word.push(c);
            }
            Some(q) => {
                if c == q {
                    quote = None;
                    word.push(c);
                } else if c == escape && q != '\'' {
                    match chars.next() {
                        Some(n) => {
                            word.push(c);
                            word.push(n);
                        }
                        None => quote = None,
                    }
                } else {
                    word.push(c);
                }
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

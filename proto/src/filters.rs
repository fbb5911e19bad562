//! List filters in containerd's syntax (see berth.types.v1).
//!
//! A filter is a comma-separated list of clauses that must all match; a list of filters matches
//! if any filter matches, and an empty list matches everything. A clause is `field`,
//! `field==value`, `field!=value` or `field~=regexp`; `field` is a dotted path whose parts may
//! be double-quoted (`labels."app.kind"`), values may be double-quoted (`\"` and `\\` escape).

use regex::Regex;

/// A filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid filter {filter:?}: {reason}")]
pub struct FilterError {
    /// The filter string.
    pub filter: String,
    /// What is wrong with it.
    pub reason: String,
}

/// An object whose fields filters can look at.
pub trait Fields {
    /// The value at `path` (e.g. `["labels", "app"]`), or None if it has none.
    fn field(&self, path: &[String]) -> Option<String>;
}

/// Parsed filters, ready to match objects.
#[derive(Debug, Default)]
pub struct Filters {
    any: Vec<Vec<Clause>>,
}

#[derive(Debug)]
struct Clause {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

impl Filters {
    /// Parses `filters`; InvalidArgument names the first one that does not parse.
    pub fn parse(filters: &[String]) -> Result<Filters, FilterError> {
        let any = filters
            .iter()
            .map(|f| {
                parse_filter(f).map_err(|reason| FilterError {
                    filter: f.clone(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Filters { any })
    }

    /// True if `object` matches (always, when there are no filters).
    pub fn matches(&self, object: &impl Fields) -> bool {
        self.matches_with(|path| object.field(path))
    }

    /// True if the object whose fields `field` looks up matches.
    pub fn matches_with(&self, field: impl Fn(&[String]) -> Option<String>) -> bool {
        self.any.is_empty()
            || self
                .any
                .iter()
                .any(|clauses| clauses.iter().all(|c| c.matches(&field)))
    }
}

impl Clause {
    fn matches(&self, field: &impl Fn(&[String]) -> Option<String>) -> bool {
        let value = field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value.as_deref() == Some(v.as_str()),
            Op::NotEqual(v) => value.as_deref() != Some(v.as_str()),
            Op::Matches(re) => value.is_some_and(|s| re.is_match(&s)),
        }
    }
}

struct Parser<'a> {
    rest: &'a str,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn bump(&mut self, n: usize) {
        self.rest = &self.rest[n..];
    }

    fn skip_spaces(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn quoted(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = self.rest.char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.bump(i + 1);
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, e)) => out.push(e),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err("unterminated quoted string".into())
    }

    fn path(&mut self) -> Result<Vec<String>, String> {
        let mut parts = Vec::new();
        loop {
            self.skip_spaces();
            let part = if self.peek() == Some('"') {
                self.quoted()?
            } else {
                let end = self
                    .rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                    .unwrap_or(self.rest.len());
                let part = self.rest[..end].to_owned();
                self.bump(end);
                part
            };
            if part.is_empty() {
                return Err("expected a field name".into());
            }
            parts.push(part);
            if self.peek() == Some('.') {
                self.bump(1);
            } else {
                return Ok(parts);
            }
        }
    }

    fn value(&mut self) -> Result<String, String> {
        self.skip_spaces();
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let end = self.rest.find(',').unwrap_or(self.rest.len());
        let value = self.rest[..end].trim_end().to_owned();
        self.bump(end);
        Ok(value)
    }
}

fn parse_filter(filter: &str) -> Result<Vec<Clause>, String> {
    let mut p = Parser { rest: filter };
    let mut clauses = Vec::new();
    loop {
        let path = p.path()?;
        p.skip_spaces();
        let op = if p.rest.is_empty() || p.peek() == Some(',') {
            Op::Present
        } else {
            let op = p.rest.get(..2).unwrap_or(p.rest);
            let make: fn(String) -> Result<Op, String> = match op {
                "==" => |v| Ok(Op::Equal(v)),
                "!=" => |v| Ok(Op::NotEqual(v)),
                "~=" => |v| {
                    Regex::new(&v)
                        .map(Op::Matches)
                        .map_err(|e| format!("bad regexp: {e}"))
                },
                _ => return Err(format!("expected ==, != or ~= at {:?}", p.rest)),
            };
            p.bump(2);
            make(p.value()?)?
        };
        clauses.push(Clause { path, op });
        p.skip_spaces();
        match p.peek() {
            None => return Ok(clauses),
            Some(',') => p.bump(1),
            Some(_) => return Err(format!("unexpected {:?}", p.rest)),
        }
    }
}

/// The value of a label map for a `labels.<key>` path.
pub fn label<'a>(
    labels: &'a std::collections::BTreeMap<String, String>,
    path: &[String],
) -> Option<&'a String> {
    match path {
        [key] => labels.get(key),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct Obj(BTreeMap<&'static str, &'static str>);

    impl Fields for Obj {
        fn field(&self, path: &[String]) -> Option<String> {
            self.0.get(path.join("/").as_str()).map(|s| s.to_string())
        }
    }

    fn m(filters: &[&str], obj: &Obj) -> bool {
        let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Filters::parse(&f).unwrap().matches(obj)
    }

    #[test]
    fn clauses_and_alternatives() {
        let obj = Obj(BTreeMap::from([
            ("name", "docker.io/library/busybox:latest"),
            ("labels/app.kind", "web, front"),
            ("labels/x", ""),
        ]));
        assert!(m(&[], &obj));
        assert!(m(&["name"], &obj));
        assert!(!m(&["size"], &obj));
        assert!(m(&["name~=^docker.io/"], &obj));
        assert!(m(&["name==docker.io/library/busybox:latest"], &obj));
        assert!(m(&[r#"labels."app.kind"=="web, front""#], &obj));
        assert!(m(&["labels.x==", "name==nope"], &obj));
        assert!(!m(&["name~=busybox,labels.x!="], &obj));
        assert!(m(&["name != other , labels.x"], &obj));
    }

    #[test]
    fn malformed_filters_are_rejected() {
        for bad in [
            "",
            "name=x",
            "name==x,",
            "labels.\"a",
            "name~=(",
            ".x",
            "a b",
        ] {
            assert!(Filters::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}

//! Unit tests of the Dockerfile front end, table-driven where the rules are.

use std::collections::BTreeMap;
use std::time::Duration;

use super::lexer::{parse_words, process_heredoc, process_word, process_words};
use super::*;

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// The only instruction of the only stage of `FROM scratch\n<text>`.
fn one(text: &str) -> Instruction {
    let df = parse(&format!("FROM scratch\n{text}")).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(df.stages.len(), 1, "{text:?}");
    assert_eq!(
        df.stages[0].instructions.len(),
        1,
        "{text:?}: {:?}",
        df.stages[0].instructions
    );
    df.stages[0].instructions[0].clone()
}

/// The error of `FROM scratch\n<text>`.
fn error(text: &str) -> ParseError {
    match parse(&format!("FROM scratch\n{text}")) {
        Ok(df) => panic!("{text:?} parsed: {df:?}"),
        Err(e) => e,
    }
}

fn expanded(text: &str, v: &[(&str, &str)]) -> Kind {
    one(text)
        .expand(&vars(v))
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

#[test]
fn word_substitution_follows_dockers_lexer() {
    let env = vars(&[
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("NULL", ""),
        ("KOREAN", "한국어"),
        ("V", "a/b/c.tar.gz"),
    ]);
    // (word, expected result or None for an error)
    let table: &[(&str, Option<&str>)] = &[
        ("hello", Some("hello")),
        ("he'll'o", Some("hello")),
        ("he'llo", None),
        ("he\\'llo", Some("he'llo")),
        ("he\\\\'llo", None),
        ("abc\\tdef", Some("abctdef")),
        ("\"abc\\tdef\"", Some("abc\\tdef")),
        ("\"abc\\\\tdef\"", Some("abc\\tdef")),
        ("'abc\\tdef'", Some("abc\\tdef")),
        ("hello\\", Some("hello")),
        ("hello\\\\", Some("hello\\")),
        ("\"hello", None),
        ("\"hello\\\"", None),
        ("\"hel'lo\"", Some("hel'lo")),
        ("'hello\\'", Some("hello\\")),
        ("\"''\"", Some("''")),
        ("$.", Some("$.")),
        ("he$1x", Some("hex")),
        ("he$.x", Some("he$.x")),
        ("he$pwd.", Some("he.")),
        ("he$PWD", Some("he/home")),
        ("he\\$PWD", Some("he$PWD")),
        ("he\\\\$PWD", Some("he\\/home")),
        ("\"he\\$PWD\"", Some("he$PWD")),
        ("\\${}", Some("${}")),
        ("${}", None),
        ("he${hi}xx", Some("hexx")),
        ("he${PWD}", Some("he/home")),
        ("he${.}", None),
        ("he${XXX:-000}xx", Some("he000xx")),
        ("he${PWD:-000}xx", Some("he/homexx")),
        ("he${XXX:-$PWD}xx", Some("he/homexx")),
        ("he${XXX:-${YYY:-yyy}}xx", Some("heyyyxx")),
        ("he${XXX:YYY}", None),
        ("he${XXX?}", None),
        ("he${XXX:?}", None),
        ("he${PWD?}", Some("he/home")),
        ("he${NULL?}", Some("he")),
        ("he${NULL:?}", None),
        ("he${XXX:+${PWD}}xx", Some("hexx")),
        ("he${PWD:+${SHELL}}xx", Some("hebashxx")),
        ("he${PWD:+000}xx", Some("he000xx")),
        ("'he${XX}'", Some("he${XX}")),
        ("\"he'$PWD'\"", Some("he'/home'")),
        ("'\"hello\"'", Some("\"hello\"")),
        ("he${PWD", None),
        ("he${PWD:=000}xx", None),
        ("he${XXX:-\\$PWD:}xx", Some("he$PWD:xx")),
        ("he${XXX:-\\${PWD}z}xx", Some("he${PWDz}xx")),
        ("안'녕'하세요$KOREAN", Some("안녕하세요한국어")),
        ("${aaa}}", Some("}")),
        ("${aaa:-bbb {foo}", Some("bbb {foo")),
        ("${aaa:-bbb ${foo}", None),
        ("${:-bbb}", None),
        ("${1:-bbb}", Some("bbb")),
        // `-`/`+` without the colon treat an empty value as set.
        ("${NULL-x}", Some("")),
        ("${NULL:-x}", Some("x")),
        ("${NULL+x}", Some("x")),
        ("${NULL:+x}", Some("")),
        ("${XXX-x}", Some("x")),
        ("${XXX+x}", Some("")),
        // Pattern removal and replacement.
        ("${V#*/}", Some("b/c.tar.gz")),
        ("${V##*/}", Some("c.tar.gz")),
        ("${V%.*}", Some("a/b/c.tar")),
        ("${V%%.*}", Some("a/b/c")),
        ("${V/\\//-}", Some("a-b/c.tar.gz")),
        ("${V//\\//-}", Some("a-b-c.tar.gz")),
        ("${V:#x}", None),
        // Whitespace is kept: one word.
        ("a  b", Some("a  b")),
        // Replacement: leftmost-longest, `//` for all, empty matches not next to a match.
        ("${V/?/X}", Some("X/b/c.tar.gz")),
        ("${V//.*/X}", Some("a/b/cX")),
        ("${V//x*/-}", Some("a/b/c.tar.gz")),
        ("${V//*/-}", Some("-")),
        ("${V//?/-}", Some("------------")),
        ("${V/#/X}", Some("a/b/c.tar.gz")),
    ];
    for (word, want) in table {
        let got = process_word(word, &env, '\\');
        match want {
            Some(want) => assert_eq!(got.as_deref(), Ok(*want), "{word}"),
            None => assert!(got.is_err(), "{word}: expected an error, got {got:?}"),
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("{}x{}", "${a:-".repeat(100_000), "}".repeat(100_000));
    let e = process_word(&deep, &BTreeMap::new(), '\\').unwrap_err();
    assert!(e.contains("nested too deeply"), "{}", &e[e.len() - 60..]);
    let ok = format!("{}x{}", "${a:-".repeat(50), "}".repeat(50));
    assert_eq!(process_word(&ok, &BTreeMap::new(), '\\').unwrap(), "x");
}

#[test]
fn backtick_escape_leaves_backslashes_alone() {
    let env = vars(&[("X", "1")]);
    let table = [
        ("c:\\", "c:\\"),
        ("c:\\$X", "c:\\1"),
        ("`$X", "$X"),
        ("\"a`\"b\"", "a\"b"),
        ("a``", "a`"),
    ];
    for (word, want) in table {
        assert_eq!(process_word(word, &env, '`').as_deref(), Ok(want), "{word}");
    }
}

#[test]
fn word_splitting_after_substitution() {
    let env = vars(&[("PORTS", "80 443/udp")]);
    let table: &[(&str, &[&str])] = &[
        ("$PORTS", &["80", "443/udp"]),
        ("\"$PORTS\"", &["80 443/udp"]),
        ("a\\ b c", &["a b", "c"]),
        ("  x  ", &["x"]),
        ("''", &[]),
    ];
    for (word, want) in table {
        assert_eq!(
            process_words(word, &env, '\\').unwrap(),
            strings(want),
            "{word}"
        );
    }
}

#[test]
fn heredoc_bodies_expand_without_quote_removal() {
    let env = vars(&[("NAME", "x")]);
    assert_eq!(
        process_heredoc("echo \"$NAME\" '${NAME}' \\$NAME\n", &env).unwrap(),
        "echo \"x\" 'x' $NAME\n"
    );
}

#[test]
fn raw_words_keep_quotes_and_escapes() {
    let table: &[(&str, &[&str])] = &[
        ("a=1 b=2", &["a=1", "b=2"]),
        ("a=\"x y\" b='p q'", &["a=\"x y\"", "b='p q'"]),
        ("a=x\\ y", &["a=x\\ y"]),
        ("  a  ", &["a"]),
        ("a=\"\"", &["a=\"\""]),
    ];
    for (rest, want) in table {
        assert_eq!(parse_words(rest, '\\'), strings(want), "{rest}");
    }
}

#[test]
fn parser_directives() {
    let df = parse("# escape=`\nFROM scratch\nCOPY a c:\\\nRUN dir c:\\\n").unwrap();
    assert_eq!(df.escape, '`');
    let ins = &df.stages[0].instructions;
    assert_eq!(
        ins.len(),
        2,
        "a trailing backslash is not a continuation with escape=`"
    );
    assert_eq!(
        ins[0].expand(&BTreeMap::new()).unwrap(),
        Kind::Copy(copy(&["a"], "c:\\"))
    );
    assert_eq!(ins[1].kind, Kind::Run(shell_run("dir c:\\")));

    // Backtick continuations.
    let df = parse("# escape=`\nFROM scratch\nRUN echo `\n  hi\n").unwrap();
    assert_eq!(
        df.stages[0].instructions[0].kind,
        Kind::Run(shell_run("echo   hi"))
    );

    // The same file with the default escape: the backslash continues the line.
    let df = parse("FROM scratch\nCOPY a c:\\\nRUN dir c:\\\n").unwrap();
    assert_eq!(df.stages[0].instructions.len(), 1);

    // Case, spaces, syntax and check.
    let df = parse("#  ESCAPE = `\n# syntax=docker/dockerfile:1\n# check=skip=all\nFROM scratch\n")
        .unwrap();
    assert_eq!(df.escape, '`');
    assert_eq!(df.warnings.len(), 1);
    assert_eq!(df.warnings[0].line, 2);
    assert!(
        df.warnings[0]
            .message
            .contains("syntax directive is ignored"),
        "{}",
        df.warnings[0]
    );

    // Only at the very top: after a comment, a blank line or an instruction it is a comment.
    for text in [
        "# a comment\n# escape=`\nFROM scratch\n",
        "\n# escape=`\nFROM scratch\n",
        "FROM scratch\n# escape=`\n",
        "# unknown=x\n# escape=`\nFROM scratch\n",
    ] {
        assert_eq!(parse(text).unwrap().escape, '\\', "{text:?}");
    }

    let e = parse("# escape=`\n# escape=\\\nFROM scratch\n").unwrap_err();
    assert_eq!(
        (e.line, e.message.as_str()),
        (2, "only one escape parser directive can be used")
    );
    let e = parse("# escape=x\nFROM scratch\n").unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.message.contains("invalid escape token 'x'"), "{e}");
}

fn shell_run(s: &str) -> Run {
    Run {
        command: Command::Shell(s.into()),
        script: None,
        network: None,
    }
}

fn copy(sources: &[&str], dest: &str) -> Copy {
    Copy {
        sources: sources
            .iter()
            .map(|s| Source::Path(s.to_string()))
            .collect(),
        dest: dest.into(),
        from: None,
        chown: None,
        chmod: None,
        link: false,
        checksum: None,
    }
}

#[test]
fn comments_continuations_and_lines() {
    let text = "\u{feff}# comment\n\n  FROM scratch AS base\nRUN echo a \\\n# inside\n  b \\\n\n   \\\n c\n  # indented comment\nENV A=1 \\   \n    B=2\nCMD x \\\n";
    let df = parse(text).unwrap();
    let stage = &df.stages[0];
    assert_eq!(
        (stage.line, stage.name.as_deref(), stage.base.as_str()),
        (3, Some("base"), "scratch")
    );
    let ins = &stage.instructions;
    assert_eq!(ins.len(), 3);
    assert_eq!(ins[0].line, 4);
    assert_eq!(ins[0].text, "RUN echo a   b     c");
    assert_eq!(ins[0].kind, Kind::Run(shell_run("echo a   b     c")));
    assert_eq!(ins[1].line, 11);
    assert_eq!(
        ins[1].kind,
        Kind::Env(vec![("A".into(), "1".into()), ("B".into(), "2".into())])
    );
    assert_eq!(df.warnings.len(), 1, "{:?}", df.warnings);
    assert!(df.warnings[0].message.contains("empty continuation line"));
    assert_eq!(df.warnings[0].line, 4);
    // A continuation at the end of the file ends the instruction.
    assert_eq!(ins[2].kind, Kind::Cmd(Command::Shell("x".into())));

    // An escaped escape character at the end is not a continuation.
    let df = parse("FROM scratch\nRUN echo a\\\\\nRUN echo b\n").unwrap();
    assert_eq!(df.stages[0].instructions.len(), 2);
    // CRLF line endings.
    let df = parse("FROM scratch\r\nRUN a \\\r\n b\r\n").unwrap();
    assert_eq!(
        df.stages[0].instructions[0].kind,
        Kind::Run(shell_run("a  b"))
    );
}

#[test]
fn heredocs() {
    // A lone heredoc runs its body with the shell.
    let ins = one("RUN <<EOF\necho $HOME\necho two\nEOF\n");
    assert_eq!(ins.kind, Kind::Run(shell_run("echo $HOME\necho two\n")));
    assert_eq!(ins.text, "RUN <<EOF");
    // `<<-` strips leading tabs of the body and of the terminator.
    let ins = one("RUN <<-EOT\n\techo a\n\t\techo b\n\tEOT\n");
    assert_eq!(ins.kind, Kind::Run(shell_run("echo a\necho b\n")));
    // A `#!` body is a script file.
    let ins = one("RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n");
    let Kind::Run(run) = ins.kind else { panic!() };
    assert_eq!(run.command, Command::Exec(strings(&["/dev/pipes/EOF"])));
    assert_eq!(
        run.script.unwrap().content,
        "#!/usr/bin/env python3\nprint(1)\n"
    );
    // A command fed by heredocs: the shell reads the bodies.
    let ins = one("RUN cat <<A - <<\"B\" > /x\na $X\nA\nb\nB\n");
    assert_eq!(
        ins.kind,
        Kind::Run(shell_run("cat <<A - <<\"B\" > /x\na $X\nA\nb\nB"))
    );
    // The reference's example: the heredoc feeds `bash`, which the shell runs.
    let ins = one("RUN <<EOT bash\n  set -ex\n  apt-get update\nEOT\n");
    assert_eq!(
        ins.kind,
        Kind::Run(shell_run("<<EOT bash\n  set -ex\n  apt-get update\nEOT"))
    );
    // Followed by more instructions, with line numbers kept.
    let df = parse("FROM scratch\nRUN <<EOF\n1\nEOF\nUSER me\n").unwrap();
    assert_eq!(df.stages[0].instructions[1].line, 5);

    // COPY heredocs: unquoted bodies expand, quoted ones do not.
    let ins = one("COPY <<A <<'B' <<-\"C\" /dest/\nv=$V \\$V\nA\nv=$V\nB\n\tv=$V\n\tC\n");
    let v = [("V", "1")];
    let Kind::Copy(c) = ins.expand(&vars(&v)).unwrap() else {
        panic!()
    };
    let docs: Vec<(String, String, bool)> = c
        .sources
        .iter()
        .map(|s| match s {
            Source::Heredoc(h) => (h.name.clone(), h.content.clone(), h.expand),
            Source::Path(p) => panic!("{p}"),
        })
        .collect();
    assert_eq!(
        docs,
        vec![
            ("A".into(), "v=1 $V\n".into(), true),
            ("B".into(), "v=$V\n".into(), false),
            ("C".into(), "v=$V\n".into(), false),
        ]
    );
    assert_eq!(c.dest, "/dest/");
    // Mixed with a path.
    let Kind::Copy(c) = one("COPY a.txt <<EOF /d/\nx\nEOF\n").kind else {
        panic!()
    };
    assert_eq!(c.sources[0], Source::Path("a.txt".into()));

    // Exec form and other instructions do not take heredocs.
    assert_eq!(
        one("RUN [\"echo\", \"<<EOF\"]").kind,
        Kind::Run(Run {
            command: Command::Exec(strings(&["echo", "<<EOF"])),
            script: None,
            network: None,
        })
    );
    let df = parse("FROM scratch\nLABEL a=<<EOF\nUSER x\n").unwrap();
    assert_eq!(df.stages[0].instructions.len(), 2);

    let e = error("RUN <<EOF\necho\n");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("unterminated heredoc"), "{e}");
    let e = error("COPY a <<EOF\nx\nEOF\n");
    assert!(
        e.message
            .contains("cannot accept a heredoc as a destination"),
        "{e}"
    );
}

#[test]
fn exec_and_shell_forms() {
    let table: &[(&str, Kind)] = &[
        (
            "CMD [\"a\", \"b c\"]",
            Kind::Cmd(Command::Exec(strings(&["a", "b c"]))),
        ),
        (
            "CMD   [ \"a\" ]  ",
            Kind::Cmd(Command::Exec(strings(&["a"]))),
        ),
        ("CMD []", Kind::Cmd(Command::Exec(vec![]))),
        (
            "CMD echo \"$HOME\"",
            Kind::Cmd(Command::Shell("echo \"$HOME\"".into())),
        ),
        (
            "ENTRYPOINT [\"/bin/x\"]",
            Kind::Entrypoint(Command::Exec(strings(&["/bin/x"]))),
        ),
        (
            "entrypoint top -b",
            Kind::Entrypoint(Command::Shell("top -b".into())),
        ),
        (
            "SHELL [\"/bin/bash\", \"-c\"]",
            Kind::Shell(strings(&["/bin/bash", "-c"])),
        ),
        (
            "RUN [\"sh\", \"-c\", \"echo \\\"x\\\"\"]",
            Kind::Run(Run {
                command: Command::Exec(strings(&["sh", "-c", "echo \"x\""])),
                script: None,
                network: None,
            }),
        ),
    ];
    for (text, want) in table {
        assert_eq!(&one(text).kind, want, "{text}");
        // Never expanded by the builder.
        assert_eq!(
            &one(text).expand(&vars(&[("HOME", "/root")])).unwrap(),
            want,
            "{text}"
        );
    }

    // Not JSON: shell form, as Docker does, with a warning.
    let df = parse("FROM scratch\nCMD ['a', 'b']\n").unwrap();
    assert_eq!(
        df.stages[0].instructions[0].kind,
        Kind::Cmd(Command::Shell("['a', 'b']".into()))
    );
    assert_eq!(df.warnings.len(), 1);
    assert_eq!(df.warnings[0].line, 2);

    for (text, message) in [
        ("CMD [\"a\", 1]", "arrays must be comprised of strings only"),
        (
            "SHELL /bin/sh -c",
            "SHELL requires the arguments to be in JSON form",
        ),
        ("SHELL []", "SHELL requires at least one argument"),
        ("RUN", "RUN requires at least one argument"),
        ("CMD", "CMD requires at least one argument"),
        ("ENTRYPOINT", "ENTRYPOINT requires at least one argument"),
    ] {
        let e = error(text);
        assert_eq!(e.line, 2, "{text}");
        assert!(e.message.contains(message), "{text}: {e}");
    }
}

#[test]
fn from_and_stages() {
    let df = parse(
        "ARG TAG=1.36\nARG REPO\nFROM --platform=$BUILDPLATFORM busybox:${TAG} AS Build\nRUN x\nfrom build as final\nCOPY --from=build /a /b\n",
    )
    .unwrap();
    assert_eq!(
        df.args,
        vec![
            ArgDecl {
                name: "TAG".into(),
                default: Some("1.36".into())
            },
            ArgDecl {
                name: "REPO".into(),
                default: None
            },
        ]
    );
    assert_eq!(df.stages.len(), 2);
    let s = &df.stages[0];
    assert_eq!(
        (s.name.as_deref(), s.base.as_str(), s.platform.as_deref()),
        (Some("build"), "busybox:${TAG}", Some("$BUILDPLATFORM"))
    );
    assert_eq!(
        s.text,
        "FROM --platform=$BUILDPLATFORM busybox:${TAG} AS Build"
    );
    let meta = df.meta_args(&BTreeMap::new()).unwrap();
    assert_eq!(meta, vars(&[("TAG", "1.36")]));
    assert_eq!(s.base(&meta).unwrap(), "busybox:1.36");
    // Undeclared build args are not meta args; the automatic platform ARGs are the caller's.
    let mut meta = df
        .meta_args(&vars(&[("TAG", "latest"), ("OTHER", "x")]))
        .unwrap();
    assert_eq!(meta, vars(&[("TAG", "latest")]));
    meta.insert("BUILDPLATFORM".into(), "linux/amd64".into());
    assert_eq!(s.base(&meta).unwrap(), "busybox:latest");
    assert_eq!(s.platform(&meta).unwrap().as_deref(), Some("linux/amd64"));
    assert_eq!(
        (df.stages[1].name.as_deref(), df.stages[1].line),
        (Some("final"), 5)
    );
    assert_eq!(df.find_stage("BUILD"), Some(0));
    assert_eq!(df.find_stage("1"), Some(1));
    assert_eq!(df.find_stage("2"), None);
    assert_eq!(df.find_stage("nope"), None);

    // Meta ARG defaults see the meta ARGs before them.
    let df = parse("ARG A=x\nARG B=${A}y\nFROM $B\n").unwrap();
    let meta = df.meta_args(&BTreeMap::new()).unwrap();
    assert_eq!(df.stages[0].base(&meta).unwrap(), "xy");
    let meta = df.meta_args(&vars(&[("A", "z")])).unwrap();
    assert_eq!(df.stages[0].base(&meta).unwrap(), "zy");

    let cases: &[(&str, usize, &str)] = &[
        ("", 1, "file with no instructions"),
        ("# only\n\n", 2, "file with no instructions"),
        ("ARG A\n", 1, "no FROM"),
        ("RUN x\nFROM scratch\n", 1, "RUN before the first FROM"),
        ("ARG A\nENV B=1\n", 2, "ENV before the first FROM"),
        ("FROM\n", 1, "FROM requires either one or three arguments"),
        (
            "FROM a b\n",
            1,
            "FROM requires either one or three arguments",
        ),
        ("FROM a AS 1x\n", 1, "invalid name for build stage: \"1x\""),
        ("FROM a AS x$\n", 1, "invalid name for build stage"),
        (
            "FROM a AS x\nFROM b AS X\n",
            2,
            "duplicate stage name \"x\"",
        ),
        ("FROM --platfrm=x a\n", 1, "unknown flag: --platfrm"),
        (
            "FROM --platform a\n",
            1,
            "missing a value on flag: --platform",
        ),
    ];
    for (text, line, message) in cases {
        let e = parse(text).unwrap_err();
        assert_eq!(e.line, *line, "{text:?}: {e}");
        assert!(e.message.contains(message), "{text:?}: {e}");
    }
}

#[test]
fn run_flags() {
    let table: &[(&str, Option<Network>)] = &[
        ("RUN --network=none true", Some(Network::None)),
        ("RUN --network=host true", Some(Network::Host)),
        ("RUN --network=default true", Some(Network::Default)),
        ("RUN true", None),
        ("RUN --network=\"none\" true", Some(Network::None)),
    ];
    for (text, network) in table {
        let Kind::Run(run) = one(text).kind else {
            panic!()
        };
        assert_eq!(run.network, *network, "{text}");
        assert_eq!(run.command, Command::Shell("true".into()), "{text}");
    }
    // `--` ends the flags.
    let Kind::Run(run) = one("RUN -- --network=none").kind else {
        panic!()
    };
    assert_eq!(run.command, Command::Shell("--network=none".into()));

    for (text, message) in [
        (
            "RUN --mount=type=cache,target=/x true",
            "RUN --mount is not supported by berth's builder",
        ),
        (
            "RUN --security=insecure true",
            "RUN --security is not supported",
        ),
        (
            "RUN --network=bridge true",
            "invalid network mode \"bridge\"",
        ),
        ("RUN --network true", "missing a value on flag: --network"),
        ("RUN --netwrk=none true", "unknown flag: --netwrk"),
        (
            "RUN --network=none --network=host true",
            "duplicate flag specified: --network",
        ),
        ("RUN --network=none", "RUN requires at least one argument"),
        ("CMD --x=1 a", "unknown flag: --x"),
    ] {
        let e = error(text);
        assert_eq!(e.line, 2, "{text}");
        assert!(e.message.contains(message), "{text}: {e}");
    }
}

/// An instruction, the variables it is expanded with, and the result.
type Expansion = (&'static str, &'static [(&'static str, &'static str)], Kind);

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn env_label_arg() {
    let table: &[Expansion] = &[
        // Every word of one ENV sees the values from before it.
        (
            "ENV a=1 b=$a",
            &[("a", "old")],
            Kind::Env(pairs(&[("a", "1"), ("b", "old")])),
        ),
        (
            "ENV a=1 b=$a",
            &[],
            Kind::Env(pairs(&[("a", "1"), ("b", "")])),
        ),
        (
            "ENV greeting hello   big world",
            &[],
            Kind::Env(pairs(&[("greeting", "hello   big world")])),
        ),
        (
            "ENV PATH=/x:$PATH",
            &[("PATH", "/bin")],
            Kind::Env(pairs(&[("PATH", "/x:/bin")])),
        ),
        (
            "ENV a=\"x y\" b='$z' c=x\\ y d=",
            &[("z", "Z")],
            Kind::Env(pairs(&[("a", "x y"), ("b", "$z"), ("c", "x y"), ("d", "")])),
        ),
        (
            "ENV ${K}=v",
            &[("K", "key")],
            Kind::Env(pairs(&[("key", "v")])),
        ),
        (
            "LABEL \"com.example.vendor\"=\"ACME Inc\" version=1.0 \\\n  description=\"multi \\\nline\"",
            &[],
            Kind::Label(pairs(&[
                ("com.example.vendor", "ACME Inc"),
                ("version", "1.0"),
                ("description", "multi line"),
            ])),
        ),
        (
            "LABEL v=$V",
            &[("V", "2")],
            Kind::Label(pairs(&[("v", "2")])),
        ),
        (
            "LABEL legacy some value",
            &[],
            Kind::Label(pairs(&[("legacy", "some value")])),
        ),
        (
            "ARG a b=1 c=${b}2",
            &[("b", "9")],
            Kind::Arg(vec![
                ArgDecl {
                    name: "a".into(),
                    default: None,
                },
                ArgDecl {
                    name: "b".into(),
                    default: Some("1".into()),
                },
                ArgDecl {
                    name: "c".into(),
                    default: Some("12".into()),
                },
            ]),
        ),
        (
            "ARG x=\"a b\"",
            &[],
            Kind::Arg(vec![ArgDecl {
                name: "x".into(),
                default: Some("a b".into()),
            }]),
        ),
    ];
    for (text, v, want) in table {
        assert_eq!(&expanded(text, v), want, "{text}");
    }
    // Unexpanded, the raw text is kept.
    assert_eq!(
        one("ENV a=\"$b\"").kind,
        Kind::Env(pairs(&[("a", "\"$b\"")]))
    );

    for (text, message) in [
        ("ENV", "ENV requires at least one argument"),
        ("ENV a", "ENV must have two arguments"),
        ("ENV a=1 b", "can't find = in \"b\""),
        ("ENV =1", "ENV names can not be blank"),
        ("LABEL", "LABEL requires at least one argument"),
        ("ARG", "ARG requires at least one argument"),
        ("ARG =x", "ARG names can not be blank"),
    ] {
        let e = error(text);
        assert_eq!(e.line, 2, "{text}");
        assert!(e.message.contains(message), "{text}: {e}");
    }
    let e = one("ENV a=${b").expand(&BTreeMap::new()).unwrap_err();
    assert_eq!(e.line, 2);
    assert!(e.message.contains("missing '}'"), "{e}");
    assert_eq!(e.to_string(), format!("Dockerfile:2: {}", e.message));
    assert_eq!(
        e.display_with("build/Containerfile"),
        format!("build/Containerfile:2: {}", e.message)
    );
}

#[test]
fn arg_values() {
    let ins = one("ARG a b=1 c=${b}2 d META");
    let got = ins
        .resolve_args(
            &vars(&[("b", "9")]),
            &vars(&[("d", "from-cli")]),
            &vars(&[("META", "m"), ("a", "ignored-no")]),
        )
        .unwrap();
    let want: Vec<(String, Option<String>)> = vec![
        ("a".into(), Some("ignored-no".into())),
        ("b".into(), Some("1".into())),
        ("c".into(), Some("12".into())),
        ("d".into(), Some("from-cli".into())),
        ("META".into(), Some("m".into())),
    ];
    assert_eq!(got, want);
    let got = ins
        .resolve_args(&BTreeMap::new(), &vars(&[("b", "B")]), &BTreeMap::new())
        .unwrap();
    assert_eq!(got[0], ("a".into(), None));
    assert_eq!(got[2], ("c".into(), Some("B2".into())));
    // A default that does not expand is not an error when a build arg replaces it.
    let ins = one("ARG x=${");
    assert!(
        ins.resolve_args(&BTreeMap::new(), &vars(&[("x", "1")]), &BTreeMap::new())
            .is_ok()
    );
    assert!(
        ins.resolve_args(&BTreeMap::new(), &BTreeMap::new(), &BTreeMap::new())
            .is_err()
    );
    assert!(
        one("RUN x")
            .resolve_args(&BTreeMap::new(), &BTreeMap::new(), &BTreeMap::new())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn simple_instructions() {
    let v = [
        ("DIR", "/srv"),
        ("U", "app"),
        ("PORT", "8080"),
        ("SIG", "SIGINT"),
    ];
    let table: &[(&str, Kind)] = &[
        (
            "MAINTAINER Jane Doe <jane@example.com>",
            Kind::Maintainer("Jane Doe <jane@example.com>".into()),
        ),
        ("MAINTAINER $U", Kind::Maintainer("$U".into())),
        ("WORKDIR $DIR/app", Kind::Workdir("/srv/app".into())),
        ("WORKDIR \"/a b\"", Kind::Workdir("/a b".into())),
        ("USER $U:staff", Kind::User("app:staff".into())),
        ("STOPSIGNAL $SIG", Kind::Stopsignal("SIGINT".into())),
        ("STOPSIGNAL 9", Kind::Stopsignal("9".into())),
        ("STOPSIGNAL term", Kind::Stopsignal("term".into())),
        (
            "STOPSIGNAL SIGRTMIN+3",
            Kind::Stopsignal("SIGRTMIN+3".into()),
        ),
        (
            "VOLUME /data $DIR",
            Kind::Volume(strings(&["/data", "/srv"])),
        ),
        (
            "VOLUME [\"/a b\", \"$DIR\"]",
            Kind::Volume(strings(&["/a b", "/srv"])),
        ),
        (
            "EXPOSE 80 $PORT/udp 9000-9002/TCP",
            Kind::Expose(strings(&[
                "80/tcp", "8080/udp", "9000/tcp", "9001/tcp", "9002/tcp",
            ])),
        ),
        (
            "EXPOSE 53/sctp 7-7",
            Kind::Expose(strings(&["53/sctp", "7/tcp"])),
        ),
        (
            "EXPOSE 127.0.0.1:80:8000",
            Kind::Expose(strings(&["8000/tcp"])),
        ),
        (
            "ONBUILD RUN echo $DIR",
            Kind::Onbuild("RUN echo $DIR".into()),
        ),
    ];
    for (text, want) in table {
        assert_eq!(&expanded(text, &v), want, "{text}");
    }
    let Kind::Expose(ports) = expanded("EXPOSE $P", &[("P", "1 2")]) else {
        panic!()
    };
    assert_eq!(ports, strings(&["1/tcp", "2/tcp"]));

    for (text, message) in [
        ("MAINTAINER", "MAINTAINER requires exactly one argument"),
        ("WORKDIR", "WORKDIR requires exactly one argument"),
        ("USER", "USER requires exactly one argument"),
        ("STOPSIGNAL", "STOPSIGNAL requires exactly one argument"),
        ("VOLUME", "VOLUME requires at least one argument"),
        (
            "VOLUME [\"\"]",
            "VOLUME specified can not be an empty string",
        ),
        ("EXPOSE", "EXPOSE requires at least one argument"),
        ("USER --x=1 a", "unknown flag: --x"),
    ] {
        let e = error(text);
        assert_eq!(e.line, 2, "{text}");
        assert!(e.message.contains(message), "{text}: {e}");
    }
    for (text, message) in [
        ("EXPOSE 80/xtp", "invalid proto"),
        ("EXPOSE http", "invalid containerPort: http"),
        ("EXPOSE 70000", "invalid containerPort"),
        ("EXPOSE 90-80", "invalid port range"),
        ("STOPSIGNAL SIGNOPE", "invalid signal: SIGNOPE"),
        ("STOPSIGNAL 0", "invalid signal"),
        (
            "VOLUME $EMPTY",
            "VOLUME specified can not be an empty string",
        ),
        ("USER $EMPTY", "USER is empty"),
    ] {
        let e = one(text).expand(&BTreeMap::new()).unwrap_err();
        assert_eq!(e.line, 2, "{text}");
        assert!(e.message.contains(message), "{text}: {e}");
    }
}

#[test]
fn add_and_copy() {
    let v = [("OWNER", "app"), ("SRC", "src"), ("SUM", "sha256:abc")];
    let Kind::Copy(c) = expanded(
        "COPY --from=build --chown=$OWNER:staff --chmod=0644 --link $SRC/*.rs 'o'th\"er\" /dst/",
        &v,
    ) else {
        panic!()
    };
    assert_eq!(c.from.as_deref(), Some("build"));
    assert_eq!(c.chown.as_deref(), Some("app:staff"));
    assert_eq!(c.chmod.as_deref(), Some("0644"));
    assert!(c.link);
    assert_eq!(
        c.sources,
        vec![
            Source::Path("src/*.rs".into()),
            Source::Path("other".into())
        ]
    );
    assert_eq!(c.dest, "/dst/");

    // The docs' escaping example.
    let Kind::Copy(c) = expanded("COPY \\$FOO /quux", &[("FOO", "/bar")]) else {
        panic!()
    };
    assert_eq!(
        (c.sources, c.dest),
        (vec![Source::Path("$FOO".into())], "/quux".to_string())
    );

    let Kind::Copy(c) = expanded("COPY [\"a b\", \"$SRC\", \"/d\"]", &v) else {
        panic!()
    };
    assert_eq!(
        c.sources,
        vec![Source::Path("a b".into()), Source::Path("src".into())]
    );
    assert_eq!(c.dest, "/d");
    assert!(!c.link);

    let Kind::Add(a) = expanded(
        "ADD --checksum=$SUM --chown=1:1 --link=false http://127.0.0.1/x.tar /",
        &v,
    ) else {
        panic!()
    };
    assert_eq!(a.checksum.as_deref(), Some("sha256:abc"));
    assert_eq!(a.chown.as_deref(), Some("1:1"));
    assert!(!a.link);
    assert_eq!(
        a.sources,
        vec![Source::Path("http://127.0.0.1/x.tar".into())]
    );

    // Whitespace splitting of the shell form is not quote-aware (as in Docker): a quoted name
    // with a space is two words, and each must be a complete word.
    let e = one("COPY \"a b\" /d/")
        .expand(&BTreeMap::new())
        .unwrap_err();
    assert!(
        e.message.contains("looking for matching double-quote"),
        "{e}"
    );

    for (text, message) in [
        ("COPY a", "COPY requires at least two arguments"),
        ("ADD a", "ADD requires at least two arguments"),
        ("COPY", "COPY requires at least two arguments"),
        ("COPY [\"a\"]", "COPY requires at least two arguments"),
        (
            "COPY --parents a b",
            "COPY --parents is not supported by berth's builder",
        ),
        ("COPY --exclude=*.md a b", "COPY --exclude is not supported"),
        (
            "ADD --keep-git-dir https://example.invalid/r.git /r",
            "ADD --keep-git-dir is not supported",
        ),
        ("ADD --from=x a b", "unknown flag: --from"),
        ("COPY --checksum=x a b", "unknown flag: --checksum"),
        ("COPY --chown a b", "missing a value on flag: --chown"),
        (
            "COPY --link=maybe a b",
            "expecting boolean value for flag --link",
        ),
        (
            "COPY --from=$STAGE a b",
            "variable expansion is not supported for --from",
        ),
        ("COPY --from= a b", "COPY --from needs"),
    ] {
        let e = error(text);
        assert_eq!(e.line, 2, "{text}");
        assert!(e.message.contains(message), "{text}: {e}");
    }
}

#[test]
fn onbuild() {
    let ins = one("ONBUILD  COPY --chown=1 . /app/src");
    assert_eq!(ins.kind, Kind::Onbuild("COPY --chown=1 . /app/src".into()));
    // The stored trigger parses again on its own, at the line the caller says.
    let Kind::Onbuild(trigger) = ins.kind else {
        panic!()
    };
    let inner = parse_instruction(&trigger, 7).unwrap();
    assert_eq!(inner.line, 7);
    assert_eq!(inner.text, "COPY --chown=1 . /app/src");
    assert!(matches!(inner.kind, Kind::Copy(_)));

    // With a heredoc, the body travels with the trigger.
    let Kind::Onbuild(trigger) = one("ONBUILD RUN <<EOF\necho hi\nEOF\n").kind else {
        panic!()
    };
    assert_eq!(trigger, "RUN <<EOF\necho hi\nEOF");
    assert_eq!(
        parse_instruction(&trigger, 1).unwrap().kind,
        Kind::Run(shell_run("echo hi\n"))
    );

    for (text, message) in [
        ("ONBUILD", "ONBUILD requires at least one argument"),
        (
            "ONBUILD ONBUILD RUN x",
            "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        ),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        (
            "onbuild maintainer x",
            "MAINTAINER isn't allowed as an ONBUILD trigger",
        ),
        ("ONBUILD BOGUS x", "unknown instruction: BOGUS"),
        ("ONBUILD RUN --mount=x y", "RUN --mount is not supported"),
    ] {
        let e = error(text);
        assert_eq!(e.line, 2, "{text}");
        assert!(e.message.contains(message), "{text}: {e}");
    }

    for (text, message) in [
        ("", "empty instruction"),
        ("# just a comment", "empty instruction"),
        ("RUN a\nRUN b", "expected one instruction"),
        ("NOPE", "unknown instruction: NOPE"),
        ("RUN <<EOF\nx", "unterminated heredoc"),
    ] {
        let e = parse_instruction(text, 42).unwrap_err();
        assert_eq!(e.line, 42, "{text:?}");
        assert!(e.message.contains(message), "{text:?}: {e}");
    }
    // Continuations work in a trigger too.
    assert_eq!(
        parse_instruction("RUN a \\\n b", 1).unwrap().kind,
        Kind::Run(shell_run("a  b"))
    );
}

#[test]
fn healthcheck() {
    let ins = one(
        "HEALTHCHECK --interval=5m --timeout=3s --start-period=1m30s --start-interval=500ms --retries=3 CMD curl -f http://localhost/ || exit 1",
    );
    let Kind::Healthcheck(h) = &ins.kind else {
        panic!()
    };
    assert_eq!(
        h,
        &Healthcheck::Check {
            command: Command::Shell("curl -f http://localhost/ || exit 1".into()),
            interval: Some(Duration::from_secs(300)),
            timeout: Some(Duration::from_secs(3)),
            start_period: Some(Duration::from_secs(90)),
            start_interval: Some(Duration::from_millis(500)),
            retries: Some(3),
        }
    );
    assert_eq!(
        h.test(),
        strings(&["CMD-SHELL", "curl -f http://localhost/ || exit 1"])
    );

    let Kind::Healthcheck(h) = one("HEALTHCHECK --interval=0s cmd [\"/bin/check\", \"-q\"]").kind
    else {
        panic!()
    };
    assert_eq!(h.test(), strings(&["CMD", "/bin/check", "-q"]));
    let Healthcheck::Check { interval, .. } = h else {
        panic!()
    };
    assert_eq!(interval, None, "zero means the default");

    let Kind::Healthcheck(h) = one("HEALTHCHECK --timeout=1.5h CMD x").kind else {
        panic!()
    };
    let Healthcheck::Check { timeout, .. } = h else {
        panic!()
    };
    assert_eq!(timeout, Some(Duration::from_secs(5400)));

    assert_eq!(
        one("HEALTHCHECK none").kind,
        Kind::Healthcheck(Healthcheck::None)
    );
    assert_eq!(Healthcheck::None.test(), strings(&["NONE"]));

    for (text, message) in [
        ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        (
            "HEALTHCHECK --interval=1s NONE",
            "HEALTHCHECK NONE takes no arguments",
        ),
        ("HEALTHCHECK CMD", "missing command after HEALTHCHECK CMD"),
        (
            "HEALTHCHECK CMD []",
            "missing command after HEALTHCHECK CMD",
        ),
        (
            "HEALTHCHECK TEST x",
            "unknown type \"TEST\" in HEALTHCHECK (try CMD)",
        ),
        ("HEALTHCHECK --interval=5 CMD x", "missing unit"),
        ("HEALTHCHECK --interval=5y CMD x", "unknown unit \"y\""),
        (
            "HEALTHCHECK --interval=10us CMD x",
            "cannot be less than 1ms",
        ),
        ("HEALTHCHECK --timeout=-1s CMD x", "cannot be less than 1ms"),
        (
            "HEALTHCHECK --retries=-1 CMD x",
            "--retries cannot be negative (-1)",
        ),
        ("HEALTHCHECK --retries=x CMD x", "--retries: invalid number"),
        ("HEALTHCHECK --every=1s CMD x", "unknown flag: --every"),
    ] {
        let e = error(text);
        assert_eq!(e.line, 2, "{text}");
        assert!(e.message.contains(message), "{text}: {e}");
    }
}

#[test]
fn unknown_instructions() {
    let e = parse("FROM scratch\n\nRUNN echo\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:3: unknown instruction: RUNN (did you mean RUN?)"
    );
    let e = parse("FROM scratch\nFOOBAR x\n").unwrap_err();
    assert_eq!(e.to_string(), "Dockerfile:2: unknown instruction: FOOBAR");
    // Keywords are case-insensitive; the text keeps the spelling.
    let ins = one("rUn echo");
    assert_eq!(ins.text, "rUn echo");
    assert_eq!(ins.kind.keyword(), "RUN");
}

#[test]
fn multi_stage_file() {
    let text = "\
# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${BASE} AS builder
WORKDIR /src
COPY . .
RUN --network=none make \\
    && make install
FROM scratch
COPY --from=builder /out /
ENTRYPOINT [\"/app\"]
";
    let df = parse(text).unwrap();
    assert_eq!(df.stages.len(), 2);
    let lines: Vec<usize> = df.stages[0].instructions.iter().map(|i| i.line).collect();
    assert_eq!(lines, vec![4, 5, 6]);
    assert_eq!(df.stages[1].line, 8);
    let keywords: Vec<&str> = df.stages[1]
        .instructions
        .iter()
        .map(|i| i.kind.keyword())
        .collect();
    assert_eq!(keywords, vec!["COPY", "ENTRYPOINT"]);
}

#[test]
fn go_durations() {
    let table: &[(&str, Option<i128>)] = &[
        ("0", Some(0)),
        ("1ns", Some(1)),
        ("1.5s", Some(1_500_000_000)),
        ("2h45m", Some(9_900_000_000_000)),
        (".5m", Some(30_000_000_000)),
        ("1µs", Some(1_000)),
        ("-3ms", Some(-3_000_000)),
        ("", None),
        ("s", None),
        ("1", None),
        ("1..2s", None),
        ("99999999999999999999h", None),
    ];
    for (s, want) in table {
        assert_eq!(super::parser::go_duration(s).ok(), *want, "{s}");
    }
}

/// Arbitrary input never panics: parsing, expanding every instruction, and parsing every stored
/// trigger either succeed or return an error.
#[test]
fn random_input_never_panics() {
    // A small xorshift generator: deterministic, no dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pieces = [
        "FROM ",
        "scratch",
        " AS x",
        "\n",
        "RUN ",
        "COPY ",
        "ADD ",
        "ENV ",
        "ARG ",
        "LABEL ",
        "ONBUILD ",
        "HEALTHCHECK ",
        "CMD ",
        "EXPOSE ",
        "SHELL ",
        "USER ",
        "VOLUME ",
        "STOPSIGNAL ",
        "<<",
        "<<-",
        "EOF",
        "\"",
        "'",
        "\\",
        "`",
        "$",
        "${",
        "}",
        ":-",
        ":+",
        "#",
        "%",
        "/",
        "[",
        "]",
        "=",
        " ",
        "\t",
        "--",
        "--network=",
        "--from=",
        "# escape=`\n",
        "a",
        "é",
        "\r\n",
        "-",
        "*",
        "?",
        "\u{feff}",
        "\0",
    ];
    let env = vars(&[("a", "1"), ("x", "y z")]);
    for _ in 0..3000 {
        let mut text = String::new();
        let n = next() % 40;
        for _ in 0..n {
            if next() % 8 == 0 {
                // Raw bytes, made into a string the way a reader of a file would.
                let bytes: Vec<u8> = (0..next() % 6).map(|_| next() as u8).collect();
                text.push_str(&String::from_utf8_lossy(&bytes));
            } else {
                text.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
        }
        if let Ok(df) = parse(&text) {
            let _ = df.meta_args(&env);
            for stage in &df.stages {
                let _ = stage.base(&env);
                for ins in &stage.instructions {
                    let _ = ins.expand(&env);
                    if let Kind::Onbuild(trigger) = &ins.kind {
                        let _ = parse_instruction(trigger, ins.line);
                    }
                }
            }
        }
        let _ = parse_instruction(&text, 1);
        let _ = process_word(&text, &env, '\\');
        let _ = process_words(&text, &env, '`');
        let _ = process_heredoc(&text, &env);
    }
}

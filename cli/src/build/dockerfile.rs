//! The Dockerfile, parsed by the `parse-dockerfile` crate and turned into owned plain data the
//! planner and step runner work on: global ARGs, then stages of instructions.
//!
//! Parse errors name the file, line and column (`Dockerfile:3:1: unknown instruction 'FOO'`).
//! Nothing is expanded here: `$VAR`s are expanded per step, when the ARG/ENV values are known.

use std::path::Path;

use anyhow::{Result, bail};
use parse_dockerfile::{
    Command, Flag, HealthcheckArguments, Instruction, JsonOrStringArray, Source,
};

/// A parsed Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// ARGs before the first FROM (usable in FROM lines).
    pub global_args: Vec<Inst>,
    /// The stages, in order.
    pub stages: Vec<Stage>,
}

/// One `FROM` and its instructions.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Its position (`--from=0` names the first stage).
    pub index: usize,
    /// `AS name`, lowercased as Docker does.
    pub name: Option<String>,
    /// The FROM line (base image, unexpanded).
    pub from: Inst,
    /// The instructions after FROM.
    pub steps: Vec<Inst>,
}

/// Exec form (JSON array) or shell form of RUN/CMD/ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdForm {
    /// `["a", "b"]`.
    Exec(Vec<String>),
    /// `a b`, line continuations removed.
    Shell(String),
}

/// An instruction, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `FROM image [AS name]`.
    From {
        /// The image, unexpanded.
        image: String,
    },
    /// `RUN`.
    Run(CmdForm),
    /// `CMD`.
    Cmd(CmdForm),
    /// `ENTRYPOINT`.
    Entrypoint(CmdForm),
    /// `COPY`/`ADD`.
    Copy {
        /// ADD rather than COPY.
        add: bool,
        /// `--name[=value]` flags.
        flags: Vec<(String, Option<String>)>,
        /// Sources, unexpanded.
        srcs: Vec<String>,
        /// Destination, unexpanded.
        dest: String,
    },
    /// `ENV` (raw arguments).
    Env(String),
    /// `ARG` (raw arguments).
    Arg(String),
    /// `LABEL` (raw arguments).
    Label(String),
    /// `EXPOSE`.
    Expose(Vec<String>),
    /// `USER`.
    User(String),
    /// `WORKDIR`.
    Workdir(String),
    /// `VOLUME`.
    Volume(Vec<String>),
    /// `SHELL`.
    Shell(Vec<String>),
    /// `STOPSIGNAL`.
    Stopsignal(String),
    /// `HEALTHCHECK [options] CMD …` or `HEALTHCHECK NONE`.
    Healthcheck {
        /// Options (`interval`, `timeout`, `start-period`, `start-interval`, `retries`).
        flags: Vec<(String, Option<String>)>,
        /// The test command; `None` for NONE.
        cmd: Option<CmdForm>,
    },
    /// `ONBUILD` (recorded in the config, not run).
    Onbuild(String),
    /// `MAINTAINER` (recorded as the author).
    Maintainer(String),
}

/// One instruction with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inst {
    /// 1-based line of its keyword.
    pub line: usize,
    /// The instruction as written, continuation lines joined (for `STEP n/m:` lines).
    pub text: String,
    /// What it is.
    pub kind: Kind,
}

impl Inst {
    /// The keyword, upper case.
    pub fn keyword(&self) -> &'static str {
        match &self.kind {
            Kind::From { .. } => "FROM",
            Kind::Run(_) => "RUN",
            Kind::Cmd(_) => "CMD",
            Kind::Entrypoint(_) => "ENTRYPOINT",
            Kind::Copy { add: true, .. } => "ADD",
            Kind::Copy { add: false, .. } => "COPY",
            Kind::Env(_) => "ENV",
            Kind::Arg(_) => "ARG",
            Kind::Label(_) => "LABEL",
            Kind::Expose(_) => "EXPOSE",
            Kind::User(_) => "USER",
            Kind::Workdir(_) => "WORKDIR",
            Kind::Volume(_) => "VOLUME",
            Kind::Shell(_) => "SHELL",
            Kind::Stopsignal(_) => "STOPSIGNAL",
            Kind::Healthcheck { .. } => "HEALTHCHECK",
            Kind::Onbuild(_) => "ONBUILD",
            Kind::Maintainer(_) => "MAINTAINER",
        }
    }
}

/// Removes `escape` + newline pairs (line continuations) from shell-form text, as Docker's
/// parser does before handing the command to the shell.
fn join_continuations(s: &str, escape: char) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == escape {
            // Skip trailing spaces between the escape and the newline too.
            let rest: String = chars
                .clone()
                .take_while(|c| *c == ' ' || *c == '\t')
                .collect();
            let mut look = chars.clone().skip(rest.chars().count());
            match look.next() {
                Some('\n') => {
                    for _ in 0..=rest.chars().count() {
                        chars.next();
                    }
                    continue;
                }
                Some('\r') if look.next() == Some('\n') => {
                    for _ in 0..rest.chars().count() + 2 {
                        chars.next();
                    }
                    continue;
                }
                _ => {}
            }
        }
        out.push(c);
    }
    out
}

fn cmd_form(c: &Command<'_>, escape: char) -> Result<CmdForm> {
    Ok(match c {
        Command::Exec(v) => CmdForm::Exec(v.value.iter().map(|s| s.value.to_string()).collect()),
        Command::Shell(s) => CmdForm::Shell(join_continuations(s.value, escape).trim().to_owned()),
        _ => bail!("a command form this version of strata does not know"),
    })
}

fn flags(f: &[Flag<'_>]) -> Vec<(String, Option<String>)> {
    f.iter()
        .map(|f| {
            (
                f.name.value.to_string(),
                f.value.as_ref().map(|v| v.value.to_string()),
            )
        })
        .collect()
}

/// The lines of the instruction starting at byte `start`, continuations joined, whitespace
/// runs collapsed: what `STEP n/m:` shows.
fn instruction_text(text: &str, start: usize, escape: char) -> String {
    let mut out = String::new();
    for line in text[start..].lines() {
        let t = line.trim_end();
        if let Some(body) = t.strip_suffix(escape) {
            out.push_str(body);
            out.push(' ');
        } else {
            out.push_str(t);
            break;
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn line_of(text: &str, pos: usize) -> usize {
    text[..pos.min(text.len())].matches('\n').count() + 1
}

fn convert(i: &Instruction<'_>, text: &str, escape: char) -> Result<Inst> {
    let (start, kind) = match i {
        Instruction::From(f) => {
            let kind = Kind::From {
                image: f.image.value.to_string(),
            };
            (f.from.span.start, kind)
        }
        Instruction::Run(r) => {
            if let Some(h) = r.here_docs.first() {
                bail!(
                    "line {}: RUN with a here-document is not supported; write the script to a \
                     file and COPY it",
                    line_of(text, h.span.start)
                );
            }
            if let Some((n, _)) = flags(&r.options).first() {
                bail!(
                    "line {}: RUN --{n} is not supported (strata runs RUN without mounts or \
                     network options)",
                    line_of(text, r.run.span.start)
                );
            }
            (r.run.span.start, Kind::Run(cmd_form(&r.arguments, escape)?))
        }
        Instruction::Cmd(c) => (c.cmd.span.start, Kind::Cmd(cmd_form(&c.arguments, escape)?)),
        Instruction::Entrypoint(c) => (
            c.entrypoint.span.start,
            Kind::Entrypoint(cmd_form(&c.arguments, escape)?),
        ),
        Instruction::Copy(c) => (
            c.copy.span.start,
            copy_kind(false, &c.options, &c.src, &c.dest.value, text)?,
        ),
        Instruction::Add(c) => (
            c.add.span.start,
            copy_kind(true, &c.options, &c.src, &c.dest.value, text)?,
        ),
        Instruction::Env(e) => (e.env.span.start, Kind::Env(e.arguments.value.to_string())),
        Instruction::Arg(e) => (e.arg.span.start, Kind::Arg(e.arguments.value.to_string())),
        Instruction::Label(e) => (
            e.label.span.start,
            Kind::Label(e.arguments.value.to_string()),
        ),
        Instruction::Expose(e) => (
            e.expose.span.start,
            Kind::Expose(e.arguments.iter().map(|s| s.value.to_string()).collect()),
        ),
        Instruction::User(e) => (e.user.span.start, Kind::User(e.arguments.value.to_string())),
        Instruction::Workdir(e) => (
            e.workdir.span.start,
            Kind::Workdir(e.arguments.value.to_string()),
        ),
        Instruction::Volume(v) => {
            let list = match &v.arguments {
                JsonOrStringArray::Json(j) => j.value.iter().map(|s| s.value.to_string()).collect(),
                JsonOrStringArray::String(s) => s.iter().map(|s| s.value.to_string()).collect(),
            };
            (v.volume.span.start, Kind::Volume(list))
        }
        Instruction::Shell(s) => (
            s.shell.span.start,
            Kind::Shell(s.arguments.iter().map(|s| s.value.to_string()).collect()),
        ),
        Instruction::Stopsignal(s) => (
            s.stopsignal.span.start,
            Kind::Stopsignal(s.arguments.value.to_string()),
        ),
        Instruction::Healthcheck(h) => {
            let cmd = match &h.arguments {
                HealthcheckArguments::Cmd { arguments, .. } => Some(cmd_form(arguments, escape)?),
                _ => None,
            };
            (
                h.healthcheck.span.start,
                Kind::Healthcheck {
                    flags: flags(&h.options),
                    cmd,
                },
            )
        }
        Instruction::Onbuild(o) => {
            let start = o.onbuild.span.start;
            let t = instruction_text(text, start, escape);
            let rest = t
                .split_once(char::is_whitespace)
                .map(|(_, r)| r.trim().to_owned())
                .unwrap_or_default();
            (start, Kind::Onbuild(rest))
        }
        Instruction::Maintainer(m) => (
            m.maintainer.span.start,
            Kind::Maintainer(m.name.value.to_string()),
        ),
        _ => bail!("an instruction this version of strata does not know"),
    };
    Ok(Inst {
        line: line_of(text, start),
        text: instruction_text(text, start, escape),
        kind,
    })
}

fn copy_kind(
    add: bool,
    options: &[Flag<'_>],
    src: &[Source<'_>],
    dest: &str,
    text: &str,
) -> Result<Kind> {
    let mut srcs = Vec::new();
    for s in src {
        match s {
            Source::Path(p) => srcs.push(p.value.to_string()),
            Source::HereDoc(h) => bail!(
                "line {}: COPY/ADD from a here-document is not supported; put the text in a \
                 file of the context",
                line_of(text, h.span.start)
            ),
            _ => bail!("a COPY/ADD source this version of strata does not know"),
        }
    }
    Ok(Kind::Copy {
        add,
        flags: flags(options),
        srcs,
        dest: dest.to_owned(),
    })
}

/// Parses Dockerfile `text`; `path` names it in errors.
///
/// # Errors
/// A syntax error (with `path:line:column`), an unknown instruction, an instruction before
/// FROM other than ARG, no FROM at all, duplicate stage names.
pub fn parse(text: &str, path: &Path) -> Result<Dockerfile> {
    let d = parse_dockerfile::parse(text)
        .map_err(|e| anyhow::anyhow!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))?;
    let escape = d
        .parser_directives
        .escape
        .as_ref()
        .map(|e| e.value.value)
        .unwrap_or('\\');
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for i in &d.instructions {
        let inst =
            convert(i, text, escape).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        match (&inst.kind, i) {
            (Kind::From { .. }, Instruction::From(f)) => {
                if let Some((flag, _)) =
                    flags(&f.options).into_iter().find(|(n, _)| n != "platform")
                {
                    bail!(
                        "{}:{}: FROM --{flag} is not supported",
                        path.display(),
                        inst.line
                    );
                }
                let name = f.as_.as_ref().map(|(_, n)| n.value.to_ascii_lowercase());
                stages.push(Stage {
                    index: stages.len(),
                    name,
                    from: inst,
                    steps: Vec::new(),
                });
            }
            _ => match stages.last_mut() {
                Some(s) => s.steps.push(inst),
                None => global_args.push(inst),
            },
        }
    }
    if stages.is_empty() {
        bail!(
            "{}: no FROM instruction; a Dockerfile starts with FROM IMAGE (or FROM scratch)",
            path.display()
        );
    }
    Ok(Dockerfile {
        global_args,
        stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stages_forms_and_continuations() {
        let t = "ARG V=1\nFROM busybox AS Builder\nRUN echo a \\\n  && echo b\n\
                 RUN [\"echo\", \"x\"]\nCOPY --chown=1:2 a* b/ /dst/\nFROM scratch\n\
                 COPY --from=builder /x /y\n";
        let d = parse(t, Path::new("Dockerfile")).unwrap();
        assert_eq!(d.global_args.len(), 1);
        assert_eq!(d.stages.len(), 2);
        assert_eq!(d.stages[0].name.as_deref(), Some("builder"));
        let s = &d.stages[0].steps;
        assert_eq!(
            s[0].kind,
            Kind::Run(CmdForm::Shell("echo a   && echo b".into()))
        );
        assert_eq!(s[0].line, 3);
        assert_eq!(s[0].text, "RUN echo a && echo b");
        assert_eq!(
            s[1].kind,
            Kind::Run(CmdForm::Exec(vec!["echo".into(), "x".into()]))
        );
        match &s[2].kind {
            Kind::Copy {
                flags,
                srcs,
                dest,
                add,
            } => {
                assert!(!add);
                assert_eq!(flags, &[("chown".to_owned(), Some("1:2".to_owned()))]);
                assert_eq!(srcs, &["a*", "b/"]);
                assert_eq!(dest, "/dst/");
            }
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = parse("FROM a\nFOO bar\n", Path::new("df"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("df:2:1: unknown instruction 'FOO'"), "{e}");
        let e = parse("RUN x\n", Path::new("df")).unwrap_err().to_string();
        assert!(e.contains("df:1:1"), "{e}");
    }
}

//! `--change 'INSTRUCTION'`: the Dockerfile instructions that edit an image config
//! (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME, WORKDIR, STOPSIGNAL, ONBUILD), as
//! `docker import --change` and `docker commit --change` accept them.

use anyhow::{Context, Result, bail};
use layerstore::RunConfig;

/// Splits words the way the Dockerfile parser does for ENV/LABEL: whitespace separates,
/// double and single quotes group (and are removed), backslash escapes.
///
/// # Errors
/// An unterminated quote.
pub fn words(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (_, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        bail!("unterminated quote in {s:?}");
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Exec form (`["a","b"]`) or shell form (`a b` → `/bin/sh -c "a b"`).
fn exec_or_shell(rest: &str, shell: &[String]) -> Result<Vec<String>> {
    let t = rest.trim();
    if t.starts_with('[')
        && let Ok(v) = serde_json::from_str::<Vec<String>>(t)
    {
        return Ok(v);
    }
    let mut v = shell.to_vec();
    v.push(t.to_owned());
    Ok(v)
}

fn key_values(rest: &str, what: &str) -> Result<Vec<(String, String)>> {
    let w = words(rest)?;
    if w.is_empty() {
        bail!("{what} needs at least one argument");
    }
    if !w[0].contains('=') {
        // Legacy form: `ENV KEY value with spaces`.
        let (k, v) = rest
            .trim()
            .split_once(char::is_whitespace)
            .with_context(|| format!("{what} {rest:?}: expected KEY=VALUE (or KEY VALUE)"))?;
        return Ok(vec![(k.to_owned(), v.trim().to_owned())]);
    }
    w.into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => bail!("{what}: {kv:?} is not KEY=VALUE"),
        })
        .collect()
}

/// Applies one instruction to a run config.
///
/// # Errors
/// An unknown or unsupported instruction, or bad arguments; the message names the instruction.
pub fn apply(cfg: &mut RunConfig, instruction: &str) -> Result<()> {
    let t = instruction.trim();
    let (kw, rest) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
    let rest = rest.trim();
    let shell = cfg
        .shell
        .clone()
        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
    match kw.to_ascii_uppercase().as_str() {
        "CMD" => cfg.cmd = Some(exec_or_shell(rest, &shell)?),
        "ENTRYPOINT" => cfg.entrypoint = Some(exec_or_shell(rest, &shell)?),
        "ENV" => {
            let env = cfg.env.get_or_insert_with(Vec::new);
            for (k, v) in key_values(rest, "ENV")? {
                let prefix = format!("{k}=");
                env.retain(|e| !e.starts_with(&prefix) && e != &k);
                env.push(format!("{k}={v}"));
            }
        }
        "LABEL" => {
            let labels = cfg.labels.get_or_insert_with(Default::default);
            for (k, v) in key_values(rest, "LABEL")? {
                labels.insert(k, v);
            }
        }
        "EXPOSE" => {
            let ports = cfg.exposed_ports.get_or_insert_with(Default::default);
            for p in words(rest)? {
                let (num, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                let proto = proto.to_ascii_lowercase();
                let valid_num = num.split('-').all(|n| n.parse::<u16>().is_ok());
                if !valid_num || !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                    bail!("EXPOSE {p:?}: expected PORT[/tcp|udp|sctp]");
                }
                ports.insert(format!("{num}/{proto}"), Default::default());
            }
        }
        "VOLUME" => {
            let vols = cfg.volumes.get_or_insert_with(Default::default);
            let list = match serde_json::from_str::<Vec<String>>(rest) {
                Ok(v) if rest.starts_with('[') => v,
                _ => words(rest)?,
            };
            if list.is_empty() {
                bail!("VOLUME needs at least one path");
            }
            for v in list {
                vols.insert(v, Default::default());
            }
        }
        "USER" if !rest.is_empty() => cfg.user = Some(rest.to_owned()),
        "WORKDIR" if !rest.is_empty() => cfg.working_dir = Some(rest.to_owned()),
        "STOPSIGNAL" if !rest.is_empty() => cfg.stop_signal = Some(rest.to_owned()),
        "ONBUILD" if !rest.is_empty() => cfg
            .on_build
            .get_or_insert_with(Vec::new)
            .push(rest.to_owned()),
        "USER" | "WORKDIR" | "STOPSIGNAL" | "ONBUILD" => bail!("{kw} needs an argument"),
        other => bail!(
            "--change {instruction:?}: {other} is not supported here; use CMD, ENTRYPOINT, ENV, \
             EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME or WORKDIR"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_instructions() {
        let mut c = RunConfig::default();
        apply(&mut c, r#"CMD ["/bin/sh","-c","echo hi"]"#).unwrap();
        assert_eq!(c.cmd.as_deref().unwrap(), ["/bin/sh", "-c", "echo hi"]);
        apply(&mut c, "ENTRYPOINT ping -c 3").unwrap();
        assert_eq!(
            c.entrypoint.as_deref().unwrap(),
            ["/bin/sh", "-c", "ping -c 3"]
        );
        apply(&mut c, r#"ENV A=1 B="two words""#).unwrap();
        apply(&mut c, "ENV A 3").unwrap();
        assert_eq!(c.env.as_deref().unwrap(), ["B=two words", "A=3"]);
        apply(&mut c, "EXPOSE 18181/tcp 53/udp 80").unwrap();
        let ports: Vec<_> = c.exposed_ports.as_ref().unwrap().keys().cloned().collect();
        assert_eq!(ports, ["18181/tcp", "53/udp", "80/tcp"]);
        apply(&mut c, "workdir /app").unwrap();
        assert_eq!(c.working_dir.as_deref(), Some("/app"));
        apply(&mut c, r#"VOLUME ["/data"]"#).unwrap();
        assert!(c.volumes.as_ref().unwrap().contains_key("/data"));
        assert!(apply(&mut c, "RUN echo").is_err());
        assert!(apply(&mut c, "EXPOSE http").is_err());
        assert!(apply(&mut c, "ENV").is_err());
    }
}

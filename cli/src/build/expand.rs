//! Variable expansion and word splitting for Dockerfile arguments, as Docker's shell lexer does
//! them for ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR and ARG:
//! `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:+alternative}`, `\$` for a literal dollar, no
//! expansion inside single quotes. RUN, CMD and ENTRYPOINT are not expanded (the shell does it).

use std::collections::BTreeMap;

use anyhow::{Result, bail};

/// Variables in scope: ARGs then ENV (ENV wins, as in Docker).
pub type Vars = BTreeMap<String, String>;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands variables in `s`, keeping quotes and escapes in place (word splitting comes after).
///
/// # Errors
/// An unterminated `${`.
pub fn expand(s: &str, vars: &Vars) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut single = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' => {
                single = !single;
                out.push(c);
                i += 1;
            }
            '\\' if !single && chars.get(i + 1) == Some(&'$') => {
                // Keep the escape: the word splitter turns `\$` into `$`.
                out.push_str("\\$");
                i += 2;
            }
            '\\' if !single => {
                out.push(c);
                if let Some(n) = chars.get(i + 1) {
                    out.push(*n);
                }
                i += 2;
            }
            '$' if !single => {
                if chars.get(i + 1) == Some(&'{') {
                    let Some(end) = chars[i + 2..].iter().position(|c| *c == '}') else {
                        bail!("{s:?}: missing '}}' after '${{'");
                    };
                    let inner: String = chars[i + 2..i + 2 + end].iter().collect();
                    i += end + 3;
                    let (name, op) = match inner.find(":-").or_else(|| inner.find(":+")) {
                        Some(p) => (&inner[..p], Some((&inner[p..p + 2], &inner[p + 2..]))),
                        None => (inner.as_str(), None),
                    };
                    let val = vars.get(name).filter(|v| !v.is_empty());
                    match op {
                        None => out.push_str(vars.get(name).map_or("", String::as_str)),
                        Some((":-", word)) => match val {
                            Some(v) => out.push_str(v),
                            None => out.push_str(&expand(word, vars)?),
                        },
                        Some((_, word)) => {
                            if val.is_some() {
                                out.push_str(&expand(word, vars)?);
                            }
                        }
                    }
                } else {
                    let name: String = chars[i + 1..]
                        .iter()
                        .take_while(|c| is_name_char(**c))
                        .collect();
                    if name.is_empty() {
                        out.push('$');
                        i += 1;
                    } else {
                        i += 1 + name.chars().count();
                        out.push_str(vars.get(&name).map_or("", String::as_str));
                    }
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Splits expanded text into words: whitespace separates, quotes group (and are removed),
/// backslash escapes the next character (the same rule as `--change` instructions).
pub use crate::change::words;

/// Expands and unquotes one argument (a path, a user, an image name).
///
/// # Errors
/// See [`expand`] and [`words`].
pub fn word(s: &str, vars: &Vars) -> Result<String> {
    Ok(words(&expand(s, vars)?)?.join(" "))
}

/// `K=V K2="v 2"` (or the legacy `K value with spaces`) after expansion, as ENV and LABEL take
/// them. With `allow_bare`, a word without `=` is a name without value (ARG).
///
/// # Errors
/// Not that shape.
pub fn key_values(raw: &str, vars: &Vars, what: &str) -> Result<Vec<(String, Option<String>)>> {
    let expanded = expand(raw, vars)?;
    let w = words(&expanded)?;
    if w.is_empty() {
        bail!("{what} needs at least one argument");
    }
    if what != "ARG" && !w[0].contains('=') {
        // Legacy form: `ENV KEY value with spaces`.
        let Some((k, v)) = expanded.trim().split_once(char::is_whitespace) else {
            bail!("{what} {raw:?}: expected KEY=VALUE (or KEY VALUE)");
        };
        return Ok(vec![(k.to_owned(), Some(words(v.trim())?.join(" ")))]);
    }
    w.into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), Some(v.to_owned()))),
            None if what == "ARG" => Ok((kv, None)),
            _ => bail!("{what}: {kv:?} is not KEY=VALUE"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_docker() {
        let mut v = Vars::new();
        v.insert("A".into(), "one".into());
        v.insert("E".into(), String::new());
        assert_eq!(expand("$A/${A}x", &v).unwrap(), "one/onex");
        assert_eq!(
            expand("${B:-def} ${A:-def} ${A:+alt} ${B:+alt}", &v).unwrap(),
            "def one alt "
        );
        assert_eq!(expand("${E:-empty}", &v).unwrap(), "empty");
        assert_eq!(expand("'$A' \\$A $", &v).unwrap(), "'$A' \\$A $");
        assert_eq!(words("'$A' \\$A \"x y\"").unwrap(), ["$A", "$A", "x y"]);
        assert!(expand("${A", &v).is_err());
    }

    #[test]
    fn key_values_both_forms() {
        let mut v = Vars::new();
        v.insert("P".into(), "/bin".into());
        let kv = key_values("A=1 B=\"two words\" PATH=/x:$P", &v, "ENV").unwrap();
        assert_eq!(
            kv,
            [
                ("A".into(), Some("1".into())),
                ("B".into(), Some("two words".into())),
                ("PATH".into(), Some("/x:/bin".into()))
            ]
        );
        let kv = key_values("NAME some value", &v, "ENV").unwrap();
        assert_eq!(kv, [("NAME".into(), Some("some value".into()))]);
        let kv = key_values("V W=2", &v, "ARG").unwrap();
        assert_eq!(kv, [("V".into(), None), ("W".into(), Some("2".into()))]);
    }
}

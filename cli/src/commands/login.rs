//! `strata login [REGISTRY] -u USER (--password-stdin | -p PASS)`: checks the credentials
//! against the registry (`GET /v2/` answering its challenge), then saves them in
//! `~/.config/strata/auth.json` (see `registry::auth`).

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::Globals;
use crate::registry::auth::{self, Credentials};
use crate::registry::client::Client;

use super::push::TlsArgs;

/// Log in to a registry (default docker.io).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Registry `host[:port]`, e.g. `localhost:5000`. Default: docker.io.
    pub registry: Option<String>,
    /// User name.
    #[arg(short, long)]
    pub username: String,
    /// Password (visible in the process list: prefer --password-stdin).
    #[arg(short, long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from standard input (one line).
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Runs `login`.
///
/// # Errors
/// Wrong credentials, an unreachable registry, I/O on the credentials file.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let registry = auth::normalize_registry(a.registry.as_deref().unwrap_or(auth::DOCKER_HUB));
    let password = match (a.password, a.password_stdin) {
        (Some(p), _) => p,
        (None, true) => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the password from standard input")?;
            s.trim_end_matches(['\n', '\r']).to_owned()
        }
        (None, false) => bail!("give the password with --password-stdin (or -p PASSWORD)"),
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let creds = Credentials {
        user: a.username,
        password,
    };
    let mut client = Client::new(&registry, &a.tls.options(g)?)?;
    client.set_credentials(Some(creds.clone()));
    client
        .check_login()
        .with_context(|| format!("logging in to {registry} as {}", creds.user))?;
    let path = auth::save(&registry, &creds)?;
    if g.json() {
        crate::output::print_json(&serde_json::json!({
            "registry": registry,
            "username": creds.user,
            "auth_file": path,
        }))?;
    } else if !g.quiet {
        println!("Login Succeeded ({registry}, saved in {})", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

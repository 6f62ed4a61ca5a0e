//! A container's network: the namespace it gets (`--network private|host|none`), the ports the
//! host publishes into it (`-p`), and the files that name it (`/etc/hosts`, `/etc/hostname`,
//! `/etc/resolv.conf`).
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the options ([`NetworkMode`], [`PortSpec`]) and [`Network`], the live setup of one run |
//! | `netns.rs` | a new network namespace, held by a file descriptor |
//! | `slirp.rs` | the adapter to slirp4netns (Debian's package of that name): command line, start, readiness, port requests, stop |
//! | `etc.rs` | the contents of hosts and resolv.conf |
//!
//! `private` (the default, Docker's `bridge`): strata creates a network namespace (a thread
//! unshares one; an open descriptor holds it), starts slirp4netns on it, waits until it has
//! configured the namespace (`tap0` at 10.0.2.100/24, gateway 10.0.2.2, loopback up), asks it
//! to publish the `-p` ports, then hands the namespace to the runtime as a path
//! (`/proc/<strata>/fd/<n>`). slirp4netns runs in strata's network namespace (the host's), so
//! outbound connections are the caller's own sockets: this works rootless. It answers DNS at
//! 10.0.2.3 from the host's resolver and refuses connections to the host's loopback. It exits
//! when strata closes its exit pipe, at the end of the run or when strata dies, however.
//!
//! `none`: the runtime creates the namespace; only loopback. `host`: no namespace; the host's
//! interfaces and name resolution.
//!
//! Lifetimes: [`Network`] lives from just before the runtime starts to just after it returns;
//! dropping it stops slirp4netns and closes the namespace descriptor (the kernel frees the
//! namespace when its last process is gone).

mod etc;
mod netns;
mod slirp;

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Which network namespace a container gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own namespace, connected outward through slirp4netns (Docker's `bridge`).
    #[default]
    Private,
    /// The host's namespace.
    Host,
    /// Its own namespace with loopback only.
    None,
}

impl FromStr for NetworkMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<NetworkMode> {
        match s {
            "private" | "bridge" | "slirp4netns" | "default" => Ok(NetworkMode::Private),
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            _ => bail!("--network {s:?}: expected private (alias bridge), host or none"),
        }
    }
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A port range published from the host into the container: `-p [IP:]HOSTPORT:CTRPORT[/PROTO]`
/// (ranges `A-B` on both sides, of equal length).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The host address to bind (default: all).
    pub host_ip: Option<IpAddr>,
    /// First and last host port.
    pub host: (u16, u16),
    /// First and last container port.
    pub container: (u16, u16),
    /// TCP or UDP.
    pub proto: Proto,
}

/// Parses `A` or `A-B`.
fn port_range(s: &str, what: &str, spec: &str) -> Result<(u16, u16)> {
    let port = |p: &str| -> Result<u16> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("-p {spec:?}: {what} port {p:?} is not a number from 1 to 65535"),
        }
    };
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(s)?, port(s)?),
    };
    if b < a {
        bail!("-p {spec:?}: the {what} range {s} ends before it starts");
    }
    Ok((a, b))
}

impl PortSpec {
    /// Parses Docker's `-p` syntax: `[IP:]HOSTPORT:CTRPORT[/tcp|/udp]`; an IPv6 address in
    /// brackets (`[::1]:8080:80`).
    ///
    /// # Errors
    /// Another shape (a lone container port: strata does not pick host ports), bad numbers.
    pub fn parse(spec: &str) -> Result<PortSpec> {
        let (rest, proto) = match spec.rsplit_once('/') {
            Some((r, "tcp")) => (r, Proto::Tcp),
            Some((r, "udp")) => (r, Proto::Udp),
            Some((_, p)) => bail!("-p {spec:?}: unknown protocol {p:?} (tcp or udp)"),
            None => (spec, Proto::Tcp),
        };
        let Some((left, ctr)) = rest.rsplit_once(':') else {
            bail!(
                "-p {spec:?}: give the host port too, as HOSTPORT:CTRPORT (strata does not pick one)"
            );
        };
        let (ip, host) = match left.rsplit_once(':') {
            Some((ip, host)) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                let ip = IpAddr::from_str(ip)
                    .with_context(|| format!("-p {spec:?}: {ip:?} is not an IP address"))?;
                (Some(ip), host)
            }
            None => (None, left),
        };
        if host.is_empty() {
            bail!(
                "-p {spec:?}: give the host port too, as IP:HOSTPORT:CTRPORT (strata does not pick one)"
            );
        }
        let host = port_range(host, "host", spec)?;
        let container = port_range(ctr, "container", spec)?;
        if host.1 - host.0 != container.1 - container.0 {
            bail!("-p {spec:?}: the host and container ranges differ in length");
        }
        Ok(PortSpec {
            host_ip: ip,
            host,
            container,
            proto,
        })
    }
}

/// The live network of one run (see the module doc).
#[derive(Debug)]
pub struct Network {
    mode: NetworkMode,
    /// The namespace strata made (mode `private`).
    netns: Option<OwnedFd>,
    /// slirp4netns, connecting that namespace.
    slirp: Option<slirp::Slirp>,
    /// The name files, as (container path, file in the bundle).
    files: Vec<(&'static str, PathBuf)>,
}

impl Network {
    /// Sets up the network of a run: writes hosts, hostname and resolv.conf into `dir` (the
    /// bundle), and for `private` creates the namespace and starts slirp4netns on it. Call it
    /// from the thread that waits for the runtime.
    ///
    /// # Errors
    /// slirp4netns is missing or fails (its output is quoted), a port cannot be published,
    /// `-p` without a namespace of its own.
    pub fn start(
        mode: NetworkMode,
        ports: &[PortSpec],
        hostname: &str,
        dir: &Path,
    ) -> Result<Network> {
        if !ports.is_empty() && mode != NetworkMode::Private {
            bail!("-p publishes ports into a private network: not with --network host or none");
        }
        let (netns, slirp) = if mode == NetworkMode::Private {
            let ns = netns::create()?;
            let slirp = slirp::Slirp::start(&ns, ports, dir)?;
            (Some(ns), Some(slirp))
        } else {
            (None, None)
        };
        let files = write_name_files(mode, hostname, dir)?;
        Ok(Network {
            mode,
            netns,
            slirp,
            files,
        })
    }

    /// The spec's `linux.namespaces` entry for the network (`None`: the host's).
    pub fn namespace(&self) -> Option<Value> {
        match (&self.netns, self.mode) {
            (_, NetworkMode::Host) => None,
            (Some(fd), _) => Some(json!({
                "type": "network",
                "path": format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd()),
            })),
            (None, _) => Some(json!({"type": "network"})),
        }
    }

    /// True when the container has a network namespace of its own.
    pub fn is_private(&self) -> bool {
        self.mode != NetworkMode::Host
    }

    /// Bind mounts of the name files.
    pub fn mounts(&self) -> Vec<Value> {
        self.files
            .iter()
            .map(|(dest, src)| {
                json!({"destination": dest, "type": "bind", "source": src,
                       "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec"]})
            })
            .collect()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(s) = self.slirp.as_mut() {
            s.stop();
        }
    }
}

/// Writes hosts, hostname and resolv.conf for the container into `dir`.
fn write_name_files(
    mode: NetworkMode,
    hostname: &str,
    dir: &Path,
) -> Result<Vec<(&'static str, PathBuf)>> {
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let files = [
        (
            "/etc/hosts",
            "hosts",
            etc::hosts(mode, hostname, &host_hosts),
        ),
        ("/etc/hostname", "hostname", format!("{hostname}\n")),
        (
            "/etc/resolv.conf",
            "resolv.conf",
            etc::resolv_conf(mode, &host_resolv),
        ),
    ];
    let mut out = Vec::new();
    for (dest, name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        out.push((dest, path));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        let p = PortSpec::parse("8080:80").unwrap();
        assert_eq!(
            p,
            PortSpec {
                host_ip: None,
                host: (8080, 8080),
                container: (80, 80),
                proto: Proto::Tcp
            }
        );
        let p = PortSpec::parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.proto, Proto::Udp);
        let p = PortSpec::parse("[::1]:8000-8001:80-81/tcp").unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        assert_eq!((p.host, p.container), ((8000, 8001), (80, 81)));
        for bad in [
            "80",
            "127.0.0.1::80",
            "0:80",
            "70000:80",
            "8080:80/sctp",
            "8000-8002:80-81",
            "x:1:2",
            "9-8:9-8",
        ] {
            assert!(PortSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn network_modes() {
        assert_eq!(
            "bridge".parse::<NetworkMode>().unwrap(),
            NetworkMode::Private
        );
        assert_eq!("none".parse::<NetworkMode>().unwrap(), NetworkMode::None);
        assert_eq!("host".parse::<NetworkMode>().unwrap(), NetworkMode::Host);
        assert!("container:x".parse::<NetworkMode>().is_err());
    }
}

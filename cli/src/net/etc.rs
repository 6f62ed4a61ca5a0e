//! The contents of a container's `/etc/hosts` and `/etc/resolv.conf` (pure functions of the
//! network mode and the host's files).

use super::NetworkMode;
use super::slirp::{DNS_ADDR, GUEST_ADDR};

/// `/etc/hosts`: the host's file for `host`, else the standard loopback names; the
/// container's hostname is added either way.
pub(super) fn hosts(mode: NetworkMode, hostname: &str, host_hosts: &str) -> String {
    let mut out = match mode {
        NetworkMode::Host => {
            let mut s = host_hosts.to_owned();
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s
        }
        NetworkMode::Private | NetworkMode::None => "127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             ff00::0\tip6-mcastprefix\n\
             ff02::1\tip6-allnodes\n\
             ff02::2\tip6-allrouters\n"
            .to_owned(),
    };
    // Docker names the container by its address on the bridge: slirp's here.
    let addr = match mode {
        NetworkMode::Private => GUEST_ADDR,
        NetworkMode::Host | NetworkMode::None => "127.0.1.1",
    };
    out.push_str(&format!("{addr}\t{hostname}\n"));
    out
}

/// `/etc/resolv.conf`: for `private`, slirp4netns's DNS forwarder with the host's `search` and
/// `options` lines; for `host`, the host's file; for `none`, no name server (nothing is
/// reachable).
pub(super) fn resolv_conf(mode: NetworkMode, host_resolv: &str) -> String {
    let kept = || -> String {
        host_resolv
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                l.starts_with("search ") || l.starts_with("domain ") || l.starts_with("options ")
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    match mode {
        NetworkMode::Host => host_resolv.to_owned(),
        NetworkMode::Private => format!("nameserver {DNS_ADDR}\n{}", kept()),
        NetworkMode::None => kept(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_RESOLV: &str =
        "# generated\nnameserver 127.0.0.53\nsearch example.org\noptions edns0 trust-ad\n";

    #[test]
    fn resolv_conf_points_at_the_forwarder() {
        assert_eq!(
            resolv_conf(NetworkMode::Private, HOST_RESOLV),
            format!("nameserver {DNS_ADDR}\nsearch example.org\noptions edns0 trust-ad\n")
        );
        assert_eq!(resolv_conf(NetworkMode::Host, HOST_RESOLV), HOST_RESOLV);
        assert!(!resolv_conf(NetworkMode::None, HOST_RESOLV).contains("nameserver"));
    }

    #[test]
    fn hosts_name_the_container() {
        let h = hosts(NetworkMode::Private, "abc123", "10.0.0.1 secret-host\n");
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with(&format!("{GUEST_ADDR}\tabc123\n")));
        assert!(!h.contains("secret-host"));
        let h = hosts(NetworkMode::Host, "abc123", "10.0.0.1 db");
        assert_eq!(h, "10.0.0.1 db\n127.0.1.1\tabc123\n");
    }
}

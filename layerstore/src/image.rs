//! OCI image configs: parsed leniently from foreign bytes, written by us with a fixed field
//! order (struct order, `BTreeMap`s) so the same config always hashes to the same ImageID.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// `rootfs.type`: the only value the spec defines.
pub const ROOTFS_TYPE_LAYERS: &str = "layers";

/// An empty JSON object, the value type of `ExposedPorts` and `Volumes` maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// The image config (image-spec `config.md`). Unknown fields are ignored when parsing;
/// foreign configs are never re-serialised: the store keeps their raw bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture (GOARCH spelling).
    #[serde(default)]
    pub architecture: String,
    /// Variant of the architecture (`v8`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Operating system (GOOS spelling).
    #[serde(default)]
    pub os: String,
    /// Runtime defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RunConfig>,
    /// The layers, base first.
    pub rootfs: RootFs,
    /// One entry per build step, oldest first.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub history: Vec<History>,
}

/// `config` of an image config: what a container of this image runs by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// `user`, `uid`, `user:group`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `"80/tcp": {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Empty>>,
    /// `K=V` strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `"/path": {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Empty>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Signal that stops a container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Docker's `SHELL` (not in OCI; kept for builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Docker's `HEALTHCHECK` (not in OCI; recorded as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<serde_json::Value>,
    /// Docker's `ONBUILD` triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// DiffIDs, base first.
    pub diff_ids: Vec<Digest>,
}

/// One `history` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The command or instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// A comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step made no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl ImageConfig {
    /// Parses and validates config bytes.
    ///
    /// # Errors
    /// Not JSON, `rootfs.type` other than `layers`, a history whose non-empty entries outnumber
    /// the layers.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig> {
        let cfg: ImageConfig = serde_json::from_slice(bytes).map_err(|e| Error::BadConfig {
            context: None,
            reason: e.to_string(),
        })?;
        if cfg.rootfs.kind != ROOTFS_TYPE_LAYERS {
            return Err(Error::BadConfig {
                context: None,
                reason: format!(
                    "rootfs.type is {:?}, only \"layers\" is defined",
                    cfg.rootfs.kind
                ),
            });
        }
        let non_empty = cfg.history.iter().filter(|h| !h.empty_layer).count();
        if !cfg.history.is_empty() && non_empty > cfg.rootfs.diff_ids.len() {
            return Err(Error::BadConfig {
                context: None,
                reason: format!(
                    "too many non-empty layers in history ({non_empty}) for {} diff_ids",
                    cfg.rootfs.diff_ids.len()
                ),
            });
        }
        Ok(cfg)
    }

    /// Serialises the config we author: compact JSON, fixed field order.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an ImageConfig always serialises")
    }

    /// A config for a new image of the host's platform with the given layers.
    pub fn new_for_host(diff_ids: Vec<Digest>) -> ImageConfig {
        ImageConfig {
            architecture: host_architecture().to_owned(),
            os: "linux".to_owned(),
            rootfs: RootFs {
                kind: ROOTFS_TYPE_LAYERS.to_owned(),
                diff_ids,
            },
            ..Default::default()
        }
    }

    /// The run config, created if absent.
    pub fn run_config_mut(&mut self) -> &mut RunConfig {
        self.config.get_or_insert_with(RunConfig::default)
    }
}

/// The host's CPU architecture in OCI (GOARCH) spelling.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Now, as RFC 3339 UTC with nanoseconds (the form Docker writes).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_json_is_deterministic_and_ordered() {
        let mut c = ImageConfig::new_for_host(vec![Digest::of(b"x")]);
        c.created = Some("2024-01-01T00:00:00Z".into());
        let rc = c.run_config_mut();
        rc.env = Some(vec!["PATH=/bin".into()]);
        rc.labels = Some([("b".into(), "2".into()), ("a".into(), "1".into())].into());
        let a = String::from_utf8(c.to_bytes()).unwrap();
        assert_eq!(a, String::from_utf8(c.clone().to_bytes()).unwrap());
        assert!(
            a.starts_with(r#"{"created":"2024-01-01T00:00:00Z","architecture":"#),
            "{a}"
        );
        assert!(a.contains(r#""Labels":{"a":"1","b":"2"}"#), "{a}");
        assert_eq!(ImageConfig::parse(a.as_bytes()).unwrap(), c);
    }

    #[test]
    fn parses_docker_config_with_extras_and_nulls() {
        let raw = br#"{"architecture":"amd64","config":{"Hostname":"","Env":["PATH=/usr/bin"],"Cmd":["/bin/sh"],"Labels":null,"OnBuild":null},"container_config":{},"created":"2024-01-01T00:00:00.123Z","docker_version":"20","history":[{"created":"2024","created_by":"/bin/sh -c #(nop) ADD file:x in / "},{"created":"2024","created_by":"/bin/sh -c #(nop)  CMD [\"sh\"]","empty_layer":true}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}}"#;
        let c = ImageConfig::parse(raw).unwrap();
        assert_eq!(c.config.unwrap().cmd.unwrap(), vec!["/bin/sh"]);
        assert_eq!(c.history.len(), 2);
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(ImageConfig::parse(b"{").is_err());
        assert!(ImageConfig::parse(br#"{"rootfs":{"type":"other","diff_ids":[]}}"#).is_err());
        assert!(
            ImageConfig::parse(br#"{"rootfs":{"type":"layers","diff_ids":[]},"history":[{}]}"#)
                .is_err()
        );
    }
}

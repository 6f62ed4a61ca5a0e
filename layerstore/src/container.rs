//! Containers: a record (id, name, image) and a directory with the `upper/` and `work/` dirs
//! of its union mount. The store owns both; what runs in a container is the caller's business.

use std::fs;
use std::io::Read;
use std::path::PathBuf;

use rusqlite::params;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::now_rfc3339;
use crate::lease::Holder;
use crate::store::{CONTAINERS_DIR, Store};

/// Name of the writable layer's directory inside a container's directory.
pub const UPPER_DIR: &str = "upper";
/// Name of the union's scratch directory (same filesystem as `upper/`).
pub const WORK_DIR: &str = "work";
/// The owner record (see [`Store::set_container_owner`]) inside a container's directory.
pub const OWNER_FILE: &str = "owner";
/// Docker's rule for container names.
const NAME_RULE: &str = "[a-zA-Z0-9][a-zA-Z0-9_.-]*";

/// A container as the store records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ContainerRecord {
    /// 64 hex characters.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// The image it was created from.
    pub image: Digest,
    /// RFC 3339.
    pub created: String,
    /// Its directory.
    pub dir: PathBuf,
}

impl ContainerRecord {
    /// The writable layer.
    pub fn upper(&self) -> PathBuf {
        self.dir.join(UPPER_DIR)
    }
    /// The union's scratch dir.
    pub fn work(&self) -> PathBuf {
        self.dir.join(WORK_DIR)
    }
    /// The first 12 hex characters of the ID.
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn random_id() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .ctx("read", "/dev/urandom")?;
    Ok(b)
}

/// A Docker-style `adjective_noun` name from random bytes.
fn generated_name(b: &[u8]) -> String {
    const ADJ: &[&str] = &[
        "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry",
        "nifty", "proud", "quick", "sharp", "tender", "vivid", "witty", "zen",
    ];
    const NOUN: &[&str] = &[
        "basalt", "chalk", "flint", "gneiss", "granite", "jasper", "marble", "obsidian", "onyx",
        "quartz", "schist", "shale", "slate", "strata", "tuff",
    ];
    format!(
        "{}_{}",
        ADJ[b[0] as usize % ADJ.len()],
        NOUN[b[1] as usize % NOUN.len()]
    )
}

impl Store {
    fn containers_dir(&self) -> PathBuf {
        self.root().join(CONTAINERS_DIR)
    }

    /// Creates a container of `image` with an empty writable layer.
    ///
    /// # Errors
    /// An invalid or taken name, an unknown image, I/O.
    pub fn create_container(&self, name: Option<&str>, image: &Digest) -> Result<ContainerRecord> {
        let _lock = self.lock_shared()?;
        let id = random_id()?;
        let name = match name {
            Some(n) if !valid_name(n) => {
                return Err(Error::Conflict(format!(
                    "invalid container name {n:?}: only {NAME_RULE} is allowed"
                )));
            }
            Some(n) => n.to_owned(),
            None => {
                let mut n = generated_name(&id);
                if self.find_container(&n)?.is_some() {
                    n = format!("{n}_{}", &hex::encode(id)[..6]);
                }
                n
            }
        };
        if self.find_container(&name)?.is_some() {
            return Err(Error::Conflict(format!(
                "the container name {name:?} is already in use; remove that container \
                 ('strata container rm {name}') or choose another name"
            )));
        }
        let hex_id = hex::encode(id);
        let dir = self.containers_dir().join(&hex_id);
        // Private like the rest of the store; upper/ and work/ below keep the usual mode (the
        // union's root takes the upper's).
        crate::privacy::create_private_dir_all(&dir)?;
        for d in [dir.join(UPPER_DIR), dir.join(WORK_DIR)] {
            fs::create_dir_all(&d).ctx("create dir", &d)?;
        }
        let created = now_rfc3339();
        let inserted = self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO containers (id, name, image, created) VALUES (?1, ?2, ?3, ?4)",
                params![id.as_slice(), name, image.bytes(), created],
            )
        });
        if let Err(e) = inserted {
            let _ = fs::remove_dir_all(&dir);
            return Err(match e {
                Error::Db { source, .. }
                    if source.sqlite_error_code()
                        == Some(rusqlite::ErrorCode::ConstraintViolation) =>
                {
                    Error::NotFound {
                        kind: "image",
                        name: image.to_string(),
                        hint: " (or the container name was taken meanwhile)".into(),
                    }
                }
                e => e,
            });
        }
        Ok(ContainerRecord {
            id: hex_id,
            name,
            image: *image,
            created,
            dir,
        })
    }

    fn container_rows(&self, filter: Option<&str>) -> Result<Vec<ContainerRecord>> {
        type Row = (Vec<u8>, String, Vec<u8>, String);
        let rows: Vec<Row> = self.with_conn(|c| {
            let mut st = c.prepare(
                "SELECT id, name, image, created FROM containers \
                 WHERE ?1 IS NULL OR name = ?1 ORDER BY created DESC",
            )?;
            let rows = st.query_map([filter], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(|(id, name, image, created)| {
                let hex_id = hex::encode(&id);
                Ok(ContainerRecord {
                    dir: self.containers_dir().join(&hex_id),
                    id: hex_id,
                    name,
                    image: Digest::from_bytes(&image)?,
                    created,
                })
            })
            .collect()
    }

    fn find_container(&self, name: &str) -> Result<Option<ContainerRecord>> {
        Ok(self.container_rows(Some(name))?.into_iter().next())
    }

    /// Every container, newest first.
    ///
    /// # Errors
    /// A damaged index.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        self.container_rows(None)
    }

    /// Finds a container by name, full ID or unique ID prefix.
    ///
    /// # Errors
    /// Not found, ambiguous.
    pub fn resolve_container(&self, s: &str) -> Result<ContainerRecord> {
        if let Some(c) = self.find_container(s)? {
            return Ok(c);
        }
        let prefix = s.to_ascii_lowercase();
        let matches: Vec<ContainerRecord> =
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.containers()?
                    .into_iter()
                    .filter(|c| c.id.starts_with(&prefix))
                    .collect()
            } else {
                Vec::new()
            };
        match matches.len() {
            1 => Ok(matches.into_iter().next().expect("one match")),
            0 => Err(Error::NotFound {
                kind: "container",
                name: s.to_owned(),
                hint: "; 'strata container ls' lists the containers".into(),
            }),
            n => Err(Error::Ambiguous {
                kind: "container",
                prefix: s.to_owned(),
                count: n,
            }),
        }
    }

    /// Deletes a container's record, then its directory (a crash in between leaves a
    /// directory that `gc` removes).
    ///
    /// # Errors
    /// I/O, a damaged index.
    pub fn remove_container(&self, c: &ContainerRecord) -> Result<()> {
        let id = hex::decode(&c.id)
            .map_err(|_| Error::Conflict(format!("bad container id {}", c.id)))?;
        self.with_tx(|tx| tx.execute("DELETE FROM containers WHERE id = ?1", [id]))?;
        match fs::remove_dir_all(&c.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &c.dir, e)),
        }
    }

    /// Stores the container's run settings (JSON owned by the runner).
    ///
    /// # Errors
    /// A damaged index.
    pub fn set_container_config(&self, c: &ContainerRecord, config: &[u8]) -> Result<()> {
        let id = hex::decode(&c.id)
            .map_err(|_| Error::Conflict(format!("bad container id {}", c.id)))?;
        self.with_tx(|tx| {
            tx.execute(
                "UPDATE containers SET config = ?1 WHERE id = ?2",
                params![config, id],
            )
        })?;
        Ok(())
    }

    /// The container's run settings, if any were stored.
    ///
    /// # Errors
    /// A damaged index.
    pub fn container_config(&self, c: &ContainerRecord) -> Result<Option<Vec<u8>>> {
        let id = hex::decode(&c.id)
            .map_err(|_| Error::Conflict(format!("bad container id {}", c.id)))?;
        self.with_conn(|conn| {
            conn.query_row("SELECT config FROM containers WHERE id = ?1", [id], |r| {
                r.get(0)
            })
        })
    }

    /// Names of the containers created from `image`.
    pub(crate) fn containers_of(&self, image: &Digest) -> Result<Vec<String>> {
        self.with_conn(|c| {
            let mut st = c.prepare("SELECT name FROM containers WHERE image = ?1 ORDER BY name")?;
            let rows = st.query_map([image.bytes()], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Records this process as the one that has the container mounted or running (pid, start
    /// time, boot): [`Store::container_owner`] tells later commands whether it still runs.
    ///
    /// # Errors
    /// I/O.
    pub fn set_container_owner(&self, c: &ContainerRecord) -> Result<()> {
        let h = Holder::current();
        let p = c.dir.join(OWNER_FILE);
        let tmp = c.dir.join(format!("{OWNER_FILE}.tmp"));
        let text = format!("{} {} {} {}\n", h.pid, h.start, h.boot_id, h.pid_ns);
        fs::write(&tmp, text).ctx("write", &tmp)?;
        fs::rename(&tmp, &p).ctx("rename", &p)
    }

    /// The process recorded by [`Store::set_container_owner`], if its record is there.
    pub fn container_owner(&self, c: &ContainerRecord) -> Option<Holder> {
        let text = fs::read_to_string(c.dir.join(OWNER_FILE)).ok()?;
        let f: Vec<&str> = text.split_whitespace().collect();
        Some(Holder {
            pid: f.first()?.parse().ok()?,
            start: f.get(1)?.parse().ok()?,
            boot_id: (*f.get(2)?).to_owned(),
            pid_ns: f.get(3)?.parse().ok()?,
        })
    }

    /// Forgets the owner (its mount is gone).
    pub fn clear_container_owner(&self, c: &ContainerRecord) {
        let _ = fs::remove_file(c.dir.join(OWNER_FILE));
    }

    /// Container directories that have no record (left by a crash), for gc and fsck.
    ///
    /// # Errors
    /// I/O, a damaged index.
    pub fn orphan_container_dirs(&self) -> Result<Vec<PathBuf>> {
        let known: std::collections::HashSet<String> =
            self.containers()?.into_iter().map(|c| c.id).collect();
        let dir = self.containers_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read dir", &dir, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.ctx("read dir", &dir)?;
            if !known.contains(e.file_name().to_string_lossy().as_ref()) {
                out.push(e.path());
            }
        }
        Ok(out)
    }

    /// Removes orphan container dirs (with the exclusive lock held, from gc).
    ///
    /// # Errors
    /// I/O.
    pub fn remove_orphan_container_dirs(&self, dirs: &[PathBuf]) -> Result<()> {
        for d in dirs {
            fs::remove_dir_all(d).ctx("remove", d)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names() {
        for ok in ["a", "web-1", "my_app.v2", "X9"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "_a", "a b", "a/b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_name(&generated_name(&[1, 2])));
    }
}

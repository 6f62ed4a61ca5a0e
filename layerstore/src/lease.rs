//! Leases: what a running process holds in the store so that `gc` keeps it.
//!
//! This module owns the `leases` and `lease_refs` tables (schema 6), who holds a lease (the
//! holder's pid, its start time from `/proc/PID/stat`, the boot and the pid namespace), when a
//! lease has expired (its holder is gone), and the roots `gc` must keep because of leases.
//!
//! Containerd's design, cut to what strata needs: a lease is a row naming its holder, and
//! `lease_refs` names what it holds: layers (by DiffID), objects and images. `gc` treats
//! everything a live lease names as a root, as it treats images. A lease is released by its
//! RAII guard ([`Lease`]), or expires when its holder is gone (kill -9, a crash): `gc` checks
//! every holder against `/proc` and deletes the leases of dead ones, in the same transaction
//! in which it decides what to delete, so a lease that exists when `gc` decides is honoured and
//! one taken after it finds only what `gc` kept.
//!
//! Writers (`pull`, `import`, `load`, `commit`, `build`) take one with [`Store::lease`]: it
//! becomes the store's *active* lease, and while it is, every layer the store ingests or finds
//! for the writer ([`Store::ingest_layer`], [`Store::has_layer`], the build cache's hits,
//! [`Store::hold_image`]) is added to it in the same transaction that commits or finds the layer.
//! The layer is then safe until the writer ties it to an image and drops the guard. Objects an
//! ingest writes before its layer row commits are covered by the store lock instead (ingest
//! holds it shared, `gc` exclusively), which is cheaper than a row per file.
//!
//! Mounts take one with [`Lease::new`] and [`Lease::add_image`] for the life of the mount:
//! `rmi` may then delete the image, but not what the mount reads.

use std::ops::Deref;
use std::sync::atomic::{AtomicI64, Ordering};

use rusqlite::{Transaction, params};

use crate::digest::Digest;
use crate::error::Result;
use crate::store::Store;

/// `lease_refs.kind` of a layer (`digest` is its DiffID).
pub(crate) const KIND_LAYER: i64 = 0;
/// `lease_refs.kind` of a file object.
pub(crate) const KIND_OBJECT: i64 = 1;
/// `lease_refs.kind` of an image (its layers are held too).
pub(crate) const KIND_IMAGE: i64 = 2;

/// The lease a store's writes are added to (0: none); see [`Store::lease`].
#[derive(Debug, Default)]
pub(crate) struct ActiveLease(AtomicI64);

impl ActiveLease {
    fn get(&self) -> Option<i64> {
        Some(self.0.load(Ordering::SeqCst)).filter(|id| *id != 0)
    }
}

/// Who holds a lease: a process, told apart from a later one with the same pid by its start
/// time, and from one of another boot by the boot id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// Process id (as the holder's pid namespace numbers it).
    pub pid: u32,
    /// Start time, clock ticks after boot (field 22 of `/proc/PID/stat`).
    pub start: u64,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// Inode of the pid namespace (`/proc/self/ns/pid`); 0 when unknown.
    pub pid_ns: u64,
}

/// What a `/proc/PID/stat` says about a pid.
enum ProcState {
    /// No such process.
    Gone,
    /// A zombie: it has exited.
    Exited,
    /// Running (or stopped), with this start time.
    Running(u64),
    /// Not readable (another user's process under `hidepid`): assume it runs.
    Unknown,
}

fn proc_state(pid: &str) -> ProcState {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so fields are
            // counted after the last ')'. State is field 3, starttime field 22.
            let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
                return ProcState::Unknown;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            match (fields.first(), fields.get(19).and_then(|f| f.parse().ok())) {
                (Some(&"Z" | &"X" | &"x"), _) => ProcState::Exited,
                (Some(_), Some(start)) => ProcState::Running(start),
                _ => ProcState::Unknown,
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ProcState::Gone,
        Err(_) => ProcState::Unknown,
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn pid_ns(pid: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .map(|m| m.ino())
        .unwrap_or(0)
}

impl Holder {
    /// This process.
    pub fn current() -> Holder {
        let start = match proc_state("self") {
            ProcState::Running(s) => s,
            _ => 0,
        };
        Holder {
            pid: std::process::id(),
            start,
            boot_id: boot_id(),
            pid_ns: pid_ns("self"),
        }
    }

    /// Whether the holder may still run, as `me` (the checking process) can tell: false only
    /// when it is certainly gone (another boot, no such process, a zombie, or a later process
    /// with the same pid). A holder in another pid namespace cannot be checked from here and
    /// counts as alive.
    pub fn alive(&self, me: &Holder) -> bool {
        if !self.boot_id.is_empty() && !me.boot_id.is_empty() && self.boot_id != me.boot_id {
            return false;
        }
        if self.pid_ns != 0 && me.pid_ns != 0 && self.pid_ns != me.pid_ns {
            return true;
        }
        match proc_state(&self.pid.to_string()) {
            ProcState::Gone | ProcState::Exited => false,
            ProcState::Running(start) => start == self.start,
            ProcState::Unknown => true,
        }
    }
}

/// A lease as [`Store::leases`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseInfo {
    /// Row id.
    pub id: i64,
    /// What took it (`pull`, `import`, `mount`, …).
    pub label: String,
    /// Who holds it.
    pub holder: Holder,
    /// When it was taken (RFC 3339).
    pub created: String,
    /// Whether its holder still runs (as far as this process can tell).
    pub alive: bool,
    /// Layers, objects and images it holds.
    pub refs: u64,
}

/// A lease held until dropped (or [`Lease::release`]d): `gc` removes nothing it holds. `S` is
/// how it reaches the store: `&Store` for a command, an owned `Box<Store>` (or `Arc`) for a
/// mount that outlives the code that opened the store. Derefs to the store.
#[derive(Debug)]
pub struct Lease<S: Deref<Target = Store>> {
    store: S,
    id: i64,
    /// Set when this lease is the store's active one: the lease active before it.
    prev: Option<i64>,
    released: bool,
}

impl<S: Deref<Target = Store>> Lease<S> {
    /// Takes a new lease, held by this process, that holds nothing yet. Not the store's
    /// active lease: add to it with [`Lease::add_image`] and [`Lease::add_layer`].
    ///
    /// # Errors
    /// Index errors.
    pub fn new(store: S, label: &str) -> Result<Lease<S>> {
        let h = Holder::current();
        let id = store.with_tx(|tx| {
            tx.execute(
                "INSERT INTO leases (pid, start, boot_id, pid_ns, label, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    h.pid,
                    h.start as i64,
                    h.boot_id,
                    h.pid_ns as i64,
                    label,
                    crate::image::now_rfc3339()
                ],
            )?;
            Ok(tx.last_insert_rowid())
        })?;
        Ok(Lease {
            store,
            id,
            prev: None,
            released: false,
        })
    }

    /// The lease's row id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Holds a layer; false (and nothing held) when the store does not have it.
    ///
    /// # Errors
    /// Index errors.
    pub fn add_layer(&self, diff_id: &Digest) -> Result<bool> {
        self.store
            .hold_layers_in(Some(self.id), std::slice::from_ref(diff_id))
    }

    /// Holds an image and its layers (the layers stay held if the image is removed); false
    /// (and nothing held) when the store does not have the image.
    ///
    /// # Errors
    /// Index errors.
    pub fn add_image(&self, id: &Digest) -> Result<bool> {
        self.store.hold_image_in(Some(self.id), id)
    }

    /// Releases the lease now, reporting errors (dropping it releases it too, silently).
    ///
    /// # Errors
    /// Index errors (the lease then expires when this process ends).
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        self.deactivate();
        let id = self.id;
        self.store
            .with_tx(|tx| tx.execute("DELETE FROM leases WHERE id = ?1", [id]))?;
        Ok(())
    }

    fn deactivate(&mut self) {
        if let Some(prev) = self.prev.take() {
            let _ = self.store.active_lease.0.compare_exchange(
                self.id,
                prev,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }
}

impl<S: Deref<Target = Store>> Deref for Lease<S> {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

impl<S: Deref<Target = Store>> Drop for Lease<S> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.deactivate();
        let id = self.id;
        // Best effort: a lease left behind expires with this process.
        let _ = self
            .store
            .with_tx(|tx| tx.execute("DELETE FROM leases WHERE id = ?1", [id]));
    }
}

impl Store {
    /// Takes a lease for a writer and makes it this store's active lease until the guard is
    /// dropped: every layer this store then ingests or finds ([`Store::ingest_layer`],
    /// [`Store::commit_layer`], [`Store::pull_layer`], loads, [`Store::has_layer`], build
    /// cache hits, [`Store::hold_image`]) is held, so `gc` cannot remove it before the writer
    /// has tied it to an image. Take it before the first write.
    ///
    /// # Errors
    /// Index errors.
    pub fn lease(&self, label: &str) -> Result<Lease<&Store>> {
        let mut l = Lease::new(self, label)?;
        l.prev = Some(self.active_lease.0.swap(l.id, Ordering::SeqCst));
        Ok(l)
    }

    /// The active lease's id (see [`Store::lease`]).
    pub(crate) fn active_lease_id(&self) -> Option<i64> {
        self.active_lease.get()
    }

    /// Adds an image and its layers to the active lease (see [`Store::lease`]): a build holds
    /// its base images so. Without an active lease only says whether the image is stored.
    ///
    /// # Errors
    /// Index errors.
    pub fn hold_image(&self, id: &Digest) -> Result<bool> {
        self.hold_image_in(self.active_lease_id(), id)
    }

    /// Whether every layer is stored; under the active lease they are held too, in the same
    /// transaction (so `gc` cannot remove one between the check and the hold).
    pub(crate) fn hold_layers(&self, diff_ids: &[Digest]) -> Result<bool> {
        self.hold_layers_in(self.active_lease_id(), diff_ids)
    }

    fn hold_layers_in(&self, lease: Option<i64>, diff_ids: &[Digest]) -> Result<bool> {
        let Some(lease) = lease else {
            for d in diff_ids {
                if self.layer_id(d)?.is_none() {
                    return Ok(false);
                }
            }
            return Ok(true);
        };
        self.with_tx(|tx| {
            let mut all = true;
            for d in diff_ids {
                all &= hold_in_tx(tx, lease, KIND_LAYER, d)?;
            }
            Ok(all)
        })
    }

    fn hold_image_in(&self, lease: Option<i64>, id: &Digest) -> Result<bool> {
        let Some(lease) = lease else {
            return self.with_conn(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM images WHERE id = ?1",
                    [id.bytes()],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n > 0)
            });
        };
        self.with_tx(|tx| {
            if !hold_in_tx(tx, lease, KIND_IMAGE, id)? {
                return Ok(false);
            }
            tx.execute(
                "INSERT OR IGNORE INTO lease_refs (lease, kind, digest) \
                 SELECT ?1, ?2, l.diff_id FROM image_layers il JOIN layers l ON l.id = il.layer \
                 WHERE il.image = ?3",
                params![lease, KIND_LAYER, id.bytes()],
            )?;
            Ok(true)
        })
    }

    /// Every lease in the store, with whether its holder still runs.
    ///
    /// # Errors
    /// Index errors.
    pub fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let me = Holder::current();
        let rows = self.with_conn(|c| {
            let mut st = c.prepare(
                "SELECT id, label, pid, start, boot_id, pid_ns, created, \
                 (SELECT COUNT(*) FROM lease_refs r WHERE r.lease = leases.id) \
                 FROM leases ORDER BY id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(LeaseInfo {
                    id: r.get(0)?,
                    label: r.get(1)?,
                    holder: Holder {
                        pid: r.get(2)?,
                        start: r.get::<_, i64>(3)? as u64,
                        boot_id: r.get(4)?,
                        pid_ns: r.get::<_, i64>(5)? as u64,
                    },
                    created: r.get(6)?,
                    alive: false,
                    refs: r.get::<_, i64>(7)? as u64,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows
            .into_iter()
            .map(|mut l| {
                l.alive = l.holder.alive(&me);
                l
            })
            .collect())
    }
}

/// Holds `digest` (a layer's DiffID, an object or an image ID) under `lease` when the store has
/// it; returns whether it has. For the transaction that commits or finds the thing.
pub(crate) fn hold_in_tx(
    tx: &Transaction<'_>,
    lease: i64,
    kind: i64,
    digest: &Digest,
) -> rusqlite::Result<bool> {
    let source = match kind {
        KIND_LAYER => "SELECT 1 FROM layers WHERE diff_id = ?1",
        KIND_OBJECT => "SELECT 1 FROM objects WHERE digest = ?1",
        _ => "SELECT 1 FROM images WHERE id = ?1",
    };
    let present: bool = tx.query_row(
        &format!("SELECT EXISTS ({source})"),
        [digest.bytes()],
        |r| r.get(0),
    )?;
    if present {
        tx.execute(
            "INSERT OR IGNORE INTO lease_refs (lease, kind, digest) VALUES (?1, ?2, ?3)",
            params![lease, kind, digest.bytes()],
        )?;
    }
    Ok(present)
}

/// For `gc`, in its write transaction: deletes the leases whose holder is gone (unless
/// `dry_run`), and fills two temp tables, `gc_live_leases(id)` with the live ones and
/// `gc_kept_layers(id)` with every layer an image uses or a live lease holds (directly or
/// through an image). Returns the number of expired leases.
pub(crate) fn gc_roots(tx: &Transaction<'_>, dry_run: bool) -> rusqlite::Result<u64> {
    let me = Holder::current();
    let leases: Vec<(i64, Holder)> = {
        let mut st = tx.prepare("SELECT id, pid, start, boot_id, pid_ns FROM leases")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get(0)?,
                Holder {
                    pid: r.get(1)?,
                    start: r.get::<_, i64>(2)? as u64,
                    boot_id: r.get(3)?,
                    pid_ns: r.get::<_, i64>(4)? as u64,
                },
            ))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS gc_live_leases (id INTEGER PRIMARY KEY); \
         CREATE TEMP TABLE IF NOT EXISTS gc_kept_layers (id INTEGER PRIMARY KEY); \
         DELETE FROM temp.gc_live_leases; DELETE FROM temp.gc_kept_layers;",
    )?;
    let mut expired = 0;
    {
        let mut live = tx.prepare("INSERT INTO temp.gc_live_leases (id) VALUES (?1)")?;
        let mut dead = tx.prepare("DELETE FROM leases WHERE id = ?1")?;
        for (id, h) in &leases {
            if h.alive(&me) {
                live.execute([id])?;
            } else {
                expired += 1;
                if !dry_run {
                    dead.execute([id])?;
                }
            }
        }
    }
    tx.execute(
        "INSERT OR IGNORE INTO temp.gc_kept_layers (id) \
         SELECT layer FROM image_layers \
         UNION SELECT l.id FROM lease_refs r JOIN layers l ON l.diff_id = r.digest \
           WHERE r.kind = ?1 AND r.lease IN (SELECT id FROM temp.gc_live_leases) \
         UNION SELECT il.layer FROM lease_refs r JOIN image_layers il ON il.image = r.digest \
           WHERE r.kind = ?2 AND r.lease IN (SELECT id FROM temp.gc_live_leases)",
        params![KIND_LAYER, KIND_IMAGE],
    )?;
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "f", data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn holder_of_this_process_is_alive_and_a_reused_pid_is_not() {
        let me = Holder::current();
        assert!(me.start > 0, "{me:?}");
        assert!(me.alive(&me));
        let reused = Holder {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(!reused.alive(&me));
        let other_boot = Holder {
            boot_id: "another-boot".into(),
            ..me.clone()
        };
        assert!(!other_boot.alive(&me));
        let other_ns = Holder {
            pid_ns: me.pid_ns + 1,
            start: me.start + 1,
            ..me.clone()
        };
        assert!(
            other_ns.alive(&me),
            "another pid namespace cannot be judged"
        );
    }

    #[test]
    fn a_dead_holder_expires() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = match proc_state(&pid.to_string()) {
            ProcState::Running(s) => s,
            // Already a zombie or gone: its start time is not needed to call it dead.
            _ => 0,
        };
        child.wait().unwrap();
        let me = Holder::current();
        let h = Holder {
            pid,
            start,
            ..me.clone()
        };
        assert!(!h.alive(&me));
    }

    #[test]
    fn gc_keeps_what_a_lease_holds_until_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let lease = store.lease("test").unwrap();
        let a = store.ingest_layer(&layer(b"leased")[..], None).unwrap();
        let gc = store.gc(false).unwrap();
        assert!(gc.layers.is_empty(), "{gc:?}");
        assert_eq!(store.objects().list_count(), 1);
        assert_eq!(store.leases().unwrap().len(), 1);
        drop(lease);
        assert!(store.leases().unwrap().is_empty());
        let gc = store.gc(false).unwrap();
        assert_eq!(gc.layers, vec![a.diff_id]);
        assert_eq!(store.objects().list_count(), 0);
    }

    #[test]
    fn finding_a_stored_layer_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.ingest_layer(&layer(b"old")[..], None).unwrap();
        let lease = store.lease("test").unwrap();
        assert!(store.has_layer(&a.diff_id).unwrap());
        assert!(!store.has_layer(&Digest::of(b"nope")).unwrap());
        // Ingesting it again finds it and holds it too.
        assert!(
            store
                .ingest_layer(&layer(b"old")[..], None)
                .unwrap()
                .existed
        );
        assert!(store.gc(false).unwrap().layers.is_empty());
        lease.release().unwrap();
        assert_eq!(store.gc(false).unwrap().layers, vec![a.diff_id]);
    }

    #[test]
    fn an_image_lease_keeps_its_layers_after_the_image_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.ingest_layer(&layer(b"img")[..], None).unwrap();
        let cfg = crate::ImageConfig::new_for_host(vec![a.diff_id]).to_bytes();
        let id = store.add_image(&cfg, None).unwrap();
        let other = Store::open(dir.path()).unwrap();
        let mount = Lease::new(Box::new(other), "mount").unwrap();
        assert!(mount.add_image(&id).unwrap());
        assert!(!mount.add_image(&Digest::of(b"nope")).unwrap());
        store.remove_image(&id.to_string(), false).unwrap();
        let gc = store.gc(false).unwrap();
        assert!(gc.layers.is_empty(), "{gc:?}");
        assert_eq!(store.objects().list_count(), 1);
        drop(mount);
        assert_eq!(store.gc(false).unwrap().layers, vec![a.diff_id]);
        assert_eq!(store.objects().list_count(), 0);
    }

    #[test]
    fn gc_expires_the_lease_of_a_dead_process() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let lease = store.lease("test").unwrap();
        let a = store.ingest_layer(&layer(b"orphan")[..], None).unwrap();
        let id = lease.id();
        // As if the holder had been killed: the guard never runs, its pid is gone.
        std::mem::forget(lease);
        store
            .with_tx(|tx| tx.execute("UPDATE leases SET start = start + 1 WHERE id = ?1", [id]))
            .unwrap();
        store.active_lease.0.store(0, Ordering::SeqCst);
        assert!(!store.leases().unwrap()[0].alive);
        let dry = store.gc(true).unwrap();
        assert_eq!(dry.layers, vec![a.diff_id]);
        assert_eq!(dry.expired_leases, 1);
        assert_eq!(
            store.leases().unwrap().len(),
            1,
            "a dry run changes nothing"
        );
        let gc = store.gc(false).unwrap();
        assert_eq!(gc.layers, vec![a.diff_id]);
        assert_eq!(gc.expired_leases, 1);
        assert!(store.leases().unwrap().is_empty());
        assert_eq!(store.objects().list_count(), 0);
    }

    #[test]
    fn nested_leases_restore_the_outer_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let outer = store.lease("outer").unwrap();
        {
            let inner = store.lease("inner").unwrap();
            assert_eq!(store.active_lease_id(), Some(inner.id()));
            // A mount's lease never becomes the active one.
            let m = Lease::new(&store, "mount").unwrap();
            assert_eq!(store.active_lease_id(), Some(inner.id()));
            drop(m);
        }
        assert_eq!(store.active_lease_id(), Some(outer.id()));
        drop(outer);
        assert_eq!(store.active_lease_id(), None);
    }
}

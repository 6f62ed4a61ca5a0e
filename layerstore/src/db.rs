//! The SQLite index: schema, migrations and connection setup.
//!
//! Migrations are an append-only list applied by `PRAGMA user_version` in one exclusive
//! transaction (the pattern of cargo's `util/sqlite.rs`). Never edit a shipped migration:
//! append a new one.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Error, Result};

/// How long a writer waits for another process's transaction before giving up. Imports hold
/// write transactions only for their final commit, so a few seconds is plenty; a minute covers
/// a slow disk.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// The schema, one step per entry; `user_version` = number of steps applied.
const MIGRATIONS: &[&str] = &[
    // 1: objects, layers and their entries, images, tags.
    r#"
    CREATE TABLE objects (
        digest BLOB PRIMARY KEY,          -- sha256 of the content, 32 bytes
        size   INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE layers (
        id         INTEGER PRIMARY KEY,
        diff_id    BLOB NOT NULL UNIQUE,  -- sha256 of the uncompressed tar, 32 bytes
        tar_size   INTEGER NOT NULL,      -- bytes of the uncompressed tar
        entries    INTEGER NOT NULL,
        trailer    BLOB NOT NULL,         -- everything from the end-of-archive block on
        created    TEXT NOT NULL
    );

    CREATE TABLE layer_entries (
        layer      INTEGER NOT NULL REFERENCES layers(id) ON DELETE CASCADE,
        seq        INTEGER NOT NULL,      -- position in the tar
        path       TEXT NOT NULL,         -- normalised; for whiteouts the hidden path
        kind       INTEGER NOT NULL,      -- tarfmt::EntryKind code
        mode       INTEGER NOT NULL,
        uid        INTEGER NOT NULL,
        gid        INTEGER NOT NULL,
        mtime      INTEGER NOT NULL,
        mtime_nsec INTEGER NOT NULL,
        size       INTEGER NOT NULL,      -- content bytes in the tar
        link       TEXT,
        dev_major  INTEGER NOT NULL,
        dev_minor  INTEGER NOT NULL,
        object     BLOB REFERENCES objects(digest),
        header     BLOB NOT NULL,         -- raw header blocks
        pad        BLOB,                  -- padding after content, only when not all zeros
        PRIMARY KEY (layer, seq)
    ) WITHOUT ROWID;
    CREATE INDEX layer_entries_object ON layer_entries(object);

    CREATE TABLE entry_xattrs (
        layer INTEGER NOT NULL,
        seq   INTEGER NOT NULL,
        name  TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (layer, seq, name),
        FOREIGN KEY (layer, seq) REFERENCES layer_entries(layer, seq) ON DELETE CASCADE
    ) WITHOUT ROWID;

    CREATE TABLE images (
        id      BLOB PRIMARY KEY,         -- sha256 of the config bytes
        config  BLOB NOT NULL,            -- the exact config JSON
        parent  BLOB,                     -- the image this one was made from, if local
        created TEXT,                     -- from the config
        added   TEXT NOT NULL             -- when it entered this store
    ) WITHOUT ROWID;

    CREATE TABLE image_layers (
        image BLOB NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        idx   INTEGER NOT NULL,
        layer INTEGER NOT NULL REFERENCES layers(id),
        PRIMARY KEY (image, idx)
    ) WITHOUT ROWID;
    CREATE INDEX image_layers_layer ON image_layers(layer);

    CREATE TABLE tags (
        name  TEXT PRIMARY KEY,           -- fully qualified reference with tag
        image BLOB NOT NULL REFERENCES images(id),
        added TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX tags_image ON tags(image);
    "#,
    // 2: containers: a writable upper dir over an image.
    r#"
    CREATE TABLE containers (
        id      BLOB PRIMARY KEY,         -- 32 random bytes; its hex names the directory
        name    TEXT NOT NULL UNIQUE,
        image   BLOB NOT NULL REFERENCES images(id),
        created TEXT NOT NULL,
        config  BLOB                      -- run settings as JSON, owned by the runner
    ) WITHOUT ROWID;
    CREATE INDEX containers_image ON containers(image);
    "#,
    // 3: compressed forms of layers (for push, pull and `save --compress`): a cache keyed by
    // the compressed digest, regenerated deterministically when its bytes are not kept.
    r#"
    CREATE TABLE layer_blobs (
        digest     BLOB PRIMARY KEY,      -- sha256 of the compressed bytes
        diff_id    BLOB NOT NULL REFERENCES layers(diff_id) ON DELETE CASCADE,
        media_type TEXT NOT NULL,
        size       INTEGER NOT NULL,
        codec      TEXT NOT NULL,         -- gzip, zstd
        level      INTEGER,               -- null when not made here (pulled)
        source     TEXT,                  -- registry/repository it came from or went to
        stored     INTEGER NOT NULL DEFAULT 0  -- 1 when the bytes are kept under blobs/
    ) WITHOUT ROWID;
    CREATE INDEX layer_blobs_diff_id ON layer_blobs(diff_id);
    "#,
    // 4: the build cache: a content key (parent + instruction + sources) to the step's result.
    r#"
    CREATE TABLE build_cache (
        key      BLOB PRIMARY KEY,        -- sha256 of the step's content key
        config   BLOB NOT NULL,           -- the image config after the step (exact bytes)
        diff_id  BLOB REFERENCES layers(diff_id) ON DELETE CASCADE, -- the layer it made, if any
        created  TEXT NOT NULL,
        used     TEXT NOT NULL            -- last hit, for pruning
    ) WITHOUT ROWID;
    CREATE INDEX build_cache_diff_id ON build_cache(diff_id);
    "#,
    // 5: a covering index of everything but the raw headers, so loading a layer's entries for
    // a mount reads a few MB instead of every header block (the rows hold them inline).
    r#"
    CREATE INDEX layer_entries_meta ON layer_entries(
        layer, seq, path, kind, mode, uid, gid, mtime, mtime_nsec, size, link,
        dev_major, dev_minor, object
    );
    "#,
    // 6: leases (`lease.rs`): what a running process holds so that `gc` keeps it until an image
    // references it. `lease_refs.digest` is no foreign key: it names a layer, object or image by
    // digest whatever becomes of the row, and goes with its lease.
    r#"
    CREATE TABLE leases (
        id      INTEGER PRIMARY KEY,
        pid     INTEGER NOT NULL,         -- the holder
        start   INTEGER NOT NULL,         -- its start time (field 22 of /proc/PID/stat)
        boot_id TEXT NOT NULL,            -- /proc/sys/kernel/random/boot_id
        pid_ns  INTEGER NOT NULL,         -- inode of its pid namespace, 0 when unknown
        label   TEXT NOT NULL,            -- what took it: pull, import, mount, ...
        created TEXT NOT NULL
    );

    CREATE TABLE lease_refs (
        lease  INTEGER NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
        kind   INTEGER NOT NULL,          -- 0 layer (digest = DiffID), 1 object, 2 image
        digest BLOB NOT NULL,
        PRIMARY KEY (lease, kind, digest)
    ) WITHOUT ROWID;
    CREATE INDEX lease_refs_digest ON lease_refs(kind, digest);
    "#,
];

/// Newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |source| Error::Db {
        path: path.to_owned(),
        source,
    }
}

/// Opens (creating if needed) and migrates the index.
pub(crate) fn open(path: &Path) -> Result<Connection> {
    let e = db_err(path);
    let mut conn = Connection::open(path).map_err(&e)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&e)?;
    set_wal(&conn).map_err(&e)?;
    // FULL: a committed transaction survives power loss (WAL + NORMAL may lose the last one).
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(&e)?;
    conn.pragma_update(None, "foreign_keys", true).map_err(&e)?;
    migrate(&mut conn).map_err(|err| match err {
        Error::Db { source, .. } => Error::Db {
            path: path.to_owned(),
            source,
        },
        Error::TooNew {
            found, supported, ..
        } => Error::TooNew {
            path: path.to_owned(),
            found,
            supported,
        },
        other => other,
    })?;
    Ok(conn)
}

/// Puts the index in WAL mode. WAL is stored in the file, so it is set once: setting it on
/// every open made a cold connection ask for the lock that converts the journal, which SQLite
/// refuses at once (no busy handler) while another process writes — `gc` in a loop beside a
/// writer failed to open the store with "database is locked". Reading the mode waits as
/// usual; a conversion that meets a writer (two processes creating the store) is retried.
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    if mode.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
            Ok(_) => return Ok(()),
            Err(err)
                if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Opens an existing index to read it, without writing anything: `None` when the file does not
/// exist or its schema is not this build's (the caller then uses [`open`], which creates,
/// migrates or refuses it).
pub(crate) fn open_existing(path: &Path) -> Result<Option<Connection>> {
    use rusqlite::OpenFlags;
    let e = db_err(path);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = match Connection::open_with_flags(path, flags) {
        Ok(c) => c,
        Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::CannotOpen => {
            return Ok(None);
        }
        Err(err) => return Err(e(err)),
    };
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&e)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(&e)?;
    if version != SCHEMA_VERSION {
        return Ok(None);
    }
    // The same settings as `open` (journal_mode=WAL is stored in the file by then).
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(&e)?;
    conn.pragma_update(None, "foreign_keys", true).map_err(&e)?;
    Ok(Some(conn))
}

/// Applies the migrations not yet applied, in one exclusive transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let e = db_err(Path::new(":memory:"));
    // Up to date (every open but the first after an upgrade): no write lock, no write.
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(&e)?;
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Exclusive)
        .map_err(&e)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(&e)?;
    if version > SCHEMA_VERSION {
        return Err(Error::TooNew {
            path: Default::default(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for step in &MIGRATIONS[version as usize..] {
        tx.execute_batch(step).map_err(&e)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(&e)?;
    tx.commit().map_err(&e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_twice() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn refuses_newer_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(migrate(&mut conn), Err(Error::TooNew { .. })));
    }
}

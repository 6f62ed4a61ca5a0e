//! The build cache: content keys of Dockerfile steps mapped to their results (config and layer).
//!
//! The key is computed by the builder (`strata build`): a sha256 over the parent config, the
//! instruction after ARG/ENV expansion and, for COPY/ADD, the content hash, mode and owner of
//! every source. This module only stores and finds rows (table `build_cache`, schema 4):
//!
//! - `config`: the exact image config bytes after the step, so a hit continues from the very
//!   same config and a fully cached build gives the same ImageID;
//! - `diff_id`: the layer the step made, if any. The foreign key cascades, so a row goes with
//!   its layer when `gc` removes the layer;
//! - `used`: refreshed on every hit, for pruning by age.
//!
//! A row whose config names a layer that is no longer stored can never be used again (the
//! builder could not make an image of it); `gc` removes those.

use rusqlite::{OptionalExtension, params};

use crate::digest::Digest;
use crate::error::Result;
use crate::image::{ImageConfig, now_rfc3339};
use crate::store::Store;

/// The result of one cached build step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheHit {
    /// The image config after the step, exact bytes.
    pub config: Vec<u8>,
    /// The layer the step made (`None` for steps that change only the config).
    pub diff_id: Option<Digest>,
}

impl Store {
    /// Finds the result of the step with content key `key` and marks the row as used now.
    /// A row whose config names a layer missing from the store is treated as a miss.
    ///
    /// # Errors
    /// A damaged index.
    pub fn build_cache_lookup(&self, key: &Digest) -> Result<Option<CacheHit>> {
        let row: Option<(Vec<u8>, Option<Vec<u8>>)> = self.with_conn(|c| {
            c.query_row(
                "SELECT config, diff_id FROM build_cache WHERE key = ?1",
                [key.bytes()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })?;
        let Some((config, diff_id)) = row else {
            return Ok(None);
        };
        let diff_id = diff_id.map(|b| Digest::from_bytes(&b)).transpose()?;
        // Under the active lease (a build's) the hit's layers are held as they are checked.
        let Ok(cfg) = ImageConfig::parse(&config) else {
            return Ok(None);
        };
        if !self.hold_layers(&cfg.rootfs.diff_ids)? {
            return Ok(None);
        }
        self.with_tx(|tx| {
            tx.execute(
                "UPDATE build_cache SET used = ?2 WHERE key = ?1",
                params![key.bytes(), now_rfc3339()],
            )
        })?;
        Ok(Some(CacheHit { config, diff_id }))
    }

    /// Records the result of a step (replacing an older row with the same key).
    ///
    /// # Errors
    /// A `diff_id` that is not a stored layer (the foreign key), a damaged index.
    pub fn build_cache_insert(
        &self,
        key: &Digest,
        config: &[u8],
        diff_id: Option<&Digest>,
    ) -> Result<()> {
        let now = now_rfc3339();
        self.with_tx(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO build_cache (key, config, diff_id, created, used) \
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![
                    key.bytes(),
                    config,
                    diff_id.map(|d| d.bytes().to_vec()),
                    now
                ],
            )
        })?;
        Ok(())
    }

    /// Number of rows in the build cache.
    ///
    /// # Errors
    /// A damaged index.
    pub fn build_cache_len(&self) -> Result<u64> {
        let n: i64 =
            self.with_conn(|c| c.query_row("SELECT COUNT(*) FROM build_cache", [], |r| r.get(0)))?;
        Ok(n.unsigned_abs())
    }

    /// True when every layer the config names is stored (an unparsable config counts as not).
    fn config_layers_stored(&self, config: &[u8]) -> Result<bool> {
        let Ok(cfg) = ImageConfig::parse(config) else {
            return Ok(false);
        };
        for d in &cfg.rootfs.diff_ids {
            if self.layer_id(d)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Removes the cache rows whose result nothing can reach any more: rows whose config names
    /// a layer that is gone (rows of a removed layer itself go by the foreign key's cascade).
    /// Returns how many rows were (or, with `dry_run`, would be) removed. Meant to run from
    /// `gc` after unused layers are deleted.
    ///
    /// # Errors
    /// A damaged index.
    pub(crate) fn gc_build_cache(&self, dry_run: bool) -> Result<u64> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self.with_conn(|c| {
            let mut st = c.prepare("SELECT key, config FROM build_cache")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        let mut dead = Vec::new();
        for (key, config) in rows {
            if !self.config_layers_stored(&config)? {
                dead.push(key);
            }
        }
        if !dry_run && !dead.is_empty() {
            self.with_tx(|tx| {
                let mut st = tx.prepare_cached("DELETE FROM build_cache WHERE key = ?1")?;
                for k in &dead {
                    st.execute([k])?;
                }
                Ok(())
            })?;
        }
        Ok(dead.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_lookup_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A one-file layer.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "f", &b"hi"[..]).unwrap();
        let info = store
            .ingest_layer(&b.into_inner().unwrap()[..], None)
            .unwrap();
        let cfg = ImageConfig::new_for_host(vec![info.diff_id]).to_bytes();
        let key = Digest::of(b"step");
        assert_eq!(store.build_cache_lookup(&key).unwrap(), None);
        store
            .build_cache_insert(&key, &cfg, Some(&info.diff_id))
            .unwrap();
        let hit = store.build_cache_lookup(&key).unwrap().unwrap();
        assert_eq!(hit.config, cfg);
        assert_eq!(hit.diff_id, Some(info.diff_id));
        // A metadata row over a config whose layer is unknown is dead.
        let ghost = ImageConfig::new_for_host(vec![Digest::of(b"nope")]).to_bytes();
        store
            .build_cache_insert(&Digest::of(b"meta"), &ghost, None)
            .unwrap();
        assert_eq!(store.gc_build_cache(true).unwrap(), 1);
        assert_eq!(store.build_cache_len().unwrap(), 2);
        assert_eq!(store.gc_build_cache(false).unwrap(), 1);
        assert_eq!(store.build_cache_len().unwrap(), 1);
        // gc of the unused layer cascades to its row.
        store.gc(false).unwrap();
        assert_eq!(store.build_cache_len().unwrap(), 0);
        assert_eq!(store.build_cache_lookup(&key).unwrap(), None);
    }
}

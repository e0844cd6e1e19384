//! The object-store seam of the archive: the four operations its commit
//! protocol needs, with create-if-absent as the only way to write.
//!
//! Implementations: [`ObjectStoreArchive`](super::object_store::ObjectStoreArchive)
//! (the `object_store` crate: a local directory or any S3-compatible
//! service), [`DiskArchiveStore`] (objects as files of one directory on a
//! [`Disk`], what the simulator's store host serves), [`MemoryArchiveStore`]
//! (tests).
//!
//! The contract the protocol rests on:
//!
//! - [`ArchiveStore::put_if_absent`] creates the object only if no object
//!   has its path, atomically with respect to other writers (the loser gets
//!   [`StoreError::AlreadyExists`]); an object that was acknowledged is
//!   durable;
//! - [`ArchiveStore::list`] returns every object under a prefix, sorted by
//!   path (objects whose write was acknowledged are listed);
//! - [`ArchiveStore::delete`] of a missing object succeeds.

use crate::disk::{Disk, read_exact_at};
use futures::future::LocalBoxFuture;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Largest object read back, bytes.
pub const OBJECT_MAX_BYTES: u64 = 1 << 30;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// An object has this path already (create-if-absent lost).
    #[error("object `{0}` exists already")]
    AlreadyExists(String),
    /// No object has this path.
    #[error("object `{0}` not found")]
    NotFound(String),
    /// The store could not be reached or failed transiently; retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the request (bucket missing, permissions, full);
    /// the message says what to do.
    #[error("store error: {0}")]
    Other(String),
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredObject {
    /// Path relative to the store's root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// The store an archive writes to.
pub trait ArchiveStore {
    /// Creates the object at `path` with `bytes`, unless one exists.
    fn put_if_absent<'a>(
        &'a self,
        path: &'a str,
        bytes: Vec<u8>,
    ) -> LocalBoxFuture<'a, Result<(), StoreError>>;
    /// The object at `path`.
    fn get<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<Vec<u8>, StoreError>>;
    /// Every object whose path starts with `prefix`, sorted by path.
    fn list<'a>(&'a self, prefix: &'a str) -> LocalBoxFuture<'a, Result<Vec<StoredObject>, StoreError>>;
    /// Removes the object at `path` (nothing there is fine).
    fn delete<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<(), StoreError>>;
}

/// Checks an object path: relative, `/`-separated, no empty, `.` or `..`
/// segment, printable ASCII.
pub fn check_path(path: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::Other(format!("invalid object path `{path}`: {why}")));
    if path.is_empty() || path.len() > 1024 {
        return bad("must be 1 to 1024 bytes");
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("only printable ASCII without spaces");
    }
    if path.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return bad("empty, `.` or `..` segment");
    }
    Ok(())
}

/// An in-memory store, for tests.
#[derive(Debug, Clone, Default)]
pub struct MemoryArchiveStore {
    objects: Rc<RefCell<BTreeMap<String, Vec<u8>>>>,
}

impl MemoryArchiveStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every path, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.objects.borrow().keys().cloned().collect()
    }
}

impl ArchiveStore for MemoryArchiveStore {
    fn put_if_absent<'a>(
        &'a self,
        path: &'a str,
        bytes: Vec<u8>,
    ) -> LocalBoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_path(path)?;
            let mut objects = self.objects.borrow_mut();
            if objects.contains_key(path) {
                return Err(StoreError::AlreadyExists(path.to_string()));
            }
            objects.insert(path.to_string(), bytes);
            Ok(())
        })
    }

    fn get<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<Vec<u8>, StoreError>> {
        Box::pin(async move {
            self.objects
                .borrow()
                .get(path)
                .cloned()
                .ok_or_else(|| StoreError::NotFound(path.to_string()))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> LocalBoxFuture<'a, Result<Vec<StoredObject>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .objects
                .borrow()
                .range(prefix.to_string()..)
                .take_while(|(path, _)| path.starts_with(prefix))
                .map(|(path, bytes)| StoredObject {
                    path: path.clone(),
                    size_bytes: bytes.len() as u64,
                })
                .collect())
        })
    }

    fn delete<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.objects.borrow_mut().remove(path);
            Ok(())
        })
    }
}

/// Objects as the files of one directory on a [`Disk`] (the simulator's
/// store host serves one). A path's `/` becomes `%2F` in its file name (and
/// `%` becomes `%25`), so the directory is flat and the Disk seam suffices.
///
/// A put creates the file exclusively (`create_new`: the existence check is
/// atomic), writes and `fdatasync`s it, then syncs the directory entry; the
/// put is acknowledged only after both. A crash before that may leave a
/// partial file at the final path: the archive's protocol only ever finds
/// such files among the objects of an uncommitted batch (its intent lists
/// them and recovery deletes them), and markers carry a checksum, so a torn
/// marker is not a commit.
pub struct DiskArchiveStore {
    disk: Rc<dyn Disk>,
    dir: PathBuf,
}

fn encode_name(path: &str) -> String {
    path.replace('%', "%25").replace('/', "%2F")
}

fn decode_name(name: &str) -> String {
    name.replace("%2F", "/").replace("%25", "%")
}

fn io_error(path: &str, error: io::Error) -> StoreError {
    match error.kind() {
        io::ErrorKind::AlreadyExists => StoreError::AlreadyExists(path.to_string()),
        io::ErrorKind::NotFound => StoreError::NotFound(path.to_string()),
        io::ErrorKind::StorageFull => {
            StoreError::Other(format!("`{path}`: the store's disk is full: {error}"))
        }
        _ => StoreError::Unavailable(format!("`{path}`: {error}")),
    }
}

impl DiskArchiveStore {
    /// A store in `dir` of `disk` (created if missing).
    pub fn new(disk: Rc<dyn Disk>, dir: &Path) -> io::Result<Self> {
        disk.create_dir_all(dir)?;
        Ok(Self {
            disk,
            dir: dir.to_path_buf(),
        })
    }

    fn file(&self, path: &str) -> PathBuf {
        self.dir.join(encode_name(path))
    }

    fn put_sync(&self, path: &str, bytes: &[u8]) -> Result<(), StoreError> {
        check_path(path)?;
        let file_path = self.file(path);
        let mut file = self.disk.create_new(&file_path).map_err(|e| io_error(path, e))?;
        file.append(bytes).map_err(|e| io_error(path, e))?;
        file.sync_data().map_err(|e| io_error(path, e))?;
        self.disk.sync_dir(&self.dir).map_err(|e| io_error(path, e))?;
        Ok(())
    }

    fn get_sync(&self, path: &str) -> Result<Vec<u8>, StoreError> {
        check_path(path)?;
        let file_path = self.file(path);
        if !self.disk.exists(&file_path).map_err(|e| io_error(path, e))? {
            return Err(StoreError::NotFound(path.to_string()));
        }
        let file = self.disk.open_read(&file_path).map_err(|e| io_error(path, e))?;
        let length = file.len().map_err(|e| io_error(path, e))?;
        if length > OBJECT_MAX_BYTES {
            return Err(StoreError::Other(format!(
                "`{path}` is {length} bytes, more than {OBJECT_MAX_BYTES}"
            )));
        }
        let mut bytes = vec![0u8; length as usize];
        let read = read_exact_at(file.as_ref(), 0, &mut bytes).map_err(|e| io_error(path, e))?;
        bytes.truncate(read);
        Ok(bytes)
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<StoredObject>, StoreError> {
        let names = self.disk.list(&self.dir).map_err(|e| io_error(prefix, e))?;
        let mut out = Vec::new();
        for name in names {
            let path = decode_name(&name);
            if !path.starts_with(prefix) {
                continue;
            }
            let size_bytes = self
                .disk
                .open_read(&self.dir.join(&name))
                .and_then(|f| f.len())
                .map_err(|e| io_error(&path, e))?;
            out.push(StoredObject { path, size_bytes });
        }
        out.sort();
        Ok(out)
    }

    fn delete_sync(&self, path: &str) -> Result<(), StoreError> {
        check_path(path)?;
        let file_path = self.file(path);
        if !self.disk.exists(&file_path).map_err(|e| io_error(path, e))? {
            return Ok(());
        }
        self.disk.remove(&file_path).map_err(|e| io_error(path, e))?;
        self.disk.sync_dir(&self.dir).map_err(|e| io_error(path, e))
    }
}

impl ArchiveStore for DiskArchiveStore {
    fn put_if_absent<'a>(
        &'a self,
        path: &'a str,
        bytes: Vec<u8>,
    ) -> LocalBoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.put_sync(path, &bytes) })
    }

    fn get<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<Vec<u8>, StoreError>> {
        Box::pin(async move { self.get_sync(path) })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> LocalBoxFuture<'a, Result<Vec<StoredObject>, StoreError>> {
        Box::pin(async move { self.list_sync(prefix) })
    }

    fn delete<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.delete_sync(path) })
    }
}

/// The contract every [`ArchiveStore`] keeps, as a test any implementation
/// runs against itself.
#[cfg(test)]
pub(crate) async fn exercise_store_contract(store: &dyn ArchiveStore) {
    store
        .put_if_absent("t/event_date=2026-05-01/a.parquet", b"one".to_vec())
        .await
        .unwrap();
    store
        .put_if_absent("t/event_date=2026-05-02/b.parquet", b"two".to_vec())
        .await
        .unwrap();
    store
        .put_if_absent("_archive/t/p=0/1.commit", b"c".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store
            .put_if_absent("_archive/t/p=0/1.commit", b"x".to_vec())
            .await,
        Err(StoreError::AlreadyExists("_archive/t/p=0/1.commit".into()))
    );
    assert_eq!(store.get("_archive/t/p=0/1.commit").await.unwrap(), b"c");
    let listed: Vec<String> = store
        .list("t/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.path)
        .collect();
    assert_eq!(
        listed,
        [
            "t/event_date=2026-05-01/a.parquet",
            "t/event_date=2026-05-02/b.parquet"
        ]
    );
    store.delete("t/event_date=2026-05-01/a.parquet").await.unwrap();
    store.delete("t/event_date=2026-05-01/a.parquet").await.unwrap();
    assert!(matches!(
        store.get("t/event_date=2026-05-01/a.parquet").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.put_if_absent("../x", vec![]).await.is_err());
    assert!(store.put_if_absent("a//b", vec![]).await.is_err());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::memory::CrashDisk;

    #[test]
    fn memory_and_disk_stores_keep_the_contract() {
        futures::executor::block_on(exercise_store_contract(&MemoryArchiveStore::new()));
        let disk: Rc<dyn Disk> = Rc::new(CrashDisk::new(3));
        let store = DiskArchiveStore::new(disk, Path::new("/store")).unwrap();
        futures::executor::block_on(exercise_store_contract(&store));
        assert_eq!(decode_name(&encode_name("a/b%2F/c")), "a/b%2F/c");
    }

    #[test]
    fn an_acknowledged_disk_put_survives_a_crash() {
        let crash = CrashDisk::new(9);
        let disk: Rc<dyn Disk> = Rc::new(crash.clone());
        let store = DiskArchiveStore::new(disk, Path::new("/store")).unwrap();
        futures::executor::block_on(store.put_if_absent("x/y", b"payload".to_vec())).unwrap();
        crash.crash();
        assert_eq!(futures::executor::block_on(store.get("x/y")).unwrap(), b"payload");
    }
}

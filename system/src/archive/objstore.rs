//! The real world's store: the `object_store` crate, on a local directory
//! (`file://DIR`, fsync on) or any S3-compatible service (`s3://BUCKET`).
//!
//! Every put is one request with `PutMode::Create` (S3 `If-None-Match: *`;
//! on a local directory a no-clobber link), never multipart: a conditional
//! multipart upload is not possible, and a batch's files are bounded by
//! `rotation.max_bytes` well below S3's 5 GiB single-put limit. Credentials
//! come from the config or the usual `AWS_*` environment variables and are
//! never logged.

use super::config::StoreConfig;
use super::store::{ArchiveStore, OBJECT_MAX_BYTES, StoreError, StoredObject, check_path};
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::sync::Arc;
use std::time::Duration;

/// An [`ArchiveStore`] over `object_store`.
#[derive(Debug, Clone)]
pub struct ObjectStoreArchive {
    inner: Arc<dyn ObjectStore>,
    /// What the store is, for logs (never the credentials).
    description: String,
}

impl ObjectStoreArchive {
    /// Opens the store `config` names. A local directory is created if
    /// missing, and staging files a crash left in it are removed.
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        config.validate().map_err(StoreError::Other)?;
        let (scheme, rest) = config.url.split_once("://").expect("validated");
        match scheme {
            "file" => {
                let dir = std::path::Path::new(rest);
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Other(format!(
                        "cannot create the archive directory {}: {e}",
                        dir.display()
                    ))
                })?;
                let removed = remove_staging_files(dir);
                if removed > 0 {
                    tracing::info!(dir = %dir.display(), removed, "removed staging files of interrupted writes");
                }
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| StoreError::Other(format!("cannot open {}: {e}", dir.display())))?
                    .with_fsync(true);
                Ok(Self {
                    inner: Arc::new(fs),
                    description: format!("file://{}", dir.display()),
                })
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = &config.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(region) = &config.region {
                    builder = builder.with_region(region);
                }
                if let Some(key) = &config.access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &config.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                let timeout = Duration::from_millis(config.request_timeout_ms.max(1));
                builder = builder.with_allow_http(config.allow_http).with_client_options(
                    ClientOptions::new()
                        .with_allow_http(config.allow_http)
                        .with_timeout(timeout)
                        .with_connect_timeout(timeout),
                );
                let s3 = builder.build().map_err(|e| {
                    StoreError::Other(format!(
                        "cannot configure S3 bucket `{bucket}`: {}",
                        scrub(&e.to_string(), config)
                    ))
                })?;
                let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(
                        s3,
                        prefix.trim_end_matches('/'),
                    ))
                };
                Ok(Self {
                    inner,
                    description: format!("s3://{rest}"),
                })
            }
            _ => unreachable!("validated"),
        }
    }

    /// What the store is (no credentials).
    pub fn description(&self) -> &str {
        &self.description
    }
}

/// Removes `<name>#<digits>` staging files below `dir` (a local put that
/// crashed before its rename), returning how many.
fn remove_staging_files(dir: &std::path::Path) -> u64 {
    let mut removed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().to_string();
            let staging = name
                .rsplit_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if staging && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Never let a secret through an error message.
fn scrub(text: &str, config: &StoreConfig) -> String {
    match &config.secret_access_key {
        Some(secret) if !secret.is_empty() => text.replace(secret.as_str(), super::config::REDACTED),
        _ => text.to_string(),
    }
}

fn map_error(path: &str, error: object_store::Error) -> StoreError {
    use object_store::Error as E;
    match error {
        E::AlreadyExists { .. } | E::Precondition { .. } => StoreError::AlreadyExists(path.to_string()),
        E::NotFound { .. } => StoreError::NotFound(path.to_string()),
        E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => StoreError::Other(format!(
            "`{path}`: access denied ({source}); check the credentials and the bucket policy"
        )),
        E::NotSupported { source } => StoreError::Other(format!(
            "`{path}`: the store does not support create-if-absent puts ({source}); it cannot hold an exactly-once archive"
        )),
        // S3 answers 404 with this code for a bucket that is not there:
        // retrying will not create it.
        other if other.to_string().contains("NoSuchBucket") => StoreError::Other(format!(
            "`{path}`: the bucket does not exist (NoSuchBucket); create it (for example `aws s3 mb s3://BUCKET`) \
             or fix `[store] url`"
        )),
        // Network, throttling, 5xx: object_store retried already; the
        // archive retries again with its backoff.
        other => StoreError::Unavailable(format!("`{path}`: {other}")),
    }
}

impl ObjectStoreArchive {
    /// Lists the manifests' directory once, so a store that cannot work
    /// (a missing bucket, refused credentials) is reported before the
    /// archive joins its group. An unreachable store is not an error here:
    /// the archive retries it.
    pub async fn check_usable(&self) -> Result<(), StoreError> {
        match self.list(&format!("{}/", super::layout::MANIFEST_DIR)).await {
            Ok(_) | Err(StoreError::Unavailable(_)) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(StoreError::Other(format!("{}: {e}", self.description))),
        }
    }
}

impl ArchiveStore for ObjectStoreArchive {
    fn put_if_absent<'a>(
        &'a self,
        path: &'a str,
        bytes: Vec<u8>,
    ) -> LocalBoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_path(path)?;
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            self.inner
                .put_opts(&ObjectPath::from(path), PutPayload::from(bytes), options)
                .await
                .map(|_| ())
                .map_err(|e| map_error(path, e))
        })
    }

    fn get<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<Vec<u8>, StoreError>> {
        Box::pin(async move {
            check_path(path)?;
            let result = self
                .inner
                .get(&ObjectPath::from(path))
                .await
                .map_err(|e| map_error(path, e))?;
            if result.meta.size > OBJECT_MAX_BYTES {
                return Err(StoreError::Other(format!(
                    "`{path}` is {} bytes, more than an archive object can be ({OBJECT_MAX_BYTES})",
                    result.meta.size
                )));
            }
            result
                .bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| map_error(path, e))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> LocalBoxFuture<'a, Result<Vec<StoredObject>, StoreError>> {
        Box::pin(async move {
            // object_store lists by directory; filter the last segment here.
            let (dir, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
            let dir_path = (!dir.is_empty()).then(|| ObjectPath::from(dir));
            let mut stream = self.inner.list(dir_path.as_ref());
            let mut out = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(|e| map_error(prefix, e))?;
                let path = meta.location.to_string();
                if path.starts_with(prefix) {
                    out.push(StoredObject {
                        path,
                        size_bytes: meta.size,
                    });
                }
            }
            out.sort();
            Ok(out)
        })
    }

    fn delete<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_path(path)?;
            match self.inner.delete(&ObjectPath::from(path)).await {
                Ok(()) => Ok(()),
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(map_error(path, e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_local<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_local_directory_keeps_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("t/event_date=2026-05-01")).unwrap();
        std::fs::write(dir.path().join("t/event_date=2026-05-01/x.parquet#3"), b"torn").unwrap();
        let config = StoreConfig {
            url: format!("file://{}", dir.path().display()),
            ..StoreConfig::default()
        };
        let store = ObjectStoreArchive::open(&config).unwrap();
        assert!(
            !dir.path().join("t/event_date=2026-05-01/x.parquet#3").exists(),
            "staging files are removed"
        );
        run_local(async {
            super::super::store::exercise_store_contract(&store).await;
            // Listing filters by the whole prefix, not only its directory.
            store
                .put_if_absent("_archive/t/p=0/00000000000000000000.0000.commit", b"m".to_vec())
                .await
                .unwrap();
            assert_eq!(store.list("t/event_date=2026-05-02").await.unwrap().len(), 1);
            assert_eq!(store.list("_archive/t/p=0/").await.unwrap().len(), 2);
            assert!(store.list("_archive/t/p=1/").await.unwrap().is_empty());
        });
    }

    #[test]
    fn secrets_are_scrubbed_from_errors() {
        let config = StoreConfig {
            secret_access_key: Some("hunter2".into()),
            ..StoreConfig::default()
        };
        assert_eq!(scrub("key hunter2 refused", &config), "key <redacted> refused");
    }
}

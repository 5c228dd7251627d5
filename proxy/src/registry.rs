//! The service registry: the mesh file, reloaded when it changes.
//!
//! Changes are found by polling the file's identity (device, inode, size,
//! modification time, resolved path) every few seconds. That also catches
//! Kubernetes ConfigMap updates, which swap a `..data` symlink rather than
//! writing the file. A file that fails to load is rejected whole: the last
//! good registry stays in force, and the failure is logged and counted.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ward_config::mesh::{MeshConfig, MeshError};

use crate::metrics::ProxyMetrics;

pub struct Registry {
    path: PathBuf,
    current: ArcSwap<MeshConfig>,
    metrics: Arc<ProxyMetrics>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    target: Option<PathBuf>,
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        target: std::fs::canonicalize(path).ok(),
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
    })
}

impl Registry {
    /// Loads the mesh file; the first load must succeed.
    pub fn load(path: &Path, metrics: Arc<ProxyMetrics>) -> Result<Arc<Self>, MeshError> {
        let config = MeshConfig::load(path);
        let label = if config.is_ok() { "success" } else { "failure" };
        metrics.config_reloads.with_label_values(&[label]).inc();
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(config?),
            metrics,
        }))
    }

    pub fn snapshot(&self) -> Arc<MeshConfig> {
        self.current.load_full()
    }

    /// Polls for changes every `interval`, forever.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut seen = fingerprint(&self.path);
        loop {
            tokio::time::sleep(interval).await;
            let now = fingerprint(&self.path);
            if now == seen {
                continue;
            }
            seen = now;
            self.reload();
        }
    }

    /// Loads the file again; keeps the current registry if it fails.
    pub fn reload(&self) {
        match MeshConfig::load(&self.path) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                self.metrics
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(path = %self.path.display(), "mesh file reloaded");
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(error = %e, "mesh file rejected; the last good one stays in force");
            }
        }
    }
}

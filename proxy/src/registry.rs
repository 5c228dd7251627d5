//! The service registry and policy: the mesh file, compiled, reloaded when
//! it changes.
//!
//! Changes are found by polling the file's identity (device, inode, size,
//! modification time, resolved path) every few seconds. That also catches
//! Kubernetes ConfigMap updates, which swap a `..data` symlink rather than
//! writing the file. A file that fails to load is rejected whole: the last
//! good snapshot stays in force, and the failure is logged and counted in
//! `ward_policy_reloads_total{result}`. Each good load is announced on a
//! watch channel, so open connections can re-check their authorization.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::collections::{HashMap, HashSet};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use ward_config::SpiffeId;
use ward_config::mesh::{MeshConfig, MeshError, PortSpec, Service, match_destination};
use ward_config::policy::IdentityPattern;
use ward_config::policy::engine::{Engine, PolicyTooLarge};

use crate::metrics::{OTHER_PEER, ProxyMetrics};

/// One loaded mesh file and its compiled policy, with what every inbound
/// connection asks computed once per load.
pub struct Snapshot {
    pub mesh: MeshConfig,
    pub engine: Engine,
    /// Service names by the identity their sidecars present.
    by_identity: HashMap<SpiffeId, Vec<String>>,
    /// Service names by endpoint IP: outbound lookups in transparent mode
    /// are one hash lookup instead of a scan of every endpoint.
    by_ip: HashMap<IpAddr, Vec<String>>,
    /// The identities the file names exactly (services' identities and
    /// exact role members): the only ones that may be a `peer` label.
    named: HashSet<SpiffeId>,
}

impl Snapshot {
    fn new(mesh: MeshConfig) -> Result<Self, RegistryError> {
        let engine = Engine::compile(&mesh.policy, &mesh.services)?;
        let mut by_identity: HashMap<SpiffeId, Vec<String>> = HashMap::new();
        for svc in mesh.services.values() {
            by_identity
                .entry(svc.identity.clone())
                .or_default()
                .push(svc.name.clone());
        }
        let mut by_ip: HashMap<IpAddr, Vec<String>> = HashMap::new();
        for svc in mesh.services.values() {
            for endpoint in &svc.endpoints {
                let names = by_ip.entry(endpoint.ip().to_canonical()).or_default();
                if !names.contains(&svc.name) {
                    names.push(svc.name.clone());
                }
            }
        }
        let exact_members = mesh.policy.roles.values().flat_map(|role| {
            role.members.iter().filter_map(|member| match member {
                IdentityPattern::Exact(id) => Some(id.clone()),
                IdentityPattern::Segment(_) => None,
            })
        });
        let named = by_identity.keys().cloned().chain(exact_members).collect();
        Ok(Self {
            mesh,
            engine,
            by_identity,
            by_ip,
            named,
        })
    }

    /// The `peer` label for a verified peer: its SPIFFE ID when this mesh
    /// file names it exactly (a service's identity or a role member),
    /// `other` for anyone else. A certificate alone never adds a series:
    /// whoever can get an SVID (with the Kubernetes CA, anyone who can
    /// create a ServiceAccount) could otherwise add series without bound.
    /// Wildcard role members (`.../sa/*`) name no one in particular, so the
    /// peers they admit are `other` too unless named exactly elsewhere.
    pub fn peer_label<'a>(&self, peer: &'a SpiffeId) -> &'a str {
        if self.named.contains(peer) {
            peer.as_str()
        } else {
            OTHER_PEER
        }
    }

    /// The service (and port) an outbound connection to `dst` is for, by
    /// the rules of `MeshConfig::by_destination`: an exact endpoint first,
    /// else an endpoint IP that declares `dst`'s port.
    pub fn destination(&self, dst: SocketAddr) -> Option<(&Service, &PortSpec)> {
        let names = self.by_ip.get(&dst.ip().to_canonical())?;
        match_destination(names.iter().filter_map(|n| self.mesh.service(n)), dst)
    }

    /// The service of ours (presenting `own`) that a connection to `port`
    /// is for: the one declaring the port, else any of ours.
    pub fn own_service(&self, own: &SpiffeId, port: u16) -> Option<&str> {
        let ours = self.by_identity.get(own)?;
        let declares = |name: &&String| {
            self.mesh
                .service(name)
                .is_some_and(|s| s.port(port).is_some())
        };
        ours.iter()
            .find(declares)
            .or_else(|| ours.first())
            .map(String::as_str)
    }

    fn load(path: &Path) -> Result<Self, RegistryError> {
        Self::new(MeshConfig::load(path)?)
    }
}

/// Why a mesh file was not installed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Mesh(#[from] MeshError),
    #[error("{0}")]
    TooLarge(#[from] PolicyTooLarge),
}

pub struct Registry {
    path: PathBuf,
    current: ArcSwap<Snapshot>,
    changes: watch::Sender<u64>,
    metrics: Arc<ProxyMetrics>,
    /// The file as it was when first loaded; where watching starts.
    loaded: Option<Fingerprint>,
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
    pub fn load(path: &Path, metrics: Arc<ProxyMetrics>) -> Result<Arc<Self>, RegistryError> {
        // Taken before the read, so a change made while (or after) the file
        // is read is seen by the first poll of [`Registry::watch`].
        let loaded = fingerprint(path);
        let snapshot = Snapshot::load(path);
        let label = if snapshot.is_ok() {
            "success"
        } else {
            "failure"
        };
        metrics.policy_reloads.with_label_values(&[label]).inc();
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(snapshot?),
            changes: watch::channel(0).0,
            metrics,
            loaded,
        }))
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Resolves each time a new snapshot is installed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Polls for changes every `interval`, forever.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut seen = self.loaded.clone();
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

    /// Loads the file again; keeps the current snapshot if it fails.
    pub fn reload(&self) {
        match Snapshot::load(&self.path) {
            Ok(snapshot) => {
                self.current.store(Arc::new(snapshot));
                self.metrics
                    .policy_reloads
                    .with_label_values(&["success"])
                    .inc();
                self.changes.send_modify(|v| *v += 1);
                tracing::info!(path = %self.path.display(), "mesh file reloaded");
            }
            Err(e) => {
                self.metrics
                    .policy_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(error = %e, "mesh file rejected; the last good one stays in force");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "
trust_domain: t.local
services:
  orders:
    identity: spiffe://t.local/ns/shop/sa/orders
    endpoints: [10.1.0.7:8080, 10.1.0.8:8080, 127.0.0.1:15006]
    ports: [{port: 8080, protocol: http}, {port: 5432, protocol: tcp}]
  db:
    identity: spiffe://t.local/ns/shop/sa/db
    endpoints: [10.1.0.7:6379, \"[fd00::9]:6379\"]
    ports: [{port: 6379, protocol: tcp}]
roles:
  clients: [spiffe://t.local/ns/shop/sa/web, \"spiffe://t.local/ns/batch/sa/*\"]
";

    /// A change made after the first load but before watching starts (the
    /// proxy binds, then runs) is picked up by the first poll.
    #[tokio::test]
    async fn a_change_before_watching_starts_is_loaded() {
        let dir = std::env::temp_dir().join(format!("ward-registry-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("mesh.yaml");
        std::fs::write(&path, MESH).expect("write");
        let metrics = Arc::new(ProxyMetrics::new());
        let registry = Registry::load(&path, metrics).expect("first load");
        assert!(registry.snapshot().mesh.service("db").is_some());
        let without_db = MESH.split("  db:").next().expect("orders part").to_string()
            + "roles:\n  clients: [spiffe://t.local/ns/shop/sa/web]\n";
        std::fs::write(&path, without_db).expect("rewrite");
        let watcher = tokio::spawn(registry.clone().watch(Duration::from_millis(10)));
        let mut reloaded = false;
        for _ in 0..200 {
            if registry.snapshot().mesh.service("db").is_none() {
                reloaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        watcher.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(reloaded, "the rewrite before watching was never loaded");
    }

    /// The index answers exactly what a scan of the whole mesh answers.
    #[test]
    fn indexed_destination_agrees_with_the_mesh_scan() {
        let mesh = MeshConfig::parse(MESH, "mesh.yaml").expect("valid mesh");
        let snapshot = Snapshot::new(mesh.clone()).expect("compiles");
        let ips = [
            "10.1.0.7",
            "10.1.0.8",
            "10.1.0.9",
            "127.0.0.1",
            "[fd00::9]",
            "[::ffff:10.1.0.7]",
        ];
        let ports = [1, 5432, 6379, 8080, 15006];
        let mut hits = 0;
        for ip in ips {
            for port in ports {
                let dst: SocketAddr = format!("{ip}:{port}").parse().expect("address");
                let name =
                    |m: Option<(&Service, &PortSpec)>| m.map(|(s, p)| (s.name.clone(), p.port));
                let expected = name(mesh.by_destination(dst));
                assert_eq!(name(snapshot.destination(dst)), expected, "{dst}");
                hits += usize::from(expected.is_some());
            }
        }
        assert_eq!(hits, 12, "the table exercises matches and misses");
    }

    /// Only identities the file names exactly become labels: a service's,
    /// an exact role member; a wildcard member or a stranger is `other`.
    #[test]
    fn peer_labels_are_the_identities_the_file_names() {
        let snapshot = Snapshot::new(MeshConfig::parse(MESH, "mesh.yaml").expect("valid mesh"))
            .expect("compiles");
        for (id, label) in [
            (
                "spiffe://t.local/ns/shop/sa/orders",
                "spiffe://t.local/ns/shop/sa/orders",
            ),
            (
                "spiffe://t.local/ns/shop/sa/db",
                "spiffe://t.local/ns/shop/sa/db",
            ),
            (
                "spiffe://t.local/ns/shop/sa/web",
                "spiffe://t.local/ns/shop/sa/web",
            ),
            ("spiffe://t.local/ns/batch/sa/nightly", OTHER_PEER),
            ("spiffe://t.local/ns/shop/sa/minted-4711", OTHER_PEER),
        ] {
            let id = SpiffeId::parse(id).expect("an ID");
            assert_eq!(snapshot.peer_label(&id), label, "{id}");
        }
    }
}

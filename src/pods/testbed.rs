//! The testbed (a bridge namespace plus its work directory) and its pods.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::capture::Capture;
use super::cluster_ip::{self, ClusterIps};
use super::netns::{self, PREFIX};
use super::process::{PodCommand, PodProcess, Registry, Signal};
use super::{PodsError, availability, host};

/// The bridge, in the bridge namespace.
pub const BRIDGE_IFACE: &str = "br0";

/// Each pod's end of its veth pair, in the pod namespace.
pub const POD_IFACE: &str = "eth0";

/// Numbers testbeds within this process.
static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A shared L2 network of pods. Dropping it kills every process it started
/// and deletes every namespace and file it made.
pub struct Testbed {
    id: String,
    subnet: u8,
    bridge_netns: String,
    dir: tempfile::TempDir,
    registry: Registry,
    /// Namespaces created so far, bridge first; deleted in reverse.
    namespaces: Mutex<Vec<String>>,
    pods: Mutex<Vec<String>>,
    captures: AtomicUsize,
    cluster_ips: ClusterIps,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Testbed {
    /// Removes what crashed runs left behind, then creates the bridge
    /// namespace with `br0` up.
    pub fn new() -> Result<Self, PodsError> {
        availability().map_err(PodsError::Unavailable)?;
        let tmp = std::env::temp_dir();
        netns::remove_stale(&tmp)?;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}-{seq}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir_in(&tmp)
            .map_err(|source| PodsError::File {
                what: "creating work directory in",
                path: tmp.clone(),
                source,
            })?;
        let testbed = Self {
            subnet: (seq % 256) as u8,
            bridge_netns: format!("{id}-br"),
            id,
            dir,
            registry: Registry::default(),
            namespaces: Mutex::new(Vec::new()),
            pods: Mutex::new(Vec::new()),
            captures: AtomicUsize::new(0),
            cluster_ips: ClusterIps::default(),
        };
        // From here on, an error drops `testbed`, which undoes what was done.
        // Other uids (the proxy's) may traverse but not list the work dir.
        set_mode(testbed.dir(), 0o711)?;
        make_dir(&testbed.dir().join("logs"), 0o700)?;
        make_dir(&testbed.dir().join("pods"), 0o711)?;
        testbed.add_netns(&testbed.bridge_netns)?;
        let br = testbed.bridge_netns.as_str();
        host::ip(["-n", br, "link", "set", "lo", "up"])?;
        // Without an MLD querier a snooping bridge can drop IPv6 neighbour
        // discovery; flooding is what a test network wants.
        host::ip([
            "-n",
            br,
            "link",
            "add",
            BRIDGE_IFACE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        host::ip(["-n", br, "link", "set", BRIDGE_IFACE, "up"])?;
        // The node's address: the pods' gateway to cluster IPs.
        let node = format!("{}/24", testbed.node_ipv4());
        host::ip(["-n", br, "addr", "add", &node, "dev", BRIDGE_IFACE])?;
        Ok(testbed)
    }

    /// `wardpod-<pid>-<seq>`: the prefix of every name this testbed uses.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn bridge_netns(&self) -> &str {
        &self.bridge_netns
    }

    /// The bridge namespace's address on `br0` (`10.77.N.1`): the "node"
    /// through which pods reach cluster IPs, and the source address
    /// cluster-IP connections arrive from.
    pub fn node_ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    /// The work directory: `logs/`, captures, and `pods/<name>/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The namespaces this testbed has created and not yet deleted.
    pub fn namespaces(&self) -> Vec<String> {
        lock(&self.namespaces).clone()
    }

    fn add_netns(&self, name: &str) -> Result<(), PodsError> {
        let mut namespaces = lock(&self.namespaces);
        netns::add(name)?;
        namespaces.push(name.to_string());
        Ok(())
    }

    /// A new pod: namespace `<id>-pod-<name>`, `lo` up, `eth0` on the bridge
    /// with the next free host number on both networks, and a work directory.
    pub fn add_pod(&self, name: &str) -> Result<Pod<'_>, PodsError> {
        let valid = (1..=20).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(PodsError::InvalidName(name.to_string()));
        }
        let mut pods = lock(&self.pods);
        if pods.iter().any(|p| p == name) {
            return Err(PodsError::DuplicatePod(name.to_string()));
        }
        // .1 is the bridge namespace's (the node's); pods get .2 on.
        let host_part = u8::try_from(pods.len() + 2)
            .ok()
            .filter(|&h| h < 255)
            .ok_or(PodsError::NoAddressLeft)?;
        let pod = Pod {
            testbed: self,
            name: name.to_string(),
            netns: format!("{}-pod-{name}", self.id),
            ipv4: Ipv4Addr::new(10, 77, self.subnet, host_part),
            ipv6: Ipv6Addr::new(0xfd77, 0, 0, self.subnet.into(), 0, 0, 0, host_part.into()),
            dir: self.dir().join("pods").join(name),
        };
        make_dir(&pod.dir, 0o711)?;
        self.add_netns(&pod.netns)?;
        pods.push(name.to_string());
        let (br, ns) = (self.bridge_netns.as_str(), pod.netns.as_str());
        let port = format!("v{host_part}");
        host::ip(["-n", ns, "link", "set", "lo", "up"])?;
        host::ip([
            "-n", br, "link", "add", &port, "type", "veth", "peer", "name", POD_IFACE, "netns", ns,
        ])?;
        host::ip(["-n", br, "link", "set", &port, "master", BRIDGE_IFACE, "up"])?;
        host::ip([
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", pod.ipv4),
            "dev",
            POD_IFACE,
        ])?;
        // nodad: the address is usable at once instead of after DAD's ~1 s.
        host::ip([
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/64", pod.ipv6),
            "dev",
            POD_IFACE,
            "nodad",
        ])?;
        host::ip(["-n", ns, "link", "set", POD_IFACE, "up"])?;
        let node = self.node_ipv4().to_string();
        let services = cluster_ip::service_range();
        host::ip(["-n", ns, "route", "add", &services, "via", &node])?;
        Ok(pod)
    }

    /// Makes `service` (an address in 10.96.0.0/16 and a port) a Service's
    /// cluster IP, as kube-proxy would on a node: pods' connections to it
    /// are DNAT'ed in the bridge namespace to one of `backends`
    /// (`pod-ip:target-port`), chosen at random per connection. Setting it
    /// again replaces its backends; with none, connections to it fail.
    pub fn set_cluster_ip(
        &self,
        service: SocketAddrV4,
        backends: &[SocketAddrV4],
    ) -> Result<(), PodsError> {
        let rules = self.dir().join("logs").join(format!(
            "cluster-ip-{}-{}.rules",
            service.ip(),
            service.port()
        ));
        self.cluster_ips
            .set(&self.bridge_netns, &rules, service, backends)
    }

    /// How many connections pods have opened to the cluster IP `service`.
    pub fn cluster_ip_connections(&self, service: SocketAddrV4) -> Result<u64, PodsError> {
        cluster_ip::connections(&self.bridge_netns, service)
    }

    /// Captures everything crossing the bridge (`br0` in the bridge
    /// namespace, promiscuous, so frames between pods too).
    pub fn capture(&self) -> Result<Capture<'_>, PodsError> {
        self.capture_on(&self.bridge_netns, "bridge", BRIDGE_IFACE)
    }

    fn capture_on(&self, netns: &str, owner: &str, iface: &str) -> Result<Capture<'_>, PodsError> {
        let seq = self.captures.fetch_add(1, Ordering::Relaxed);
        Capture::start(
            &self.registry,
            netns,
            owner,
            iface,
            &self.dir().join("logs"),
            seq,
        )
    }

    /// Command, state, stdout and stderr of every process started so far.
    pub fn logs(&self) -> String {
        self.registry.logs(None)
    }

    /// Cleans up now and reports the first thing that could not be undone
    /// (`Drop` does the same but can only print).
    pub fn close(mut self) -> Result<(), PodsError> {
        self.cleanup().into_iter().next().map_or(Ok(()), Err)
    }

    fn cleanup(&mut self) -> Vec<PodsError> {
        self.registry.kill_all();
        let namespaces = std::mem::take(&mut *lock(&self.namespaces));
        namespaces
            .iter()
            .rev()
            .filter_map(|ns| netns::delete(ns).err())
            .collect()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Shown with the failing test's output (the harness captures it).
            eprintln!("--- logs of testbed {} ---\n{}", self.id, self.logs());
        }
        for error in self.cleanup() {
            eprintln!("testbed {}: cleanup: {error}", self.id);
        }
    }
}

/// One pod: a network namespace with `lo` and `eth0` on the testbed's bridge.
#[derive(Clone)]
pub struct Pod<'tb> {
    testbed: &'tb Testbed,
    name: String,
    netns: String,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    dir: PathBuf,
}

impl<'tb> Pod<'tb> {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// The pod's work directory (mode 0711: other uids may reach files in
    /// it by name, not list it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `cmd` in the pod; its output goes to files in the testbed's
    /// `logs/` (see [`PodProcess::logs`]).
    pub fn spawn(&self, cmd: &PodCommand) -> Result<PodProcess<'tb>, PodsError> {
        let logs = self.testbed.dir().join("logs");
        self.testbed
            .registry
            .spawn(&self.netns, &self.name, cmd, &logs)
    }

    /// Runs `cmd` to completion (within its timeout, default 10 s) and
    /// returns its output; on timeout the process group is killed.
    pub fn run(&self, cmd: &PodCommand) -> Result<Output, PodsError> {
        let process = self.spawn(cmd)?;
        match process.wait(cmd.run_timeout()) {
            Ok(status) => process.output(status),
            Err(e) => {
                process.signal(Signal::Kill);
                Err(e)
            }
        }
    }

    /// Captures on the pod's `eth0`.
    pub fn capture(&self) -> Result<Capture<'tb>, PodsError> {
        self.testbed.capture_on(&self.netns, &self.name, POD_IFACE)
    }

    /// Writes `name` (relative, inside the pod's directory) with mode 0600,
    /// owned by root until [`hand_to_uid`](Self::hand_to_uid).
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<PathBuf, PodsError> {
        let relative = Path::new(name);
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(PodsError::InvalidName(name.to_string()));
        }
        let path = self.dir.join(relative);
        let file_error = |source| PodsError::File {
            what: "writing",
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            make_dir(parent, 0o711)?;
        }
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(contents))
            .map_err(file_error)?;
        Ok(path)
    }

    /// Makes `path` (a file, or a directory and all in it) owned by `uid`
    /// and its group, so a process run as `uid` (the proxy as 1337) can read
    /// a token or bundle that others may not. The testbed's directories on
    /// the way are already traversable.
    pub fn hand_to_uid(&self, path: &Path, uid: u32) -> Result<(), PodsError> {
        std::os::unix::fs::lchown(path, Some(uid), Some(uid)).map_err(|source| {
            PodsError::File {
                what: "changing owner of",
                path: path.to_owned(),
                source,
            }
        })?;
        if path.is_dir() && !path.is_symlink() {
            let entries = std::fs::read_dir(path).map_err(|source| PodsError::File {
                what: "listing",
                path: path.to_owned(),
                source,
            })?;
            for entry in entries.flatten() {
                self.hand_to_uid(&entry.path(), uid)?;
            }
        }
        Ok(())
    }

    /// The logs of every process started in this pod.
    pub fn logs(&self) -> String {
        self.testbed.registry.logs(Some(&self.name))
    }
}

pub(crate) fn make_dir(path: &Path, mode: u32) -> Result<(), PodsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| PodsError::File {
            what: "creating directory",
            path: path.to_owned(),
            source,
        })
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), PodsError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        PodsError::File {
            what: "setting the mode of",
            path: path.to_owned(),
            source,
        }
    })
}

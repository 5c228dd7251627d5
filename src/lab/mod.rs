//! A small mesh on this machine: ward's CA, three workloads with sidecars
//! and the policy between them (`scenario`). `ward demo` runs it; the
//! system tests in `tests/` build on it.
//!
//! Two placements, one scenario:
//! - **pods** (root, iproute2, iptables): every workload is a network
//!   namespace pod (`crate::pods`); `ward init` programs its iptables and
//!   `ward proxy --transparent` runs as uid 1337, so the apps and clients
//!   are unmodified and dial each other's pod addresses. The CA has a pod
//!   of its own, and a pod without a sidecar (`outsider`) shows what the
//!   mesh refuses in the clear.
//! - **loopback** (anyone): every workload gets an address 127.0.0.1x and
//!   its sidecar runs in explicit mode: `--inbound` in front of the app and
//!   one `--forward` per service it calls, on its own address and that
//!   service's port.
//!
//! Every process is `ward` itself (`ca serve`, `proxy`, `demo-app`), so the
//! lab needs nothing else installed. Failure to start is an error naming
//! the process and the end of its log.

mod host;
pub mod prometheus;
pub mod scenario;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::pods::{PodsError, Testbed};
pub use host::Host;
use host::Process;
use scenario::{App, FLOWS, Flow, Verdict, WORKLOADS, Workload};

/// The UID `ward init` excludes from interception and the proxy runs as.
pub const PROXY_UID: u32 = 1337;
const CA_PORT: u16 = 8443;
const ADMIN_PORT: u16 = 15020;
/// Explicit mode: where each sidecar accepts mesh connections.
const LOOPBACK_INBOUND_PORT: u16 = 15006;
/// How long the lab waits for a process to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    Pods(#[from] PodsError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{what}` failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{what} was not ready within {READY_TIMEOUT:?}; its log ends with:\n{log}")]
    NotReady { what: String, log: String },
    #[error("{what} exited while starting; its log ends with:\n{log}")]
    Exited { what: String, log: String },
}

impl LabError {
    fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// Where the lab puts its workloads.
pub enum Placement<'tb> {
    Pods(&'tb Testbed),
    /// Loopback addresses; files go under this directory.
    Loopback(PathBuf),
}

/// Variations on the scenario, for tests of other deployments.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra `ward init` flags in every pod.
    pub init_args: Vec<String>,
    /// Extra `ward proxy` flags for every sidecar.
    pub proxy_args: Vec<String>,
    /// Pods only: run the sidecars as root instead of [`PROXY_UID`].
    pub proxy_as_root: bool,
}

/// One workload and its processes.
pub struct Member<'tb> {
    pub workload: Workload,
    pub host: Host<'tb>,
    app: Option<Process<'tb>>,
    sidecar: Option<Process<'tb>>,
}

pub struct Lab<'tb> {
    ward: PathBuf,
    dir: PathBuf,
    transparent: bool,
    options: Options,
    ca: Host<'tb>,
    ca_process: Option<Process<'tb>>,
    members: Vec<Member<'tb>>,
    /// Pods only: a pod with no sidecar and no interception.
    pub outsider: Option<Host<'tb>>,
}

impl<'tb> Lab<'tb> {
    /// Creates the CA, the workloads, their apps and sidecars, and waits
    /// until every sidecar holds its SVID.
    pub fn start(ward: &Path, placement: Placement<'tb>) -> Result<Self, LabError> {
        Self::start_with(ward, placement, Options::default())
    }

    /// [`Lab::start`] with [`Options`].
    pub fn start_with(
        ward: &Path,
        placement: Placement<'tb>,
        options: Options,
    ) -> Result<Self, LabError> {
        let (transparent, dir, ca, outsider, hosts) = match placement {
            Placement::Pods(testbed) => {
                let mut hosts = Vec::new();
                for w in &WORKLOADS {
                    hosts.push(Host::Pod(testbed.add_pod(w.name)?));
                }
                let ca = Host::Pod(testbed.add_pod("ca")?);
                let outsider = Some(Host::Pod(testbed.add_pod("outsider")?));
                (true, testbed.dir().join("lab"), ca, outsider, hosts)
            }
            Placement::Loopback(dir) => {
                let hosts = WORKLOADS
                    .iter()
                    .zip(11u8..)
                    .map(|(w, n)| Host::Loopback(w.name.into(), Ipv4Addr::new(127, 0, 0, n)))
                    .collect();
                let ca = Host::Loopback("ca".into(), Ipv4Addr::new(127, 0, 0, 10));
                (false, dir, ca, None, hosts)
            }
        };
        make_dir(&dir, 0o711)?;
        make_dir(&dir.join("logs"), 0o700)?;
        let mut lab = Self {
            ward: ward.to_owned(),
            dir,
            transparent,
            options,
            ca,
            ca_process: None,
            members: WORKLOADS
                .iter()
                .zip(hosts)
                .map(|(w, host)| Member {
                    workload: *w,
                    host,
                    app: None,
                    sidecar: None,
                })
                .collect(),
            outsider,
        };
        lab.start_ca()?;
        for i in 0..lab.members.len() {
            lab.start_member(i)?;
        }
        for i in 0..lab.members.len() {
            lab.wait_ready(i)?;
        }
        Ok(lab)
    }

    pub fn members(&self) -> &[Member<'tb>] {
        &self.members
    }

    pub fn member(&self, name: &str) -> Option<&Member<'tb>> {
        self.members.iter().find(|m| m.workload.name == name)
    }

    pub fn ca_url(&self) -> String {
        format!("https://{}", SocketAddr::new(self.ca.ip(), CA_PORT))
    }

    /// Where `member`'s admin server answers, from inside its host.
    pub fn admin_url(&self, member: &Member<'_>, path: &str) -> String {
        let ip = self.app_ip(member);
        format!("http://{}{path}", SocketAddr::new(ip, ADMIN_PORT))
    }

    /// The body of `member`'s `/metrics`.
    pub fn scrape(&self, member: &Member<'_>) -> Result<String, LabError> {
        let url = self.admin_url(member, "/metrics");
        member
            .host
            .run(&self.ward, &strings(["demo-app", "get", &url]))
    }

    /// Makes `flow`'s call from its source workload, as an unmodified
    /// client would; returns what the policy let happen and the client's
    /// output line.
    pub fn call(&self, flow: &Flow) -> Result<(Verdict, String), LabError> {
        let from = self.member_or_err(flow.from)?;
        let to = self.member_or_err(flow.to)?;
        let port = to.workload.app.port().unwrap_or_default();
        // Transparent: the service's own address. Explicit: the caller's
        // sidecar forwards that service on the caller's address.
        let ip = if self.transparent {
            to.host.ip()
        } else {
            from.host.ip()
        };
        self.call_from(&from.host, flow, SocketAddr::new(ip, port))
    }

    /// Makes `flow`'s call from `host` to `addr`.
    pub fn call_from(
        &self,
        host: &Host<'_>,
        flow: &Flow,
        addr: SocketAddr,
    ) -> Result<(Verdict, String), LabError> {
        let mut args = strings(["demo-app"]);
        args.extend(flow.client_args(addr));
        let output = host.run(&self.ward, &args)?;
        let line = output.lines().next().unwrap_or_default().to_string();
        Ok((flow.verdict(&line), line))
    }

    /// Stops `name`'s sidecar: SIGKILL if `crash`, else SIGTERM (drain).
    pub fn stop_sidecar(&mut self, name: &str, crash: bool) {
        if let Some(member) = self.members.iter_mut().find(|m| m.workload.name == name)
            && let Some(mut sidecar) = member.sidecar.take()
        {
            if crash {
                sidecar.kill();
            } else {
                sidecar.stop(Duration::from_secs(5));
            }
        }
    }

    /// Starts `name`'s sidecar again and waits until it is ready.
    pub fn restart_sidecar(&mut self, name: &str) -> Result<(), LabError> {
        let i = self.index_or_err(name)?;
        self.stop_sidecar(name, false);
        self.start_sidecar(i)?;
        self.wait_ready(i)
    }

    /// Every process's log, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Some(ca) = &self.ca_process {
            out.push_str(&format!("--- ca ---\n{}\n", ca.stderr()));
        }
        for m in &self.members {
            for (what, p) in [("app", &m.app), ("sidecar", &m.sidecar)] {
                if let Some(p) = p {
                    out.push_str(&format!(
                        "--- {} {what} ---\n{}\n",
                        m.workload.name,
                        p.stderr()
                    ));
                }
            }
        }
        out
    }

    fn member_or_err(&self, name: &str) -> Result<&Member<'tb>, LabError> {
        self.index_or_err(name).map(|i| &self.members[i])
    }

    fn index_or_err(&self, name: &str) -> Result<usize, LabError> {
        self.members
            .iter()
            .position(|m| m.workload.name == name)
            .ok_or_else(|| LabError::Command {
                what: format!("lab workload {name}"),
                detail: "no such workload".into(),
            })
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    fn passphrase_file(&self) -> PathBuf {
        self.dir.join("ca-passphrase")
    }

    fn start_ca(&mut self) -> Result<(), LabError> {
        let pass = self.passphrase_file();
        write_file(&pass, random_passphrase()?.as_bytes(), 0o600)?;
        let ca_dir = self.ca_dir();
        host::run_local(
            &self.ward,
            &strings([
                "ca",
                "init",
                "--dir",
                &ca_dir.to_string_lossy(),
                "--trust-domain",
                scenario::TRUST_DOMAIN,
                "--passphrase-file",
                &pass.to_string_lossy(),
            ]),
        )
        .and_then(|out| check("ward ca init", out))?;
        let ip = self.ca.ip().to_string();
        let args = strings([
            "ca",
            "serve",
            "--dir",
            &ca_dir.to_string_lossy(),
            "--passphrase-file",
            &pass.to_string_lossy(),
            "--listen",
            &SocketAddr::new(self.ca.ip(), CA_PORT).to_string(),
            "--san",
            &ip,
            "--audit-log",
            &ca_dir.join("audit.log").to_string_lossy(),
        ]);
        let process = self.ca.spawn(&self.ward, &args, None, &self.logs_dir())?;
        let process = self.ca_process.insert(process);
        wait_until(
            "the CA",
            Some(process),
            || Ok(process.stderr().contains("CA serving")),
            || process.stderr(),
        )
    }

    fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The member's files: its token, the trust bundle and the mesh file,
    /// readable by the proxy's UID only.
    fn member_dir(&self, i: usize) -> PathBuf {
        self.dir.join(self.members[i].workload.name)
    }

    fn start_member(&mut self, i: usize) -> Result<(), LabError> {
        let dir = self.member_dir(i);
        make_dir(&dir, 0o700)?;
        let name = self.members[i].workload.name;
        let token = host::run_local(
            &self.ward,
            &strings([
                "ca",
                "token",
                "--dir",
                &self.ca_dir().to_string_lossy(),
                "--passphrase-file",
                &self.passphrase_file().to_string_lossy(),
                "--identity",
                &scenario::identity(name),
                "--ttl",
                "24h",
            ]),
        )
        .and_then(|out| check("ward ca token", out))?;
        write_file(&dir.join("token"), token.trim().as_bytes(), 0o600)?;
        let bundle = self.ca_dir().join("trust-bundle.pem");
        let bundle = std::fs::read(&bundle).map_err(|e| LabError::io("reading", &bundle, e))?;
        write_file(&dir.join("bundle.pem"), &bundle, 0o600)?;
        write_file(&dir.join("mesh.yaml"), self.mesh_yaml().as_bytes(), 0o600)?;
        if self.transparent {
            for path in ["", "token", "bundle.pem", "mesh.yaml"] {
                let path = dir.join(path);
                std::os::unix::fs::chown(&path, Some(PROXY_UID), Some(PROXY_UID))
                    .map_err(|e| LabError::io("changing owner of", &path, e))?;
            }
            let mut init = strings(["init"]);
            init.extend(self.options.init_args.iter().cloned());
            self.members[i].host.run(&self.ward, &init)?;
        }
        let member = &self.members[i];
        if let Some(port) = member.workload.app.port() {
            let listen = if self.transparent {
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
            } else {
                SocketAddr::new(member.host.ip(), port)
            };
            let kind = match member.workload.app {
                App::Banner(_) => "banner",
                _ => "http",
            };
            let args = strings([
                "demo-app",
                kind,
                "--listen",
                &listen.to_string(),
                "--name",
                name,
            ]);
            let app = member
                .host
                .spawn(&self.ward, &args, None, &self.logs_dir())?;
            self.members[i].app = Some(app);
        }
        self.start_sidecar(i)
    }

    fn start_sidecar(&mut self, i: usize) -> Result<(), LabError> {
        let dir = self.member_dir(i);
        let member = &self.members[i];
        let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let mut args = strings([
            "proxy",
            "--identity",
            &scenario::identity(member.workload.name),
            "--ca",
            &self.ca_url(),
            "--ca-bundle",
            &file("bundle.pem"),
            "--token-file",
            &file("token"),
            "--mesh",
            &file("mesh.yaml"),
        ]);
        if self.transparent {
            args.push("--transparent".into());
        } else {
            let ip = member.host.ip();
            args.extend(strings([
                "--admin",
                &SocketAddr::new(ip, ADMIN_PORT).to_string(),
            ]));
            if let Some(port) = member.workload.app.port() {
                args.extend(strings([
                    "--inbound",
                    &SocketAddr::new(ip, LOOPBACK_INBOUND_PORT).to_string(),
                    "--app",
                    &SocketAddr::new(ip, port).to_string(),
                ]));
            }
            for to in callees(member.workload.name) {
                let port = to.app.port().unwrap_or_default();
                let listen = SocketAddr::new(ip, port);
                args.extend(strings([
                    "--forward",
                    &format!("{listen}={}:{port}", to.name),
                ]));
            }
        }
        args.extend(self.options.proxy_args.iter().cloned());
        let uid = (self.transparent && !self.options.proxy_as_root).then_some(PROXY_UID);
        let sidecar = member
            .host
            .spawn(&self.ward, &args, uid, &self.logs_dir())?;
        self.members[i].sidecar = Some(sidecar);
        Ok(())
    }

    /// Waits until the sidecar reports ready (it holds an SVID) and the
    /// app answers on its port.
    fn wait_ready(&mut self, i: usize) -> Result<(), LabError> {
        let member = &self.members[i];
        let ward = &self.ward;
        let logs = || self.logs();
        let ready = strings(["demo-app", "request", &self.admin_url(member, "/ready")]);
        wait_until(
            &format!("{}'s sidecar", member.workload.name),
            member.sidecar.as_ref(),
            || Ok(member.host.run(ward, &ready)?.starts_with("200")),
            logs,
        )?;
        let Some(port) = member.workload.app.port() else {
            return Ok(());
        };
        let app = SocketAddr::new(self.app_ip(member), port).to_string();
        let (probe, answered): (Vec<String>, fn(&str) -> bool) = match member.workload.app {
            App::Banner(_) => (strings(["demo-app", "talk", &app, "ping"]), |out| {
                out.contains("ready")
            }),
            _ => (
                strings(["demo-app", "request", &format!("http://{app}/")]),
                |out| out.starts_with('2'),
            ),
        };
        wait_until(
            &format!("{}'s app", member.workload.name),
            member.app.as_ref(),
            || Ok(answered(&member.host.run(ward, &probe)?)),
            logs,
        )
    }

    /// Where `member`'s app listens, as seen from its own host.
    fn app_ip(&self, member: &Member<'_>) -> IpAddr {
        if self.transparent {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            member.host.ip()
        }
    }

    fn mesh_yaml(&self) -> String {
        scenario::mesh_yaml(|w| {
            let host = &self
                .members
                .iter()
                .find(|m| m.workload.name == w.name)
                .map(|m| &m.host);
            let ip = host.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |h| h.ip());
            let port = if self.transparent {
                w.app.port().unwrap_or_default()
            } else {
                LOOPBACK_INBOUND_PORT
            };
            SocketAddr::new(ip, port)
        })
    }
}

/// The workloads `name` calls in the scenario's flows.
fn callees(name: &str) -> Vec<&'static Workload> {
    let mut out: Vec<&'static Workload> = Vec::new();
    for flow in FLOWS.iter().filter(|f| f.from == name) {
        if let Some(w) = scenario::workload(flow.to)
            && !out.iter().any(|o| o.name == w.name)
        {
            out.push(w);
        }
    }
    out
}

fn strings<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn check(what: &str, output: std::process::Output) -> Result<String, LabError> {
    if !output.status.success() {
        return Err(LabError::Command {
            what: what.into(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Polls `ready` every 100 ms until it holds, for at most [`READY_TIMEOUT`];
/// gives up at once if `process` exits (a port in use, a bad flag).
fn wait_until(
    what: &str,
    process: Option<&Process<'_>>,
    mut ready: impl FnMut() -> Result<bool, LabError>,
    log: impl Fn() -> String,
) -> Result<(), LabError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if process.is_some_and(Process::has_exited) {
            return Err(LabError::Exited {
                what: what.into(),
                log: log(),
            });
        }
        if ready().unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(LabError::NotReady {
        what: what.into(),
        log: log(),
    })
}

fn make_dir(path: &Path, mode: u32) -> Result<(), LabError> {
    crate::pods::make_dir(path, mode)?;
    Ok(crate::pods::set_mode(path, mode)?)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), LabError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(|e| LabError::io("writing", path, e))
}

fn random_passphrase() -> Result<String, LabError> {
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| LabError::Command {
        what: "generating the CA passphrase".into(),
        detail: "the system random number generator failed".into(),
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

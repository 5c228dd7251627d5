//! Tools of the adversarial transparent-mode tests: raw TCP probes with
//! python3 in a pod, metric shorthands, polling, a check that the mesh
//! still serves after an attack, and changes to the lab's deployment (a new
//! mesh file, a sidecar started by hand).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ward::lab::prometheus::sum;
use ward::lab::{Lab, PROXY_UID, scenario};
use ward::pods::{Pod, PodCommand, PodProcess, Testbed};

use super::lab::{WARD, app_addr, curl, member, outsider, pod, pod_of, run, run_for, stdout};

pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

pub fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// python3 runs `script` in `pod` (as root: intercepted); its stdout.
pub fn py(pod: &Pod<'_>, timeout: Duration, script: &str, args: &[String]) -> String {
    let mut all = vec!["-c", script];
    all.extend(args.iter().map(String::as_str));
    let out = run_for(pod, timeout, python(), &all);
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        stdout(&out)
    );
    stdout(&out)
}

/// For each `host port` pair: connect (5 s), send the payload (hex), read
/// until EOF (5 s). One line per target: `host port outcome bytes-received
/// first-bytes-hex`, where outcome is refused, eof, reset or timeout.
pub const PROBE: &str = r#"
import socket, sys
payload = bytes.fromhex(sys.argv[1])
args = sys.argv[2:]
for host, port in zip(args[::2], args[1::2]):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(5)
    got = b""
    try:
        s.connect((host, int(port)))
        if payload:
            try:
                s.sendall(payload)
            except OSError:
                pass
        while True:
            chunk = s.recv(65536)
            if not chunk:
                outcome = "eof"
                break
            got += chunk
    except ConnectionRefusedError:
        outcome = "refused"
    except ConnectionResetError:
        outcome = "reset"
    except socket.timeout:
        outcome = "timeout"
    finally:
        s.close()
    print(host, port, outcome, len(got), got[:32].hex(), flush=True)
"#;

#[derive(Debug)]
pub struct Probed {
    pub target: String,
    pub outcome: String,
    pub received: Vec<u8>,
}

pub fn probe(pod: &Pod<'_>, payload: &[u8], targets: &[SocketAddr]) -> Vec<Probed> {
    let mut args = vec![payload.iter().map(|b| format!("{b:02x}")).collect()];
    for t in targets {
        args.push(t.ip().to_string());
        args.push(t.port().to_string());
    }
    let out = py(pod, Duration::from_secs(60), PROBE, &args);
    let probed: Vec<Probed> = out
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 5, "probe line {line:?}");
            let received = (0..f[4].len() / 2)
                .map(|i| u8::from_str_radix(&f[4][2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            Probed {
                target: format!("{} {}", f[0], f[1]),
                outcome: f[2].to_string(),
                received,
            }
        })
        .collect();
    assert_eq!(probed.len(), targets.len(), "{out}");
    probed
}

pub fn metrics(lab: &Lab<'_>, name: &str) -> String {
    lab.scrape(member(lab, name)).expect("scrape")
}

pub fn count(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    sum(text, metric, labels)
}

/// Asserts that, within `within`, the only connections open at each of
/// the sidecars `names` (each named like its service) are mesh connections
/// idle in the pool of one of them (counted inbound at the sidecar they
/// lead to; each pool closes its own within `--pool-max-age`): no app
/// connection and nothing refused stays open.
pub fn assert_only_pooled_connections_open(lab: &Lab<'_>, names: &[&str], within: Duration) {
    let balanced = || {
        let texts: Vec<String> = names.iter().map(|name| metrics(lab, name)).collect();
        names.iter().zip(&texts).all(|(name, text)| {
            let pooled_to = [("peer", *name)];
            let pooled: f64 = texts
                .iter()
                .map(|t| count(t, "ward_http_pool_idle_connections", &pooled_to))
                .sum();
            count(text, "ward_tcp_open_connections", &[]) == pooled
        })
    };
    let drained = eventually(within, balanced);
    let all: Vec<String> = names.iter().map(|name| metrics(lab, name)).collect();
    assert!(drained, "connections left open: {all:#?}");
}

pub fn loops(text: &str, direction: &str) -> f64 {
    count(
        text,
        "ward_tcp_connection_errors_total",
        &[("direction", direction), ("reason", "loop")],
    )
}

/// Polls `cond` every 200 ms for up to `timeout`.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The mesh still works: web's GET to orders is allowed, orders reaches
/// db, and both sidecars say ready.
pub fn assert_still_serving(lab: &Lab<'_>) {
    let web = pod_of(lab, "web");
    let url = format!("http://{}/orders/42", app_addr(lab, "orders"));
    let (body, _) = curl(web, "GET", &url);
    assert_eq!(body, "orders: GET /orders/42\n\n200", "{}", lab.logs());
    let flow = &scenario::FLOWS[2];
    let (verdict, line) = lab.call(flow).expect("call");
    assert_eq!(verdict, flow.expect, "{}: {line}", flow.describe());
    for name in ["web", "orders", "db"] {
        let m = member(lab, name);
        let url = lab.admin_url(m, "/ready");
        let args = [
            "-sS",
            "-m",
            "5",
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
            &url,
        ];
        let ready = run(pod(&m.host), "curl", &args);
        assert_eq!(stdout(&ready), "200", "{name} is not ready");
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A lab member's files (token, bundle, mesh file), as the lab lays them out.
pub fn member_file(testbed: &Testbed, name: &str, file: &str) -> PathBuf {
    testbed.dir().join("lab").join(name).join(file)
}

/// Writes `yaml` as every lab member's mesh file and waits (10 s at most)
/// until each sidecar has loaded it.
pub fn replace_mesh(lab: &Lab<'_>, testbed: &Testbed, yaml: &str) {
    let names: Vec<&str> = lab.members().iter().map(|m| m.workload.name).collect();
    let loads = |name: &str| {
        count(
            &metrics(lab, name),
            "ward_policy_reloads_total",
            &[("result", "success")],
        )
    };
    let before: Vec<f64> = names.iter().map(|name| loads(name)).collect();
    for name in &names {
        std::fs::write(member_file(testbed, name, "mesh.yaml"), yaml).expect("mesh file written");
    }
    for (name, before) in names.into_iter().zip(before) {
        let reloaded = eventually(Duration::from_secs(10), || loads(name) > before);
        assert!(reloaded, "{name} did not reload:\n{}", lab.logs());
    }
}

/// Starts `ward demo-app KIND` (`http`, or `banner` for `talk`) named
/// `outside` on `port` in the lab's outsider pod: a server without a
/// sidecar and in no mesh file. Waits (10 s at most) until it accepts
/// connections; its address.
pub fn serve_outside(lab: &Lab<'_>, kind: &str, port: u16) -> SocketAddr {
    let outsider = outsider(lab);
    let addr = SocketAddr::new(outsider.ipv4().into(), port);
    let mut server = PodCommand::new(WARD);
    let listen = format!("0.0.0.0:{port}");
    server.args(["demo-app", kind, "--listen", &listen, "--name", "outside"]);
    let process = outsider.spawn(&server).expect("server starts");
    let connect = format!("exec 3<>/dev/tcp/{}/{port}", addr.ip());
    let up = eventually(Duration::from_secs(10), || {
        run(outsider, "bash", &["-c", &connect]).status.success()
    });
    assert!(up, "the outside server is not up: {}", process.logs());
    addr
}

/// Starts `ward proxy --transparent` in `pod` as the lab starts `name`'s
/// sidecar (its identity, token, bundle and mesh file; uid 1337), plus
/// `extra` flags, and waits (30 s at most) until it is ready.
pub fn start_sidecar<'tb>(
    lab: &Lab<'_>,
    testbed: &Testbed,
    pod: &Pod<'tb>,
    name: &str,
    extra: &[&str],
) -> PodProcess<'tb> {
    let file = |f: &str| member_file(testbed, name, f);
    let mut sidecar = PodCommand::new(WARD);
    sidecar
        .args(["proxy", "--transparent"])
        .args(extra)
        .args(["--identity", &scenario::identity(name)])
        .args(["--ca", &lab.ca_url()])
        .arg("--ca-bundle")
        .arg(file("bundle.pem"))
        .arg("--token-file")
        .arg(file("token"))
        .arg("--mesh")
        .arg(file("mesh.yaml"))
        .uid(PROXY_UID);
    let proxy = pod.spawn(&sidecar).expect("sidecar starts");
    let ready = eventually(Duration::from_secs(30), || {
        let (body, _) = curl(pod, "GET", "http://127.0.0.1:15020/ready");
        body.ends_with("200")
    });
    assert!(ready, "{}", proxy.logs());
    proxy
}

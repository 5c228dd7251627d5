//! `ward init` for real, in throwaway network namespaces: both iptables
//! backends, idempotence, uninstall next to a user's own rules, IPv6,
//! dry runs, backend detection, bad flags, and a connection that really is
//! redirected (and one from the proxy's UID that is not). The root
//! namespace's iptables are never touched.
//!
//! Needs root, `ip`, and the iptables tools; without them each test prints
//! `skipping: <reason>` and passes, unless WARD_REQUIRE_NETNS=1 (CI), where
//! it fails instead.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const WARD: &str = env!("CARGO_BIN_EXE_ward");

const TOOLS: [&str; 7] = [
    "ip",
    "iptables-nft",
    "iptables-nft-save",
    "iptables-legacy",
    "iptables-legacy-save",
    "ip6tables-nft-save",
    "setpriv",
];

/// A network namespace of this test process, deleted on drop (also on panic).
struct Netns {
    name: String,
}

impl Netns {
    /// Runs `args` inside the namespace.
    fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ip netns exec")
    }

    /// Runs `args` inside the namespace and insists that it succeeds.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn ward_init(&self, args: &[&str]) -> Output {
        let mut all = vec![WARD, "init"];
        all.extend_from_slice(args);
        self.exec(&all)
    }

    /// `*-save -t nat` without its timestamp comments.
    fn nat(&self, save_tool: &str) -> String {
        self.ok(&[save_tool, "-t", "nat"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// The nat tables of every backend and family, for "nothing changed".
    fn all_nat(&self) -> String {
        [
            "iptables-nft-save",
            "iptables-legacy-save",
            "ip6tables-nft-save",
            "ip6tables-legacy-save",
        ]
        .iter()
        .map(|tool| format!("== {tool}\n{}", self.nat(tool)))
        .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Why these tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    if uid != Some("0") {
        return Some("not running as root (network namespaces need it)".into());
    }
    let path = format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    for tool in TOOLS {
        let found = std::env::split_paths(&path).any(|dir| dir.join(tool).is_file());
        if !found {
            return Some(format!(
                "{tool} not installed (apt-get install iptables iproute2 util-linux)"
            ));
        }
    }
    None
}

/// A fresh namespace, or `None` (after saying why) when this machine cannot
/// make one. With WARD_REQUIRE_NETNS=1 a missing prerequisite is a failure.
fn netns() -> Option<Netns> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let made = match unavailable() {
        Some(reason) => Err(reason),
        None => {
            let name = format!(
                "wardinit-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let out = Command::new("ip")
                .args(["netns", "add", &name])
                .output()
                .expect("run ip");
            if out.status.success() {
                Ok(Netns { name })
            } else {
                Err(format!("ip netns add failed: {}", text(&out.stderr).trim()))
            }
        }
    };
    match made {
        Ok(ns) => Some(ns),
        Err(reason) if std::env::var("WARD_REQUIRE_NETNS").as_deref() == Ok("1") => {
            panic!("WARD_REQUIRE_NETNS=1 but {reason}")
        }
        Err(reason) => {
            eprintln!("skipping: {reason}");
            None
        }
    }
}

fn stdout(out: &Output) -> String {
    text(&out.stdout)
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "ward init failed:\nstdout:\n{}\nstderr:\n{}",
        stdout(out),
        text(&out.stderr)
    );
}

/// A rule a user added before ward (saved as `-A OUTPUT -p tcp -m tcp --dport 9999 -j RETURN`).
const USER_RULE: [&str; 11] = [
    "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN",
];

/// Install on `backend` next to a user's rule, twice, then uninstall twice.
fn install_reinstall_uninstall(backend: &str) {
    let Some(ns) = netns() else { return };
    let iptables = format!("iptables-{backend}");
    let save = format!("iptables-{backend}-save");
    let mut user_rule = vec![iptables.as_str()];
    user_rule.extend_from_slice(&USER_RULE);
    ns.ok(&user_rule);
    let before = ns.nat(&save);
    assert!(before.contains("-A OUTPUT -p tcp -m tcp --dport 9999 -j RETURN"));

    let args = [
        "--backend",
        backend,
        "--ipv6",
        "off",
        "--exclude-inbound-ports",
        "22",
        "--exclude-outbound-cidrs",
        "10.0.0.0/8,fd00::/8",
    ];
    let out = ns.ward_init(&args);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!(
            "using iptables-{backend} (requested with --backend"
        )),
        "{}",
        stdout(&out)
    );
    let once = ns.nat(&save);
    for line in [
        ":WARD_INBOUND - [0:0]",
        ":WARD_IN_REDIRECT - [0:0]",
        ":WARD_OUTPUT - [0:0]",
        ":WARD_OUT_REDIRECT - [0:0]",
        "-A PREROUTING -p tcp -j WARD_INBOUND",
        "-A OUTPUT -p tcp -m tcp --dport 9999 -j RETURN",
        "-A OUTPUT -p tcp -j WARD_OUTPUT",
        "-A WARD_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
        "-A WARD_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        "-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT",
        "-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A WARD_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A WARD_OUTPUT -o lo -j RETURN",
        "-A WARD_OUTPUT -d 127.0.0.0/8 -j RETURN",
        "-A WARD_OUTPUT -d 10.0.0.0/8 -j RETURN",
        "-A WARD_OUTPUT -p tcp -j WARD_OUT_REDIRECT",
        "-A WARD_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(
            once.lines().any(|l| l == line),
            "missing {line:?} in\n{once}"
        );
    }
    assert!(!once.contains("fd00::"), "IPv6 CIDR in IPv4 rules:\n{once}");
    let other = if backend == "nft" { "legacy" } else { "nft" };
    let other_nat = ns.nat(&format!("iptables-{other}-save"));
    assert!(!other_nat.contains("WARD"), "{other} touched:\n{other_nat}");

    assert_ok(&ns.ward_init(&args));
    assert_eq!(ns.nat(&save), once, "a second run changed the table");

    let out = ns.ward_init(&["--backend", backend, "--ipv6", "off", "--uninstall"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("removed 2 jump(s) and 4 WARD chain(s)"),
        "{}",
        stdout(&out)
    );
    let after = ns.nat(&save);
    assert_eq!(after, before, "uninstall must restore the table exactly");

    let out = ns.ward_init(&["--backend", backend, "--ipv6", "off", "--uninstall"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("nothing to remove"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn nft_installs_idempotently_and_uninstalls_only_its_own() {
    install_reinstall_uninstall("nft");
}

#[test]
fn legacy_installs_idempotently_and_uninstalls_only_its_own() {
    install_reinstall_uninstall("legacy");
}

#[test]
fn ipv6_gets_ip6tables_rules_with_ipv6_cidrs_only() {
    let Some(ns) = netns() else { return };
    let out = ns.ward_init(&[
        "--backend",
        "nft",
        "--ipv6",
        "on",
        "--exclude-outbound-cidrs",
        "10.0.0.0/8,fd00::/8",
        "--proxy-mark",
        "0x539",
    ]);
    assert_ok(&out);
    let v6 = ns.nat("ip6tables-nft-save");
    for line in [
        "-A PREROUTING -p tcp -j WARD_INBOUND",
        "-A OUTPUT -p tcp -j WARD_OUTPUT",
        "-A WARD_OUTPUT -m mark --mark 0x539 -j RETURN",
        "-A WARD_OUTPUT -d ::1/128 -j RETURN",
        "-A WARD_OUTPUT -d fd00::/8 -j RETURN",
        "-A WARD_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(v6.lines().any(|l| l == line), "missing {line:?} in\n{v6}");
    }
    assert!(!v6.contains("10.0.0.0"), "{v6}");
    let v4 = ns.nat("iptables-nft-save");
    assert!(
        v4.contains("-A WARD_OUTPUT -d 10.0.0.0/8 -j RETURN"),
        "{v4}"
    );
    assert!(!v4.contains("fd00"), "{v4}");

    let once = ns.all_nat();
    assert_ok(&ns.ward_init(&[
        "--backend",
        "nft",
        "--ipv6",
        "on",
        "--exclude-outbound-cidrs",
        "10.0.0.0/8,fd00::/8",
        "--proxy-mark",
        "0x539",
    ]));
    assert_eq!(ns.all_nat(), once);
    assert_ok(&ns.ward_init(&["--backend", "nft", "--ipv6", "on", "--uninstall"]));
    assert!(!ns.all_nat().contains("WARD"), "{}", ns.all_nat());
}

#[test]
fn dry_run_changes_nothing() {
    let Some(ns) = netns() else { return };
    let before = ns.all_nat();
    let out = ns.ward_init(&["--dry-run", "--ipv6", "on"]);
    assert_ok(&out);
    let printed = stdout(&out);
    assert!(printed.contains("# ward init: dry run; nothing is changed"));
    assert!(printed.contains("# ward init: using iptables-nft (no rules in either backend"));
    assert!(
        printed.contains("# IPv4: iptables-nft-restore --noflush"),
        "{printed}"
    );
    assert!(
        printed.contains("# IPv6: ip6tables-nft-restore --noflush"),
        "{printed}"
    );
    assert_eq!(printed.matches("COMMIT").count(), 2, "{printed}");
    assert_eq!(ns.all_nat(), before);
    let out = ns.ward_init(&["--dry-run", "--uninstall"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("nothing to remove"),
        "{}",
        stdout(&out)
    );
    assert_eq!(ns.all_nat(), before);
}

#[test]
fn auto_detection_follows_the_backend_in_use() {
    let Some(ns) = netns() else { return };
    let mut rule = vec!["iptables-legacy"];
    rule.extend_from_slice(&USER_RULE);
    ns.ok(&rule);
    let out = ns.ward_init(&["--ipv6", "off"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("using iptables-legacy (1 rule already present there; nft had none)"),
        "{}",
        stdout(&out)
    );
    assert!(
        ns.nat("iptables-legacy-save")
            .contains("-A OUTPUT -p tcp -j WARD_OUTPUT")
    );
    assert!(!ns.nat("iptables-nft-save").contains("WARD"));
    // Its own rules now keep the choice on legacy, for reruns and --uninstall.
    let out = ns.ward_init(&["--ipv6", "off", "--uninstall"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("using iptables-legacy"),
        "{}",
        stdout(&out)
    );
    assert!(!ns.all_nat().contains("WARD"));
}

#[test]
fn uninstall_points_at_chains_left_in_the_other_backend() {
    let Some(ns) = netns() else { return };
    assert_ok(&ns.ward_init(&["--ipv6", "off", "--backend", "legacy"]));
    let out = ns.ward_init(&["--ipv6", "off", "--backend", "nft", "--uninstall"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(
            "iptables-legacy-save also holds WARD chains; remove them with \
             `ward init --uninstall --backend legacy`"
        ),
        "{}",
        stdout(&out)
    );
    assert!(
        ns.nat("iptables-legacy-save").contains("WARD_OUTPUT"),
        "left alone"
    );
}

#[test]
fn bad_flags_fail_clearly_and_change_nothing() {
    let Some(ns) = netns() else { return };
    let before = ns.all_nat();
    for (args, expected) in [
        (
            &["--exclude-outbound-cidrs", "10.0.0.0/33"][..],
            "bad CIDR \"10.0.0.0/33\": the prefix length must be a number from 0 to 32",
        ),
        (
            &["--exclude-outbound-cidrs", "10.1.0.0/8"][..],
            "host bits are set; did you mean 10.0.0.0/8?",
        ),
        (
            &["--inbound-port", "0"][..],
            "--inbound-port must be a port from 1 to 65535, not 0",
        ),
        (
            &["--exclude-outbound-ports", "80,0"][..],
            "--exclude-outbound-ports must be a port from 1 to 65535, not 0",
        ),
        (
            &["--inbound-port", "15001"][..],
            "--inbound-port and --outbound-port are both 15001",
        ),
        (&["--proxy-uid", "0"][..], "every process running as root"),
    ] {
        let out = ns.ward_init(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = text(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert_eq!(ns.all_nat(), before);
}

/// Kills and reaps a child process on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn outbound_tcp_is_redirected_except_for_the_proxy_uid() {
    let Some(ns) = netns() else { return };
    // A non-local address behind a veth pair whose far end has no address:
    // routable (so connect() starts), but nothing there ever answers.
    ns.ok(&["ip", "link", "set", "lo", "up"]);
    ns.ok(&[
        "ip", "link", "add", "w0", "type", "veth", "peer", "name", "w1",
    ]);
    ns.ok(&["ip", "addr", "add", "10.99.0.1/24", "dev", "w0"]);
    ns.ok(&["ip", "link", "set", "w0", "up"]);
    ns.ok(&["ip", "link", "set", "w1", "up"]);
    assert_ok(&ns.ward_init(&["--ipv6", "off"]));

    // A server-speaks-first listener where the sidecar's outbound port
    // would be: a client that reads its greeting was redirected there.
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, WARD, "demo-app", "banner"])
        .args(["--listen", "127.0.0.1:15001", "--name", "redirected"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn listener");
    let _listener = Reaped(child);

    let connect_as = |uid: &str| {
        let script = "exec 3<>/dev/tcp/10.99.0.2/80 && head -n1 <&3";
        let out = ns.exec(&[
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "timeout",
            "3",
            "bash",
            "-c",
            script,
        ]);
        text(&out.stdout).trim().to_string()
    };
    // The listener may still be starting: bounded retries.
    let greeted = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        connect_as("4242") == "redirected ready"
    });
    assert!(
        greeted,
        "the app's connection to 10.99.0.2:80 was not redirected to :15001"
    );

    // The proxy's own connection goes out to the far veth end and gets nothing.
    assert_eq!(connect_as("1337"), "", "uid 1337 was redirected");
    assert_eq!(connect_as("4242"), "redirected ready");
}

//! Helpers of the transparent-mode tests: the lab's mesh in pods, and
//! unmodified clients run inside them.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use ward::lab::{Host, Lab, Member, Placement};
use ward::pods::{Pod, PodCommand, Testbed};

pub const WARD: &str = env!("CARGO_BIN_EXE_ward");

pub fn start(testbed: &Testbed) -> Lab<'_> {
    match Lab::start(WARD.as_ref(), Placement::Pods(testbed)) {
        Ok(lab) => lab,
        Err(e) => panic!("lab did not start: {e}\n{}", testbed.logs()),
    }
}

pub fn pod<'a>(host: &'a Host<'_>) -> &'a Pod<'a> {
    match host {
        Host::Pod(pod) => pod,
        Host::Loopback(..) => panic!("a pod lab has pods"),
    }
}

pub fn member<'a, 'tb>(lab: &'a Lab<'tb>, name: &str) -> &'a Member<'tb> {
    lab.member(name).expect("workload in the scenario")
}

pub fn pod_of<'a>(lab: &'a Lab<'_>, name: &str) -> &'a Pod<'a> {
    pod(&member(lab, name).host)
}

pub fn outsider<'a>(lab: &'a Lab<'_>) -> &'a Pod<'a> {
    pod(lab.outsider.as_ref().expect("pod labs have an outsider"))
}

/// `program args...` in `pod` as root (not the proxy's UID, so intercepted).
pub fn run_for(pod: &Pod<'_>, timeout: Duration, program: &str, args: &[&str]) -> Output {
    let mut cmd = PodCommand::new(program);
    cmd.args(args).timeout(timeout);
    pod.run(&cmd).expect("command runs within its timeout")
}

pub fn run(pod: &Pod<'_>, program: &str, args: &[&str]) -> Output {
    run_for(pod, Duration::from_secs(20), program, args)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn app_addr(lab: &Lab<'_>, name: &str) -> SocketAddr {
    let m = member(lab, name);
    SocketAddr::new(m.host.ip(), m.workload.app.port().expect("serves"))
}

/// curl: `-w %{http_code}` after the body; exit status kept for refusals.
pub fn curl(pod: &Pod<'_>, method: &str, url: &str) -> (String, Output) {
    let out = run(
        pod,
        "curl",
        &[
            "-sS",
            "-g",
            "-m",
            "5",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            url,
        ],
    );
    (stdout(&out), out)
}

/// A plain TCP client (bash's /dev/tcp): read the greeting, send a line,
/// read the echo.
pub fn talk(pod: &Pod<'_>, addr: SocketAddr, line: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{} || exit 1; timeout 5 head -n1 <&3; echo '{line}' >&3; timeout 5 head -n1 <&3",
        addr.ip(),
        addr.port()
    );
    stdout(&run(pod, "bash", &["-c", &script]))
}

//! Pods for system tests and `ward demo`: network namespaces on a shared L2
//! network, like Kubernetes pods on a node, in which tests run `ward init`,
//! an app, and `ward proxy` as uid 1337.
//!
//! ```text
//!  root netns: untouched (no links, routes, rules or addresses are added)
//!
//!  bridge netns  wardpod-<pid>-<seq>-br
//!  ┌──────────────────────────────────────────────┐
//!  │     br0 10.77.N.1/24 (the pods' "node")      │
//!  │        ┌───────┴────────┬──────── ...        │
//!  │        v2               v3                   │
//!  └────────┼────────────────┼─────────────────────┘
//!           │ veth           │ veth
//!  ┌────────┼─────────┐  ┌───┼──────────────┐
//!  │ eth0 10.77.N.2/24│  │ eth0 10.77.N.3/24│
//!  │ fd77:0:0:N::2/64 │  │ fd77:0:0:N::3/64 │
//!  │ lo up            │  │ lo up            │
//!  │ 10.96.0.0/16     │  │ 10.96.0.0/16     │
//!  │   via 10.77.N.1  │  │   via 10.77.N.1  │
//!  └──────────────────┘  └──────────────────┘
//!  pod netns wardpod-<pid>-<seq>-pod-a   ...-pod-b
//! ```
//!
//! Why a bridge namespace: everything a testbed makes lives in namespaces it
//! owns, so tests can run on a developer's machine or CI host without
//! touching its network, and many testbeds (one per test thread) can exist
//! at once. Veth pairs are created inside the bridge namespace with the peer
//! placed straight into the pod, so no link ever appears in the root one.
//! Interface names are short and fixed (`br0`, `v<host>`, `eth0`) because
//! they only need to be unique within their own namespace.
//!
//! The bridge namespace is also the pods' node: it holds `.1` on `br0`,
//! pods route the service range 10.96.0.0/16 through it, and
//! [`Testbed::set_cluster_ip`] makes it do kube-proxy's job for a Service's
//! cluster IP (DNAT to pod addresses; see `cluster_ip.rs`). Traffic
//! between pod addresses stays plain L2 across the bridge.
//!
//! Naming: every namespace and the work directory (in `$TMPDIR`) start with
//! `wardpod-<pid>-<seq>-`: the pid makes names unique across processes and
//! lets a later run recognise leftovers, `<seq>` across testbeds in one
//! process. Testbed `<seq>` uses `10.77.<seq % 256>.0/24` and
//! `fd77:0:0:<seq % 256>::/64`; pods get hosts `.2`, `.3`, … in the order
//! they are added.
//!
//! Cleanup guarantees: dropping a [`Testbed`] — also while a test panics,
//! since unwinding runs `Drop` — SIGKILLs the process group of every process
//! it started and reaps it, kills whatever else still runs in its namespaces
//! (`ip netns pids`), deletes the namespaces (which destroys the veth pairs
//! and the bridge) and removes the work directory. If the process dies
//! without unwinding (SIGKILL, abort), the next [`Testbed::new`] on the
//! machine removes namespaces and work directories whose `<pid>` is no
//! longer alive.
//!
//! Needs: root (namespaces and veths need CAP_SYS_ADMIN and CAP_NET_ADMIN),
//! iproute2's `ip`, util-linux's `setpriv` (processes as another uid),
//! procps' `kill`, tcpdump for captures, and iptables and procps' `sysctl`
//! for cluster IPs. [`availability`] and [`capture_availability`] say what
//! is missing (cluster IPs fail with the tool's own message).
#![forbid(unsafe_code)]

mod availability;
mod capture;
mod cluster_ip;
mod error;
mod host;
mod netns;
mod process;
mod testbed;

pub use availability::{availability, capture_availability};
pub use capture::Capture;
pub use error::PodsError;
pub use host::output;
pub use netns::PREFIX as NAME_PREFIX;
pub use process::{DEFAULT_RUN_TIMEOUT, PodCommand, PodProcess, Signal};
pub use testbed::{BRIDGE_IFACE, POD_IFACE, Pod, Testbed};
pub(crate) use testbed::{make_dir, set_mode};

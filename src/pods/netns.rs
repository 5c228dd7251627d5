//! Named network namespaces (`ip netns`): creating them, deleting them with
//! whatever still runs inside, and sweeping up what a crashed run left.
//!
//! Every name starts with `wardpod-<pid>-`, the pid of the process that made
//! it. A name whose pid is no longer alive belongs to a run that died
//! without its `Drop` (SIGKILL, abort, Ctrl-C) and is removed by the next
//! testbed, together with the work directory of the same name.

use std::path::Path;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::PodsError;
use super::host::{self, POLL};

/// The first part of every namespace and work directory a testbed makes.
pub const PREFIX: &str = "wardpod-";

/// How long deleting a namespace waits for the processes in it to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// `ip netns add` makes `/run/netns` a shared mount the first time it runs;
/// two threads doing that at once can stack mounts, so additions take turns.
static ADD: Mutex<()> = Mutex::new(());

pub(crate) fn add(name: &str) -> Result<(), PodsError> {
    let _turn = ADD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    host::ip(["netns", "add", name]).map(drop)
}

/// Kills every process in `name`, then deletes it. A namespace that is
/// already gone is not an error.
pub(crate) fn delete(name: &str) -> Result<(), PodsError> {
    kill_all(name);
    match host::ip(["netns", "del", name]) {
        Ok(_) => Ok(()),
        Err(_) if !exists(name)? => Ok(()),
        Err(e) => Err(e),
    }
}

/// The pids of processes whose network namespace is `name`.
pub(crate) fn pids(name: &str) -> Result<Vec<u32>, PodsError> {
    Ok(host::ip(["netns", "pids", name])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// SIGKILLs what runs in `name` until nothing does, for at most
/// [`KILL_TIMEOUT`]. Processes that outlive it keep the namespace alive
/// after `ip netns del`, but nothing can reach it by name any more.
fn kill_all(name: &str) {
    let deadline = Instant::now() + KILL_TIMEOUT;
    while let Ok(pids) = pids(name) {
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            host::signal(pid, "KILL", false);
        }
        thread::sleep(POLL);
    }
}

/// The names `ip netns list` shows.
pub(crate) fn list() -> Result<Vec<String>, PodsError> {
    Ok(host::ip(["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

fn exists(name: &str) -> Result<bool, PodsError> {
    Ok(list()?.iter().any(|n| n == name))
}

/// The pid in `wardpod-<pid>-...`, if `name` is one of ours.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

fn is_stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| pid != std::process::id() && !host::pid_alive(pid))
}

/// Deletes the namespaces and work directories of runs that died without
/// cleaning up. One that cannot be deleted is reported on stderr and left:
/// it does not stand in the way of a new testbed, whose names differ.
pub(crate) fn remove_stale(tmp: &Path) -> Result<(), PodsError> {
    for name in list()?.into_iter().filter(|n| is_stale(n)) {
        if let Err(e) = delete(&name) {
            eprintln!("ward pods: cannot remove stale namespace {name}: {e}");
        }
    }
    // Work directories are best effort: a leftover one costs disk, not correctness.
    if let Ok(entries) = std::fs::read_dir(tmp) {
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(is_stale) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(())
}

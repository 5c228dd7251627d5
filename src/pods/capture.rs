//! Packet captures with tcpdump, so a test can check what crossed the wire:
//! that a plaintext payload did (the capture works), or that it never did
//! (the traffic was encrypted).

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::PodsError;
use super::host::POLL;
use super::process::{PodCommand, PodProcess, Registry, Signal};

/// How long tcpdump may take to open the interface.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long tcpdump may take to flush and exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running tcpdump writing a pcap file.
pub struct Capture<'tb> {
    process: PodProcess<'tb>,
    pcap: PathBuf,
}

impl<'tb> Capture<'tb> {
    /// Starts tcpdump on `iface` in `netns` and returns once it captures.
    pub(crate) fn start(
        registry: &'tb Registry,
        netns: &str,
        owner: &str,
        iface: &str,
        dir: &Path,
        seq: usize,
    ) -> Result<Self, PodsError> {
        let pcap = dir.join(format!("{seq:03}-{owner}-{iface}.pcap"));
        // -U and --immediate-mode: every packet reaches the file as it is
        // seen, so nothing waits in a buffer when we stop. -Z root: Debian's
        // tcpdump otherwise drops to the `tcpdump` user before opening -w.
        let process = registry.spawn(
            netns,
            owner,
            PodCommand::new("tcpdump")
                .args([
                    "-i",
                    iface,
                    "-n",
                    "-U",
                    "--immediate-mode",
                    "-Z",
                    "root",
                    "-w",
                ])
                .arg(&pcap),
            dir,
        )?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if process.stderr().contains("listening on") {
                return Ok(Self { process, pcap });
            }
            let exited = process.status()?.is_some();
            if exited || Instant::now() >= deadline {
                let stderr = process.stderr();
                process.signal(Signal::Kill);
                return Err(PodsError::CaptureNotReady {
                    after: START_TIMEOUT,
                    stderr: stderr.trim().to_string(),
                });
            }
            thread::sleep(POLL);
        }
    }

    /// Where the pcap is being written.
    pub fn path(&self) -> &Path {
        &self.pcap
    }

    /// Stops tcpdump (SIGINT, so it closes the file properly) and returns
    /// the pcap file's bytes.
    pub fn stop(self) -> Result<Vec<u8>, PodsError> {
        self.process.signal(Signal::Int);
        match self.process.wait(STOP_TIMEOUT) {
            Ok(_) => {}
            // With -U the packets are already in the file; only the
            // process refuses to go.
            Err(PodsError::Timeout { .. }) => {
                self.process.signal(Signal::Kill);
                self.process.wait(STOP_TIMEOUT)?;
            }
            Err(e) => return Err(e),
        }
        std::fs::read(&self.pcap).map_err(|source| PodsError::File {
            what: "reading capture",
            path: self.pcap.clone(),
            source,
        })
    }
}

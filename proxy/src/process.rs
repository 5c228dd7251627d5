//! The process's own resources (docs/proxy.md, "File descriptors and the
//! process's resources"): its open-files limit, raised at start because
//! container runtimes commonly leave the soft limit at 1,024, and the
//! `process_*` families every Prometheus client library exports, under
//! their usual names so that existing dashboards and alerts work.

use std::sync::Mutex;

use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
use nix::sys::time::TimeValLike;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, IntGauge};

use crate::http::pool::MAX_IDLE_TOTAL;

/// Descriptors besides the connections': listeners, the admin server (its
/// scrapes, kubelet's probes), the CA client, the mesh file, `/proc`
/// reads, the runtime's own.
const OTHER_DESCRIPTORS: u64 = 64;

/// The kernel's ceiling on any open-files limit.
const NR_OPEN: &str = "/proc/sys/fs/nr_open";

/// The open-files limit, before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy)]
pub struct OpenFilesLimit {
    pub was: u64,
    pub now: u64,
}

/// Raises the soft open-files limit to the hard one, as Go programs do at
/// start (only the runtime, or root, can raise the hard one). An
/// unlimited hard limit means the kernel's ceiling, `fs.nr_open`.
pub fn raise_open_files_limit() -> nix::Result<OpenFilesLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let ceiling = std::fs::read_to_string(NR_OPEN)
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(hard);
    // The kernel refuses a hard limit above its ceiling, unlimited too.
    let hard = hard.min(ceiling);
    let target = hard.max(soft);
    if soft < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    Ok(OpenFilesLimit {
        was: soft,
        now: target,
    })
}

/// How the open-files limit is shared out ([`shares`]).
#[derive(Debug, Clone, Copy)]
pub struct Shares {
    /// Connections held at once across all listeners.
    pub connections: usize,
    /// Idle mesh connections the pool keeps in all.
    pub pooled: usize,
}

/// Shares out the open-files limit, read once at start: the pool keeps at
/// most [`MAX_IDLE_TOTAL`] idle connections and [`OTHER_DESCRIPTORS`]
/// are kept back (each at most a quarter of the limit); the rest goes to
/// connections at two descriptors each (downstream and upstream), with at
/// most `max_connections` per listener. So the admin server (kubelet's
/// probes of the sidecar, scrapes) does not run out of descriptors:
/// connections beyond the budget wait in the kernel's backlog. Warns when
/// the limit, not `--max-connections`, sets the budget.
pub fn shares(listeners: usize, max_connections: usize) -> Shares {
    let allowed = (listeners as u64).saturating_mul(max_connections as u64);
    let Ok((limit, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Shares {
            connections: usize::try_from(allowed).unwrap_or(usize::MAX),
            pooled: MAX_IDLE_TOTAL,
        };
    };
    let others = OTHER_DESCRIPTORS.min(limit / 4);
    let pooled = (MAX_IDLE_TOTAL as u64).min(limit / 4);
    let fits = (limit - others - pooled) / 2;
    if fits < allowed {
        tracing::warn!(
            limit,
            budget = fits,
            listeners,
            max_connections,
            "the open-files limit allows fewer connections than --max-connections on these \
             listeners: beyond the budget, new connections wait in the kernel's backlog; \
             raise the container's nofile limit (--max-connections above the budget has no effect)"
        );
    }
    Shares {
        connections: usize::try_from(fits.min(allowed)).unwrap_or(usize::MAX),
        pooled: usize::try_from(pooled).unwrap_or(MAX_IDLE_TOTAL),
    }
}

/// `process_open_fds`, `process_max_fds`, `process_resident_memory_bytes`
/// and `process_cpu_seconds_total`, read at each scrape; a family whose
/// source cannot be read is left out rather than reported as 0.
pub struct ProcessCollector {
    open_fds: IntGauge,
    max_fds: IntGauge,
    resident_memory: IntGauge,
    cpu: Counter,
    /// Two scrapes at once must not both add the same CPU time.
    cpu_seen: Mutex<()>,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        let gauge = |name, help| IntGauge::new(name, help).expect("valid metric");
        Self {
            open_fds: gauge("process_open_fds", "Number of open file descriptors."),
            max_fds: gauge(
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit).",
            ),
            resident_memory: gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            cpu: Counter::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )
            .expect("valid metric"),
            cpu_seen: Mutex::new(()),
        }
    }
}

impl ProcessCollector {
    fn parts(&self) -> [&dyn Collector; 4] {
        [
            &self.open_fds,
            &self.max_fds,
            &self.resident_memory,
            &self.cpu,
        ]
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.parts().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = Vec::new();
        let mut gauge = |gauge: &IntGauge, value: Option<u64>| {
            if let Some(value) = value {
                gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
                families.extend(gauge.collect());
            }
        };
        gauge(&self.open_fds, open_fds());
        let max_fds = getrlimit(Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft);
        gauge(&self.max_fds, max_fds);
        gauge(&self.resident_memory, resident_memory_bytes());
        if let Some(seconds) = cpu_seconds() {
            let _seen = self.cpu_seen.lock().unwrap_or_else(|e| e.into_inner());
            let delta = seconds - self.cpu.get();
            if delta > 0.0 {
                self.cpu.inc_by(delta);
            }
            families.extend(self.cpu.collect());
        }
        families
    }
}

/// Entries of `/proc/self/fd`, less the one reading it.
fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(entries.saturating_sub(1))
}

/// `VmRSS` of `/proc/self/status` (kB).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn cpu_seconds() -> Option<f64> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let micros = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
    Some(micros as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ProxyMetrics;

    /// One sample of `family` in a scrape.
    fn sample(text: &str, family: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.split(' ').next() == Some(family))
            .unwrap_or_else(|| panic!("{family} in\n{text}"));
        line.split(' ').nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn the_scrape_counts_descriptors_memory_and_cpu_of_this_process() {
        let metrics = ProxyMetrics::new();
        let before = sample(&metrics.render(), "process_open_fds");
        // 200 more, held (other tests of this binary may close a few meanwhile).
        let held: Vec<_> = (0..200)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        let text = metrics.render();
        let during = sample(&text, "process_open_fds");
        assert!(during >= before + 150.0, "{before} then {during}");
        drop(held);
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let soft = soft.min(i64::MAX as u64) as f64;
        assert_eq!(sample(&text, "process_max_fds"), soft);
        // This test binary's resident set is megabytes, not bytes or terabytes.
        let rss = sample(&text, "process_resident_memory_bytes");
        assert!((1e6..1e11).contains(&rss), "{rss}");
        // CPU time only grows, scrape after scrape.
        let cpu = sample(&text, "process_cpu_seconds_total");
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(spin.elapsed());
        }
        let later = sample(&metrics.render(), "process_cpu_seconds_total");
        assert!(cpu > 0.0 && later > cpu, "{cpu} then {later}");
    }
}

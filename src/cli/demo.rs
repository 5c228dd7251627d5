//! `ward demo`: the product end to end on this machine, with nothing to set
//! up. It starts ward's CA, three workloads (`web`, `orders`, `db`) with
//! sidecars and a policy (`ward::lab::scenario`), drives each flow of the
//! scenario with unmodified plaintext clients and prints what the mesh did:
//! flows and their deciding rules, decisions per rule, mTLS connections,
//! certificate expiry, metrics URLs.
//!
//! With root and iptables the workloads are network-namespace pods with
//! `ward init` interception and transparent sidecars, as in Kubernetes;
//! otherwise they run on 127.0.0.x with explicit sidecars, and the demo
//! says so. `--once` exits 0 only if every flow behaved as the policy says;
//! without it the traffic and the summary repeat until Ctrl-C. Everything
//! the demo started (processes, namespaces, files) is removed on exit.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use time::OffsetDateTime;
use tokio::signal::unix::{SignalKind, signal};
use ward::intercept::backend;
use ward::lab::prometheus::{samples, sum};
use ward::lab::scenario::{FLOWS, Request, Verdict};
use ward::lab::{Host, Lab, Placement};
use ward::pods::{self, Testbed};

#[derive(Args)]
pub struct DemoArgs {
    /// Run the scenario once, print the summary and exit (0 only if every
    /// flow behaved as the policy says). Without it the demo keeps driving
    /// traffic and refreshing the summary until Ctrl-C.
    #[arg(long)]
    pub once: bool,
    /// Use loopback addresses and explicit sidecars even where
    /// network-namespace pods are available.
    #[arg(long)]
    pub loopback: bool,
}

/// `println!` that returns an error instead of panicking when stdout is
/// closed (`ward demo | head`): the demo then stops and cleans up.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*).context("cannot write to stdout")?
    };
}

/// Between two rounds of traffic in the live demo.
const ROUND: Duration = Duration::from_secs(5);

pub async fn run(args: DemoArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Ctrl-C, and the signals of `kill`, `timeout` and a closed terminal:
    // each stops the demo and removes what it started.
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = hangup.recv() => {}
        }
        flag.store(true, Ordering::SeqCst);
    });
    // The lab drives processes synchronously; keep it off the runtime.
    tokio::task::spawn_blocking(move || demo(&args, &stop))
        .await
        .context("the demo thread failed")?
}

fn demo(args: &DemoArgs, stop: &AtomicBool) -> Result<()> {
    let ward = std::env::current_exe().context("cannot find the ward binary")?;
    let why_not_pods = if args.loopback {
        Some("--loopback".to_string())
    } else {
        pods_unavailable()
    };
    // Declared before the lab, so it is dropped (namespaces deleted) after.
    let testbed;
    let workdir;
    let placement = match &why_not_pods {
        None => {
            testbed = Testbed::new()?;
            say!(
                "ward demo: pods are network namespaces ({}), traffic intercepted by `ward init`\n",
                testbed.id()
            );
            Placement::Pods(&testbed)
        }
        Some(reason) => {
            workdir = tempfile::Builder::new().prefix("ward-demo-").tempdir()?;
            say!(
                "ward demo: explicit mode on 127.0.0.x (network-namespace pods unavailable: {reason})\n"
            );
            Placement::Loopback(workdir.path().to_path_buf())
        }
    };
    let started = Instant::now();
    let lab = Lab::start(&ward, placement)?;
    say!(
        "  CA {} and {} sidecars ready in {:.1}s (SVIDs issued over HTTPS with join tokens)\n",
        lab.ca_url(),
        lab.members().len(),
        started.elapsed().as_secs_f64()
    );
    interrupted(stop)?;
    let mut ok = drive(&lab, stop)?;
    print_summary(&lab)?;
    if args.once {
        if !ok {
            bail!("some flows did not behave as the policy says (see above)");
        }
        say!("\nevery flow behaved as the policy says");
        return Ok(());
    }
    say!("\nrepeating every {ROUND:?}; Ctrl-C stops and removes everything");
    while !stop.load(Ordering::SeqCst) {
        let next = Instant::now() + ROUND;
        while Instant::now() < next && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        say!("\n--- {} ---", now_utc());
        ok &= match drive(&lab, stop) {
            Ok(round) => round,
            Err(_) if stop.load(Ordering::SeqCst) => break,
            Err(e) => return Err(e),
        };
        print_summary(&lab)?;
    }
    say!("\nstopping: sidecars, apps, CA and pods are being removed");
    if !ok {
        bail!("some flows did not behave as the policy says");
    }
    Ok(())
}

/// Why pods cannot be used here, or `None` if they can.
fn pods_unavailable() -> Option<String> {
    if let Err(reason) = pods::availability() {
        return Some(reason);
    }
    backend::availability().err()
}

/// Runs every flow once; true if all behaved as expected.
/// Runs every flow once; true if each behaved as expected: the client saw
/// the expected outcome *and* the receiving sidecar counted it under the
/// expected rule (so a timeout or a crashed app is never taken for a denial).
fn drive(lab: &Lab<'_>, stop: &AtomicBool) -> Result<bool> {
    say!("flows (unmodified plaintext clients; the sidecars carry them over mTLS):");
    let mut ok = true;
    for flow in &FLOWS {
        interrupted(stop)?;
        let to = lab.member(flow.to).context("the target workload")?;
        let decision = match flow.expect {
            Verdict::Allowed => "allow",
            Verdict::Denied => "deny",
        };
        let labels = [
            ("direction", "inbound"),
            ("rule", flow.rule),
            ("decision", decision),
        ];
        let counted =
            || -> Result<f64> { Ok(sum(&lab.scrape(to)?, "ward_authz_decisions_total", &labels)) };
        let before = counted()?;
        let (verdict, output) = lab.call(flow)?;
        let evidence = Evidence {
            rule: flow.rule,
            counted: counted()? > before,
        };
        ok &= report(flow.describe(), flow.expect, verdict, &evidence, &output)?;
    }
    if let Some(outsider) = &lab.outsider {
        interrupted(stop)?;
        // A pod without a sidecar sends plaintext straight to orders' pod.
        ok &= outsider_flow(lab, outsider)?;
    }
    Ok(ok)
}

fn interrupted(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted; everything the demo started is being removed");
    }
    Ok(())
}

/// The receiving sidecar's record of a flow: the deciding rule (or refusal
/// reason) and whether its counter moved.
struct Evidence<'a> {
    rule: &'a str,
    counted: bool,
}

fn outsider_flow(lab: &Lab<'_>, outsider: &Host<'_>) -> Result<bool> {
    let get = FLOWS
        .iter()
        .find(|f| matches!(f.request, Request::Http { .. }) && f.expect == Verdict::Allowed)
        .context("the scenario has an allowed HTTP flow")?;
    let orders = lab.member(get.to).context("the target workload")?;
    let addr = (
        orders.host.ip(),
        orders.workload.app.port().unwrap_or_default(),
    )
        .into();
    let labels = [("direction", "inbound"), ("reason", "not_tls")];
    let refusals = || -> Result<f64> {
        Ok(sum(
            &lab.scrape(orders)?,
            "ward_tls_handshake_errors_total",
            &labels,
        ))
    };
    let before = refusals()?;
    let (verdict, output) = lab.call_from(outsider, get, addr)?;
    let evidence = Evidence {
        rule: "not_tls",
        counted: refusals()? > before,
    };
    report(
        format!("outsider (no sidecar) -> {}: plaintext GET", get.to),
        Verdict::Denied,
        verdict,
        &evidence,
        &output,
    )
}

fn report(
    what: String,
    expect: Verdict,
    got: Verdict,
    evidence: &Evidence<'_>,
    output: &str,
) -> Result<bool> {
    let ok = expect == got && evidence.counted;
    let mark = if ok { "ok  " } else { "FAIL" };
    let verdict = match got {
        Verdict::Allowed => "allowed",
        Verdict::Denied => "denied ",
    };
    let counted = if evidence.counted {
        ""
    } else {
        ", NOT counted by the sidecar"
    };
    say!(
        "  {mark} {what:<50} {verdict} ({}{counted}; client saw: {output})",
        evidence.rule
    );
    Ok(ok)
}

fn print_summary(lab: &Lab<'_>) -> Result<()> {
    let mut decisions: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut rows = Vec::new();
    for member in lab.members() {
        let text = lab
            .scrape(member)
            .with_context(|| format!("scraping {}'s sidecar", member.workload.name))?;
        for s in samples(&text, "ward_authz_decisions_total") {
            let key = (s.label("rule").to_string(), s.label("decision").to_string());
            *decisions.entry(key).or_default() += s.value;
        }
        let expiry = samples(&text, "ward_identity_cert_expiration_timestamp_seconds")
            .first()
            .map_or_else(|| "none".to_string(), |s| expires(s.value));
        rows.push((
            member.workload.name,
            format!(
                "{}/{}",
                count(sum(
                    &text,
                    "ward_tls_handshakes_total",
                    &[("direction", "inbound")]
                )),
                count(sum(
                    &text,
                    "ward_tls_handshakes_total",
                    &[("direction", "outbound")]
                )),
            ),
            count(sum(&text, "ward_tls_handshake_errors_total", &[])),
            expiry,
            metrics_url(lab, member),
        ));
    }
    say!(
        "\ndecisions per rule, all sidecars (an HTTP call is decided twice: its connection, then its request):"
    );
    for ((rule, decision), n) in &decisions {
        say!("  {rule:<20} {decision:<12} {}", count(*n));
    }
    say!("\nsidecars:");
    say!(
        "  {:<8} {:>13} {:>10}  {:<24} metrics",
        "workload",
        "mTLS in/out",
        "TLS errors",
        "certificate expires"
    );
    for (name, handshakes, errors, expiry, url) in rows {
        say!("  {name:<8} {handshakes:>13} {errors:>10}  {expiry:<24} {url}");
    }
    Ok(())
}

fn metrics_url(lab: &Lab<'_>, member: &ward::lab::Member<'_>) -> String {
    let url = lab.admin_url(member, "/metrics");
    match &member.host {
        Host::Pod(pod) => format!("ip netns exec {} curl {url}", pod.netns()),
        Host::Loopback(..) => url,
    }
}

/// Counters are whole numbers; an empty sum is -0.0.
fn count(value: f64) -> u64 {
    value.max(0.0) as u64
}

fn expires(unix: f64) -> String {
    let Ok(at) = OffsetDateTime::from_unix_timestamp(unix as i64) else {
        return "invalid".into();
    };
    let left = at - OffsetDateTime::now_utc();
    format!(
        "{} (in {}h{:02}m)",
        at.date(),
        left.whole_hours(),
        left.whole_minutes() % 60
    )
}

fn now_utc() -> String {
    let now = OffsetDateTime::now_utc();
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        now.date(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

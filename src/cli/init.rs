//! `ward init`: program this network namespace's `nat` table so that the
//! pod's TCP goes through the sidecar. Runs once per pod, as the init
//! container (needs NET_ADMIN); the rules themselves are built by
//! `ward::intercept`, this file only parses flags, picks the backend and
//! address families, and reports what it did.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use ward::intercept::backend::{self, find_tool, first_line};
use ward::intercept::save::Table;
use ward::intercept::settings::{CidrList, PortList, parse_mark};
use ward::intercept::{Backend, BackendChoice, Family, Settings, rules};

#[derive(Args)]
pub struct InitArgs {
    /// Inbound TCP is redirected to this port (the sidecar's inbound listener).
    #[arg(long, env = "WARD_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,
    /// Outbound TCP is redirected to this port (the sidecar's outbound listener).
    #[arg(long, env = "WARD_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,
    /// The sidecar's admin port: inbound TCP to it is never redirected (probes, metrics).
    #[arg(long, env = "WARD_ADMIN_PORT", default_value_t = 15020)]
    pub admin_port: u16,
    /// Connections made by this UID (the sidecar's) are never redirected.
    #[arg(long, env = "WARD_PROXY_UID", default_value_t = 1337)]
    pub proxy_uid: u32,
    /// Connections from sockets with this SO_MARK (decimal or 0x hex) are never redirected.
    #[arg(long, env = "WARD_PROXY_MARK", value_parser = parse_mark)]
    pub proxy_mark: Option<u32>,
    /// Inbound destination ports left alone, e.g. 22,9100.
    #[arg(long, env = "WARD_EXCLUDE_INBOUND_PORTS", default_value = "")]
    pub exclude_inbound_ports: PortList,
    /// Outbound destination ports left alone.
    #[arg(long, env = "WARD_EXCLUDE_OUTBOUND_PORTS", default_value = "")]
    pub exclude_outbound_ports: PortList,
    /// Outbound destination networks left alone, e.g. 10.0.0.0/8,fd00::/8 (each to its family).
    #[arg(long, env = "WARD_EXCLUDE_OUTBOUND_CIDRS", default_value = "")]
    pub exclude_outbound_cidrs: CidrList,
    /// Which iptables: auto uses the one already holding rules here (nft if neither does).
    #[arg(long, env = "WARD_BACKEND", value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// Also program ip6tables: auto does when IPv6 is enabled and ip6tables is installed.
    #[arg(long, env = "WARD_IPV6", value_enum, default_value = "auto")]
    pub ipv6: Ipv6Mode,
    /// Remove ward's chains and jumps (and nothing else) instead of installing them.
    #[arg(long, env = "WARD_UNINSTALL")]
    pub uninstall: bool,
    /// Print the iptables-restore input per family and change nothing (no root needed).
    #[arg(long, env = "WARD_DRY_RUN")]
    pub dry_run: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum BackendArg {
    Auto,
    Nft,
    Legacy,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Ipv6Mode {
    Auto,
    On,
    Off,
}

pub fn run(args: InitArgs) -> Result<()> {
    // Every flag is checked before anything is read or changed.
    let settings = Settings {
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        proxy_uid: args.proxy_uid,
        proxy_mark: args.proxy_mark,
        exclude_inbound_ports: args.exclude_inbound_ports.0,
        exclude_outbound_ports: args.exclude_outbound_ports.0,
        exclude_outbound_cidrs: args.exclude_outbound_cidrs.0,
    }
    .validated()?;
    let dry_run = args.dry_run;
    // In a dry run every status line is an iptables-restore comment, so the
    // output of `--ipv6 off --dry-run` can be piped into iptables-restore.
    let say = |text: String| {
        for line in text.lines() {
            if dry_run {
                println!("# {line}");
            } else {
                println!("{line}");
            }
        }
    };
    if dry_run {
        say("ward init: dry run; nothing is changed".into());
    }

    let requested = match args.backend {
        BackendArg::Auto => None,
        BackendArg::Nft => Some(Backend::Nft),
        BackendArg::Legacy => Some(Backend::Legacy),
    };
    let choice = match backend::choose(requested) {
        Ok(choice) => choice,
        Err(e) if dry_run => BackendChoice {
            backend: Backend::Nft,
            reason: format!("{e}; showing nft"),
        },
        Err(e) => return Err(e).context("cannot choose an iptables backend"),
    };
    let backend = choice.backend;
    say(format!(
        "ward init: using iptables-{} ({})",
        backend.name(),
        choice.reason
    ));

    let mut done: Vec<Family> = Vec::new();
    for family in families(args.ipv6, backend, dry_run, &say)? {
        let tool = format!("{}-{}", family_tool(family), backend.name());
        let current = match backend.read_nat(family) {
            Ok(text) => Table::parse_nat(&text),
            Err(e) if dry_run => {
                say(format!(
                    "ward init: {family}: cannot read the current nat table ({}); \
                     showing the rules against an empty table",
                    first_line(&e.to_string())
                ));
                Table::default()
            }
            Err(e) => return Err(e).context(partial(&done, family)),
        };
        let input = if args.uninstall {
            rules::uninstall(&current)
        } else {
            Some(rules::install(&settings, family, &current))
        };
        let Some(input) = input else {
            say(format!(
                "ward init: {family} ({tool}): nothing to remove (no WARD chains or jumps)"
            ));
            continue;
        };
        if dry_run {
            say(format!(
                "{family}: {} {}",
                backend.tool(family, "restore"),
                backend.restore_args().join(" ")
            ));
            print!("{input}");
            continue;
        }
        backend
            .restore(family, &input)
            .with_context(|| partial(&done, family))?;
        let after = Table::parse_nat(&backend.read_nat(family)?);
        if args.uninstall {
            let left: Vec<&str> = rules::CHAINS
                .into_iter()
                .filter(|c| after.has_chain(c))
                .collect();
            anyhow::ensure!(
                left.is_empty(),
                "{family}: {left:?} still present after removal"
            );
            let jumps = input.lines().filter(|l| l.starts_with("-D ")).count();
            let chains = input.lines().filter(|l| l.starts_with("-X ")).count();
            say(format!(
                "ward init: {family} ({tool}): removed {jumps} jump(s) and {chains} WARD chain(s)"
            ));
        } else {
            anyhow::ensure!(
                rules::installed(&after),
                "{family}: ward's chains are missing after iptables-restore reported success"
            );
            say(format!(
                "ward init: {family} ({tool}): inbound TCP -> :{}, outbound TCP -> :{} \
                 (proxy uid {} exempt)",
                settings.inbound_port, settings.outbound_port, settings.proxy_uid
            ));
        }
        done.push(family);
    }
    if args.uninstall && !dry_run {
        warn_other_backend(backend, &say);
    }
    Ok(())
}

/// `--uninstall` cleans one backend; WARD chains left in the other one (a
/// past `ward init --backend ...`) would still redirect, so say so.
fn warn_other_backend(used: Backend, say: &impl Fn(String)) {
    let other = match used {
        Backend::Nft => Backend::Legacy,
        Backend::Legacy => Backend::Nft,
    };
    for family in [Family::V4, Family::V6] {
        if !other.installed(family) {
            continue;
        }
        let Ok(text) = other.read_nat(family) else {
            continue;
        };
        let table = Table::parse_nat(&text);
        if rules::CHAINS.iter().any(|c| table.has_chain(c)) {
            say(format!(
                "ward init: warning: {} also holds WARD chains; remove them with \
                 `ward init --uninstall --backend {}`",
                other.tool(family, "save"),
                other.name()
            ));
        }
    }
}

/// The address families to program, saying why IPv6 is or is not among them.
fn families(
    mode: Ipv6Mode,
    backend: Backend,
    dry_run: bool,
    say: &impl Fn(String),
) -> Result<Vec<Family>> {
    let restore = backend.tool(Family::V6, "restore");
    let v6 = match mode {
        Ipv6Mode::Off => false,
        Ipv6Mode::On => {
            if !backend.installed(Family::V6) && !dry_run {
                anyhow::bail!(
                    "--ipv6 on, but {restore} or its -save tool is not installed \
                     (apt-get install iptables), or use --ipv6 auto|off"
                );
            }
            true
        }
        Ipv6Mode::Auto if !backend::ipv6_enabled() => {
            say("ward init: IPv6 skipped (disabled in this network namespace)".into());
            false
        }
        Ipv6Mode::Auto if find_tool(&restore).is_none() => {
            say(format!(
                "ward init: IPv6 skipped ({restore} is not installed)"
            ));
            false
        }
        Ipv6Mode::Auto => true,
    };
    Ok(if v6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    })
}

fn family_tool(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// Error context for a failure in `family`, saying what was already applied.
fn partial(done: &[Family], family: Family) -> String {
    match done {
        [] => format!("cannot program the {family} nat table; nothing was changed"),
        _ => format!(
            "cannot program the {family} nat table; {} already applied \
             (ward init is idempotent: fix the cause and run it again, or run --uninstall)",
            done.iter()
                .map(Family::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

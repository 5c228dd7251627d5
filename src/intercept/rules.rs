//! The rules themselves, as `iptables-restore --noflush` input. Pure: the
//! same settings and the same current table always give the same text, which
//! is what makes `ward init` idempotent and what the unit tests pin down.
//!
//! Layout (per family; IPv6 uses `::1/128` and only IPv6 CIDRs):
//!
//! ```text
//! PREROUTING  -p tcp -j WARD_INBOUND
//! WARD_INBOUND       admin port, excluded inbound ports → RETURN; else → WARD_IN_REDIRECT
//! WARD_IN_REDIRECT   REDIRECT --to-ports <inbound-port>
//! OUTPUT      -p tcp -j WARD_OUTPUT
//! WARD_OUTPUT        proxy uid/mark, -o lo, loopback, excluded CIDRs and ports → RETURN;
//!                    else → WARD_OUT_REDIRECT
//! WARD_OUT_REDIRECT  REDIRECT --to-ports <outbound-port>
//! ```
//!
//! Rules are written in the canonical form `iptables-save` prints (e.g.
//! `-p tcp -m tcp --dport 22`), so the saved table reads like this output.

use std::fmt::Write;

use super::Family;
use super::save::Table;
use super::settings::Settings;

pub const INBOUND: &str = "WARD_INBOUND";
pub const IN_REDIRECT: &str = "WARD_IN_REDIRECT";
pub const OUTPUT: &str = "WARD_OUTPUT";
pub const OUT_REDIRECT: &str = "WARD_OUT_REDIRECT";

/// ward's chains, in the order they are declared.
pub const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, OUT_REDIRECT];

/// Restore input that (re)installs ward's chains and jumps on top of `current`.
pub fn install(settings: &Settings, family: Family, current: &Table) -> String {
    let mut out = String::from("*nat\n");
    delete_jumps(&mut out, current);
    for chain in CHAINS {
        // Creates the chain, or flushes it if it exists.
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let mut rule = |chain: &str, spec: &str| {
        let _ = writeln!(out, "-A {chain} {spec}");
    };

    rule(
        IN_REDIRECT,
        &format!("-p tcp -j REDIRECT --to-ports {}", settings.inbound_port),
    );
    // The admin port first, then the excluded ports (without repeating it).
    let excluded = settings
        .exclude_inbound_ports
        .iter()
        .copied()
        .filter(|p| *p != settings.admin_port);
    for port in std::iter::once(settings.admin_port).chain(excluded) {
        rule(INBOUND, &format!("-p tcp -m tcp --dport {port} -j RETURN"));
    }
    rule(INBOUND, &format!("-p tcp -j {IN_REDIRECT}"));

    rule(
        OUT_REDIRECT,
        &format!("-p tcp -j REDIRECT --to-ports {}", settings.outbound_port),
    );
    rule(
        OUTPUT,
        &format!("-m owner --uid-owner {} -j RETURN", settings.proxy_uid),
    );
    if let Some(mark) = settings.proxy_mark {
        rule(OUTPUT, &format!("-m mark --mark {mark:#x} -j RETURN"));
    }
    rule(OUTPUT, "-o lo -j RETURN");
    let loopback = match family {
        Family::V4 => "127.0.0.0/8",
        Family::V6 => "::1/128",
    };
    rule(OUTPUT, &format!("-d {loopback} -j RETURN"));
    for cidr in settings.excluded_cidrs(family) {
        rule(OUTPUT, &format!("-d {cidr} -j RETURN"));
    }
    for port in &settings.exclude_outbound_ports {
        rule(OUTPUT, &format!("-p tcp -m tcp --dport {port} -j RETURN"));
    }
    rule(OUTPUT, &format!("-p tcp -j {OUT_REDIRECT}"));

    rule("PREROUTING", &format!("-p tcp -j {INBOUND}"));
    rule("OUTPUT", &format!("-p tcp -j {OUTPUT}"));
    out.push_str("COMMIT\n");
    out
}

/// Restore input that removes ward's jumps and chains from `current`, or
/// `None` when there is nothing of ward's there.
pub fn uninstall(current: &Table) -> Option<String> {
    let present: Vec<&str> = CHAINS
        .into_iter()
        .filter(|c| current.has_chain(c))
        .collect();
    let mut out = String::from("*nat\n");
    let deleted = delete_jumps(&mut out, current);
    if deleted == 0 && present.is_empty() {
        return None;
    }
    // Flush first so the chains no longer reference each other, then delete.
    for chain in &present {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for chain in &present {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Writes a `-D` for every rule outside ward's chains that jumps into one of
/// them (normally the two jumps ward added); returns how many.
fn delete_jumps(out: &mut String, current: &Table) -> usize {
    let mut count = 0;
    for rule in &current.rules {
        let into_ward = rule.target.as_deref().is_some_and(|t| CHAINS.contains(&t));
        if into_ward
            && !CHAINS.contains(&rule.chain.as_str())
            && let Some(spec) = rule.line.strip_prefix("-A")
        {
            let _ = writeln!(out, "-D{spec}");
            count += 1;
        }
    }
    count
}

/// Whether ward's chains are all present in `current` (after an install).
pub fn installed(current: &Table) -> bool {
    CHAINS.iter().all(|c| current.has_chain(c))
}

#[cfg(test)]
mod tests;

//! Skipping (or, under `WARD_REQUIRE_NETNS=1`, failing) tests that need
//! network-namespace pods where they cannot be built.

/// True if pods can be built. Otherwise prints `skipping: <reason>` and
/// returns false, unless `WARD_REQUIRE_NETNS=1` (CI jobs that run as root),
/// where a missing capability is a failure rather than a silent pass.
pub fn require_pods_or_skip() -> bool {
    decide(ward::pods::availability())
}

/// As [`require_pods_or_skip`], and tcpdump is there for captures.
pub fn require_capture_or_skip() -> bool {
    decide(ward::pods::capture_availability())
}

/// As [`require_pods_or_skip`], and iptables is there for cluster IPs
/// (`Testbed::set_cluster_ip`).
pub fn require_cluster_ips_or_skip() -> bool {
    decide(ward::pods::availability().and_then(|()| ward::intercept::backend::availability()))
}

/// Pods with transparent interception (`ward init`, so iptables) and the
/// unmodified clients the tests run in them (curl, bash, python3).
pub fn require_transparent_or_skip() -> bool {
    decide(transparent_availability(ward::pods::availability()))
}

/// [`require_transparent_or_skip`] with captures.
pub fn require_transparent_capture_or_skip() -> bool {
    decide(transparent_availability(ward::pods::capture_availability()))
}

fn transparent_availability(pods: Result<(), String>) -> Result<(), String> {
    pods?;
    ward::intercept::backend::availability()?;
    for client in ["curl", "bash", "python3"] {
        if ward::intercept::backend::find_tool(client).is_none() {
            return Err(format!(
                "{client} is not installed (the tests' unmodified client)"
            ));
        }
    }
    Ok(())
}

fn decide(availability: Result<(), String>) -> bool {
    match availability {
        Ok(()) => true,
        Err(reason) if std::env::var_os("WARD_REQUIRE_NETNS").is_some_and(|v| v == "1") => {
            panic!("WARD_REQUIRE_NETNS=1 but pods are unavailable: {reason}")
        }
        Err(reason) => {
            eprintln!("skipping: {reason}");
            false
        }
    }
}

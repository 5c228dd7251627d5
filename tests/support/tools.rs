//! External checkers the tests run when they are installed
//! (kubernetes-validate, promtool, kubectl): found by a variable or on
//! PATH, skipped with a printed reason when absent, and a failure instead
//! when CI sets the matching WARD_REQUIRE_* variable to 1.

use std::process::Command;

/// The checker `default` (or the program named by `$var`) if `args` runs
/// it successfully. Otherwise `None` after printing why, or a panic when
/// `$require` is 1 (CI installs it, so there the check cannot be skipped).
pub fn checker(
    var: &str,
    default: &str,
    args: &[&str],
    require: &str,
    hint: &str,
) -> Option<String> {
    let tool = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let works = Command::new(&tool)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Some(tool);
    }
    let reason = format!("{tool} is not installed ({hint}, or point {var} at it)");
    if std::env::var_os(require).is_some_and(|v| v == "1") {
        panic!("{require}=1 but {reason}");
    }
    eprintln!("skipping: {reason}");
    None
}

pub fn kubernetes_validate() -> Option<String> {
    checker(
        "WARD_KUBERNETES_VALIDATE",
        "kubernetes-validate",
        &["--version"],
        "WARD_REQUIRE_K8S_SCHEMA",
        "pip install kubernetes-validate",
    )
}

pub fn promtool() -> Option<String> {
    checker(
        "WARD_PROMTOOL",
        "promtool",
        &["--version"],
        "WARD_REQUIRE_PROMTOOL",
        "apt-get install prometheus",
    )
}

/// kubectl is optional everywhere (it cannot be installed from the
/// registries CI reaches); WARD_REQUIRE_KUBECTL=1 makes it required.
pub fn kubectl() -> Option<String> {
    checker(
        "WARD_KUBECTL",
        "kubectl",
        &["version", "--client"],
        "WARD_REQUIRE_KUBECTL",
        "install kubectl",
    )
}

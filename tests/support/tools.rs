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

/// The JSON schemas kubernetes-validate validates against for Kubernetes
/// `version` (e.g. "1.33.0"), strict variant: a directory holding
/// `_definitions.json` (every API type, under `$defs`) and one file per
/// kind. Found through the Python interpreter that runs the tool's script.
pub fn kubernetes_schemas(version: &str) -> Option<std::path::PathBuf> {
    let tool = kubernetes_validate()?;
    let script = if tool.contains('/') {
        std::path::PathBuf::from(&tool)
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(&tool))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{tool} ran but is not on PATH"))
    };
    let text = std::fs::read_to_string(&script).expect("read the kubernetes-validate script");
    let shebang = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .unwrap_or_else(|| panic!("{}: no #! line", script.display()));
    // `#!/venv/bin/python3` or `#!/usr/bin/env python3`.
    let mut words = shebang.split_whitespace();
    let mut python = words.next().expect("an interpreter");
    if python.ends_with("/env") {
        python = words.next().expect("env's program");
    }
    let out = Command::new(python)
        .args([
            "-c",
            "import os, kubernetes_validate; print(os.path.dirname(kubernetes_validate.__file__))",
        ])
        .output()
        .expect("run kubernetes-validate's python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let package = String::from_utf8(out.stdout).unwrap();
    let dir = std::path::Path::new(package.trim())
        .join("kubernetes-json-schema")
        .join(format!("v{version}-local-strict"));
    assert!(dir.join("_definitions.json").is_file(), "{}", dir.display());
    Some(dir)
}

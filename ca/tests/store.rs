//! The CA directory (`ward ca init` / load): files, modes, encryption at
//! rest, and the consistency checks made when loading.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use time::OffsetDateTime;
use ward_ca::keys::{KeyError, Passphrase};
use ward_ca::store::{CaDir, StoreError};
use x509_parser::prelude::{FromDer, X509Certificate};

use support::*;

const FILES: [&str; 5] = [
    "root.pem",
    "root-key.pem",
    "intermediate.pem",
    "intermediate-key.pem",
    "trust-bundle.pem",
];
const PASS: &str = "correct horse battery staple";

fn pass(s: &str) -> Passphrase {
    Passphrase::new(s.to_string()).unwrap()
}

fn snapshot(dir: &Path) -> BTreeMap<&'static str, Vec<u8>> {
    FILES
        .iter()
        .map(|f| (*f, std::fs::read(dir.join(f)).unwrap()))
        .collect()
}

fn cert(path: &Path) -> Vec<u8> {
    pem_certs(&std::fs::read(path).unwrap()).remove(0).to_vec()
}

fn expect_bad_certificate(
    result: Result<impl std::fmt::Debug, StoreError>,
    file: &Path,
    needle: &str,
) {
    match result {
        Err(StoreError::BadCertificate { path, reason }) => {
            assert_eq!(path, file, "error names the wrong file ({reason})");
            assert!(
                reason.contains(needle),
                "reason {reason:?} does not say {needle:?}"
            );
        }
        other => panic!(
            "expected BadCertificate about {}, got {other:?}",
            file.display()
        ),
    }
}

#[test]
fn init_writes_five_files_mode_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ca");
    let (dir, authority) = new_ca(&path, TD);
    for f in FILES {
        let meta = std::fs::metadata(dir.path(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(meta.is_file() && meta.len() > 0, "{f}");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{f} mode {:o}",
            meta.permissions().mode()
        );
    }
    let dir_mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "a CA directory created by init is private");
    let entries: Vec<String> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        entries.len(),
        FILES.len(),
        "no temporary files left behind: {entries:?}"
    );

    // Without a passphrase (explicit choice) keys are plaintext PKCS#8.
    for f in ["root-key.pem", "intermediate-key.pem"] {
        let text = std::fs::read_to_string(dir.path(f)).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{f}");
    }
    // The bundle starts as the root; the intermediate is the loaded authority.
    assert_eq!(
        std::fs::read(dir.path("trust-bundle.pem")).unwrap(),
        std::fs::read(dir.path("root.pem")).unwrap()
    );
    assert_eq!(
        cert(&dir.path("intermediate.pem")),
        authority.intermediate().to_vec()
    );
    assert_eq!(authority.trust_domain().as_str(), TD);
    dir.check_bundle().unwrap();

    let root_der = cert(&dir.path("root.pem"));
    let int_der = cert(&dir.path("intermediate.pem"));
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    let (_, int) = X509Certificate::from_der(&int_der).unwrap();
    assert_eq!(
        root.basic_constraints()
            .unwrap()
            .unwrap()
            .value
            .path_len_constraint,
        Some(1)
    );
    assert_eq!(
        int.basic_constraints()
            .unwrap()
            .unwrap()
            .value
            .path_len_constraint,
        Some(0)
    );
    let days = |c: &X509Certificate| {
        (c.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days()
    };
    assert!(
        (3648..=3650).contains(&days(&root)),
        "root lasts {} days",
        days(&root)
    );
    assert!(
        (363..=365).contains(&days(&int)),
        "intermediate lasts {} days",
        days(&int)
    );
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = new_ca(tmp.path(), TD);
    let before = snapshot(tmp.path());
    let err = dir
        .init(&init_options(TD, None, false), OffsetDateTime::now_utc())
        .unwrap_err();
    match &err {
        StoreError::AlreadyExists(path, found) => {
            assert_eq!(path, tmp.path());
            assert!(FILES.contains(found), "{found}");
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(
        snapshot(tmp.path()),
        before,
        "a refused init changes nothing"
    );

    // A single leftover file is enough to refuse.
    let tmp2 = tempfile::tempdir().unwrap();
    std::fs::write(tmp2.path().join("intermediate-key.pem"), "x").unwrap();
    let err = CaDir::new(tmp2.path())
        .init(&init_options(TD, None, false), OffsetDateTime::now_utc())
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(_, "intermediate-key.pem")),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read(tmp2.path().join("intermediate-key.pem")).unwrap(),
        b"x"
    );

    // --force replaces every file with a new, loadable CA.
    dir.init(&init_options(TD, None, true), OffsetDateTime::now_utc())
        .unwrap();
    let after = snapshot(tmp.path());
    for f in FILES {
        assert_ne!(after[f], before[f], "{f} was not replaced");
        let mode = std::fs::metadata(dir.path(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let authority = dir.load(None, OffsetDateTime::now_utc()).unwrap();
    assert_eq!(
        authority.intermediate().to_vec(),
        cert(&dir.path("intermediate.pem"))
    );
    dir.check_bundle().unwrap();
}

#[test]
fn passphrase_encrypts_keys_at_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CaDir::new(tmp.path());
    let now = OffsetDateTime::now_utc();
    dir.init(&init_options(TD, Some(pass(PASS)), false), now)
        .unwrap();
    for f in ["root-key.pem", "intermediate-key.pem"] {
        let text = std::fs::read_to_string(dir.path(f)).unwrap();
        assert!(
            text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{f}: {text}"
        );
        assert!(!text.contains("BEGIN PRIVATE KEY"), "{f}");
    }

    let authority = dir.load(Some(&pass(PASS)), now).unwrap();
    assert_eq!(
        authority.intermediate().to_vec(),
        cert(&dir.path("intermediate.pem"))
    );
    // Trailing newlines (from a passphrase file) are not part of it.
    dir.load(Some(&pass(&format!("{PASS}\n"))), now).unwrap();

    let key_path = dir.path("intermediate-key.pem");
    match dir.load(Some(&pass("wrong passphrase")), now) {
        Err(StoreError::Key {
            path,
            error: KeyError::WrongPassphrase,
        }) => assert_eq!(path, key_path),
        other => panic!("expected WrongPassphrase, got {other:?}"),
    }
    match dir.load(None, now) {
        Err(StoreError::Key {
            path,
            error: KeyError::PassphraseRequired,
        }) => assert_eq!(path, key_path),
        other => panic!("expected PassphraseRequired, got {other:?}"),
    }
}

#[test]
fn load_refuses_key_that_does_not_match_intermediate() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = new_ca(tmp.path(), TD);
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path("intermediate-key.pem"), other.serialize_pem()).unwrap();
    let result = dir.load(None, OffsetDateTime::now_utc());
    expect_bad_certificate(
        result,
        &dir.path("intermediate.pem"),
        "does not match the key",
    );
    let message = dir
        .load(None, OffsetDateTime::now_utc())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("intermediate-key.pem"),
        "the message names the key file: {message}"
    );
}

#[test]
fn load_refuses_intermediate_not_signed_by_root() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = new_ca(tmp.path(), TD);
    let other_tmp = tempfile::tempdir().unwrap();
    let (other, _) = new_ca(other_tmp.path(), TD);
    // A consistent intermediate + key pair, but from another root.
    for f in ["intermediate.pem", "intermediate-key.pem"] {
        std::fs::copy(other.path(f), dir.path(f)).unwrap();
    }
    let result = dir.load(None, OffsetDateTime::now_utc());
    expect_bad_certificate(result, &dir.path("intermediate.pem"), "is not signed by");

    // Same the other way round: root.pem replaced.
    let (dir2_tmp, other2_tmp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (dir2, _) = new_ca(dir2_tmp.path(), TD);
    let (other2, _) = new_ca(other2_tmp.path(), TD);
    std::fs::copy(other2.path("root.pem"), dir2.path("root.pem")).unwrap();
    let result = dir2.load(None, OffsetDateTime::now_utc());
    expect_bad_certificate(result, &dir2.path("intermediate.pem"), "is not signed by");
}

#[test]
fn load_refuses_expired_intermediate() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = new_ca(tmp.path(), TD);
    let later = OffsetDateTime::now_utc() + time::Duration::days(366);
    expect_bad_certificate(
        dir.load(None, later),
        &dir.path("intermediate.pem"),
        "expired",
    );
}

/// `load` promises an intermediate "valid at `now`": one whose validity has
/// not started yet (a CA made on a host whose clock ran ahead) must be
/// refused too, or every SVID it signs starts in the future.
#[test]
fn load_refuses_not_yet_valid_intermediate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CaDir::new(tmp.path());
    let now = OffsetDateTime::now_utc();
    dir.init(
        &init_options(TD, None, false),
        now + time::Duration::days(2),
    )
    .unwrap();
    let result = dir.load(None, now);
    assert!(
        matches!(result, Err(StoreError::BadCertificate { .. })),
        "an intermediate valid only from {} was loaded at {now}: {result:?}",
        now + time::Duration::days(2) - time::Duration::minutes(5)
    );
}

#[test]
fn check_bundle_requires_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = new_ca(tmp.path(), TD);
    assert_eq!(dir.check_bundle().unwrap().roots().len(), 1);

    let other_tmp = tempfile::tempdir().unwrap();
    let (other, _) = new_ca(other_tmp.path(), TD);
    // Rotation in progress: both roots present is fine.
    let mut both = std::fs::read(dir.path("root.pem")).unwrap();
    both.extend(std::fs::read(other.path("root.pem")).unwrap());
    std::fs::write(dir.path("trust-bundle.pem"), &both).unwrap();
    assert_eq!(dir.check_bundle().unwrap().roots().len(), 2);

    // Only the other root: every SVID would be untrusted.
    std::fs::copy(other.path("root.pem"), dir.path("trust-bundle.pem")).unwrap();
    expect_bad_certificate(
        dir.check_bundle(),
        &dir.path("trust-bundle.pem"),
        "does not contain",
    );
}

/// keys.rs promises the encrypted keys are "the format `openssl pkey` reads,
/// so operators can inspect and back up keys with standard tools".
#[tokio::test]
async fn encrypted_keys_open_with_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CaDir::new(tmp.path());
    dir.init(
        &init_options(TD, Some(pass(PASS)), false),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    // Standard tools read the keys with the passphrase, and not without.
    for f in ["intermediate-key.pem", "root-key.pem"] {
        let passin = format!("pass:{PASS}");
        let Some((ok, out)) = openssl(
            tmp.path(),
            &["pkey", "-in", f, "-passin", &passin, "-noout"],
        )
        .await
        else {
            return;
        };
        assert!(ok, "openssl pkey {f}: {out}");
        let (ok, _) = openssl(
            tmp.path(),
            &["pkey", "-in", f, "-passin", "pass:nope", "-noout"],
        )
        .await
        .unwrap();
        assert!(!ok, "openssl decrypted {f} with a wrong passphrase");
    }
}

//! deploy/image: the Dockerfile pins every base by digest, copies what the
//! workspace needs and nothing its ignore file hides, and ends as a
//! non-root user with no shell; its iptables layer carries every tool
//! `ward init` runs. No image is built here (no Docker engine, no
//! registry): instead, as root, the iptables layer's own script assembles a
//! root filesystem on this Debian 12 host, glibc is added as distroless/cc
//! would, and `ward init` programs a fresh network namespace from inside it,
//! with either backend.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ward::intercept::{Backend, Family};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap()
}

fn is_digest_pinned(image: &str) -> bool {
    image
        .split_once("@sha256:")
        .is_some_and(|(_, d)| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Instructions (continuation lines joined), without comments.
fn instructions(dockerfile: &str) -> Vec<String> {
    let joined = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn the_dockerfile_pins_its_bases_and_ends_unprivileged_without_a_shell() {
    let text = read("deploy/image/Dockerfile");
    let syntax = text.lines().next().unwrap();
    assert!(
        syntax.starts_with("# syntax=") && is_digest_pinned(syntax),
        "{syntax}"
    );
    let steps = instructions(&text);
    let froms: Vec<usize> = (0..steps.len())
        .filter(|&i| steps[i].starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 3, "build, iptables, runtime");
    // The digests were not resolved here: deploy/README.md says how to
    // resolve each one before a release.
    let readme = read("deploy/README.md");
    let pinned = froms
        .iter()
        .map(|&i| steps[i].split_whitespace().nth(1).unwrap())
        .chain([&syntax["# syntax=".len()..]]);
    for image in pinned {
        assert!(is_digest_pinned(image), "not pinned: {image}");
        let tag = image.split_once('@').unwrap().0;
        assert!(readme.contains(&format!("crane digest {tag}\n")), "{tag}");
    }
    let last = &steps[*froms.last().unwrap()..];
    assert!(
        last[0].starts_with("FROM gcr.io/distroless/cc-debian12:nonroot@"),
        "{}",
        last[0]
    );
    assert!(
        !last.iter().any(|s| s.starts_with("RUN ")),
        "the runtime has no shell to RUN with"
    );
    let user = last.iter().rev().find(|s| s.starts_with("USER ")).unwrap();
    let uid: u32 = user[5..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    assert!(uid > 0, "{user}");
    assert!(last.contains(&"ENTRYPOINT [\"/usr/local/bin/ward\"]".to_string()));
    assert!(
        text.contains("install -D -m 0755 target/release/ward /out/usr/local/bin/ward"),
        "the build stage puts ward where ENTRYPOINT and PATH find it"
    );

    // Every COPY from the context exists and is let through the ignore file.
    let ignore = read("deploy/image/Dockerfile.dockerignore");
    let allowed: Vec<&str> = ignore.lines().filter_map(|l| l.strip_prefix('!')).collect();
    let copied: Vec<&str> = steps
        .iter()
        .filter(|s| s.starts_with("COPY ") && !s.contains("--from="))
        .flat_map(|s| {
            let words: Vec<&str> = s.split_whitespace().collect();
            words[1..words.len() - 1].to_vec()
        })
        .collect();
    for src in &copied {
        assert!(repo().join(src).exists(), "COPY {src}: no such path");
        assert!(
            allowed.contains(src),
            "COPY {src} is excluded by the ignore file"
        );
    }
    // The workspace's members, and the benches cargo reads the manifest's
    // [[bench]] targets from, are copied.
    let manifest = read("Cargo.toml");
    let members = manifest
        .lines()
        .find(|l| l.starts_with("members = "))
        .unwrap();
    let members = members.split('"').skip(1).step_by(2);
    for dir in members.chain(["src", "benches"]) {
        let dir = format!("{dir}/");
        assert!(copied.contains(&dir.as_str()), "the build lacks {dir}");
    }
}

fn script_tools() -> BTreeSet<String> {
    let script = read("deploy/image/iptables-rootfs.sh");
    let list = script.split("tools=\"").nth(1).unwrap();
    let list = &list[..list.find('"').unwrap()];
    list.split_whitespace().map(String::from).collect()
}

#[test]
fn the_image_gets_every_iptables_tool_ward_init_runs() {
    let mut wanted = BTreeSet::new();
    for backend in [Backend::Nft, Backend::Legacy] {
        for family in [Family::V4, Family::V6] {
            for verb in ["save", "restore"] {
                wanted.insert(backend.tool(family, verb));
            }
        }
    }
    assert_eq!(script_tools(), wanted);
}

/// Why `ward init` cannot be run in a chroot here, if it cannot.
fn unavailable() -> Option<String> {
    if let Err(reason) = ward::pods::availability() {
        return Some(reason);
    }
    for tool in ["unshare", "chroot", "ldd", "sh", "mknod"] {
        if ward::intercept::backend::find_tool(tool).is_none() {
            return Some(format!("{tool} is not installed"));
        }
    }
    for tool in script_tools() {
        if ward::intercept::backend::find_tool(&tool).is_none() {
            return Some(format!(
                "{tool} is not installed (apt-get install iptables)"
            ));
        }
    }
    None
}

/// Copies the glibc and libgcc files `elf` links (what distroless/cc has)
/// into `root`, at their real paths and under the names `ldd` shows.
fn add_base_libraries(root: &Path, elf: &Path) {
    let out = Command::new("ldd").arg(elf).output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        let Some(path) = path else { continue };
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let base = [
            "libc.so",
            "libm.so",
            "libgcc_s.so",
            "ld-linux",
            "libdl.so",
            "libpthread.so",
            "librt.so",
        ];
        if !base.iter().any(|b| name.starts_with(b)) {
            continue;
        }
        for at in [
            path.clone(),
            std::fs::canonicalize(&path).unwrap().with_file_name(&name),
        ] {
            let dest = root.join(at.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

#[test]
fn ward_init_programs_a_namespace_with_only_the_image_iptables() {
    if let Some(reason) = unavailable() {
        if std::env::var_os("WARD_REQUIRE_NETNS").is_some_and(|v| v == "1") {
            panic!("WARD_REQUIRE_NETNS=1 but {reason}");
        }
        eprintln!("skipping: {reason}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    let script = repo().join("deploy/image/iptables-rootfs.sh");
    let out = Command::new("sh").arg(&script).arg(&root).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ward = root.join("usr/local/bin/ward");
    std::fs::create_dir_all(ward.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_ward"), &ward).unwrap();
    for multi in ["xtables-nft-multi", "xtables-legacy-multi"] {
        add_base_libraries(&root, &root.join("usr/sbin").join(multi));
    }
    add_base_libraries(&root, &ward);
    // The pod mounts an emptyDir at /run for the xtables lock, and the
    // runtime gives every container /dev/null (ward runs the tools with it).
    std::fs::create_dir_all(root.join("run")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let null = root.join("dev/null");
    let mknod = Command::new("mknod")
        .arg(&null)
        .args(["-m", "666", "c", "1", "3"])
        .status();
    assert!(mknod.unwrap().success(), "mknod {}", null.display());

    for backend in ["nft", "legacy"] {
        // One new network namespace for both commands; nothing else is touched.
        let r = root.display();
        let script = format!(
            "chroot {r} /usr/local/bin/ward init --backend {backend} --ipv6 on >&2 && \
             chroot {r} /usr/sbin/iptables-{backend}-save -t nat && \
             chroot {r} /usr/sbin/ip6tables-{backend}-save -t nat"
        );
        let out = Command::new("unshare")
            .args(["--net", "--", "sh", "-c", &script])
            .env("PATH", "/usr/local/bin:/usr/sbin:/usr/bin")
            .output()
            .unwrap();
        let saved = String::from_utf8_lossy(&out.stdout);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{backend}: {log}");
        let exempt = "-A WARD_OUTPUT -m owner --uid-owner 1337 -j RETURN";
        assert_eq!(
            saved.matches(exempt).count(),
            2,
            "{backend}, IPv4 and IPv6:\n{saved}\n{log}"
        );
        assert!(saved.contains("--to-ports 15006"), "{backend}:\n{saved}");
    }
}

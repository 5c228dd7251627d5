//! `ward inject`: read Kubernetes manifests from a file or stdin, add ward's
//! sidecar to every workload, print them. The injection itself is
//! `ward::inject` (shared with the admission webhook, `ward injector`); this file
//! reads, writes and reports.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use ward::inject::manifests::{self, MAX_INPUT_BYTES};
use ward::inject::{
    Config, DEFAULT_AUDIENCE, DEFAULT_CA_URL, DEFAULT_EGRESS, DEFAULT_IMAGE, DEFAULT_TRUST_DOMAIN,
};
use ward_proxy::settings::Egress;

use super::proxy::egress_parser;

#[derive(Args)]
pub struct InjectArgs {
    /// The manifests (YAML, several documents allowed); `-` reads stdin.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    pub file: PathBuf,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// What the injected containers are told; shared by `ward inject` and
/// `ward injector` so both inject the same way from the same flags.
#[derive(Args)]
pub struct SettingsArgs {
    /// The image both injected containers run.
    #[arg(long, env = "WARD_INJECT_IMAGE", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Trust domain of the identities: spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>.
    #[arg(long, env = "WARD_INJECT_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The URL the proxies reach ward's CA at.
    #[arg(long, env = "WARD_INJECT_CA_URL", default_value = DEFAULT_CA_URL)]
    pub ca_url: String,
    /// Audience of the projected ServiceAccount token the proxy presents to the CA.
    #[arg(long, env = "WARD_INJECT_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub audience: String,
    /// The injected proxy's --egress (destinations outside the mesh file);
    /// a pod's `ward.dev/egress` annotation overrides it.
    #[arg(
        long,
        env = "WARD_INJECT_EGRESS",
        default_value = DEFAULT_EGRESS.as_str(),
        value_parser = egress_parser()
    )]
    pub egress: Egress,
}

impl SettingsArgs {
    /// The checked injection settings.
    pub fn config(&self) -> Result<Config> {
        Ok(Config::new(
            &self.image,
            &self.trust_domain,
            &self.ca_url,
            &self.audience,
            self.egress,
        )?)
    }
}

pub fn run(args: InjectArgs) -> Result<()> {
    let config = args.settings.config()?;
    let stdin = args.file.as_os_str() == "-";
    let source = if stdin {
        "stdin".to_string()
    } else {
        args.file.display().to_string()
    };
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_INPUT_BYTES + 1).unwrap_or(u64::MAX);
    let read = if stdin {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(&args.file).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    read.with_context(|| format!("cannot read {source}"))?;
    if bytes.len() > MAX_INPUT_BYTES {
        bail!("{source} is larger than {MAX_INPUT_BYTES} bytes; split it");
    }
    let text = String::from_utf8(bytes).with_context(|| format!("{source} is not UTF-8"))?;
    let injected = manifests::inject_manifests(&config, &text).with_context(|| source.clone())?;
    for note in &injected.notes {
        let level = if note.warning { "warning: " } else { "" };
        eprintln!(
            "ward inject: {level}{source}: {}: {}: {}",
            note.place, note.object, note.message
        );
    }
    print!("{}", injected.yaml);
    Ok(())
}

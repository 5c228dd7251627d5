//! `ward ca init|token|serve|bundle`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use ward_ca::audit::AuditLog;
use ward_ca::auth::{Authenticator, ByForm};
use ward_ca::authority::Authority;
use ward_ca::keys::Passphrase;
use ward_ca::kubernetes::{ReviewSettings, TokenReviewer};
use ward_ca::metrics::CaMetrics;
use ward_ca::server::{CaServer, Limits};
use ward_ca::service::SvidService;
use ward_ca::store::{CaDir, InitOptions};
use ward_ca::token::{self, JoinTokens};
use ward_config::{SpiffeId, TrustDomain, parse_duration};

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create a root and an intermediate CA in DIR (keys encrypted at rest).
    Init(InitArgs),
    /// Print a join token bound to one SPIFFE ID.
    Token(TokenArgs),
    /// Serve the HTTPS issuance API.
    Serve(ServeArgs),
    /// Print the trust bundle (PEM, or the SPIFFE JSON bundle with --json).
    Bundle(BundleArgs),
}

#[derive(Args)]
pub struct DirArg {
    /// The CA directory.
    #[arg(long, env = "WARD_CA_DIR")]
    pub dir: PathBuf,
}

#[derive(Args)]
pub struct PassphraseArgs {
    /// File holding the key passphrase (else the WARD_CA_PASSPHRASE variable).
    #[arg(long, env = "WARD_CA_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
}

impl PassphraseArgs {
    /// The passphrase from the file or WARD_CA_PASSPHRASE, if either is set.
    pub fn read(&self) -> Result<Option<Passphrase>> {
        let text = match &self.passphrase_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the passphrase file {}", path.display()))?,
            None => match std::env::var("WARD_CA_PASSPHRASE") {
                Ok(text) => text,
                Err(_) => return Ok(None),
            },
        };
        Ok(Some(Passphrase::new(text)?))
    }
}

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// The SPIFFE trust domain, e.g. cluster.local.
    #[arg(long, env = "WARD_TRUST_DOMAIN")]
    pub trust_domain: String,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    /// Write the private keys unencrypted (for throwaway CAs only).
    #[arg(long)]
    pub insecure_plaintext_key: bool,
    /// Replace an existing CA in DIR (every SVID it issued stops verifying).
    #[arg(long)]
    pub force: bool,
    /// Lifetime of the root CA.
    #[arg(long, default_value = "3650d")]
    pub root_ttl: String,
    /// Lifetime of the intermediate (signing) CA.
    #[arg(long, default_value = "365d")]
    pub intermediate_ttl: String,
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub dir: DirArg,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    /// The SPIFFE ID the token authorizes, spiffe://TD/ns/NS/sa/SA.
    #[arg(long)]
    pub identity: String,
    /// How long the token stays valid.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub dir: DirArg,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    /// Address to listen on.
    #[arg(long, env = "WARD_CA_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Names (DNS or IP) of the serving certificate; repeat for several.
    #[arg(long = "san", env = "WARD_CA_SANS", value_delimiter = ',', default_values = ["localhost", "127.0.0.1", "::1"])]
    pub sans: Vec<String>,
    /// Lifetime of issued SVIDs (capped by the intermediate's expiry).
    #[arg(long, env = "WARD_CA_SVID_TTL", default_value = "24h")]
    pub svid_ttl: String,
    /// Append one JSON audit line per decision to this file.
    #[arg(long, env = "WARD_CA_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Also write audit lines to stdout.
    #[arg(long, env = "WARD_CA_AUDIT_STDOUT")]
    pub audit_stdout: bool,
    /// Credentials accepted: join tokens (`ward ca token`), Kubernetes
    /// ServiceAccount tokens checked with the TokenReview API, or both.
    #[arg(long, env = "WARD_CA_AUTHENTICATOR", value_enum, value_delimiter = ',', default_values = ["join-token"])]
    pub authenticator: Vec<AuthenticatorKind>,
    /// The audience ServiceAccount tokens must be minted for (the injected
    /// pods' projected token uses `ward`).
    #[arg(long, env = "WARD_CA_TOKEN_AUDIENCE", default_value = "ward")]
    pub token_audience: String,
    /// Also accept ServiceAccount tokens the API server does not tie to a
    /// pod (e.g. `kubectl create token`; clusters before 1.30 report none).
    #[arg(long, env = "WARD_CA_ALLOW_TOKENS_WITHOUT_POD")]
    pub allow_tokens_without_pod: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthenticatorKind {
    JoinToken,
    Kubernetes,
}

#[derive(Args)]
pub struct BundleArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// Print the SPIFFE bundle (JWK Set) instead of PEM.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(command: CaCommand) -> Result<()> {
    match command {
        CaCommand::Init(args) => init(args),
        CaCommand::Token(args) => token(args),
        CaCommand::Serve(args) => serve(args).await,
        CaCommand::Bundle(args) => bundle(args),
    }
}

fn init(args: InitArgs) -> Result<()> {
    let passphrase = args.passphrase.read()?;
    let passphrase = match (passphrase, args.insecure_plaintext_key) {
        (Some(_), true) => bail!("give either a passphrase or --insecure-plaintext-key, not both"),
        (None, false) => bail!(
            "the CA keys must be encrypted: give --passphrase-file FILE or set WARD_CA_PASSPHRASE \
             (or, for a throwaway CA, --insecure-plaintext-key)"
        ),
        (p, _) => p,
    };
    let opts = InitOptions {
        trust_domain: TrustDomain::new(&args.trust_domain)?,
        passphrase,
        force: args.force,
        root_ttl: parse_duration(&args.root_ttl).context("--root-ttl")?,
        intermediate_ttl: parse_duration(&args.intermediate_ttl).context("--intermediate-ttl")?,
    };
    if opts.intermediate_ttl < Duration::from_secs(86_400) || opts.root_ttl < opts.intermediate_ttl
    {
        bail!("lifetimes must satisfy 1d <= --intermediate-ttl <= --root-ttl");
    }
    let dir = CaDir::new(&args.dir.dir);
    dir.init(&opts, OffsetDateTime::now_utc())?;
    println!(
        "created CA for trust domain {} in {}",
        opts.trust_domain,
        args.dir.dir.display()
    );
    println!(
        "  trust bundle: {}",
        dir.path(ward_ca::store::TRUST_BUNDLE).display()
    );
    if opts.passphrase.is_none() {
        println!("  WARNING: keys are stored unencrypted");
    }
    Ok(())
}

fn token(args: TokenArgs) -> Result<()> {
    let authority = CaDir::new(&args.dir.dir)
        .load(args.passphrase.read()?.as_ref(), OffsetDateTime::now_utc())?;
    let identity = SpiffeId::parse(&args.identity)?;
    let ttl = parse_duration(&args.ttl).context("--ttl")?;
    let (token, claims) = token::mint(&authority, &identity, ttl, OffsetDateTime::now_utc())?;
    let expires = OffsetDateTime::from_unix_timestamp(claims.exp)?.format(&Rfc3339)?;
    eprintln!(
        "token {} for {} expires at {expires}",
        claims.jti, claims.sub
    );
    println!("{token}");
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    super::raise_open_files_limit();
    let dir = CaDir::new(&args.dir.dir);
    let authority = dir.load(args.passphrase.read()?.as_ref(), OffsetDateTime::now_utc())?;
    dir.check_bundle()?;
    let svid_ttl = parse_duration(&args.svid_ttl).context("--svid-ttl")?;
    if !(Duration::from_secs(60)..=Duration::from_secs(30 * 86_400)).contains(&svid_ttl) {
        bail!("--svid-ttl must be between 1m and 30d (SVIDs are meant to be short-lived)");
    }
    let audit = AuditLog::open(args.audit_log.as_deref(), args.audit_stdout)
        .with_context(|| format!("cannot open the audit log {:?}", args.audit_log))?;
    let metrics = CaMetrics::new();
    let authenticator = authenticator(&args, &authority, &metrics).await?;
    let service = Arc::new(SvidService {
        authenticator,
        authority: Arc::new(authority),
        audit,
        metrics,
        svid_ttl,
    });
    let td = service.authority.trust_domain().clone();
    let server = CaServer::bind(args.listen, args.sans, service, dir, Limits::default()).await?;
    tracing::info!(listen = %server.local_addr()?, trust_domain = %td, "CA serving");
    server.run(shutdown_signal()).await;
    tracing::info!("CA stopped");
    Ok(())
}

/// The enabled checkers behind one `ByForm`: the credential's form picks.
async fn authenticator(
    args: &ServeArgs,
    authority: &Authority,
    metrics: &CaMetrics,
) -> Result<Arc<dyn Authenticator>> {
    let join_tokens = args
        .authenticator
        .contains(&AuthenticatorKind::JoinToken)
        .then(|| Box::new(JoinTokens::new(authority)) as Box<dyn Authenticator>);
    let kubernetes = if args.authenticator.contains(&AuthenticatorKind::Kubernetes) {
        let audience = args.token_audience.trim();
        if audience.is_empty() || audience.len() > 253 {
            bail!("--token-audience must be 1-253 characters, e.g. ward");
        }
        let config = kube::Config::infer().await.context(
            "--authenticator kubernetes needs the Kubernetes API: run in a pod (its ServiceAccount) \
             or set KUBECONFIG",
        )?;
        tracing::info!(api = %config.cluster_url, audience, "checking ServiceAccount tokens with TokenReview");
        let client =
            kube::Client::try_from(config).context("cannot build the Kubernetes client")?;
        let settings = ReviewSettings {
            require_pod: !args.allow_tokens_without_pod,
            ..ReviewSettings::new(audience)
        };
        let reviewer =
            TokenReviewer::new(client, settings, authority.trust_domain().clone(), metrics);
        Some(Box::new(reviewer) as Box<dyn Authenticator>)
    } else {
        None
    };
    Ok(Arc::new(ByForm {
        join_tokens,
        kubernetes,
    }))
}

fn bundle(args: BundleArgs) -> Result<()> {
    let (bundle, sequence) = CaDir::new(&args.dir.dir).load_bundle()?;
    if args.json {
        let doc = bundle.to_spiffe_json(sequence, Duration::from_secs(300));
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", bundle.to_pem());
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

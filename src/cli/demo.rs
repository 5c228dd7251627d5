//! `ward demo`: the product end to end on this machine, with nothing to set
//! up. Today it exercises the CA the way sidecars will: it creates a CA with
//! encrypted keys, serves the issuance API on loopback, has two workloads
//! (`web`, `orders`) obtain SVIDs with join tokens, shows the requests the CA
//! must refuse, and runs a mutual-TLS handshake between the two SVIDs with
//! ward's SPIFFE verifiers. Every step is checked: the command exits non-zero
//! if anything behaved differently from what the design says.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Args;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use ward_ca::audit::AuditLog;
use ward_ca::keys::Passphrase;
use ward_ca::metrics::CaMetrics;
use ward_ca::server::{CaServer, Limits};
use ward_ca::service::SvidService;
use ward_ca::store::{CaDir, InitOptions};
use ward_ca::token::{self, JoinTokens};
use ward_config::{SpiffeId, TrustDomain};
use ward_proxy::identity::csr::new_key_and_csr;
use ward_proxy::identity::{CaClient, CaClientError, Svid};
use ward_proxy::tls::config::{client_config, server_config};
use ward_proxy::tls::roots::roots_from_pem;
use ward_proxy::tls::{peer_id, svid_rejection};

const TRUST_DOMAIN: &str = "demo.ward";

#[derive(Args)]
pub struct DemoArgs {
    /// Run the scenario once, print the summary and exit (0 only if every
    /// step behaved as designed). Without it the CA keeps serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    // A fresh 0700 directory, removed when the demo ends (also on error).
    let workdir = tempfile::Builder::new().prefix("ward-demo-").tempdir()?;
    scenario(workdir.path(), args.once).await
}

async fn scenario(workdir: &Path, once: bool) -> Result<()> {
    println!("ward demo: certificate authority and workload identities, on 127.0.0.1\n");
    let td = TrustDomain::new(TRUST_DOMAIN)?;
    let dir = CaDir::new(workdir.join("ca"));
    let passphrase = random_passphrase()?;
    let now = OffsetDateTime::now_utc();
    dir.init(
        &InitOptions {
            trust_domain: td.clone(),
            passphrase: Some(Passphrase::new(passphrase.clone())?),
            force: false,
            root_ttl: Duration::from_secs(3650 * 86_400),
            intermediate_ttl: Duration::from_secs(365 * 86_400),
        },
        now,
    )?;
    let authority = dir.load(Some(&Passphrase::new(passphrase)?), now)?;
    step(
        "CA created",
        &format!(
            "root + intermediate for {td}, keys encrypted at rest in {}",
            dir.path("").display()
        ),
    );

    let audit_path = workdir.join("audit.log");
    let service = Arc::new(SvidService {
        authenticator: Arc::new(JoinTokens::new(&authority)),
        authority: Arc::new(authority),
        audit: AuditLog::open(Some(&audit_path), false)?,
        metrics: CaMetrics::new(),
        svid_ttl: Duration::from_secs(24 * 3600),
    });
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server = CaServer::bind(
        listen,
        vec!["127.0.0.1".into()],
        service.clone(),
        dir.clone(),
        Limits::default(),
    )
    .await?;
    let url = format!("https://{}", server.local_addr()?);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    step(
        "CA serving",
        &format!("{url} (POST /v1/svid, GET /v1/bundle, /metrics)"),
    );

    let bundle_pem = dir.load_bundle()?.0.to_pem();
    let client = CaClient::new(&url, &bundle_pem)?;
    let web_id = td.workload("shop", "web")?;
    let orders_id = td.workload("shop", "orders")?;
    let db_id = td.workload("shop", "db")?;

    let web = obtain(&client, &service, &web_id).await?;
    let orders = obtain(&client, &service, &orders_id).await?;

    // Requests the CA must refuse.
    let (web_token, _) = token::mint(
        &service.authority,
        &web_id,
        Duration::from_secs(600),
        OffsetDateTime::now_utc(),
    )?;
    let (_, db_csr) = new_key_and_csr(&db_id)?;
    expect_refusal(
        "web's token, CSR asking for db",
        client.request_svid(&web_token, &db_csr).await,
        "identity_mismatch",
    )?;
    let (_, web_csr) = new_key_and_csr(&web_id)?;
    let past = OffsetDateTime::now_utc() - time::Duration::hours(2);
    let (expired, _) = token::mint(&service.authority, &web_id, Duration::from_secs(3600), past)?;
    expect_refusal(
        "an expired token",
        client.request_svid(&expired, &web_csr).await,
        "token_expired",
    )?;
    expect_refusal(
        "no credential at all",
        client.request_svid("", &web_csr).await,
        "malformed_authorization",
    )?;

    // Mutual TLS between the two SVIDs, with ward's SPIFFE verifiers.
    let roots = Arc::new(roots_from_pem(&bundle_pem)?);
    let seen = handshake(&web, &orders, roots.clone(), &td, orders_id.clone()).await?;
    ensure!(seen == web_id, "orders saw {seen}, expected {web_id}");
    step(
        "mTLS web -> orders",
        &format!("TLS 1.3 handshake ok; orders authenticated the caller as {seen}"),
    );
    match handshake(&web, &orders, roots, &td, db_id.clone()).await {
        Ok(_) => bail!("web accepted orders' certificate while expecting {db_id}"),
        Err(e) => {
            let rule = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .and_then(svid_rejection)
                .ok_or_else(|| {
                    anyhow!(
                        "the handshake failed for another reason than the identity check: {e:#}"
                    )
                })?;
            step(
                "mTLS web -> \"db\"",
                &format!("refused as designed: {rule}"),
            );
        }
    }

    let metrics = service.metrics.render(service.authority.not_after());
    println!("\nCA metrics (excerpt):");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("ward_ca_svid") || l.starts_with("ward_ca_intermediate"))
    {
        println!("  {line}");
    }
    let audit_lines = std::fs::read_to_string(&audit_path)?.lines().count();
    ensure!(
        audit_lines == 5,
        "expected 5 audit lines (2 issued, 3 denied), found {audit_lines}"
    );
    println!("\naudit log: {audit_lines} JSON lines (2 issued, 3 denied)");
    println!("demo: every step behaved as designed");

    if !once {
        println!("\nThe CA keeps serving at {url}; press Ctrl-C to stop and clean up.");
        crate::cli::ca::shutdown_signal().await;
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    Ok(())
}

fn step(what: &str, detail: &str) {
    println!("  {what:<22} {detail}");
}

/// Mints a token, generates a key in memory, requests and installs an SVID.
async fn obtain(client: &CaClient, service: &SvidService, id: &SpiffeId) -> Result<Svid> {
    let (token, _) = token::mint(
        &service.authority,
        id,
        Duration::from_secs(600),
        OffsetDateTime::now_utc(),
    )?;
    let (key, csr) = new_key_and_csr(id)?;
    let chain = client.request_svid(&token, &csr).await?;
    let svid = Svid::install(&key, &chain, id)?;
    let until = svid.not_after.format(&Rfc3339)?;
    step("SVID issued", &format!("{} (valid until {until})", svid.id));
    Ok(svid)
}

fn expect_refusal(what: &str, result: Result<String, CaClientError>, reason: &str) -> Result<()> {
    match result {
        Err(CaClientError::Refused {
            status,
            reason: got,
            ..
        }) if got == reason => {
            step("refused", &format!("{what}: {status} {got}"));
            Ok(())
        }
        Err(e) => Err(anyhow!("{what}: expected refusal {reason}, got {e}")),
        Ok(_) => Err(anyhow!(
            "{what}: the CA issued a certificate it must refuse"
        )),
    }
}

/// One mTLS exchange on loopback: `client` connects to `server` expecting
/// `expected`; returns the identity the server authenticated.
async fn handshake(
    client: &Svid,
    server: &Svid,
    roots: Arc<RootCertStore>,
    td: &TrustDomain,
    expected: SpiffeId,
) -> Result<SpiffeId> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(
        server.certified.clone(),
    ));
    let acceptor = TlsAcceptor::from(Arc::new(server_config(
        resolver,
        roots.clone(),
        td.clone(),
    )?));
    let td_server = td.clone();
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .context("no client certificate")?;
        let peer = peer_id(&leaf, &td_server)?;
        tls.write_all(b"hello").await?;
        tls.shutdown().await?;
        anyhow::Ok(peer)
    });
    let connector = TlsConnector::from(Arc::new(client_config(
        client,
        roots,
        td.clone(),
        expected,
    )?));
    let tcp = TcpStream::connect(addr).await?;
    let exchange = async {
        let mut tls = connector.connect(ServerName::from(addr.ip()), tcp).await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let outcome = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .context("handshake timed out")?;
    let server_side = tokio::time::timeout(Duration::from_secs(5), accept).await;
    let reply = outcome?;
    ensure!(reply == b"hello", "unexpected reply");
    server_side.context("server timed out")??
}

fn random_passphrase() -> Result<String> {
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow!("no randomness"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

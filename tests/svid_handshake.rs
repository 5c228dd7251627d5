//! Mutual TLS between two real SVIDs issued by ward's CA, over loopback TCP,
//! through the proxy's rustls configurations and SPIFFE verifiers.

mod support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use rustls::sign::SingleCertAndKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use ward_config::{SpiffeId, TrustDomain};
use ward_proxy::identity::Svid;
use ward_proxy::tls::config::{MESH_ALPN, client_config, server_config};
use ward_proxy::tls::{ServerSvidVerifier, SvidError, peer_id, svid_rejection};

const DAY: Duration = Duration::from_secs(86_400);

struct Outcome {
    client: Result<(), std::io::Error>,
    /// The identity the server authenticated, or why the server failed.
    server: Result<SpiffeId, String>,
}

/// Runs one exchange: the server presents `server_svid` and trusts
/// `server_roots`; the client presents `client_svid` (if any) and expects
/// `expected`.
async fn exchange(
    server_svid: &Svid,
    server_roots: Arc<RootCertStore>,
    client: rustls::ClientConfig,
    td: &TrustDomain,
) -> Outcome {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let resolver = Arc::new(SingleCertAndKey::from(server_svid.certified.clone()));
    let acceptor = TlsAcceptor::from(Arc::new(
        server_config(resolver, server_roots, td.clone()).unwrap(),
    ));
    let td = td.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(conn.alpn_protocol(), Some(MESH_ALPN));
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no client cert")?;
        let id = peer_id(&leaf, &td).map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(id)
    });
    let connector = TlsConnector::from(Arc::new(client));
    let client = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector.connect(ServerName::from(addr.ip()), tcp).await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        assert_eq!(buf, b"pong");
        Ok(())
    };
    let client = tokio::time::timeout(Duration::from_secs(5), client)
        .await
        .expect("client bounded");
    let server = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server bounded")
        .expect("server task");
    Outcome { client, server }
}

fn rejection(err: &std::io::Error) -> Option<SvidError> {
    let rustls_err = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    svid_rejection(rustls_err).cloned()
}

#[tokio::test]
async fn two_svids_authenticate_each_other() {
    let (_tmp, dir, ca) = support::ca("mesh.test");
    let td = ca.trust_domain().clone();
    let web = td.workload("shop", "web").unwrap();
    let orders = td.workload("shop", "orders").unwrap();
    let web_svid = support::svid(&ca, &web, DAY);
    let orders_svid = support::svid(&ca, &orders, DAY);
    let roots = support::roots(&dir);
    let client = client_config(&web_svid, roots.clone(), td.clone(), orders.clone()).unwrap();
    let out = exchange(&orders_svid, roots, client, &td).await;
    out.client.expect("client side succeeds");
    assert_eq!(out.server.expect("server side succeeds"), web);
}

#[tokio::test]
async fn client_refuses_a_server_with_another_identity() {
    let (_tmp, dir, ca) = support::ca("mesh.test");
    let td = ca.trust_domain().clone();
    let web = support::svid(&ca, &td.workload("shop", "web").unwrap(), DAY);
    let impostor = support::svid(&ca, &td.workload("shop", "cache").unwrap(), DAY);
    let roots = support::roots(&dir);
    let expected = td.workload("shop", "orders").unwrap();
    let client = client_config(&web, roots.clone(), td.clone(), expected).unwrap();
    let out = exchange(&impostor, roots, client, &td).await;
    let err = out.client.expect_err("must refuse the impostor");
    assert!(
        matches!(rejection(&err), Some(SvidError::UnexpectedIdentity { .. })),
        "{err}"
    );
    assert!(out.server.is_err());
}

#[tokio::test]
async fn server_refuses_a_client_from_another_ca() {
    let (_tmp, dir, ca) = support::ca("mesh.test");
    let (_tmp2, _dir2, rogue_ca) = support::ca("mesh.test");
    let td = ca.trust_domain().clone();
    let orders = td.workload("shop", "orders").unwrap();
    let orders_svid = support::svid(&ca, &orders, DAY);
    let rogue = support::svid(&rogue_ca, &td.workload("shop", "web").unwrap(), DAY);
    let roots = support::roots(&dir);
    let client = client_config(&rogue, roots.clone(), td.clone(), orders).unwrap();
    let out = exchange(&orders_svid, roots, client, &td).await;
    let server_err = out.server.expect_err("server must refuse the rogue client");
    // The rogue CA has the same names as ours, so webpki finds an issuer by
    // name and then fails on its signature.
    assert!(
        server_err.contains("BadSignature") || server_err.contains("UnknownIssuer"),
        "{server_err}"
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn server_refuses_a_client_without_certificate() {
    let (_tmp, dir, ca) = support::ca("mesh.test");
    let td = ca.trust_domain().clone();
    let orders = td.workload("shop", "orders").unwrap();
    let orders_svid = support::svid(&ca, &orders, DAY);
    let roots = support::roots(&dir);
    // A client that verifies the server properly but presents no certificate.
    let verifier = ServerSvidVerifier::new(roots.clone(), td.clone(), orders);
    let mut anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(verifier))
    .with_no_client_auth();
    anonymous.alpn_protocols = vec![MESH_ALPN.to_vec()];
    let out = exchange(&orders_svid, roots, anonymous, &td).await;
    let server_err = out.server.expect_err("server must require a certificate");
    assert!(server_err.contains("no certificates"), "{server_err}");
}

#[tokio::test]
async fn client_refuses_a_server_from_another_trust_domain() {
    let (_tmp, dir, ca) = support::ca("mesh.test");
    let (_tmp2, dir2, foreign_ca) = support::ca("other.test");
    let td = ca.trust_domain().clone();
    let web = support::svid(&ca, &td.workload("shop", "web").unwrap(), DAY);
    let foreign_id = foreign_ca
        .trust_domain()
        .workload("shop", "orders")
        .unwrap();
    let foreign = support::svid(&foreign_ca, &foreign_id, DAY);
    // Even if a client trusted both roots, the foreign trust domain is refused.
    let mut both = (*support::roots(&dir)).clone();
    both.roots
        .extend(support::roots(&dir2).roots.iter().cloned());
    let both = Arc::new(both);
    let client = client_config(&web, both.clone(), td.clone(), foreign_id).unwrap();
    let out = exchange(&foreign, both, client, &td).await;
    let err = out.client.expect_err("must refuse a foreign trust domain");
    assert!(
        matches!(rejection(&err), Some(SvidError::ForeignTrustDomain(..))),
        "{err}"
    );
}

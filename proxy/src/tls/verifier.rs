//! rustls verifiers for mutual TLS between sidecars. Both sides first check
//! the chain against the trust bundle with webpki (signatures, validity,
//! CA constraints, key usage), then the SVID rules in [`super::svid`].
//! The client side additionally requires exactly the identity the registry
//! expects for the destination; DNS names play no part.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
};
use ward_config::{SpiffeId, TrustDomain};

use super::svid::{SvidError, peer_id};

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

fn svid_error(e: SvidError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Verifies a server's SVID and that it is exactly `expected`.
#[derive(Debug)]
pub struct ServerSvidVerifier {
    roots: Arc<RootCertStore>,
    trust_domain: TrustDomain,
    expected: SpiffeId,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerSvidVerifier {
    pub fn new(roots: Arc<RootCertStore>, trust_domain: TrustDomain, expected: SpiffeId) -> Self {
        Self {
            roots,
            trust_domain,
            expected,
            algs: algorithms(),
        }
    }
}

impl ServerCertVerifier for ServerSvidVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let id = peer_id(end_entity, &self.trust_domain).map_err(svid_error)?;
        if id != self.expected {
            return Err(svid_error(SvidError::UnexpectedIdentity {
                presented: id.to_string(),
                expected: self.expected.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Requires a client SVID from our trust domain. Which identities may
/// connect is policy's decision, made after the handshake.
#[derive(Debug)]
pub struct ClientSvidVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domain: TrustDomain,
}

impl ClientSvidVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        trust_domain: TrustDomain,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
        Ok(Self {
            chain,
            trust_domain,
        })
    }
}

impl ClientCertVerifier for ClientSvidVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Peers have one identity each; hints would only leak the CA's name.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        peer_id(end_entity, &self.trust_domain).map_err(svid_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

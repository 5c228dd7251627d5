//! A bounded reason for a failed mesh handshake, for
//! `ward_tls_handshake_errors_total{direction,reason}` and the log line.

use std::io;

use rustls::{CertificateError, Error};

use super::svid::svid_rejection;

/// Classifies the error a tokio-rustls accept/connect returned.
pub fn handshake_failure(err: &io::Error) -> &'static str {
    match err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(tls) => tls_failure(tls),
        None if err.kind() == io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}

fn tls_failure(err: &Error) -> &'static str {
    if let Some(svid) = svid_rejection(err) {
        return svid.reason();
    }
    match err {
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "expired_certificate",
        Error::InvalidCertificate(
            CertificateError::UnknownIssuer
            | CertificateError::BadSignature
            | CertificateError::InvalidPurpose,
        ) => "untrusted_certificate",
        Error::InvalidCertificate(_) => "invalid_certificate",
        Error::PeerIncompatible(_) => "incompatible_peer",
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => "not_tls",
        Error::AlertReceived(_) => "peer_refused",
        Error::NoApplicationProtocol => "alpn_mismatch",
        _ => "other",
    }
}

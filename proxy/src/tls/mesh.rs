//! TLS configurations for the current identity. rustls configurations are
//! immutable, so one is built per identity version (SVID or bundle change)
//! and per expected peer, cached, and used for new handshakes; connections
//! already open keep the configuration they started with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, ServerConfig};
use ward_config::SpiffeId;

use super::config::{client_config, server_config};
use crate::identity::{Identity, IdentityManager};

/// No (unexpired) SVID yet, or building the configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum MeshTlsError {
    #[error("the proxy has no valid SVID (not ready)")]
    NoIdentity,
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

pub struct MeshTls {
    identity: Arc<IdentityManager>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// The identity the cached configurations were built from.
    built_for: Option<Arc<Identity>>,
    server: Option<Arc<ServerConfig>>,
    clients: HashMap<SpiffeId, Arc<ClientConfig>>,
}

impl Cache {
    /// Drops everything if the identity changed since it was built.
    fn for_identity(&mut self, identity: &Arc<Identity>) -> &mut Self {
        if !self
            .built_for
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, identity))
        {
            *self = Cache {
                built_for: Some(identity.clone()),
                ..Cache::default()
            };
        }
        self
    }
}

impl MeshTls {
    pub fn new(identity: Arc<IdentityManager>) -> Self {
        Self {
            identity,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Inbound: present our SVID, require a client SVID of our trust domain.
    pub fn server(&self) -> Result<Arc<ServerConfig>, MeshTlsError> {
        let identity = self.identity.current().ok_or(MeshTlsError::NoIdentity)?;
        let mut guard = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let cache = guard.for_identity(&identity);
        if let Some(config) = &cache.server {
            return Ok(config.clone());
        }
        let certs = Arc::new(SingleCertAndKey::from(identity.svid.certified.clone()));
        let config = Arc::new(server_config(
            certs,
            identity.roots.clone(),
            identity.trust_domain.clone(),
        )?);
        cache.server = Some(config.clone());
        Ok(config)
    }

    /// Outbound: present our SVID, accept only a server presenting `expected`.
    pub fn client(&self, expected: &SpiffeId) -> Result<Arc<ClientConfig>, MeshTlsError> {
        let identity = self.identity.current().ok_or(MeshTlsError::NoIdentity)?;
        let mut guard = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let cache = guard.for_identity(&identity);
        if let Some(config) = cache.clients.get(expected) {
            return Ok(config.clone());
        }
        let config = Arc::new(client_config(
            &identity.svid,
            identity.roots.clone(),
            identity.trust_domain.clone(),
            expected.clone(),
        )?);
        cache.clients.insert(expected.clone(), config.clone());
        Ok(config)
    }
}

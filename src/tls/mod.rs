//! TLS for the HTTP server: a certificate and key read from files and read
//! again when they change, as cert-manager or a rotated Secret rewrites them,
//! without a restart. The served certificate's expiry is reported
//! (`kube_node_status_tls_certificate_expiration_timestamp_seconds`).

mod not_after;

use not_after::not_after;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    ServerConfig,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tracing::{info, warn};

use crate::surface::SurfaceStats;

/// The files are looked at no more often than this (a handshake stats them at most once a second).
const RECHECK: Duration = Duration::from_secs(1);

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key does not suit rustls (or the certificate).
    #[error("--tls-key-file {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// What the files looked like when last read: changes are noticed by these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
    })
}

/// Reads and checks a certificate chain and its key.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let file_error = |path: &Path, reason: String| TlsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no PEM certificate in it".into()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
    let signing = ring::sign::any_supported_type(&der).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: format!("does not match the certificate: {e}"),
    })?;
    Ok(certified)
}

/// Serves the certificate in the files, reading them again when they change.
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<State>,
    stats: Arc<SurfaceStats>,
}

struct State {
    current: Arc<CertifiedKey>,
    stamps: (Option<Stamp>, Option<Stamp>),
    checked: Instant,
    /// True while changed files do not load: warned once per streak.
    failing: bool,
}

/// Reports the leaf certificate's expiry.
fn report(stats: &SurfaceStats, key: &CertifiedKey) {
    if let Some(t) = key.cert.first().and_then(|leaf| not_after(leaf)) {
        stats.set_cert_not_after(t);
    }
}

impl fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertFiles {
    /// Reads the files now: an unusable pair is an error here, at start.
    pub fn open(cert: &Path, key: &Path, stats: Arc<SurfaceStats>) -> Result<CertFiles, TlsError> {
        let current = Arc::new(load(cert, key)?);
        report(&stats, &current);
        Ok(CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            state: Mutex::new(State {
                current,
                stamps: (stamp(cert), stamp(key)),
                checked: Instant::now(),
                failing: false,
            }),
            stats,
        })
    }

    /// The certificate to present now. Reads the files again if they changed
    /// since the last look; a pair that does not load (half written, or a key
    /// that no longer matches) keeps the previous one in service.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let stamps = (stamp(&self.cert), stamp(&self.key));
            if stamps == state.stamps && std::mem::replace(&mut state.failing, false) {
                // Back to the pair in service: the next failure starts a new streak.
                info!(cert = %self.cert.display(), "TLS certificate files are back to the pair in service");
            }
            if stamps != state.stamps {
                match load(&self.cert, &self.key) {
                    Ok(fresh) => {
                        report(&self.stats, &fresh);
                        state.current = Arc::new(fresh);
                        state.stamps = stamps;
                        state.failing = false;
                        info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    }
                    // Not recorded as seen: tried again at the next look, when the pair may be complete.
                    Err(e) => {
                        self.stats.cert_reload_failed();
                        if !std::mem::replace(&mut state.failing, true) {
                            warn!(
                                error = %e,
                                "TLS certificate changed but does not load; keeping the previous one until it does \
                                 (kube_node_status_tls_certificate_reload_failures_total counts the tries)"
                            )
                        }
                    }
                }
            }
        }
        state.current.clone()
    }

    /// A rustls server configuration presenting these files' certificate.
    pub fn server_config(self: Arc<Self>) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("a certificate");
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    fn leaf(k: &CertifiedKey) -> Vec<u8> {
        k.cert[0].to_vec()
    }

    #[test]
    fn reloads_a_changed_pair_and_keeps_the_old_one_while_the_new_is_broken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (c1, k1) = pair("one.example");
        std::fs::write(&cert, &c1).expect("write");
        std::fs::write(&key, &k1).expect("write");
        let stats = Arc::new(SurfaceStats::default());
        let files = CertFiles::open(&cert, &key, stats.clone()).expect("loads");
        let first_expiry = stats.cert_not_after().expect("reported");
        let first = leaf(&files.current());

        // A half-rotated pair (new certificate, old key) is not served.
        let (c2, k2) = pair("two.example.org");
        std::fs::write(&cert, &c2).expect("write");
        files.state.lock().expect("lock").checked -= RECHECK;
        assert_eq!(leaf(&files.current()), first);
        // Still failing at the next look: counted again, warned once (not checked here).
        files.state.lock().expect("lock").checked -= RECHECK;
        assert_eq!(leaf(&files.current()), first);
        assert_eq!(stats.cert_reload_failures(), 2);
        assert_eq!(stats.cert_not_after(), Some(first_expiry));
        // Once the key follows, the new pair is.
        std::fs::write(&key, &k2).expect("write");
        files.state.lock().expect("lock").checked -= RECHECK;
        let second = leaf(&files.current());
        assert_ne!(second, first);
        // An emptied file keeps the last good pair.
        std::fs::write(&cert, "").expect("write");
        files.state.lock().expect("lock").checked -= RECHECK;
        assert_eq!(leaf(&files.current()), second);
    }

    #[test]
    fn unusable_files_are_one_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let open = |c: &Path, k: &Path| CertFiles::open(c, k, Arc::default());
        let missing = open(&cert, &key).expect_err("missing");
        assert!(missing.to_string().contains("tls.crt"), "{missing}");
        let (c1, _) = pair("one.example");
        let (_, k2) = pair("two.example");
        std::fs::write(&cert, &c1).expect("write");
        std::fs::write(&key, "not a key").expect("write");
        let bad = open(&cert, &key).expect_err("bad key");
        assert!(bad.to_string().contains("tls.key"), "{bad}");
        std::fs::write(&key, &k2).expect("write");
        let mismatch = open(&cert, &key).expect_err("mismatch");
        assert!(mismatch.to_string().contains("does not match"), "{mismatch}");
    }
}

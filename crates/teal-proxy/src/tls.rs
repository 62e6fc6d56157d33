//! TLS termination: a certificate and its key from PEM files, read again when the
//! files change.
//!
//! The check happens during each handshake (two `stat` calls, next to the handshake's
//! own signature they cost nothing): a changed file is loaded before the handshake goes
//! on, so the first client after a rotation already sees the new certificate, with no
//! timer or task to keep alive. Connections already open are never touched; they keep
//! the session they negotiated.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// Protocols offered in ALPN, preferred first: HTTP/2, then HTTP/1.1.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate and key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The certificate file is not PEM, or holds no `CERTIFICATE` section.
    #[error("{} holds no PEM certificate", path.display())]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What the PEM reader found wrong.
        #[source]
        source: pem::Error,
    },
    /// The key file is not PEM, or holds no private key (PKCS#8, PKCS#1 or SEC1).
    #[error("{} holds no PEM private key", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What the PEM reader found wrong.
        #[source]
        source: pem::Error,
    },
    /// The key is PEM but not a kind of key TLS can sign with.
    #[error("the private key in {} cannot be used", path.display())]
    UnusableKey {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// Both files load, but the key is not the certificate's.
    #[error(
        "the private key in {} does not belong to the certificate in {}",
        key_file.display(),
        cert_file.display()
    )]
    Mismatch {
        /// The certificate file.
        cert_file: PathBuf,
        /// The key file.
        key_file: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the configuration (it never does with its own defaults).
    #[error("cannot set up TLS")]
    Config(#[source] rustls::Error),
}

/// TLS termination for a listener: the certificate chain and private key in two PEM
/// files, read again whenever either changes. Offers HTTP/2 and HTTP/1.1 in ALPN.
///
/// A file that changes into something that does not load (a half-written rotation, a
/// key that does not match) leaves the certificate served so far in place and logs a
/// warning; it is tried again on the next change. Cloning shares everything.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    files: Arc<ReloadingCert>,
}

impl Tls {
    /// Loads the certificate chain (PEM, the server's certificate first) and its private
    /// key (PEM: PKCS#8, PKCS#1 or SEC1) now, and fails if either does not load or the
    /// key is not the certificate's.
    pub fn load(
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert_file = cert_file.into();
        let key_file = key_file.into();
        // Stamp before reading: a change while we read shows up as a difference next
        // time and is loaded then, never missed.
        let stamp = Stamp::of(&cert_file, &key_file);
        let key = load_certified_key(&cert_file, &key_file, &provider)?;
        let files = Arc::new(ReloadingCert {
            cert_file,
            key_file,
            provider: Arc::clone(&provider),
            state: Mutex::new(State {
                current: Arc::new(key),
                stamp,
            }),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&files) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            files,
        })
    }

    /// The certificate file.
    pub fn cert_file(&self) -> &Path {
        &self.files.cert_file
    }

    /// The key file.
    pub fn key_file(&self) -> &Path {
        &self.files.key_file
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert_file", &self.files.cert_file)
            .field("key_file", &self.files.key_file)
            .finish()
    }
}

/// Whether a listener speaks TLS to the connections it accepts from now on, and with
/// which certificate. Default: plain (HTTP/1.1 and h2c on the same port).
///
/// Clones share one setting, so whoever started the listener can change it while it
/// serves (a new certificate location in a re-applied spec, TLS switched on or off on
/// the same address); connections already open keep what they started with.
#[derive(Clone, Debug, Default)]
pub struct TlsSetting(Arc<ArcSwapOption<Tls>>);

impl TlsSetting {
    /// A setting that starts as `tls` (None: plain).
    pub fn new(tls: Option<Tls>) -> TlsSetting {
        TlsSetting(Arc::new(ArcSwapOption::from_pointee(tls)))
    }

    /// Changes what the next accepted connection gets.
    pub fn set(&self, tls: Option<Tls>) {
        self.0.store(tls.map(Arc::new));
    }

    /// What a connection accepted now gets.
    pub fn current(&self) -> Option<Arc<Tls>> {
        self.0.load_full()
    }
}

/// Serves the certificate loaded last, loading the files again first when they changed.
struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

struct State {
    current: Arc<CertifiedKey>,
    /// The files as they were when last tried, whether that load worked or not: a bad
    /// file is tried (and warned about) once, not on every handshake.
    stamp: Stamp,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Held while a changed file is read (once per change): handshakes meanwhile
        // wait for the new certificate rather than being served the old one.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = Stamp::of(&self.cert_file, &self.key_file);
        if stamp != state.stamp {
            state.stamp = stamp;
            match load_certified_key(&self.cert_file, &self.key_file, &self.provider) {
                Ok(key) => {
                    state.current = Arc::new(key);
                    info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
                }
                Err(error) => {
                    warn!(
                        cert_file = %self.cert_file.display(),
                        error = %chain(&error),
                        "TLS certificate files changed but do not load; still serving the previous certificate"
                    );
                }
            }
        }
        Some(Arc::clone(&state.current))
    }
}

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    /// A file renamed into place (the usual atomic rotation) is a new inode even when
    /// its time and size happen to equal the old one's.
    inode: u64,
    /// The inode's change time, which chmod and chown move: a key that could not be read
    /// when it was renamed into place is tried again once its permissions are fixed.
    changed: (i64, i64),
}

/// Both files' stamps; None for a file that cannot be examined now (mid-rotation,
/// say), which is a change like any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    cert: Option<FileStamp>,
    key: Option<FileStamp>,
}

impl Stamp {
    fn of(cert_file: &Path, key_file: &Path) -> Stamp {
        Stamp {
            cert: file_stamp(cert_file),
            key: file_stamp(key_file),
        }
    }
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    let metadata = fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (inode, changed) = {
        use std::os::unix::fs::MetadataExt;
        (metadata.ino(), (metadata.ctime(), metadata.ctime_nsec()))
    };
    #[cfg(not(unix))]
    let (inode, changed) = (0, (0, 0));
    Some(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode,
        changed,
    })
}

fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .and_then(|chain| {
            if chain.is_empty() {
                Err(pem::Error::NoItemsFound)
            } else {
                Ok(chain)
            }
        })
        .map_err(|source| TlsError::Certificate {
            path: cert_file.to_owned(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Key {
        path: key_file.to_owned(),
        source,
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnusableKey {
            path: key_file.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // A key whose public half rustls cannot compute cannot be checked; let the
        // handshake be the judge rather than refusing a key that may well be right.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(source) => Err(TlsError::Mismatch {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            source,
        }),
    }
}

/// The error and its causes on one line, for a log field.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_permission_change_alone_is_a_change_of_the_files() {
        // The rotation that needs this: a key renamed into place unreadable by teal,
        // then chmod-ed. Its time, size and inode stay; without a new stamp the failed
        // load would never be tried again.
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        fs::write(&cert, "cert").unwrap();
        fs::write(&key, "key").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o000)).unwrap();
        let before = Stamp::of(&cert, &key);
        assert_eq!(before, Stamp::of(&cert, &key), "nothing changed yet");

        // ctime has a clock tick's resolution on some filesystems.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(before, Stamp::of(&cert, &key));
    }
}

//! HTTPS on a rollout's listeners: served with the spec's certificate files (HTTP/2 or
//! HTTP/1.1 by ALPN), and an apply whose files do not load is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Version;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, ServerName};
use teal_core::rollout::Phase;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

#[test]
fn tls_on_the_active_service_serves_https_and_files_that_do_not_load_refuse_the_apply() {
    let sandbox = Sandbox::start();
    let rt = runtime();
    let ca = TestCa::new();
    ca.write_server_files(sandbox.data_dir());
    let plain = DemoSpec::new("shop", "v1").yaml();
    let with_tls = |key_file: &str| {
        plain.replace(
            "activeService: {listen: \"127.0.0.1:0\"}",
            &format!(
                "activeService: {{listen: \"127.0.0.1:0\", tls: {{certFile: cert.pem, keyFile: {key_file}}}}}"
            ),
        )
    };

    // A key file that is not there: refused before anything is stored.
    let output = sandbox.apply("shop.yaml", &with_tls("missing.pem"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rollout shop: cannot serve HTTPS on 127.0.0.1:0 for the active route"),
        "{stderr}"
    );
    assert!(stderr.contains("missing.pem"), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert!(!sandbox.teal_ok(&["list"]).contains("shop"));

    // Plain first, then the same address with TLS: the listener keeps its socket and
    // new connections get TLS.
    sandbox.apply_ok("shop.yaml", &plain);
    let live = sandbox.wait_for("shop", "v1 live", |r| r.phase == Phase::Healthy);
    let active: SocketAddr = live.active_listen.parse().unwrap();
    assert!(
        rt.block_on(get_once(active, None))
            .body
            .contains("version v1")
    );
    assert!(!live.active_tls);
    let shown = sandbox.teal_ok(&["get", "shop"]);
    assert!(shown.contains(&format!("http://{active} →")), "{shown}");

    sandbox.apply_ok("shop.yaml", &with_tls("key.pem"));
    // `teal get` (and the dashboard, from the same view) says how to reach it now.
    let secure = sandbox.get("shop");
    assert!(secure.active_tls && !secure.preview_tls, "{secure:?}");
    assert_eq!(secure.active_url(), format!("https://{active}"));
    let shown = sandbox.teal_ok(&["get", "shop"]);
    assert!(shown.contains(&format!("https://{active} →")), "{shown}");
    assert!(
        shown.contains(&format!("cookie test=true on https://{active} →")),
        "{shown}"
    );
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let (version, body) = rt.block_on(https_get(active, &ca, alpn));
        let expected = if alpn == b"h2" {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        assert_eq!(version, expected);
        assert!(body.contains("version v1"), "{body}");
    }

    // A broken key on a re-apply changes nothing either: HTTPS goes on.
    let output = sandbox.apply("shop.yaml", &with_tls("cert.pem"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("holds no PEM private key"), "{stderr}");
    let (_, body) = rt.block_on(https_get(active, &ca, b"h2"));
    assert!(body.contains("version v1"), "{body}");
}

#[test]
fn a_takeover_whose_certificate_files_do_not_load_is_refused_and_https_goes_on() {
    let mut sandbox = Sandbox::start();
    let rt = runtime();
    let ca = TestCa::new();
    ca.write_server_files(sandbox.data_dir());
    let yaml = DemoSpec::new("shop", "v1").yaml().replace(
        "activeService: {listen: \"127.0.0.1:0\"}",
        "activeService: {listen: \"127.0.0.1:0\", tls: {certFile: cert.pem, keyFile: key.pem}}",
    );
    sandbox.apply_ok("shop.yaml", &yaml);
    let live = sandbox.wait_for("shop", "v1 live", |r| r.phase == Phase::Healthy);
    let active: SocketAddr = live.active_listen.parse().unwrap();
    let old_pid = sandbox.daemon_pid();

    // The key is damaged on disk; the running daemon keeps the pair it loaded.
    std::fs::write(sandbox.data_dir().join("key.pem"), "not a key\n").unwrap();
    let (_, body) = rt.block_on(https_get(active, &ca, b"h2"));
    assert!(body.contains("version v1"), "{body}");

    // A new daemon could only serve the handed socket without a certificate: it
    // refuses the takeover and says why, and the old one goes on serving HTTPS.
    let status = sandbox.failed_successor();
    assert!(!status.success());
    let log = sandbox.daemon_log();
    assert!(
        log.contains("rollout shop: cannot serve the active socket the running daemon handed over"),
        "{log}"
    );
    assert!(log.contains("key.pem"), "{log}");
    assert!(log.contains("a takeover failed"), "{log}");
    assert_eq!(sandbox.daemon_pid(), old_pid);
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let (_, body) = rt.block_on(https_get(active, &ca, alpn));
        assert!(body.contains("version v1"), "{body}");
    }

    // With the files repaired the takeover goes through and HTTPS goes on.
    ca.write_server_files(sandbox.data_dir());
    let mut old = sandbox.start_successor();
    let status = eventually(
        std::time::Duration::from_secs(60),
        "the old daemon exits once it handed over",
        || old.try_wait().unwrap(),
    );
    assert!(status.success(), "{}", sandbox.daemon_log());
    let (_, body) = rt.block_on(https_get(active, &ca, b"h2"));
    assert!(body.contains("version v1"), "{body}");
}

/// A certificate authority the test trusts, and a server certificate it issued for
/// `localhost`.
struct TestCa {
    root: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "teal test CA");
        let ca_key = KeyPair::generate().unwrap();
        let root = params.self_signed(&ca_key).unwrap().der().clone();
        let issuer = Issuer::new(params, ca_key);

        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        TestCa {
            root,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// `cert.pem` and `key.pem` in `dir`.
    fn write_server_files(&self, dir: &std::path::Path) {
        std::fs::write(dir.join("cert.pem"), &self.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &self.key_pem).unwrap();
    }
}

/// `GET /` over TLS to `localhost` offering one ALPN protocol: the response's version
/// and body.
async fn https_get(address: SocketAddr, ca: &TestCa, alpn: &[u8]) -> (Version, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let stream = TcpStream::connect(address).await.unwrap();
    let stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .expect("TLS handshake");
    let io = TokioIo::new(stream);
    let url = format!("https://localhost:{}/", address.port());
    let response = if alpn == b"h2" {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::get(url)
            .version(Version::HTTP_2)
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::get("/")
            .header("host", format!("localhost:{}", address.port()))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(request).await.unwrap()
    };
    let version = response.version();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (version, String::from_utf8_lossy(&body).into_owned())
}

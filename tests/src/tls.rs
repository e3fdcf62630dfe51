//! TLS for tests: a private certificate authority made with the `openssl` command, and
//! `stunnel4` as a TLS terminator in front of a plaintext server (tansu, ClickHouse), so
//! clients make real handshakes against certificates the test issued.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, free_port};

/// A certificate authority of one test and a server certificate it signed for `localhost`
/// and `127.0.0.1`, as PEM files in `dir`.
pub struct TestCa {
    /// The directory of the files.
    pub dir: PathBuf,
    /// The CA's certificate: what clients trust.
    pub ca_file: PathBuf,
    /// The server's certificate, signed by the CA.
    pub cert_file: PathBuf,
    /// The server's private key (unencrypted, mode 0600).
    pub key_file: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestCa {
    /// Makes a CA named `name` and a server certificate in a fresh directory under the
    /// services' directory (or the temporary one).
    pub fn new(name: &str) -> TestCa {
        let base = std::env::var("LMS_TEST_SERVICES_DIR").map(PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
        let dir = base.join(format!("tls-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("tls dir");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let subject = format!("/CN={name} test CA");
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", &subject]);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(&dir, &ca);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
        openssl(&dir, &csr);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("extensions");
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        TestCa { ca_file: dir.join("ca.pem"), cert_file: dir.join("server.pem"), key_file: dir.join("server.key"), dir }
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `stunnel4` accepting TLS on a loopback port and forwarding the plaintext to `upstream`.
/// Killed when dropped.
pub struct TlsTerminator {
    child: Child,
    port: u16,
}

impl TlsTerminator {
    /// Starts the terminator with the server certificate of `ca` on `port` (a free one when
    /// `None`), forwarding to `upstream` (`host:port`), and waits until it accepts.
    pub async fn start(ca: &TestCa, port: Option<u16>, upstream: &str) -> TlsTerminator {
        let port = port.unwrap_or_else(free_port);
        let conf = ca.dir.join(format!("stunnel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = notice\n[tls]\naccept = 127.0.0.1:{port}\nconnect = {upstream}\ncert = {}\nkey = {}\n",
                ca.cert_file.display(),
                ca.key_file.display()
            ),
        )
        .expect("stunnel configuration");
        let log = std::fs::File::create(ca.dir.join(format!("stunnel-{port}.log"))).expect("stunnel log");
        let child = Command::new("stunnel4")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start stunnel4 (cargo xtask install installs it)");
        let addr = format!("127.0.0.1:{port}");
        eventually("the TLS terminator to accept connections", Duration::from_secs(20), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()) }
        })
        .await;
        TlsTerminator { child, port }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

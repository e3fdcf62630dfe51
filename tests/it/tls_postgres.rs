//! PostgreSQL over TLS as libpq users write it: `sslmode=verify-full&sslrootcert=<ca>` in
//! the store URL, against a cluster of the test's own with `ssl=on` and a certificate for
//! `localhost` from a certificate authority the test makes (the shared test cluster runs
//! without TLS). A root certificate of another authority fails the handshake with an error
//! naming the cause; `sslmode=require` encrypts without checking, as libpq does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tests::tls::TestCa;
use tests::{free_port, init_logs};

/// A PostgreSQL cluster of the test's own, with TLS; stopped when dropped.
struct TlsPostgres {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
    port: u16,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a PostgreSQL program");
    assert!(out.status.success(), "{cmd:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

impl TlsPostgres {
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut c = if self.as_postgres {
            let mut r = Command::new("runuser");
            r.args(["-u", "postgres", "--"]).arg(program);
            r
        } else {
            Command::new(program)
        };
        c.current_dir(&self.dir);
        c
    }

    fn start(ca: &TestCa) -> TlsPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL under /usr/lib/postgresql (cargo xtask install)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|b| b.join("initdb").is_file())
            .expect("initdb");
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        // Under /tmp: the services' directory may sit under a home the postgres user cannot enter.
        let dir = std::env::temp_dir().join(format!("lms-tls-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        for (from, to) in [(&ca.cert_file, "server.pem"), (&ca.key_file, "server.key")] {
            std::fs::copy(from, dir.join(to)).expect("copy the server certificate");
        }
        if as_postgres {
            run(Command::new("chown").args(["-R", "postgres"]).arg(&dir));
        }
        run(Command::new("chmod").arg("600").arg(dir.join("server.key")));
        let pg = TlsPostgres { bin, dir, as_postgres, port: free_port() };
        run(pg.command("initdb").args(["-D", "data", "-A", "trust", "-U", "postgres", "--no-sync", "--encoding=UTF8", "--locale=C.UTF-8"]));
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            pg.port,
            pg.dir.display(),
            pg.dir.join("server.pem").display(),
            pg.dir.join("server.key").display()
        );
        run(pg.command("pg_ctl").args(["-D", "data", "-o", &options, "-l", "postgres.log", "-w", "-t", "60", "start"]));
        pg
    }

    fn url(&self, query: &str) -> String {
        format!("postgres://postgres@localhost:{}/postgres?{query}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-D", "data", "-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn ssl_in_use(url: &str) -> Result<bool, lms_state::StoreError> {
    let store = lms_state::Store::connect(url, 2).await?;
    let (ssl,): (bool,) = sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(store.pool()).await?;
    store.close().await;
    Ok(ssl)
}

fn root(ca: &Path) -> String {
    ca.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_postgres_verify_full_with_a_root_certificate() {
    init_logs();
    let ca = TestCa::new("postgres");
    let pg = tokio::task::block_in_place(|| TlsPostgres::start(&ca));

    let verified = pg.url(&format!("sslmode=verify-full&sslrootcert={}", root(&ca.ca_file)));
    assert!(ssl_in_use(&verified).await.expect("verify-full with the right root"), "the session is encrypted");
    let store = tokio::time::timeout(Duration::from_secs(60), processors::open_store(&verified, 2))
        .await
        .expect("in time")
        .expect("the state store migrates over TLS");
    store.close().await;

    let other = TestCa::new("other");
    let untrusted = pg.url(&format!("sslmode=verify-full&sslrootcert={}", root(&other.ca_file)));
    let err = ssl_in_use(&untrusted).await.expect_err("another authority's root").to_string();
    assert!(err.contains("UnknownIssuer") || err.contains("certificate"), "{err}");

    let unchecked = pg.url("sslmode=require");
    assert!(ssl_in_use(&unchecked).await.expect("require encrypts without checking"), "the session is encrypted");
}

//! The worker binary on a Redis that requires TLS and a password, as ElastiCache with in-transit
//! encryption and AUTH does: a `rediss://:<password>@host` URL works, with the server verified
//! against the trusted roots (here a private CA through `SSL_CERT_FILE`, which the native root
//! store honours), and a wrong password or an untrusted server stops the worker with an error that
//! names Redis. A private redis-server (Debian's, which has TLS) on a free port, its certificate
//! issued by openssl.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use ump_core::testing::{TestDatabase, free_port, infra, unique_name};

const PASSWORD: &str = "s3cret-elasticache-token";

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA and a server certificate for `localhost` in `dir`.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-days",
            "1",
            "-subj",
            "/CN=UMP test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("extensions");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "0x1d2c3b4a",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
}

fn redis_server(dir: &Path, port: u16) -> Process {
    let path = |name: &str| dir.join(name).to_str().expect("UTF-8").to_owned();
    let child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--tls-cert-file", &path("server.crt")])
        .args(["--tls-key-file", &path("server.key")])
        .args(["--tls-ca-cert-file", &path("ca.crt")])
        .args(["--tls-auth-clients", "no", "--requirepass", PASSWORD])
        .args(["--save", "", "--appendonly", "no", "--dir", &path("")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("Redis: redis-server (Debian package redis-server, installed by scripts/infra)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server with TLS did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Process(child)
}

struct Worker {
    process: Process,
    log: PathBuf,
}

fn worker(dir: &Path, db: &TestDatabase, redis_url: &str, trust: Option<&Path>) -> Worker {
    let log = dir.join(format!("worker-{}.log", unique_name("run")));
    let file = std::fs::File::create(&log).expect("log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ump-worker"));
    if let Some(ca) = trust {
        command.env("SSL_CERT_FILE", ca);
    }
    let process = command
        .env("UMP_CONFIG_DIR", dir.join("config"))
        .env("UMP_KAFKA_BOOTSTRAP", infra().kafka_bootstrap())
        .env("UMP_REDIS_URL", redis_url)
        .env("UMP_MYSQL_URL", &db.url)
        .env("UMP_WORKER_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("UMP_SANDBOX_OUTBOX", dir.join("outbox.jsonl"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(file.try_clone().expect("log")))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("start ump-worker");
    Worker {
        process: Process(process),
        log,
    }
}

impl Worker {
    /// Waits for the log line of a running worker, or for the process to end; returns whether it
    /// runs and its log.
    fn outcome(&mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains("worker running") {
                return (true, log);
            }
            if let Ok(Some(_)) = self.process.0.try_wait() {
                return (
                    false,
                    std::fs::read_to_string(&self.log).unwrap_or_default(),
                );
            }
            assert!(
                Instant::now() < deadline,
                "the worker neither ran nor failed:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_talks_tls_and_auth_to_redis() {
    let db = TestDatabase::create().await;
    let namespace = unique_name("redis-tls");
    let dir = std::env::temp_dir().join(&namespace);
    std::fs::create_dir_all(dir.join("config")).expect("dir");
    std::fs::write(
        dir.join("config/channels.yaml"),
        format!(
            "apiVersion: ump.dev/v1alpha1\nkind: MessageChannel\n\
             metadata: {{name: sms, namespace: {namespace}}}\n\
             spec: {{type: sms, topic: {{partitions: 1}}, providers: [{{name: s, type: sandbox}}]}}\n"
        ),
    )
    .expect("channel");
    certificates(&dir);
    let port = free_port();
    let _redis = redis_server(&dir, port);
    let ca = dir.join("ca.crt");

    let good = format!("rediss://:{PASSWORD}@localhost:{port}/");
    let (runs, log) = worker(&dir, &db, &good, Some(&ca)).outcome();
    assert!(runs, "TLS with a trusted CA and the right password:\n{log}");

    // Both refusals at once: the Redis client retries for a while before it gives up.
    let wrong = format!("rediss://:not-the-token@localhost:{port}/");
    let mut wrong_password = worker(&dir, &db, &wrong, Some(&ca));
    let mut untrusted = worker(&dir, &db, &good, None);
    let (runs, log) = wrong_password.outcome();
    assert!(
        !runs && log.contains("connecting to Redis"),
        "wrong password:\n{log}"
    );
    assert!(
        !log.contains("not-the-token"),
        "the password is never logged:\n{log}"
    );
    let (runs, log) = untrusted.outcome();
    assert!(
        !runs && log.contains("connecting to Redis") && log.contains("UnknownIssuer"),
        "a server no trusted root vouches for is refused:\n{log}"
    );

    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", infra().kafka_bootstrap())
            .create()
            .expect("Kafka: admin");
    let topic = format!("ump.{namespace}.sms");
    let _ = admin
        .delete_topics(
            &[&topic, &format!("{topic}.dlq")],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await;
    db.drop_database().await;
    let _ = std::fs::remove_dir_all(&dir);
}

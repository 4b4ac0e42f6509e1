//! Test support for suites that run against the real infrastructure started by `scripts/infra up`,
//! with no dependency on UMP's own crates: the operator's tests use it without compiling the
//! storage and queue adapters. A missing or unreachable component fails the test with a message
//! naming it; nothing is skipped. (`ump_core::testing` re-exports it, beside its database helpers.)

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// Settings written by `scripts/infra up` (KEY=value lines). A variable of the same name in the
/// process environment wins, so a suite can be pointed at other servers on 127.0.0.1.
#[derive(Debug)]
pub struct Infra {
    values: HashMap<String, String>,
    source: PathBuf,
}

/// The settings file: `$UMP_INFRA_ENV`, else `$UMP_INFRA_HOME/run/infra.env`, else
/// `~/.cache/ump-infra/run/infra.env` (the script's defaults).
pub fn settings_path() -> PathBuf {
    if let Some(path) = std::env::var_os("UMP_INFRA_ENV") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("UMP_INFRA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let user_home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            user_home.join(".cache/ump-infra")
        });
    home.join("run/infra.env")
}

/// The settings of this test run, read once.
pub fn infra() -> &'static Infra {
    static INFRA: OnceLock<Infra> = OnceLock::new();
    INFRA.get_or_init(|| {
        let source = settings_path();
        let text = std::fs::read_to_string(&source).unwrap_or_default();
        Infra {
            values: parse_settings(&text),
            source,
        }
    })
}

fn parse_settings(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

impl Infra {
    /// The value of `key`, which `component` provides; panics with what to run when it is missing.
    pub fn require(&self, component: &str, key: &str) -> String {
        if let Ok(value) = std::env::var(key) {
            return value;
        }
        match self.values.get(key) {
            Some(value) => value.clone(),
            None => panic!(
                "{component} is not set up: {key} is neither in the environment nor in {} \
                 (run `scripts/infra up {}` first)",
                self.source.display(),
                component.to_lowercase()
            ),
        }
    }

    pub fn kafka_bootstrap(&self) -> String {
        let servers = self.require("Kafka", "UMP_KAFKA_BOOTSTRAP");
        let first = servers.split(',').next().unwrap_or_default().to_owned();
        require_tcp("Kafka", &first);
        servers
    }

    pub fn amqp_url(&self) -> String {
        let url = self.require("ActiveMQ", "UMP_AMQP_URL");
        require_tcp("ActiveMQ (AMQP 1.0)", &host_port(&url, 5672));
        url
    }

    pub fn mysql_url(&self) -> String {
        let url = self.require("MariaDB", "UMP_MYSQL_URL");
        require_tcp("MariaDB", &host_port(&url, 3306));
        url
    }

    pub fn redis_url(&self) -> String {
        let url = self.require("Redis", "UMP_REDIS_URL");
        require_tcp("Redis", &host_port(&url, 6379));
        url
    }

    pub fn kubeconfig(&self) -> PathBuf {
        let path = PathBuf::from(self.require("Kube", "UMP_KUBECONFIG"));
        assert!(
            path.is_file(),
            "Kubernetes: kubeconfig {} does not exist (run `scripts/infra up kube`)",
            path.display()
        );
        path
    }

    /// The real SMTP server (Mailpit) and its read-back API.
    pub fn smtp(&self) -> SmtpServer {
        let server = SmtpServer {
            host: self.require("SMTP", "UMP_SMTP_HOST"),
            port: self
                .require("SMTP", "UMP_SMTP_PORT")
                .parse()
                .expect("SMTP: UMP_SMTP_PORT is a port number"),
            api: self.require("SMTP", "UMP_SMTP_API"),
            user: self.require("SMTP", "UMP_SMTP_USER"),
            password: self.require("SMTP", "UMP_SMTP_PASSWORD"),
            tls_cert: self.require("SMTP", "UMP_SMTP_TLS_CERT"),
        };
        require_tcp("SMTP", &format!("{}:{}", server.host, server.port));
        server
    }

    /// The SMTP server that offers PIPELINING (Postfix's smtp-sink): its port and the folder it
    /// writes each accepted transaction to.
    pub fn smtp_pipelining(&self) -> PipeliningSmtpServer {
        let server = PipeliningSmtpServer {
            host: self.require("SMTP", "UMP_SMTP_HOST"),
            port: self
                .require("SMTP", "UMP_SMTP_PIPELINING_PORT")
                .parse()
                .expect("SMTP: UMP_SMTP_PIPELINING_PORT is a port number"),
            dump: self.require("SMTP", "UMP_SMTP_PIPELINING_DUMP").into(),
        };
        require_tcp(
            "SMTP (smtp-sink)",
            &format!("{}:{}", server.host, server.port),
        );
        server
    }

    pub fn helm(&self) -> PathBuf {
        let path = PathBuf::from(self.require("Helm", "UMP_HELM"));
        assert!(
            path.is_file(),
            "Helm: {} does not exist (run `scripts/infra up helm`)",
            path.display()
        );
        path
    }
}

/// Where the test SMTP server listens and how to read back what it received.
#[derive(Clone, Debug)]
pub struct SmtpServer {
    pub host: String,
    pub port: u16,
    /// Base URL of the server's HTTP API (`/api/v1/search`, `/api/v1/message/{id}`).
    pub api: String,
    pub user: String,
    pub password: String,
    /// PEM file of the CA that signed the server's certificate.
    pub tls_cert: String,
}

/// Postfix's smtp-sink: it offers PIPELINING, accepts everything and writes each transaction
/// to its own file under `dump` (in hour folders): `X-Mail-Args:` and `X-Rcpt-Args:` lines,
/// then the message as received.
pub struct PipeliningSmtpServer {
    pub host: String,
    pub port: u16,
    pub dump: std::path::PathBuf,
}

/// `scheme://[user:pass@]host:port/...` → `host:port` (default port when absent). Credentials
/// never leave this function.
fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    }
}

/// Panics with a message naming `component` unless something accepts TCP connections at `addr`.
pub fn require_tcp(component: &str, addr: &str) {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("{component}: cannot resolve {addr}: {e}"))
        .collect();
    let reachable = resolved
        .iter()
        .any(|sa| TcpStream::connect_timeout(sa, Duration::from_secs(3)).is_ok());
    assert!(
        reachable,
        "{component} is not reachable at {addr} (start it with `scripts/infra up`)"
    );
}

/// Where `free_port` looks: below Linux's ephemeral range (32768–60999 by default), so that
/// neither an outgoing connection nor a bind to port 0 can take the port before the process it
/// is for binds it; and above the fixed ports `scripts/infra` and the benchmarks use.
const FREE_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port on 127.0.0.1 that nothing listens on now, for a process (or a listener started later)
/// to bind. Only another explicit bind to the same port could take it meanwhile.
pub fn free_port() -> u16 {
    let span = u128::from(FREE_PORTS.end - FREE_PORTS.start);
    for _ in 0..1000 {
        let offset = u16::try_from(uuid::Uuid::new_v4().as_u128() % span).expect("below span");
        let port = FREE_PORTS.start + offset;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {FREE_PORTS:?}")
}

/// A name no other test run uses, for topics, queues, databases and namespaces.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// The value of the first series `name` carrying (at least) `labels` in a Prometheus text
/// exposition (`/metrics`), if there is one. Label values with commas are not supported.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, pairs) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let carries = |(label, wanted): &(&str, &str)| {
                pairs
                    .split(',')
                    .any(|pair| pair == format!("{label}=\"{wanted}\""))
            };
            (metric == name && labels.iter().all(carries))
                .then(|| value.parse().ok())
                .flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_found_by_name_and_labels() {
        let text = "# HELP up it\n# TYPE up gauge\nup 1\n\
                    open{channel=\"sms\",provider=\"nhn\"} 0\n\
                    open{channel=\"sms\",provider=\"twilio\"} 1\n";
        assert_eq!(metric_value(text, "up", &[]), Some(1.0));
        assert_eq!(
            metric_value(text, "open", &[("provider", "twilio")]),
            Some(1.0)
        );
        assert_eq!(
            metric_value(text, "open", &[("channel", "sms"), ("provider", "nhn")]),
            Some(0.0)
        );
        assert_eq!(metric_value(text, "open", &[("provider", "fcm")]), None);
        assert_eq!(metric_value(text, "ope", &[]), None);
    }

    #[test]
    fn settings_skip_comments_and_blank_lines() {
        let parsed = parse_settings("# header\n\nA=1\n B = two=2 \n");
        assert_eq!(parsed.get("A").map(String::as_str), Some("1"));
        assert_eq!(parsed.get("B").map(String::as_str), Some("two=2"));
        assert_eq!(parsed.len(), 2);
    }

    #[test]
    fn host_port_strips_scheme_credentials_and_path() {
        assert_eq!(
            host_port("mysql://u:p@127.0.0.1:3306/ump", 1),
            "127.0.0.1:3306"
        );
        assert_eq!(host_port("redis://127.0.0.1", 6379), "127.0.0.1:6379");
        assert_eq!(
            host_port("amqp://a:b@127.0.0.1:5672?x=1", 1),
            "127.0.0.1:5672"
        );
    }
}

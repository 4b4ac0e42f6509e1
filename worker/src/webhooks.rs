//! The webhook dispatcher: takes due deliveries from the outbox one endpoint at a time under a
//! lease, POSTs them signed as Standard Webhooks has it, and settles each attempt (delivered,
//! retried later with backoff, given up; 410 disables the endpoint). Endpoints never wait on
//! each other: each has its own task and at most `in_flight` requests open.

use futures::StreamExt;
use futures::future::join_all;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use ump_core::webhooks::{
    Attempt, AttemptResult, ClaimedDelivery, RetryPolicy, Target, UrlRules, WebhookStore,
    signature_header,
};

pub use ump_core::webhooks::WebhookUrlSettings;

/// How webhooks are dispatched.
#[derive(Clone, Debug, clap::Args)]
pub struct WebhookSettings {
    /// Run the dispatcher in this process.
    #[arg(long = "webhooks-dispatch", env = "UMP_WEBHOOKS_DISPATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub dispatch: bool,
    #[command(flatten)]
    pub urls: WebhookUrlSettings,
    /// Longest wait for a receiver's TCP (and TLS) connection.
    #[arg(
        long = "webhooks-connect-timeout",
        env = "UMP_WEBHOOKS_CONNECT_TIMEOUT",
        default_value = "5s"
    )]
    pub connect_timeout: ump_core::duration::Duration,
    /// Longest wait for a receiver's whole answer.
    #[arg(
        long = "webhooks-timeout",
        env = "UMP_WEBHOOKS_TIMEOUT",
        default_value = "15s"
    )]
    pub timeout: ump_core::duration::Duration,
    /// Requests open at once per endpoint.
    #[arg(
        long = "webhooks-in-flight",
        env = "UMP_WEBHOOKS_IN_FLIGHT",
        default_value_t = 32
    )]
    pub in_flight: u32,
    /// Endpoints served at once by this process.
    #[arg(
        long = "webhooks-endpoints",
        env = "UMP_WEBHOOKS_ENDPOINTS",
        default_value_t = 64
    )]
    pub endpoints: usize,
    /// How often the outbox is checked for due deliveries.
    #[arg(
        long = "webhooks-poll",
        env = "UMP_WEBHOOKS_POLL",
        default_value = "200ms"
    )]
    pub poll: ump_core::duration::Duration,
    /// How long a claim on deliveries holds off other dispatchers; after a crash, the claimed
    /// deliveries are made again once it has passed. Longer than a request can take.
    #[arg(
        long = "webhooks-lease",
        env = "UMP_WEBHOOKS_LEASE",
        default_value = "60s"
    )]
    pub lease: ump_core::duration::Duration,
    /// The wait after a first failed attempt; doubled with each further one.
    #[arg(
        long = "webhooks-retry-first",
        env = "UMP_WEBHOOKS_RETRY_FIRST",
        default_value = "5s"
    )]
    pub retry_first: ump_core::duration::Duration,
    /// The longest wait between attempts.
    #[arg(
        long = "webhooks-retry-max",
        env = "UMP_WEBHOOKS_RETRY_MAX",
        default_value = "1h"
    )]
    pub retry_max: ump_core::duration::Duration,
    /// How long a delivery is retried before it is given up (at least a day).
    #[arg(
        long = "webhooks-retry-for",
        env = "UMP_WEBHOOKS_RETRY_FOR",
        default_value = "3d"
    )]
    pub retry_for: ump_core::duration::Duration,
    /// An endpoint whose every delivery failed for this long is disabled.
    #[arg(
        long = "webhooks-disable-after",
        env = "UMP_WEBHOOKS_DISABLE_AFTER",
        default_value = "5d"
    )]
    pub disable_after: ump_core::duration::Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let d = ump_core::duration::Duration::from_secs;
        Self {
            dispatch: true,
            urls: WebhookUrlSettings::default(),
            connect_timeout: d(5),
            timeout: d(15),
            in_flight: 32,
            endpoints: 64,
            poll: ump_core::duration::Duration::from(Duration::from_millis(200)),
            lease: d(60),
            retry_first: d(5),
            retry_max: d(3600),
            retry_for: d(3 * 24 * 3600),
            disable_after: d(5 * 24 * 3600),
        }
    }
}

impl WebhookSettings {
    pub fn rules(&self) -> UrlRules {
        self.urls.rules()
    }

    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            first: self.retry_first.as_std(),
            max: self.retry_max.as_std(),
            retry_for: self.retry_for.as_std(),
            disable_after: self.disable_after.as_std(),
        }
    }
}

/// The dispatcher's metrics (names are part of the operations contract).
#[derive(Clone)]
pub struct WebhookMetrics {
    /// Attempts by result: delivered, failed (to be retried), given_up, gone (410).
    pub attempts: prometheus::IntCounterVec,
    /// From the request to the end of the answer (or the failure).
    pub attempt_seconds: prometheus::Histogram,
    /// Endpoints a task of this process is serving now.
    pub endpoints_busy: prometheus::IntGauge,
    /// Rounds of attempts whose results could not be recorded (they are made again after the
    /// lease).
    pub unrecorded: prometheus::IntCounter,
}

impl WebhookMetrics {
    pub fn new(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let attempts = prometheus::IntCounterVec::new(
            prometheus::Opts::new("ump_webhook_attempts_total", "Webhook delivery attempts"),
            &["result"],
        )?;
        let attempt_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "ump_webhook_attempt_duration_seconds",
                "Webhook request duration",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
            ]),
        )?;
        let endpoints_busy = prometheus::IntGauge::new(
            "ump_webhook_endpoints_busy",
            "Webhook endpoints being served by this process",
        )?;
        let unrecorded = prometheus::IntCounter::new(
            "ump_webhook_unrecorded_rounds_total",
            "Rounds of webhook attempts whose results could not be recorded",
        )?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(attempt_seconds.clone()))?;
        registry.register(Box::new(endpoints_busy.clone()))?;
        registry.register(Box::new(unrecorded.clone()))?;
        Ok(Self {
            attempts,
            attempt_seconds,
            endpoints_busy,
            unrecorded,
        })
    }

    fn count(&self, attempt: &Attempt) {
        let result = match (&attempt.result, attempt.retry_at) {
            (AttemptResult::Skipped, _) => return,
            (AttemptResult::Delivered { .. }, _) => "delivered",
            (AttemptResult::Gone, _) => "gone",
            (AttemptResult::Failed { .. }, Some(_)) => "failed",
            (AttemptResult::Failed { .. }, None) => "given_up",
        };
        self.attempts.with_label_values(&[result]).inc();
        self.attempt_seconds.observe(attempt.latency.as_secs_f64());
    }
}

/// The most of a receiver's answer that is read (the rest is dropped unread).
const MAX_ANSWER: usize = 4096;
/// The most of an answer or error kept in the delivery log.
const MAX_ERROR: usize = 256;

/// Resolves names for the dispatcher's connections and drops every address the rules refuse, at
/// each connection: a name that resolved to a public address once and to a private one now
/// (DNS rebinding) is refused now.
#[derive(Clone, Copy, Debug)]
pub struct GuardedResolver {
    pub rules: UrlRules,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let rules = self.rules;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match rules.refuse(a.ip()) {
                    None => true,
                    Some(why) => {
                        refused = Some(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or("no address");
                return Err(format!("{host} resolves only to refused addresses ({why})").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The dispatcher's HTTP client: the guarded resolver, no proxies (a proxy would resolve names
/// itself), no redirects (a redirect is the receiver's answer, not a new target), timeouts.
pub fn client(settings: &WebhookSettings) -> reqwest::Result<reqwest::Client> {
    ump_core::tls::install_crypto_provider();
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver {
            rules: settings.rules(),
        }))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.connect_timeout.as_std())
        .timeout(settings.timeout.as_std())
        .pool_max_idle_per_host(settings.in_flight as usize)
        .user_agent(concat!("UMP-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What went wrong with a request, with its causes, without the URL (it may carry a token).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    truncate(text, MAX_ERROR)
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// One attempt at one delivery; never longer than the client's timeouts.
pub async fn attempt(
    client: &reqwest::Client,
    rules: UrlRules,
    target: &Target,
    delivery: &ClaimedDelivery,
) -> (AttemptResult, Duration) {
    let started = Instant::now();
    let failed = |error: String| AttemptResult::Failed {
        status: None,
        error,
    };
    // Literal addresses never reach the resolver: checked here (and the scheme, in case the
    // rules changed since the endpoint was written).
    let url = match rules.check_url(&target.url) {
        Ok(url) => url,
        Err(e) => return (failed(format!("refused: the URL {e}")), started.elapsed()),
    };
    let now = chrono::Utc::now();
    let timestamp = now.timestamp();
    let body = delivery.payload.as_bytes();
    let signature = signature_header(&target.secrets, now, &delivery.event_id, timestamp, body);
    let sent = client
        .post(url)
        .header("webhook-id", &delivery.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(delivery.payload.clone())
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(e) => return (failed(describe(&e)), started.elapsed()),
    };
    let status = response.status();
    let mut answer = Vec::new();
    while answer.len() < MAX_ANSWER {
        match response.chunk().await {
            Ok(Some(chunk)) => answer.extend_from_slice(&chunk),
            Ok(None) => break,
            // The status is what counts; a body cut short changes nothing.
            Err(_) => break,
        }
    }
    let latency = started.elapsed();
    let result = if status.is_success() {
        AttemptResult::Delivered {
            status: status.as_u16(),
        }
    } else if status == reqwest::StatusCode::GONE {
        AttemptResult::Gone
    } else {
        answer.truncate(MAX_ERROR);
        let text = String::from_utf8_lossy(&answer);
        AttemptResult::Failed {
            status: Some(status.as_u16()),
            error: truncate(
                format!("HTTP {}: {}", status.as_u16(), text.trim()),
                MAX_ERROR,
            ),
        }
    };
    (result, latency)
}

/// A number from 0 to 1 for the backoff's jitter.
fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 64) as f64 / u64::MAX as f64
}

/// Rounds of one endpoint under way at once: a request that takes its time holds up only its
/// own round, and recording one round overlaps the requests of the others.
const LANES: u32 = 4;

/// Delivers what is due for one endpoint until nothing is: `LANES` rounds at a time, together at
/// most `in_flight` requests.
async fn drain(
    store: Arc<dyn WebhookStore>,
    client: reqwest::Client,
    settings: WebhookSettings,
    metrics: WebhookMetrics,
    target: Target,
    shutdown: CancellationToken,
) {
    let lanes = LANES.min(settings.in_flight.max(1));
    let per_lane = settings.in_flight.max(1).div_ceil(lanes).max(1);
    join_all((0..lanes).map(|_| {
        lane(
            store.as_ref(),
            &client,
            &settings,
            &metrics,
            &target,
            &shutdown,
            per_lane,
        )
    }))
    .await;
}

/// One round of an endpoint's deliveries: at most the lane's limit under way at once. It stops
/// starting attempts at its first failure (what is left waits in the store, due at once, and is
/// tried one by one from then on, as retries are), once half its lease has gone (so that it is
/// recorded while its claim still holds), and when the dispatcher stops.
struct Round<'a> {
    client: &'a reqwest::Client,
    rules: UrlRules,
    policy: RetryPolicy,
    target: &'a Target,
    shutdown: &'a CancellationToken,
    failed: AtomicBool,
    deadline: Instant,
}

impl Round<'_> {
    /// Attempts `d` (or skips it, as above) and says what came of it.
    async fn make(&self, d: &ClaimedDelivery) -> Attempt {
        let skip = self.failed.load(Ordering::Relaxed)
            || Instant::now() >= self.deadline
            || self.shutdown.is_cancelled();
        let (result, latency) = if skip {
            (AttemptResult::Skipped, Duration::ZERO)
        } else {
            attempt(self.client, self.rules, self.target, d).await
        };
        let at = chrono::Utc::now();
        let retry_at = match &result {
            AttemptResult::Delivered { .. } | AttemptResult::Skipped => None,
            failed => {
                self.failed.store(true, Ordering::Relaxed);
                if let AttemptResult::Failed { status, error } = failed {
                    tracing::debug!(endpoint = %self.target.endpoint_id, id = %d.event_id, ?status, %error, "webhook attempt failed");
                }
                self.policy
                    .next_attempt(d.attempts + 1, d.retry_since, at, jitter())
            }
        };
        Attempt {
            endpoint_id: d.endpoint_id.clone(),
            event_id: d.event_id.clone(),
            claim: d.claim,
            result,
            latency,
            at,
            retry_at,
            batch: d.batch.clone(),
        }
    }
}

/// Rounds of up to `limit` deliveries of one endpoint until none is due (or the endpoint went
/// away).
async fn lane(
    store: &dyn WebhookStore,
    client: &reqwest::Client,
    settings: &WebhookSettings,
    metrics: &WebhookMetrics,
    target: &Target,
    shutdown: &CancellationToken,
    limit: u32,
) {
    let policy = settings.retry();
    let rules = settings.rules();
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let claimed = match store
            .claim(
                &target.endpoint_id,
                chrono::Utc::now(),
                settings.lease.as_std(),
                limit,
            )
            .await
        {
            Ok(claimed) if claimed.is_empty() => return,
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(endpoint = %target.endpoint_id, error = %e, "claiming webhook deliveries failed");
                return;
            }
        };
        let round = Round {
            client,
            rules,
            policy,
            target,
            shutdown,
            failed: AtomicBool::new(false),
            deadline: Instant::now() + settings.lease.as_std() / 2,
        };
        // Made up front: a lazily mapped stream here trips the compiler's `Send` inference for
        // the spawned task.
        let claim_took = started.elapsed();
        let made: Vec<_> = claimed.iter().map(|d| round.make(d)).collect();
        let attempts: Vec<Attempt> = futures::stream::iter(made)
            .buffer_unordered(limit.max(1) as usize)
            .collect()
            .await;
        let attempts_took = started.elapsed() - claim_took;
        attempts.iter().for_each(|a| metrics.count(a));
        let gone = attempts.iter().any(|a| a.result == AttemptResult::Gone);
        let mut settled = false;
        for wait in [0u64, 200, 1000] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match store.settle(&attempts, &policy, chrono::Utc::now()).await {
                Ok(()) => {
                    settled = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(endpoint = %target.endpoint_id, error = %e, "recording webhook attempts failed")
                }
            }
        }
        tracing::debug!(
            endpoint = %target.endpoint_id,
            deliveries = attempts.len(),
            claim_ms = claim_took.as_secs_f64() * 1e3,
            attempts_ms = attempts_took.as_secs_f64() * 1e3,
            settle_ms = (started.elapsed() - claim_took - attempts_took).as_secs_f64() * 1e3,
            "webhook round"
        );
        // Unsettled attempts are made again when their lease runs out (at least once).
        if !settled {
            metrics.unrecorded.inc();
        }
        if !settled || gone {
            if gone {
                tracing::info!(endpoint = %target.endpoint_id, "receiver answered 410: endpoint disabled");
            }
            return;
        }
    }
}

/// Runs the dispatcher until `shutdown`: every `poll`, the endpoints with due deliveries that no
/// task of this process serves yet get one (up to `endpoints` at once).
pub async fn run(
    store: Arc<dyn WebhookStore>,
    settings: WebhookSettings,
    metrics: WebhookMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = client(&settings)?;
    let serving: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    tracing::info!(
        allow_http = settings.urls.allow_http,
        allow_loopback = settings.urls.allow_loopback,
        "webhook dispatcher running"
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(settings.poll.as_std()) => {}
        }
        while tasks.try_join_next().is_some() {}
        let free = settings
            .endpoints
            .saturating_sub(serving.lock().map(|s| s.len()).unwrap_or(usize::MAX));
        if free == 0 {
            continue;
        }
        let targets = match store.due_targets(chrono::Utc::now(), 1000).await {
            Ok(targets) => targets,
            Err(e) => {
                tracing::warn!(error = %e, "reading due webhook deliveries failed");
                continue;
            }
        };
        let mut started = 0;
        for target in targets {
            if started == free {
                break;
            }
            let Ok(mut serving_now) = serving.lock() else {
                break;
            };
            // Already served by a task of this process: it takes the new deliveries too.
            if !serving_now.insert(target.endpoint_id.clone()) {
                continue;
            }
            drop(serving_now);
            started += 1;
            let serving = Arc::clone(&serving);
            let (store, client, settings, metrics, shutdown) = (
                Arc::clone(&store),
                client.clone(),
                settings.clone(),
                metrics.clone(),
                shutdown.clone(),
            );
            tasks.spawn(async move {
                let id = target.endpoint_id.clone();
                metrics.endpoints_busy.inc();
                drain(store, client, settings, metrics.clone(), target, shutdown).await;
                metrics.endpoints_busy.dec();
                if let Ok(mut s) = serving.lock() {
                    s.remove(&id);
                }
            });
        }
    }
    // The rounds in hand finish (bounded by the request timeout) and are recorded.
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ump_core::webhooks::SigningSecrets;

    fn delivery() -> ClaimedDelivery {
        ClaimedDelivery {
            endpoint_id: "ep_1".into(),
            event_id: "msg_1".into(),
            payload: "{}".into(),
            attempts: 0,
            retry_since: chrono::Utc::now(),
            created_at: chrono::Utc::now(),
            claim: uuid::Uuid::new_v4(),
            batch: None,
        }
    }

    fn target(url: String) -> Target {
        Target {
            endpoint_id: "ep_1".into(),
            url,
            secrets: SigningSecrets {
                current: ump_core::webhooks::new_secret(),
                previous: None,
            },
        }
    }

    fn settings(allow_loopback: bool) -> WebhookSettings {
        WebhookSettings {
            urls: WebhookUrlSettings {
                allow_http: true,
                allow_loopback,
            },
            ..WebhookSettings::default()
        }
    }

    /// A receiver on 127.0.0.1 that answers 204 and counts requests.
    async fn receiver() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&hits);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let counted = Arc::clone(&counted);
                async move {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (port, hits)
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_forbidden_address_is_refused_at_connection() {
        let (port, hits) = receiver().await;
        // `localhost` resolves to loopback: refused unless loopback is allowed, by name as by
        // address.
        for url in [
            format!("http://localhost:{port}/hook"),
            format!("http://127.0.0.1:{port}/hook"),
        ] {
            let refused = settings(false);
            let (result, _) = attempt(
                &client(&refused).unwrap(),
                refused.rules(),
                &target(url.clone()),
                &delivery(),
            )
            .await;
            match result {
                AttemptResult::Failed {
                    status: None,
                    error,
                } => {
                    assert!(error.contains("loopback"), "{url}: {error}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        let allowed = settings(true);
        let (result, _) = attempt(
            &client(&allowed).unwrap(),
            allowed.rules(),
            &target(format!("http://localhost:{port}/hook")),
            &delivery(),
        )
        .await;
        assert_eq!(result, AttemptResult::Delivered { status: 204 });
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_resolver_keeps_only_allowed_addresses() {
        let resolver = GuardedResolver {
            rules: UrlRules::default(),
        };
        let refused = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost is loopback");
        assert!(
            refused.to_string().contains("refused addresses"),
            "{refused}"
        );
        let tests = GuardedResolver {
            rules: UrlRules {
                allow_http: true,
                allow_loopback: true,
            },
        };
        let addrs: Vec<SocketAddr> = tests
            .resolve("localhost".parse().unwrap())
            .await
            .expect("allowed")
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[tokio::test]
    async fn a_slow_receiver_times_out_and_a_big_answer_is_cut() {
        let app = axum::Router::new()
            .route(
                "/slow",
                axum::routing::post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route(
                "/big",
                axum::routing::post(|| async {
                    (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "x".repeat(1_000_000),
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let quick = WebhookSettings {
            timeout: ump_core::duration::Duration::from(Duration::from_millis(300)),
            ..settings(true)
        };
        let client = client(&quick).unwrap();
        let (result, latency) = attempt(
            &client,
            quick.rules(),
            &target(format!("http://127.0.0.1:{port}/slow")),
            &delivery(),
        )
        .await;
        assert!(
            matches!(&result, AttemptResult::Failed { status: None, error } if error.contains("timed out")),
            "{result:?}"
        );
        assert!(latency < Duration::from_secs(2), "{latency:?}");
        let (result, _) = attempt(
            &client,
            quick.rules(),
            &target(format!("http://127.0.0.1:{port}/big")),
            &delivery(),
        )
        .await;
        match result {
            AttemptResult::Failed {
                status: Some(500),
                error,
            } => assert!(error.len() <= MAX_ERROR, "{}", error.len()),
            other => panic!("{other:?}"),
        }
    }
}

//! Load generator of `scripts/bench-realtime`: single-message sends at a fixed rate per priority
//! (realtime and bulk side by side), each request on its own schedule, never waiting for the
//! previous one. Prints what it sent, how many were not accepted and how long the `202`s took;
//! accept → provider-call latencies are measured afterwards from the history and the outbox.
//!
//!   bench_load --api http://127.0.0.1:18080 --key K --channel otp --rate 1000 --seconds 30

use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    api: String,
    #[arg(long)]
    key: String,
    #[arg(long)]
    channel: String,
    /// Messages per second of each priority.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds of the same load sent first, without a pause, tagged `warmup` and left out of the
    /// figures printed: the measured seconds then find the services in their steady state.
    #[arg(long, default_value_t = 0)]
    lead_in: u64,
    /// Distinguishes the bodies of one run from another's (content dedupe).
    #[arg(long, default_value = "run")]
    tag: String,
    /// Which priorities to send (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "realtime,bulk")]
    priorities: Vec<String>,
    /// Requests in flight at most, per priority.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
}

#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    /// Microseconds from request to `202`.
    answered_us: std::sync::Mutex<Vec<u64>>,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index] as f64 / 1000.0
}

async fn drive(args: Arc<Args>, http: reqwest::Client, priority: &'static str, tally: Arc<Tally>) {
    let lead_in = u64::from(args.rate) * args.lead_in;
    let total = lead_in + u64::from(args.rate) * args.seconds;
    let slots = Arc::new(tokio::sync::Semaphore::new(args.in_flight));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let url = format!("{}/v1/messages", args.api);
    let mut requests = tokio::task::JoinSet::new();
    for seq in 0..total {
        tick.tick().await;
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let measured = seq >= lead_in;
        let tag = if measured {
            args.tag.as_str()
        } else {
            "warmup"
        };
        let body = serde_json::json!({
            "channel": args.channel,
            "to": format!("+8210{:08}", seq % 50_000),
            "body": format!("[UMP] {priority} {tag} {seq:08}"),
            "priority": priority,
        });
        let request = http.post(&url).bearer_auth(&args.key).json(&body);
        let tally = Arc::clone(&tally);
        requests.spawn(async move {
            let sent = std::time::Instant::now();
            match request.send().await {
                Ok(response) if response.status().as_u16() == 202 => {
                    if !measured {
                        drop(slot);
                        return;
                    }
                    let took = sent.elapsed().as_micros() as u64;
                    if let Ok(mut answered) = tally.answered_us.lock() {
                        answered.push(took);
                    }
                    tally.accepted.fetch_add(1, Ordering::Relaxed)
                }
                Ok(_) => tally.refused.fetch_add(1, Ordering::Relaxed),
                Err(_) => tally.failed.fetch_add(1, Ordering::Relaxed),
            };
            drop(slot);
        });
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
}

// One thread: the generator is not part of the system under test, and on two shared cores every
// cross-thread wake-up it saves is CPU left to the services it measures.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    ump_core::tls::install_crypto_provider();
    let args = Arc::new(Args::parse());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.in_flight * 2)
        .build()?;
    let started = std::time::Instant::now();
    let tallies: Vec<(&'static str, Arc<Tally>)> = ["realtime", "bulk"]
        .into_iter()
        .filter(|p| args.priorities.iter().any(|wanted| wanted == p))
        .map(|p| (p, Arc::new(Tally::default())))
        .collect();
    futures::future::join_all(
        tallies
            .iter()
            .map(|(p, t)| drive(Arc::clone(&args), http.clone(), p, Arc::clone(t))),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut bad = 0;
    for (priority, tally) in &tallies {
        let accepted = tally.accepted.load(Ordering::Relaxed);
        let refused = tally.refused.load(Ordering::Relaxed);
        let failed = tally.failed.load(Ordering::Relaxed);
        bad += refused + failed;
        let mut answered = tally
            .answered_us
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        answered.sort_unstable();
        println!(
            "LOAD priority={priority} accepted={accepted} refused={refused} failed={failed} rate={:.0} \
             accept_p50_ms={:.2} accept_p99_ms={:.2}",
            accepted as f64 / (elapsed - args.lead_in as f64).max(1e-3),
            percentile(&answered, 0.5),
            percentile(&answered, 0.99)
        );
    }
    anyhow::ensure!(bad == 0, "{bad} sends were not accepted");
    Ok(())
}

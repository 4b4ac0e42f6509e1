//! The HTTP providers against local fakes of the services they call (see `fakes/`): each test
//! proves a request shape the real service would accept and the classification of its answers.
//! Every endpoint is overridden to 127.0.0.1; nothing leaves the machine.

mod fakes;

#[path = "providers/alimtalk.rs"]
mod alimtalk;
#[path = "providers/apns.rs"]
mod apns;
#[path = "providers/factory.rs"]
mod factory;
#[path = "providers/fcm.rs"]
mod fcm;
#[path = "providers/friendtalk.rs"]
mod friendtalk;
#[path = "providers/nhn_sms.rs"]
mod nhn_sms;
#[path = "providers/twilio.rs"]
mod twilio;
#[path = "providers/webhook.rs"]
mod webhook;

use std::time::Duration;
use ump_core::provider::Outcome;

/// The reason of a failure; panics on `Sent`.
fn reason(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Retryable { reason, .. } | Outcome::Permanent { reason } => reason,
        Outcome::Sent { .. } => panic!("expected a failure, got {outcome:?}"),
    }
}

fn assert_retryable(outcome: &Outcome, retry_after: Option<Duration>) {
    match outcome {
        Outcome::Retryable {
            retry_after: got, ..
        } => assert_eq!(*got, retry_after, "{outcome:?}"),
        other => panic!("expected retryable, got {other:?}"),
    }
}

fn assert_permanent(outcome: &Outcome, starts_with: &str) {
    match outcome {
        Outcome::Permanent { reason } => assert!(
            reason.starts_with(starts_with),
            "reason {reason:?} should start with {starts_with:?}"
        ),
        other => panic!("expected permanent, got {other:?}"),
    }
}

/// A 127.0.0.1 port nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

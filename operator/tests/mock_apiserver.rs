//! The reconcilers' calls to the Kubernetes API, against a mock apiserver (`tower-test`), as
//! kube-rs's controller-rs tests its reconciler: for each scenario, which requests go out, in
//! which order, with what, and that nothing else does. Fast and exact beside the end-to-end
//! tests on a real apiserver (`reconcile.rs`), which show the same scenarios converge.

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower_test::mock::{self, Handle};
use ump_domain::resources::{DeliveryPolicy, MessageChannel};
use ump_operator::kafka::KafkaAdmin;
use ump_operator::metrics::Metrics;
use ump_operator::scaling::Stabilizer;
use ump_operator::settings::Settings;
use ump_operator::{channel, policy};

type ApiServer = Handle<Request<Body>, Response<Body>>;

const NS: &str = "shop";
const POLICIES: &str = "/apis/ump.dev/v1alpha1/namespaces/shop/deliverypolicies";
const CHANNELS: &str = "/apis/ump.dev/v1alpha1/namespaces/shop/messagechannels";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

fn mock_client() -> (Client, ApiServer) {
    let (service, server) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, NS), server)
}

fn recorder(client: &Client) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: "ump-operator".to_owned(),
            instance: None,
        },
    )
}

/// Takes the next request, checks its method and path, answers what `answer` makes of its body
/// (200, JSON) and returns the request's JSON body (`Null` when it has none).
async fn serve(
    server: &mut ApiServer,
    method: Method,
    path: &str,
    answer: impl FnOnce(&Value) -> Value,
) -> Value {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(5), server.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request within 5 s; expected {method} {path}"))
        .expect("the client is gone");
    assert_eq!(
        (request.method(), request.uri().path()),
        (&method, path),
        "unexpected request {} {}",
        request.method(),
        request.uri()
    );
    let body = request
        .into_body()
        .collect()
        .await
        .expect("request body")
        .to_bytes();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).expect("a JSON body")
    };
    let answer = serde_json::to_vec(&answer(&body)).expect("answer");
    respond.send_response(
        Response::builder()
            .body(Body::from(answer))
            .expect("response"),
    );
    body
}

/// The object as the apiserver returns it after a status patch: `object` with the patch's status.
fn with_status(object: &Value) -> impl FnOnce(&Value) -> Value + use<> {
    let object = object.clone();
    move |patch: &Value| {
        let mut object = object;
        object["status"] = patch["status"].clone();
        object
    }
}

/// What a create returns: the object sent.
fn echo(body: &Value) -> Value {
    body.clone()
}

/// Runs `reconcile` against the mock while `script` serves the requests it must make; the
/// reconcile must finish with no request left unserved.
async fn run<R, S>(server: ApiServer, reconcile: R, script: S) -> Action
where
    R: std::future::Future<Output = Action> + Send + 'static,
    S: AsyncFnOnce(&mut ApiServer),
{
    let reconciling = tokio::spawn(reconcile);
    let mut server = server;
    script(&mut server).await;
    let action = tokio::time::timeout(Duration::from_secs(5), reconciling)
        .await
        .expect("the reconcile made a request the scenario did not expect, and waits for it")
        .expect("the reconcile panicked");
    drop(server);
    action
}

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {status}"))
}

// ---------------------------------------------------------------------------------------------
// DeliveryPolicy

fn policy_json(spec: Value, status: Option<Value>) -> Value {
    let mut policy = json!({
        "apiVersion": "ump.dev/v1alpha1", "kind": "DeliveryPolicy",
        "metadata": {"name": "standard", "namespace": NS, "generation": 2,
                     "uid": "6f1c0d2e-0000-4000-8000-000000000001", "resourceVersion": "7"},
        "spec": spec,
    });
    if let Some(status) = status {
        policy["status"] = status;
    }
    policy
}

fn policy_context(client: &Client) -> Arc<policy::Context> {
    Arc::new(policy::Context {
        client: client.clone(),
        recorder: recorder(client),
        metrics: Metrics::new(),
    })
}

fn reconcile_policy(
    object: Value,
    ctx: Arc<policy::Context>,
) -> impl std::future::Future<Output = Action> + Send + 'static {
    let guard: DeserializeGuard<DeliveryPolicy> =
        serde_json::from_value(object).expect("a policy object");
    async move {
        policy::reconcile(Arc::new(guard), ctx)
            .await
            .expect("reconciled")
    }
}

#[tokio::test]
async fn a_valid_policy_gets_its_condition_once() {
    let (client, server) = mock_client();
    let ctx = policy_context(&client);
    let spec = json!({"retry": {"maxAttempts": 3}});
    let status = Arc::new(Mutex::new(Value::Null));
    let written = Arc::clone(&status);
    let object = policy_json(spec.clone(), None);
    let answer = with_status(&object);
    let action = run(
        server,
        reconcile_policy(object, Arc::clone(&ctx)),
        async move |server: &mut ApiServer| {
            let path = format!("{POLICIES}/standard/status");
            let patch = serve(server, Method::PATCH, &path, answer).await;
            *written.lock().expect("status") = patch["status"].clone();
        },
    )
    .await;
    assert_eq!(action, Action::await_change());
    let status = status.lock().expect("status").clone();
    assert_eq!(status["observedGeneration"], 2);
    let valid = condition(&status, "Valid");
    assert_eq!(
        (&valid["status"], &valid["reason"]),
        (&json!("True"), &json!("Valid"))
    );

    // Looked at again with that status: nothing to write.
    let (client, server) = mock_client();
    let action = run(
        server,
        reconcile_policy(policy_json(spec, Some(status)), policy_context(&client)),
        async |_: &mut ApiServer| {},
    )
    .await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn an_invalid_policy_is_told_what_is_wrong() {
    let (client, server) = mock_client();
    let spec =
        json!({"quietHours": {"start": "22:00", "end": "07:00", "timezone": "Nowhere/City"}});
    let status = Arc::new(Mutex::new(Value::Null));
    let written = Arc::clone(&status);
    let object = policy_json(spec, None);
    let answer = with_status(&object);
    run(
        server,
        reconcile_policy(object, policy_context(&client)),
        async move |server: &mut ApiServer| {
            let path = format!("{POLICIES}/standard/status");
            let patch = serve(server, Method::PATCH, &path, answer).await;
            *written.lock().expect("status") = patch["status"].clone();
        },
    )
    .await;
    let status = status.lock().expect("status").clone();
    let valid = condition(&status, "Valid");
    assert_eq!(
        (&valid["status"], &valid["reason"]),
        (&json!("False"), &json!("InvalidSpec"))
    );
    assert!(
        valid["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Nowhere/City"),
        "{valid}"
    );
}

#[tokio::test]
async fn an_unreadable_policy_is_reported_on_its_status_and_in_an_event() {
    let (client, server) = mock_client();
    // `maxAttempts` must be a number: the object no longer fits the Rust type.
    let object = policy_json(json!({"retry": {"maxAttempts": "many"}}), None);
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    let raw = object.clone();
    run(
        server,
        reconcile_policy(object, policy_context(&client)),
        async move |server: &mut ApiServer| {
            // Its status is read raw (no earlier report to keep), then written, then announced.
            let answer = with_status(&raw);
            serve(server, Method::GET, &format!("{POLICIES}/standard"), |_| {
                raw
            })
            .await;
            let path = format!("{POLICIES}/standard/status");
            let patch = serve(server, Method::PATCH, &path, answer).await;
            let event = serve(server, Method::POST, EVENTS, echo).await;
            seen.lock().expect("requests").extend([patch, event]);
        },
    )
    .await;
    let requests = requests.lock().expect("requests").clone();
    let valid = condition(&requests[0]["status"], "Valid");
    assert_eq!(valid["reason"], "InvalidSpec");
    assert!(
        valid["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.retry.maxAttempts: invalid type"),
        "{valid}"
    );
    assert_eq!(requests[1]["reason"], "InvalidSpec");
    assert_eq!(requests[1]["type"], "Warning");
    assert_eq!(requests[1]["regarding"]["name"], "standard");
}

// ---------------------------------------------------------------------------------------------
// MessageChannel

fn channel_json(spec: Value, finalizers: &[&str]) -> Value {
    json!({
        "apiVersion": "ump.dev/v1alpha1", "kind": "MessageChannel",
        "metadata": {"name": "sms", "namespace": NS, "generation": 1, "finalizers": finalizers,
                     "uid": "6f1c0d2e-0000-4000-8000-000000000002", "resourceVersion": "11"},
        "spec": spec,
    })
}

/// A channel reconciler's context on the mock; its Kafka is an address nothing listens on, so a
/// scenario that reaches Kafka fails rather than passes by accident.
fn channel_context(client: &Client) -> Arc<channel::Context> {
    let settings = Settings::from_lookup(|key| {
        (key == "UMP_KAFKA_BOOTSTRAP").then(|| "127.0.0.1:9".to_owned())
    })
    .expect("settings");
    let kafka = KafkaAdmin::new(&ump_kafka::KafkaSettings::from_env(
        settings.kafka_bootstrap.clone(),
    ))
    .expect("Kafka clients");
    Arc::new(channel::Context {
        client: client.clone(),
        settings,
        kafka,
        recorder: recorder(client),
        metrics: Metrics::new(),
        stabilizer: Mutex::new(Stabilizer::default()),
        config_maps: Writer::default().as_reader(),
        deployments: Writer::default().as_reader(),
        policies: Writer::default().as_reader(),
    })
}

fn reconcile_channel(
    object: Value,
    ctx: Arc<channel::Context>,
) -> impl std::future::Future<Output = Action> + Send + 'static {
    let guard: DeserializeGuard<MessageChannel> =
        serde_json::from_value(object).expect("a channel object");
    async move {
        channel::reconcile(Arc::new(guard), ctx)
            .await
            .expect("reconciled")
    }
}

#[tokio::test]
async fn a_new_channel_gets_its_finalizer_before_anything_else() {
    let (client, server) = mock_client();
    let spec = json!({"type": "sms", "providers": [{"name": "sandbox", "type": "sandbox"}]});
    let patch = Arc::new(Mutex::new(Value::Null));
    let written = Arc::clone(&patch);
    let answer = channel_json(spec.clone(), &[channel::FINALIZER]);
    let action = run(
        server,
        reconcile_channel(channel_json(spec, &[]), channel_context(&client)),
        async move |server: &mut ApiServer| {
            let path = format!("{CHANNELS}/sms");
            let body = serve(server, Method::PATCH, &path, |_| answer).await;
            *written.lock().expect("patch") = body;
        },
    )
    .await;
    // The finalizer's own change brings the channel back; nothing else happens on this pass
    // (no topic, no workers): a channel deleted now cannot leave a topic behind.
    assert_eq!(action, Action::await_change());
    let patch = patch.lock().expect("patch").clone();
    assert_eq!(
        patch,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [channel::FINALIZER]},
        ])
    );
}

#[tokio::test]
async fn an_invalid_channel_reports_its_problems_and_touches_nothing_else() {
    let (client, server) = mock_client();
    // Two providers with one name: the schema allows it, the operator does not.
    let spec = json!({"type": "sms", "providers": [
        {"name": "a", "type": "sandbox"}, {"name": "a", "type": "sandbox"}]});
    let status = Arc::new(Mutex::new(Value::Null));
    let written = Arc::clone(&status);
    let object = channel_json(spec, &[channel::FINALIZER]);
    let answer = with_status(&object);
    let action = run(
        server,
        reconcile_channel(object, channel_context(&client)),
        async move |server: &mut ApiServer| {
            let path = format!("{CHANNELS}/sms/status");
            let patch = serve(server, Method::PATCH, &path, answer).await;
            *written.lock().expect("status") = patch["status"].clone();
        },
    )
    .await;
    // No topic, no ConfigMap, no Deployment (each would have been a request, or a Kafka call
    // that fails); it waits for the spec to change.
    assert_eq!(action, Action::await_change());
    let status = status.lock().expect("status").clone();
    let ready = condition(&status, "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("InvalidSpec"))
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap_or_default()
            .contains("used twice"),
        "{ready}"
    );
}

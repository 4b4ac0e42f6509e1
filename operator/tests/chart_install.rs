//! `helm install` of charts/ump into the real test kube-apiserver: every object of the release is
//! accepted and stored as rendered (read back from the server, so a field the server would prune
//! or reject fails here), the CRD templates pass a server-side dry run, and the operator runs with
//! exactly the chart's RBAC (a client certificate of its ServiceAccount) and environment,
//! reconciling a channel into a worker Deployment the server accepts and scaling the event
//! processor's Deployment.

mod chart;
mod support;

use chart::{find, kind, name, values_file};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, ResourceExt};
use serde_json::{Value as Json, json};
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use ump_domain::resources::MessageChannel;
use ump_operator::builders::is_applied;
use ump_testkit::{free_port, infra, unique_name};

const MANAGER: &str = "ump-chart-tests";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_and_the_operator_runs_with_its_rbac() {
    let client = support::client().await;
    support::apply_crds(&client).await;
    apply_monitoring_crds(&client).await;

    // Production values (MSK, ElastiCache, RDS, Amazon MQ from Secrets, monitoring on), with
    // namespaces of this run. The CRDs are applied above (shared by every test run of this
    // apiserver); the chart's CRD templates get a server-side dry run below.
    let release_ns = support::namespace(&client, "ump-chart").await;
    let channels_ns = support::namespace(&client, "ump-chart-ch").await;
    let channels_set = format!("channels.namespace={channels_ns}");
    let production = values_file("production-values.yaml");
    let chart_path = chart::chart();
    let installed = chart::helm(&[
        "install",
        "ump",
        &chart_path,
        "--namespace",
        &release_ns,
        "--values",
        &production,
        "--set",
        &channels_set,
        "--set",
        "crds.install=false",
        "--wait=false",
    ]);
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    let manifest = chart::parse(&chart::helm(&[
        "get",
        "manifest",
        "ump",
        "--namespace",
        &release_ns,
    ]));
    let kinds = read_back(&client, &manifest, &release_ns).await;
    for expected in [
        "Deployment",
        "Service",
        "Ingress",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
    ] {
        assert!(kinds.iter().any(|k| k == expected), "{expected}: {kinds:?}");
    }

    // Development values: inline URLs kept in a chart-made Secret, everything in one namespace.
    let dev_ns = support::namespace(&client, "ump-chart-dev").await;
    let dev = values_file("dev-values.yaml");
    chart::helm(&[
        "install",
        "ump",
        &chart_path,
        "--namespace",
        &dev_ns,
        "--values",
        &dev,
        "--set",
        "crds.install=false",
        "--wait=false",
    ]);
    let dev_manifest = chart::parse(&chart::helm(&[
        "get",
        "manifest",
        "ump",
        "--namespace",
        &dev_ns,
    ]));
    read_back(&client, &dev_manifest, &dev_ns).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &dev_ns);
    let connections = secrets.get("ump-connections").await.expect("connections");
    let data = connections.data.expect("data");
    assert_eq!(
        data["mysql-url"].0,
        b"mysql://ump:ump@mariadb:3306/ump".to_vec()
    );

    // The CRDs as the chart would install them, and the Tilt dependencies: server-side dry runs.
    let crd_set = chart::render(
        &release_ns,
        std::slice::from_ref(&production),
        &["crds.install=true", &channels_set],
    );
    let crds: Vec<&Value> = crd_set
        .iter()
        .filter(|o| kind(o) == "CustomResourceDefinition")
        .collect();
    assert_eq!(crds.len(), 2);
    for crd in crds {
        dry_run(&client, crd, None).await;
    }
    let dependencies = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/dev/dependencies.yaml"),
    )
    .expect("deploy/dev/dependencies.yaml");
    for object in chart::parse(&dependencies) {
        if kind(&object) != "Namespace" {
            dry_run(&client, &object, Some(&dev_ns)).await;
        }
    }

    // The API's Role: it may follow channels and policies, and nothing more.
    let api_client = service_account_client(&release_ns, "ump-api").await;
    let channels_as_api: Api<MessageChannel> = Api::namespaced(api_client.clone(), &channels_ns);
    channels_as_api
        .list(&ListParams::default())
        .await
        .expect("the API lists channels");
    let denied = channels_as_api
        .delete("anything", &DeleteParams::default())
        .await
        .expect_err("the API may not delete channels");
    assert!(denied.to_string().contains("forbidden"), "{denied}");
    let secrets_as_api: Api<Secret> = Api::namespaced(api_client, &channels_ns);
    let denied = secrets_as_api
        .list(&ListParams::default())
        .await
        .expect_err("the API reads no Secrets");
    assert!(denied.to_string().contains("forbidden"), "{denied}");

    operator_reconciles_with_the_charts_rbac(&client, &manifest, &release_ns, &channels_ns).await;

    chart::helm(&["uninstall", "ump", "--namespace", &dev_ns]);
    chart::helm(&["uninstall", "ump", "--namespace", &release_ns]);
    for ns in [&dev_ns, &channels_ns, &release_ns] {
        support::delete_namespace(&client, ns).await;
    }
}

/// Runs the real operator binary as the chart's ServiceAccount with the environment of the
/// chart's operator Deployment, and has it reconcile a channel.
async fn operator_reconciles_with_the_charts_rbac(
    client: &Client,
    manifest: &[Value],
    release_ns: &str,
    channels_ns: &str,
) {
    let deployment = find(manifest, "Deployment", "ump-operator");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let kubeconfig = service_account_kubeconfig(release_ns, "ump-operator");
    let port = free_port();
    // The operator logs to stdout: kept in a file, shown if it exits.
    let log_path = std::env::temp_dir().join(format!("{}.log", unique_name("ump-operator")));
    let log = std::fs::File::create(&log_path).expect("operator log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ump-operator"));
    // Only what the pod would have: the chart's environment and what the kubelet sets, not the
    // test runner's (a UMP_REDIS_URL of its own would clash with the chart's UMP_WORKER_ENV).
    command.env_clear();
    for var in container["env"].as_sequence().expect("env") {
        let (Some(key), Some(value)) = (var["name"].as_str(), var["value"].as_str()) else {
            continue; // fieldRefs: set below, as the kubelet would
        };
        // The operator's own Kafka client talks to the test's plain-text Kafka, not MSK; the
        // workers still get the chart's SASL/TLS settings through UMP_WORKER_ENV.
        if key.starts_with("UMP_KAFKA_CONFIG_") {
            continue;
        }
        command.env(key, value);
    }
    let mut operator = ChildGuard(
        command
            .env("UMP_KAFKA_BOOTSTRAP", infra().kafka_bootstrap())
            .env("UMP_OPERATOR_LISTEN", format!("127.0.0.1:{port}"))
            .env("UMP_LEASE_DURATION", "3s")
            .env("POD_NAME", "ump-operator-0")
            .env("POD_NAMESPACE", release_ns)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "ump_operator=info")
            .stdout(Stdio::from(log))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ump-operator"),
    );

    let channels: Api<MessageChannel> = Api::namespaced(client.clone(), channels_ns);
    let channel: MessageChannel = serde_json::from_value(json!({
        "apiVersion": "ump.dev/v1alpha1", "kind": "MessageChannel", "metadata": {"name": "sms"},
        "spec": {"type": "sms", "deletionPolicy": "Delete", "topic": {"partitions": 1},
                 "providers": [{"name": "sandbox", "type": "sandbox"}]},
    }))
    .expect("channel");
    channels
        .create(&PostParams::default(), &channel)
        .await
        .expect("create channel");
    support::eventually(
        "the channel Ready under the chart's RBAC",
        Duration::from_secs(60),
        || {
            if let Ok(Some(status)) = operator.0.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("the operator exited: {status}; its log:\n{log}");
            }
            let channels = channels.clone();
            async move {
                let c = channels.get("sms").await.ok()?;
                c.status?
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    .then_some(())
            }
        },
    )
    .await;
    // The worker Deployment the server accepted carries what the chart handed over.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), channels_ns);
    let workers = deployments.get("ump-worker-sms").await.expect("workers");
    let pod = workers.spec.expect("spec").template.spec.expect("pod");
    assert_eq!(pod.service_account_name.as_deref(), Some("ump-worker"));
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("123456789012.dkr.ecr.ap-northeast-2.amazonaws.com/ump:0.1.0")
    );
    let env: Vec<&str> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    for var in [
        "UMP_KAFKA_CONFIG_SASL_PASSWORD",
        "UMP_REDIS_URL",
        "UMP_MYSQL_URL",
        "UMP_AMQP_URL",
    ] {
        assert!(env.contains(&var), "{var}: {env:?}");
    }

    // The processor's Deployment, installed without replicas, scaled to at least
    // events.autoscaling.minReplicas (2) through its scale subresource.
    let processors: Api<Deployment> = Api::namespaced(client.clone(), release_ns);
    let replicas = support::eventually(
        "the event processor scaled under the chart's RBAC",
        Duration::from_secs(60),
        || {
            let processors = processors.clone();
            async move {
                let d = processors.get("ump-events").await.ok()?;
                d.managed_fields()
                    .iter()
                    .any(|f| f.manager.as_deref() == Some("ump-operator"))
                    .then_some(d.spec?.replicas?)
            }
        },
    )
    .await;
    assert!((2..=12).contains(&replicas), "{replicas} processors");

    // Deleted while the operator runs, so that its finalizer removes the topic.
    channels
        .delete("sms", &DeleteParams::default())
        .await
        .expect("delete channel");
    support::eventually("the channel gone", Duration::from_secs(60), || async {
        channels.get_opt("sms").await.ok()?.is_none().then_some(())
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &operator.0.id().to_string()])
        .status();
    let exit = support::eventually("the operator exits", Duration::from_secs(20), || {
        let waited = operator.0.try_wait().ok().flatten();
        async move { waited }
    })
    .await;
    assert!(exit.success(), "the operator exits cleanly: {exit}");
}

/// Reads every object of `manifest` back from the server and checks it holds every rendered
/// field unchanged. Returns the kinds seen.
async fn read_back(client: &Client, manifest: &[Value], namespace: &str) -> Vec<String> {
    let mut kinds = Vec::new();
    for object in manifest {
        let (api, rendered) = dynamic_api(client, object, Some(namespace)).await;
        let stored = api
            .get(name(object))
            .await
            .unwrap_or_else(|e| panic!("{}/{} not stored: {e}", kind(object), name(object)));
        let stored = serde_json::to_value(&stored).expect("stored JSON");
        let mut rendered = rendered;
        if kind(object) == "Secret" {
            // The server keeps stringData as base64 data.
            let string_data = rendered
                .as_object_mut()
                .and_then(|o| o.remove("stringData"))
                .unwrap_or_default();
            for (key, value) in string_data.as_object().into_iter().flatten() {
                let stored_value = stored["data"][key].as_str().unwrap_or_default();
                assert_eq!(
                    decode_base64(stored_value),
                    value.as_str().unwrap_or_default().as_bytes(),
                    "Secret {} key {key}",
                    name(object)
                );
            }
        }
        assert!(
            is_applied(&rendered, &stored),
            "{}/{} was not stored as rendered:\nrendered {rendered:#}\nstored {stored:#}",
            kind(object),
            name(object)
        );
        kinds.push(kind(object).to_owned());
    }
    kinds
}

/// Server-side apply in dry-run mode: validated and defaulted by the server, nothing stored.
async fn dry_run(client: &Client, object: &Value, namespace: Option<&str>) {
    let (api, mut rendered) = dynamic_api(client, object, namespace).await;
    if let Some(ns) = namespace {
        rendered["metadata"]["namespace"] = json!(ns);
    }
    let params = PatchParams::apply(MANAGER).dry_run().force();
    let accepted = api
        .patch(name(object), &params, &Patch::Apply(&rendered))
        .await
        .unwrap_or_else(|e| panic!("{}/{} rejected: {e}", kind(object), name(object)));
    let accepted = serde_json::to_value(&accepted).expect("JSON");
    let mut expected = rendered.clone();
    if kind(object) == "Secret" {
        // stringData comes back as data.
        if let Some(o) = expected.as_object_mut() {
            o.remove("stringData");
        }
    }
    assert!(
        is_applied(&expected, &accepted),
        "{}/{} changed by the server:\n{accepted:#}",
        kind(object),
        name(object)
    );
}

async fn dynamic_api(
    client: &Client,
    object: &Value,
    namespace: Option<&str>,
) -> (Api<DynamicObject>, Json) {
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind(object));
    let (resource, capabilities) = pinned_kind(client, &gvk).await.unwrap_or_else(|e| {
        panic!(
            "the server does not serve {api_version} {}: {e}",
            kind(object)
        )
    });
    let api = match (capabilities.scope, namespace) {
        (Scope::Namespaced, Some(default)) => {
            let ns = object["metadata"]["namespace"].as_str().unwrap_or(default);
            // Tilt's dependencies name their own namespace: the dry run uses the test's.
            let ns = if object["metadata"]["namespace"].as_str() == Some("ump-dev") {
                default
            } else {
                ns
            };
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        _ => Api::all_with(client.clone(), &resource),
    };
    (api, serde_json::to_value(object).expect("object as JSON"))
}

async fn apply_monitoring_crds(client: &Client) {
    let dir = PathBuf::from(infra().require("Monitoring", "UMP_MONITORING_CRDS"));
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in [
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_podmonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
    ] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "Monitoring: {} ({e}); run `scripts/infra up monitoring`",
                path.display()
            )
        });
        let crd: CustomResourceDefinition =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("Kubernetes: apply {}: {e}", path.display()));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(
                crds.clone(),
                &crd.name_any(),
                conditions::is_crd_established(),
            ),
        )
        .await
        .expect("CRD established within 30 s")
        .expect("watch CRD");
    }
}

/// A kubeconfig authenticating as ServiceAccount `namespace/name` through a client certificate
/// from the test cluster's CA: RBAC sees exactly that ServiceAccount's bindings.
fn service_account_kubeconfig(namespace: &str, name: &str) -> PathBuf {
    let pki = PathBuf::from(infra().require("Kube", "UMP_INFRA_HOME")).join("cache/kube/pki");
    let dir = std::env::temp_dir().join(unique_name("ump-sa"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let subject = format!("/O=system:serviceaccounts/CN=system:serviceaccount:{namespace}:{name}");
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl");
        assert!(
            output.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-subj",
        &subject,
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
    ]);
    // Extensions make it an X.509 v3 certificate, which rustls requires.
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n",
    )
    .expect("write extensions");
    let ca = pki.join("ca.crt");
    let ca_key = pki.join("ca.key");
    run(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-extfile",
        "client.ext",
        "-CA",
        path(&ca),
        "-CAkey",
        path(&ca_key),
        "-set_serial",
        &format!("0x{}", &unique_name("s")[2..]),
        "-days",
        "1",
        "-out",
        "client.crt",
    ]);
    let admin = std::fs::read_to_string(infra().kubeconfig()).expect("kubeconfig");
    let admin: Value = serde_yaml_ng::from_str(&admin).expect("kubeconfig YAML");
    let server = admin["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("server");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: sa\n\
             clusters: [{{name: test, cluster: {{server: {server}, certificate-authority: {}}}}}]\n\
             users: [{{name: sa, user: {{client-certificate: {}, client-key: {}}}}}]\n\
             contexts: [{{name: sa, context: {{cluster: test, user: sa}}}}]\n",
            ca.display(),
            dir.join("client.crt").display(),
            dir.join("client.key").display()
        ),
    )
    .expect("write kubeconfig");
    kubeconfig
}

async fn service_account_client(namespace: &str, name: &str) -> Client {
    let path = service_account_kubeconfig(namespace, name);
    let kubeconfig = Kubeconfig::read_from(&path).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = ALPHABET.iter().position(|c| *c == byte).expect("base64") as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

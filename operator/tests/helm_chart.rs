//! The Helm chart in `charts/ump`, with the real helm from `scripts/infra up`: it lints, renders a
//! hardened install from its defaults, refuses bad values with a clear message, and its alerting
//! rules pass `promtool` (and fire when they should). `chart_install.rs` installs it for real.

mod chart;

use chart::{REQUIRED, find, kind, name, render, try_helm, values_file};
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use ump_domain::resources::MessageChannel;
use ump_operator::settings::Settings;
use ump_testkit::{infra, unique_name};

#[test]
fn chart_lints_with_each_values_file() {
    let chart = chart::chart();
    let mut required = Vec::new();
    for set in REQUIRED {
        required.extend(["--set", set]);
    }
    let mut defaults = vec!["lint", "--strict", chart.as_str()];
    defaults.extend(&required);
    chart::helm(&defaults);
    for file in ["dev-values.yaml", "production-values.yaml"] {
        let file = values_file(file);
        chart::helm(&["lint", "--strict", chart.as_str(), "--values", &file]);
    }
}

#[test]
fn defaults_render_a_hardened_install() {
    let objects = render("ump-system", &[], &REQUIRED);
    let kinds: BTreeMap<&str, usize> = objects.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(kind(o)).or_default() += 1;
        m
    });
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("CustomResourceDefinition", 2),
            ("Deployment", 3),
            ("PodDisruptionBudget", 1),
            ("Role", 4),
            ("RoleBinding", 4),
            ("Secret", 1),
            ("Service", 2),
            ("ServiceAccount", 4),
        ]),
        "monitoring objects, Ingress and HPA are opt-in; no ClusterRole at all"
    );
    for object in &objects {
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/managed-by"].as_str(),
            Some("Helm"),
            "{}/{}",
            kind(object),
            name(object)
        );
        if kind(object) != "CustomResourceDefinition" {
            assert_eq!(
                object["metadata"]["namespace"].as_str(),
                Some("ump-system"),
                "{}/{} lands in the release namespace",
                kind(object),
                name(object)
            );
        }
    }
    for crd in objects
        .iter()
        .filter(|o| kind(o) == "CustomResourceDefinition")
    {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"].as_str(),
            Some("keep"),
            "uninstalling must not delete every channel"
        );
    }

    let api = pod_spec(find(&objects, "Deployment", "ump-api"));
    let operator = pod_spec(find(&objects, "Deployment", "ump-operator"));
    let events = pod_spec(find(&objects, "Deployment", "ump-events"));
    for (pod, command) in [
        (api, vec!["ump", "api"]),
        (operator, vec!["ump-operator"]),
        (events, vec!["ump-events"]),
    ] {
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
        assert_eq!(pod["securityContext"]["runAsUser"].as_i64(), Some(65532));
        let container = &pod["containers"][0];
        assert_eq!(container["image"].as_str(), Some("ghcr.io/ump/ump:0.1.0"));
        let actual: Vec<&str> = container["command"]
            .as_sequence()
            .expect("command")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(actual, command);
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
        assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
        assert_eq!(security["capabilities"]["drop"][0].as_str(), Some("ALL"));
        // No credential inline: URLs, passwords and keys come from Secrets.
        for var in container["env"].as_sequence().expect("env") {
            let var_name = var["name"].as_str().expect("name");
            if ["_URL", "PASSWORD", "USERNAME", "API_KEY"]
                .iter()
                .any(|s| var_name.ends_with(s))
            {
                assert!(
                    var["valueFrom"]["secretKeyRef"].is_mapping(),
                    "{var_name} must come from a Secret"
                );
            }
        }
    }
    let api_env = env_values(api);
    assert_eq!(api_env["UMP_LISTEN"], "0.0.0.0:8080");
    assert_eq!(api_env["UMP_WATCH_NAMESPACE"], "ump-system");
    assert_eq!(api_env["UMP_KAFKA_BOOTSTRAP"], "kafka:9092");
    assert_eq!(api_env["UMP_EVENTS_TOPIC"], "ump.events");

    // The processor: the API's topic, MySQL from the same Secret, nothing it has no use for, and
    // no Kubernetes API token or Role at all.
    let events_env = env_values(events);
    assert_eq!(events_env["UMP_EVENTS_LISTEN"], "0.0.0.0:9091");
    assert_eq!(events_env["UMP_EVENTS_TOPIC"], api_env["UMP_EVENTS_TOPIC"]);
    assert_eq!(events_env["UMP_EVENTS_GROUP"], "ump-events");
    assert_eq!(events_env["UMP_KAFKA_BOOTSTRAP"], "kafka:9092");
    let secret_refs = |pod: &Value| -> BTreeMap<String, String> {
        pod["containers"][0]["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .filter_map(|v| {
                let r = &v["valueFrom"]["secretKeyRef"];
                Some((
                    v["name"].as_str()?.to_owned(),
                    format!("{}/{}", r["name"].as_str()?, r["key"].as_str()?),
                ))
            })
            .collect()
    };
    let events_secrets = secret_refs(events);
    assert_eq!(
        events_secrets,
        BTreeMap::from([(
            "UMP_MYSQL_URL".to_owned(),
            "ump-connections/mysql-url".to_owned()
        )])
    );
    assert_eq!(
        secret_refs(api)["UMP_MYSQL_URL"],
        events_secrets["UMP_MYSQL_URL"]
    );
    assert_eq!(events["serviceAccountName"].as_str(), Some("ump-events"));
    assert_eq!(
        events["automountServiceAccountToken"].as_bool(),
        Some(false)
    );
    let account = find(&objects, "ServiceAccount", "ump-events");
    assert_eq!(
        account["automountServiceAccountToken"].as_bool(),
        Some(false)
    );
    for binding in objects.iter().filter(|o| kind(o) == "RoleBinding") {
        for subject in binding["subjects"].as_sequence().expect("subjects") {
            assert_ne!(
                subject["name"].as_str(),
                Some("ump-events"),
                "RoleBinding {} grants the processor something",
                name(binding)
            );
        }
    }
    let probes = &events["containers"][0];
    assert_eq!(
        probes["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        probes["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(probes["ports"][0]["containerPort"].as_i64(), Some(9091));
    // The operator owns the replicas (autoscaling is on by default): Helm must not set them.
    assert!(
        find(&objects, "Deployment", "ump-events")["spec"]["replicas"].is_null(),
        "an upgrade would reset the operator's replica count"
    );
    let secret = find(&objects, "Secret", "ump-connections");
    assert_eq!(
        secret["stringData"]["mysql-url"].as_str(),
        Some("mysql://ump:secret@mysql:3306/ump")
    );
}

#[test]
fn the_operator_accepts_the_settings_the_chart_gives_it() {
    let objects = render("ump", &[values_file("production-values.yaml")], &[]);
    let operator = pod_spec(find(&objects, "Deployment", "ump-operator"));
    let env = env_values(operator);
    // The operator's own parser, on exactly what the chart renders.
    let settings = Settings::from_lookup(|key| env.get(key).cloned()).expect("settings parse");
    assert_eq!(settings.watch_namespace.as_deref(), Some("messaging"));
    assert_eq!(
        settings.worker_image,
        "123456789012.dkr.ecr.ap-northeast-2.amazonaws.com/ump:0.1.0"
    );
    assert_eq!(
        settings.worker_tls_secret.as_deref(),
        Some("ump-ca-bundles")
    );
    assert_eq!(
        settings.worker_service_account.as_deref(),
        Some("ump-worker")
    );
    let election = settings.leader_election.as_ref().expect("leader election");
    assert_eq!(election.lease_name, "ump-operator");
    // The processor it scales: the chart's own Deployment, group and topic, with the bounds of
    // events.autoscaling.
    let processor = settings.processor.as_ref().expect("processor scaling");
    assert_eq!(
        (processor.namespace.as_str(), processor.deployment.as_str()),
        ("ump", "ump-events")
    );
    let events = env_values(pod_spec(find(&objects, "Deployment", "ump-events")));
    assert_eq!(processor.topic, events["UMP_EVENTS_TOPIC"]);
    assert_eq!(processor.group, events["UMP_EVENTS_GROUP"]);
    assert_eq!(
        (
            processor.scaling.min_replicas,
            processor.scaling.max_replicas,
            processor.scaling.lag_per_replica
        ),
        (2, 12, 10000)
    );

    // ... and the worker Deployment it builds from them: Kafka SASL/TLS and every URL from the
    // Secrets the values name, the CA bundles mounted.
    let channel: MessageChannel = serde_yaml_ng::from_str(
        "apiVersion: ump.dev/v1alpha1\nkind: MessageChannel\n\
         metadata: {name: sms, namespace: messaging, uid: 4f7e6c1a-0000-4000-8000-000000000009}\n\
         spec: {type: sms, providers: [{name: sandbox, type: sandbox}]}\n",
    )
    .expect("channel");
    let deployment =
        ump_operator::builders::deployment(&channel, &settings, 1, "h").expect("deployment");
    let pod = deployment.spec.expect("spec").template.spec.expect("pod");
    let container = &pod.containers[0];
    let worker_env: BTreeMap<&str, &k8s_openapi::api::core::v1::EnvVar> = container
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e))
        .collect();
    let secret_of = |var: &str| {
        worker_env[var]
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .map(|s| (s.name.as_str(), s.key.as_str()))
    };
    assert_eq!(
        worker_env["UMP_KAFKA_CONFIG_SECURITY_PROTOCOL"]
            .value
            .as_deref(),
        Some("SASL_SSL")
    );
    assert_eq!(
        secret_of("UMP_KAFKA_CONFIG_SASL_PASSWORD"),
        Some(("ump-msk", "password"))
    );
    assert_eq!(secret_of("UMP_REDIS_URL"), Some(("ump-redis", "url")));
    assert_eq!(secret_of("UMP_MYSQL_URL"), Some(("ump-mysql", "url")));
    assert_eq!(secret_of("UMP_AMQP_URL"), Some(("ump-amqp", "url")));
    assert_eq!(worker_env["UMP_WORKER_LANES"].value.as_deref(), Some("512"));
    assert!(
        container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/etc/ump/tls")
    );
}

#[test]
fn the_processor_is_optional_and_scaled_by_the_operator_only_when_asked() {
    let operator_env =
        |objects: &[Value]| env_values(pod_spec(find(objects, "Deployment", "ump-operator")));
    let names = |objects: &[Value]| -> BTreeSet<String> {
        objects
            .iter()
            .map(|o| format!("{}/{}", kind(o), name(o)))
            .collect()
    };
    let monitored = ["monitoring.serviceMonitor.enabled=true"];
    let all: Vec<&str> = REQUIRED.iter().chain(&monitored).copied().collect();

    let scaled = render("ump", &[], &all);
    for object in [
        "Deployment/ump-events",
        "ServiceAccount/ump-events",
        "PodMonitor/ump-events",
        "Role/ump-operator-events",
        "RoleBinding/ump-operator-events",
    ] {
        assert!(names(&scaled).contains(object), "{object}");
    }
    assert_eq!(operator_env(&scaled)["UMP_EVENTS_DEPLOYMENT"], "ump-events");
    // The operator may read and scale that one Deployment, and nothing else in the namespace.
    let role = find(&scaled, "Role", "ump-operator-events");
    for rule in role["rules"].as_sequence().expect("rules") {
        assert_eq!(
            rule["resourceNames"].as_sequence().map(Vec::len),
            Some(1),
            "{rule:?}"
        );
        assert_eq!(rule["resourceNames"][0].as_str(), Some("ump-events"));
    }
    let monitor = find(&scaled, "PodMonitor", "ump-events");
    let processor = find(&scaled, "Deployment", "ump-events");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        processor["spec"]["selector"]["matchLabels"]
    );

    // Scaled by hand: Helm sets the replicas, the operator is not told about the processor.
    let mut fixed = all.clone();
    fixed.extend(["events.autoscaling.enabled=false", "events.replicas=3"]);
    let fixed = render("ump", &[], &fixed);
    assert_eq!(
        find(&fixed, "Deployment", "ump-events")["spec"]["replicas"].as_i64(),
        Some(3)
    );
    assert!(!operator_env(&fixed).contains_key("UMP_EVENTS_DEPLOYMENT"));
    assert!(!names(&fixed).contains("Role/ump-operator-events"));

    // Disabled: no trace of it, and the operator leaves any Deployment alone.
    let mut off = all.clone();
    off.push("events.enabled=false");
    let off = render("ump", &[], &off);
    let left: Vec<String> = names(&off)
        .into_iter()
        .filter(|n| n.ends_with("/ump-events") || n.ends_with("-events"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!operator_env(&off).contains_key("UMP_EVENTS_DEPLOYMENT"));
}

#[test]
fn every_rbac_rule_says_why() {
    let text = std::fs::read_to_string(chart::chart_dir().join("templates/operator-rbac.yaml"))
        .expect("operator-rbac.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let mut rules = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") {
            rules += 1;
            assert!(
                i > 0 && lines[i - 1].trim_start().starts_with('#'),
                "rule at line {} has no comment saying why it is needed",
                i + 1
            );
        }
    }
    assert!(rules >= 8, "found {rules} rules");
}

#[test]
fn bad_values_fail_with_a_clear_message() {
    let chart = chart::chart();
    let cases: [(&[&str], &str); 10] = [
        (&[], "kafka.bootstrap is required"),
        (
            &[REQUIRED[0]],
            "Redis is required: set redis.existingSecret",
        ),
        (&[REQUIRED[0], REQUIRED[1]], "MySQL is required"),
        (
            &["api.replica=2"],
            "additional properties 'replica' not allowed",
        ),
        (
            &["api.replicas=0"],
            "at '/api/replicas': minimum: got 0, want 1",
        ),
        (
            &["kafka.sasl.mechanism=SCRAM"],
            "at '/kafka/sasl/mechanism': value must be one of",
        ),
        (
            &["kafka.sasl.mechanism=SCRAM-SHA-512"],
            "kafka.sasl.existingSecret: name the Secret",
        ),
        (
            &["operator.replicas=2", "operator.leaderElection=false"],
            "at '/operator/leaderElection': value must be true",
        ),
        (
            &["events.autoscaling.minReplicas=0"],
            "at '/events/autoscaling/minReplicas': minimum: got 0, want 1",
        ),
        (
            &[
                "events.autoscaling.minReplicas=5",
                "events.autoscaling.maxReplicas=2",
            ],
            "events.autoscaling: minReplicas must not be above maxReplicas",
        ),
    ];
    for (sets, expected) in cases {
        let mut args = vec!["template", "ump", chart.as_str()];
        // The required values first, so each case fails for its own reason.
        let all: Vec<&str> = if sets.len() < 3 && sets.iter().all(|s| REQUIRED.contains(s)) {
            sets.to_vec()
        } else {
            REQUIRED
                .iter()
                .copied()
                .chain(sets.iter().copied())
                .collect()
        };
        for set in &all {
            args.extend(["--set", set]);
        }
        let error = try_helm(&args).expect_err("bad values must fail");
        assert!(
            error.contains(expected),
            "--set {all:?}: expected {expected:?} in:\n{error}"
        );
    }
}

#[test]
fn alerting_rules_pass_promtool_and_fire_when_they_should() {
    let objects = render("ump", &[values_file("production-values.yaml")], &[]);
    let rule = find(&objects, "PrometheusRule", "ump-alerts");
    let dir = std::env::temp_dir().join(unique_name("ump-rules"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rules = dir.join("rules.yaml");
    let groups = serde_yaml_ng::to_string(&serde_yaml_ng::Mapping::from_iter([(
        Value::from("groups"),
        rule["spec"]["groups"].clone(),
    )]))
    .expect("rules YAML");
    std::fs::write(&rules, groups).expect("write rules");
    let promtool = infra().require("Monitoring", "UMP_PROMTOOL");
    let run = |args: &[&str]| {
        let output = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("promtool: cannot run {promtool} (scripts/infra up monitoring): {e}")
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "promtool {}:\n{text}",
            args.join(" ")
        );
        text
    };
    let checked = run(&["check", "rules", "rules.yaml"]);
    assert!(checked.contains("SUCCESS: 14 rules found"), "{checked}");

    // Unit tests of the alerts on synthetic series shaped like the real ones.
    std::fs::write(dir.join("alerts-test.yaml"), ALERT_TESTS).expect("write tests");
    run(&["test", "rules", "alerts-test.yaml"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// promtool rule tests: each alert fires on the series of a real incident and stays quiet on a
/// healthy one. Thresholds are those of production-values.yaml (the chart's defaults).
const ALERT_TESTS: &str = r#"
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # sms: 10 % failed, then dead letters too (alert); email: 1 % failed (quiet).
      - series: 'ump_messages_total{namespace="messaging", channel="sms", provider="nhn", outcome="sent"}'
        values: '0+90x40'
      - series: 'ump_messages_total{namespace="messaging", channel="sms", provider="nhn", outcome="failed"}'
        values: '0+10x40'
      - series: 'ump_messages_total{namespace="messaging", channel="email", provider="smtp", outcome="sent"}'
        values: '0+99x40'
      - series: 'ump_messages_total{namespace="messaging", channel="email", provider="smtp", outcome="failed"}'
        values: '0+1x40'
      - series: 'ump_messages_total{namespace="messaging", channel="sms", provider="nhn", outcome="dead_lettered"}'
        values: '0x20 1+1x20'
      - series: 'ump_operator_channel_consumer_lag{namespace="messaging", channel="sms"}'
        values: '500+100x40'
      - series: 'ump_operator_channel_consumer_lag{namespace="messaging", channel="email"}'
        values: '5000x40'
      - series: 'ump_provider_circuit_open{namespace="messaging", channel="sms", provider="nhn", pod="w-1"}'
        values: '0x10 1x30'
      - series: 'ump_operator_reconcile_errors_total{namespace="ump", controller="channel", reason="kafka"}'
        values: '0+1x40'
      - series: 'ump_operator_leader{namespace="ump", pod="op-0"}'
        values: '1x40'
      - series: 'ump_worker_paused_seconds_total{namespace="messaging", dependency="redis", pod="w-1"}'
        values: '0x10 0+60x30'
      - series: 'ump_api_rejected_total{namespace="ump", reason="unavailable"}'
        values: '0x40'
      # ump: a policy turned invalid at minute 5 under two channels, both API processes see it
      # (kept: counted once, max); a channel left out for 5 minutes only (quiet).
      - series: 'ump_api_channels_invalid{namespace="ump", state="kept", pod="a-1"}'
        values: '0x5 2x35'
      - series: 'ump_api_channels_invalid{namespace="ump", state="kept", pod="a-2"}'
        values: '0x5 2x35'
      - series: 'ump_api_channels_invalid{namespace="ump", state="left_out", pod="a-1"}'
        values: '0x5 1x5 0x30'
      # Two workers see the same 3 overdue parkings from minute 10 (their scheduler is stuck).
      - series: 'ump_parked_overdue_messages{namespace="messaging", pod="w-1"}'
        values: '0x10 3x30'
      - series: 'ump_parked_overdue_messages{namespace="messaging", pod="w-2"}'
        values: '0x10 3x30'
      - series: 'ump_parking_repairs_total{namespace="messaging", pod="w-1"}'
        values: '0x20 2x20'
      # ump: two processors whose backlog grows by 1000 a minute, and whose commits fail from
      # minute 10; elsewhere: a large but steady backlog, and failures long past (quiet).
      - series: 'ump_event_backlog{namespace="ump", pod="e-1"}'
        values: '20000+500x40'
      - series: 'ump_event_backlog{namespace="ump", pod="e-2"}'
        values: '10000+500x40'
      - series: 'ump_event_backlog{namespace="ump-steady", pod="e-1"}'
        values: '50000x40'
      # ump: two API processes report the same growing outbox (counted once: max); elsewhere a
      # large outbox that does not grow (a send_rate at work: quiet).
      - series: 'ump_journey_outbox_messages{namespace="ump", pod="a-1"}'
        values: '12000+400x40'
      - series: 'ump_journey_outbox_messages{namespace="ump", pod="a-2"}'
        values: '12000+400x40'
      - series: 'ump_journey_outbox_messages{namespace="ump-steady", pod="a-1"}'
        values: '50000x40'
      - series: 'ump_event_batch_failures_total{namespace="ump", pod="e-1"}'
        values: '0x10 0+3x30'
      - series: 'ump_event_batch_failures_total{namespace="ump-steady", pod="e-1"}'
        values: '7x40'
    alert_rule_test:
      - eval_time: 12m
        alertname: UMPParkedMessagesOverdue
        exp_alerts: []
      - eval_time: 20m
        alertname: UMPParkedMessagesOverdue
        exp_alerts:
          - exp_labels: {severity: critical, namespace: messaging}
            exp_annotations:
              summary: "Parked UMP messages are not coming back"
              description: "3 parked messages (retries, send_at, quiet hours) in messaging have been due for over a minute and are still not republished: no worker's scheduler is running for their channels, or it cannot reach Kafka or MySQL."
      - eval_time: 12m
        alertname: UMPChannelConfigInvalid
        exp_alerts: []
      - eval_time: 20m
        alertname: UMPChannelConfigInvalid
        exp_alerts:
          - exp_labels: {severity: warning, namespace: ump, state: kept}
            exp_annotations:
              summary: "UMP's API has channels with an invalid configuration"
              description: "2 channels the API in ump follows have had an invalid MessageChannel or DeliveryPolicy for 10 minutes (state kept). A kept channel runs on its last valid configuration and changes to it wait for the fix; a left_out channel refuses sends. The Ready condition of each MessageChannel names the problems."
      - eval_time: 15m
        alertname: UMPParkedMessagesRepaired
        exp_alerts: []
      - eval_time: 25m
        alertname: UMPParkedMessagesRepaired
        exp_alerts:
          - exp_labels: {severity: warning, namespace: messaging}
            exp_annotations:
              summary: "UMP found messages whose republished copy went missing"
              description: "The parking sweep in messaging parked 2 messages again that were republished over 10 minutes ago and never reached an outcome (ump_scheduled_unparked_messages). Nothing is lost, but something dropped messages between the scheduler and the workers: check Kafka (unclean leader elections, retention) and the workers' logs."
      - eval_time: 30m
        alertname: UMPDeliveryFailureRatioHigh
        exp_alerts:
          - exp_labels: {severity: warning, namespace: messaging, channel: sms}
            exp_annotations:
              summary: "Channel sms fails more messages than usual"
              description: "10.89% of the messages of channel messaging/sms finished as failed, dead-lettered or expired over 10 minutes. Check the provider (ump_messages_total by provider) and the failed messages' reasons in the history."
      - eval_time: 30m
        alertname: UMPDeadLettersGrowing
        exp_alerts:
          - exp_labels: {severity: warning, namespace: messaging, channel: sms}
            exp_annotations:
              summary: "Channel sms is dead-lettering messages"
              description: "10 messages of channel messaging/sms ran out of retries in 15 minutes; they wait in the channel's <topic>.dlq topic."
      - eval_time: 10m
        alertname: UMPDeadLettersGrowing
        exp_alerts: []
      - eval_time: 35m
        alertname: UMPConsumerLagGrowing
        exp_alerts:
          - exp_labels: {severity: warning, namespace: messaging, channel: sms}
            exp_annotations:
              summary: "Channel sms falls behind"
              description: "Channel messaging/sms has 4k messages waiting and the backlog kept growing for 15 minutes. Its workers may be at maxReplicas or the partition count, rate limited, or paused on a dependency."
      - eval_time: 20m
        alertname: UMPProviderCircuitOpen
        exp_alerts:
          - exp_labels: {severity: warning, namespace: messaging, channel: sms, provider: nhn}
            exp_annotations:
              summary: "Provider nhn of channel sms is cut off"
              description: "The circuit breaker of provider nhn (channel messaging/sms) has kept traffic away for 5 minutes: the provider keeps failing with retryable errors, and its traffic goes to the next provider, if any."
      - eval_time: 12m
        alertname: UMPProviderCircuitOpen
        exp_alerts: []
      - eval_time: 30m
        alertname: UMPOperatorReconcileErrors
        exp_alerts:
          - exp_labels: {severity: warning, namespace: ump, controller: channel, reason: kafka}
            exp_annotations:
              summary: "The UMP operator keeps failing to reconcile (kafka)"
              description: "The channel controller has failed with kafka errors for 15 minutes; see the operator's log and the channels' conditions (kubectl get messagechannels)."
      - eval_time: 30m
        alertname: UMPOperatorNoLeader
        exp_alerts: []
      - eval_time: 30m
        alertname: UMPWorkersPaused
        exp_alerts:
          - exp_labels: {severity: critical, namespace: messaging, dependency: redis}
            exp_annotations:
              summary: "UMP workers wait on redis"
              description: "Workers in messaging have been pausing for redis for 5 minutes: nothing is lost, but nothing is delivered until it answers again."
      - eval_time: 30m
        alertname: UMPBrokerUnavailable
        exp_alerts: []
      - eval_time: 10m
        alertname: UMPEventProcessorFallingBehind
        exp_alerts: []
      - eval_time: 35m
        alertname: UMPEventProcessorFallingBehind
        exp_alerts:
          - exp_labels: {severity: warning, namespace: ump}
            exp_annotations:
              summary: "UMP's event processor falls behind"
              description: "65k behaviour events in ump wait for the event processor and the backlog kept growing for 15 minutes: segment memberships lag behind what people do. The processor may be at its maxReplicas or the events topic's partition count, or slowed down by MySQL."
      - eval_time: 10m
        alertname: UMPJourneyMessagesWaiting
        exp_alerts: []
      - eval_time: 35m
        alertname: UMPJourneyMessagesWaiting
        exp_alerts:
          - exp_labels: {severity: warning, namespace: ump}
            exp_annotations:
              summary: "UMP's journey messages wait in the outbox"
              description: "26k journey messages in ump wait for the API's relay and the outbox kept growing for 15 minutes: journey sends go out late. The API may be down or unable to reach Kafka, or a journey's send_rate holds more than it lets through."
      - eval_time: 15m
        alertname: UMPEventBatchesFailing
        exp_alerts: []
      - eval_time: 30m
        alertname: UMPEventBatchesFailing
        exp_alerts:
          - exp_labels: {severity: critical, namespace: ump}
            exp_annotations:
              summary: "UMP's event processor cannot commit batches of events"
              description: "The event processor in ump has kept failing to commit batches of events to MySQL for 10 minutes. It retries each batch until it goes in, so nothing is lost, but the events behind it wait: check MySQL and the processor's log."
"#;

fn pod_spec(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]
}

/// The plain (`value`) environment of a pod's first container.
fn env_values(pod: &Value) -> BTreeMap<String, String> {
    pod["containers"][0]["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .filter_map(|v| {
            Some((
                v["name"].as_str()?.to_owned(),
                v["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[test]
fn the_dockerfile_builds_with_the_release_script_and_runs_as_non_root() {
    let root = chart::chart_dir().join("../..");
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    let stages: Vec<&str> = dockerfile
        .split("\nFROM ")
        .skip(1)
        .map(|s| s.lines().next().unwrap_or_default())
        .collect();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage: {stages:?}"
    );
    let build = dockerfile.split("\nFROM ").nth(1).expect("build stage");
    assert!(
        build.contains("scripts/build-release /out"),
        "the build stage runs the script CI checks"
    );
    let runtime = dockerfile.split("\nFROM ").last().expect("runtime stage");
    assert!(stages[1].starts_with("gcr.io/distroless/"), "{}", stages[1]);
    let user = runtime
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER in the final stage");
    assert_eq!(user.trim(), "65532:65532", "numeric non-root user");
    // Every binary the chart and the operator run is in the image, on PATH.
    for binary in ["ump", "ump-worker", "ump-operator", "ump-events"] {
        assert!(
            runtime.lines().any(|l| l.starts_with("COPY --from=build")
                && l.contains(&format!("/out/bin/{binary} "))
                && l.trim_end().ends_with("/usr/local/bin/")),
            "{binary} is not copied to /usr/local/bin"
        );
    }
    let objects = render("ump", &[], &REQUIRED);
    let commands: BTreeSet<String> = objects
        .iter()
        .filter(|o| kind(o) == "Deployment")
        .map(|d| {
            pod_spec(d)["containers"][0]["command"][0]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        commands,
        BTreeSet::from([
            "ump".to_owned(),
            "ump-operator".to_owned(),
            "ump-events".to_owned()
        ])
    );

    // The build script: valid bash, and its staging (what the image copies) works on the binaries
    // this test run built, without a release build.
    let script = root.join("scripts/build-release");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("bash");
    assert!(syntax.success(), "bash -n scripts/build-release");
    let target = std::env::current_exe()
        .expect("test binary path")
        .parent()
        .and_then(|deps| deps.parent())
        .and_then(|debug| debug.parent())
        .expect("target dir")
        .to_owned();
    let out = std::env::temp_dir().join(unique_name("ump-stage"));
    let staged = Command::new(&script)
        .arg(&out)
        .env("UMP_SKIP_BUILD", "1")
        .env("UMP_BUILD_PROFILE", "dev")
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run build-release");
    let log = String::from_utf8_lossy(&staged.stderr).into_owned()
        + &String::from_utf8_lossy(&staged.stdout);
    assert!(
        staged.status.success(),
        "build-release could not stage the debug binaries in {} (they are built by `cargo test \
         --workspace`, or `cargo build --bins`):\n{log}",
        target.display()
    );
    for binary in ["ump", "ump-worker", "ump-operator", "ump-events"] {
        assert!(
            out.join("bin").join(binary).is_file(),
            "{binary} staged: {log}"
        );
    }
    // librdkafka links zlib, which distroless cc lacks: it must be staged, at its own path.
    assert!(
        log.contains("libz.so"),
        "zlib is staged for the image: {log}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

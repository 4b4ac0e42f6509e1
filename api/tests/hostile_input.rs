//! Hostile input end to end, on the real `ump` binary all-in-one: invalid UTF-8 anywhere, bodies
//! over the limits (announced or streamed), deep JSON, header injection through template data on
//! the real SMTP server, and template syntax in data. Each is refused with a problem naming what
//! is wrong, or neutralized; nothing refused is ever enqueued, and the process stays up.

mod common;

use common::{AllInOne, KEY};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ump_core::testing::{infra, unique_name};

/// `levels` arrays, one inside the other, around a number.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!([inner]))
}

/// Sends a raw HTTP/1.1 request (`head` then as much of `body` as the server reads) and returns
/// the status code and the body of the answer. For what a well-behaved client cannot send.
async fn raw(ump: &AllInOne, head: &str, body: &[u8]) -> (u16, String) {
    let address = ump.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    // The server may answer (and close) before the body is through: that is the point.
    let _ = stream.write_all(body).await;
    let _ = stream.flush().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    // One answer is enough; keep-alive would hold the connection open.
                    if let Some(end) = find(&answer, b"\r\n\r\n")
                        && complete(&answer[..end], answer.len() - end - 4)
                    {
                        break;
                    }
                }
            }
        }
    });
    read.await.expect("an answer within 10 s");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether a response with `head` has its whole body in `body_len` bytes.
fn complete(head: &[u8], body_len: usize) -> bool {
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    head.lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| body_len >= n)
}

fn problem_type(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("not a problem: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_anywhere_is_a_problem_not_a_crash() {
    let mut ump = AllInOne::start("warn", &[]).await;
    let post = |body: Vec<u8>, headers: Vec<(HeaderName, HeaderValue)>| {
        let mut request = ump
            .http
            .post(format!("{}/v1/messages", ump.url))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.expect("POST");
            let status = response.status().as_u16();
            (status, response.text().await.expect("body"))
        }
    };

    let mut body = br#"{"channel":"sms","to":"+821012345678","body":""#.to_vec();
    body.extend_from_slice(b"\xff\xfe\xc3\x28");
    body.extend_from_slice(br#""}"#);
    let (status, answer) = post(body, vec![]).await;
    assert_eq!(
        (status, problem_type(&answer).as_str()),
        (400, "https://ump.dev/problems/malformed-json"),
        "{answer}"
    );
    // A lone UTF-16 surrogate is not a character either.
    let (status, answer) = post(
        br#"{"channel":"sms","to":"+821012345678","body":"\ud800"}"#.to_vec(),
        vec![],
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    // In a header.
    let (status, answer) = post(
        br#"{"channel":"sms","to":"+821012345678","body":"x"}"#.to_vec(),
        vec![(
            HeaderName::from_static("idempotency-key"),
            HeaderValue::from_bytes(b"order-\xff-1").expect("opaque header"),
        )],
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        problem_type(&answer),
        "https://ump.dev/problems/bad-idempotency-key"
    );
    // In a path and in a query.
    for (method, path, expected) in [
        ("GET", "/v1/messages/%FF%FE", 404),
        ("POST", "/v1/receipts/%FF/x", 404),
        ("GET", "/v1/messages?status=%FF", 400),
        ("GET", "/v1/stats?window=%C3%28", 400),
        ("GET", "/v1/outbox?limit=1&limit=%FF", 400),
        ("GET", "/v1/nowhere/%FF", 404),
    ] {
        let (status, answer) = raw(
            &ump,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            b"",
        )
        .await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        problem_type(&answer);
    }
    // A query that decodes to nonsense is only a filter that matches nothing.
    let (status, page) = ump.get(KEY, "/v1/messages?to=%FF%FE").await;
    assert_eq!((status, &page["items"]), (200, &json!([])));

    assert!(ump.alive(), "{}", ump.output());
    assert_eq!(ump.get(KEY, "/v1/messages").await.1["items"], json!([]));
    assert!(ump.outbox().is_empty(), "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_input_is_refused_before_it_is_read() {
    let mut ump = AllInOne::start("warn", &[]).await;
    let head = |path: &str, length: Option<usize>| {
        let framing = match length {
            Some(n) => format!("Content-Length: {n}"),
            None => "Transfer-Encoding: chunked".to_owned(),
        };
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n"
        )
    };
    // Announced: a 1 GiB batch is refused from its Content-Length (1 KiB of it is sent).
    let (status, answer) = raw(
        &ump,
        &head("/v1/messages/batch", Some(1024 * 1024 * 1024)),
        &[b' '; 1024],
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(problem_type(&answer), "https://ump.dev/problems/too-large");
    // Streamed without a length: refused once the limit is passed.
    let mut chunked = Vec::new();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..5 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, answer) = raw(&ump, &head("/v1/messages", None), &chunked).await;
    assert_eq!(status, 413, "{answer}");

    // Too many messages, too big a field, too deep a structure: 422 naming the field.
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"channel": "sms", "to": format!("+8210{i:08}"), "body": "x"}))
        .collect();
    let (status, problem) = ump
        .post(KEY, "/v1/messages/batch", &json!({"messages": many}))
        .await;
    assert_eq!((status, &problem["field"]), (422, &json!("messages")));
    for (body, field) in [
        (
            json!({"channel": "sms", "to": "+821012345678", "body": "가".repeat(65_537)}),
            "body",
        ),
        (
            json!({"channel": "email", "to": "kim@example.com", "subject": "s".repeat(999), "body": "x"}),
            "subject",
        ),
        (
            json!({"channel": "sms", "to": "+821012345678", "body": "x", "data": {"blob": "x".repeat(70_000)}}),
            "data",
        ),
        (
            json!({"channel": "sms", "to": "+821012345678", "body": "x", "tags": vec!["t"; 21]}),
            "tags",
        ),
    ] {
        let (status, problem) = ump.post(KEY, "/v1/messages", &body).await;
        assert_eq!(
            (status, &problem["field"]),
            (422, &json!(field)),
            "{problem}"
        );
    }
    // A 100 KiB header: refused by the HTTP layer, not a crash.
    let huge = "k".repeat(100 * 1024);
    let status = ump
        .http
        .get(format!("{}/v1/messages", ump.url))
        .bearer_auth(&huge)
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(
        matches!(status, Ok(401 | 431) | Err(_)),
        "a 100 KiB header: {status:?}"
    );

    assert!(ump.alive(), "{}", ump.output());
    assert_eq!(ump.get(KEY, "/v1/messages").await.1["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deepest_data_accepted_is_delivered_and_deeper_is_refused() {
    let ump = AllInOne::start("warn", &[]).await;
    // 10 000 levels: the parser stops at its limit (128).
    let (status, answer) = {
        let response = ump
            .http
            .post(format!("{}/v1/messages", ump.url))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)))
            .send()
            .await
            .expect("POST");
        (
            response.status().as_u16(),
            response.text().await.expect("body"),
        )
    };
    assert_eq!(status, 400, "{answer}");
    // 32 levels of data (the limit, `data` itself included) go through the queue and the worker:
    // the queued envelope nests them deeper still, and must still be read back.
    let id = ump
        .send(
            KEY,
            &json!({"channel": "email", "to": "kim@example.com", "template": "welcome",
                    "data": {"name": "김민수", "deep": nested(31)},
                    "metadata": {"deep": nested(31)}}),
        )
        .await;
    ump.wait_status(KEY, &id, "sent").await;
    for field in ["data", "metadata"] {
        let mut body = json!({"channel": "email", "to": "kim@example.com", "template": "welcome",
                              "data": {"name": "김민수"}});
        body[field]["deep"] = nested(32);
        let (status, problem) = ump.post(KEY, "/v1/messages", &body).await;
        assert_eq!(
            (status, &problem["field"]),
            (422, &json!(field)),
            "{problem}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_syntax_in_data_is_sent_as_text_and_escaped_in_html() {
    let ump = AllInOne::start("warn", &[]).await;
    let name = "{{ 7 * 7 }}{% for i in range(3) %}x{% endfor %}{% include '/etc/passwd' %}\
                <script>alert(1)</script>";
    let id = ump
        .send(
            KEY,
            &json!({"channel": "email", "to": "kim@example.com", "template": "welcome",
                    "data": {"name": name}}),
        )
        .await;
    ump.wait_status(KEY, &id, "sent").await;
    let sent = ump.outbox();
    let mail = sent.iter().find(|m| m["id"] == id.as_str()).expect("sent");
    assert_eq!(mail["subject"], format!("{name}님, 가입을 환영합니다"));
    assert_eq!(
        mail["text"],
        format!("안녕하세요 {name}님, UMP에 오신 것을 환영합니다.")
    );
    let html = mail["html"].as_str().expect("html");
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&lt;script&gt;"), "{html}");
    assert!(!html.contains("root:") && !html.contains("49xxx"), "{html}");
}

/// Template data ends up in a mail header (the subject): CR/LF in it must not start a new header,
/// on the real SMTP server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_in_template_data_never_adds_a_mail_header() {
    let mailpit = infra().smtp();
    let dir = tempfile::tempdir().expect("temp dir");
    let channels = dir.path().join("channels");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&channels).expect("channels dir");
    std::fs::create_dir_all(secrets.join("smtp")).expect("secrets dir");
    std::fs::write(secrets.join("smtp/username"), &mailpit.user).expect("secret");
    std::fs::write(secrets.join("smtp/password"), &mailpit.password).expect("secret");
    std::fs::write(
        channels.join("channels.yaml"),
        format!(
            r#"apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {{name: email}}
spec:
  type: email
  providers:
    - name: mailpit
      type: smtp
      secretRef: {{name: smtp}}
      settings: {{host: "{}", port: "{}", from: "UMP <noreply@ump.test>", caFile: "{}"}}
  templates:
    - {{name: notice, subject: "알림 {{{{ name }}}}", text: "안녕하세요 {{{{ name }}}}님"}}
"#,
            mailpit.host, mailpit.port, mailpit.tls_cert
        ),
    )
    .expect("channels");
    let secrets = secrets.to_string_lossy().into_owned();
    let ump =
        AllInOne::start_with_channels(&channels, "warn", &[("UMP_SECRETS_DIR", &secrets)]).await;
    let token = unique_name("inject");
    let to = format!("{token}@ump.test");
    let id = ump
        .send(
            KEY,
            &json!({"channel": "email", "to": to, "template": "notice",
                    "data": {"name": format!("{token}\r\nBcc: victim@evil.test\r\nX-Injected: yes\nReply-To: evil@evil.test")}}),
        )
        .await;
    ump.wait_status(KEY, &id, "sent").await;

    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            http.get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("SMTP API {url}: {e}"))
                .json::<Value>()
                .await
                .unwrap_or_else(|e| panic!("SMTP API {url}: {e}"))
        }
    };
    let mut found = None;
    for _ in 0..50 {
        let list = get(format!("{}/api/v1/search?query=to:{to}", mailpit.api)).await;
        if let Some(summary) = list["messages"].get(0) {
            found = summary["ID"].as_str().map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mail_id = found.unwrap_or_else(|| panic!("the mail to {to} never arrived"));
    let message = get(format!("{}/api/v1/message/{mail_id}", mailpit.api)).await;
    let headers = get(format!("{}/api/v1/message/{mail_id}/headers", mailpit.api)).await;
    for name in ["Bcc", "X-Injected", "Reply-To"] {
        assert!(
            headers.get(name).is_none(),
            "{name} was injected: {headers}"
        );
    }
    let recipients: Vec<&str> = ["To", "Cc", "Bcc"]
        .iter()
        .flat_map(|field| message[*field].as_array().into_iter().flatten())
        .filter_map(|r| r["Address"].as_str())
        .collect();
    assert_eq!(recipients, [to.as_str()], "{message}");
    let subject = message["Subject"].as_str().expect("subject");
    assert!(
        subject.starts_with(&format!("알림 {token}")) && !subject.contains(['\r', '\n']),
        "{subject:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_arriving_gets_408_after_the_body_timeout() {
    let ump = AllInOne::start("warn", &[("UMP_BODY_TIMEOUT", "1s")]).await;
    // 100 bytes announced, 11 sent, then nothing: the handler must not wait for the rest forever.
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    let started = std::time::Instant::now();
    let (status, body) = raw(&ump, &head, br#"{"channel":"#).await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(problem_type(&body), "https://ump.dev/problems/body-timeout");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "answered before the timeout"
    );
    assert!(ump.statuses(KEY).await.is_empty(), "nothing was enqueued");
    assert!(!ump.output().contains("panicked"), "{}", ump.output());
}

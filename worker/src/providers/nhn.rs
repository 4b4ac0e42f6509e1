//! What NHN Cloud's APIs (SMS and BizMessage AlimTalk) share: the app key in the URL path and the
//! per-recipient result of a send.

use super::BuildError;
use super::http::transport_failure;
use super::secret::{Secret, SecretFiles};
use super::settings::Settings;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use ump_core::provider::Outcome;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RecipientResult {
    pub(super) result_code: i64,
    #[serde(default)]
    pub(super) result_message: String,
}

/// The `appKey` secret, checked: it goes into the URL path, so anything that would change the
/// path is refused.
pub(super) fn app_key(
    settings: &Settings<'_>,
    secrets: &SecretFiles,
) -> Result<Secret, BuildError> {
    let app_key = secrets.require("appKey")?;
    if !app_key
        .expose()
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(settings.invalid("secret key \"appKey\" is not an NHN app key".into()));
    }
    Ok(app_key)
}

/// POSTs `request` to an NHN Cloud API with its `X-Secret-Key` and lets `classify` read the answer.
pub(super) async fn post(
    client: &reqwest::Client,
    url: &str,
    secret_key: &Secret,
    request: &impl Serialize,
    classify: fn(StatusCode, &HeaderMap, &str) -> Outcome,
) -> Outcome {
    let response = match client
        .post(url)
        .header("X-Secret-Key", secret_key.expose())
        .json(request)
        .send()
        .await
    {
        Ok(response) => response,
        Err(e) => return transport_failure(e),
    };
    let status = response.status();
    let headers = response.headers().clone();
    match response.text().await {
        Ok(body) => classify(status, &headers, &body),
        Err(e) => transport_failure(e),
    }
}

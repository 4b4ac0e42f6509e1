//! What NHN Cloud's APIs (SMS and BizMessage AlimTalk) share: the app key in the URL path and the
//! per-recipient result of a send.

use super::BuildError;
use super::secret::{Secret, SecretFiles};
use super::settings::Settings;
use serde::Deserialize;

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

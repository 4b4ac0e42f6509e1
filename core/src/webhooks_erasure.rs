//! What erasing a person does to the webhook outbox and its delivery log.
//!
//! The history keeps an erased person's messages with a masked recipient, in their timelines'
//! details too (`ProfileStore::erase`). Webhook events about those messages, whether still
//! waiting or kept in an endpoint's log (which replay sends again), are brought to the same
//! level: their recipient is already masked; a provider's detail quoting the recipient is masked
//! the same way; and the message's tags and metadata, the sending application's labels that may
//! say anything about the person, are emptied, as are the labels kept for receipts
//! (`messages.webhook_labels`, and `webhook_messages` rows of older versions). The events
//! themselves stay, under their `webhook-id`: the application still learns what became of its
//! message.
//!
//! The rule (`Redaction`) is pure; each store finds the events and applies it inside the
//! erasure's transaction.

use crate::history::HistoryError;
use crate::webhooks_store::corrupt;
use std::collections::HashSet;

/// How a webhook event about an erased person's message is rewritten.
#[derive(Clone, Debug)]
pub(crate) struct Redaction {
    /// Each of the person's contact points, with the masked form that replaces it.
    recipients: Vec<(String, String)>,
}

impl Redaction {
    pub(crate) fn new(recipients: &[String]) -> Self {
        Self {
            recipients: recipients
                .iter()
                .map(|r| (r.clone(), crate::profiles::masked(r)))
                .collect(),
        }
    }

    /// A provider's detail with every contact point of the person masked.
    pub(crate) fn detail(&self, detail: &str) -> String {
        let mut out = detail.to_owned();
        for (raw, masked) in &self.recipients {
            if !raw.is_empty() {
                out = out.replace(raw.as_str(), masked);
            }
        }
        out
    }

    /// A JSON event body (`type`, `timestamp`, `data`) with `data.tags` and `data.metadata`
    /// emptied and `data.detail` (and, to be sure, `data.to`) masked. `None` when it already
    /// was.
    pub(crate) fn payload(&self, payload: &str) -> Result<Option<String>, HistoryError> {
        let mut body: serde_json::Value =
            serde_json::from_str(payload).map_err(|e| corrupt("webhook event", e))?;
        let Some(data) = body.get_mut("data").and_then(|d| d.as_object_mut()) else {
            return Ok(None);
        };
        let mut changed = false;
        for (field, empty) in [
            ("tags", serde_json::json!([])),
            ("metadata", serde_json::json!({})),
        ] {
            if let Some(value) = data.get_mut(field)
                && *value != empty
            {
                *value = empty;
                changed = true;
            }
        }
        for field in ["detail", "to"] {
            if let Some(serde_json::Value::String(text)) = data.get_mut(field) {
                let masked = self.detail(text);
                if masked != *text {
                    *text = masked;
                    changed = true;
                }
            }
        }
        if !changed {
            return Ok(None);
        }
        serde_json::to_string(&body)
            .map(Some)
            .map_err(|e| corrupt("webhook event", e))
    }
}

/// The person's messages, as the outbox keys them.
pub(crate) type Messages = HashSet<[u8; 16]>;

/// Statements take at most this many message ids each.
const IDS_PER_STATEMENT: usize = 500;

/// Both stores: deletes the labels older versions kept in `webhook_messages` for `messages`,
/// and redacts their events' rows in `webhook_deliveries`. Adds the ids of the events it found to
/// `found`. `lock` ends the statement that reads the rows.
async fn per_event_rows<DB>(
    conn: &mut DB::Connection,
    tenant: &str,
    messages: &Messages,
    redaction: &Redaction,
    lock: &'static str,
    found: &mut HashSet<String>,
) -> Result<(), HistoryError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::{QueryBuilder, Row};
    let ids: Vec<&[u8; 16]> = messages.iter().collect();
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let in_ids = |q: &mut QueryBuilder<DB>| {
            q.push(" message_id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(id.to_vec());
            }
            q.push(")");
        };
        let mut q = QueryBuilder::<DB>::new("DELETE FROM webhook_messages WHERE");
        in_ids(&mut q);
        q.build().execute(&mut *conn).await?;

        let mut q = QueryBuilder::<DB>::new(
            "SELECT endpoint_id, event_id, payload FROM webhook_deliveries WHERE tenant_id = ",
        );
        q.push_bind(tenant.to_owned()).push(" AND");
        in_ids(&mut q);
        q.push(lock);
        let rows = q.build().fetch_all(&mut *conn).await?;
        for row in rows {
            let event: String = row.try_get(1)?;
            found.insert(event.clone());
            let payload: String = row.try_get(2)?;
            if let Some(payload) = redaction.payload(&payload)? {
                let endpoint: String = row.try_get(0)?;
                sqlx::query::<DB>(
                    "UPDATE webhook_deliveries SET payload = ? WHERE endpoint_id = ? AND event_id = ?",
                )
                .bind(payload)
                .bind(endpoint)
                .bind(event)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// MySQL

/// Applies the erasure to the tenant's outbox and log in the erasure's `tx`: `messages` are the
/// person's message ids, `oldest` the creation of the oldest of them (no event about them was
/// written before). Returns how many events it found about them (an event moved out of its
/// batch to a row of its own counts once).
pub(crate) async fn mysql(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    tenant: &str,
    messages: &Messages,
    oldest: chrono::NaiveDateTime,
    redaction: &Redaction,
) -> Result<u64, HistoryError> {
    use sqlx::Row;
    if messages.is_empty() {
        return Ok(0);
    }
    let mut found = HashSet::new();
    // Batches first: a dispatcher settling one of them (which locks it, then moves its failed
    // events to rows of their own, with the body it then reads) either finishes before the
    // batch is locked here, and the moved rows are found below, or reads the redacted body.
    //
    // Batches of the tenant written since the oldest message (an hour earlier, for clocks that
    // differ between the API that accepted it and the worker that wrote the batch): read without
    // locks, then only those holding an event about the person are locked and rewritten.
    let since = oldest - chrono::Duration::hours(1);
    let keys: Vec<(String, String)> = {
        use futures::TryStreamExt;
        let mut rows = sqlx::query(
            "SELECT endpoint_id, batch_key, body FROM webhook_batches \
             WHERE tenant_id = ? AND created_at >= ?",
        )
        .bind(tenant)
        .bind(since)
        .fetch(&mut **tx);
        let mut keys = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let body: Vec<u8> = row.try_get(2)?;
            if crate::webhooks_batches::mentions(&body, messages)? {
                keys.push((row.try_get(0)?, row.try_get(1)?));
            }
        }
        keys
    };
    for (endpoint, key) in keys {
        let body: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT body FROM webhook_batches WHERE endpoint_id = ? AND batch_key = ? FOR UPDATE",
        )
        .bind(&endpoint)
        .bind(&key)
        .fetch_optional(&mut **tx)
        .await?;
        // Pruned meanwhile.
        let Some(body) = body else { continue };
        let (body, redacted) = crate::webhooks_batches::redact(&body, messages, redaction)?;
        found.extend(redacted);
        sqlx::query("UPDATE webhook_batches SET body = ? WHERE endpoint_id = ? AND batch_key = ?")
            .bind(body)
            .bind(&endpoint)
            .bind(&key)
            .execute(&mut **tx)
            .await?;
    }
    // A locking read: it sees the rows moved out of a batch by a round that committed after
    // this transaction began.
    per_event_rows::<sqlx::MySql>(
        &mut **tx,
        tenant,
        messages,
        redaction,
        " FOR UPDATE",
        &mut found,
    )
    .await?;
    Ok(found.len() as u64)
}

// ---------------------------------------------------------------------------------------------
// SQLite (one row per event)

/// Applies the erasure to the tenant's outbox and log in the erasure's `tx`. Returns how many
/// events it found about the person's `messages`.
pub(crate) async fn sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    tenant: &str,
    messages: &Messages,
    redaction: &Redaction,
) -> Result<u64, HistoryError> {
    let mut found = HashSet::new();
    // The transaction holds the file's write lock: nothing moves meanwhile.
    per_event_rows::<sqlx::Sqlite>(&mut **tx, tenant, messages, redaction, "", &mut found).await?;
    Ok(found.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_keeps_its_status_and_loses_what_could_name_the_person() {
        let r = Redaction::new(&["+821012345678".into(), "kim@example.com".into()]);
        let payload = serde_json::json!({
            "type": "message.failed",
            "timestamp": "2026-12-06T05:00:00.000Z",
            "data": {
                "id": "0193a0b0-0000-7000-8000-000000000001",
                "channel": "sms",
                "status": "failed",
                "provider": "twilio",
                "to": "+8210****5678",
                "attempt": 2,
                "detail": "21211: +821012345678 is not a valid number (kim@example.com)",
                "tags": ["order"],
                "metadata": {"customer": "Kim Minji"},
            }
        })
        .to_string();
        let out: serde_json::Value =
            serde_json::from_str(&r.payload(&payload).expect("JSON").expect("changed"))
                .expect("JSON");
        assert_eq!(
            out["data"]["detail"],
            "21211: +8210****5678 is not a valid number (k***@example.com)"
        );
        assert_eq!(out["data"]["tags"], serde_json::json!([]));
        assert_eq!(out["data"]["metadata"], serde_json::json!({}));
        for kept in ["id", "channel", "status", "provider", "to", "attempt"] {
            let before: serde_json::Value = serde_json::from_str(&payload).expect("JSON");
            assert_eq!(out["data"][kept], before["data"][kept], "{kept}");
        }
        assert_eq!(out["type"], "message.failed");
        // Once redacted, nothing is left to change.
        let again = r
            .payload(&serde_json::to_string(&out).expect("JSON"))
            .expect("JSON");
        assert_eq!(again, None);
    }

    #[test]
    fn an_event_without_labels_or_detail_is_left_as_it_is() {
        let r = Redaction::new(&["+821012345678".into()]);
        let payload = r#"{"type":"message.sent","timestamp":"t","data":{"to":"+8210****5678","detail":null,"tags":[],"metadata":{}}}"#;
        assert_eq!(r.payload(payload).expect("JSON"), None);
        assert!(r.payload("not json").is_err());
    }

    #[test]
    fn a_detail_masks_every_contact_point() {
        let r = Redaction::new(&["+821012345678".into(), "".into()]);
        assert_eq!(
            r.detail("+821012345678 / +821012345678"),
            "+8210****5678 / +8210****5678"
        );
        assert_eq!(r.detail("nothing personal"), "nothing personal");
    }
}

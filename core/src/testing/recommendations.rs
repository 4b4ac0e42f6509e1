//! The behaviour every `ItemModel` must have, run against MySQL (`core/tests/mysql_history.rs`)
//! and SQLite (`crate::recommendations`' tests): events folded by the backend's processor (`process`)
//! reach the counts exactly once, stale lists are rebuilt, rankings stored, and `recommend_for`
//! reads it all back per tenant.

use crate::audience::{LogEntry, SegmentStore};
use crate::catalog::CatalogStore;
use crate::recommendations::{Ask, ItemModel, recommend_for};
use chrono::{DateTime, Duration, DurationRound, Utc};
use futures::future::BoxFuture;
use ump_automation::event::EventInput;
use ump_automation::recommend::{CatalogItem, Ranking, Strategy, similarity};

fn item(id: &str, category: &str, in_stock: bool) -> CatalogItem {
    serde_json::from_value(serde_json::json!({"id": id, "name": format!("Item {id}"),
        "price": 1000, "currency": "KRW", "category": category, "in_stock": in_stock}))
    .expect("an item")
}

fn event(
    tenant: &str,
    user: &str,
    name: &str,
    item: &str,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> LogEntry {
    let queued = serde_json::from_value::<EventInput>(serde_json::json!({"user_id": user,
        "event": name, "properties": {"item_id": item}, "timestamp": at}))
    .expect("event")
    .check("", now)
    .expect("valid");
    LogEntry {
        tenant: tenant.into(),
        queued,
    }
}

/// Lists compared with scores to 1e-9 (JSON keeps a float to about its last bit).
fn assert_list(actual: &[(String, f64)], expected: &[(&str, f64)]) {
    let close = actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|((a, x), (b, y))| a == b && (x - y).abs() < 1e-9);
    assert!(close, "{actual:?} is not {expected:?}");
}

fn ids(list: &[ump_automation::recommend::Recommendation]) -> Vec<(&str, Strategy)> {
    list.iter()
        .map(|r| (r.item.id.as_str(), r.strategy))
        .collect()
}

pub async fn the_model_follows_the_events(
    people: &dyn SegmentStore,
    model: &dyn ItemModel,
    catalog: &dyn CatalogStore,
    process: &dyn Fn(Vec<LogEntry>, DateTime<Utc>) -> BoxFuture<'static, ()>,
) {
    // Whole seconds: the events' times read back exactly from either backend.
    let now = Utc::now()
        .duration_trunc(Duration::seconds(1))
        .expect("now");
    let t = |m: i64| now - Duration::minutes(60 - m);
    catalog
        .put_items(
            "t1",
            &[
                item("a", "shoes", true),
                item("b", "shoes", true),
                item("c", "bags", true),
                item("d", "bags", false),
            ],
            now,
        )
        .await
        .expect("catalog");
    catalog
        .put_items("t2", &[item("a", "shoes", true)], now)
        .await
        .expect("catalog");
    let entries = vec![
        event("t1", "p1", "product_viewed", "a", t(1), now),
        event("t1", "p1", "product_viewed", "b", t(2), now),
        event("t1", "p1", "purchase", "b", t(3), now),
        event("t1", "p2", "product_viewed", "a", t(1), now),
        event("t1", "p2", "product_viewed", "b", t(2), now),
        event("t1", "p2", "product_viewed", "c", t(3), now),
        event("t1", "p2", "product_viewed", "d", t(4), now),
        event("t1", "p3", "product_viewed", "a", t(1), now),
        event("t1", "p3", "product_viewed", "c", t(2), now),
        // Not an item event, and a view without an item: neither counts.
        event("t1", "p3", "signed_up", "a", t(3), now),
        event("t2", "p4", "product_viewed", "a", t(1), now),
        event("t2", "p4", "product_viewed", "b", t(2), now),
    ];
    process(entries, now).await;
    let (staged, _) = model.backlog().await.expect("backlog");
    assert!(staged >= 2, "each tenant's changes staged: {staged}");
    assert_eq!(model.take_changes(1000, now).await.expect("take"), staged);
    assert_eq!(model.take_changes(1000, now).await.expect("take"), 0);
    // a, b, c, d in t1; a, b in t2.
    assert_eq!(model.backlog().await.expect("backlog"), (0, 6));
    assert_eq!(
        model
            .rebuild_neighbours(1000, now, now)
            .await
            .expect("rebuild"),
        6
    );
    assert_eq!(model.backlog().await.expect("backlog"), (0, 0));
    assert!(model.rank(now).await.expect("rank") > 0);

    // n(a) 3, n(b) 2, n(c) 2, n(d) 1; co(a,b) 2 (p1, p2), co(a,c) 2 (p2, p3), co(b,c) 1,
    // co(c,d) 1, co(a,d) 1, co(b,d) 1.
    let neighbours = model
        .neighbours("t1", &["a".into(), "zz".into()])
        .await
        .expect("neighbours");
    assert_eq!(neighbours.len(), 1, "no list for an item never seen");
    assert_list(
        &neighbours["a"],
        &[
            ("b", similarity(2, 3, 2)),
            ("c", similarity(2, 3, 2)),
            ("d", similarity(1, 3, 1)),
        ],
    );
    let t2 = model
        .neighbours("t2", &["a".into()])
        .await
        .expect("neighbours");
    assert_list(&t2["a"], &[("b", similarity(1, 1, 1))]);
    let popular = model
        .ranking("t1", Ranking::Popular, None)
        .await
        .expect("ranking");
    assert_list(&popular, &[("a", 3.0), ("b", 2.0), ("c", 2.0), ("d", 1.0)]);
    let bags = model
        .ranking("t1", Ranking::Popular, Some("bags"))
        .await
        .expect("ranking");
    assert_eq!(bags.len(), 2, "c and d: {bags:?}");

    let ask = |user: &'static str, strategy, tenant: &'static str| Ask {
        tenant,
        user_id: user,
        strategy,
        limit: 5,
        category: None,
        now,
    };
    let get = |a: Ask<'static>| async move {
        recommend_for(people, model, catalog, a)
            .await
            .expect("recommendations")
    };
    // p1 viewed a and b, bought b: c is similar to both (d is out of stock); then popular
    // items not bought fill the list.
    let list = get(ask("p1", Strategy::SimilarItems, "t1")).await;
    assert_eq!(
        ids(&list),
        [("c", Strategy::SimilarItems), ("a", Strategy::Popular)]
    );
    let list = get(ask("p1", Strategy::ViewedNotPurchased, "t1")).await;
    assert_eq!(
        ids(&list),
        [
            ("a", Strategy::ViewedNotPurchased),
            ("c", Strategy::Popular)
        ]
    );
    assert_eq!(list[0].item.name, "Item a");
    // p2 viewed d last, but it is out of stock.
    let list = get(ask("p2", Strategy::RecentlyViewed, "t1")).await;
    assert_eq!(
        ids(&list)[..3],
        [
            ("c", Strategy::RecentlyViewed),
            ("b", Strategy::RecentlyViewed),
            ("a", Strategy::RecentlyViewed)
        ]
    );
    // Someone UMP never saw: popular items (the cold start).
    let list = get(ask("nobody", Strategy::SimilarItems, "t1")).await;
    assert_eq!(
        ids(&list),
        [
            ("a", Strategy::Popular),
            ("b", Strategy::Popular),
            ("c", Strategy::Popular)
        ]
    );
    let mut bags = ask("nobody", Strategy::Popular, "t1");
    bags.category = Some("bags");
    assert_eq!(ids(&get(bags).await), [("c", Strategy::Popular)]);
    // Tenants apart: t2's catalog has only a, t2's p4 saw a and b.
    let list = get(ask("p4", Strategy::RecentlyViewed, "t2")).await;
    assert_eq!(ids(&list), [("a", Strategy::RecentlyViewed)]);
    assert!(get(ask("p1", Strategy::SimilarItems, "t2")).await.len() <= 1);

    // A change after a rebuild makes the list stale again; the rebuild takes it in.
    process(
        vec![
            event("t1", "p3", "product_viewed", "b", t(5), now),
            // Already in p3's history: adds nothing.
            event("t1", "p3", "product_viewed", "a", t(6), now),
        ],
        now,
    )
    .await;
    assert_eq!(model.take_changes(1000, now).await.expect("take"), 1);
    let (_, stale) = model.backlog().await.expect("backlog");
    assert_eq!(stale, 3, "b is new to p3 and pairs with a and c");
    model
        .rebuild_neighbours(1000, now, now)
        .await
        .expect("rebuild");
    let neighbours = model
        .neighbours("t1", &["a".into()])
        .await
        .expect("neighbours");
    assert_list(&neighbours["a"][..1], &[("b", similarity(3, 3, 3))]);
    // Nine days on, the counts have aged out of every window: the rankings are gone.
    model
        .rank(now + Duration::days(9))
        .await
        .expect("rank later");
    assert!(
        model
            .ranking("t1", Ranking::Popular, None)
            .await
            .expect("ranking")
            .is_empty()
    );
}
